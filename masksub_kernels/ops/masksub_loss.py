"""The MaskSub loss: soft-target CE / BCE for the main branch, self-distillation for the sub branch, one pass.

Maths (docs/semantics.md, §7). Row i of the main logits z, the sub logits s, C classes, a target given as a
class id y (one-hot q; rows with y == ignore_index count in neither term; any other y outside [0, C) makes the
row's values and gradients NaN in both terms: visible in any reduction, found without a host sync) or
probabilities q [C]:

    w = (1 - eps) q + eps / C                      main target, after q := [q > threshold] when one is given
    CE  main:  l = sum_c -w_c log_softmax(z)_c = S log l_z - D_z                    dl/dz = S softmax(z) - w
    BCE main:  l = mean_c softplus(z_c) - w_c z_c                                   dl/dz = (sigmoid(z) - w) / C
    CE  sub:   l = T^2 sum_c -p_c log_softmax(s/T)_c,  p = softmax(z/T)             dl/ds = T (softmax(s/T) - p)
    BCE sub:   l = T^2 mean_c softplus(s_c/T) - p_c s_c/T,  p = sigmoid(z/T)        dl/ds = T (sigmoid(s/T) - p) / C

p is a constant (detached): nothing flows into z from the sub term. T^2 is Hinton's distillation convention: it
keeps the sub term's gradient the same size at every temperature (T = 1 in the paper, where it is 1). A CE row is
kept in shifted form, updated online per block and rescaled when the running max grows: c = max(z) (0 while the
row is all -inf), l_z = sum exp(z - c), S = sum w, D_z = sum w (z - c) (terms with w = 0 skipped, so -inf logits
without target mass stay finite); no lse - z cancellation at logits of 1e4. The sub term keeps the same state for
s/T and z/T. BCE terms are (1 - w) max(z, 0) - w min(z, 0) + log1p(exp(-|z|)), finite at z = -inf.

Label smoothing for BCE uses the same w: for a class id this is timm's off = eps / C, on = 1 - eps + eps / C;
unlike timm, probability targets are smoothed too, and a threshold binarises q *before* smoothing. The per-row
values are what reduction='none' returns (BCE: the row's mean over classes); 'sum' adds them; 'mean' divides that
sum by the number of rows that count (0 rows -> 0). So for BCE 'mean' is the mean over the M*C elements and 'sum'
is 1/C of the element sum.

Design, bytes per row (b per logit, f per target element: 0 for class ids, C classes):
    forward   reads z, s and the target once (online softmax): (2b + f) C; writes 9 fp32 (both losses, stats)
    backward  reads z, s, the target and the stats, writes dz and ds (fp32 maths, one cast): (4b + f) C
That is (6b + 2f) C in all. Writing the gradients in the forward instead (Liger) costs (2b + f) C + 2b C there,
then a read-modify-write of both in the backward to apply grad_output (a device scalar such as 1/count, or one per
row, unknown to the host without a sync): (8b + f) C, and O(M C) held until the backward. Recomputing from the
saved fp32 stats (c and log l per softmax, and S: flash-attention's choice) moves fewer bytes for class ids (6b vs
8b: 25% less) and as many for fp32 probability targets with bf16 logits, is correct for any grad_output, and keeps
the extra memory O(M). The caller's logits are never written. One program per row loops over C in blocks of at
most MAX_BLOCK_C (row offsets int64; C up to _common.MAX_CLASSES, 2^31 - 2^16, as column positions are int32).
fp64 logits run in fp32 in the kernels (fp64 in the reference).

Few rows, many classes (M = 8, C = 128256 would fill 8 of 132 SMs): class_splits cuts each row into splits of a
whole number of blocks and the kernels run a (row, split) grid. A forward program folds its split into one state
(the same form as a lane's: max, sum of exp about it, sum w, sum w (z - max), the teacher's pair, the largest
teacher logit among -inf student classes) and stores it in an [9, M, splits] scratch; it then takes a ticket (an
int32 per row, atomic, in the zero-filled output buffer), and the row's last program merges the row's states in
split order (deterministic) into the losses and stats: no second launch, no waiting. The backward is elementwise
given the stats, so its split programs need nothing more.
Bytes added: 10 fp32 per split and row (scratch written and read, ticket).

Forward speed (issue-bound, not memory-bound, when a block reduction ran per iteration, and again when each
element rescaled its own state): a block is [BLOCK_C / GROUP, GROUP], each row of it one lane's 16-byte word, and
each word keeps one online-softmax state (max, sum of exp), rescaled once per word and block by the word's max
(one exp2 per word, one per element and softmax), the states merged once per row; exponents are exp2 of the
difference to the max times log2(e) / T; whole blocks run unmasked, only a partial last block (and a realigned
row's first) is masked; for class ids only the target column and sum (z - c) matter (sum w (z - c) =
w_o sum (z - c) + (w_y - w_o)(z_y - c), the sum shifted as the softmax's), so no per-element weight is built. At
T = 1 the teacher's exponentials are the main term's. Rows of 16 bytes that Triton cannot see as such (a stride
of 1000 bf16 is not a multiple of 16 elements) are hinted aligned (ALIGNED), and a last block whose mask is
uniform over each word (EVEN) keeps 16-byte loads.
Unmasked bf16 blocks are read as int32 words widened by placing bits (one instruction per element, not 1.5).

BCE forward (issue-bound at ~1.6 instructions per element before; 0.87-1.11 now, by the perf model): each
element's log1p(exp(-|x|)) (a degree-9 polynomial, ~11 instructions) is summed per word as the log1p of the
word's product, log1p(a) + log1p(b) = log1p(a + b + ab) (a tree: an FADD and an FFMA per element), then one
range-reduced log1p per word (_log1p_wide, ~19 instructions, tiny terms keep their relative accuracy); the sub
element softplus(s) - p s is q |s| + log1p(exp(-|s|)) with q = sigmoid(-|z|) where s and z have the same sign, else
sigmoid(|z|), from the shared exp(-|z|) (no 1 - p: at p = 1 in fp32 it loses exp(-|z|) |s|); 1 / (1 + e) as
rsqrt((1 + e)^2) (a bare MUFU.RSQ, where the division adds a range fix-up). Class ids: the whole block holding the
id runs apart, so the others compare no column; without label smoothing (SMOOTHED false) no sum of z is kept for
the zero weight off the id. Blocks of 1024 classes in 4 warps (the row's fixed part, which every warp runs, weighs
half). The quarter-rate ops (which the model does not charge) stay 3 per element (2 MUFU.EX2 and the RSQ that
replaces the RCP) plus an I2F per word and term (0.25 per element at 8 classes per word).
"""

from __future__ import annotations

import os

import torch

from .._triton import next_power_of_2
from ._common import masksub_op
from ._loss_checks import check_loss_backward_op, check_loss_op
from ._loss_layout import (
    C_S,
    C_T,
    C_Z,
    LOG_L_S,
    LOG_L_T,
    LOG_L_Z,
    MAIN,
    NUM_OUT,
    S_Z,
    SUB,
    _alignment_flags,
    _device_sms,
    _layout,
    _unit_last_stride,
    row_alignment,
    rows_aligned,
)
from ._masksub_loss_eager import called_loss, loss_forward_eager
from ._masksub_loss_kernels import _loss_bwd_kernel, _loss_fwd_kernel

MAX_BLOCK_C = 4096  # classes per loop iteration of a program (the tests raise it under the interpreter)


# ----------------------------------------------------------------------------------------------------------------
# Reference (PyTorch): the CPU fallback, in fp32 (fp64 for fp64 logits), same output layout as the kernels
# ----------------------------------------------------------------------------------------------------------------


def _row_masks(target: torch.Tensor | None, ignore_index: int, shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid, bad) [M]: the rows that count (class id != ignore_index), and those of them whose id is outside
    [0, C). A bad row is NaN in every output, found without a host sync (the public losses raise on CPU tensors)."""
    rows, classes = shape
    if target is None or target.is_floating_point():
        valid = torch.ones(rows, dtype=torch.bool, device=device)
        return valid, ~valid
    valid = target != ignore_index
    return valid, valid & ((target < 0) | (target >= classes))


def _mask_rows(values: torch.Tensor, valid: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """values where the row counts, 0 where it is ignored, NaN where its class id is out of range (valid and bad
    [M] or [M, 1]: one select over values, the fill decided per row)."""
    return torch.where(valid & ~bad, values, torch.where(bad, torch.nan, 0.0).to(values.dtype))


def _target_weights(target: torch.Tensor, classes: int, eps: float, threshold: float | None, dtype) -> torch.Tensor:
    """w [M, C] = (1 - eps) q + eps / C; q one-hot (an id out of range gives a zero row) or dense, binarised first."""
    if target.is_floating_point():
        q = target.to(dtype)
    else:
        q = (torch.arange(classes, device=target.device) == target[:, None]).to(dtype)
    if threshold is not None:
        q = (q > threshold).to(dtype)
    return (1.0 - eps) * q + eps / classes


def _bce_terms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """softplus(x) - w x elementwise, finite at x = +-inf when w is 0 or 1."""
    pos = torch.where(w != 1, (1 - w) * x.clamp(min=0), 0.0)
    return pos - torch.where(w != 0, w * x.clamp(max=0), 0.0) + torch.log1p(torch.exp(-x.abs()))


def _soft_ce(logp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_c -w_c logp_c per row; a class of zero weight adds nothing (even where its logit is -inf)."""
    return -torch.where(w != 0, w * logp, 0.0).sum(1)


def _log_softmax_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_softmax(x), c, log l) with c the row max (0 where it is -inf) and l = sum_c exp(x_c - c).

    One fused log_softmax and two row maxima: the largest log-probability is c - log(l) - c, so log l = -max logp
    (a row of -inf only has l = 0: log l = -inf)."""
    logp = torch.log_softmax(x, dim=1)
    top = x.amax(1)
    log_l = torch.where(torch.isneginf(top), -torch.inf, -logp.amax(1))
    return logp, torch.where(torch.isneginf(top), 0.0, top), log_l


def _class_id_ce(logp: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_c -w_c logp_c for w = (1 - eps) onehot(y) + eps / C, without the one-hot: the target's log-probability
    and, with smoothing, the row sum (an id outside [0, C) reads a clamped column; its row is masked later)."""
    classes = logp.shape[1]
    loss = logp.new_zeros(logp.shape[0])
    if eps < 1:
        loss = loss - (1 - eps) * logp.gather(1, target.long().clamp(0, classes - 1)[:, None])[:, 0]
    if eps > 0:
        loss = loss - (eps / classes) * logp.sum(1)
    return loss


def loss_forward_reference(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold):
    """fp32 [9, M]: per-row main loss, per-row sub loss (0 for an absent term or an ignored row, NaN for a class id
    outside [0, C)), then the stats.

    The CPU path of the op as well as the oracle, so it avoids [M, C] work that the maths does not need: class ids
    never become a one-hot matrix, the teacher softmax(z) is exp of the main term's log-softmax at T = 1."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    rows, classes = z.shape
    valid, bad = _row_masks(target, ignore_index, z.shape, z.device)
    out = torch.zeros(NUM_OUT, rows, dtype=torch.float32, device=z.device)
    log_p_z = None
    if target is not None:
        if bce:
            w = _target_weights(target, classes, label_smoothing, threshold, acc)
            out[MAIN] = _mask_rows(_bce_terms(z, w).mean(1), valid, bad)
        else:
            log_p_z, out[C_Z], out[LOG_L_Z] = _log_softmax_stats(z)
            if not target.is_floating_point():
                main = _class_id_ce(log_p_z, target, label_smoothing)
                out[S_Z] = (1 - label_smoothing) * ((target >= 0) & (target < classes)) + label_smoothing
            else:
                w = _target_weights(target, classes, label_smoothing, threshold, acc)
                main, out[S_Z] = _soft_ce(log_p_z, w), w.sum(1)
            out[MAIN] = _mask_rows(main, valid, bad)
    if sub_logits is not None:
        x, zt = sub_logits.to(acc), z
        if temperature != 1:
            x, zt = x / temperature, z / temperature
        if bce:
            values = _bce_terms(x, torch.sigmoid(zt)).mean(1)
        else:
            if log_p_z is not None and temperature == 1:  # the teacher's log-softmax is the main term's
                log_p_t, out[C_T], out[LOG_L_T] = log_p_z, out[C_Z], out[LOG_L_Z]
            else:
                log_p_t, out[C_T], out[LOG_L_T] = _log_softmax_stats(zt)
            log_p_x, out[C_S], out[LOG_L_S] = _log_softmax_stats(x)
            values = _soft_ce(log_p_x, torch.exp(log_p_t))
        out[SUB] = _mask_rows(values * temperature**2, valid, bad)
    return out


def loss_backward_reference(grad_main, grad_sub, out, logits, sub_logits, target, bce, eps, ignore, temperature, thr):
    """(d logits or [0], d sub_logits or [0]) in the logits' dtype; a None grad means that gradient is not needed.
    Rows as in the forward: zero where ignored, NaN where the class id is out of range."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    classes = z.shape[1]
    valid, bad = (m[:, None] for m in _row_masks(target, ignore, z.shape, z.device))
    per_class = 1.0 / classes if bce else 1.0
    dz, ds = logits.new_empty(0), logits.new_empty(0)  # each its own: a custom op's outputs may not alias
    if grad_main is not None:
        g = grad_main.to(acc)[:, None] * per_class
        if not bce and not target.is_floating_point():
            # p S - w with S = sum_c w_c and w = (1 - eps) onehot(y) + eps / C: the one-hot as one scatter
            in_range = ((target >= 0) & (target < classes))[:, None]
            weight_sum = (1 - eps) * in_range + eps
            grad = g * (torch.softmax(z, dim=1) * weight_sum - eps / classes)
            target_column = target.long().clamp(0, classes - 1)[:, None]
            grad.scatter_add_(1, target_column, -(1 - eps) * g * in_range)
        else:
            w = _target_weights(target, classes, eps, thr, acc)
            p = torch.sigmoid(z) if bce else torch.softmax(z, dim=1) * w.sum(1, keepdim=True)
            grad = g * (p - w)
        dz = _mask_rows(grad, valid, bad).to(logits.dtype)
    if grad_sub is not None:
        x, zt = sub_logits.to(acc), z
        if temperature != 1:
            x, zt = x / temperature, z / temperature
        act = torch.sigmoid if bce else (lambda v: torch.softmax(v, dim=1))
        g = grad_sub.to(acc)[:, None] * (temperature * per_class)
        ds = _mask_rows(g * (act(x) - act(zt)), valid, bad).to(sub_logits.dtype)
    return dz, ds


# ----------------------------------------------------------------------------------------------------------------
# Launchers. The CUDA extension masksub_kernels._C takes the same arguments (? = optional):
#   _C.masksub_loss_forward(logits, sub_logits?, target?, bce, label_smoothing, ignore_index, temperature,
#                           target_threshold?) -> fp32 [9, M] (rows: main, sub, the 7 stats of NUM_OUT above)
#   _C.masksub_loss_backward(grad_main?, grad_sub?, out, logits, sub_logits?, target?, bce, label_smoothing,
#                            ignore_index, temperature, target_threshold?) -> (d logits or [0], d sub_logits or [0])
# What the launch configurations read of the operands and the device (layouts, 16-byte alignment, SM count):
# ops/_loss_layout.py.
# ----------------------------------------------------------------------------------------------------------------


def _launch_config(classes: int, max_block: int) -> tuple[int, int]:
    """(BLOCK_C, num_warps): up to max_block classes per iteration, ~8 per thread at most."""
    block_c = min(max(16, next_power_of_2(classes)), max_block)
    return block_c, max(4, min(16, block_c // 256))


def _forward_max_block(bce: bool = False) -> int:
    """The forward's block: half the backward's (8 warps, one 16-byte word of each operand per lane and block: the
    perf model has the loads of 2 resident blocks per SM at the copy rate). BCE: a quarter (4 warps, the same 8
    classes per thread): its elements cost ~1.6x CE's, so a row's fixed part, which every warp runs (the masked
    first and last blocks, the merge of the lanes' states), weighs less in half the warps, and the masked last
    block wastes half the lanes (the perf model at 4096 x 21841 bf16: 11% fewer warp-instructions per row)."""
    return max(16, MAX_BLOCK_C // (4 if bce else 2))


SPLIT_PROGRAMS_PER_SM = 2  # the split's target: two resident programs per SM, so one computes while one loads


def _split_max_block() -> int:
    """Split programs (both kernels) take blocks of 1024 classes in 4 warps: the same 8 classes per thread as
    one program per row, but twice the programs for the same work, so that each SM holds more of them (the perf
    model at M = 8, C = 128256: the forward waits on memory with 2 programs of 8 warps per SM)."""
    return max(16, MAX_BLOCK_C // 4)


def class_splits(rows: int, classes: int, block_c: int, sms: int) -> tuple[int, int]:
    """(splits, chunk): each row's classes cut into ``splits`` ranges of ``chunk`` classes (the last one shorter).

    The rule: enough programs for SPLIT_PROGRAMS_PER_SM per SM, i.e. ceil(SPLIT_PROGRAMS_PER_SM sms / rows) per
    row, at most one per block of classes; chunk is a whole number of blocks (only the row's last block is
    partial) and the splits are recounted from it, so none is empty. Rows >= SPLIT_PROGRAMS_PER_SM sms (or sms = 0)
    give one split: one program per row, as before. E.g. H200, M = 8, C = 128256, blocks of 1024 (the split path's,
    _split_max_block): 33 wanted, 4 blocks each, 32 splits of 4096 classes, 256 programs of 4 warps."""
    blocks = -(-classes // block_c)
    wanted = -(-SPLIT_PROGRAMS_PER_SM * sms // max(rows, 1))
    chunk = -(-blocks // max(1, min(wanted, blocks))) * block_c
    return -(-classes // chunk), chunk


def _prepare(z, s, y, bce, binarise, max_block, sms):
    """What both kernels' launches derive from the operands: row strides, constexprs, num_warps and the class split
    (splits, chunk) of class_splits on ``sms`` SMs."""
    dense = y is not None and y.is_floating_point()
    split_block, split_warps = _launch_config(z.shape[1], _split_max_block())
    split = class_splits(*z.shape, split_block, sms)
    block_c, num_warps = (split_block, split_warps) if split[0] > 1 else _launch_config(z.shape[1], max_block)
    strides = (z.stride(0), s.stride(0) if s is not None else 0, y.stride(0) if dense else 1)
    flags = {"BCE": bool(bce), "DENSE": dense, "BINARISE": binarise, "BLOCK_C": block_c}
    flags["SPLIT"] = split[0] > 1
    return strides, flags, num_warps, split


# The launch configurations (what the launchers derive from the operands: constexprs, num_warps, the class split,
# row strides; ~12 and 15 us of Python for the forward's and the backward's on the tests' 2-core Xeon, 2026-12-01,
# where a reuse costs ~3 and 5) by the operands' layouts. A call
# with the layouts of an earlier one reuses its configuration: the fused-linear op's chunks (43 per BERT step, each
# a forward and a backward launch on views of the same buffers) and every training step's loss. The tests run with
# MASKSUB_CHECK_LAUNCH_CACHE=1: each reuse is derived again and compared, so that a key missing something the
# derivation reads fails there.
_CONFIGS: dict = {}
_MAX_CONFIGS = 1024
_CHECK_CONFIGS = os.environ.get("MASKSUB_CHECK_LAUNCH_CACHE") == "1"


def _cached_config(derive, operands: tuple, options: tuple):
    """derive(*operands, *options, sms), remembered by the operands' layouts, the options, the SM count and the
    module's tunables (MAX_BLOCK_C, SPLIT_PROGRAMS_PER_SM: the tests and the benchmark change them): a
    configuration is a function of exactly these."""
    sms = _device_sms(operands[0].device)
    key = (derive, *map(_layout, operands), *options, sms, MAX_BLOCK_C, SPLIT_PROGRAMS_PER_SM)
    config = _CONFIGS.get(key)
    if config is None:
        if len(_CONFIGS) >= _MAX_CONFIGS:
            _CONFIGS.clear()
        config = _CONFIGS[key] = derive(*operands, *options, sms)
    elif _CHECK_CONFIGS:
        fresh = derive(*operands, *options, sms)
        assert fresh == config, f"a stale launch configuration: {config} reused where {fresh} is derived"
    return config


def _forward_config(z, s, y, bce, binarise, smoothed, unit_t, has_bias, sms):
    """The forward's launch configuration: ((splits, chunk), row strides, constexprs with num_warps)."""
    strides, flags, warps, split = _prepare(z, s, y, bce, binarise, _forward_max_block(bce), sms)
    has = {"HAS_MAIN": y is not None, "HAS_SUB": s is not None, "HAS_BIAS": has_bias}
    vec = row_alignment(z, *([] if s is None else [s]))
    dense_rows = [y] if flags["DENSE"] else []  # probabilities: hinted with the logits (ALIGNED)
    has |= _alignment_flags(vec, z, *([] if s is None else [s]), *dense_rows)
    # UNIT_T: T = 1, the teacher shares the main term's exp (CE) or exp / sigmoid (BCE). SMOOTHED: the class-id
    # weight off the label, w_o = (1 - eps) [0 > threshold] + eps / C, may be nonzero: eps > 0 (or a negative
    # threshold, which the public ops refuse); with w_o = 0 the blocks need no sum of z for it
    has |= {"SMOOTHED": smoothed, "BLOCK_S": next_power_of_2(split[0]), "UNIT_T": unit_t, "VEC": vec}
    return split, strides, {**has, **flags, "num_warps": warps}


def _forward_triton(
    logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold, bias=None, reduce=None,
    out=None, tickets=None,
):  # fmt: skip
    """fp32 [9, M]. ``bias``: [C], added to both logits as the kernel reads them (the fused-linear op's chunks,
    whose logits come without it). ``reduce``: (main_weight, sub_weight, mean): also reduce the per-row losses in
    the same launch (ops/masksub_loss_reduced.py) and return (fp32 [4] reduced, out, fp32 [1] d).
    ``out`` (not with reduce): an fp32 [9, M] view with unit last stride to write the stats into (any row stride:
    the fused-linear op's columns of its [9, N] stats), returned. ``tickets``: int32, at least M, zero: the split
    rows' tickets, left zero by the kernel (a caller keeps one buffer for many calls: no fill per call)."""
    z, s, y = _unit_last_stride(logits, sub_logits, target)
    smoothed = label_smoothing != 0 or (threshold is not None and threshold < 0)
    options = (bool(bce), threshold is not None, smoothed, float(temperature) == 1.0, bias is not None)
    (splits, chunk), strides, constexprs = _cached_config(_forward_config, (z, s, y), options)
    rows = z.shape[0]
    split = splits > 1
    # the int32 tickets, zeroed: one per row with a split (unless the caller's), one for the rows done with a
    # reduction. With tickets of its own, one fill zeroes them and out (the stats a variant does not write stay 0);
    # otherwise out is not filled and the kernel writes those zeros itself (ZERO_ABSENT): no launch but the kernel's
    assert (out is None) == (tickets is None) and (reduce is None or out is None)  # the chunks pass both, no reduce
    if out is None:
        own = rows * split + (reduce is not None)  # the tickets, zeroed with out by one fill
        buffer = (torch.zeros if own else torch.empty)(NUM_OUT * rows + own, dtype=torch.float32, device=z.device)
        out, ticket = buffer[: NUM_OUT * rows].view(NUM_OUT, rows), buffer[NUM_OUT * rows :].view(torch.int32)
        filled = own > 0
    else:  # the fused-linear op's chunks: their columns of its stats, its tickets (zero), no fill
        assert out.shape == (NUM_OUT, rows) and out.dtype == torch.float32 and out.stride(1) == 1
        assert tickets.dtype == torch.int32 and tickets.is_contiguous() and tickets.numel() >= rows
        assert tickets.device == z.device
        ticket, filled = tickets, False
    part, reduced, d = out, out, out
    ticket = ticket if ticket.numel() else out  # no tickets: a pointer the kernel never uses
    if split:
        part = torch.empty(9, rows, splits, dtype=torch.float32, device=z.device)
    main_weight, sub_weight, mean = reduce if reduce is not None else (0.0, 0.0, False)
    if reduce is not None:  # every entry written by the kernel (none launched for 0 rows: 0 losses, d = 1)
        reduced, d = (torch.empty(n, dtype=torch.float32, device=z.device) for n in (4, 1))
        if not rows:  # device fills (no host-to-device copy: CUDA graph capture)
            reduced.zero_()[3:].fill_(1.0)
            d.fill_(1.0)
    if rows:
        operands = (z, z if s is None else s, z if y is None else y)  # absent ones stand in as logits
        args = (*operands, z if bias is None else bias, out, part, ticket, reduced, d, *z.shape, chunk, *strides)
        args += (out.stride(0), label_smoothing, ignore_index, temperature, threshold or 0.0, main_weight, sub_weight)
        _loss_fwd_kernel[(rows, splits)](
            *args, **constexprs, REDUCE=reduce is not None, MEAN=mean, ZERO_ABSENT=not filled
        )  # fmt: skip
    return out if reduce is None else (reduced, out, d)


def _backward_config(z, s, y, dz, ds, bce, binarise, unit_t, has_bias, write_dz, write_ds, over_rows, sms):
    """The backward's launch configuration: ((splits, chunk), row strides, the gradients' row stride, constexprs
    with num_warps). dz, ds: the buffers written ([0] where not). over_rows: dz and ds narrower views over z's and
    s's rows (_backward_triton): one program per row (a split's stores would land in another's logits), VEC 1."""
    strides, flags, warps, split = _prepare(z, s, y, bce, binarise, MAX_BLOCK_C, 0 if over_rows else sms)
    others = [x for x in (s, dz, ds) if x is not None]  # the [M, C] operands beside z
    has = {"LABELS": y is not None and not flags["DENSE"], "WRITE_DZ": write_dz, "WRITE_DS": write_ds}
    has |= {"HAS_BIAS": has_bias, "UNIT_T": bool(bce) and unit_t, "OVER_ROWS": over_rows}  # UNIT_T as the forward
    has["VEC"] = 1 if over_rows else row_alignment(z, *others)
    has |= _alignment_flags(has["VEC"], z, *others, *([y] if flags["DENSE"] else []))
    # D_GROUP: the gradients' elements per 16 bytes where their rows are 16-byte aligned (bf16 over the fp32 logits'
    # rows: 8, where GROUP counts 4), else GROUP (ALIGNED holds them to it); 1 without ALIGNED (no hint)
    written = [x for x in (dz, ds) if x.numel()]
    group = 16 // written[0].element_size() if written else 1
    words = max(group, has["GROUP"]) if rows_aligned(group, *written) else has["GROUP"]
    has["D_GROUP"] = words if has["ALIGNED"] else 1
    stride_d = next((x.stride(0) for x in (dz, ds) if x.numel()), z.shape[1])
    return split, strides, stride_d, {**has, **flags, "num_warps": warps}


def _backward_triton(
    grad_main,
    grad_sub,
    out,
    logits,
    sub_logits,
    target,
    bce,
    eps,
    ignore,
    temperature,
    threshold,
    into=None,
    bias=None,
    reduced=None,
    over_rows=False,
):
    """(dz or [0], ds or [0]). ``out``: the forward's fp32 [9, M] stats, unit last stride, any row stride.
    ``into``: (dz buffer, ds buffer) to write, [M, C] of any float dtype (the kernel casts once) with unit last
    stride and one row stride for both; a buffer may be the logits themselves (the fused-linear op's chunks): each
    program owns its row (or its class range of the row) and each block loads z and s into registers before
    storing the gradients of the same elements. ``over_rows``: the buffers are narrower views over the logits' own
    rows (the fused-linear op's fp16 / bf16 gradients over its fp32 chunk logits: row i of dz starts at row i of
    z, rows stride_z * 4 bytes apart), written by one program per row behind a barrier (_bwd_block).
    ``bias``: as in the forward.
    ``reduced``: (fp32 [1] the reduced forward's d, main_weight, sub_weight): grad_main and grad_sub are then the
    gradient [4] of its reduced losses (or None), from which each program computes its row's gradients."""
    z, s, y = _unit_last_stride(logits, sub_logits, target)
    assert out.dtype == torch.float32 and out.stride(-1) == 1  # the stats: any row stride (the chunks' columns)
    if into is not None:
        dz, ds = (x if g is not None else z.new_empty(0) for x, g in zip(into, (grad_main, grad_sub)))
        written = [x for x in (dz, ds) if x.numel()]
        assert all(x.shape == z.shape and x.stride(-1) == 1 for x in written)
        assert len({x.stride(0) for x in written}) <= 1
    else:
        assert not over_rows  # over_rows describes the caller's buffers (their geometry: _ChunkViews.of checks it)
        dz, ds = (z.new_empty(z.shape if g is not None else (0,)) for g in (grad_main, grad_sub))  # contiguous
    gm, gs = (out[0] if g is None else g for g in (grad_main, grad_sub))
    d, main_weight, sub_weight = reduced if reduced is not None else (out, 0.0, 0.0)
    if z.shape[0] and (grad_main is not None or grad_sub is not None):
        options = (bool(bce), threshold is not None, float(temperature) == 1.0, bias is not None)
        options += (grad_main is not None, grad_sub is not None, bool(over_rows))
        config = _cached_config(_backward_config, (z, s, y, dz, ds), options)
        (splits, chunk), strides, stride_d, constexprs = config
        args = (z, z if s is None else s, z if y is None else y, z if bias is None else bias, out, gm, gs)
        args += (dz if dz.numel() else out, ds if ds.numel() else out, d, *z.shape, chunk)
        args += (*strides, gm.stride(0), gs.stride(0), stride_d, out.stride(0), eps, ignore, temperature)
        args += (threshold or 0.0, main_weight, sub_weight)
        _loss_bwd_kernel[(z.shape[0], splits)](*args, **constexprs, REDUCED=reduced is not None)
    return dz, ds


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, no host syncs) and autograd
# ----------------------------------------------------------------------------------------------------------------


@masksub_op(
    "masksub_loss_forward",
    device="logits",
    torch=loss_forward_reference,
    triton=_forward_triton,
    cuda=lambda extension, *args: extension.masksub_loss_forward(*args),
    records=("masksub_loss",),
    torch_eager=loss_forward_eager,
    check=check_loss_op,
)
def _loss_op(
    logits: torch.Tensor,
    sub_logits: torch.Tensor | None,
    target: torch.Tensor | None,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
) -> torch.Tensor:
    """fp32 [NUM_OUT, M]: the per-row losses and the saved softmax states."""


@_loss_op.register_fake
def _(logits, *options):
    return logits.new_empty(NUM_OUT, logits.shape[0], dtype=torch.float32)


@masksub_op(
    "masksub_loss_backward",
    device="logits",
    torch=loss_backward_reference,
    triton=_backward_triton,
    cuda=lambda extension, *args: tuple(extension.masksub_loss_backward(*args)),
    check=check_loss_backward_op,
)
def _loss_backward_op(
    grad_main: torch.Tensor | None,
    grad_sub: torch.Tensor | None,
    out: torch.Tensor,
    logits: torch.Tensor,
    sub_logits: torch.Tensor | None,
    target: torch.Tensor | None,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d logits, d sub_logits), each an empty [0] when its grad is None."""


@_loss_backward_op.register_fake
def _(grad_main, grad_sub, out, logits, *options):
    return tuple(logits.new_empty(logits.shape if g is not None else (0,)) for g in (grad_main, grad_sub))


def _loss_setup_context(ctx, inputs, output):
    logits, sub_logits, target, *options = inputs
    ctx.save_for_backward(logits, sub_logits, target, output)
    ctx.options = options  # bce, label_smoothing, ignore_index, temperature, target_threshold
    ctx.operands = (sub_logits is not None, target is not None, options[0])  # for called_loss


def _loss_backward(ctx, grad_out):
    logits, sub_logits, target, out = ctx.saved_tensors
    # the main term's gradient only: the sub term's target is detached, so it never reaches logits
    need_dmain = grad_out is not None and ctx.needs_input_grad[0] and target is not None
    need_dsub = grad_out is not None and ctx.needs_input_grad[1] and sub_logits is not None
    if not (need_dmain or need_dsub):
        return (None,) * 8
    grad_main, grad_sub = grad_out[MAIN] if need_dmain else None, grad_out[SUB] if need_dsub else None
    dz, ds = _loss_backward_op.from_backward(grad_main, grad_sub, out, logits, sub_logits, target, *ctx.options)
    return (dz if need_dmain else None), (ds if need_dsub else None), *(None,) * 6


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup_context, called=called_loss)
