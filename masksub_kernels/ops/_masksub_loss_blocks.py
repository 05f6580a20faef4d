"""The MaskSub loss's Triton kernels, their per-block parts: what one block of BLOCK_C classes of a row computes
(forward: the per-word online-softmax / BCE states; backward: both gradients from the saved stats), the elementwise
helpers they share with the fused-linear kernels, and how a row is cut into blocks (_block_range). The kernels
themselves, per row: _masksub_loss_kernels.py.
"""

from __future__ import annotations

from .._triton import jit, tl


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
def _log1p_pair(a, b):
    # log1p(a) + log1p(b) = log1p(a + b + a b): two terms' log1p as one argument (a, b >= 0: no cancellation, an
    # FADD and an FFMA, ~1 ulp relative each)
    return a + b + a * b


@jit
def _log1p_wide(w):
    # log1p(w) for w >= 0 (a group's a + b + a b product of up to 8 terms: w < 2^8) in ~19 instructions, ~3 ulp:
    # u = 1 + w = 2^k m with m in [sqrt(1/2), sqrt(2)) from u's bits, log1p(w) = k ln 2 + log1p(f), f = m - 1, by
    # f P(f) (P: degree 8, fitted to log1p(f) / f on that range, 3e-8 relative). Where k = 0 (u < sqrt(2)), f = w
    # itself: no rounding of 1 + w, so tiny w keep their relative accuracy (log1p(w) = w P(w)); where k >= 1 the
    # rounding of u costs at most 1.4 2^-24 of a result >= 0.34 (< 1 ulp). NaN w gives NaN (u >= sqrt(2) is false).
    u = 1.0 + w
    ix = u.to(tl.int32, bitcast=True) - 0x3F3504F3  # bits(sqrt(1/2)): ix = k 2^23 + (bits of m) - bits(sqrt(1/2))
    m = ((ix & 0x7FFFFF) + 0x3F3504F3).to(tl.float32, bitcast=True)
    f = tl.where(u >= 1.4142135381698608, m - 1.0, w)  # fp32 sqrt(2), bits 0x3FB504F3: exactly where k >= 1
    p = 0.08721902006079846
    p = p * f - 0.14366621141645913
    p = p * f + 0.1495233258268796
    p = p * f - 0.1656242893530776
    p = p * f + 0.1995683062519509
    p = p * f - 0.2500207239370289
    p = p * f + 0.33334185670657684
    p = p * f - 0.49999987983833616
    p = p * f + 0.9999999741881259
    return f * p + (ix >> 23).to(tl.float32) * 0.6931471805599453


@jit
def _sum_log1p(v):
    # sum over axis 1 (a lane's group of classes) of log1p(v), v in [0, 1] (here exp(-|x|)): for groups of 4 or 8
    # the product form log1p(w), w = prod(1 + v) - 1 built by a tree of _log1p_pair (2 instructions per element),
    # then one _log1p_wide per group: ~4 instructions per element where log1p(v) each costs ~11 (_log1p and its
    # sum); the accuracy is the same (a few ulp relative per group, tiny terms included). Groups of 1 or 2: _log1p.
    if v.shape[1] >= 4:
        return _log1p_wide(tl.reduce(v, 1, _log1p_pair))
    return tl.sum(_log1p(v), axis=1)


@jit
def _unit_reciprocal(y):
    # 1 / y for y in [1, 2] (here 1 + exp(-|z|)) as rsqrt(y^2): an FMUL and a bare MUFU.RSQ (~2 ulp). 1.0 / y
    # compiles to div.full's fix-up of |y| > 2^126 around its MUFU.RCP: a compare, a select and two multiplies more.
    return tl.math.rsqrt(y * y)


@jit
def _distill_linear(x, z, e_z):
    # The sub term's element softplus(x) - p x less its log1p(exp(-|x|)), for the teacher p = sigmoid(z) with
    # e_z = exp(-|z|): with r = 1 / (1 + e_z) = sigmoid(|z|) and e_z r = sigmoid(-|z|) = 1 - r (no cancellation),
    #   x > 0: (1 - p) |x|,  x <= 0: p |x|   i.e.  q |x|,  q = e_z r where x and z have the same sign, else r.
    # (x = 0 or z = 0 may take either side: the term is 0, or e_z r = r.) q = 0 (e_z = 0, z = +-inf or |z| > 87)
    # at x = +-inf is the limit 0 (p = 1 at x = +inf), not 0 * inf = NaN: the guard keeps q = NaN (a NaN teacher).
    r = _unit_reciprocal(1.0 + e_z)
    q = tl.where((x > 0.0) == (z > 0.0), e_z * r, r)
    return tl.where(q != 0.0, q * tl.abs(x), 0.0)


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
def _bias_block(bias_ptr, cols, mask, MASKED: tl.constexpr):
    """The bias of a block of classes in fp32 (HAS_BIAS: the fused-linear loss's chunks, whose logits come without
    it, so that no pass over them adds it: the kernels add it to z and s as they read them)."""
    if MASKED:
        return tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return tl.load(bias_ptr + cols).to(tl.float32)


@jit
def _block_range(row, stride_z, lo, hi, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    # A row's classes [lo, hi) in blocks of BLOCK_C: (shift, first, full, end). VEC = 1: shift = 0, the unmasked
    # blocks at first = lo, ... up to full, one masked block at full if full < end = hi. VEC > 1 (rows of z, s,
    # dz, ds of one stride that is not a multiple of VEC elements = 16 bytes, such as C = 30522 or 21841 in bf16):
    # the kernels address the row from the 16-byte boundary shift = (row stride_z) mod VEC elements before its
    # class 0 (physical column p holds class p - shift), so that every block starts on a boundary and its loads and
    # stores are 16-byte words, not 2-byte ones (the H200 run of 2026-11-30: the forward at 35% of copy at
    # C = 30522, 51% at C = 128256). A masked first block at lo then holds classes [lo - shift, lo + BLOCK_C -
    # shift) (lanes before lo masked), the unmasked ones start at first = lo + BLOCK_C, and end = hi + shift.
    tl.static_assert(BLOCK_C >= VEC, "a block must span the row's shift")
    if VEC > 1:
        shift = ((row * stride_z) % VEC).to(tl.int32)  # int32: the blocks' column vectors stay 32-bit
        first = lo + BLOCK_C
        end = hi + shift
        full = first + tl.maximum(end - first, 0) // BLOCK_C * BLOCK_C
    else:  # as before realignment: compile-time bounds where C is (Triton specialises C = 1)
        shift = 0
        first = lo
        end = hi
        full = hi - (hi - lo) % BLOCK_C
    return shift, first, full, end


@jit
def _load_block(row, start, lanes, mask, MASKED: tl.constexpr):
    # The logits row[start + lanes] in fp32 ([R, G], lanes = the groups' contiguous columns i G + j); MASKED: -inf
    # in the masked lanes. Unmasked bf16 blocks of 16-byte groups (start even, rows 16-byte aligned: G > 1) are
    # read as int32 words, each widened by placing bits (a bf16 is the top half of its fp32: the low element
    # w << 16, the high one w & 0xFFFF0000): one instruction per element, where bf16.to(fp32) costs 1.5 (a byte
    # permute and a shift for every other element).
    if MASKED:
        return tl.load(row + start + lanes, mask=mask, other=float("-inf")).to(tl.float32)
    if row.dtype.element_ty == tl.bfloat16 and lanes.shape[1] % 2 == 0:
        half: tl.constexpr = lanes.shape[1] // 2
        words = tl.arange(0, lanes.shape[0])[:, None] * half + tl.arange(0, half)[None, :]
        w = tl.load(row.to(tl.pointer_type(tl.int32)) + (start >> 1) + words)
        return tl.interleave((w << 16).to(tl.float32, bitcast=True), (w & -65536).to(tl.float32, bitcast=True))
    return tl.load(row + start + lanes).to(tl.float32)


@jit
def _fwd_block(
    z_row,
    s_row,
    y_row,
    bias_ptr,
    start,
    lanes,
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
    m_ninf,
    HAS_MAIN: tl.constexpr,
    HAS_SUB: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UNIT_T: tl.constexpr,
    LABEL: tl.constexpr = True,  # BCE with class ids: the block may hold the label's column (else no compare)
    SMOOTHED: tl.constexpr = True,  # class ids: the weight off the label, w_o, may be nonzero (else no sum z - m)
):
    # One block of classes into the per-group states. cols = start + lanes, mask: [R, G], R groups of G contiguous
    # classes (a
    # lane's 16-byte word: the reductions over axis 1 stay in the lane), the states [R]: one online-softmax / BCE
    # state per group, rescaled once per group and block (its max over the G classes), not per element, and merged
    # once per row (_merge_states). MASKED blocks (a row's last; its first when realigned: _block_range) read
    # z = s = -inf in their masked lanes, which add nothing. cols: the block's columns in the row's frame.
    # CE: m_z (>= -FLT_MAX, finite: v - m is -inf, never NaN, for v = -inf), l_z = sum 2^((z - m_z) k_z)
    # (k_z = log2 e: exp(v) = exp2(v log2 e), the difference rounded once, then scaled); probabilities: b_z = sum w,
    # a_z = sum w (z - m_z); class ids with smoothing: the same with w = 1 (b_z counts the classes, a_z = sum
    # (z - m_z)): shifted, as the softmax's sums, not a plain sum z less C m at the row's end, which overflows at
    # logits near -FLT_MAX and cancels at large common offsets (6.8e-4 at 1e5, C = 32000).
    # Sub CE: m_s, l_s (s, scale k_t = log2(e) / T), l_t = sum exp((z - m_z) / T), d_t = sum that * (s - m_s).
    # With a new max m' of a group: l' = l 2^((m - m') k) + sum 2^((v - m') k) and d_t' = alpha_t (d_t + l_t (m_s -
    # m_s')) + sum e_t (s - m_s'), alpha_t = 2^((m_z - m_z') k_t) (the merge's algebra, once per group and block).
    # Classes with s = -inf stay out of d_t: m_ninf keeps their largest teacher logit z instead, and the row's end
    # (_store_row) makes the sub term +inf only where that class's teacher probability, 2^((m_ninf - c_z) k_t) / l_t,
    # is not 0 in fp32 (a -inf term in d_t would stay -inf through any chain of nonzero rescales, even where their
    # product, the class's weight about the row's max, is 0).
    # BCE: d_t is the per-group sum of the sub elements; probabilities: a_z the sum of the main elements; class ids
    # (label: the row's counting id as int32, -1 if none): the main element is softplus(z) - w z =
    # (1 - w) max(z, 0) - w min(z, 0) + log1p(exp(-|z|)) with one weight w_o off the label, so the groups keep
    # P = a_z = sum max(z', 0), A = b_z = sum z' (z' = z, 0 at the label, whose linear part the row's end adds with
    # its own weight) and l_z = sum log1p(exp(-|z|)), combined once per row (_store_row) with N = sum min(z', 0) =
    # A - P: no per-element weight, and 0 * inf guarded once, not per element. (A - P cancels, but N enters the
    # loss as w_o N with w_o = eps / C <= 1 / C: its error, that of sums of P + |N|, stays within the sums' own;
    # summing min(z', 0) itself costs one instruction more per element for no accuracy a public input reaches.)
    cols = start + lanes
    z = _load_block(z_row, start, lanes, mask, MASKED)
    if HAS_BIAS:
        bias = _bias_block(bias_ptr, cols, mask, MASKED)
        z += bias  # -inf + b stays -inf
    if HAS_SUB:
        s = _load_block(s_row, start, lanes, mask, MASKED)
        if HAS_BIAS:
            s += bias
    if BCE:
        # each element's log1p(exp(-|x|)) summed per group by _sum_log1p; masked lanes (x = -inf): exp(-|x|) = 0
        e_z = tl.exp2(tl.abs(z) * -1.4426950408889634)  # exp(-|z|), bare exp2 (see _bce_elem); -inf: 0
        if HAS_MAIN:
            if DENSE:
                # softplus(z) - w z = t z + log1p(exp(-|z|)), t = [z > 0] - w (_bce_elem); masked lanes: w = 0, t = 0
                w = _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE, BINARISE)
                t = tl.where(z > 0.0, 1.0, 0.0) - w
                a_z += tl.sum(tl.where(t != 0.0, t * z, 0.0), axis=1) + _sum_log1p(e_z)
            else:
                z_off = z
                if LABEL:
                    z_off = tl.where(lanes == label - start, 0.0, z)  # 32-bit compares (cols == label: 64-bit)
                a_z += tl.sum(tl.maximum(z_off, 0.0), axis=1)  # masked lanes: max(-inf, 0) = 0
                if SMOOTHED:  # N = A - P enters the loss as w_o N
                    b_z += tl.sum(tl.where(mask, z_off, 0.0), axis=1)
                l_z += _sum_log1p(e_z)
        if HAS_SUB:
            # the teacher sigmoid(z / T) from exp(-|z / T|): at T = 1 (UNIT_T) the main term's e_z; masked lanes
            # (s = z = -inf): q = 0, a 0 term
            x, z_t, e_t = s, z, e_z
            if not UNIT_T:
                x, z_t = s * inv_t, z * inv_t
                e_t = tl.exp2(tl.abs(z_t) * -1.4426950408889634)
            d_t += tl.sum(_distill_linear(x, z_t, e_t), axis=1) + _sum_log1p(tl.exp2(tl.abs(x) * -1.4426950408889634))
    else:
        m_new = tl.maximum(m_z, tl.max(z, axis=1))  # masked lanes (-inf) leave it; m_z >= -FLT_MAX
        dz = z - m_new[:, None]  # rounded once (logits of 1e4 lose nothing), then scaled
        alpha = tl.exp2((m_z - m_new) * k_z)  # the old sums' rescale: 1 while the max holds
        e = tl.exp2(dz * k_z)  # -inf: 0
        l_teacher = l_t
        if UNIT_T:  # T = 1: the teacher's running sum is l_z (l_t is not carried: the kernel takes l_z for it)
            l_teacher = l_z
        if HAS_MAIN or UNIT_T:
            l_z = l_z * alpha + tl.sum(e, axis=1)
        if HAS_MAIN:
            if DENSE:
                # a_z = sum w (z - m_z): rescaled by b_z (m_old - m_new) when the max grows; w = 0 terms skipped
                w = _main_target(y_row, cols, mask, label, eps, C, threshold, DENSE, BINARISE)
                a_z += b_z * (m_z - m_new) + tl.sum(tl.where(w != 0.0, w * dz, 0.0), axis=1)
                b_z += tl.sum(w, axis=1)
            else:
                if SMOOTHED:  # the uniform w_o = eps / C term needs sum (z - m_z): the probabilities' sums, w = 1
                    a_z += b_z * (m_z - m_new) + tl.sum(tl.where(mask, dz, 0.0), axis=1)
                    b_z += tl.sum(tl.where(mask, 1.0, 0.0), axis=1)
        if HAS_SUB:
            # teacher z / T: UNIT_T (T = 1, the paper's): k_t = k_z, so its exponentials, rescale and running sum
            # are the main term's, bit for bit (one exp2 per element and one state fewer); otherwise its own
            alpha_t, e_t = alpha, e
            if not UNIT_T:
                alpha_t = tl.exp2((m_z - m_new) * k_t)
                e_t = tl.exp2(dz * k_t)
            ms_new = tl.maximum(m_s, tl.max(s, axis=1))
            ds = s - ms_new[:, None]
            l_s = l_s * tl.exp2((m_s - ms_new) * k_t) + tl.sum(tl.exp2(ds * k_t), axis=1)
            # s = -inf terms skipped (ds = -inf: m_s' is finite), their z kept in m_ninf instead (above); e_t = 0 terms
            # add 0. The old sum where its rescale is 0 adds nothing either (l_teacher (m_s - m_s') may overflow), nor
            # does a group whose student logits were all -inf so far (m_s still -FLT_MAX, d_t = 0: l_teacher, the
            # weight of those classes, times -FLT_MAX would be -inf). l_teacher also holds the skipped
            # classes' weights: their share of the shift ends as p_c (m_s - c_s), p_c < 2^-150 where the loss is
            # finite.
            live = ds != float("-inf")
            m_ninf = tl.maximum(m_ninf, tl.max(tl.where(live, float("-inf"), z), axis=1))
            moved = tl.where(m_s > -3.4028234663852886e38, l_teacher * (m_s - ms_new), 0.0)
            d_old = tl.where(alpha_t != 0.0, alpha_t * (d_t + moved), 0.0)
            d_t = d_old + tl.sum(tl.where(live, e_t * ds, 0.0), axis=1)
            if not UNIT_T:
                l_t = l_t * alpha_t + tl.sum(e_t, axis=1)
            m_s = ms_new
        m_z = m_new
    return m_z, l_z, a_z, b_z, m_s, l_s, l_t, d_t, m_ninf


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
    OVER_ROWS: tl.constexpr = False,
):
    # One block of classes: both gradients recomputed from the saved stats and written (MASKED: a row's first
    # or last block). softmax(v)_c = exp(v_c - c - log l) = exp2((v_c - c) log2 e - b) with b = log2 l (one FFMA per
    # exponent; v_c - c is rounded once, as before, so logits of 1e4 lose nothing to the shift).
    # OVER_ROWS: dz and ds are narrower views over z's and s's own rows (bf16 gradients over fp32 logits: the
    # fused-linear op's chunks). Gradient c then lands in the bytes of logit c / 2, which another warp of this
    # program loaded, in this block or an earlier one: every warp's loads must be done before any warp stores. So
    # both gradients are computed first, then a barrier (bar.sync: the program's loads so far performed, PTX ISA),
    # then both stores. The blocks go in increasing class order and a row is one program's (the launcher: no split).
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
        if not OVER_ROWS:
            _store_block(dz_row, cols, dz, mask, MASKED)
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
        if not OVER_ROWS:
            _store_block(ds_row, cols, ds, mask, MASKED)
    if OVER_ROWS:
        tl.debug_barrier()
        if WRITE_DZ:
            _store_block(dz_row, cols, dz, mask, MASKED)
        if WRITE_DS:
            _store_block(ds_row, cols, ds, mask, MASKED)


@jit
def _store_block(row, cols, values, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(row + cols, values, mask=mask)
    else:
        tl.store(row + cols, values)
