"""The gradients-in-forward custom op of the fused-linear MaskSub loss: the chunk loop of _linear_loss_chunks.py
(grads_in_forward) as a torch.library op on the torch and triton backends, its fake (outputs of the same dtypes,
sizes and strides on every backend: a graph compiled under one backend may run under another), its autograd (the
stored gradients scaled in the backward, in place where private, or recomputed per term on the saved stats), and
when the public functions take it (_grads_wanted). The maths: _linear_loss_chunks.py's module docstring.
"""

from __future__ import annotations

import torch

from .. import _backend
from .._triton import jit, tl
from . import _linear_loss_chunks as chunk_loop  # module attributes read at call time (the benchmarks' sweep)
from ._common import _tracing, cdiv, masksub_op
from ._linear_loss_checks import check_linear_grads_op
from .masksub_loss import NUM_OUT


def _grads_reference(hidden, sub_hidden, weight, bias, target, mean, a, b, need_h, need_hs, need_w, need_b, gather,
                     _, chunk, *opts):  # fmt: skip
    from .linear_masksub_loss import reference_chunk_rows  # the recompute reference's (imported late: it imports us)

    return chunk_loop.grads_in_forward(
        hidden, sub_hidden, weight, bias, target, mean, a, b, need_h, need_hs, need_w, need_b, opts,
        rows_per_chunk=chunk or reference_chunk_rows(weight.shape[0]), kernels=False, gather=gather,
    )  # fmt: skip


def _grads_triton(hidden, sub_hidden, weight, bias, target, mean, a, b, need_h, need_hs, need_w, need_b, gather, _,
                  chunk, *options):  # fmt: skip
    rows = chunk or chunk_loop.grads_chunk_rows(weight.shape[0], hidden.shape[0])
    return chunk_loop.grads_in_forward(
        hidden, sub_hidden, weight, bias, target, mean, a, b, need_h, need_hs, need_w, need_b, options,
        rows_per_chunk=rows, kernels=True, gather=gather,
    )  # fmt: skip


@masksub_op(
    "linear_masksub_loss_grads",
    device="hidden",
    torch=_grads_reference,
    triton=_grads_triton,  # cuBLAS matmuls + the masksub_loss Triton kernels on each chunk's logits
    cuda=None,
    records=("linear_masksub_loss",),
    check=check_linear_grads_op,
)
def _linear_loss_grads_op(
    hidden: torch.Tensor,
    sub_hidden: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    mean: bool,
    main_weight: float,
    sub_weight: float,
    need_hidden: bool,
    need_sub_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    gather: bool,
    private: bool,
    chunk_rows: int,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """(loss, main, sub, dH, dHs, dW, db, stats, scale): the reduced losses (fp32 0-d; mean or sum; loss =
    main_weight main + sub_weight sub), the gradients of loss stored for the backward times 1 / scale (0-d, fp64
    for fp64 inputs, else fp32), an unneeded one an empty [0] (need_weight and need_bias apart: a bias-only gradient
    runs no dW matmul and holds no fp32 [C, D]), and the per-row stats [9, M] for the per-term backward (module
    docstring).
    gather: read the number of counted rows on the host and run the matmuls on those rows only (else every row, no
    host sync: torch.compile, CUDA graphs). private: the caller never reads the stored gradients (the public
    functions), so the backward may scale them in place and return them. chunk_rows: rows per chunk (each branch's
    [chunk_rows, C] logits held at once); 0: the backend's default (grads_chunk_rows, or reference_chunk_rows)."""


@_linear_loss_grads_op.register_fake
def _(hidden, sub_hidden, weight, bias, target, mean, a, b, need_h, need_hs, need_w, need_b, *_):
    # the same on every backend (padded_dw): dW, db in fp64 for fp64 inputs, else fp32; fp16 / bf16 dW beside a db
    # a view of a wider buffer
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    has_sub, need_b = sub_hidden is not None, need_b and bias is not None
    want_main = a != 0 and (need_h or need_w or need_b)
    want_sub = has_sub and b != 0 and (need_hs or need_w or need_b)
    want_w, want_b = need_w and (want_main or want_sub), need_b and (want_main or want_sub)

    def grad(shape, dtype, wanted):
        return hidden.new_empty(shape if wanted else (0,), dtype=dtype)

    (rows, depth), classes = hidden.shape, weight.shape[0]
    scalar = hidden.new_empty((), dtype=torch.float32)
    if chunk_loop.padded_dw(want_w, want_b, hidden.dtype):
        dw = hidden.new_empty_strided((classes, depth), (chunk_loop.padded_depth(depth), 1), dtype=acc)
    else:
        dw = grad((classes, depth), acc, want_w)
    return (
        scalar,
        scalar.clone(),
        scalar.clone(),
        grad((rows, depth), hidden.dtype, need_h and want_main),
        grad((rows, depth), hidden.dtype, need_hs and want_sub),
        dw,
        grad((classes,), acc, want_b),
        hidden.new_empty((NUM_OUT, rows), dtype=torch.float32),
        hidden.new_empty((), dtype=acc),
    )


def called_linear_loss(ctx) -> str:
    """The public function whose call made a fused-linear op's call (ops/_masksub_loss_eager.called_loss's rule):
    one branch (no sub_hidden, ctx.operands[0] false) is linear_soft_target_cross_entropy's."""
    return "linear_masksub_loss" if ctx.operands[0] else "linear_soft_target_cross_entropy"


def _grads_setup_context(ctx, inputs, output):
    hidden, sub_hidden, weight, bias, target, mean, a, b, *_, private, _chunk_rows = inputs[:15]
    bce, eps, ignore, temperature, threshold = inputs[15:]
    ctx.mark_non_differentiable(*output[3:])
    ctx.set_materialize_grads(False)  # .main alone backpropagated: no gradient for the others (no zero pass)
    # Private stored gradients (eager calls of the public functions) are held by ctx itself, not saved, so that
    # the backward can scale them in place and let them go (saved, they would fail autograd's version check in a
    # later backward through the same graph). Otherwise (a caller that reads them; AOTAutograd, make_fx) every
    # tensor the backward reads is saved, and the backward scales them out of place.
    ctx.in_place = private and not _tracing(output)
    ctx.stored = output[3:7] if ctx.in_place else None
    saved = () if ctx.in_place else output[3:7]
    ctx.save_for_backward(hidden, sub_hidden, weight, bias, target, output[7], output[8], *saved)
    ctx.options, ctx.mean, ctx.weights = (bce, eps, ignore, temperature, threshold), mean, (a, b)
    ctx.operands = (sub_hidden is not None, True, bce)  # for called_linear_loss


def _stored_factor(ctx, grad_loss, grad_main, grad_sub):
    """The scalar that turns the stored gradients of L = a main + b sub (times `scale`) into those the backward
    receives, when one does: only L's gradient g (g), or a term's alone while the other term's weight is 0 (the
    stored gradients times `scale` are then that term's times its weight: g_main / a, plus L's g). None otherwise
    (another mix of the terms)."""
    a, b = ctx.weights
    if grad_main is None and grad_sub is None:
        return grad_loss
    for g_term, weight, other_weight, other_grad in ((grad_main, a, b, grad_sub), (grad_sub, b, a, grad_main)):
        if g_term is not None and other_grad is None and other_weight == 0 and weight != 0:
            # in fp64: g / w overflows fp32 for a weight below 1 / fp32's max (its `scale` brings it back)
            term = g_term.double() / weight
            return term if grad_loss is None else grad_loss.double() + term
    return None


SCALE_BLOCK_ELEMENTS = 1 << 23  # _scaled's fp32 temporary: 8M elements (32 MiB) at most, whatever M D
SCALE_BLOCK = (16, 256)  # rows x columns of a _scale_kernel program
GRID_Y_LIMIT = 65535  # a GPU grid's blocks on axis 1: a 1-D gradient longer than this many column blocks (db of more
# than 16.7M classes) runs as one column of rows instead


@jit
def _scale_kernel(src_ptr, dst_ptr, g_ptr, rows, cols, stride_src, stride_dst, BLOCK_R: tl.constexpr,
                  BLOCK_C: tl.constexpr):  # fmt: skip
    """dst = src g in fp32 (g: an fp32 [1]), rounded once to dst's dtype: [rows, cols], unit last strides, rows
    stride_src / stride_dst apart (dst may be src: in place)."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    mask = (r < rows) & (c < cols)
    g = tl.load(g_ptr)
    x = tl.load(src_ptr + r * stride_src + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst_ptr + r * stride_dst + c, (x * g).to(dst_ptr.dtype.element_ty), mask=mask)


def _scaled(
    stored: torch.Tensor, g: torch.Tensor, in_place: bool, dtype: torch.dtype | None = None, kernel: bool = False
) -> torch.Tensor:
    """stored x g in ``dtype`` (default: stored's), g a 0-d fp32 (fp64 for fp64 stored gradients), applied in fp32
    to fp16 / bf16: a multiply of an fp16 / bf16 tensor by a 0-d CUDA tensor casts the 0-d one to fp16 / bf16 first
    (only CPU scalars keep their precision), which would round g (a weight of 0.3: a 2^-9 bias in bf16) or overflow
    it (g = w / unit > 65504 in fp16: inf, and NaN in the zero rows). ``kernel`` (the triton backend's eager
    backward): one launch of _scale_kernel per tensor, fp32 arithmetic, rounded once into the result (stored itself
    when in place and of ``dtype``). Else torch ops: fp16 / bf16 in blocks of rows through an fp32 temporary of at
    most SCALE_BLOCK_ELEMENTS, rounded once, then cast to ``dtype``."""
    dtype = dtype or stored.dtype
    low = (torch.float16, torch.bfloat16, torch.float32)
    if kernel and stored.dtype in low and dtype in low and g.dtype == torch.float32 and stored.dim() in (1, 2):
        out = stored if in_place and dtype == stored.dtype else torch.empty(stored.shape, dtype=dtype, device=g.device)
        wide = stored.dim() == 1 and cdiv(stored.numel(), SCALE_BLOCK[1]) > GRID_Y_LIMIT
        src, dst = (t if t.dim() == 2 else t.view(-1, 1) if wide else t.view(1, -1) for t in (stored, out))
        if src.numel():
            assert src.stride(-1) == 1 and dst.stride(-1) == 1
            grid = (cdiv(src.shape[0], SCALE_BLOCK[0]), cdiv(src.shape[1], SCALE_BLOCK[1]))
            _scale_kernel[grid](src, dst, g.reshape(1), *src.shape, src.stride(0), dst.stride(0), *SCALE_BLOCK)
        return out
    if stored.dtype not in (torch.float16, torch.bfloat16):
        return (stored.mul_(g) if in_place else stored * g).to(dtype)
    out = stored if in_place else torch.empty_like(stored)
    per_row = stored.numel() // max(1, stored.shape[0]) if stored.dim() else 1
    rows = max(1, SCALE_BLOCK_ELEMENTS // max(1, per_row))
    for part, into in zip(stored.split(rows), out.split(rows)):
        into.copy_(part.float().mul_(g))
    return out.to(dtype)


def _grads_backward(ctx, grad_loss, grad_main, grad_sub, *_):
    """Scale the stored gradients when they serve what arrives (_stored_factor; in place, then let go), else
    recompute per term through the recompute op's backward on the saved stats (any mix of .loss, .main, .sub, and a
    second backward through a retained graph). Inputs whose terms have no gradient get zeros, as the composite."""
    hidden, sub_hidden, weight, bias, target, stats, scale, *saved = ctx.saved_tensors
    need = ctx.needs_input_grad[:4]  # hidden, sub_hidden, weight, bias
    grads = [None, None, None, None]
    stored = saved or ctx.stored  # None once an in-place backward used them
    factor = None if stored is None else _stored_factor(ctx, grad_loss, grad_main, grad_sub)
    if factor is None and stored is not None and grad_loss is not None:
        factor, terms = grad_loss, (grad_main, grad_sub)  # L's part from the stored gradients, the rest recomputed
    elif factor is None:  # recompute all: each term's coefficient, from L's gradient and its own
        a, b = ctx.weights
        from_loss = (None, None) if grad_loss is None else tuple(None if w == 0 else grad_loss * w for w in (a, b))
        terms = tuple(x if y is None else (y if x is None else x + y) for x, y in zip((grad_main, grad_sub), from_loss))
    else:
        terms = (None, None)
    if factor is not None:
        ctx.stored = None  # used up here (eager: freed when the backward returns)
        g = factor.double() * scale.double()  # fp64: see _stored_factor
        g = g if hidden.dtype == torch.float64 else g.float()  # fp64 inputs: fp64 gradients to the last bit
        dtypes = (hidden.dtype, hidden.dtype, weight.dtype, weight.dtype)
        # eager on the triton backend (as the forward's own call would resolve it now; not recorded): one launch per
        # tensor. Meta tensors (the forward answered by its fake on any backend): torch's ops give the shapes
        kernel = ctx.in_place and hidden.device.type != "meta"
        kernel = kernel and _backend.resolve_backend(hidden.device, None, ("torch", "triton")) == "triton"
        for i, (d, dtype) in enumerate(zip(stored, dtypes)):
            absent = d.dim() == 1 and not d.numel()  # not stored ([0]); an empty batch stores [0, D]
            if need[i] and not absent:  # in place in eager: no second [M, D] (dH; dW: cast once to its dtype)
                grads[i] = _scaled(d, g, ctx.in_place, dtype, kernel)
    if terms[0] is not None or terms[1] is not None:
        for i, t in enumerate(_recomputed(ctx, terms, need, hidden, sub_hidden, weight, bias, target, stats)):
            if need[i] and t.numel():
                grads[i] = t if grads[i] is None else grads[i].add_(t)
    for i, x in enumerate((hidden, sub_hidden, weight, bias)):
        if need[i] and grads[i] is None:
            grads[i] = torch.zeros_like(x)  # its terms have weight 0 (the composite's zeros)
    return (*grads, *(None,) * 16)  # target, mean, the weights, need_*, gather, private, chunk_rows, options


def _recomputed(ctx, terms, need, hidden, sub_hidden, weight, bias, target, stats):
    """(dh, dhs, dW, db) of g_main main + g_sub sub (terms: the two scalars or None) by the recompute op's backward
    on the saved per-row stats: 3 matmul units per term."""
    from .linear_masksub_loss import _linear_loss_backward_op  # imported late: that module imports this one

    need_params = need[2] or need[3]
    rows = hidden.shape[0]
    if not ctx.mean:
        count = 1.0
    elif target.is_floating_point():
        count = float(max(rows, 1))
    else:  # counted on the device: no host sync
        count = (target != ctx.options[2]).sum().clamp_min(1).to(torch.float32)

    def per_row(g, wanted):  # the grad of each counted row's loss: g / count (mean) or g (sum)
        return None if g is None or not wanted else (g.to(torch.float32) / count).expand(rows)

    gm = per_row(terms[0], need[0] or need_params)
    gs = per_row(terms[1], sub_hidden is not None and (need[1] or need_params))
    if gm is None and gs is None:
        return ()
    gather = not chunk_loop.sync_free(hidden)  # the chunk loop on the counted rows in eager mode (backward_in_chunks)
    return _linear_loss_backward_op.from_backward(
        gm, gs, stats, hidden, sub_hidden, weight, bias, target, need[0] or need[1], need[2], need[3], gather,
        *ctx.options,
    )  # fmt: skip


_linear_loss_grads_op.register_autograd(_grads_backward, setup_context=_grads_setup_context, called=called_linear_loss)


def _grads_wanted(hidden, sub_hidden, weight, bias, target, reduction) -> tuple[bool, ...] | None:
    """(need_hidden, need_sub_hidden, need_weight, need_bias, gather) when the grads-in-forward path applies: a scalar
    reduction, grad mode on and some input requiring grad; else None (reduction='none' keeps the recompute backward,
    correct for per-row grads that differ, and a no-grad call computes no gradient).

    gather: in eager mode the number of counted rows is read on the host (one sync) and only those rows are
    computed. Under torch.compile and CUDA graph capture, which must not synchronise, probabilities (every row
    counts) take this path with gather=False (the count on the device); class ids take the recompute op, which
    computes the counted rows only without a sync: every row here would cost more where most are ignored (a masked
    LM's labels: ~85% -100, 6 units on all rows against 10 on the 15%)."""
    if reduction == "none" or not torch.is_grad_enabled():
        return None
    no_sync = chunk_loop.sync_free(hidden)
    if no_sync and not target.is_floating_point():
        return None
    need_h = hidden.requires_grad
    need_hs = sub_hidden is not None and sub_hidden.requires_grad
    need_w, need_b = weight.requires_grad, bias is not None and bias.requires_grad
    return (need_h, need_hs, need_w, need_b, not no_sync) if need_h or need_hs or need_w or need_b else None
