"""Random token selection + gather for the ViT sub-branch, and its scatter backward.

Maths (docs/semantics.md, §2-§4). Input X[B, P+N, D]: P prefix tokens (class, registers), then N patch tokens.
Keep K = floor(N * (1 - r)) patch tokens per sample:

    ids[b] = the K positions with the smallest Philox draws of row b (ties by position), ascending-draw order
             (or ascending position when ordered=True)
    Y[b, :P] = X[b, :P];   Y[b, P + j] = X[b, P + ids[b, j]]                              -> Y[B, P+K, D]
    dX[b, :P] = dY[b, :P]; dX[b, P + ids[b, j]] = dY[b, P + j]; every other row of dX is 0

Priority inputs (§4, "Always-keep and drop-first positions"): bool masks always_keep [B, N] and drop_first [B, N]
over the patch tokens, each optional, change the sort key of a position (the key of §2 is (draw - 2^31) 2^32 + p):

    key[b, p] = -2^63 + p                                 always_keep[b, p]           (§2's key with draw = 0)
              = (2^31 - 1) 2^32 + N + p                   drop_first[b, p] and not always_keep[b, p]
                                                          (§2's key with draw = 2^32 - 1, plus N)
              = (draw - 2^31) 2^32 + p + (N if draw == 0)  otherwise

The low 32 bits of a key are p or N + p < 2^32 (valid while N < 2^31; N <= 8192 here), so the keys stay unique
and ordered as (class, draw, position): always-keep positions first, by position (a row with more than K of them
keeps the K lowest); then the ordinary ones by (draw, position), exactly as without masks (adding N to the draw-0
keys lifts them above every always-keep key without reordering them: absent masks give the plain ids); then the
drop-first ones, by position.

The ids of a row are unique, so the backward is a plain scatter: each element of dX is written exactly once
(kept rows from dY, the rest zeros) without atomics and without a separate zero-fill pass. It reads an inverse
map inv[b, n] = j if n == ids[b, j] else -1, which the selection kernel writes for free.

Launches on the GPU: forward = one select + gather kernel where N <= 256 (each program sorts its sample's keys,
writes ids + inverse from one channel block, copies its rows); longer sequences: select, then gather (the sort,
repeated per channel block, would no longer hide under the copy). Backward = scatter. Kernels:
ops/_token_select_kernels.py (Triton), csrc/token_select.cu (CUDA: the same split, one launch where N <= 1024: its
block sorts cheaply enough with cub's radix sort). The argument checks and the ops' own checks of their sizes:
ops/_token_select_checks.py.
"""

from __future__ import annotations

import numbers

import torch

from .._philox import resolve_seed, seed_value
from .._triton import next_power_of_2
from ._common import (
    cdiv,
    check_bool,
    check_int,
    check_keep_args,
    masksub_op,
    resolve_device,
    sort_warps,
    values_readable,
)
from ._token_rows import gather_rows, scatter_rows
from ._token_select_checks import (
    _check_ids,
    _check_priority_masks,
    _check_tokens,
    _gather_sizes,
    _scatter_sizes,
    _select_gather_sizes,
    _select_sizes,
    _validate_default,
)
from ._token_select_kernels import _copy_rows_kernel, _select_gather_kernel, _select_kernel
from ._token_select_reference import inverse_reference, select_reference  # the oracle

# ----------------------------------------------------------------------------------------------------------------
# Host-side validation: messages say what was expected and what came (the arguments' checks: _token_select_checks.py)
# ----------------------------------------------------------------------------------------------------------------


def num_kept_tokens(num_tokens: int, mask_ratio: float, *, unit: str = "tokens") -> int:
    """K = floor(num_tokens * (1 - mask_ratio)), as the official code computes it (``int(L * (1 - r))``).
    ``unit``: what the error calls the positions ('grid cells' for the grid masks)."""
    if not isinstance(unit, str):
        raise TypeError(f"unit must be a str (what the error calls the positions), got {unit!r}")
    num_tokens = check_int("num_tokens", num_tokens)
    if num_tokens < 1:
        counted = "num_tokens" if unit == "tokens" else f"the number of {unit} (an empty grid)"
        raise ValueError(f"{counted} must be >= 1, got {num_tokens}")
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real):
        raise TypeError(f"mask_ratio must be a float in [0, 1), got {type(mask_ratio).__name__}")
    mask_ratio = float(mask_ratio)  # NumPy's floats too
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    num_keep = int(num_tokens * (1.0 - mask_ratio))
    if num_keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps floor({num_tokens} * (1 - {mask_ratio})) = 0 of {num_tokens} {unit}: "
            f"at least one must be kept"
        )
    return num_keep


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def _copy_tile(dim: int, element_size: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D) for a row copy: ~16 KB per program, channel blocks that divide D when they can."""
    divisor = dim & -dim  # largest power of two dividing D
    block_d = min(divisor, 512) if divisor >= 64 else min(next_power_of_2(dim), 512)
    block_r = max(1, min(64, (16384 // element_size) // block_d))
    return block_r, block_d


def _priority_args(always_keep: torch.Tensor | None, drop_first: torch.Tensor | None, fallback: torch.Tensor):
    """(keep, drop, their 4 strides, HAS_KEEP, HAS_DROP) for the selection kernels: the masks as bytes, read in
    place with their strides (a same-size dtype view: no copy, any strides); ``fallback`` stands in for a mask
    that is absent (never read)."""
    keep = always_keep.view(torch.uint8) if always_keep is not None else None
    drop = drop_first.view(torch.uint8) if drop_first is not None else None
    strides = (*(keep.stride() if keep is not None else (0, 0)), *(drop.stride() if drop is not None else (0, 0)))
    pointers = (keep if keep is not None else fallback, drop if drop is not None else fallback)
    return pointers, strides, {"HAS_KEEP": keep is not None, "HAS_DROP": drop is not None}


def _select_triton(
    seed, seed_tensor, batch_size, num_tokens, num_keep, device, ordered, write_inverse, always_keep, drop_first
):
    ids = torch.empty(batch_size, num_keep, dtype=torch.int64, device=device)
    inv = torch.empty(batch_size, num_tokens, dtype=torch.int32, device=device) if write_inverse else ids
    if batch_size > 0:
        block_n = max(16, next_power_of_2(num_tokens))
        masks, strides, flags = _priority_args(always_keep, drop_first, ids)
        _select_kernel[(batch_size,)](
            ids, inv, seed, seed_tensor if seed_tensor is not None else ids, *masks, num_tokens, num_keep, *strides,
            SEED_FROM_PTR=seed_tensor is not None, ORDERED=ordered, WRITE_INVERSE=write_inverse, BLOCK_N=block_n,
            num_warps=sort_warps(block_n), **flags,
        )  # fmt: skip
    return ids, inv if write_inverse else _no_inverse(num_tokens, device)


# The one-launch selection + gather sorts each sample's keys once per channel block (module docstring): cheap next
# to the copy up to 256 keys (a few hundred instructions per warp), not at 1024 (thousands, three times over).
FUSED_MAX_TOKENS = 256


def _select_gather_triton(x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, always_keep, drop_first):
    """(y, ids, inv): the fused kernel where N <= FUSED_MAX_TOKENS, else select + gather."""
    batch_size, seq_len, dim = x.shape
    num_tokens = seq_len - num_prefix_tokens
    if num_tokens > FUSED_MAX_TOKENS:
        ids, inv = _select_triton(
            seed, seed_tensor, batch_size, num_tokens, num_keep, x.device, ordered, True, always_keep, drop_first
        )
        return _copy_rows_triton(x, ids, num_prefix_tokens), ids, inv
    if x.stride(2) != 1:
        x = x.contiguous()
    y = torch.empty(batch_size, num_prefix_tokens + num_keep, dim, dtype=x.dtype, device=x.device)
    ids = torch.empty(batch_size, num_keep, dtype=torch.int64, device=x.device)
    inv = torch.empty(batch_size, num_tokens, dtype=torch.int32, device=x.device)
    if batch_size > 0:
        block_n = max(16, next_power_of_2(num_tokens))
        block_r, block_d = _copy_tile(dim, x.element_size())
        masks, strides, flags = _priority_args(always_keep, drop_first, ids)
        grid = (batch_size, max(1, cdiv(dim, block_d)))  # one channel block at least: the ids are written anyway
        _select_gather_kernel[grid](
            x, y, ids, inv, seed, seed_tensor if seed_tensor is not None else ids, *masks, num_tokens, num_keep,
            num_prefix_tokens, dim, x.stride(0), x.stride(1), *strides, SEED_FROM_PTR=seed_tensor is not None,
            ORDERED=ordered, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=sort_warps(block_n),
            **flags,
        )  # fmt: skip
    return y, ids, inv


def _copy_rows_triton(source: torch.Tensor, row_map: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """[B, P + len(map), D] from source [B, P + n, D]: prefix rows copied, patch rows by the map (-1: zeros)."""
    if source.stride(2) != 1:
        source = source.contiguous()
    batch_size, source_len, dim = source.shape
    map_len = row_map.shape[1]
    out = torch.empty(batch_size, num_prefix_tokens + map_len, dim, dtype=source.dtype, device=source.device)
    total_rows = out.shape[0] * out.shape[1]
    if total_rows and dim:
        block_r, block_d = _copy_tile(dim, source.element_size())
        grid = (cdiv(total_rows, block_r), cdiv(dim, block_d))
        _copy_rows_kernel[grid](
            source, row_map.contiguous(), out, total_rows, num_prefix_tokens, map_len,
            source_len - num_prefix_tokens, dim, source.stride(0), source.stride(1),
            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, no host syncs) and autograd
# ----------------------------------------------------------------------------------------------------------------


def _select_reference(
    seed, seed_tensor, batch_size, num_tokens, num_keep, device, ordered, write_inverse, always_keep, drop_first
):
    seed = seed_value(seed, seed_tensor)
    ids = select_reference(seed, batch_size, num_tokens, num_keep, device, ordered, always_keep, drop_first)
    return ids, inverse_reference(ids, num_tokens) if write_inverse else _no_inverse(num_tokens, device)


def _select_cuda(extension, seed, seed_tensor, batch, num_tokens, num_keep, device, ordered, inverse, keep, drop):
    ids, inv = extension.select_tokens(
        seed, seed_tensor, batch, num_tokens, num_keep, ordered, inverse, device, keep, drop
    )
    return ids, inv if inverse else _no_inverse(num_tokens, device)


def _no_inverse(num_tokens: int, device: torch.device) -> torch.Tensor:
    return torch.empty(0, num_tokens, dtype=torch.int32, device=device)


def _inverse(ids: torch.Tensor, inv: torch.Tensor | None, num_tokens: int) -> torch.Tensor:
    """The inverse map the scatter kernels read: the selection's when it wrote one, else built from the ids."""
    return inv if inv is not None else inverse_reference(ids, num_tokens)


@masksub_op(
    "select_tokens",
    device="device",
    check=_select_sizes,
    torch=_select_reference,
    triton=_select_triton,
    cuda=_select_cuda,
    records=("random_keep_indices",),
)
def _select_op(
    seed: int,
    seed_tensor: torch.Tensor | None,
    batch_size: int,
    num_tokens: int,
    num_keep: int,
    device: torch.device,
    ordered: bool,
    write_inverse: bool,
    always_keep: torch.Tensor | None,
    drop_first: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64 [B, K], inv int32 [B, N]); inv is an empty [0, N] tensor unless write_inverse. always_keep and
    drop_first: None or bool [B, N] on ``device``, any strides (checked by the public functions)."""


@_select_op.register_fake
def _(seed, seed_tensor, batch_size, num_tokens, num_keep, device, ordered, write_inverse, always_keep, drop_first):
    ids = torch.empty(batch_size, num_keep, dtype=torch.int64, device=device)
    inv = torch.empty(batch_size if write_inverse else 0, num_tokens, dtype=torch.int32, device=device)
    return ids, inv


@masksub_op(
    "gather_tokens",
    device="x",
    check=_gather_sizes,
    torch=lambda x, ids, inv, num_prefix_tokens: gather_rows(x, ids, num_prefix_tokens),
    triton=lambda x, ids, inv, num_prefix_tokens: _copy_rows_triton(x, ids, num_prefix_tokens),
    cuda=lambda extension, x, ids, inv, num_prefix_tokens: extension.gather_tokens(x, ids, num_prefix_tokens),
)
def _gather_op(x: torch.Tensor, ids: torch.Tensor, inv: torch.Tensor | None, num_prefix_tokens: int) -> torch.Tensor:
    """Y [B, P+K, D] from X [B, P+N, D] and ids [B, K]; inv rides along for the backward."""


@_gather_op.register_fake
def _(x, ids, inv, num_prefix_tokens):
    return x.new_empty(x.shape[0], num_prefix_tokens + ids.shape[1], x.shape[2])


@masksub_op(
    "scatter_tokens",
    device="grad_y",
    check=_scatter_sizes,
    torch=lambda grad_y, ids, inv, prefix, num_tokens: scatter_rows(grad_y, ids, prefix, num_tokens),
    triton=lambda grad_y, ids, inv, prefix, n: _copy_rows_triton(grad_y, _inverse(ids, inv, n), prefix),
    cuda=lambda extension, grad_y, ids, inv, prefix, n: extension.scatter_tokens(grad_y, _inverse(ids, inv, n), prefix),
)
def _scatter_op(
    grad_y: torch.Tensor,
    ids: torch.Tensor,
    inv: torch.Tensor | None,
    num_prefix_tokens: int,
    num_tokens: int,
) -> torch.Tensor:
    """dX [B, P+N, D] from dY [B, P+K, D]: the gather's backward."""


@_scatter_op.register_fake
def _(grad_y, ids, inv, num_prefix_tokens, num_tokens):
    return grad_y.new_empty(grad_y.shape[0], num_prefix_tokens + num_tokens, grad_y.shape[2])


def _scatter_setup_context(ctx, inputs, output):
    _, ids, inv, num_prefix_tokens, _ = inputs
    ctx.save_for_backward(ids, inv)
    ctx.num_prefix_tokens = num_prefix_tokens


def _scatter_backward(ctx, grad_x):
    # the scatter is linear in dY, its adjoint the gather: so the gathers' gradients are differentiable again
    ids, inv = ctx.saved_tensors
    return _gather_op(grad_x, ids, inv, ctx.num_prefix_tokens), None, None, None, None


_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup_context, differentiable=True)


def _gather_setup_context(ctx, inputs, output):
    x, ids, inv, num_prefix_tokens = inputs
    ctx.save_for_backward(ids, inv)
    ctx.num_prefix_tokens = num_prefix_tokens
    ctx.num_tokens = x.shape[1] - num_prefix_tokens


def _gather_backward(ctx, grad_y):
    ids, inv = ctx.saved_tensors
    grad_x = _scatter_op(grad_y, ids, inv, ctx.num_prefix_tokens, ctx.num_tokens)
    return grad_x, None, None, None


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup_context, differentiable=True)


def _select_gather_reference(x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, always_keep, drop_first):
    num_tokens = x.shape[1] - num_prefix_tokens
    ids, inv = _select_reference(
        seed, seed_tensor, x.shape[0], num_tokens, num_keep, x.device, ordered, True, always_keep, drop_first
    )
    return gather_rows(x, ids, num_prefix_tokens), ids, inv  # whole rows on the CPU path


def _select_gather_cuda(extension, x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, always_keep, drop_first):
    # one launch where N is small, select + gather above (the extension's launcher decides)
    return extension.select_gather_tokens(
        x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, always_keep, drop_first
    )


@masksub_op(
    "select_gather_tokens",
    device="x",
    check=_select_gather_sizes,
    torch=_select_gather_reference,
    triton=_select_gather_triton,
    cuda=_select_gather_cuda,
    records=("random_token_select", "gather_tokens"),
)
def _select_gather_op(
    x: torch.Tensor,
    seed: int,
    seed_tensor: torch.Tensor | None,
    num_keep: int,
    num_prefix_tokens: int,
    ordered: bool,
    always_keep: torch.Tensor | None,
    drop_first: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [B, P+K, D], ids int64 [B, K], inv int32 [B, N]): the selection and its gather in one op (one launch on
    the GPU where N <= FUSED_MAX_TOKENS); the backward is the gather's scatter."""


@_select_gather_op.register_fake
def _(x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, always_keep, drop_first):
    batch_size, seq_len, dim = x.shape
    ids = torch.empty(batch_size, num_keep, dtype=torch.int64, device=x.device)
    inv = torch.empty(batch_size, seq_len - num_prefix_tokens, dtype=torch.int32, device=x.device)
    return x.new_empty(batch_size, num_prefix_tokens + num_keep, dim), ids, inv


def _select_gather_setup_context(ctx, inputs, output):
    x, num_prefix_tokens = inputs[0], inputs[4]
    _, ids, inv = output
    ctx.save_for_backward(ids, inv)
    ctx.num_prefix_tokens = num_prefix_tokens
    ctx.num_tokens = x.shape[1] - num_prefix_tokens


def _select_gather_backward(ctx, grad_y, grad_ids, grad_inv):
    ids, inv = ctx.saved_tensors
    grad_x = _scatter_op(grad_y, ids, inv, ctx.num_prefix_tokens, ctx.num_tokens)
    return grad_x, None, None, None, None, None, None, None


_select_gather_op.register_autograd(
    _select_gather_backward, setup_context=_select_gather_setup_context, differentiable=True
)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def random_keep_indices(
    batch_size: int,
    num_tokens: int,
    num_keep: int,
    *,
    seed: int | torch.Tensor | None = None,
    device: torch.device | str | None = None,
    ordered: bool = False,
    always_keep: torch.Tensor | None = None,
    drop_first: torch.Tensor | None = None,
    validate_masks: bool | None = None,
) -> torch.Tensor:
    """Per sample, the positions of the ``num_keep`` smallest Philox draws among ``num_tokens``.

    Returns int64 [batch_size, num_keep] on ``device`` (default: the seed tensor's device, else the masks', else
    torch's default device), in ascending-draw order (the official code's order) or in ascending position when
    ``ordered=True``. The same ``seed`` gives the same indices on every backend and device; ``seed=None`` draws one
    from torch's default generator. ``seed`` may also be an int64 tensor of one element on ``device`` (default: its
    device), read on the device by the kernels: a captured CUDA graph then draws new indices whenever the tensor
    changes.

    ``always_keep`` / ``drop_first``: optional bool [batch_size, num_tokens] on ``device``, any strides (module
    docstring, docs/semantics.md §4). Always-keep positions are kept and come first (by position); drop-first
    positions are dropped before any other and come last (by position); where both are set, always_keep wins.
    A row may mark at most ``num_keep`` always-keep positions: ``validate_masks`` checks this, which reads values
    (None: on CPU tensors only, so that GPU calls never synchronise); unvalidated, such a row keeps its
    ``num_keep`` lowest always-keep positions. Without masks the ids are those of the plain selection.
    """
    batch_size, num_tokens, num_keep = check_keep_args(batch_size, num_tokens, num_keep)
    if device is None and not isinstance(seed, torch.Tensor):
        device = next((m.device for m in (always_keep, drop_first) if isinstance(m, torch.Tensor)), None)
    device = resolve_device(device, seed)
    seed, seed_tensor = resolve_seed(seed, device)
    ordered = check_bool("ordered", ordered)
    validate = _validate_default(validate_masks, device, "validate_masks", (always_keep, drop_first))
    _check_priority_masks(always_keep, drop_first, batch_size, num_tokens, num_keep, device, validate)
    ids, _ = _select_op(
        seed, seed_tensor, batch_size, num_tokens, num_keep, device, ordered, False, always_keep, drop_first
    )
    return ids


def gather_tokens(
    x: torch.Tensor, ids: torch.Tensor, *, num_prefix_tokens: int = 1, validate_ids: bool | None = None
) -> torch.Tensor:
    """Keep the prefix tokens and the patch tokens ``ids`` of each sample; differentiable in ``x``.

    x: [B, P+N, D] float (fp32/fp16/bf16/fp64), any strides; ids: int64/int32 [B, K], unique per row, values
    in [0, N). Returns a new contiguous [B, P+K, D] tensor of x's dtype:
    y[:, :P] = x[:, :P] and y[:, P+j] = x[:, P+ids[:, j]].
    The backward writes every element of dX once (scatter of dY, zeros elsewhere).

    ``validate_ids`` checks range and uniqueness of the values, which reads them on the host: the default (None)
    does so for CPU tensors only, so that CUDA calls never synchronise. Unvalidated, an out-of-range id gives a row
    of zeros (and no gradient) on every backend, never stray memory; repeated ids are the caller's error.
    """
    num_prefix_tokens = _check_tokens(x, num_prefix_tokens)
    if validate_ids is None:  # never while a tracer runs: reading values would break it
        validate_ids = isinstance(ids, torch.Tensor) and ids.device.type == "cpu" and values_readable((x, ids))
    validate = check_bool("validate_ids", validate_ids) and not getattr(ids, "is_meta", False)
    _check_ids(x, ids, num_prefix_tokens, validate)
    return _gather_op(x, ids, None, num_prefix_tokens)


def random_token_select(
    x: torch.Tensor,
    mask_ratio: float = 0.5,
    *,
    num_prefix_tokens: int = 1,
    seed: int | torch.Tensor | None = None,
    ordered: bool = False,
    always_keep: torch.Tensor | None = None,
    drop_first: torch.Tensor | None = None,
    validate_masks: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskSub's ViT sub-branch masking: keep K = floor(N * (1 - mask_ratio)) random patch tokens per sample.

    x: [B, P+N, D] float, P = ``num_prefix_tokens`` prefix tokens (always kept) then N patch tokens.
    Returns (y [B, P+K, D] of x's dtype, differentiable in x; ids int64 [B, K]). Contract: for the same seed,
    ``ids == random_keep_indices(B, N, K, seed=seed, ordered=ordered, always_keep=..., drop_first=...)`` and
    ``y == gather_tokens(x, ids)``. ``always_keep`` / ``drop_first``: optional bool [B, N] over the patch tokens
    (not the prefix) on x's device, with ``validate_masks`` as in ``random_keep_indices``.
    """
    num_prefix_tokens = _check_tokens(x, num_prefix_tokens)
    batch_size, seq_len, _ = x.shape
    num_tokens = seq_len - num_prefix_tokens
    num_keep = num_kept_tokens(num_tokens, mask_ratio)
    check_keep_args(batch_size, num_tokens, num_keep)
    seed, seed_tensor = resolve_seed(seed, x.device)
    ordered = check_bool("ordered", ordered)
    validate = _validate_default(validate_masks, x.device, "validate_masks", (x, always_keep, drop_first))
    _check_priority_masks(always_keep, drop_first, batch_size, num_tokens, num_keep, x.device, validate)
    y, ids, _ = _select_gather_op(x, seed, seed_tensor, num_keep, num_prefix_tokens, ordered, always_keep, drop_first)
    return y, ids
