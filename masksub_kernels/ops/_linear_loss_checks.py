"""The fused-linear losses' argument checks (linear_masksub_loss.py's public functions): the hidden states, the
head's weight and bias (shapes, dtypes, devices, with a hint for a head left in its dtype under autocast), the rows
and classes the kernels can index (MAX_ROWS, MAX_CLASSES), chunk_rows, and then the options and the target as
masksub_loss checks them (ops/losses.py's rules and messages), applied to the logits' shape [M, C]. Apart from the
op so that linear_masksub_loss.py reads as reference, launchers, custom ops and public API. Only the target's class
ids are read, on CPU tensors in eager mode (ops/losses.py's _check_target); the rest is metadata."""

from __future__ import annotations

import numbers

import torch

from ._common import FLOAT_DTYPES, MAX_CLASSES, check_bool
from ._loss_checks import (
    check_branch_grads,
    check_op_options,
    check_reduced_weights,
    check_saved_stats,
    check_target_layout,
    like_error,
)
from .losses import _check_options, _check_target, fp64_threshold_applied

# The kernels' row positions (order, count, a row tile's start plus a step of up to MAX_DW_SPLITS tiles) are int32
MAX_ROWS = 2**31 - 2**10


# The device types whose autocast state is read (torch.is_autocast_enabled refuses others, e.g. meta): a fixed
# tuple, traced by torch.compile as a constant
AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _autocast_on(device: str) -> bool:
    return device in AUTOCAST_DEVICES and torch.is_autocast_enabled(device)


def autocast_operands(hidden, sub_hidden, weight, bias) -> tuple:
    """The head's operands as ``F.linear`` would take them under ``torch.autocast`` for the hidden states' device:
    each floating tensor of that device type but fp64 in autocast's dtype (differentiable casts: an fp32 weight's
    gradient stays fp32, its values rounded once to autocast's dtype, as F.linear's under autocast); as given
    without autocast, or with fp64 hidden states (which autocast leaves, and the checks then refuse beside operands
    of another dtype, naming the dtypes given). The op runs with autocast off: the loss in fp32 all the same."""
    device = hidden.device.type if isinstance(hidden, torch.Tensor) else None
    if device is None or hidden.dtype == torch.float64 or not _autocast_on(device):
        return hidden, sub_hidden, weight, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(x):
        castable = isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64
        return x.to(dtype) if castable and x.device.type == device else x

    return cast(hidden), cast(sub_hidden), cast(weight), cast(bias)


def _check_linear(hidden, sub_hidden, weight, bias, hidden_name: str = "main_hidden") -> None:
    """Shapes, dtypes and devices of hidden [M, D], sub_hidden like hidden, weight [C, D], bias [C] or None; errors
    name the hidden states as the caller's signature does (hidden_name)."""
    for name, x in ((hidden_name, hidden), ("sub_hidden", sub_hidden), ("weight", weight), ("bias", bias)):
        if not (x is None and name in ("sub_hidden", "bias")) and not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if hidden.dim() != 2 or hidden.shape[1] < 1:
        flatten = " (flatten the leading dimensions into rows, the target's alike)" if hidden.dim() > 2 else ""
        raise ValueError(
            f"{hidden_name} must be [rows, depth] (2-D, depth >= 1), got shape {tuple(hidden.shape)}{flatten}"
        )
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{hidden_name} must be float32, float16, bfloat16 or float64, got {hidden.dtype}")
    if hidden.shape[0] > MAX_ROWS:  # every backend refuses what the kernels' int32 row positions cannot reach
        raise ValueError(f"{hidden_name} may have at most {MAX_ROWS} rows (2^31 - 2^10), got {hidden.shape[0]}")
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be [classes, hidden={hidden.shape[1]}] (classes >= 1), got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] > MAX_CLASSES:  # the loss kernels' int32 column positions (ops/_common.py)
        raise ValueError(f"weight may have at most {MAX_CLASSES} classes (2^31 - 2^16), got {weight.shape[0]}")
    expected = {"sub_hidden": tuple(hidden.shape), "weight": tuple(weight.shape), "bias": (weight.shape[0],)}
    for name, x in (("sub_hidden", sub_hidden), ("weight", weight), ("bias", bias)):
        if x is not None and (tuple(x.shape) != expected[name] or x.dtype != hidden.dtype or x.device != hidden.device):
            # (a head's parameters left in their dtype beside hidden states cast by hand)
            cast = tuple(x.shape) == expected[name] and x.device == hidden.device and name != "sub_hidden"
            cast = cast and x.is_floating_point()  # (an integer tensor: neither a cast nor autocast makes it a weight)
            hint = f" (cast it: {name}.to({hidden_name}.dtype)" if cast else ""
            float64 = torch.float64 in (hidden.dtype, x.dtype)  # autocast leaves float64 alone (helper-312)
            if cast and not float64 and not _autocast_on(hidden.device.type):
                hint += ", or run under torch.autocast, which casts both"
            hint += ")" if cast else ""
            if name == "sub_hidden" and x.dim() == 2 and x.shape[1:] == hidden.shape[1:] and x.shape[0] < len(hidden):
                hint = (  # a sub-branch that keeps fewer tokens than the main one (helper-312)
                    f" (the rows are aligned: where the sub-branch kept fewer tokens, gather the main rows at its kept "
                    f"positions, {hidden_name}[ids] and target[ids], with every labelled position kept as the mlm "
                    "family does; else the main loss of the other rows needs a call of its own)"
                )
            raise like_error(x.dtype != hidden.dtype)(
                f"{name} must be {list(expected[name])} with {hidden_name}'s dtype and device ({hidden.dtype}, "
                f"{hidden.device}), got {list(x.shape)} {x.dtype} {x.device}{hint}"
            )


def check_chunk_rows(chunk_rows, default: str = "None") -> int:
    """chunk_rows as the grads op takes it: an int >= 1, or 0 for None (the backend's default). ``default``: how
    the caller spells the default in the message (the op itself takes 0)."""
    if chunk_rows is None:
        return 0
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral):
        raise TypeError(f"chunk_rows must be an int >= 1 or {default}, got {type(chunk_rows).__name__}")
    if not 1 <= chunk_rows < 2**31:
        raise ValueError(f"chunk_rows must be an int >= 1 (below 2^31) or {default}, got {chunk_rows}")
    return int(chunk_rows)


def _check_all(hidden, sub_hidden, weight, bias, target, mode, reduction, label_smoothing, ignore_index,
               temperature, target_threshold, hidden_name="main_hidden"):  # fmt: skip
    """(target, options of the op) after every check of masksub_loss, applied to the logits' shape [M, C]."""
    _check_linear(hidden, sub_hidden, weight, bias, hidden_name)
    options = _check_options(mode, reduction, label_smoothing, ignore_index, temperature, target_threshold)
    target = _check_target((hidden.shape[0], weight.shape[0]), hidden.device, target, options.ignore_index)
    return fp64_threshold_applied(target, hidden.dtype, options)


def check_linear_loss_op(hidden, sub_hidden, weight, bias, target, bce, label_smoothing, ignore_index, temperature,
                         threshold) -> None:  # fmt: skip
    """linear_masksub_loss_forward's check (MaskSubOp's ``check``, for a direct torch.ops.masksub call): the public
    functions' checks of its operands and options (ops/_loss_checks.py) but the class ids' values."""
    _check_linear(hidden, sub_hidden, weight, bias, "hidden")
    check_target_layout((hidden.shape[0], weight.shape[0]), hidden.device, target)
    check_op_options(bce, label_smoothing, ignore_index, temperature, threshold)


def check_linear_grads_op(hidden, sub_hidden, weight, bias, target, mean, main_weight, sub_weight, *rest) -> None:
    """linear_masksub_loss_grads' check (the grads-in-forward op; MaskSubOp's ``check``): the forward op's, the
    weights (finite, >= 0) and chunk_rows (0 for the default, else in [1, 2^31))."""
    *_, chunk_rows, bce, label_smoothing, ignore_index, temperature, threshold = rest
    check_linear_loss_op(hidden, sub_hidden, weight, bias, target, bce, label_smoothing, ignore_index, temperature,
                         threshold)  # fmt: skip
    check_reduced_weights(main_weight, sub_weight, mean)
    if chunk_rows != 0:
        check_chunk_rows(chunk_rows, default="0 (the default)")


def check_linear_backward_op(grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, *rest) -> None:
    """linear_masksub_loss_backward's check (MaskSubOp's ``check``): the forward op's, the upstream gradients [M],
    the forward's output [9, M] and the four flags (need_hidden, need_weight, need_bias, gather)."""
    flags, options = rest[:4], rest[4:]
    check_linear_loss_op(hidden, sub_hidden, weight, bias, target, *options)
    check_branch_grads(grad_main, grad_sub, True, sub_hidden is not None, hidden.shape[0], hidden.device)
    check_saved_stats(out, hidden.shape[0], hidden.device)
    for name, flag in zip(("need_hidden", "need_weight", "need_bias", "gather"), flags):
        check_bool(name, flag)
