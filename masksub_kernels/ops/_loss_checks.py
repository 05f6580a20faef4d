"""The loss ops' tensor and option checks (metadata only, no value read), in one place for both routes into them:
the public losses (losses.py; the fused-linear pair's _linear_loss_checks.py) and the ops' own ``check``
(MaskSubOp: a direct ``torch.ops.masksub`` call of masksub_loss_forward, masksub_loss_reduced or
linear_masksub_loss_forward, which no public function checked). Every backend then refuses alike, before any runs:
without the ops' check, Triton read past a short target or a narrower sub_logits / weight (a silently wrong loss),
the reference failed with torch's own shape errors and the cuda binding refused with its own (helper-330)."""

from __future__ import annotations

import torch

from ._common import FLOAT_DTYPES, FP32_MAX, INDEX_DTYPES, MAX_CLASSES, check_bool, check_int, check_real
from ._loss_layout import NUM_OUT

# The ignore_index passed by losses without one: an id equal to it is refused on CPU tensors, but would count as
# ignored elsewhere (no class id is that negative in practice; the fused op has no "none" ignore_index).
NO_IGNORE = -(2**63)
# Rows of the loss kernels: one program (or a row of class splits) per row, a GPU grid's x axis (2^31 - 1: a launch
# past it fails with "invalid argument"), less a block of the reduced op's last program, which sums the rows' losses
# in int32 steps of 1024 (`start + 1024` wrapped negative past 2^31 - 2^10, and the loop read below the losses:
# helper-336). The fused-linear checks' bound alike
MAX_ROWS = 2**31 - 2**10
# The kernels use T, T^2 and 1 / T in fp32: T^2 and 1 / T^2 stay normal fp32 numbers for T >= 2^-63. Above 2^13
# the sub-branch gradient T (softmax(s / T) - softmax(z / T)) (sigmoids for BCE) loses its precision to
# cancellation: both terms tend to 1 / C (1/2), their difference is ~ (s - z) / (T C), and each carries fp32's
# rounding, a relative error of ~ eps T / |s - z| (1e-3 of an fp64 reference at T = 1e5, 17% at 1e7, all of it at
# 1e9, where the backends also disagree). Distillation temperatures are 1 to ~20.
TEMPERATURE_RANGE = (2.0**-63, 2.0**13)


def like_error(dtype_differs: bool) -> type[Exception]:
    """The class of the refusal of a tensor that must match another's shape, dtype and device (sub_logits, the
    head's operands): TypeError where its dtype differs (a wrong dtype is a TypeError, as for one outside the
    accepted dtypes and for the token ops' mask_token: docs/semantics.md), ValueError for a shape or device alone."""
    return TypeError if dtype_differs else ValueError


def check_logits(name: str, x: torch.Tensor) -> None:
    """Logits [rows, classes], float, within the kernels' row and class bounds."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] < 1:
        flatten = " (flatten the leading dimensions into rows, the target's alike)" if x.dim() > 2 else ""
        raise ValueError(f"{name} must be [rows, classes] (2-D, classes >= 1), got shape {tuple(x.shape)}{flatten}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.shape[0] > MAX_ROWS:  # every backend refuses what the kernels' one program per row cannot launch
        raise ValueError(f"{name} may have at most {MAX_ROWS} rows (2^31 - 2^10), got {x.shape[0]}")
    if x.shape[1] > MAX_CLASSES:  # (the kernels' int32 column positions)
        raise ValueError(f"{name} may have at most {MAX_CLASSES} classes (2^31 - 2^16), got {x.shape[1]}")


def check_pair(sub: torch.Tensor, main: torch.Tensor, sub_name="sub_logits", main_name="main_logits") -> None:
    """Both logits checked, sub of main's shape, dtype and device."""
    check_logits(sub_name, sub)
    check_logits(main_name, main)
    if sub.shape != main.shape or sub.dtype != main.dtype or sub.device != main.device:
        raise like_error(sub.dtype != main.dtype)(
            f"{sub_name} must match {main_name} in shape, dtype and device: expected "
            f"{tuple(main.shape)} {main.dtype} {main.device}, got {tuple(sub.shape)} {sub.dtype} {sub.device}"
        )


def check_target_layout(shape: tuple[int, int], device: torch.device, target) -> None:
    """The target's kind, dtype, shape and device against the logits' shape [rows, classes] and device (the logits
    themselves are not needed: the fused-linear pair has none): float probabilities [rows, classes] or int64 / int32
    class ids [rows]."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    rows, classes = shape
    if target.device != device:
        raise ValueError(f"target must be on the device of the logits ({device}), got {target.device}")
    if target.dtype in FLOAT_DTYPES:
        if tuple(target.shape) != (rows, classes):
            raise ValueError(
                f"probability target must have the logits' shape {(rows, classes)}, got {tuple(target.shape)} "
                "(class ids must be an int64 or int32 tensor [rows])"
            )
        return
    if target.dtype not in INDEX_DTYPES:
        raise TypeError(
            f"target must be int64 or int32 class ids [rows] or float probabilities [rows, classes], got {target.dtype}"
        )
    if tuple(target.shape) != (rows,):
        raise ValueError(
            f"class-id target must be [rows={rows}], got shape {tuple(target.shape)} "
            "(probabilities [rows, classes] must be a float tensor)"
        )


def check_op_options(bce, label_smoothing, ignore_index, temperature, target_threshold) -> None:
    """The loss ops' trailing options as the public functions make them (losses._check_options): ignore_index may
    be NO_IGNORE here (what the losses without one pass). The public functions pass them checked, as Python
    floats, int and bool: that case first, in one cheap test (~0.4 us instead of ~4)."""
    if (
        type(bce) is bool
        and type(label_smoothing) is float
        and 0.0 <= label_smoothing <= 1.0
        and type(ignore_index) is int
        and NO_IGNORE <= ignore_index < 2**63
        and type(temperature) is float
        and TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]
        and (target_threshold is None or (type(target_threshold) is float and 0.0 <= target_threshold < 1.0))
    ):
        return
    check_bool("bce", bce)
    check_real("label_smoothing", label_smoothing, 0.0, 1.0)
    check_int("ignore_index", ignore_index)
    if not NO_IGNORE <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    check_real("temperature", temperature, *TEMPERATURE_RANGE, expected="> 0, in [2**-63, 2**13]")
    if target_threshold is not None:
        check_real("target_threshold", target_threshold, 0.0, 1.0, open_high=True)


def check_loss_op(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold) -> None:
    """masksub_loss_forward's check (the per-row op): what the public losses check of its arguments but the class
    ids' values (read on CPU tensors by the public functions only; out of range: NaN rows on every backend)."""
    if sub_logits is None:
        check_logits("logits", logits)
    else:
        check_pair(sub_logits, logits, "sub_logits", "logits")
    if target is not None:
        check_target_layout(logits.shape, logits.device, target)
    elif sub_logits is None:
        raise ValueError("the loss op needs a target, sub_logits or both; got neither")
    check_op_options(bce, label_smoothing, ignore_index, temperature, threshold)


def check_reduced_loss_op(logits, sub_logits, target, *options) -> None:
    """masksub_loss_reduced's check: the per-row op's, then the weights (finite, >= 0) and the mean flag."""
    *options, main_weight, sub_weight, mean = options
    check_loss_op(logits, sub_logits, target, *options)
    check_reduced_weights(main_weight, sub_weight, mean)


def check_reduced_weights(main_weight, sub_weight, mean) -> None:
    """The reduced ops' term weights (finite, >= 0, at most fp32's largest) and their mean flag (a bool)."""
    if type(main_weight) is float and type(sub_weight) is float and type(mean) is bool:  # the public functions'
        if 0.0 <= main_weight <= FP32_MAX and 0.0 <= sub_weight <= FP32_MAX:
            return
    for name, weight in (("main_weight", main_weight), ("sub_weight", sub_weight)):
        check_real(name, weight, 0.0, FP32_MAX, expected=">= 0 (at most fp32's max)")
    check_bool("mean", mean)


# The backward ops' checks (a direct torch.ops.masksub call of a backward op: the autograd backward passes what the
# forward op made). The forward's operands and options as its own check, then what the forward handed over: its
# fp32 [9, rows] output, the upstream gradients. The cuda binding's refusals, on every backend: unchecked, Triton
# read past a short out or grad (a silently wrong gradient) and the reference raised torch's own indexing errors.


def check_saved_stats(out, rows: int, device: torch.device) -> None:
    """The forward op's output as a backward op reads it: a contiguous fp32 [9, rows] on the operands' device."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor (the forward op's output), got {type(out).__name__}")
    if out.dtype != torch.float32:
        raise TypeError(f"out must be the forward op's float32 output, got {out.dtype}")
    if tuple(out.shape) != (NUM_OUT, rows) or not out.is_contiguous() or out.device != device:
        raise ValueError(
            f"out must be the forward op's output: contiguous [{NUM_OUT}, rows={rows}] on {device}, got "
            f"{tuple(out.shape)}{'' if out.is_contiguous() else ' (not contiguous)'} on {out.device}"
        )


def check_upstream_grad(name: str, grad, shape: tuple[int, ...], device: torch.device) -> None:
    """An upstream gradient of a backward op: a float tensor of ``shape`` (any strides) on the operands' device."""
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(grad).__name__}")
    if grad.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {grad.dtype}")
    if tuple(grad.shape) != shape or grad.device != device:
        raise ValueError(f"{name} must be {list(shape)} on {device}, got {tuple(grad.shape)} on {grad.device}")


def check_branch_grads(grad_main, grad_sub, has_target: bool, has_sub: bool, rows: int, device) -> None:
    """The per-row backward ops' upstream gradients: [rows] or None, each for a term the operands have."""
    if grad_main is not None and not has_target:
        raise ValueError("grad_main needs a target: without one there is no main term")
    if grad_sub is not None and not has_sub:
        raise ValueError("grad_sub needs sub operands: without them there is no sub term")
    for name, grad in (("grad_main", grad_main), ("grad_sub", grad_sub)):
        if grad is not None:
            check_upstream_grad(name, grad, (rows,), device)


def check_loss_backward_op(grad_main, grad_sub, out, logits, sub_logits, target, *options) -> None:
    """masksub_loss_backward's check: the forward op's, the upstream gradients [M] and its output [9, M]."""
    check_loss_op(logits, sub_logits, target, *options)
    check_branch_grads(grad_main, grad_sub, target is not None, sub_logits is not None, logits.shape[0], logits.device)
    check_saved_stats(out, logits.shape[0], logits.device)


def check_reduced_backward_op(grad, need_main, need_sub, d, out, logits, sub_logits, target, *options) -> None:
    """masksub_loss_reduced_backward's check: the forward op's, the flags, the reduced losses' gradient [4], the
    divisor d (fp32 [1]) and the per-row output [9, M]."""
    *options, main_weight, sub_weight = options
    check_loss_op(logits, sub_logits, target, *options)
    check_reduced_weights(main_weight, sub_weight, False)
    check_bool("need_main", need_main)
    check_bool("need_sub", need_sub)
    if need_main and target is None:
        raise ValueError("need_main needs a target: without one there is no main term")
    if need_sub and sub_logits is None:
        raise ValueError("need_sub needs sub_logits: without them there is no sub term")
    check_upstream_grad("grad", grad, (4,), logits.device)
    if not isinstance(d, torch.Tensor) or d.dtype != torch.float32:
        raise TypeError(f"d must be the reduced forward's float32 divisor [1], got {getattr(d, 'dtype', type(d))}")
    if tuple(d.shape) != (1,) or d.device != logits.device:
        raise ValueError(f"d must be [1] on {logits.device}, got {tuple(d.shape)} on {d.device}")
    check_saved_stats(out, logits.shape[0], logits.device)
