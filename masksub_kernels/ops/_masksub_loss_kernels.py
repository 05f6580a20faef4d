"""The MaskSub loss's Triton kernels (maths, design and layout: masksub_loss.py's docstring).

One program per row (or, SPLIT, per row and class split), a loop over the classes in blocks of BLOCK_C (the
blocks' work: _masksub_loss_blocks.py), fp32 arithmetic. The forward keeps an online-softmax state per 16-byte
word (merged once per row) and the backward recomputes from the forward's saved stats; both run whole blocks
unmasked and peel a partial last block (and, where the rows are not 16-byte aligned, a partial first one:
_block_range).
"""

from __future__ import annotations

from .._triton import jit, tl
from ._masksub_loss_blocks import _block_range, _bwd_block, _fwd_block, _row_label, _row_value

# ----------------------------------------------------------------------------------------------------------------
# Triton kernels: one program per row, a loop over the classes in blocks of BLOCK_C, fp32 arithmetic
# ----------------------------------------------------------------------------------------------------------------


# The reduction's lanes: the last program sums M rows REDUCE_LANES at a time, one L2 round trip each, whatever the
# row's block (BLOCK_C is 16 for C <= 16: 1024 serial steps at M = 16384 then), 2-8 per thread
REDUCE_LANES = tl.constexpr(1024)


@jit
def _reduce_rows(
    out_ptr, y_ptr, red_ptr, d_ptr, done_ptr, M, ignore_index, main_weight, sub_weight, lanes,
    LABELS: tl.constexpr, MEAN: tl.constexpr,
):  # fmt: skip
    # REDUCE: called by each row's finishing program once its row is stored. It takes a ticket (after the stores:
    # release; acquire for the reader); the last row to finish sums every row's two losses in a fixed order (the
    # result does not depend on which row finishes last) and writes (a main + b sub, main, sub, d), with
    # d = max(rows that count, 1) for a mean (class ids != ignore_index), 1 for a sum, and d again into d_ptr (the
    # backward's copy: the caller may change the losses in place). No program waits.
    tl.debug_barrier()  # every thread's stores before the ticket
    finished = tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="gpu")
    if finished == M - 1:
        main = tl.zeros(lanes.shape, tl.float32)
        sub = tl.zeros(lanes.shape, tl.float32)
        count = tl.zeros(lanes.shape, tl.int32)
        m64 = finished.to(tl.int64) * 0 + M  # the SUB row's offset in int64 (out holds 9 M elements)
        for start in range(0, M, lanes.shape[0]):
            rows = start + lanes
            in_rows = rows < M
            main += tl.load(out_ptr + rows, mask=in_rows, other=0.0, cache_modifier=".cg")  # row MAIN = 0
            sub += tl.load(out_ptr + m64 + rows, mask=in_rows, other=0.0, cache_modifier=".cg")  # row SUB = 1
            if LABELS:
                label = tl.load(y_ptr + rows, mask=in_rows, other=0).to(tl.int64)
                count += (in_rows & (label != ignore_index)).to(tl.int32)
        d = tl.full([], 1.0, tl.float32)
        if MEAN:
            if LABELS:
                d = tl.maximum(tl.sum(count, axis=0), 1).to(tl.float32)
            else:
                d = d * M  # the grid has M >= 1 programs
        main_loss = tl.sum(main, axis=0) / d
        sub_loss = tl.sum(sub, axis=0) / d
        tl.store(red_ptr, main_weight * main_loss + sub_weight * sub_loss)
        tl.store(red_ptr + 1, main_loss)
        tl.store(red_ptr + 2, sub_loss)
        tl.store(red_ptr + 3, d)
        tl.store(d_ptr, d)


@jit
def _split_classes(C, chunk):
    # this program's classes [lo, hi) of a row cut into splits of chunk classes (program_id 1; lo < C: the
    # launcher's splits = cdiv(C, chunk)). Not min(lo + chunk, C): in int32 that wraps where C is within a chunk of
    # 2^31 (MAX_CLASSES leaves 2^16; a chunk is up to ~C / splits), and the last split then lost its classes
    # (helper-336)
    lo = tl.program_id(1) * chunk
    return lo, lo + tl.minimum(chunk, C - lo)


@jit
def _row_grad(g_ptr, row, stride_g, in_row, d_ptr, weight, TERM: tl.constexpr, REDUCED: tl.constexpr):
    # The gradient of the row's loss of term TERM (1 main, 2 sub): g[row] for per-row losses; for the reduced
    # loss's gradient g [4] (ops/masksub_loss_reduced.py): (w g_0 + g_TERM) / d, the same for every row
    if REDUCED:
        g0 = tl.load(g_ptr).to(tl.float32)
        g = (weight * g0 + tl.load(g_ptr + TERM * stride_g).to(tl.float32)) / tl.load(d_ptr)
    else:
        g = tl.load(g_ptr + row * stride_g, mask=in_row, other=0.0).to(tl.float32)
    return g


@jit
def _row_shift(m):
    # the row's softmax shift from the per-lane maxima: their max, 0 while the row is all -inf (every lane still
    # at its start, -FLT_MAX: finite, so that v - m is -inf, never NaN, for v = -inf)
    c = tl.max(m, axis=0)
    return tl.where(c <= -3.4028234663852886e38, 0.0, c)


@jit
def _merge_states(
    m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf, k_z, k_t,
    HAS_MAIN: tl.constexpr, HAS_SUB: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    # A vector of states (one per lane, or one per class split) into one, each sum rescaled from its own max to the
    # common shift c (the states are those of _fwd_block; an untouched state, m = -FLT_MAX and sums 0, adds 0):
    #   l = sum l_i 2^((m_i - c) k),  sum w (z - c) = sum a_i + b_i (m_i - c),  sum w = sum b_i  (class ids: w = 1)
    #   teacher beta_i = 2^((m_z,i - c_z) k_t): l_t = sum beta_i l_t,i,  d_t = sum beta_i (d_t,i + l_t,i (m_s,i - c_s))
    #   the largest z among classes with s = -inf: m_ninf = max m_ninf,i (in units of z, unscaled)
    # FINAL: c is the row's shift (0 for an all -inf row, as the saved stats); else the raw max (-FLT_MAX for an
    # all -inf split), so that a later merge of the partial states rescales them exactly. BCE: plain sums.
    zero = tl.zeros([], tl.float32)
    c_z, c_s, l_z_row, a_row, b_row, ls_row, lt_row, dt_row = zero, zero, zero, zero, zero, zero, zero, zero
    mn_row = zero
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
            # probabilities, and class ids' sum (z - m) with smoothing (b_z: the classes' count, 0 without)
            a_row = tl.sum(a_z + b_z * (m_z - c_z), axis=0)
            b_row = tl.sum(b_z, axis=0)
        if HAS_SUB:
            if FINAL:
                c_s = _row_shift(m_s)  # in units of s; the stats are in units of s / T
            else:
                c_s = tl.max(m_s, axis=0)
            beta_t = tl.exp2((m_z - c_z) * k_t)
            lt_row = tl.sum(l_t * beta_t, axis=0)
            ls_row = tl.sum(l_s * tl.exp2((m_s - c_s) * k_t), axis=0)
            # lanes whose teacher mass underflows to 0 add nothing (l_t (m_s - c_s) may overflow there), nor do lanes
            # that saw only -inf student logits (m_s = -FLT_MAX, d_t = 0: _fwd_block)
            moved = tl.where(m_s > -3.4028234663852886e38, l_t * (m_s - c_s), 0.0)
            dt_row = tl.sum(tl.where(beta_t != 0.0, beta_t * (d_t + moved), 0.0), axis=0)
            mn_row = tl.max(m_ninf, axis=0)
    return c_z, l_z_row, a_row, b_row, c_s, ls_row, lt_row, dt_row, mn_row


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
def _store_absent_zeros(
    out_row, m64, in_row, HAS_MAIN: tl.constexpr, HAS_SUB: tl.constexpr, BCE: tl.constexpr
):  # fmt: skip
    # 0 in the stats rows a variant does not write (_store_row's ZERO_ABSENT): its absent terms' loss and stats,
    # and the CE stats (rows 2-4 of the main term, 5-8 of the sub term) under BCE
    if not HAS_MAIN:
        tl.store(out_row, 0.0, mask=in_row)
    if not HAS_MAIN or BCE:
        for k in tl.static_range(2, 5):
            tl.store(out_row + k * m64, 0.0, mask=in_row)
    if not HAS_SUB:
        tl.store(out_row + m64, 0.0, mask=in_row)
    if not HAS_SUB or BCE:
        for k in tl.static_range(5, 9):
            tl.store(out_row + k * m64, 0.0, mask=in_row)


@jit
def _store_row(
    out_row, m64, in_row, z_row, bias_ptr, label, valid, bad, eps, C, threshold, inv_t, temperature,
    c_z, l_z, a_z, b_z, c_s, l_s, l_t, d_t, m_ninf,
    HAS_MAIN: tl.constexpr, HAS_SUB: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, BINARISE: tl.constexpr,
    HAS_BIAS: tl.constexpr, ZERO_ABSENT: tl.constexpr,
):  # fmt: skip
    # The row's merged state (FINAL shifts) into its losses and saved stats: stats row k of the row at out_row + k M.
    # ZERO_ABSENT: also the zeros of the entries a variant has none for (an absent term; the CE stats under BCE), so
    # that an output without tickets needs no fill, a launch (with tickets, the buffer's one fill zeroes both).
    if ZERO_ABSENT:
        _store_absent_zeros(out_row, m64, in_row, HAS_MAIN, HAS_SUB, BCE)
    if HAS_MAIN:
        if BCE:
            main = a_z / C
            if not DENSE:
                # class ids (see _fwd_block): w_o off the label, w_y at it (q := [q > threshold] first);
                # (1 - w_o) P - w_o N + L over the classes but the label, plus the label's own element
                w_y, w_o, has_y, z_y = _label_terms(
                    z_row, bias_ptr, label, valid, bad, eps, C, threshold, BINARISE, HAS_BIAS
                )
                # N = A - P (_fwd_block); P = +inf: the row's term is +inf whatever N (A may be NaN); w_o = 1 only
                # at C = 1, where no other class exists
                n_z = tl.where(a_z == float("inf"), 0.0, b_z - a_z)
                lin = tl.where(w_o != 1.0, (1.0 - w_o) * a_z, 0.0) - tl.where(w_o != 0.0, w_o * n_z, 0.0)
                t_y = tl.where(z_y > 0.0, 1.0, 0.0) - w_y  # the label's linear part, as _bce_elem
                lin += tl.where(has_y & (t_y != 0.0), t_y * z_y, 0.0)
                main = (lin + l_z) / C
        else:
            if DENSE:
                s_w, d_w = b_z, a_z  # sum w, sum w (z - c_z)
            else:
                # one-hot q: w = w_y at the label, w_o elsewhere (q := [q > threshold] first), so
                # sum w (z - c) = w_o sum (z - c) + (w_y - w_o) (z_y - c): z_y is loaded once, w = 0 terms skipped
                w_y, w_o, has_y, z_y = _label_terms(
                    z_row, bias_ptr, label, valid, bad, eps, C, threshold, BINARISE, HAS_BIAS
                )
                s_w = w_o * C + tl.where((label >= 0) & (label < C), w_y - w_o, 0.0)  # as the one-hot's sum
                d_w = tl.where(w_o != 0.0, w_o * a_z, 0.0)  # a_z = sum (z - c_z) (_merge_states)
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
            # a class with s = -inf costs +inf where its teacher probability p = 2^((m_ninf - c_z) k_t) / l_t is not 0
            # in fp32: where log2 p >= -150 (expf rounds e^x to the smallest subnormal, 2^-149, from x >= -150 ln 2; a
            # compare, not the GPU's exp2, which flushes results below 2^-126 to 0)
            log2_p = (m_ninf - c_z) * (inv_t * 1.4426950408889634) - tl.log2(l_t)
            d_t = tl.where(log2_p >= -150.0, float("-inf"), d_t)
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
    out_ptr,  # fp32 [9, M] out: main loss, sub loss (T^2 included; 0 ignored, NaN bad-id rows), stats
    part_ptr,  # fp32 [9, M, splits] scratch: each split's merged state (SPLIT)
    ticket_ptr,  # int32, zero: [M] splits of the row done (SPLIT; left zero), then 1 rows done (REDUCE)
    red_ptr,  # fp32 [4] out: a main + b sub, main, sub, d (REDUCE: _reduce_rows)
    d_ptr,  # fp32 [1] out: d again (REDUCE)
    M,
    C,
    chunk,  # classes per split, a multiple of BLOCK_C (SPLIT)
    stride_z,
    stride_s,
    stride_y,
    stride_out,  # the stats rows' stride: M for a fresh out, more for a view into a wider [9, N] (no REDUCE)
    eps,
    ignore_index,
    temperature,
    threshold,
    main_weight,  # a, b (REDUCE)
    sub_weight,
    HAS_MAIN: tl.constexpr,
    HAS_SUB: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    SPLIT: tl.constexpr,  # grid (M, splits): program (row, j) takes classes [j chunk, (j + 1) chunk)
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,  # >= splits (SPLIT)
    UNIT_T: tl.constexpr = False,  # temperature == 1: the teacher shares the main term's exp (CE, BCE)
    VEC: tl.constexpr = 1,  # > 1: realigned rows, VEC elements = 16 bytes (_block_range; row_alignment)
    REDUCE: tl.constexpr = False,  # also reduce the per-row losses into red_ptr (_reduce_rows)
    MEAN: tl.constexpr = False,  # REDUCE: 'mean' (else 'sum')
    GROUP: tl.constexpr = 1,  # classes per state: a lane's 16-byte word of the logits (_fwd_block); 1 where the
    # rows' words are not provably aligned (a word split over lanes would cost shuffles per block)
    ALIGNED: tl.constexpr = False,  # VEC = 1 rows that start on 16-byte boundaries (rows_aligned): hinted
    EVEN: tl.constexpr = False,  # C % GROUP == 0 with ALIGNED: a masked block's groups are wholly in or out
    SMOOTHED: tl.constexpr = True,  # class ids: w_o, the weight off the label, may be nonzero (eps > 0): the
    # blocks sum z - m for it (w_o = 0, the default eps = 0: _store_row skips the term, so no sum is needed)
    ZERO_ABSENT: tl.constexpr = False,  # out not zero-filled: write 0 where the variant has no value (_store_row)
    DESCENDING: tl.constexpr = False,  # the whole blocks (before BCE's label block) from the last to the first
):
    row = tl.program_id(0).to(tl.int64)  # the grid is exactly M programs (x splits)
    # the block's columns as [BLOCK_C / GROUP, GROUP]: row i the GROUP contiguous classes of one state
    lanes = tl.arange(0, BLOCK_C // GROUP)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    z_row, y_row = z_ptr + row * stride_z, y_ptr + row * stride_y  # z_row: the label logit (_label_terms)
    label, valid, bad = _row_label(y_ptr, row, row < M, ignore_index, C, HAS_MAIN and not DENSE)
    label_col = tl.where(valid & ~bad, label, -1).to(tl.int32)  # the blocks compare int32 columns; -1: no column
    inv_t = 1.0 / temperature
    k_z = 1.4426950408889634  # log2(e)
    k_t = k_z * inv_t
    lowest = tl.zeros([BLOCK_C // GROUP], tl.float32) - 3.4028234663852886e38  # -FLT_MAX
    zeros = tl.zeros([BLOCK_C // GROUP], tl.float32)
    m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t = lowest, zeros, zeros, zeros, lowest, zeros, zeros, zeros
    m_ninf = zeros + float("-inf")  # the largest z among classes with s = -inf (none: -inf)
    lo, hi = 0, C
    if SPLIT:
        split = tl.program_id(1)
        lo, hi = _split_classes(C, chunk)
    # masked first block (realigned rows), whole blocks unmasked, one masked last block, in the row's frame
    # (_block_range: physical column p holds class p - shift; every pointer and the label moved by shift)
    shift, first, full, end = _block_range(row, stride_z, lo, hi, VEC, BLOCK_C)
    z_off, s_off = row * stride_z - shift, row * stride_s - shift  # VEC > 1: stride_s == stride_z (the launcher)
    if VEC > 1:  # the hint only there: it replaces what Triton infers (16-divisible strides of aligned rows)
        z_off, s_off = tl.multiple_of(z_off, VEC), tl.multiple_of(s_off, VEC)
    elif ALIGNED:  # strides of 8 bf16 (C = 1000) are 16 bytes but not the 16 elements Triton would infer
        # (shift = 0 here: the hint goes on the product, as "- 0" folds away with a hint on it)
        z_off, s_off = tl.multiple_of(row * stride_z, GROUP), tl.multiple_of(row * stride_s, GROUP)
        if EVEN:  # the masked last block's mask is uniform over each group: its loads stay 16-byte words (the
            # same values, written so that the compiler sees the multiple: a hint on them is lost with the call)
            full, end = full // GROUP * GROUP, end // GROUP * GROUP
    z_base, s_base = z_ptr + z_off, s_ptr + s_off  # 16-byte aligned rows where the row's start is not
    y_base, b_base = y_row - shift, bias_ptr - shift
    if ALIGNED and DENSE:  # probability rows are part of the launcher's check
        y_base = y_ptr + tl.multiple_of(row * stride_y, GROUP)
    label_p = tl.where(label_col >= 0, label_col + shift, -1)
    if VEC > 1:
        cols = lo + lanes
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf = _fwd_block(
            z_base, s_base, y_base, b_base, lo, lanes, (cols >= lo + shift) & (cols < end), label_p, eps, C, threshold,
            inv_t, k_z, k_t, m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf,
            HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, True, HAS_BIAS, UNIT_T, True, SMOOTHED,
        )  # fmt: skip
    # BCE with class ids (PEEL): the whole block that holds the label's column (at; full if none) runs on its own,
    # so that the others compare no column with the label (_fwd_block's LABEL): two loops around it
    PEEL: tl.constexpr = BCE and HAS_MAIN and not DENSE
    at = full
    if PEEL:
        at = tl.where((label_p >= first) & (label_p < full), first + (label_p - first) // BLOCK_C * BLOCK_C, full)
    # DESCENDING: the blocks [first, at) from the last down, block first + last - (start - first) (written so
    # that the compiler sees each start a multiple of BLOCK_C past first, as the ascending one's). Why: the one
    # launch's backward (ops/_loss_fwd_bwd.py) reads the row again from its first class, which a descending forward
    # read last: the most recently read bytes, those L2 still holds, are the ones read first (the online softmax's
    # states are order-free: the same values to fp32 rounding)
    last = (at - first - BLOCK_C) // BLOCK_C * BLOCK_C
    for start in range(first, at, BLOCK_C):
        block = first + last - (start - first) if DESCENDING else start
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf = _fwd_block(
            z_base, s_base, y_base, b_base, block, lanes, lanes < BLOCK_C, label_p, eps, C, threshold, inv_t, k_z,
            k_t, m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf,
            HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, False, HAS_BIAS, UNIT_T, not PEEL, SMOOTHED,
        )  # fmt: skip
    if PEEL:
        if at < full:
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf = _fwd_block(
                z_base, s_base, y_base, b_base, at, lanes, lanes < BLOCK_C, label_p, eps, C, threshold, inv_t, k_z,
                k_t, m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, False,
                HAS_BIAS, UNIT_T, True, SMOOTHED,
            )  # fmt: skip
        for start in range(at + BLOCK_C, full, BLOCK_C):
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf = _fwd_block(
                z_base, s_base, y_base, b_base, start, lanes, lanes < BLOCK_C, label_p, eps, C, threshold, inv_t, k_z,
                k_t, m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, False,
                HAS_BIAS, UNIT_T, False, SMOOTHED,
            )  # fmt: skip
    if full < end:
        cols = full + lanes
        m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf = _fwd_block(
            z_base, s_base, y_base, b_base, full, lanes, cols < end, label_p, eps, C, threshold, inv_t, k_z, k_t,
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, True, HAS_BIAS,
            UNIT_T, True, SMOOTHED,
        )  # fmt: skip
    if UNIT_T and not BCE:
        l_t = l_z  # CE at T = 1: the teacher's running sums are the main term's (_fwd_block carries one)
    out_row, o64 = out_ptr + row, row * 0 + stride_out  # stats row k of this row: out_row + k * stride_out, int64
    in_row = row < M
    reduce_lanes = tl.arange(0, REDUCE_LANES)  # REDUCE: the reduction's lanes (its own width)
    if SPLIT:
        # This split's lanes into one state, stored; the row's last split to finish (a ticket taken after the
        # stores: release, then acquire for the reader) merges the row's states in split order, so the result does
        # not depend on which program finishes last. No program waits on another.
        splits = tl.num_programs(1)
        sc_z, sl_z, sa_z, sb_z, sc_s, sl_s, sl_t, sd_t, sm_n = _merge_states(
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf, k_z, k_t, HAS_MAIN, HAS_SUB, BCE, DENSE, False
        )
        part = part_ptr + row * splits + split  # state k of split j of the row at part_ptr + (k M + row) splits + j
        ms = (row * 0 + M) * splits  # int64
        tl.store(part, sc_z)
        tl.store(part + ms, sl_z)
        tl.store(part + 2 * ms, sa_z)
        tl.store(part + 3 * ms, sb_z)
        tl.store(part + 4 * ms, sc_s)
        tl.store(part + 5 * ms, sl_s)
        tl.store(part + 6 * ms, sl_t)
        tl.store(part + 7 * ms, sd_t)
        tl.store(part + 8 * ms, sm_n)
        tl.debug_barrier()  # every thread's stores before the ticket
        ticket = tl.atomic_add(ticket_ptr + row, 1, sem="acq_rel", scope="gpu")
        if ticket == splits - 1:
            # every split of the row has taken its ticket: zero it again, so that a caller can keep one buffer of
            # tickets for many launches (the fused-linear op's chunks: no fill per launch)
            tl.store(ticket_ptr + row, 0)
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
            pm_n = tl.load(part_row + 8 * ms, mask=has, other=float("-inf"), cache_modifier=".cg")
            rc_z, rl_z, ra_z, rb_z, rc_s, rl_s, rl_t, rd_t, rm_n = _merge_states(
                pm_z, pl_z, pa_z, pb_z, pm_s, pl_s, pl_t, pd_t, pm_n, k_z, k_t, HAS_MAIN, HAS_SUB, BCE, DENSE, True
            )
            _store_row(
                out_row, o64, in_row, z_row, bias_ptr, label, valid, bad, eps, C, threshold, inv_t, temperature,
                rc_z, rl_z, ra_z, rb_z, rc_s, rl_s, rl_t, rd_t, rm_n, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, HAS_BIAS,
                ZERO_ABSENT,
            )  # fmt: skip
            if REDUCE:
                _reduce_rows(
                    out_ptr, y_ptr, red_ptr, d_ptr, ticket_ptr + M, M, ignore_index, main_weight, sub_weight,
                    reduce_lanes, HAS_MAIN and not DENSE, MEAN,
                )  # fmt: skip
    else:
        c_z, l_z, a_z, b_z, c_s, l_s, l_t, d_t, m_n = _merge_states(
            m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf, k_z, k_t, HAS_MAIN, HAS_SUB, BCE, DENSE, True
        )
        _store_row(
            out_row, o64, in_row, z_row, bias_ptr, label, valid, bad, eps, C, threshold, inv_t, temperature,
            c_z, l_z, a_z, b_z, c_s, l_s, l_t, d_t, m_n, HAS_MAIN, HAS_SUB, BCE, DENSE, BINARISE, HAS_BIAS, ZERO_ABSENT,
        )  # fmt: skip
        if REDUCE:
            _reduce_rows(
                out_ptr, y_ptr, red_ptr, d_ptr, ticket_ptr, M, ignore_index, main_weight, sub_weight, reduce_lanes,
                HAS_MAIN and not DENSE, MEAN,
            )  # fmt: skip


@jit
def _loss_bwd_kernel(
    z_ptr,  # as in the forward
    s_ptr,
    y_ptr,
    bias_ptr,
    out_ptr,  # fp32 [9, M], the forward's output (stats rows)
    gm_ptr,  # grad of the per-row main loss [M], any float dtype and row stride (WRITE_DZ); REDUCED: of the [4]
    gs_ptr,  # grad of the per-row sub loss [M] (WRITE_DS); REDUCED: the same [4] as gm_ptr
    dz_ptr,  # [M, C] out, any float dtype, rows stride_d apart (WRITE_DZ)
    ds_ptr,  # [M, C] out, rows stride_d apart (WRITE_DS)
    d_ptr,  # fp32 [1], the reduced forward's d (REDUCED)
    M,
    C,
    chunk,  # classes per split, a multiple of BLOCK_C (SPLIT)
    stride_z,
    stride_s,
    stride_y,
    stride_gm,
    stride_gs,
    stride_d,  # C for contiguous gradients; the fused-linear op's chunks have 16-byte-aligned rows (cuBLAS)
    stride_out,  # the stats rows' stride (as the forward's)
    eps,
    ignore_index,
    temperature,
    threshold,
    main_weight,  # a, b (REDUCED)
    sub_weight,
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
    VEC: tl.constexpr = 1,  # as in the forward
    REDUCED: tl.constexpr = False,  # gm_ptr = gs_ptr: the gradient [4] of the reduced loss (_row_grad)
    GROUP: tl.constexpr = 1,  # as in the forward: 16 bytes of the logits, for ALIGNED and EVEN
    ALIGNED: tl.constexpr = False,
    EVEN: tl.constexpr = False,
    OVER_ROWS: tl.constexpr = False,  # dz, ds: narrower views over z's and s's rows (_bwd_block; no SPLIT, VEC 1)
    D_GROUP: tl.constexpr = 1,  # ALIGNED: the elements of dz / ds that stride_d's rows are a multiple of (a
    # hint replaces what Triton infers: GROUP counts the logits' elements, so bf16 gradients over fp32 logits'
    # rows take 16 bytes, 8 elements, where GROUP's 4 would promise 8 bytes and halve the stores' width)
):
    # over the logits' rows, a split's stores would land on another program's logits, realigned rows' shifts on
    # other elements: the launcher never asks for either (_backward_config)
    tl.static_assert((OVER_ROWS == False) or ((SPLIT == False) and (VEC == 1)))  # noqa: E712 (constexprs)
    row = tl.program_id(0).to(tl.int64)
    in_row = row < M
    lanes = tl.arange(0, BLOCK_C)
    y_row = y_ptr + row * stride_y
    label, valid, bad = _row_label(y_ptr, row, in_row, ignore_index, C, LABELS)  # zero / NaN rows as forward
    label = tl.where(valid & ~bad, label, -1).to(tl.int32)  # an int32 column (-1: none) for the blocks' compare
    inv_t = 1.0 / temperature
    per_class = 1.0
    if BCE:
        per_class = 1.0 / C
    out_row, m64 = out_ptr + row, row * 0 + stride_out  # stats row k of this row: out_row + k * stride_out, int64
    zero = tl.zeros([], tl.float32)  # the row terms of an absent gradient
    g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t = zero, zero, zero, zero, zero, zero, zero, zero, zero
    if WRITE_DZ:
        g_m = _row_grad(gm_ptr, row, stride_gm, in_row, d_ptr, main_weight, 1, REDUCED) * per_class
        c_z = tl.load(out_row + 2 * m64, mask=in_row, other=0.0)
        b_z = tl.load(out_row + 3 * m64, mask=in_row, other=0.0) * 1.4426950408889634  # log2(l_z)
        s_z = tl.load(out_row + 4 * m64, mask=in_row, other=0.0)
    if WRITE_DS:
        g_s = _row_grad(gs_ptr, row, stride_gs, in_row, d_ptr, sub_weight, 2, REDUCED) * (temperature * per_class)
        c_s = tl.load(out_row + 5 * m64, mask=in_row, other=0.0)
        b_s = tl.load(out_row + 6 * m64, mask=in_row, other=0.0) * 1.4426950408889634
        c_t = tl.load(out_row + 7 * m64, mask=in_row, other=0.0)
        b_t = tl.load(out_row + 8 * m64, mask=in_row, other=0.0) * 1.4426950408889634
    lo, hi = 0, C
    if SPLIT:  # the gradient is elementwise given the row's stats: any split of the classes computes the same
        lo, hi = _split_classes(C, chunk)
    # as the forward: the row's frame (_block_range; one stride for z, s, dz and ds where VEC > 1: the launcher)
    shift, first, full, end = _block_range(row, stride_z, lo, hi, VEC, BLOCK_C)
    z_off, s_off, d_off = row * stride_z - shift, row * stride_s - shift, row * stride_d - shift
    if VEC > 1:  # as the forward
        z_off, s_off, d_off = tl.multiple_of(z_off, VEC), tl.multiple_of(s_off, VEC), tl.multiple_of(d_off, VEC)
    elif ALIGNED:  # as the forward
        z_off, s_off = tl.multiple_of(row * stride_z, GROUP), tl.multiple_of(row * stride_s, GROUP)
        d_off = tl.multiple_of(row * stride_d, D_GROUP)
        if EVEN:
            full, end = full // GROUP * GROUP, end // GROUP * GROUP
    z_base, s_base, dz_row, ds_row = z_ptr + z_off, s_ptr + s_off, dz_ptr + d_off, ds_ptr + d_off
    y_base, b_base = y_row - shift, bias_ptr - shift
    if ALIGNED and DENSE:  # as the forward
        y_base = y_ptr + tl.multiple_of(row * stride_y, GROUP)
    label_p = tl.where(label >= 0, label + shift, -1)
    if VEC > 1:
        cols = lo + lanes
        _bwd_block(
            z_base, s_base, y_base, b_base, dz_row, ds_row, cols, (cols >= lo + shift) & (cols < end), label_p,
            valid, bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, True, HAS_BIAS, UNIT_T, OVER_ROWS,
        )  # fmt: skip
    for start in range(first, full, BLOCK_C):
        _bwd_block(
            z_base, s_base, y_base, b_base, dz_row, ds_row, start + lanes, lanes < BLOCK_C, label_p,
            valid, bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, False, HAS_BIAS, UNIT_T, OVER_ROWS,
        )  # fmt: skip
    if full < end:
        cols = full + lanes
        _bwd_block(
            z_base, s_base, y_base, b_base, dz_row, ds_row, cols, cols < end, label_p, valid,
            bad, eps, C, threshold, inv_t, g_m, c_z, b_z, s_z, g_s, c_s, b_s, c_t, b_t,
            WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, True, HAS_BIAS, UNIT_T, OVER_ROWS,
        )  # fmt: skip
