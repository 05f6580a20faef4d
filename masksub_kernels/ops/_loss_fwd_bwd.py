"""The MaskSub loss's forward and backward of a row in one launch: the fused-linear loss's chunks.

The fused-linear loss's chunk loop (ops/_linear_loss_chunks.py) runs, per chunk of R rows, the loss forward on the
chunk's fp32 logits (the per-row stats into the op's [9, M]) and at once the backward with the rows' gradients known
(dz, ds written over the logits). Two launches of masksub_loss's kernels did that; here one program per row runs the
forward kernel's code, a barrier, then the backward kernel's on the stats it has just stored:

    _loss_fwd_bwd_kernel  =  _loss_fwd_kernel (no split)  ;  bar.sync  ;  _loss_bwd_kernel (no split)

Both kernels are called as they are (Triton inlines them), so the values are theirs: bit for bit where the fused
launch's num_warps (the larger of the two) and block are the forward's own and its blocks ascend (below), else to
fp32 rounding (on a GPU the forward's cross-warp sums then add in another order: C > 2048 for CE, > 1024 for BCE;
the interpreter has one order per block; the descending blocks add the states in another order). Where
the larger warps are the backward's and the forward's block has fewer 16-byte words than they have threads (BCE's
1024-class blocks in 16 warps), the fused launch widens that block to a word per thread (fused_constexprs: else
Triton splits each word over two threads). Why: a chunk's host time is its launches (the H200 run of 2026-12-04,
384-row chunks: ~400 us of host time per chunk, the call's host time 17.2 ms beside 17.5 ms on the GPU: the op
host-bound), and a Triton launch is the dearest of them (binding ~25 arguments and ~20 constants in Python): one per
chunk fewer, 43 per BERT step. The program's second pass over its row may also find it in L2: its forward reads the
row's whole blocks from the last down (FORWARD_DESCENDING), so the backward's first blocks, from the row's first
class up, are the bytes read last (BERT's chunks: a row of both branches' fp32 logits is 244 KB, 2 programs of 16
warps per SM (64 registers), ~64 MB in flight against an H200's 50 MB of L2: ~0.2-0.5 ms a BERT step by an LRU
simulation's prediction, docs/fused_linear.md; whole blocks only, and with BCE's class ids those before the label's;
not yet measured: the benchmark's `masksub[triton]:ascending` row and benchmarks/gpu_ncu.py's last two launches are
the A/B). masksub_loss's own forward keeps the ascending order (the descending one costs its standalone kernels
registers: 40 -> 48 at BERT's shape, sm_90, for nothing there). The stats go through memory as between the two
launches: the barrier makes the program's stores visible to all its threads (the CUDA memory model, block scope).

Where either kernel's launch configuration splits the rows' classes over programs (few rows: class_splits; the
split forward merges its states through tickets, so another program's stats would be read), the two launches run
as before (forward_backward_triton falls back). The launch configurations are masksub_loss's own
(_forward_config, _backward_config, cached by layout): the fused launch merges them, their shared constants equal,
the rest under F_ / B_ names, and takes the larger num_warps.

The class tail (ClassTail). Where C is not a multiple of 8 (BERT's 30522), the chunk's matmuls run over C's aligned
head only (cuBLAS's fast kernels; _linear_loss_matmuls.class_parts) and the one launch takes the last < 8 classes:
first their logits, each a dot product of the row's hidden state with a weight row (fp32 accumulation of the
operands' products, as the matmul's), stored into their columns before the forward reads the row (a barrier); last,
after the backward has stored the row's gradients (a barrier), dH's share of them, sum_t dz[t] W[t, :] in fp32,
into the chunk's fp32 products, to which the head's dH matmul then adds (one rounding of the sum, as before); and
the row's tail gradient columns, as stored, into a buffer of the call's at the row's place, for dW's tail: a sum
over rows, one matmul per branch after the chunk loop. Three small matmuls per chunk fewer (a chunk's 10 launches
then: 7 now).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._triton import jit, tl
from . import masksub_loss as loss_ops
from ._loss_layout import _unit_last_stride
from ._masksub_loss_kernels import _loss_bwd_kernel, _loss_fwd_kernel

# the launch constants the two kernels share (equal in both configurations) and those each has under its own name
SHARED = ("BCE", "DENSE", "BINARISE", "HAS_BIAS")
PER_KERNEL = ("BLOCK_C", "UNIT_T", "VEC", "GROUP", "ALIGNED", "EVEN")
FORWARD_ONLY = ("HAS_MAIN", "HAS_SUB", "SMOOTHED")
BACKWARD_ONLY = ("LABELS", "WRITE_DZ", "WRITE_DS", "OVER_ROWS", "D_GROUP")
# False: the chunks' loss in masksub_loss's two launches and the class tail by matmuls, as before (the benchmark's
# A/B row, `masksub[triton]:2 launches`, until a GPU has measured both; read at call time)
ONE_LAUNCH = True
# True: the one launch's forward reads each row's whole blocks from the last down (_loss_fwd_kernel's DESCENDING),
# so that its backward, reading the row again from the first class up, starts on the bytes read last (L2: module
# docstring); False: from the first up, as masksub_loss's own forward (the benchmark's `masksub[triton]:ascending`
# row, the A/B until a GPU has measured both; read at call time)
FORWARD_DESCENDING = True


@jit
def _loss_fwd_bwd_kernel(
    z_ptr,  # main logits [M, C], last stride 1 (as masksub_loss's kernels)
    s_ptr,  # sub logits [M, C] (HAS_SUB)
    y_ptr,  # class ids [M] or probabilities [M, C] (HAS_MAIN)
    bias_ptr,  # [C] (HAS_BIAS)
    out_ptr,  # fp32 [9, M] out: the forward's stats, any row stride (the op's columns), read back by the backward
    gm_ptr,  # grad of the per-row main loss [M] (WRITE_DZ)
    gs_ptr,  # grad of the per-row sub loss [M] (WRITE_DS)
    dz_ptr,  # [M, C] out (WRITE_DZ): any float dtype, rows stride_d apart (OVER_ROWS: over z's rows)
    ds_ptr,  # [M, C] out (WRITE_DS)
    M,
    C,
    stride_z,
    stride_s,
    stride_y,
    stride_gm,
    stride_gs,
    stride_d,
    stride_out,
    eps,
    ignore_index,
    temperature,
    threshold,
    xz_ptr,  # TAIL: the rows z comes from, [M, D] (the chunk's stacked hidden rows), rows stride_x apart
    xs_ptr,  # TAIL: those of s (HAS_SUB)
    wt_ptr,  # TAIL: the tail classes' weight rows W[tail_start:] [C - tail_start, D], rows stride_w apart
    pz_ptr,  # TAIL_DZ: fp32 [M, D] out, rows stride_p apart: dz[:, tail_start:] @ W[tail_start:]
    ps_ptr,  # TAIL_DS: the same of ds
    tz_ptr,  # TAIL_DW: dz's tail columns out, rows of BLOCK_T in the gradients' dtype, row i at row_base + i
    ts_ptr,  # TAIL_DW: ds's
    stride_x,
    stride_w,
    stride_p,
    D,
    tail_start,
    row_base,
    HAS_MAIN: tl.constexpr,
    HAS_SUB: tl.constexpr,
    SMOOTHED: tl.constexpr,
    DESCENDING: tl.constexpr,  # the forward's blocks from the row's last: the backward's first reads find them in L2
    LABELS: tl.constexpr,
    WRITE_DZ: tl.constexpr,
    WRITE_DS: tl.constexpr,
    OVER_ROWS: tl.constexpr,
    D_GROUP: tl.constexpr,
    BCE: tl.constexpr,
    DENSE: tl.constexpr,
    BINARISE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    F_BLOCK_C: tl.constexpr,
    F_UNIT_T: tl.constexpr,
    F_VEC: tl.constexpr,
    F_GROUP: tl.constexpr,
    F_ALIGNED: tl.constexpr,
    F_EVEN: tl.constexpr,
    B_BLOCK_C: tl.constexpr,
    B_UNIT_T: tl.constexpr,
    B_VEC: tl.constexpr,
    B_GROUP: tl.constexpr,
    B_ALIGNED: tl.constexpr,
    B_EVEN: tl.constexpr,
    TAIL: tl.constexpr = False,  # the logits of classes [tail_start, C) computed here (the matmul left them)
    TAIL_DZ: tl.constexpr = False,  # TAIL: and dz's tail columns times their weight rows into pz (dH's share)
    TAIL_DS: tl.constexpr = False,
    TAIL_DW: tl.constexpr = False,  # TAIL: and the gradients' tail columns into tz, ts (dW's tail, once per call)
    BLOCK_T: tl.constexpr = 8,  # >= C - tail_start; tz and ts's row length
    BLOCK_D: tl.constexpr = 128,
):
    row = tl.program_id(0).to(tl.int64)
    if TAIL:  # the row's logits of the tail classes, into their columns of z and s, before the forward reads them
        _tail_logits(
            xz_ptr, xs_ptr, wt_ptr, z_ptr, s_ptr, row, stride_x, stride_w, stride_z, stride_s, D, C, tail_start,
            HAS_SUB, BLOCK_T, BLOCK_D,
        )  # fmt: skip
        tl.debug_barrier()  # stored by some threads, read by all below
    # the forward, one program per row (no split: its scratch, tickets and reduction pointers are never read), the
    # stats written to out, every one of them (ZERO_ABSENT: out is not zero-filled)
    _loss_fwd_kernel(
        z_ptr, s_ptr, y_ptr, bias_ptr, out_ptr, out_ptr, out_ptr, out_ptr, out_ptr, M, C, C, stride_z, stride_s,
        stride_y, stride_out, eps, ignore_index, temperature, threshold, 0.0, 0.0, HAS_MAIN, HAS_SUB, BCE, DENSE,
        BINARISE, False, HAS_BIAS, F_BLOCK_C, 1, F_UNIT_T, F_VEC, False, False, F_GROUP, F_ALIGNED, F_EVEN, SMOOTHED,
        True, DESCENDING,
    )  # fmt: skip
    tl.debug_barrier()  # the row's stats, stored above by some threads, visible to all below
    _loss_bwd_kernel(
        z_ptr, s_ptr, y_ptr, bias_ptr, out_ptr, gm_ptr, gs_ptr, dz_ptr, ds_ptr, out_ptr, M, C, C, stride_z, stride_s,
        stride_y, stride_gm, stride_gs, stride_d, stride_out, eps, ignore_index, temperature, threshold, 0.0, 0.0,
        LABELS, WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, False, HAS_BIAS, B_BLOCK_C, B_UNIT_T, B_VEC, False, B_GROUP,
        B_ALIGNED, B_EVEN, OVER_ROWS, D_GROUP,
    )  # fmt: skip
    if TAIL_DZ or TAIL_DS or TAIL_DW:
        tl.debug_barrier()  # the gradients' tail columns, stored by some threads, read by all below
        _tail_products(
            dz_ptr, ds_ptr, wt_ptr, pz_ptr, ps_ptr, tz_ptr, ts_ptr, row, row_base, stride_d, stride_w, stride_p, D, C,
            tail_start, TAIL_DZ, TAIL_DS, TAIL_DW and WRITE_DZ, TAIL_DW and WRITE_DS, BLOCK_T, BLOCK_D,
        )  # fmt: skip


@jit
def _tail_logits(xz_ptr, xs_ptr, w_ptr, z_ptr, s_ptr, row, stride_x, stride_w, stride_z, stride_s, D, C, start,
                 HAS_SUB: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """z[row, start + t] = sum_d x[row, d] W[start + t, d] for the t < C - start tail classes (and s's from its
    rows), fp32 accumulation of the operands' products (as the matmul's), in blocks of BLOCK_D of the depth (W's
    rows loaded once for both); stored after every load."""
    t = tl.arange(0, BLOCK_T)
    t_ok = t < C - start
    acc_z, acc_s = tl.zeros([BLOCK_T], tl.float32), tl.zeros([BLOCK_T], tl.float32)
    # W's tail rows t: t stride_w passes 2^31 where W's rows are ~2^31 / 7 elements apart (helper-348: int32 read
    # row 2's bytes for row 6 there), so their pointers from int64 offsets
    w_rows = w_ptr + t.to(tl.int64)[:, None] * stride_w
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        w = tl.load(w_rows + d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        w = w.to(tl.float32)
        x = tl.load(xz_ptr + row * stride_x + d, mask=d_ok, other=0.0)
        acc_z += tl.sum(w * x.to(tl.float32)[None, :], axis=1)
        if HAS_SUB:
            x = tl.load(xs_ptr + row * stride_x + d, mask=d_ok, other=0.0)
            acc_s += tl.sum(w * x.to(tl.float32)[None, :], axis=1)
    tl.store(z_ptr + row * stride_z + start + t, acc_z, mask=t_ok)
    if HAS_SUB:
        tl.store(s_ptr + row * stride_s + start + t, acc_s, mask=t_ok)


@jit
def _tail_products(dz_ptr, ds_ptr, w_ptr, pz_ptr, ps_ptr, tz_ptr, ts_ptr, row, row_base, stride_g, stride_w, stride_p,
                   D, C, start, DZ: tl.constexpr, DS: tl.constexpr, TZ: tl.constexpr, TS: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """pz[row, :] = sum_t dz[row, start + t] W[start + t, :] in fp32 (the gradient's tail columns as stored: dH's
    share of the tail classes, to which the head's matmul adds), and ps from ds, W's rows loaded once for both (DZ,
    DS); the tail columns themselves into tz, ts at row row_base + row (TZ, TS: dW's tail, once per call)."""
    t = tl.arange(0, BLOCK_T)
    t_ok = t < C - start
    # a gradient not written has no buffer (its pointer stands in): never read, not even masked
    g_z, g_s = tl.zeros([BLOCK_T], tl.float32), tl.zeros([BLOCK_T], tl.float32)
    if DZ or TZ:
        g_z = tl.load(dz_ptr + row * stride_g + start + t, mask=t_ok, other=0.0)
    if DS or TS:
        g_s = tl.load(ds_ptr + row * stride_g + start + t, mask=t_ok, other=0.0)
    at = (row_base + row) * BLOCK_T + t  # int64: row is
    if TZ:
        tl.store(tz_ptr + at, g_z, mask=t_ok)
    if TS:
        tl.store(ts_ptr + at, g_s, mask=t_ok)
    if DZ or DS:
        g_z, g_s = g_z.to(tl.float32), g_s.to(tl.float32)
        w_rows = w_ptr + t.to(tl.int64)[:, None] * stride_w  # from int64 offsets, as _tail_logits' (rows far apart)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_ok = d < D
            w = tl.load(w_rows + d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            w = w.to(tl.float32)
            if DZ:
                tl.store(pz_ptr + row * stride_p + d, tl.sum(w * g_z[:, None], axis=0), mask=d_ok)
            if DS:
                tl.store(ps_ptr + row * stride_p + d, tl.sum(w * g_s[:, None], axis=0), mask=d_ok)


def fused_constexprs(forward: dict, backward: dict) -> dict | None:
    """The fused launch's constants and num_warps from the two kernels' (their launch configurations' constexpr
    dicts), or None where they cannot run as one program per row: a class split in either, a forward that reduces
    or zero-fills (the chunks' need neither). num_warps: the larger; the forward's block widened to a 16-byte word
    per thread of them where it had fewer words (below)."""
    if forward["SPLIT"] or backward["SPLIT"]:
        return None
    if any(forward[k] != backward[k] for k in SHARED):
        raise AssertionError(f"the loss kernels' configurations disagree on {SHARED}: {forward} / {backward}")
    merged = {k: forward[k] for k in (*SHARED, *FORWARD_ONLY)} | {k: backward[k] for k in BACKWARD_ONLY}
    merged |= {f"F_{k}": forward[k] for k in PER_KERNEL} | {f"B_{k}": backward[k] for k in PER_KERNEL}
    merged["num_warps"] = max(forward["num_warps"], backward["num_warps"])
    if forward["num_warps"] < merged["num_warps"]:
        # the forward's block, [BLOCK_C / GROUP, GROUP] states, in more warps than its own: a 16-byte word per
        # thread of them, or Triton splits each word over threads (BCE's 1024 classes in the backward's 16 warps:
        # 2 threads a word, no 16-byte loads, shuffles per block; 1.6 against 1.1 warp-instructions per class in
        # the forward's loops, sm_90 SASS at C = 21841), at most the backward's block
        words = forward["GROUP"] * 32 * merged["num_warps"]
        merged["F_BLOCK_C"] = max(forward["BLOCK_C"], min(words, backward["BLOCK_C"]))
    return merged


class ClassTail(NamedTuple):
    """The classes [start, C) past the chunk matmuls' aligned head (_linear_loss_matmuls.class_parts), handed to the
    one launch: their logits computed there from the rows and weight rows, and dH's share of them (fp32) written
    into the products, to which the head's matmul then adds. products: (dz's, ds's) [R, D] fp32, or None each where
    that dH is not wanted; grads: the gradients' tail columns kept for dW's tail (one matmul per call)."""

    start: int
    weight: torch.Tensor  # W[start:] [C - start, D]
    rows: torch.Tensor  # the rows z comes from [R, D]
    sub_rows: torch.Tensor | None  # those of s
    products: tuple
    # dW's tail, once per call: (dz's, ds's) tail columns out, [N, 8] contiguous in the gradients' dtype (or None
    # each), row i of the chunk written at row_base + i
    grads: tuple = (None, None)
    row_base: int = 0


class PreparedTail(NamedTuple):
    """A ClassTail's kernel arguments (all but its row_base) and constants, checked once (prepare_tail): the chunk
    loop makes one per chunk size and passes it with each chunk's row_base (host time)."""

    arguments: tuple
    flags: dict
    kept_rows: int | None  # the rows of the kept tail columns' buffers (row_base + R must fit), None without them
    row_base: int = 0


def one_launch(grad_main, grad_sub, z, s, y, bce, eps, temperature, threshold, into, bias, over_rows):
    """The one launch's (row strides, the gradients' row stride, constants) for forward_backward_triton's operands,
    or None where it does not apply (a class split, nothing to compute, ONE_LAUNCH off): from masksub_loss's two
    launch configurations, cached by layout."""
    z, s, y = _unit_last_stride(z, s, y)  # as forward_backward_triton's operands
    if not ONE_LAUNCH or not z.shape[0] or (grad_main is None and grad_sub is None):
        return None
    dz, ds = (x if g is not None else z.new_empty(0) for x, g in zip(into, (grad_main, grad_sub)))
    smoothed = eps != 0 or (threshold is not None and threshold < 0)
    unit_t = float(temperature) == 1.0
    forward_options = (bool(bce), threshold is not None, smoothed, unit_t, bias is not None)
    backward_options = (bool(bce), threshold is not None, unit_t, bias is not None)
    backward_options += (grad_main is not None, grad_sub is not None, bool(over_rows))
    _, strides, forward = loss_ops._cached_config(loss_ops._forward_config, (z, s, y), forward_options)
    _, _, stride_d, backward = loss_ops._cached_config(loss_ops._backward_config, (z, s, y, dz, ds), backward_options)
    constexprs = fused_constexprs(forward, backward)
    return None if constexprs is None else (strides, stride_d, {**constexprs, "DESCENDING": FORWARD_DESCENDING})


_UNSET = object()


def forward_backward_triton(
    grad_main, grad_sub, logits, sub_logits, target, bce, eps, ignore, temperature, threshold, *, out, tickets, into,
    bias=None, over_rows=False, launch=_UNSET, tail: ClassTail | PreparedTail | None = None,
):  # fmt: skip
    """masksub_loss's _forward_triton(..., out=out, tickets=tickets) then _backward_triton(grad_main, grad_sub, out,
    ..., into=into, over_rows=over_rows), in one launch where no class split is configured (module docstring), else
    those two. logits, sub_logits [R, C] (sub None: one term), target [R] ids or [R, C] probabilities; grad_main,
    grad_sub [R] (or None: that gradient not written); out fp32 [9, R] with unit last stride (written); tickets int32
    [>= R], zero (the split forward's, left zero); into: the (dz, ds) buffers as _backward_triton's. launch: what
    one_launch gives for these operands, where the caller has it (else derived here). tail: the classes the logits'
    matmul left out (ClassTail, or its PreparedTail for these operands; the one launch only: a caller passes it where
    ``launch`` is not None). Returns (out, (dz or [0], ds or [0]))."""
    z, s, y = _unit_last_stride(logits, sub_logits, target)
    dz, ds = (x if g is not None else z.new_empty(0) for x, g in zip(into, (grad_main, grad_sub)))
    if launch is _UNSET:
        launch = one_launch(grad_main, grad_sub, z, s, y, bce, eps, temperature, threshold, into, bias, over_rows)
    if launch is None:  # a split (or nothing to compute): the two launches
        assert tail is None, "the class tail's logits and products are the one launch's"
        stats = loss_ops._forward_triton(z, s, y, bce, eps, ignore, temperature, threshold, bias=bias, out=out,
                                         tickets=tickets)  # fmt: skip
        grads = loss_ops._backward_triton(grad_main, grad_sub, stats, z, s, y, bce, eps, ignore, temperature,
                                          threshold, into=into, bias=bias, over_rows=over_rows)  # fmt: skip
        return stats, grads
    strides, stride_d, constexprs = launch
    rows, classes = z.shape
    assert out.shape == (loss_ops.NUM_OUT, rows) and out.dtype == torch.float32 and out.stride(1) == 1
    written = [x for x in (dz, ds) if x.numel()]
    assert all(x.shape == z.shape and x.stride(-1) == 1 for x in written) and len({x.stride(0) for x in written}) == 1
    gm, gs = (out[0] if g is None else g for g in (grad_main, grad_sub))
    tail_args, tail_flags = (z, z, z, z, z, z, z, 0, 0, 0, 0, 0, 0), {}
    if tail is not None:
        if isinstance(tail, ClassTail):
            tail = prepare_tail(tail, z, s, grad_main, grad_sub, into, out)
        assert tail.kept_rows is None or tail.row_base + rows <= tail.kept_rows
        tail_args, tail_flags = (*tail.arguments, tail.row_base), tail.flags
    _loss_fwd_bwd_kernel[(rows,)](
        z, z if s is None else s, z if y is None else y, z if bias is None else bias, out, gm, gs,
        dz if dz.numel() else out, ds if ds.numel() else out, rows, classes, *strides, gm.stride(0), gs.stride(0),
        stride_d, out.stride(0), eps, ignore, temperature, threshold or 0.0, *tail_args, **constexprs, **tail_flags,
    )  # fmt: skip
    return out, (dz, ds)


def prepare_tail(tail: ClassTail, z, s, grad_main, grad_sub, into, placeholder: torch.Tensor) -> PreparedTail:
    """The kernel's class-tail arguments and constants for operands laid out as z, s, into (the chunk's [R, C]
    views), the tail's operands checked (unit last strides, one row stride for both branches' rows and for both
    products, at most 8 classes, products only for gradients written); ``placeholder`` (fp32) stands in for the
    pointers of the buffers not written (never read). The row_base is the tail's."""
    weight, (pz, ps) = tail.weight, tail.products
    rows, classes = z.shape
    operands = [t for t in (tail.rows, tail.sub_rows, weight, pz, ps) if t is not None]
    assert all(t.stride(-1) == 1 for t in operands) and tail.rows.shape[0] == rows and 0 < classes - tail.start <= 8
    assert (s is None) == (tail.sub_rows is None)
    assert tail.sub_rows is None or tail.sub_rows.stride(0) == tail.rows.stride(0)
    assert all(p is None or (p.dtype == torch.float32 and p.shape == (rows, weight.shape[1])) for p in (pz, ps))
    assert pz is None or ps is None or pz.stride(0) == ps.stride(0)
    assert (pz is None or grad_main is not None) and (ps is None or grad_sub is not None)
    assert placeholder.dtype == torch.float32
    stride_p = next((p.stride(0) for p in (pz, ps) if p is not None), 0)
    tz, ts = tail.grads
    dz_dtype = next(d.dtype for d, g in zip(into, (grad_main, grad_sub)) if g is not None)
    assert all(t is None or (t.is_contiguous() and t.shape[1] == 8 and t.dtype == dz_dtype) for t in (tz, ts))
    # one flag writes both: each kept buffer exactly where its gradient is written (else the stand-in, read by no
    # one, would be written)
    assert (tz is None and ts is None) or ((tz is None) == (grad_main is None) and (ts is None) == (grad_sub is None))
    kept_rows = min((t.shape[0] for t in (tz, ts) if t is not None), default=None)
    arguments = (
        tail.rows, tail.sub_rows if tail.sub_rows is not None else tail.rows, weight,
        pz if pz is not None else placeholder, ps if ps is not None else placeholder,
        tz if tz is not None else placeholder, ts if ts is not None else placeholder,
        tail.rows.stride(0), weight.stride(0), stride_p, weight.shape[1], tail.start,
    )  # fmt: skip
    flags = {"TAIL": True, "TAIL_DZ": pz is not None, "TAIL_DS": ps is not None}
    return PreparedTail(arguments, flags | {"TAIL_DW": tz is not None or ts is not None}, kept_rows, tail.row_base)
