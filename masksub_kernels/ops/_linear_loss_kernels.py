"""Triton kernels of the fused-linear MaskSub loss, and the torch ops beside them (the row order they visit,
row_order; the merge of the forward's split states, combine_states); the maths, the reference, the launchers and
the autograd are in ``ops/linear_masksub_loss.py`` (read that first).

A program works on a tile of BLOCK_M rows x BLOCK_N classes of the logits z = h W^T + b (main) and s = h_s W^T + b
(sub), made by ``tl.dot`` over the hidden size D in steps of BLOCK_K; each weight tile is loaded once for both
branches. Rows are visited through ``order`` (the counted rows first, ``count`` of them, read on the device): tiles
of ignored rows do no work. Logit tiles never leave the program; fp32 throughout (one rounding of dz, ds to the
inputs' dtype for the gradient matmuls, as a bf16 GEMM would).

    _fwd_kernel   grid (row tiles, max_splits): the online softmax / BCE states of each row over its split's
                  classes -> part [NUM_PART, max_splits, M], merged by torch ops (combine_states, below; no sync)
    _dh_kernel    grid (row tiles, max_splits): recompute z, s; dz, ds; dH += dz W, dH_s += ds W over the
                  split's classes, into the program's own fp32 slab [BLOCK_M, D]
    _dh_sum_kernel  grid (row blocks, depth blocks): each counted row's slabs summed in split order, written to its
                  row of dH in the output dtype (0 for the ignored rows)
    _dw_kernel    grid (class tiles, row splits): recompute z, s; dz, ds; dW += dz^T H + ds^T H_s (STORE_DW),
                  db += sum dz + ds (STORE_DB) over the split's counted row tiles (dealt out in turn), into the
                  split's fp32 [C, D] and [C] (a bias-only gradient: no dW product, no [C, D])
The forward's and dH's class splits are chosen on the device from the count (_class_splits): as many as fill the
GPU for the row tiles that hold counted rows (up to the grid's), so that MLM-like labels (15% of the rows count)
keep the SMs busy without a host sync; the programs of the other tiles and splits do no class tile (the forward's
store neutral states). Every gradient element is owned by one program and accumulated in a fixed order (split
partials are summed in a fixed order: dW's by the launcher, dH's by _dh_sum_kernel): the results are the same bits
on every run, no atomics. The dH / dW accumulators are
fp32 read-modify-writes in global memory (a [BLOCK_M, D] accumulator does not fit in registers); a barrier after
each write keeps the next read of the same program ordered after it.
"""

from __future__ import annotations

import torch

from .._triton import jit, tl
from ._masksub_loss_blocks import _bce_elem, _shift, _sigmoid
from .masksub_loss import C_S, C_T, C_Z, LOG_L_S, LOG_L_T, LOG_L_Z, MAIN, NUM_OUT, S_Z, SUB

# Rows of the forward's partial states, fp32 [NUM_PART, max_splits, M]: main CE (running max, sum exp(z - shift),
# S = sum w, D = sum w (z - shift)); main BCE sum; sub CE (max and sum exp of s/T, of z/T, D_t = sum exp(z/T -
# shift_t) (s/T - shift_s)); sub BCE sum.
P_M_Z, P_L_Z, P_S_Z, P_D_Z, P_BCE_MAIN, P_M_S, P_L_S, P_M_T, P_L_T, P_D_T, P_BCE_SUB = range(11)
NUM_PART = 11
# the kernels index these states and out [9, M]'s stats rows by number (a @jit function reads no plain global int):
# the layouts they assume, checked at import
assert NUM_PART == P_BCE_SUB + 1 and (C_Z, LOG_L_Z, S_Z, C_S, LOG_L_S, C_T, LOG_L_T) == tuple(range(2, 9))


@jit
def _row_tile(order_ptr, start, end, BLOCK_M: tl.constexpr):
    # the row ids (int64) of positions start .. start + BLOCK_M of ``order``, and which are below ``end``
    r = start + tl.arange(0, BLOCK_M)
    in_rows = r < end
    return tl.load(order_ptr + r, mask=in_rows, other=0).to(tl.int64), in_rows


@jit
def _class_splits(count, class_tiles, target_programs, max_splits, BLOCK_M: tl.constexpr):
    # (splits, class tiles per split) of a forward / dH launch for ``count`` counted rows: A = cdiv(count, BLOCK_M)
    # row tiles hold them, each split into E = min(max_splits, class_tiles, target_programs // A) >= 1 runs of
    # classes (A E <= max(A, target_programs) programs work), then E trimmed so that no split is empty
    active = tl.cdiv(count, BLOCK_M)
    splits = tl.minimum(tl.minimum(max_splits, class_tiles), target_programs // tl.maximum(active, 1))
    per_split = tl.cdiv(class_tiles, tl.maximum(splits, 1))
    return tl.cdiv(class_tiles, per_split), per_split


@jit
def _split_program(count_ptr, C, class_tiles, target_programs, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # this program's (count, row tile, split, splits E, first class, end of its classes) on a grid (row tiles,
    # max_splits): tiles without counted rows get no classes, nor do splits E and beyond (they start at or past C:
    # E = cdiv(class_tiles, per_split), so E per_split >= class_tiles, and c_end = C then)
    tile, split = tl.program_id(0), tl.program_id(1)
    count = tl.load(count_ptr)
    splits, per_split = _class_splits(count, class_tiles, target_programs, tl.num_programs(1), BLOCK_M)
    # the first tile clamped to class_tiles: split * per_split * BLOCK_N is ~split C for the splits past E, which
    # wrapped int32 for C >= 2^31 / max_splits (negative columns, read and written: helper-336). Those splits begin
    # at class_tiles BLOCK_N >= C, so c_end = C <= c_begin: an empty range. min(c_begin + P, C) as
    # min(c_begin, C - P) + P, P = per_split BLOCK_N: no sum past C (c_begin + P passed 2^31 for C >= 2^30: an empty
    # range still, but an overflow, which the interpreter's check asserts: helper-348; this form: sm_90's register
    # allocation as before, c_begin + min(P, C - c_begin) spilled once more in the forward's loop)
    c_begin = tl.minimum(split * per_split, class_tiles) * BLOCK_N
    c_end = tl.minimum(c_begin, C - per_split * BLOCK_N) + per_split * BLOCK_N
    c_end = tl.where(tile * BLOCK_M < count, c_end, c_begin)
    return count, tile, split, splits, c_begin, c_end


@jit
def _load_dot(ptr, offsets, mask, UPCAST: tl.constexpr):
    # a tl.dot operand in its own dtype; fp32 under the CPU interpreter, whose bf16 tl.dot is wrong
    x = tl.load(ptr + offsets, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@jit
def _weight_rows(cols, stride_w, WIDE_W: tl.constexpr):
    # the offsets of W's rows cols: int64 where C x W's row stride reaches 2^31 (e.g. a 256000 x 18432 head: the
    # launcher's WIDE_W), else int32 (the kernels as compiled before, register for register)
    if WIDE_W:  # one return: Triton types every return of a function alike, a constexpr branch's too
        offsets = cols.to(tl.int64) * stride_w
    else:
        offsets = cols * stride_w
    return offsets


@jit
def _logit_tiles(
    h_ptr, hs_ptr, w_ptr, b_ptr, rows, in_rows, cols, col_mask, D, stride_h, stride_hs, stride_w,
    HAS_SUB: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WIDE_W: tl.constexpr,
):  # fmt: skip
    # z = h W^T + b and s = h_s W^T + b on the tile, fp32 [BLOCK_M, BLOCK_N]; W^T's tile [BLOCK_K, BLOCK_N] is
    # loaded once per step for both branches
    z = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for k in range(0, D, BLOCK_K):
        kk = k + ks
        k_mask = kk < D
        w_rows = _weight_rows(cols, stride_w, WIDE_W)
        wt = _load_dot(w_ptr, w_rows[None, :] + kk[:, None], col_mask[None, :] & k_mask[:, None], UPCAST)
        h_mask = in_rows[:, None] & k_mask[None, :]
        h = _load_dot(h_ptr, rows[:, None] * stride_h + kk[None, :], h_mask, UPCAST)
        z = tl.dot(h, wt, z, input_precision=PRECISION)
        if HAS_SUB:
            hs = _load_dot(hs_ptr, rows[:, None] * stride_hs + kk[None, :], h_mask, UPCAST)
            s = tl.dot(hs, wt, s, input_precision=PRECISION)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        z += bias[None, :]
        s += bias[None, :]
    return z, s


@jit
def _target_tile(y_ptr, rows, label, cols, mask, stride_y, eps, C, threshold, DENSE: tl.constexpr,
                 BINARISE: tl.constexpr):  # fmt: skip
    # w = (1 - eps) q + eps / C on the tile, 0 on masked lanes; q one-hot of the row's id or the probabilities
    if DENSE:
        q = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        q = tl.where(cols[None, :] == label[:, None], 1.0, 0.0)
    if BINARISE:
        q = tl.where(q > threshold, 1.0, 0.0)
    return tl.where(mask, (1.0 - eps) * q + eps / C, 0.0)


@jit
def _row_labels(y_ptr, rows, in_rows, C, DENSE: tl.constexpr):
    # (class ids, rows whose id is outside [0, C): NaN rows); counted rows only, so never ignore_index
    label = rows * 0 - 1
    bad = tl.zeros_like(in_rows)
    if not DENSE:
        label = tl.load(y_ptr + rows, mask=in_rows, other=0).to(tl.int64)
        bad = in_rows & ((label < 0) | (label >= C))
    return label, bad


@jit
def _fwd_kernel(
    h_ptr,  # main hidden [M, D], last stride 1
    hs_ptr,  # sub hidden [M, D], last stride 1 (HAS_SUB)
    w_ptr,  # weight [C, D], last stride 1
    b_ptr,  # bias [C] (HAS_BIAS)
    y_ptr,  # int64 class ids [M] or probabilities [M, C], last stride 1
    order_ptr,  # int64 [M]: counted rows first
    count_ptr,  # int32 [1]: how many rows count
    part_ptr,  # fp32 [NUM_PART, max_splits, M] out, zero-filled
    M, C, D, stride_h, stride_hs, stride_w, stride_y, class_tiles, target_programs, eps, temperature, threshold,
    HAS_SUB: tl.constexpr, HAS_BIAS: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, BINARISE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, UNIT_T: tl.constexpr, WIDE_W: tl.constexpr,
):  # fmt: skip
    count, tile, split, _, c_begin, c_end = _split_program(count_ptr, C, class_tiles, target_programs, BLOCK_M,
                                                          BLOCK_N)  # fmt: skip
    rows, in_rows = _row_tile(order_ptr, tile * BLOCK_M, count, BLOCK_M)
    label, _ = _row_labels(y_ptr, rows, in_rows, C, DENSE)
    inv_t = 1.0 / temperature
    neg_inf = tl.full([BLOCK_M], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK_M], tl.float32)
    m_z, l_z, s_z, d_z, acc_m = neg_inf, zero, zero, zero, zero
    m_s, l_s, m_t, l_t, d_t, acc_s = neg_inf, zero, neg_inf, zero, zero, zero
    for start in range(c_begin, c_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < c_end
        mask = in_rows[:, None] & col_mask[None, :]
        z, s = _logit_tiles(
            h_ptr, hs_ptr, w_ptr, b_ptr, rows, in_rows, cols, col_mask, D, stride_h, stride_hs, stride_w,
            HAS_SUB, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, WIDE_W=WIDE_W,
        )  # fmt: skip
        w = _target_tile(y_ptr, rows, label, cols, mask, stride_y, eps, C, threshold, DENSE, BINARISE)
        # main term (ops/masksub_loss.py's row loop, one row per tile row): shifted online softmax of z
        if BCE:
            acc_m += tl.sum(tl.where(mask, _bce_elem(z, w), 0.0), axis=1)
        else:
            zm = tl.where(mask, z, float("-inf"))
            m_new = tl.maximum(m_z, tl.max(zm, axis=1))
            c_old, c_new = _shift(m_z), _shift(m_new)
            e_z = tl.exp(zm - c_new[:, None])
            l_z = l_z * tl.exp(m_z - c_new) + tl.sum(e_z, axis=1)
            d_z += s_z * (c_old - c_new) + tl.sum(tl.where(w != 0.0, w * (zm - c_new[:, None]), 0.0), axis=1)
            s_z += tl.sum(w, axis=1)
            m_z = m_new
        # sub term: online softmax of s/T, and of the teacher z/T with D_t = sum exp(z/T - shift_t) (s/T - shift_s);
        # at T = 1 (UNIT_T) the teacher is the main term's softmax: its max and exponentials are those above
        if HAS_SUB:
            s_t, z_t = s, z
            if not UNIT_T:
                s_t, z_t = s * inv_t, z * inv_t
            if BCE:
                acc_s += tl.sum(tl.where(mask, _bce_elem(s_t, _sigmoid(z_t)), 0.0), axis=1)
            else:
                x = tl.where(mask, s_t, float("-inf"))
                ms_new = tl.maximum(m_s, tl.max(x, axis=1))
                cs_old, cs_new = _shift(m_s), _shift(ms_new)
                if UNIT_T:
                    mt_new, ct_new, e_t = m_new, c_new, e_z
                else:
                    zt = tl.where(mask, z_t, float("-inf"))
                    mt_new = tl.maximum(m_t, tl.max(zt, axis=1))
                    ct_new = _shift(mt_new)
                    e_t = tl.exp(zt - ct_new[:, None])
                alpha_t = tl.exp(m_t - ct_new)
                d_t = tl.where(alpha_t != 0.0, alpha_t * (d_t + l_t * (cs_old - cs_new)), 0.0)  # 0 x -inf: 0
                d_t += tl.sum(tl.where(e_t != 0.0, e_t * (x - cs_new[:, None]), 0.0), axis=1)
                l_t = l_t * alpha_t + tl.sum(e_t, axis=1)
                l_s = l_s * tl.exp(m_s - cs_new) + tl.sum(tl.exp(x - cs_new[:, None]), axis=1)
                m_s, m_t = ms_new, mt_new
    # the states in the order P_M_Z .. P_BCE_SUB; state k of this split and row at out + k * max_splits * M (a split
    # without classes writes the neutral states: max -inf, sums 0), in int64 (10 x 8 x M passes 2^31 at M = 27M)
    out, step = part_ptr + split.to(tl.int64) * M + rows, tl.num_programs(1).to(tl.int64) * M
    states = (m_z, l_z, s_z, d_z, acc_m, m_s, l_s, m_t, l_t, d_t, acc_s)
    for k in tl.static_range(11):
        tl.store(out + k * step, states[k], mask=in_rows)


# The host side: the row order the kernels visit, and the forward's splits' partial states merged by torch ops on
# [splits, M] (no sync)


def row_order(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order int64 [M], count int32 [1]): the counted rows first, in order, and how many; on the device."""
    rows = target.shape[0]
    if target.is_floating_point():
        return torch.arange(rows, device=target.device), torch.full((1,), rows, dtype=torch.int32, device=target.device)
    ignored = target == ignore_index
    order = torch.argsort(ignored.to(torch.uint8), stable=True)
    return order, (~ignored).sum(dtype=torch.int32).reshape(1)


def _host_shift(m: torch.Tensor) -> torch.Tensor:
    """The softmax shift of a running max: 0 where it is -inf (a row, or a split of it, with only -inf logits)."""
    return torch.where(torch.isneginf(m), 0.0, m)


def _merge_splits(m: torch.Tensor, l: torch.Tensor):
    """Online-softmax states of the splits [splits, M] -> (shift c, sum_c exp(x - c), each split's rescaling)."""
    c = _host_shift(m.amax(0))
    scale = torch.exp(m - c)  # exp(shift_k - c) where split k has a finite max; 0 (as its sum) where it has none
    return c, (scale * l).sum(0), scale


def combine_states(part: torch.Tensor, bce: bool, has_sub: bool, temperature: float, classes: int) -> torch.Tensor:
    """fp32 [9, M] (ops/masksub_loss.py's layout) from _fwd_kernel's partial states [NUM_PART, splits, M] (torch
    ops, on the host side of the launch): the per-row losses of the counted rows, to be masked by the caller."""
    m_z, l_z, s_z, d_z, bce_main, m_s, l_s, m_t, l_t, d_t, bce_sub = part  # the P_* order of the kernels
    out = part.new_zeros(NUM_OUT, part.shape[2])
    if bce:
        out[MAIN] = bce_main.sum(0) / classes
        out[SUB] = bce_sub.sum(0) * (temperature**2 / classes)
    else:
        # main: l = sum_k l_k exp(shift_k - c), D = sum_k D_k + S_k (shift_k - c), loss = S log l - D
        c_z, sum_z, _ = _merge_splits(m_z, l_z)
        out[C_Z], out[LOG_L_Z], out[S_Z] = c_z, torch.log(sum_z), s_z.sum(0)
        out[MAIN] = out[S_Z] * out[LOG_L_Z] - (d_z + s_z * (_host_shift(m_z) - c_z)).sum(0)
        if has_sub:
            # sub: D_t = sum_k exp(shift_t,k - c_t) (D_t,k + l_t,k (shift_s,k - c_s)), loss = T^2 (log l_s - D_t / l_t)
            c_s, sum_s, _ = _merge_splits(m_s, l_s)
            c_t, sum_t, scale_t = _merge_splits(m_t, l_t)
            # a split whose teacher mass is 0 about c_t adds nothing (its D_t may be -inf: 0 x -inf)
            sum_d_t = torch.where(scale_t != 0, scale_t * (d_t + l_t * (_host_shift(m_s) - c_s)), 0.0).sum(0)
            out[C_S], out[LOG_L_S], out[C_T], out[LOG_L_T] = c_s, torch.log(sum_s), c_t, torch.log(sum_t)
            out[SUB] = (out[LOG_L_S] - sum_d_t / sum_t) * temperature**2
    return out


# ----------------------------------------------------------------------------------------------------------------
# Backward: dz = g_main (S softmax(z) - w)  [BCE: g_main (sigmoid(z) - w) / C]
#           ds = g_sub T (softmax(s/T) - softmax(z/T))  [BCE: g_sub T (sigmoid(s/T) - sigmoid(z/T)) / C]
# from the forward's saved stats (shift and log-sum-exp of z, s/T, z/T; S), then the three matmuls of the linear.
# ----------------------------------------------------------------------------------------------------------------


@jit
def _stat(stat, k, m64, in_rows):
    return tl.load(stat + k * m64, mask=in_rows, other=0.0)


@jit
def _row_state(y_ptr, out_ptr, gm_ptr, gs_ptr, rows, in_rows, M, C, stride_gm, stride_gs, temperature,
               BCE: tl.constexpr, DENSE: tl.constexpr):  # fmt: skip
    # per row of the tile: (class id, NaN row, g_main, g_sub, and the stats of out [9, M] rows 2 .. 8)
    label, bad = _row_labels(y_ptr, rows, in_rows, C, DENSE)
    per_class = 1.0
    if BCE:
        per_class = 1.0 / C
    g_m = tl.load(gm_ptr + rows * stride_gm, mask=in_rows, other=0.0).to(tl.float32) * per_class
    g_s = tl.load(gs_ptr + rows * stride_gs, mask=in_rows, other=0.0).to(tl.float32) * (temperature * per_class)
    stat = out_ptr + rows  # stats row k of these rows: stat + k * M (int64 offsets)
    m64 = rows * 0 + M
    c_z, lse_z, s_z = _stat(stat, 2, m64, in_rows), _stat(stat, 3, m64, in_rows), _stat(stat, 4, m64, in_rows)
    c_s, lse_s = _stat(stat, 5, m64, in_rows), _stat(stat, 6, m64, in_rows)
    c_t, lse_t = _stat(stat, 7, m64, in_rows), _stat(stat, 8, m64, in_rows)
    return label, bad, g_m, g_s, (c_z, lse_z, s_z, c_s, lse_s, c_t, lse_t)


@jit
def _dlogit_tiles(
    h_ptr, hs_ptr, w_ptr, b_ptr, y_ptr, rows, in_rows, cols, col_mask, state, D, C, stride_h, stride_hs, stride_w,
    stride_y, eps, temperature, threshold,
    HAS_SUB: tl.constexpr, HAS_BIAS: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, BINARISE: tl.constexpr,
    MAIN_GRAD: tl.constexpr, SUB_GRAD: tl.constexpr, UNIT_T: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WIDE_W: tl.constexpr,
):  # fmt: skip
    # (dz, ds) fp32 [BLOCK_M, BLOCK_N] on the tile: 0 on masked lanes, NaN on rows with an out-of-range id
    label, bad, g_m, g_s, stats = state
    c_z, lse_z, s_z, c_s, lse_s, c_t, lse_t = stats
    mask = in_rows[:, None] & col_mask[None, :]
    z, s = _logit_tiles(
        h_ptr, hs_ptr, w_ptr, b_ptr, rows, in_rows, cols, col_mask, D, stride_h, stride_hs, stride_w,
        HAS_SUB, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, WIDE_W=WIDE_W,
    )  # fmt: skip
    dz = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    ds = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    soft_z = z  # softmax(z), where the main term or (at T = 1) the teacher needs it
    if not BCE and (MAIN_GRAD or (SUB_GRAD and UNIT_T)):
        soft_z = tl.exp((z - c_z[:, None]) - lse_z[:, None])
    if MAIN_GRAD:
        w = _target_tile(y_ptr, rows, label, cols, mask, stride_y, eps, C, threshold, DENSE, BINARISE)
        if BCE:
            p = _sigmoid(z)
        else:
            p = s_z[:, None] * soft_z
        dz = tl.where(mask, tl.where(bad[:, None], float("nan"), g_m[:, None] * (p - w)), 0.0)
    if SUB_GRAD:
        x, zt = s, z  # s / T, z / T; at T = 1 the teacher is the main term's softmax (its stats equal z's)
        if not UNIT_T:
            inv_t = 1.0 / temperature
            x, zt = s * inv_t, z * inv_t
        if BCE:
            diff = _sigmoid(x) - _sigmoid(zt)
        elif UNIT_T:
            diff = tl.exp((x - c_s[:, None]) - lse_s[:, None]) - soft_z
        else:
            diff = tl.exp((x - c_s[:, None]) - lse_s[:, None]) - tl.exp((zt - c_t[:, None]) - lse_t[:, None])
        ds = tl.where(mask, tl.where(bad[:, None], float("nan"), g_s[:, None] * diff), 0.0)
    return dz, ds


@jit
def _operand(x, like_ptr, UPCAST: tl.constexpr):
    # x rounded once to the inputs' dtype for a tl.dot (kept in fp32 under the interpreter after the rounding)
    x = x.to(like_ptr.dtype.element_ty)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@jit
def _dh_kernel(
    h_ptr, hs_ptr, w_ptr, b_ptr, y_ptr, order_ptr, count_ptr,  # as in _fwd_kernel
    out_ptr,  # fp32 [9, M]: the forward's stats (ops/masksub_loss.py layout)
    gm_ptr,  # grad of the per-row main loss [M], any float dtype and stride (MAIN_GRAD)
    gs_ptr,  # grad of the per-row sub loss [M] (SUB_GRAD)
    dh_ptr,  # fp32 [slabs * BLOCK_M, D] out, zero-filled: d main hidden, a slab of BLOCK_M rows per working program
    dhs_ptr,  # fp32 [slabs * BLOCK_M, D] out, zero-filled: d sub hidden (SUB_GRAD)
    M, C, D, stride_h, stride_hs, stride_w, stride_y, stride_gm, stride_gs, class_tiles, target_programs, eps,
    temperature, threshold,
    HAS_SUB: tl.constexpr, HAS_BIAS: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, BINARISE: tl.constexpr,
    MAIN_GRAD: tl.constexpr, SUB_GRAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNIT_T: tl.constexpr,
    WIDE_W: tl.constexpr,
):  # fmt: skip
    count, tile, split, splits, c_begin, c_end = _split_program(count_ptr, C, class_tiles, target_programs,
                                                                BLOCK_M, BLOCK_N)  # fmt: skip
    rows, in_rows = _row_tile(order_ptr, tile * BLOCK_M, count, BLOCK_M)
    state = _row_state(y_ptr, out_ptr, gm_ptr, gs_ptr, rows, in_rows, M, C, stride_gm, stride_gs, temperature, BCE,
                       DENSE)  # fmt: skip
    ks = tl.arange(0, BLOCK_K)
    # this program's slab, the (tile E + split)-th (those that work are the first A E: the launcher's slabs): row i
    # of the tile at ((tile E + split) BLOCK_M + i) D of dh / dhs (int64: the slabs of a large M)
    slab = (tile * splits + split).to(tl.int64)
    offsets = (slab * BLOCK_M + tl.arange(0, BLOCK_M))[:, None] * D
    for start in range(c_begin, c_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < c_end
        dz, ds = _dlogit_tiles(
            h_ptr, hs_ptr, w_ptr, b_ptr, y_ptr, rows, in_rows, cols, col_mask, state, D, C, stride_h, stride_hs,
            stride_w, stride_y, eps, temperature, threshold, HAS_SUB, HAS_BIAS, BCE, DENSE, BINARISE, MAIN_GRAD,
            SUB_GRAD, UNIT_T, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, WIDE_W=WIDE_W,
        )  # fmt: skip
        dz, ds = _operand(dz, h_ptr, UPCAST), _operand(ds, h_ptr, UPCAST)
        for k in range(0, D, BLOCK_K):  # dH[:, k] += dz W[cols, k], in fp32 memory owned by this program
            kk = k + ks
            k_mask = kk < D
            w_rows = _weight_rows(cols, stride_w, WIDE_W)
            wk = _load_dot(w_ptr, w_rows[:, None] + kk[None, :], col_mask[:, None] & k_mask[None, :], UPCAST)
            acc_mask = in_rows[:, None] & k_mask[None, :]
            if MAIN_GRAD:
                acc = tl.load(dh_ptr + offsets + kk[None, :], mask=acc_mask, other=0.0)
                acc = tl.dot(dz, wk, acc, input_precision=PRECISION)
                tl.store(dh_ptr + offsets + kk[None, :], acc, mask=acc_mask)
            if SUB_GRAD:
                acc = tl.load(dhs_ptr + offsets + kk[None, :], mask=acc_mask, other=0.0)
                acc = tl.dot(ds, wk, acc, input_precision=PRECISION)
                tl.store(dhs_ptr + offsets + kk[None, :], acc, mask=acc_mask)
            tl.debug_barrier()  # the next class tile reads what this one wrote


@jit
def _dw_kernel(
    h_ptr, hs_ptr, w_ptr, b_ptr, y_ptr, order_ptr, count_ptr, out_ptr, gm_ptr, gs_ptr,  # as in _dh_kernel
    dw_ptr,  # fp32 [splits, C, D] out, zero-filled: d weight per row split (STORE_DW; else not read)
    db_ptr,  # fp32 [splits, C] out: d bias per row split (STORE_DB, which needs HAS_BIAS; else not read)
    M, C, D, stride_h, stride_hs, stride_w, stride_y, stride_gm, stride_gs,
    row_step,  # splits x BLOCK_M: positions from one of a split's row tiles to its next
    eps, temperature, threshold,
    HAS_SUB: tl.constexpr, HAS_BIAS: tl.constexpr, BCE: tl.constexpr, DENSE: tl.constexpr, BINARISE: tl.constexpr,
    MAIN_GRAD: tl.constexpr, SUB_GRAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNIT_T: tl.constexpr,
    WIDE_W: tl.constexpr, STORE_DW: tl.constexpr, STORE_DB: tl.constexpr,
):  # fmt: skip
    # split j of S takes the counted row tiles j, j + S, j + 2S, ...: the counted rows come first in ``order`` and
    # the host does not know how many there are, so dealing the tiles out in turn keeps the splits' shares within a
    # tile of each other for any count (contiguous runs of all the row tiles left the splits past the counted rows
    # idle: a masked LM's labels, 15% counted, put all the work on the first of 4 splits)
    class_tile, split = tl.program_id(0), tl.program_id(1)
    count = tl.load(count_ptr)
    cols = class_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < C
    ks = tl.arange(0, BLOCK_K)
    offsets = (split * C + cols).to(tl.int64)[:, None] * D  # of each class in dw
    db = tl.zeros([BLOCK_N], tl.float32)
    for r in range(split * BLOCK_M, count, row_step):
        rows, in_rows = _row_tile(order_ptr, r, count, BLOCK_M)
        state = _row_state(y_ptr, out_ptr, gm_ptr, gs_ptr, rows, in_rows, M, C, stride_gm, stride_gs, temperature,
                           BCE, DENSE)  # fmt: skip
        dz, ds = _dlogit_tiles(
            h_ptr, hs_ptr, w_ptr, b_ptr, y_ptr, rows, in_rows, cols, col_mask, state, D, C, stride_h, stride_hs,
            stride_w, stride_y, eps, temperature, threshold, HAS_SUB, HAS_BIAS, BCE, DENSE, BINARISE, MAIN_GRAD,
            SUB_GRAD, UNIT_T, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, WIDE_W=WIDE_W,
        )  # fmt: skip
        if STORE_DB:
            db += tl.sum(dz + ds, axis=0)  # fp32, before the rounding of the matmul operands
        if STORE_DW:
            dz, ds = tl.trans(_operand(dz, h_ptr, UPCAST)), tl.trans(_operand(ds, h_ptr, UPCAST))
            for k in range(0, D, BLOCK_K):  # dW[cols, k] += dz^T H[rows, k] + ds^T H_s[rows, k]
                kk = k + ks
                k_mask = kk < D
                h_mask = in_rows[:, None] & k_mask[None, :]
                acc_mask = col_mask[:, None] & k_mask[None, :]
                acc = tl.load(dw_ptr + offsets + kk[None, :], mask=acc_mask, other=0.0)
                if MAIN_GRAD:
                    h = _load_dot(h_ptr, rows[:, None] * stride_h + kk[None, :], h_mask, UPCAST)
                    acc = tl.dot(dz, h, acc, input_precision=PRECISION)
                if SUB_GRAD:
                    hs = _load_dot(hs_ptr, rows[:, None] * stride_hs + kk[None, :], h_mask, UPCAST)
                    acc = tl.dot(ds, hs, acc, input_precision=PRECISION)
                tl.store(dw_ptr + offsets + kk[None, :], acc, mask=acc_mask)
                tl.debug_barrier()  # the next row tile reads what this one wrote
    if STORE_DB:
        tl.store(db_ptr + split * C + cols, db, mask=col_mask)


@jit
def _dh_sum_kernel(
    slab_ptr,  # fp32 [slabs * BLOCK_M, D]: _dh_kernel's slabs
    order_ptr, count_ptr,  # as in _dh_kernel
    dh_ptr,  # [M, D] out (rows of stride stride_dh, last stride 1), in the hidden states' dtype
    M, D, stride_dh, class_tiles, target_programs, max_splits,  # those of the _dh_kernel launch (its grid's splits)
    BLOCK_M: tl.constexpr,  # _dh_kernel's
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # dH[order[p]] = sum over s < E of row p % BLOCK_M of slab (p // BLOCK_M) E + s: the splits added in a fixed
    # order in fp32, rounded once; rows past the count (ignored) get 0
    count = tl.load(count_ptr)
    splits, _ = _class_splits(count, class_tiles, target_programs, max_splits, BLOCK_M)
    positions = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_positions, counted, col_mask = positions < M, positions < count, cols < D
    # slab row of split 0: (tile E) BLOCK_M + i, tile = p // BLOCK_M, i = p % BLOCK_M; split s adds s BLOCK_M
    first = (positions // BLOCK_M).to(tl.int64) * splits * BLOCK_M + positions % BLOCK_M  # (past 2^31 for M >= 2^28)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    mask = counted[:, None] & col_mask[None, :]
    for split in range(0, splits):
        slab_rows = first + split * BLOCK_M
        acc += tl.load(slab_ptr + slab_rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    rows = tl.load(order_ptr + positions, mask=in_positions, other=0)
    out = dh_ptr + rows[:, None] * stride_dh + cols[None, :]
    tl.store(out, acc.to(dh_ptr.dtype.element_ty), mask=in_positions[:, None] & col_mask[None, :])
