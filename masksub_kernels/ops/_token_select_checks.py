"""token_select.py's argument checks: the tokens and their prefix, the ids, the optional priority masks
(always_keep, drop_first) and the default of the ``validate_*`` flags, which the public functions call; and the
ops' own checks of their sizes (MaskSubOp's ``check``, for a direct torch.ops.masksub call). Apart from the op so
that token_select.py reads as launchers, custom ops and public API, as _grid_checks.py holds the grid masks'
checks. Only what a ``validate`` flag asks for reads a tensor's values (the ids' range and uniqueness, the
always-keep positions per row); the rest is metadata."""

from __future__ import annotations

import torch

from .._philox import _concrete, resolve_seed
from ._common import (
    INDEX_DTYPES,
    check_bool,
    check_float_tensor,
    check_int,
    check_keep_args,
    values_readable,
)


def _check_tokens(x: torch.Tensor, num_prefix_tokens: int) -> int:
    check_float_tensor("x", x, "[batch, prefix + tokens, dim]", 3)
    num_prefix_tokens = check_int("num_prefix_tokens", num_prefix_tokens)
    if not 0 <= num_prefix_tokens < x.shape[1]:
        raise ValueError(
            f"num_prefix_tokens must be in [0, sequence length {x.shape[1]}) so that at least one patch token "
            f"remains, got {num_prefix_tokens}"
        )
    return num_prefix_tokens


def _check_ids(x: torch.Tensor, ids: torch.Tensor, num_prefix_tokens: int, validate_values: bool) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
    num_tokens = x.shape[1] - num_prefix_tokens
    if ids.dim() != 2 or ids.shape[0] != x.shape[0] or not 1 <= ids.shape[1] <= num_tokens:
        raise ValueError(
            f"ids must be [batch={x.shape[0]}, K] with 1 <= K <= {num_tokens} patch tokens, got shape "
            f"{tuple(ids.shape)}"
        )
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"ids must be int64 (or int32), got {ids.dtype}")
    if ids.device != x.device:
        raise ValueError(f"ids must be on the device of x ({x.device}), got {ids.device}")
    if validate_values and ids.numel() > 0:
        # Reading values synchronises with the device: done on CPU by default, on a GPU only when asked.
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_tokens:
            raise ValueError(f"ids must index patch tokens in [0, {num_tokens}), got values in [{low}, {high}]")
        ordered = ids.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError("ids must be unique within each row (the backward writes each token once)")


def _check_priority_masks(
    always_keep: torch.Tensor | None,
    drop_first: torch.Tensor | None,
    batch_size: int,
    num_tokens: int,
    num_keep: int,
    device: torch.device,
    validate_values: bool,
) -> None:
    """Kind, dtype, shape and device of the optional masks; with ``validate_values``, at most K always-keep
    positions per row (this reads values: a host sync on a GPU)."""
    for name, mask in (("always_keep", always_keep), ("drop_first", drop_first)):
        if mask is None:
            continue
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name} must be a bool torch.Tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {mask.dtype}")
        if tuple(mask.shape) != (batch_size, num_tokens):
            raise ValueError(
                f"{name} must be [batch={batch_size}, tokens={num_tokens}] (patch tokens, no prefix), got shape "
                f"{tuple(mask.shape)}"
            )
        if _concrete(mask.device) != _concrete(torch.device(device)):
            raise ValueError(f"{name} must be on the op's device ({device}), got {mask.device}")
    if validate_values and always_keep is not None and always_keep.numel() > 0 and not always_keep.is_meta:
        counts = always_keep.sum(dim=1)
        most = int(counts.max())
        if most > num_keep:
            raise ValueError(
                f"always_keep marks {most} positions in row {int(counts.argmax())}, more than the {num_keep} tokens "
                "kept per row (unvalidated, such a row keeps its lowest positions)"
            )


def _validate_default(validate: bool | None, device: torch.device, name: str, tensors: tuple) -> bool:
    """A ``validate_*`` flag: None reads the values of ``tensors`` on CPU only, never while a tracer runs
    (values_readable: torch.compile, make_fx, AOTAutograd)."""
    if validate is None:
        return torch.device(device).type == "cpu" and values_readable(tensors)
    return check_bool(name, validate)


def _select_sizes(seed, seed_tensor, batch_size, num_tokens, num_keep, device, ordered, write_inverse, keep, drop):
    """select_tokens' own check (MaskSubOp's ``check``): its sizes and masks, as the cuda binding checks them."""
    check_keep_args(batch_size, num_tokens, num_keep)
    _check_priority_masks(keep, drop, batch_size, num_tokens, num_keep, device, False)
    if seed_tensor is not None:  # one int64 on the op's device (resolve_seed's rules; its value is not read)
        resolve_seed(seed_tensor, device)


def _select_gather_sizes(x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, keep, drop):
    """select_gather_tokens' own check: the tokens, the prefix and the sizes and masks of the selection."""
    num_tokens = x.shape[1] - _check_tokens(x, num_prefix_tokens)
    _select_sizes(seed, seed_tensor, x.shape[0], num_tokens, num_keep, x.device, ordered, True, keep, drop)


def _check_inverse(inv, like: torch.Tensor, num_tokens: int) -> None:
    """inv: None or int32 [B, num_tokens] on the device of ``like`` (the backward's scatter map; checked, as the cuda
    and triton backends take N from it, the torch backend from num_tokens)."""
    if inv is not None and (tuple(inv.shape) != (like.shape[0], num_tokens) or inv.device != like.device):
        raise ValueError(f"inv must be None or [batch={like.shape[0]}, num_tokens={num_tokens}] on {like.device}, got "
                         f"{tuple(inv.shape)} on {inv.device}")  # fmt: skip
    if inv is not None and inv.dtype != torch.int32:
        raise TypeError(f"inv must be int32, got {inv.dtype}")


def _gather_sizes(x, ids, inv, num_prefix_tokens):
    """gather_tokens' own check: the ids' shape, dtype and device against x (their values are not read), inv's."""
    num_prefix_tokens = _check_tokens(x, num_prefix_tokens)
    _check_ids(x, ids, num_prefix_tokens, False)
    _check_inverse(inv, x, x.shape[1] - num_prefix_tokens)


def _scatter_sizes(grad_y, ids, inv, num_prefix_tokens, num_tokens):
    """scatter_tokens' own check: ids [B, K] of grad_y's K kept tokens, K <= num_tokens, and inv."""
    batch, kept = grad_y.shape[0], grad_y.shape[1] - _check_tokens(grad_y, num_prefix_tokens)
    if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (batch, kept) or kept > num_tokens:
        got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids must be [batch={batch}, K={kept}] with K <= num_tokens={num_tokens}, got {got}")
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"ids must be int64 (or int32), got {ids.dtype}")
    if ids.device != grad_y.device:
        raise ValueError(f"ids must be on the device of grad_y ({grad_y.device}), got {ids.device}")
    _check_inverse(inv, grad_y, num_tokens)
