"""The MaskSub loss's Triton kernels (maths, design and layout: masksub_loss.py's docstring).

One program per row (or, SPLIT, per row and class split), a loop over the classes in blocks of BLOCK_C, fp32
arithmetic. The forward keeps a per-lane
online-softmax state (merged once per row) and the backward recomputes from the forward's saved stats; both run
whole blocks unmasked and peel a partial last block.
"""

from __future__ import annotations

from .._triton import jit, tl

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
    # softplus(x) - w x = (1 - w) max(x, 0) - w min(x, 0) + log1p(exp(-|x|)) = t x + log1p(exp(-|x|)) with
    # t = [x > 0] - w: one product and one select; t = 0 (w = 1 at x = +inf, w = 0 at x = -inf) gives 0, not
    # 0 * inf = NaN. exp(-|x|) as exp2 of a pre-scaled argument: a bare MUFU.EX2, where tl.exp adds a subnormal
    # fix-up (3 more instructions); here results below 2^-126 flush to 0, far below a loss's resolution.
    t = tl.where(x > 0.0, 1.0, 0.0) - w
    return tl.where(t != 0.0, t * x, 0.0) + _log1p(tl.exp2(tl.abs(x) * -1.4426950408889634))


@jit
def _sigmoid(x):
    # 1 / (1 + exp(-x)), exp as a bare exp2 (see _bce_elem); x = -inf or -1e4: 1 / inf = 0
    return 1.0 / (1.0 + tl.exp2(x * -1.4426950408889634))


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
    # the two rescalings is exp(0) = 1. v > m: l exp(k (m - v)) + 1 (the new max is v); else: l + exp(k (v - m));
    # both exponents are -k |v - m| (one subtraction, the |.| and sign free operand modifiers, no min / max pair).
    # Returns (v > m, |v - m|, the new l). v = -inf: |v - m| = inf, exp2(-inf) = 0 (m >= -FLT_MAX), l unchanged.
    d = v - m
    gt = d > 0.0
    dist = tl.abs(d)
    e = tl.exp2(-dist * k)
    return gt, dist, tl.where(gt, l * e + 1.0, l + e)


@jit
def _bias_block(bias_ptr, cols, mask, MASKED: tl.constexpr):
    """The bias of a block of classes in fp32 (HAS_BIAS: the fused-linear loss's chunks, whose logits come without
    it, so that no pass over them adds it: the kernels add it to z and s as they read them)."""
    if MASKED:
        return tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return tl.load(bias_ptr + cols).to(tl.float32)


@jit
def _fwd_block(
    z_row,
    s_row,
    y_row,
    bias_ptr,
    cols,
    mask,
    label,
    eps,
    C,
    threshold,
    inv_t,
    k_z,
    k_t,
    m_z,
    l_z,
    a_z,
    b_z,
    m_s,
    l_s,
    l_t,
    d_t,
    HAS_MAIN: tl.constexpr,
    HAS_SUB: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UNIT_T: tl.constexpr,
):
    # One block of classes into the per-lane states (each lane its own softmax state, merged once per row: no block
    # reduction per iteration). Only the last block is MASKED; its masked lanes read z = s = -inf and add nothing.
    # CE: m_z, l_z (z, scale k_z = log2 e: exp(v) = exp2(v log2 e), the scale folded into one multiply);
    # class ids: a_z = sum z; probabilities: b_z = sum w, a_z = sum w (z - m_z).
    # Sub CE: m_s, l_s (s, scale k_t = log2(e) / T), l_t = sum exp((z - m_z) / T), d_t = sum that * (s - m_s).
    # BCE: d_t is the per-lane sum of the sub elements; probabilities: a_z the sum of the main elements; class ids
    # (label: the row's counting id as int32, -1 if none): the main element is softplus(z) - w z =
    # (1 - w) max(z, 0) - w min(z, 0) + log1p(exp(-|z|)) with one weight w_o off the label, so the lanes keep
    # a_z = sum max(z', 0), b_z = sum min(z', 0) (z' = z, 0 at the label, whose linear part the row's end adds with
    # its own weight) and l_z = sum log1p(exp(-|z|)): three sums of non-negative or non-positive terms, combined once
    # per row (_store_row): no per-element weight, no cancellation, and 0 * inf guarded once, not per element.
    if MASKED:
        z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
    else:
        z = tl.load(z_row + cols).to(tl.float32)
    if HAS_BIAS:
        bias = _bias_block(bias_ptr, cols, mask, MASKED)
        z += bias  # -inf + b stays -inf
    if HAS_SUB:
        if MASKED:
            s = tl.load(s_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        else:
            s = tl.load(s_row + cols).to(tl.float32)
        if HAS_BIAS:
            s += bias
    if BCE:
        e_z = tl.exp2(tl.abs(z) * -1.4426950408889634)  # exp(-|z|), bare exp2 (see _bce_elem); -inf: 0
        if HAS_MAIN:
            if DENSE:
                w = _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE, BINARISE)
                a_z += tl.where(mask, _bce_elem(z, w), 0.0)
            else:
                z_off = tl.where(cols == label, 0.0, z)
                a_z += tl.maximum(z_off, 0.0)  # masked lanes: max(-inf, 0) = 0
                b_z += tl.where(mask, tl.minimum(z_off, 0.0), 0.0)
                l_z += _log1p(e_z)  # masked lanes: log1p(0) = 0
        if HAS_SUB:
            if UNIT_T:
                # T = 1: the teacher sigmoid(z) from the same exp(-|z|): r = 1 / (1 + e) in [1/2, 1] is sigmoid(|z|),
                # e r = sigmoid(-|z|) (no cancellation for z < 0). z = -inf: e = 0, p = 0; z = +inf: p = 1.
                r = 1.0 / (1.0 + e_z)
                d_t += tl.where(mask, _bce_elem(s, tl.where(z > 0.0, r, e_z * r)), 0.0)
            else:
                d_t += tl.where(mask, _bce_elem(s * inv_t, _sigmoid(z * inv_t)), 0.0)
    else:
        gt, dist, l_new = _running_exp_sum(z, m_z, l_z, k_z)
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
            e2 = tl.exp2(-dist * k_t)
            alpha, e_t = tl.where(gt, e2, 1.0), tl.where(gt, 1.0, e2)
            _, _, l_s = _running_exp_sum(s, m_s, l_s, k_t)
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
def _merge_states(
    m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, k_z, k_t,
    HAS_MAIN: tl.constexpr, HAS_SUB: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    # A vector of states (one per lane, or one per class split) into one, each sum rescaled from its own max to the
    # common shift c (the states are those of _fwd_block; an untouched state, m = -FLT_MAX and sums 0, adds 0):
    #   l = sum l_i 2^((m_i - c) k),  sum w (z - c) = sum a_i + b_i (m_i - c),  sum w = sum b_i,  sum z = sum a_i
    #   teacher beta_i = 2^((m_z,i - c_z) k_t): l_t = sum beta_i l_t,i,  d_t = sum beta_i (d_t,i + l_t,i (m_s,i - c_s))
    # FINAL: c is the row's shift (0 for an all -inf row, as the saved stats); else the raw max (-FLT_MAX for an
    # all -inf split), so that a later merge of the partial states rescales them exactly. BCE: plain sums.
    zero = tl.zeros([], tl.float32)
    c_z, c_s, l_z_row, a_row, b_row, ls_row, lt_row, dt_row = zero, zero, zero, zero, zero, zero, zero, zero
    if BCE:
        a_row = tl.sum(a_z, axis=0)
        b_row = tl.sum(b_z, axis=0)
        l_z_row = tl.sum(l_z, axis=0)
        dt_row = tl.sum(d_t, axis=0)
    else:
        if FINAL:
            c_z = _row_shift(m_z)
        else:
            c_z = tl.max(m_z, axis=0)
        if HAS_MAIN:
            l_z_row = tl.sum(l_z * tl.exp2((m_z - c_z) * k_z), axis=0)
            if DENSE:
                a_row = tl.sum(a_z + b_z * (m_z - c_z), axis=0)
                b_row = tl.sum(b_z, axis=0)
            else:
                a_row = tl.sum(a_z, axis=0)
        if HAS_SUB:
            if FINAL:
                c_s = _row_shift(m_s)  # in units of s; the stats are in units of s / T
            else:
                c_s = tl.max(m_s, axis=0)
            beta_t = tl.exp2((m_z - c_z) * k_t)
            lt_row = tl.sum(l_t * beta_t, axis=0)
            ls_row = tl.sum(l_s * tl.exp2((m_s - c_s) * k_t), axis=0)
            # lanes whose teacher mass underflows to 0 are skipped (their d_t may hold 0 * -inf terms)
            dt_row = tl.sum(tl.where(beta_t != 0.0, beta_t * (d_t + l_t * (m_s - c_s)), 0.0), axis=0)
    return c_z, l_z_row, a_row, b_row, c_s, ls_row, lt_row, dt_row


@jit
def _label_terms(z_row, bias_ptr, label, valid, bad, eps, C, threshold, BINARISE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(w_y, w_o, has_y, z_y) of a row with a class id: the smoothed one-hot's weight at the label and off it
    (q := [q > threshold] first when BINARISE), whether the row has a label in range, and its logit (+ bias)."""
    q_y, q_o = 1.0, 0.0
    if BINARISE:
        q_y, q_o = tl.where(1.0 > threshold, 1.0, 0.0), tl.where(0.0 > threshold, 1.0, 0.0)
    w_y, w_o = (1.0 - eps) * q_y + eps / C, (1.0 - eps) * q_o + eps / C
    has_y = valid & ~bad
    z_y = tl.load(z_row + tl.where(has_y, label, 0), mask=has_y, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z_y += tl.load(bias_ptr + tl.where(has_y, label, 0), mask=has_y, other=0.0).to(tl.float32)
    return w_y, w_o, has_y, z_y


@jit
def _store_row(
    out_row, m64, in_row, z_row, bias_ptr, label, valid, bad, eps, C, threshold, inv_t, temperature,
    c_z, l_z, a_z, b_z, c_s, l_s, l_t, d_t,
    HAS_MAIN: tl.constexpr, HAS_SUB: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, BINARISE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):  # fmt: skip
    # The row's merged state (FINAL shifts) into its losses and saved stats: stats row k of the row at out_row + k M.
    if HAS_MAIN:
        if BCE:
            main = a_z / C
            if not DENSE:
                # class ids (see _fwd_block): w_o off the label, w_y at it (q := [q > threshold] first);
                # (1 - w_o) P - w_o N + L over the classes but the label, plus the label's own element
                w_y, w_o, has_y, z_y = _label_terms(
                    z_row, bias_ptr, label, valid, bad, eps, C, threshold, BINARISE, HAS_BIAS
                )
                lin = tl.where(w_o != 1.0, (1.0 - w_o) * a_z, 0.0) - tl.where(w_o != 0.0, w_o * b_z, 0.0)
                t_y = tl.where(z_y > 0.0, 1.0, 0.0) - w_y  # the label's linear part, as _bce_elem
                lin += tl.where(has_y & (t_y != 0.0), t_y * z_y, 0.0)
                main = (lin + l_z) / C
        else:
            if DENSE:
                s_w, d_w = b_z, a_z  # sum w, sum w (z - c_z)
            else:
                # one-hot q: w = w_y at the label, w_o elsewhere (q := [q > threshold] first), so
                # sum w (z - c) = w_o (sum z - C c) + (w_y - w_o) (z_y - c): z_y is loaded once, w = 0 terms skipped
                w_y, w_o, has_y, z_y = _label_terms(
                    z_row, bias_ptr, label, valid, bad, eps, C, threshold, BINARISE, HAS_BIAS
                )
                s_w = w_o * C + tl.where((label >= 0) & (label < C), w_y - w_o, 0.0)  # as the one-hot's sum
                d_w = tl.where(w_o != 0.0, w_o * (a_z - C * c_z), 0.0)
                d_w += tl.where(w_y != w_o, (w_y - w_o) * (z_y - c_z), 0.0)
            main = s_w * tl.log(l_z) - d_w  # sum_c w_c (lse - z_c)
            tl.store(out_row + 2 * m64, c_z, mask=in_row)
            tl.store(out_row + 3 * m64, tl.log(l_z), mask=in_row)
            tl.store(out_row + 4 * m64, s_w, mask=in_row)
        tl.store(out_row, _row_value(main, valid, bad), mask=in_row)
    if HAS_SUB:
        if BCE:
            sub = d_t / C
        else:
            sub = tl.log(l_s) - inv_t * d_t / l_t  # sum_c p_c (lse(s/T) - s_c/T), p = softmax(z / T)
            tl.store(out_row + 5 * m64, c_s * inv_t, mask=in_row)  # the same values, rounded once
            tl.store(out_row + 6 * m64, tl.log(l_s), mask=in_row)
            tl.store(out_row + 7 * m64, c_z * inv_t, mask=in_row)
            tl.store(out_row + 8 * m64, tl.log(l_t), mask=in_row)
        tl.store(out_row + m64, _row_value((temperature * temperature) * sub, valid, bad), mask=in_row)


@jit
def _loss_fwd_kernel(
    z_ptr,  # main logits [M, C], last stride 1 (also the sub term's teacher)
    s_ptr,  # sub logits [M, C], last stride 1 (HAS_SUB)
    y_ptr,  # int64 class ids [M] or probabilities [M, C], last stride 1 (HAS_MAIN)
    bias_ptr,  # [C]: added to z and s as they are read (HAS_BIAS: the fused-linear loss's chunks)
    out_ptr,  # fp32 [9, M] out: main loss, sub loss (T^2 included; 0 ignored, NaN bad-id rows), stats, zero-filled
    part_ptr,  # fp32 [8, M, splits] scratch: each split's merged state (SPLIT)
    ticket_ptr,  # int32 [M], zero-filled: splits of the row done so far (SPLIT)
    M,
    C,
    chunk,  # classes per split, a multiple of BLOCK_C (SPLIT)
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
    SPLIT: tl.constexpr,  # grid (M, splits): program (row, j) takes classes [j chunk, (j + 1) chunk)
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,  # >= splits (SPLIT)
    UNIT_T: tl.constexpr = False,  # temperature == 1 (BCE: the teacher's sigmoid shares the main term's exp)
):
    row = tl.program_id(0).to(tl.int64)  # the grid is exactly M programs (x splits)
    lanes = tl.arange(0, BLOCK_C)
    z_row, s_row, y_row = z_ptr + row * stride_z, s_ptr + row * stride_s, y_ptr + row * stride_y
    label, valid, bad = _row_label(y_ptr, row, row < M, ignore_index, C, HAS_MAIN and not DENSE)
    label_col = tl.where(valid & ~bad, label, -1).to(tl.int32)  # the blocks compare int32 columns; -1: no column
    inv_t = 1.0 / temperature
    k_z = 1.4426950408889634  # log2(e)
    k_t = k_z * inv_t
    lowest = tl.zeros([BLOCK_C], tl.float32) - 3.4028234663852886e38  # -FLT_MAX
    zeros = tl.zeros([BLOCK_C], tl.float32)
    m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = lowest, zeros, zeros, zeros, lowest, zeros, zeros, zeros
    lo, hi = 0, C
    if SPLIT:
        split = tl.program_id(1)
        lo = split * chunk
        hi = tl.minimum(lo + chunk, C)
    full = hi - (hi - lo) % BLOCK_C  # whole blocks unmasked, then one masked tail block (the row's last)
    for start in range(lo, full, BLOCK_C):
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = _fwd_block(
            z_row, s_row, y_row, bias_ptr, start + lanes, lanes < BLOCK_C, label_col, eps, C, threshold, inv_t, k_z,
            k_t, m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, False, HAS_BIAS,
            UNIT_T,
        )  # fmt: skip
    if full < hi:
        cols = full + lanes
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = _fwd_block(
            z_row, s_row, y_row, bias_ptr, cols, cols < hi, label_col, eps, C, threshold, inv_t, k_z, k_t,
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, True, HAS_BIAS,
            UNIT_T,
        )  # fmt: skip
    out_row, m64 = out_ptr + row, row * 0 + M  # stats row k of this row: out_row + k * M, int64
    in_row = row < M
    if SPLIT:
        # This split's lanes into one state, stored; the row's last split to finish (a ticket taken after the
        # stores: release, then acquire for the reader) merges the row's states in split order, so the result does
        # not depend on which program finishes last. No program waits on another.
        splits = tl.num_programs(1)
        sc_z, sl_z, sa_z, sb_z, sc_s, sl_s, sl_t, sd_t = _merge_states(
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, k_z, k_t, HAS_MAIN, HAS_SUB, BCE, DENSE, False
        )
        part = part_ptr + row * splits + split  # state k of split j of the row at part_ptr + (k M + row) splits + j
        ms = m64 * splits
        tl.store(part, sc_z)
        tl.store(part + ms, sl_z)
        tl.store(part + 2 * ms, sa_z)
        tl.store(part + 3 * ms, sb_z)
        tl.store(part + 4 * ms, sc_s)
        tl.store(part + 5 * ms, sl_s)
        tl.store(part + 6 * ms, sl_t)
        tl.store(part + 7 * ms, sd_t)
        tl.debug_barrier()  # every thread's stores before the ticket
        ticket = tl.atomic_add(ticket_ptr + row, 1, sem="acq_rel", scope="gpu")
        if ticket == splits - 1:
            # the row's split states (new names: a branch may not reshape the lane states)
            j = tl.arange(0, BLOCK_S)
            has = j < splits
            part_row = part_ptr + row * splits + j
            low = -3.4028234663852886e38  # missing splits as untouched states: m = -FLT_MAX, sums 0
            pm_z = tl.load(part_row, mask=has, other=low, cache_modifier=".cg")
            pl_z = tl.load(part_row + ms, mask=has, other=0.0, cache_modifier=".cg")
            pa_z = tl.load(part_row + 2 * ms, mask=has, other=0.0, cache_modifier=".cg")
            pb_z = tl.load(part_row + 3 * ms, mask=has, other=0.0, cache_modifier=".cg")
            pm_s = tl.load(part_row + 4 * ms, mask=has, other=low, cache_modifier=".cg")
            pl_s = tl.load(part_row + 5 * ms, mask=has, other=0.0, cache_modifier=".cg")
            pl_t = tl.load(part_row + 6 * ms, mask=has, other=0.0, cache_modifier=".cg")
            pd_t = tl.load(part_row + 7 * ms, mask=has, other=0.0, cache_modifier=".cg")
            rc_z, rl_z, ra_z, rb_z, rc_s, rl_s, rl_t, rd_t = _merge_states(
                pm_z, pl_z, pa_z, pb_z, pm_s, pl_s, pl_t, pd_t, k_z, k_t, HAS_MAIN, HAS_SUB, BCE, DENSE, True
            )
            _store_row(
                out_row, m64, in_row, z_row, bias_ptr, label, valid, bad, eps, C, threshold, inv_t, temperature,
                rc_z, rl_z, ra_z, rb_z, rc_s, rl_s, rl_t, rd_t, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, HAS_BIAS,
            )  # fmt: skip
    else:
        c_z, l_z, a_z, b_z, c_s, l_s, l_t, d_t = _merge_states(
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, k_z, k_t, HAS_MAIN, HAS_SUB, BCE, DENSE, True
        )
        _store_row(
            out_row, m64, in_row, z_row, bias_ptr, label, valid, bad, eps, C, threshold, inv_t, temperature,
            c_z, l_z, a_z, b_z, c_s, l_s, l_t, d_t, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, HAS_BIAS,
        )  # fmt: skip


@jit
def _bwd_block(
    z_row,
    s_row,
    y_row,
    bias_ptr,
    dz_row,
    ds_row,
    cols,
    mask,
    label,
    valid,
    bad,
    eps,
    C,
    threshold,
    inv_t,
    g_m,
    c_z,
    b_z,
    s_z,
    g_s,
    c_s,
    b_s,
    c_t,
    b_t,
    WRITE_DZ: tl.constexpr,
    WRITE_DS: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UNIT_T: tl.constexpr,
):
    # One block of classes: both gradients recomputed from the saved stats and written. Only the last block is
    # MASKED. softmax(v)_c = exp(v_c - c - log l) = exp2((v_c - c) log2 e - b) with b = log2 l (one FFMA per
    # exponent; v_c - c is rounded once, as before, so logits of 1e4 lose nothing to the shift).
    if MASKED:
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        z = tl.load(z_row + cols).to(tl.float32)
    if HAS_BIAS:
        bias = _bias_block(bias_ptr, cols, mask, MASKED)
        z += bias
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
        if HAS_BIAS:
            s += bias
        if BCE:
            if UNIT_T:  # T = 1: sigmoid(z) is the main gradient's (computed once when both are written)
                diff = _sigmoid(s) - _sigmoid(z)
            else:
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
    bias_ptr,
    out_ptr,  # fp32 [9, M], the forward's output (stats rows)
    gm_ptr,  # grad of the per-row main loss [M], any float dtype and row stride (0 included) (WRITE_DZ)
    gs_ptr,  # grad of the per-row sub loss [M] (WRITE_DS)
    dz_ptr,  # [M, C] out, any float dtype, rows stride_d apart (WRITE_DZ)
    ds_ptr,  # [M, C] out, rows stride_d apart (WRITE_DS)
    M,
    C,
    chunk,  # classes per split, a multiple of BLOCK_C (SPLIT)
    stride_z,
    stride_s,
    stride_y,
    stride_gm,
    stride_gs,
    stride_d,  # C for contiguous gradients; the fused-linear op's chunks have 16-byte-aligned rows (cuBLAS)
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
    SPLIT: tl.constexpr,  # grid (M, splits): program (row, j) takes classes [j chunk, (j + 1) chunk)
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    UNIT_T: tl.constexpr = False,  # temperature == 1 (BCE: one sigmoid of z for both gradients)
):
    row = tl.program_id(0).to(tl.int64)
    in_row = row < M
    lanes = tl.arange(0, BLOCK_C)
    z_row, s_row, y_row = z_ptr + row * stride_z, s_ptr + row * stride_s, y_ptr + row * stride_y
    label, valid, bad = _row_label(y_ptr, row, in_row, ignore_index, C, LABELS)  # zero / NaN rows as forward
    label = tl.where(valid & ~bad, label, -1).to(tl.int32)  # an int32 column (-1: none) for the blocks' compare
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
    lo, hi = 0, C
    if SPLIT:  # the gradient is elementwise given the row's stats: any split of the classes computes the same
        lo = tl.program_id(1) * chunk
        hi = tl.minimum(lo + chunk, C)
    full = hi - (hi - lo) % BLOCK_C  # whole blocks unmasked, then one masked tail block
    dz_row, ds_row = dz_ptr + row * stride_d, ds_ptr + row * stride_d
    for start in range(lo, full, BLOCK_C):
        _bwd_block(
            z_row, s_row, y_row, bias_ptr, dz_row, ds_row, start + lanes, lanes < BLOCK_C, label,
            valid, bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, False, HAS_BIAS, UNIT_T,
        )  # fmt: skip
    if full < hi:
        cols = full + lanes
        _bwd_block(
            z_row, s_row, y_row, bias_ptr, dz_row, ds_row, cols, cols < hi, label, valid,
            bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, True, HAS_BIAS, UNIT_T,
        )  # fmt: skip
