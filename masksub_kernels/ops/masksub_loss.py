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
most MAX_BLOCK_C (C up to 262144, int64 offsets); a few rows of a huge C leave SMs idle (a 2-D grid would need a
second pass to combine the partial softmax states). fp64 logits run in fp32 in the kernels (fp64 in the reference).

Forward speed (issue-bound, not memory-bound, when a block reduction ran per iteration): each lane keeps its own
online-softmax state (max, sum of exp) and the lanes merge once per row; exponents are exp2 with log2(e) / T
folded into one multiply, one exp2 per element and softmax (one of the two rescalings is exp(0)); whole blocks
run unmasked, only a partial last block is masked; for class ids only the target column and sum z matter
(sum w (z - c) = w_o (sum z - C c) + (w_y - w_o)(z_y - c)), so no per-element weight is built.
"""

from __future__ import annotations

import torch

from .._triton import jit, next_power_of_2, tl
from ._common import masksub_op

MAX_BLOCK_C = 4096  # classes per loop iteration of a program (the tests raise it under the interpreter)
# Rows of the forward's fp32 [9, M] output: the two per-row losses, then the stats the backward reads (CE only).
MAIN, SUB, C_Z, LOG_L_Z, S_Z, C_S, LOG_L_S, C_T, LOG_L_T = range(9)
NUM_OUT = 9


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
    """values where the row counts, 0 where it is ignored, NaN where its class id is out of range."""
    return torch.where(bad, torch.nan, torch.where(valid, values, 0.0))


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


def _soft_ce(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return -torch.where(w != 0, w * torch.log_softmax(x, dim=1), 0.0).sum(1)


def _shift_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.amax(1)
    c = torch.where(torch.isneginf(c), 0.0, c)
    return c, torch.log(torch.exp(x - c[:, None]).sum(1))


def loss_forward_reference(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold):
    """fp32 [9, M]: per-row main loss, per-row sub loss (0 for an absent term or an ignored row, NaN for a class id
    outside [0, C)), then the stats."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    rows, classes = z.shape
    valid, bad = _row_masks(target, ignore_index, z.shape, z.device)
    out = torch.zeros(NUM_OUT, rows, dtype=torch.float32, device=z.device)
    if target is not None:
        w = _target_weights(target, classes, label_smoothing, threshold, acc)
        out[MAIN] = _mask_rows(_bce_terms(z, w).mean(1) if bce else _soft_ce(z, w), valid, bad)
        if not bce:
            out[C_Z], out[LOG_L_Z] = _shift_stats(z)
            out[S_Z] = w.sum(1)
    if sub_logits is not None:
        x, zt = sub_logits.to(acc) / temperature, z / temperature
        values = _bce_terms(x, torch.sigmoid(zt)).mean(1) if bce else _soft_ce(x, torch.softmax(zt, dim=1))
        out[SUB] = _mask_rows(values * temperature**2, valid, bad)
        if not bce:
            (out[C_S], out[LOG_L_S]), (out[C_T], out[LOG_L_T]) = _shift_stats(x), _shift_stats(zt)
    return out


def loss_backward_reference(grad_main, grad_sub, out, logits, sub_logits, target, bce, eps, ignore, temperature, thr):
    """(d logits or [0], d sub_logits or [0]) in the logits' dtype; a None grad means that gradient is not needed.
    Rows as in the forward: zero where ignored, NaN where the class id is out of range."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    classes = z.shape[1]
    valid, bad = (m[:, None] for m in _row_masks(target, ignore, z.shape, z.device))
    per_class = 1.0 / classes if bce else 1.0
    dz = ds = logits.new_empty(0)
    if grad_main is not None:
        w = _target_weights(target, classes, eps, thr, acc)
        p = torch.sigmoid(z) if bce else torch.softmax(z, dim=1) * w.sum(1, keepdim=True)
        dz = _mask_rows(grad_main.to(acc)[:, None] * per_class * (p - w), valid, bad).to(logits.dtype)
    if grad_sub is not None:
        x, zt = sub_logits.to(acc) / temperature, z / temperature
        act = torch.sigmoid if bce else (lambda v: torch.softmax(v, dim=1))
        g = grad_sub.to(acc)[:, None] * (temperature * per_class)
        ds = _mask_rows(g * (act(x) - act(zt)), valid, bad).to(sub_logits.dtype)
    return dz, ds


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels: one program per row, a loop over the classes in blocks of BLOCK_C, fp32 arithmetic
# ----------------------------------------------------------------------------------------------------------------


@jit
def _log1p(v):
    # log(1 + v) for v in [0, 1] (here v = exp(-|x|)) as v P(v): P a degree-9 polynomial fitted to log1p(v) / v
    # on [0, 1] (truncation error 6e-9 relative; ~2 ulp in fp32 Horner, as the libdevice log and a division it
    # replaces, at a quarter of the instructions). Relative accuracy holds for tiny v, where 1 + v rounds to 1.
    p = -0.003163999359346998
    p = p * v + 0.019487686092971974
    p = p * v - 0.056269525832053906
    p = p * v + 0.1053295061396915
    p = p * v - 0.15263273655130635
    p = p * v + 0.19661017875789702
    p = p * v - 0.24951167191526266
    p = p * v + 0.33329665491782323
    p = p * v - 0.49999890898558996
    p = p * v + 0.9999999945431184
    return p * v


@jit
def _bce_elem(x, w):
    # softplus(x) - w x = (1 - w) max(x, 0) - w min(x, 0) + log1p(exp(-|x|)); zero coefficients skip +-inf
    pos = tl.where(w != 1.0, (1.0 - w) * tl.maximum(x, 0.0), 0.0)
    neg = tl.where(w != 0.0, w * tl.minimum(x, 0.0), 0.0)
    return pos - neg + _log1p(tl.exp(-tl.abs(x)))


@jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@jit
def _shift(m):
    # the softmax shift: the running max, 0 while it is -inf (so that exp(x - shift) never sees -inf - -inf)
    return tl.where(m == float("-inf"), 0.0, m)


@jit
def _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE: tl.constexpr, BINARISE: tl.constexpr):
    # w = (1 - eps) q + eps / C on the block, 0 on masked lanes
    if DENSE:
        q = tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        q = tl.where(cols == label, 1.0, 0.0)
    if BINARISE:
        q = tl.where(q > threshold, 1.0, 0.0)
    return tl.where(mask, (1.0 - eps) * q + eps / C, 0.0)


@jit
def _row_label(y_ptr, row, in_row, ignore_index, C, LABELS: tl.constexpr):
    # (class id, whether the row counts, whether it counts with an id outside [0, C)); without ids every row counts
    label = tl.full([], -1, tl.int64)
    valid = in_row
    bad = tl.zeros([], tl.int1)
    if LABELS:
        label = tl.load(y_ptr + row, mask=in_row, other=0).to(tl.int64)
        valid = in_row & (label != ignore_index)
        bad = valid & ((label < 0) | (label >= C))
    return label, valid, bad


@jit
def _row_value(value, valid, bad):
    # the value where the row counts, 0 where it is ignored, NaN where its class id is out of range (no host sync)
    return tl.where(bad, float("nan"), tl.where(valid, value, 0.0))


@jit
def _running_exp_sum(v, m, l, k):
    # One element per lane into the lane's running (max m, l = sum exp(k (v - m))), one exp2 per element: one of
    # the two rescalings is exp(0) = 1. v > m: l exp(k (m - v)) + 1 (the new max is v); else: l + exp(k (v - m)).
    # Returns (v > m, e = exp(-k |v - m|), the new l). v = -inf: e = 0 (m is finite), l unchanged.
    gt = v > m
    e = tl.exp2((tl.minimum(v, m) - tl.maximum(v, m)) * k)
    return gt, e, tl.where(gt, l * e + 1.0, l + e)


@jit
def _fwd_block(
    z_row, s_row, y_row, cols, mask, label, eps, C, threshold, inv_t, k_z, k_t,
    m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t,
    HAS_MAIN: tl.constexpr, HAS_SUB: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr,
    BINARISE: tl.constexpr, MASKED: tl.constexpr,
):
    # One block of classes into the per-lane states (each lane its own softmax state, merged once per row: no block
    # reduction per iteration). Only the last block is MASKED; its masked lanes read z = s = -inf and add nothing.
    # CE: m_z, l_z (z, scale k_z = log2 e: exp(v) = exp2(v log2 e), the scale folded into one multiply); class ids: a_z = sum z; probabilities: b_z = sum w, a_z = sum w (z - m_z).
    # Sub CE: m_s, l_s (s, scale k_t = log2(e) / T), l_t = sum exp((z - m_z) / T), d_t = sum that * (s - m_s).
    # BCE: a_z and d_t are the per-lane sums of the main and sub elements.
    if MASKED:
        z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
    else:
        z = tl.load(z_row + cols).to(tl.float32)
    if HAS_SUB:
        if MASKED:
            s = tl.load(s_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        else:
            s = tl.load(s_row + cols).to(tl.float32)
    if BCE:
        if HAS_MAIN:
            w = _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE, BINARISE)
            a_z += tl.where(mask, _bce_elem(z, w), 0.0)
        if HAS_SUB:
            d_t += tl.where(mask, _bce_elem(s * inv_t, _sigmoid(z * inv_t)), 0.0)
    else:
        gt, e, l_new = _running_exp_sum(z, m_z, l_z, k_z)
        m_new = tl.maximum(z, m_z)
        if HAS_MAIN:
            l_z = l_new
            if DENSE:
                # a_z = sum w (z - m_z): rescaled by b_z (m_old - m_new) when the max grows; w = 0 terms skipped
                w = _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE, BINARISE)
                a_z += b_z * (m_z - m_new) + tl.where(w != 0.0, w * (z - m_new), 0.0)
                b_z += w
            else:
                a_z += tl.where(mask, z, 0.0)  # the uniform eps / C term needs only sum z (see the merge)
        if HAS_SUB:
            # teacher z / T: the same comparison as z, one more exp2. alpha rescales the old sums, e_t is this term
            e2 = tl.exp2((tl.minimum(z, m_z) - tl.maximum(z, m_z)) * k_t)
            alpha, e_t = tl.where(gt, e2, 1.0), tl.where(gt, 1.0, e2)
            gs, es, l_s = _running_exp_sum(s, m_s, l_s, k_t)
            ms_new = tl.maximum(s, m_s)
            d_t = alpha * (d_t + l_t * (m_s - ms_new)) + tl.where(e_t != 0.0, e_t * (s - ms_new), 0.0)
            l_t = l_t * alpha + e_t
            m_s = ms_new
        m_z = m_new
    return m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t


@jit
def _row_shift(m):
    # the row's softmax shift from the per-lane maxima: their max, 0 while the row is all -inf (every lane still
    # at its start, -FLT_MAX: finite, so that v - m is -inf, never NaN, for v = -inf)
    c = tl.max(m, axis=0)
    return tl.where(c <= -3.4028234663852886e38, 0.0, c)


@jit
def _loss_fwd_kernel(
    z_ptr,  # main logits [M, C], last stride 1 (also the sub term's teacher)
    s_ptr,  # sub logits [M, C], last stride 1 (HAS_SUB)
    y_ptr,  # int64 class ids [M] or probabilities [M, C], last stride 1 (HAS_MAIN)
    out_ptr,  # fp32 [9, M] out: main loss, sub loss (T^2 included; 0 ignored, NaN bad-id rows), stats, zero-filled
    M,
    C,
    stride_z,
    stride_s,
    stride_y,
    eps,
    ignore_index,
    temperature,
    threshold,
    HAS_MAIN: tl.constexpr,
    HAS_SUB: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # the grid is exactly M programs
    lanes = tl.arange(0, BLOCK_C)
    z_row, s_row, y_row = z_ptr + row * stride_z, s_ptr + row * stride_s, y_ptr + row * stride_y
    label, valid, bad = _row_label(y_ptr, row, row < M, ignore_index, C, HAS_MAIN and not DENSE)
    inv_t = 1.0 / temperature
    k_z = 1.4426950408889634  # log2(e)
    k_t = k_z * inv_t
    lowest = tl.zeros([BLOCK_C], tl.float32) - 3.4028234663852886e38  # -FLT_MAX
    zeros = tl.zeros([BLOCK_C], tl.float32)
    m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = lowest, zeros, zeros, zeros, lowest, zeros, zeros, zeros
    full = C - C % BLOCK_C  # whole blocks unmasked, then one masked tail block
    for start in range(0, full, BLOCK_C):
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = _fwd_block(
            z_row, s_row, y_row, start + lanes, lanes < BLOCK_C, label, eps, C, threshold, inv_t, k_z, k_t,
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, False,
        )  # fmt: skip
    if full < C:
        cols = full + lanes
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = _fwd_block(
            z_row, s_row, y_row, cols, cols < C, label, eps, C, threshold, inv_t, k_z, k_t,
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, True,
        )  # fmt: skip
    out_row, m64 = out_ptr + row, row * 0 + M  # stats row k of this row: out_row + k * M, int64
    in_row = row < M
    if not BCE:
        # merge the lanes: each lane's sums rescaled from its own max to the row's shift c_z
        c_z = _row_shift(m_z)
        beta_z = tl.exp2((m_z - c_z) * k_z)
    if HAS_MAIN:
        if BCE:
            main = tl.sum(a_z, axis=0) / C
        else:
            l_row = tl.sum(l_z * beta_z, axis=0)
            if DENSE:
                s_w = tl.sum(b_z, axis=0)
                d_w = tl.sum(a_z + b_z * (m_z - c_z), axis=0)  # sum w (z - c_z)
            else:
                # one-hot q: w = w_y at the label, w_o elsewhere (q := [q > threshold] first), so
                # sum w (z - c) = w_o (sum z - C c) + (w_y - w_o) (z_y - c): z_y is loaded once, w = 0 terms skipped
                q_y, q_o = 1.0, 0.0
                if BINARISE:
                    q_y, q_o = tl.where(1.0 > threshold, 1.0, 0.0), tl.where(0.0 > threshold, 1.0, 0.0)
                w_y, w_o = (1.0 - eps) * q_y + eps / C, (1.0 - eps) * q_o + eps / C
                has_y = valid & ~bad
                z_y = tl.load(z_row + tl.where(has_y, label, 0), mask=has_y, other=0.0).to(tl.float32)
                s_w = w_o * C + tl.where((label >= 0) & (label < C), w_y - w_o, 0.0)  # as the one-hot's sum
                d_w = tl.where(w_o != 0.0, w_o * (tl.sum(a_z, axis=0) - C * c_z), 0.0)
                d_w += tl.where(w_y != w_o, (w_y - w_o) * (z_y - c_z), 0.0)
            main = s_w * tl.log(l_row) - d_w  # sum_c w_c (lse - z_c)
            tl.store(out_row + 2 * m64, c_z, mask=in_row)
            tl.store(out_row + 3 * m64, tl.log(l_row), mask=in_row)
            tl.store(out_row + 4 * m64, s_w, mask=in_row)
        tl.store(out_row, _row_value(main, valid, bad), mask=in_row)
    if HAS_SUB:
        if BCE:
            sub = tl.sum(d_t, axis=0) / C
        else:
            c_s = _row_shift(m_s)  # in units of s; the stats are in units of s / T (the same values, rounded once)
            beta_t = tl.exp2((m_z - c_z) * k_t)
            lt_row = tl.sum(l_t * beta_t, axis=0)
            ls_row = tl.sum(l_s * tl.exp2((m_s - c_s) * k_t), axis=0)
            # sum p (s - c_s) / T with p = softmax(z / T); lanes whose teacher mass underflows to 0 are skipped
            dt_row = tl.sum(tl.where(beta_t != 0.0, beta_t * (d_t + l_t * (m_s - c_s)), 0.0), axis=0)
            sub = tl.log(ls_row) - inv_t * dt_row / lt_row  # sum_c p_c (lse(s/T) - s_c/T)
            tl.store(out_row + 5 * m64, c_s * inv_t, mask=in_row)
            tl.store(out_row + 6 * m64, tl.log(ls_row), mask=in_row)
            tl.store(out_row + 7 * m64, c_z * inv_t, mask=in_row)
            tl.store(out_row + 8 * m64, tl.log(lt_row), mask=in_row)
        tl.store(out_row + M, _row_value((temperature * temperature) * sub, valid, bad), mask=in_row)



@jit
def _bwd_block(
    z_row, s_row, y_row, dz_row, ds_row, cols, mask, label, valid, bad, eps, C, threshold, inv_t,
    g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
    WRITE_DZ: tl.constexpr, WRITE_DS: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr,
    BINARISE: tl.constexpr, MASKED: tl.constexpr,
):
    # One block of classes: both gradients recomputed from the saved stats and written. Only the last block is
    # MASKED. softmax(v)_c = exp(v_c - c - log l) = exp2((v_c - c) log2 e - b) with b = log2 l (one FFMA per
    # exponent; v_c - c is rounded once, as before, so logits of 1e4 lose nothing to the shift).
    if MASKED:
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        z = tl.load(z_row + cols).to(tl.float32)
    if WRITE_DZ:
        w = _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE, BINARISE)
        if BCE:
            p = _sigmoid(z)
        else:
            p = s_z * tl.exp2((z - c_z) * 1.4426950408889634 - b_z)
        dz = _row_value(g_m * (p - w), valid, bad).to(dz_row.dtype.element_ty)  # fp32 throughout, one cast
        if MASKED:
            tl.store(dz_row + cols, dz, mask=mask)
        else:
            tl.store(dz_row + cols, dz)
    if WRITE_DS:
        if MASKED:
            s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            s = tl.load(s_row + cols).to(tl.float32)
        if BCE:
            diff = _sigmoid(s * inv_t) - _sigmoid(z * inv_t)
        else:
            e_s = tl.exp2((s * inv_t - c_s) * 1.4426950408889634 - b_s)
            diff = e_s - tl.exp2((z * inv_t - c_t) * 1.4426950408889634 - b_t)
        ds = _row_value(g_s * diff, valid, bad).to(ds_row.dtype.element_ty)
        if MASKED:
            tl.store(ds_row + cols, ds, mask=mask)
        else:
            tl.store(ds_row + cols, ds)


@jit
def _loss_bwd_kernel(
    z_ptr,  # as in the forward
    s_ptr,
    y_ptr,
    out_ptr,  # fp32 [9, M], the forward's output (stats rows)
    gm_ptr,  # grad of the per-row main loss [M], any float dtype and row stride (0 included) (WRITE_DZ)
    gs_ptr,  # grad of the per-row sub loss [M] (WRITE_DS)
    dz_ptr,  # [M, C] out, the logits' dtype, contiguous (WRITE_DZ)
    ds_ptr,  # [M, C] out (WRITE_DS)
    M,
    C,
    stride_z,
    stride_s,
    stride_y,
    stride_gm,
    stride_gs,
    eps,
    ignore_index,
    temperature,
    threshold,
    LABELS: tl.constexpr,
    WRITE_DZ: tl.constexpr,
    WRITE_DS: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    in_row = row < M
    lanes = tl.arange(0, BLOCK_C)
    z_row, s_row, y_row = z_ptr + row * stride_z, s_ptr + row * stride_s, y_ptr + row * stride_y
    label, valid, bad = _row_label(y_ptr, row, in_row, ignore_index, C, LABELS)  # zero / NaN rows as forward
    inv_t = 1.0 / temperature
    per_class = 1.0
    if BCE:
        per_class = 1.0 / C
    out_row, m64 = out_ptr + row, row * 0 + M  # stats row k of this row: out_row + k * M, int64
    zero = tl.zeros([], tl.float32)  # the row terms of an absent gradient
    g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t = zero, zero, zero, zero, zero, zero, zero, zero, zero
    if WRITE_DZ:
        g_m = tl.load(gm_ptr + row * stride_gm, mask=in_row, other=0.0).to(tl.float32) * per_class
        c_z = tl.load(out_row + 2 * m64, mask=in_row, other=0.0)
        b_z = tl.load(out_row + 3 * m64, mask=in_row, other=0.0) * 1.4426950408889634  # log2(l_z)
        s_z = tl.load(out_row + 4 * m64, mask=in_row, other=0.0)
    if WRITE_DS:
        g_s = tl.load(gs_ptr + row * stride_gs, mask=in_row, other=0.0).to(tl.float32) * (temperature * per_class)
        c_s = tl.load(out_row + 5 * m64, mask=in_row, other=0.0)
        b_s = tl.load(out_row + 6 * m64, mask=in_row, other=0.0) * 1.4426950408889634
        c_t = tl.load(out_row + 7 * m64, mask=in_row, other=0.0)
        b_t = tl.load(out_row + 8 * m64, mask=in_row, other=0.0) * 1.4426950408889634
    full = C - C % BLOCK_C  # whole blocks unmasked, then one masked tail block
    for start in range(0, full, BLOCK_C):
        _bwd_block(
            z_row, s_row, y_row, dz_ptr + row * C, ds_ptr + row * C, start + lanes, lanes < BLOCK_C, label, valid,
            bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, False,
        )  # fmt: skip
    if full < C:
        cols = full + lanes
        _bwd_block(
            z_row, s_row, y_row, dz_ptr + row * C, ds_ptr + row * C, cols, cols < C, label, valid,
            bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, True,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Launchers. The CUDA extension masksub_kernels._C takes the same arguments (? = optional):
#   _C.masksub_loss_forward(logits, sub_logits?, target?, bce, label_smoothing, ignore_index, temperature,
#                           target_threshold?) -> fp32 [9, M] (rows: main, sub, the 7 stats of NUM_OUT above)
#   _C.masksub_loss_backward(grad_main?, grad_sub?, out, logits, sub_logits?, target?, bce, label_smoothing,
#                            ignore_index, temperature, target_threshold?) -> (d logits or [0], d sub_logits or [0])
# ----------------------------------------------------------------------------------------------------------------


def _launch_config(classes: int, max_block: int) -> tuple[int, int]:
    """(BLOCK_C, num_warps): up to max_block classes per iteration, ~8 per thread at most. The forward keeps 8
    per-lane states per class slot in registers: half the backward's block keeps 2 blocks of 8 warps resident."""
    block_c = min(max(16, next_power_of_2(classes)), max_block)
    return block_c, max(4, min(16, block_c // 256))


def _prepare(logits, sub_logits, target, bce, threshold, max_block):
    """Kernel operands: tensors with unit last stride (absent ones stand in as logits), row strides, constexprs."""
    z, s, y = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (logits, sub_logits, target))
    dense = y is not None and y.is_floating_point()
    block_c, num_warps = _launch_config(z.shape[1], max_block)
    strides = (z.stride(0), s.stride(0) if s is not None else 0, y.stride(0) if dense else 1)
    flags = {"BCE": bool(bce), "DENSE": dense, "BINARISE": threshold is not None, "BLOCK_C": block_c}
    return (z, z if s is None else s, z if y is None else y), strides, flags, num_warps


def _forward_triton(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold):
    (z, s, y), strides, flags, warps = _prepare(logits, sub_logits, target, bce, threshold, max(16, MAX_BLOCK_C // 2))
    out = torch.zeros(NUM_OUT, z.shape[0], dtype=torch.float32, device=z.device)
    if z.shape[0]:
        args = (z, s, y, out, *z.shape, *strides, label_smoothing, ignore_index, temperature, threshold or 0.0)
        has = {"HAS_MAIN": target is not None, "HAS_SUB": sub_logits is not None}
        _loss_fwd_kernel[(z.shape[0],)](*args, **has, **flags, num_warps=warps)
    return out


def _backward_triton(grad_main, grad_sub, out, logits, sub_logits, target, bce, eps, ignore, temperature, threshold):
    (z, s, y), strides, flags, warps = _prepare(logits, sub_logits, target, bce, threshold, MAX_BLOCK_C)
    dz, ds = (z.new_empty(z.shape if g is not None else (0,)) for g in (grad_main, grad_sub))  # contiguous
    gm, gs = (out[0] if g is None else g for g in (grad_main, grad_sub))
    if z.shape[0] and (grad_main is not None or grad_sub is not None):
        args = (z, s, y, out, gm, gs, dz if dz.numel() else out, ds if ds.numel() else out, *z.shape, *strides)
        args += (gm.stride(0), gs.stride(0), eps, ignore, temperature, threshold or 0.0)
        has = {"LABELS": target is not None and not flags["DENSE"], "WRITE_DZ": grad_main is not None}
        _loss_bwd_kernel[(z.shape[0],)](*args, **has, WRITE_DS=grad_sub is not None, **flags, num_warps=warps)
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


def _loss_backward(ctx, grad_out):
    logits, sub_logits, target, out = ctx.saved_tensors
    # the main term's gradient only: the sub term's target is detached, so it never reaches logits
    need_dmain = grad_out is not None and ctx.needs_input_grad[0] and target is not None
    need_dsub = grad_out is not None and ctx.needs_input_grad[1] and sub_logits is not None
    if not (need_dmain or need_dsub):
        return (None,) * 8
    grad_main, grad_sub = grad_out[MAIN] if need_dmain else None, grad_out[SUB] if need_dsub else None
    dz, ds = _loss_backward_op(grad_main, grad_sub, out, logits, sub_logits, target, *ctx.options)
    return (dz if need_dmain else None), (ds if need_dsub else None), *(None,) * 6


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup_context)
