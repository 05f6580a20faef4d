"""Token selection's Triton kernels (maths, design and layout: token_select.py's docstring).

The selection: one program per sample draws its N sort keys (§2, with the always-keep / drop-first classes folded
in), sorts them, writes the first K positions and, for the backward, the inverse map. The copy: one kernel for the
gather and its scatter backward, a row copy through an index map. Where N is small the two are one kernel
(``_select_gather_kernel``): each program sorts its sample's keys itself and copies that sample's rows.
"""

from __future__ import annotations

from .._philox import load_seed, philox_sort_keys
from .._triton import jit, tl


@jit
def _selection(
    seed,
    row,
    lanes,
    keep_ptr,
    drop_ptr,
    N,
    stride_kb,
    stride_kn,
    stride_db,
    stride_dn,
    HAS_KEEP: tl.constexpr,
    HAS_DROP: tl.constexpr,
):
    """The positions of sample ``row`` in ascending-key order (lane r holds the position of rank r): draw the N
    keys, sort them. Keys are (draw, position) packed in int64, so one sort gives the order and the positions;
    padding lanes sort last."""
    keys = philox_sort_keys(seed, row, lanes, N)
    if HAS_KEEP or HAS_DROP:
        # priority_keys (_token_select_reference.py): draw-0 keys + N (above every always-keep key, same order among
        # themselves), then drop-first keys = §2's key at draw 2^32 - 1, + N; then always-keep keys = §2's key at
        # draw 0 (wins)
        positions = lanes.to(tl.int64)
        keys = tl.where((keys >> 32) == -2147483648, keys + N, keys)
        if HAS_DROP:
            drop = tl.load(drop_ptr + row * stride_db + positions * stride_dn, mask=lanes < N, other=0)
            keys = tl.where(drop != 0, positions + N + (2147483647 << 32), keys)
        if HAS_KEEP:
            keep = tl.load(keep_ptr + row * stride_kb + positions * stride_kn, mask=lanes < N, other=0)
            keys = tl.where(keep != 0, positions + (-2147483648 << 32), keys)
    keys = tl.where(lanes < N, keys, 9223372036854775807)
    keys = tl.sort(keys)
    by_draw = keys - ((keys >> 32) << 32)  # low 32 bits: the position (+ N in some classes), in key order
    if HAS_KEEP or HAS_DROP:
        by_draw = tl.where(by_draw >= N, by_draw - N, by_draw)
    return by_draw


@jit
def _kept_positions(by_draw, lanes, K, ORDERED: tl.constexpr):
    """Lane j < K: ids[row, j], the position of rank j (ascending position when ORDERED)."""
    if ORDERED:
        return tl.sort(tl.where(lanes < K, by_draw, 9223372036854775807))
    return by_draw


@jit
def _write_selection(ids_ptr, inv_ptr, row, lanes, by_draw, kept_positions, N, K, WRITE_INVERSE: tl.constexpr):
    """ids[row] from the kept lanes; inv[row]: kept positions get their output slot, dropped ones -1 (disjoint
    addresses, each written once)."""
    kept = lanes < K
    tl.store(ids_ptr + row * K + lanes, kept_positions, mask=kept)
    if WRITE_INVERSE:
        dropped = (lanes >= K) & (lanes < N)
        tl.store(inv_ptr + row * N + kept_positions, lanes.to(tl.int32), mask=kept)
        tl.store(inv_ptr + row * N + by_draw, tl.full(lanes.shape, -1, tl.int32), mask=dropped)


@jit(do_not_specialize=("seed",))
def _select_kernel(
    ids_ptr,  # int64 [B, K] out
    inv_ptr,  # int32 [B, N] out (only when WRITE_INVERSE)
    seed,
    seed_ptr,  # int64 [1]: the seed when SEED_FROM_PTR (a seed tensor), else unused
    keep_ptr,  # bytes [B, N] (a bool tensor's) with strides: always_keep when HAS_KEEP, else unused
    drop_ptr,  # bytes [B, N] with strides: drop_first when HAS_DROP, else unused
    N,
    K,
    stride_kb,
    stride_kn,
    stride_db,
    stride_dn,
    SEED_FROM_PTR: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_DROP: tl.constexpr,
    ORDERED: tl.constexpr,
    WRITE_INVERSE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program per sample: draw N keys, sort them; rank r < K is kept.
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_N)
    seed = load_seed(seed, seed_ptr, SEED_FROM_PTR)
    by_draw = _selection(
        seed, row, lanes, keep_ptr, drop_ptr, N, stride_kb, stride_kn, stride_db, stride_dn, HAS_KEEP, HAS_DROP
    )
    kept_positions = _kept_positions(by_draw, lanes, K, ORDERED)
    _write_selection(ids_ptr, inv_ptr, row, lanes, by_draw, kept_positions, N, K, WRITE_INVERSE)


@jit(do_not_specialize=("seed",))
def _select_gather_kernel(
    x_ptr,  # [B, P + N, D], last stride 1
    y_ptr,  # [B, P + K, D] out, contiguous
    ids_ptr,  # int64 [B, K] out
    inv_ptr,  # int32 [B, N] out
    seed,
    seed_ptr,  # as _select_kernel's
    keep_ptr,
    drop_ptr,
    N,
    K,
    P,
    D,
    stride_xb,
    stride_xs,
    stride_kb,
    stride_kn,
    stride_db,
    stride_dn,
    SEED_FROM_PTR: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_DROP: tl.constexpr,
    ORDERED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Program (b, c): sample b's selection, then its P + K output rows, channels [c BLOCK_D, (c + 1) BLOCK_D).
    # Every program of a sample sorts the same keys (a few hundred instructions per warp where N is small, hidden
    # under the copy's memory traffic), so no program waits on another and the gather needs no second launch;
    # the c = 0 program writes ids and inv. Output row t copies source row t (a prefix row, t < P) or
    # P + ids[b, t - P]: the kept position comes out of the sorted lanes with a register gather, so the ids never
    # make a round trip through memory. No division anywhere: the grid says the sample.
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    lanes = tl.arange(0, BLOCK_N)
    seed = load_seed(seed, seed_ptr, SEED_FROM_PTR)
    by_draw = _selection(
        seed, b, lanes, keep_ptr, drop_ptr, N, stride_kb, stride_kn, stride_db, stride_dn, HAS_KEEP, HAS_DROP
    )
    kept_positions = _kept_positions(by_draw, lanes, K, ORDERED)
    if c == 0:
        _write_selection(ids_ptr, inv_ptr, b, lanes, by_draw, kept_positions, N, K, True)
    cols = c * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    x_sample = x_ptr + b * stride_xb
    y_sample = y_ptr + b * (P + K) * D
    for start in range(0, P + K, BLOCK_R):
        t = start + tl.arange(0, BLOCK_R)
        rank = tl.minimum(tl.maximum(t - P, 0), BLOCK_N - 1)  # in range for every lane; used where t >= P only
        source = tl.where(t < P, t, P + tl.gather(kept_positions, rank, 0)).to(tl.int64)
        row_ok = t < P + K
        mask = row_ok[:, None] & col_ok[None, :]
        values = tl.load(x_sample + source[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0)
        tl.store(y_sample + t[:, None].to(tl.int64) * D + cols[None, :], values, mask=mask)


@jit
def _copy_rows_kernel(
    src_ptr,  # [B, P + SRC_LEN, D], last stride 1
    map_ptr,  # int [B, MAP_LEN]: source patch row of each output patch row, -1 for a row of zeros
    dst_ptr,  # [B, P + MAP_LEN, D] out, contiguous
    total_rows,  # B * (P + MAP_LEN)
    P,
    MAP_LEN,
    SRC_LEN,
    D,
    stride_sb,
    stride_ss,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Both directions are one row copy. Output row (b, t): a prefix row (t < P) copies source row t; a patch row
    # copies source row P + map[b, t - P], or is zero where the map says -1. Gather: map = ids (K entries, source
    # N patch rows). Scatter (the backward): map = inv (N entries, source K rows of dY), -1 on dropped tokens.
    out_rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = out_rows < total_rows
    col_ok = cols < D
    b = out_rows // (P + MAP_LEN)
    t = out_rows - b * (P + MAP_LEN)
    is_patch = t >= P
    source = tl.load(map_ptr + b * MAP_LEN + (t - P), mask=row_ok & is_patch, other=0).to(tl.int64)
    src = tl.where(is_patch, P + source, t)
    # -1 rows are zeros; an out-of-range id reads nothing either (zeros), never stray memory
    src_ok = row_ok & (source >= 0) & (src < P + SRC_LEN)
    offsets = b[:, None] * stride_sb + src[:, None] * stride_ss + cols[None, :]
    values = tl.load(src_ptr + offsets, mask=src_ok[:, None] & col_ok[None, :], other=0.0)
    tl.store(dst_ptr + out_rows[:, None] * D + cols[None, :], values, mask=row_ok[:, None] & col_ok[None, :])
