"""The MaskSub loss's forward and backward of a row in one launch: the fused-linear loss's chunks.

The fused-linear loss's chunk loop (ops/_linear_loss_chunks.py) runs, per chunk of R rows, the loss forward on the
chunk's fp32 logits (the per-row stats into the op's [9, M]) and at once the backward with the rows' gradients known
(dz, ds written over the logits). Two launches of masksub_loss's kernels did that; here one program per row runs the
forward kernel's code, a barrier, then the backward kernel's on the stats it has just stored:

    _loss_fwd_bwd_kernel  =  _loss_fwd_kernel (no split)  ;  bar.sync  ;  _loss_bwd_kernel (no split)

Both kernels are called as they are (Triton inlines them), so the values are theirs bit for bit. Why: a chunk's host
time is its launches (the H200 run of 2026-12-04, 384-row chunks: ~400 us of host time per chunk, the call's host
time 17.2 ms beside 17.5 ms on the GPU: the op host-bound), and a Triton launch is the dearest of them (binding
~25 arguments and ~20 constants in Python): one per chunk fewer, 43 per BERT step. The program's second pass over
its row may also find it in L2. The stats go through memory as between the two launches: the barrier makes the
program's stores visible to all its threads (the CUDA memory model, block scope).

Where either kernel's launch configuration splits the rows' classes over programs (few rows: class_splits; the
split forward merges its states through tickets, so another program's stats would be read), the two launches run
as before (forward_backward_triton falls back). The launch configurations are masksub_loss's own
(_forward_config, _backward_config, cached by layout): the fused launch merges them, their shared constants equal,
the rest under F_ / B_ names, and takes the larger num_warps.
"""

from __future__ import annotations

import torch

from .._triton import jit, tl
from . import masksub_loss as loss_ops
from ._masksub_loss_kernels import _loss_bwd_kernel, _loss_fwd_kernel

# the launch constants the two kernels share (equal in both configurations) and those each has under its own name
SHARED = ("BCE", "DENSE", "BINARISE", "HAS_BIAS")
PER_KERNEL = ("BLOCK_C", "UNIT_T", "VEC", "GROUP", "ALIGNED", "EVEN")
FORWARD_ONLY = ("HAS_MAIN", "HAS_SUB", "SMOOTHED")
BACKWARD_ONLY = ("LABELS", "WRITE_DZ", "WRITE_DS", "OVER_ROWS")


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
    HAS_MAIN: tl.constexpr,
    HAS_SUB: tl.constexpr,
    SMOOTHED: tl.constexpr,
    LABELS: tl.constexpr,
    WRITE_DZ: tl.constexpr,
    WRITE_DS: tl.constexpr,
    OVER_ROWS: tl.constexpr,
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
):
    # the forward, one program per row (no split: its scratch, tickets and reduction pointers are never read), the
    # stats written to out, every one of them (ZERO_ABSENT: out is not zero-filled)
    _loss_fwd_kernel(
        z_ptr, s_ptr, y_ptr, bias_ptr, out_ptr, out_ptr, out_ptr, out_ptr, out_ptr, M, C, C, stride_z, stride_s,
        stride_y, stride_out, eps, ignore_index, temperature, threshold, 0.0, 0.0, HAS_MAIN, HAS_SUB, BCE, DENSE,
        BINARISE, False, HAS_BIAS, F_BLOCK_C, 1, F_UNIT_T, F_VEC, False, False, F_GROUP, F_ALIGNED, F_EVEN, SMOOTHED,
        True,
    )  # fmt: skip
    tl.debug_barrier()  # the row's stats, stored above by some threads, visible to all below
    _loss_bwd_kernel(
        z_ptr, s_ptr, y_ptr, bias_ptr, out_ptr, gm_ptr, gs_ptr, dz_ptr, ds_ptr, out_ptr, M, C, C, stride_z, stride_s,
        stride_y, stride_gm, stride_gs, stride_d, stride_out, eps, ignore_index, temperature, threshold, 0.0, 0.0,
        LABELS, WRITE_DZ, WRITE_DS, BCE, DENSE, BINARISE, False, HAS_BIAS, B_BLOCK_C, B_UNIT_T, B_VEC, False, B_GROUP,
        B_ALIGNED, B_EVEN, OVER_ROWS,
    )  # fmt: skip


def fused_constexprs(forward: dict, backward: dict) -> dict | None:
    """The fused launch's constants and num_warps from the two kernels' (their launch configurations' constexpr
    dicts), or None where they cannot run as one program per row: a class split in either, a forward that reduces
    or zero-fills (the chunks' need neither)."""
    if forward["SPLIT"] or backward["SPLIT"]:
        return None
    if any(forward[k] != backward[k] for k in SHARED):
        raise AssertionError(f"the loss kernels' configurations disagree on {SHARED}: {forward} / {backward}")
    merged = {k: forward[k] for k in (*SHARED, *FORWARD_ONLY)} | {k: backward[k] for k in BACKWARD_ONLY}
    merged |= {f"F_{k}": forward[k] for k in PER_KERNEL} | {f"B_{k}": backward[k] for k in PER_KERNEL}
    merged["num_warps"] = max(forward["num_warps"], backward["num_warps"])
    return merged


def forward_backward_triton(
    grad_main, grad_sub, logits, sub_logits, target, bce, eps, ignore, temperature, threshold, *, out, tickets, into,
    bias=None, over_rows=False,
):  # fmt: skip
    """masksub_loss's _forward_triton(..., out=out, tickets=tickets) then _backward_triton(grad_main, grad_sub, out,
    ..., into=into, over_rows=over_rows), in one launch where no class split is configured (module docstring), else
    those two. logits, sub_logits [R, C] (sub None: one term), target [R] ids or [R, C] probabilities; grad_main,
    grad_sub [R] (or None: that gradient not written); out fp32 [9, R] with unit last stride (written); tickets int32
    [>= R], zero (the split forward's, left zero); into: the (dz, ds) buffers as _backward_triton's. Returns (out,
    (dz or [0], ds or [0]))."""
    z, s, y = loss_ops._unit_last_stride(logits, sub_logits, target)
    dz, ds = (x if g is not None else z.new_empty(0) for x, g in zip(into, (grad_main, grad_sub)))
    constexprs, stride_d = None, 0
    rows, classes = z.shape
    if rows and (grad_main is not None or grad_sub is not None):
        smoothed = eps != 0 or (threshold is not None and threshold < 0)
        unit_t = float(temperature) == 1.0
        forward_options = (bool(bce), threshold is not None, smoothed, unit_t, bias is not None)
        backward_options = (bool(bce), threshold is not None, unit_t, bias is not None)
        backward_options += (grad_main is not None, grad_sub is not None, bool(over_rows))
        _, strides, forward = loss_ops._cached_config(loss_ops._forward_config, (z, s, y), forward_options)
        _, _, stride_d, backward = loss_ops._cached_config(
            loss_ops._backward_config, (z, s, y, dz, ds), backward_options
        )
        constexprs = fused_constexprs(forward, backward)
    if constexprs is None:  # a split (or nothing to compute): the two launches
        stats = loss_ops._forward_triton(z, s, y, bce, eps, ignore, temperature, threshold, bias=bias, out=out,
                                         tickets=tickets)  # fmt: skip
        grads = loss_ops._backward_triton(grad_main, grad_sub, stats, z, s, y, bce, eps, ignore, temperature,
                                          threshold, into=into, bias=bias, over_rows=over_rows)  # fmt: skip
        return stats, grads
    assert out.shape == (loss_ops.NUM_OUT, rows) and out.dtype == torch.float32 and out.stride(1) == 1
    written = [x for x in (dz, ds) if x.numel()]
    assert all(x.shape == z.shape and x.stride(-1) == 1 for x in written) and len({x.stride(0) for x in written}) == 1
    gm, gs = (out[0] if g is None else g for g in (grad_main, grad_sub))
    _loss_fwd_bwd_kernel[(rows,)](
        z, z if s is None else s, z if y is None else y, z if bias is None else bias, out, gm, gs,
        dz if dz.numel() else out, ds if ds.numel() else out, rows, classes, *strides, gm.stride(0), gs.stride(0),
        stride_d, out.stride(0), eps, ignore, temperature, threshold or 0.0, **constexprs,
    )  # fmt: skip
    return out, (dz, ds)
