"""The public MaskSub losses: soft-target CE / BCE, self-distillation, and the fused ``masksub_loss``.

Each validates its inputs on the host (messages say what was expected and what came; no value is read from a CUDA
tensor) and calls a fused op with the terms it needs: for reduction='none' the per-row op of ``ops/masksub_loss.py``
(maths, kernels and autograd live there), whose per-row values it returns; for 'sum' and 'mean' the op of
``ops/masksub_loss_reduced.py``, which also reduces them on the device ('sum' adds them, 'mean' divides by the rows
that count): one launch more instead of a dozen small torch ops and their autograd (the host cost at small shapes).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from .. import _backend
from ._common import check_real, values_readable
from ._loss_checks import NO_IGNORE, TEMPERATURE_RANGE, check_target_layout
from ._loss_checks import check_logits as _check_logits
from ._loss_checks import check_pair as _check_pair
from .masksub_loss import MAIN, SUB, _loss_op
from .masksub_loss_reduced import _reduced_loss_op

MODES = ("ce", "bce")
REDUCTIONS = ("none", "sum", "mean")


class MaskSubLoss(NamedTuple):
    """``loss = main_weight * main + sub_weight * sub`` and the two unweighted criteria, fp32: 0-d tensors with
    reduction 'mean' or 'sum', [M] (one per row) with 'none'."""

    loss: torch.Tensor
    main: torch.Tensor
    sub: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# Host-side validation: messages say what was expected and what came (no value reads on CUDA tensors)
# ----------------------------------------------------------------------------------------------------------------

# The single-branch losses share masksub_loss's ops: each reports its own calls (MaskSubOp.report_as)
_backend.register_op_names(
    ("soft_target_cross_entropy", "soft_target_bce", "self_distillation_loss"), _loss_op.implemented
)

_ABSENT = object()  # _check_options' ignore_index for the losses without one


class _Options(NamedTuple):
    """The checked trailing arguments of the fused op ``_loss_op``."""

    bce: bool
    label_smoothing: float
    ignore_index: int
    temperature: float
    target_threshold: float | None


def _check_target(shape: tuple[int, int], device, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The target checked against the logits' shape [rows, classes] and device, class ids as contiguous int64."""
    check_target_layout(shape, device, target)
    rows, classes = shape
    if target.is_floating_point():
        if target.requires_grad and torch.is_grad_enabled():  # it would silently get no gradient
            raise ValueError(
                "probability target requires grad, but the losses do not differentiate their targets: "
                "pass target.detach()"
            )
        return target
    target = target.long().contiguous()
    # An id outside [0, C) makes its row NaN on every backend (the kernels); on CPU tensors in eager mode it is
    # caught here with a clearer message. Never on a GPU (reading the ids would synchronise) nor while a tracer runs
    # (values_readable: torch.compile, make_fx, AOTAutograd, torch.func).
    if target.device.type == "cpu" and rows and values_readable((target,)):
        low, high = torch.stack(torch.aminmax(target)).tolist()
        if 0 <= low and high < classes:  # the common case in one pass, no [M] temporaries
            return target
        bad = (target < 0) | (target >= classes)
        if ignore_index != NO_IGNORE:
            bad &= target != ignore_index
        if bool(bad.any()):
            allowed = f"[0, {classes})" + ("" if ignore_index == NO_IGNORE else f" or ignore_index={ignore_index}")
            raise ValueError(f"class ids must be in {allowed}, got {int(target[bad][0])}")
    return target


def _choice(name: str, value, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise (ValueError if isinstance(value, str) else TypeError)(f"{name} must be one of {choices}, got {value!r}")


def _check_options(
    mode="ce", reduction="mean", label_smoothing=0.0, ignore_index=_ABSENT, temperature=1.0, target_threshold=None
) -> _Options:
    """The fused op's options from the public arguments, each checked (docs/semantics.md §7). ignore_index not
    given: a loss without one (NO_IGNORE)."""
    _choice("mode", mode, MODES)
    _choice("reduction", reduction, REDUCTIONS)
    if ignore_index is _ABSENT:
        ignore_index = NO_IGNORE
    elif isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    elif not NO_IGNORE < int(ignore_index) < 2**63:
        # -2^63 is NO_IGNORE, the losses' "no ignored rows" (refused on the CPU, counted as ignored elsewhere)
        raise ValueError(f"ignore_index must fit in int64 and not be -2**63 (reserved), got {ignore_index}")
    threshold = None
    if target_threshold is not None:
        if mode == "ce":
            raise ValueError("target_threshold binarises BCE targets: it needs mode='bce', got mode='ce'")
        # q > threshold on probabilities in [0, 1]: outside [0, 1) every target would become the same
        threshold = check_real("target_threshold", target_threshold, 0.0, 1.0, open_high=True)
    return _Options(
        bce=mode == "bce",
        label_smoothing=check_real("label_smoothing", label_smoothing, 0.0, 1.0),
        ignore_index=int(ignore_index),
        temperature=check_real("temperature", temperature, *TEMPERATURE_RANGE, expected="> 0, in [2**-63, 2**13]"),
        target_threshold=threshold,
    )


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def fp64_threshold_applied(target: torch.Tensor | None, dtype: torch.dtype, options: _Options):
    """(target, options): with fp64 logits, a threshold and probabilities, q := [q > threshold] compared here in
    fp64, as the reference compares, and the op given the 0 / 1 target without a threshold. The kernels compute fp64
    inputs in fp32, where q = 0.3 (an fp32 0.3 is 0.30000001) is not above 0.3: a whole class's target flipped."""
    if options.target_threshold is None or dtype != torch.float64 or target is None or not target.is_floating_point():
        return target, options
    binarised = (target.to(torch.float64) > options.target_threshold).to(target.dtype)
    return binarised, options._replace(target_threshold=None)


def _terms(logits, sub_logits, target, options: _Options, main_weight: float, sub_weight: float, reduction: str):
    """MaskSubLoss of the checked arguments: the per-row op for 'none', the reduced op otherwise."""
    target, options = fp64_threshold_applied(target, logits.dtype, options)
    if reduction == "none":
        out = _loss_op(logits, sub_logits, target, *options)
        main, sub = _reduce(out[MAIN], 1, "none"), _reduce(out[SUB], 1, "none")
        if sub_logits is None or target is None:  # one term of weight 1 (the single-term losses): it is the loss
            return MaskSubLoss(main if sub_logits is None else sub, main, sub)
        return MaskSubLoss(main_weight * main + sub_weight * sub, main, sub)
    reduced, _, _ = _reduced_loss_op(logits, sub_logits, target, *options, main_weight, sub_weight, reduction == "mean")
    return MaskSubLoss(reduced[0], reduced[1], reduced[2])


def _reduce(rows: torch.Tensor, count, reduction: str) -> torch.Tensor:
    """A row of an op's [NUM_OUT, M] output, reduced. 'none': a copy where the op saved that output for its
    backward (it requires grad), so that the caller may change the per-row losses in place (per_row *= weights),
    as the composite's; a change to a view of the saved output would fail that backward."""
    if reduction == "none":
        return rows.clone() if rows.requires_grad else rows
    return rows.sum() if reduction == "sum" else rows.sum() / count


def _row_count(target: torch.Tensor, ignore_index: int | None):
    """Rows that count, at least 1 (0 rows -> a 0 mean): a device tensor for class ids (no sync), else M."""
    if target.is_floating_point() or ignore_index is None:
        return float(max(target.shape[0], 1))
    return (target != ignore_index).sum().clamp_min(1).to(torch.float32)


def soft_target_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy against class ids or probabilities: per row sum_c -w_c log_softmax(logits)_c.

    logits: [M, C] fp32/fp16/bf16/fp64, any row stride. target: int64 (or int32) class ids [M], where rows equal to
    ``ignore_index`` (an int) give 0 and a zero gradient, or probabilities [M, C] of any float dtype (mixup/cutmix;
    they get no gradient: one that requires grad is refused). w = (1 - label_smoothing) q + label_smoothing / C,
    label_smoothing in [0, 1]. Returns fp32 [M] for reduction='none', else a scalar; 'mean' divides by the number of
    rows that count (0 when none does). A class id outside [0, C) that is not ``ignore_index`` is a ValueError on
    CPU tensors in eager mode; elsewhere (CUDA tensors, torch.compile) its row's loss and gradient are NaN, so the
    reduced loss is NaN (docs/semantics.md §7).
    """
    _check_logits("logits", logits)
    options = _check_options(reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index)
    target = _check_target(logits.shape, logits.device, target, options.ignore_index)
    _reduced_loss_op.report_as("soft_target_cross_entropy", logits)
    return _terms(logits, None, target, options, 1.0, 0.0, reduction).main


def soft_target_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    target_threshold: float | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy with logits: the mean over the counted rows' elements of softplus(z) - w z.

    logits: [M, C] float. target: class ids [M] (one-hot; rows equal to ``ignore_index`` give 0 and a zero
    gradient and are not counted, as in soft_target_cross_entropy and masksub_loss(mode='bce'); other ids outside
    [0, C): a ValueError on CPU tensors in eager mode, a NaN row elsewhere) or probabilities [M, C] of any float
    dtype that do not require grad. With ``target_threshold`` (in [0, 1)), q becomes [q > threshold] (DeiT-III:
    0.0); then w = (1 - label_smoothing) q + label_smoothing / C. Returns fp32: reduction='none' gives [M], each
    row's mean over the classes (their mean over the rows that count is the 'mean' loss, their sum the 'sum' loss,
    i.e. 1/C of the element sum).
    """
    _check_logits("logits", logits)
    options = _check_options("bce", reduction, label_smoothing, ignore_index, target_threshold=target_threshold)
    target = _check_target(logits.shape, logits.device, target, options.ignore_index)
    _reduced_loss_op.report_as("soft_target_bce", logits)
    return _terms(logits, None, target, options, 1.0, 0.0, reduction).main


def self_distillation_loss(
    sub_logits: torch.Tensor,
    main_logits: torch.Tensor,
    *,
    mode: str = "ce",
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """The sub branch's criterion against the detached main prediction, times T^2.

    sub_logits, main_logits: [M, C], same dtype and device. mode 'ce': per row T^2 sum_c -softmax(main/T)_c
    log_softmax(sub/T)_c; 'bce': T^2 mean_c softplus(sub_c/T) - sigmoid(main_c/T) sub_c/T; temperature T finite
    in [2^-63, 2^13]. The gradient reaches sub_logits only (T (p_sub - p_main), / C for bce): main_logits is the
    teacher, detached here by design (MaskSub's stop-gradient), never written. Returns fp32 [M] for
    reduction='none', else a scalar (mean over the M rows).
    """
    _check_pair(sub_logits, main_logits)
    options = _check_options(mode, reduction, temperature=temperature)
    _reduced_loss_op.report_as("self_distillation_loss", sub_logits)
    return _terms(main_logits.detach(), sub_logits, None, options, 0.0, 1.0, reduction).sub


def masksub_loss(
    main_logits: torch.Tensor,
    sub_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "ce",
    main_weight: float = 0.5,
    sub_weight: float = 0.5,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    temperature: float = 1.0,
    target_threshold: float | None = None,
    reduction: str = "mean",
) -> MaskSubLoss:
    """MaskSub's loss in one fused pass: ``main_weight * crit(main, target) + sub_weight * crit(sub, T(main))``.

    main_logits, sub_logits: [M, C] float, same dtype and device. target and crit as in soft_target_cross_entropy
    (mode 'ce') or soft_target_bce (mode 'bce', where ``target_threshold`` applies); T(main) and the temperature as
    in self_distillation_loss. label_smoothing and target_threshold shape the main target only; main_weight and
    sub_weight are finite and >= 0. Rows whose class id equals ``ignore_index`` count in neither term (also with
    mode 'bce'); a row whose id is outside [0, C) and not ``ignore_index`` is NaN in both terms and both gradients
    (a ValueError instead on CPU tensors in eager mode). One kernel reads each row of both logits once; the backward
    writes both gradients, main_logits receiving only its own term's. Returns MaskSubLoss(loss, main, sub): fp32
    scalars ([M] with reduction='none'), main and sub unweighted; gradients flow from each field. With the
    defaults: the paper's (crit_main + crit_sub) / 2.
    """
    _check_pair(sub_logits, main_logits)
    options = _check_options(mode, reduction, label_smoothing, ignore_index, temperature, target_threshold)
    main_weight = check_real("main_weight", main_weight, 0.0, expected=">= 0 (at most fp32's max)")
    sub_weight = check_real("sub_weight", sub_weight, 0.0, expected=">= 0 (at most fp32's max)")
    target = _check_target(main_logits.shape, main_logits.device, target, options.ignore_index)
    return _terms(main_logits, sub_logits, target, options, main_weight, sub_weight, reduction)
