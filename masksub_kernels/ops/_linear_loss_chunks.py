"""Gradients in the forward: the fused-linear MaskSub loss in chunks of rows, 6 matmul units instead of 10.

When the loss is reduced to scalars (reduction 'mean' or 'sum') and a gradient will be needed, the gradient that
the backward receives for each per-row loss is one number per term (g_main / count, or g_main), the same for every
row. So the forward can compute the gradients of the *reduced* losses itself, chunk by chunk of rows, and the
backward only scales them (Liger's fused linear cross-entropy and Apple's Cut Cross-Entropy do the same):

    for each chunk of R counted rows (ignore_index rows are skipped: they cost nothing):
        z = h_c W^T + b,  s = hs_c W^T + b                                  [R, C] each, this chunk only
        losses and the stats of z, s/T, z/T; dz, ds for grad 1/count (mean) or 1 (sum) per row
        dh_c = dz W,  dhs_c = ds W                                           stored rows of dH, dHs [M, D]
        dW_main += dz^T h_c,  dW_sub += ds^T hs_c,  db_main += sum dz,  db_sub += sum ds     (fp32)
    backward(g_main, g_sub):  dh = g_main dH,  dhs = g_sub dHs,  dW = g_main dW_main + g_sub dW_sub,  db alike

That is 2 units of 2 M D C flops for the logits and 4 for the gradients: the composite's 6, against the recompute
design's 10 (ops/linear_masksub_loss.py). dW and db are kept per term because the sequential MaskSub schedule
backpropagates .main and .sub separately, with different scalars; the joint one sends both at once.

Two flavours, chosen by the op's backend:
- reference (the 'torch' backend, the CPU path): logits in fp32 (fp64 for fp64 inputs), the loss and its logit
  gradients by ops/masksub_loss.py's reference functions, chunks of chunk_rows(C) rows (CHUNK_ELEMENTS logits);
- kernels (the 'triton' backend): logits in fp32 from the inputs' dtype (cuBLAS with an fp32 output on a GPU:
  bf16 / fp16 tensor cores, never rounded to bf16), the loss and dz, ds by the fused masksub_loss Triton kernels,
  dz and ds written over the fp32 logits (fp32 inputs) or into buffers of the inputs' dtype; dW accumulated in
  fp32 (cuBLAS with an fp32 output on CUDA, fp32 operands elsewhere).

Extra memory (beyond the inputs and the returned gradients): the chunk's two [R, C] logit buffers (plus the
reference's few fp32 [R, C] temporaries), the per-row losses [2, M] fp32, and the stored gradients: dH, dHs
[M, D] in the inputs' dtype, dW_main, dW_sub [C, D] and db_main, db_sub [C] in fp32. Never [M, C].

Which rows count is read on the host (one sync on CUDA tensors: the number of counted rows), so that the matmuls
run on the counted rows only.
"""

from __future__ import annotations

import torch

from . import masksub_loss as loss_ops
from ._common import _tracing, masksub_op
from .masksub_loss import MAIN, SUB

GRADS_CHUNK_BYTES = 384 * 2**20  # the kernels' path: the chunk's logits and logit gradients, at most

GradsOut = tuple[torch.Tensor, ...]  # main, sub (fp32 0-d), dH, dHs, dW_main, dW_sub, db_main, db_sub (or [0])


def counted_rows(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """int64 ids of the rows that count (class id != ignore_index; every row for probabilities), in order."""
    if target.is_floating_point():
        return torch.arange(target.shape[0], device=target.device)
    return torch.nonzero(target != ignore_index).squeeze(1)  # a host sync on CUDA tensors: the count


def _add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc fp32 (or fp64) and a, b possibly in a lower precision, accumulated in acc's dtype."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:
        # cuBLAS: low-precision operands, fp32 accumulation and output, beta = 1 into acc (no [C, D] temporary)
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))  # the interpreter's CPU tensors: fp32 operands, exact


def _fp32_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b in fp32 [R, C] from operands in their own dtype: fp32 accumulation, never rounded to bf16."""
    if x.dtype == torch.float32 or not x.is_cuda:
        x, w = x.float(), w.float()
        return x @ w.T if b is None else torch.addmm(b.float(), x, w.T)
    z = torch.mm(x, w.T, out_dtype=torch.float32)  # cuBLAS: bf16 / fp16 tensor cores, fp32 output
    return z if b is None else z.add_(b)


def grads_in_forward(
    hidden: torch.Tensor,
    sub_hidden: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    mean: bool,
    need_hidden: bool,
    need_sub_hidden: bool,
    need_weight: bool,
    options: tuple,
    *,
    rows_per_chunk: int,
    kernels: bool,
) -> GradsOut:
    """The reduced losses and their stored gradients (module docstring).

    hidden, sub_hidden [M, D], weight [C, D], bias [C] or None; target [M] ids or [M, C] probabilities. mean:
    reduction 'mean' (else 'sum'). need_*: which gradients to store (the others come back as empty [0] tensors).
    options: (bce, label_smoothing, ignore_index, temperature, target_threshold). kernels: the Triton flavour (else
    the reference). Returns (main, sub, dH, dHs, dW_main, dW_sub, db_main, db_sub): main, sub fp32 0-d; dH, dHs in
    hidden's dtype; dW, db in fp32 (fp64 for fp64 inputs on the reference)."""
    (rows, depth), classes = hidden.shape, weight.shape[0]
    device, has_sub = hidden.device, sub_hidden is not None
    acc = torch.float64 if hidden.dtype == torch.float64 and not kernels else torch.float32
    # the matmuls of the gradients: the inputs' dtype on the kernels' path (fp16 / bf16 tensor cores, fp32
    # accumulation; dz and ds rounded once, as the composite's), the accumulation dtype on the reference
    operand = hidden.dtype if kernels and hidden.dtype in (torch.float16, torch.bfloat16) else acc
    # the main term reaches h, W, b through z; the sub term reaches hs, W, b through s (its teacher is detached)
    want_main, want_sub = need_hidden or need_weight, has_sub and (need_sub_hidden or need_weight)
    ids = counted_rows(target, options[2])
    grad = 1.0 / max(ids.numel(), 1) if mean else 1.0  # d(reduced loss) / d(row loss): 1/count or 1

    def zeros(shape, dtype, wanted):
        return torch.zeros(shape, dtype=dtype, device=device) if wanted else hidden.new_empty(0)

    dh = zeros((rows, depth), hidden.dtype, need_hidden and want_main)
    dhs = zeros((rows, depth), hidden.dtype, need_sub_hidden and want_sub)
    dw_main = zeros((classes, depth), acc, need_weight and want_main)
    dw_sub = zeros((classes, depth), acc, need_weight and want_sub)
    has_db = need_weight and bias is not None
    db_main, db_sub = zeros(classes, acc, has_db and want_main), zeros(classes, acc, has_db and want_sub)
    losses = torch.zeros(2, rows, dtype=torch.float32, device=device)  # per row; ignored rows stay 0
    w = weight.to(operand)
    w_acc, b_acc = weight.to(acc), None if bias is None else bias.to(acc)

    def reference_logits(x):
        return x.to(acc) @ w_acc.T if b_acc is None else torch.addmm(b_acc, x.to(acc), w_acc.T)

    for chunk in ids.split(max(1, rows_per_chunk)):
        h_c = hidden.index_select(0, chunk)
        hs_c = sub_hidden.index_select(0, chunk) if has_sub else None
        y = target.index_select(0, chunk)
        g = torch.full((1,), grad, dtype=torch.float32, device=device).expand(chunk.numel())  # one scalar per row
        g_main, g_sub = g if want_main else None, g if want_sub else None
        if kernels:
            # fp32 logits (never rounded to bf16: the values keep fp32 accuracy), the fused loss kernels on them,
            # dz and ds written by the backward kernel over the logits (fp32) or into buffers of the inputs' dtype
            z = _fp32_logits(h_c, weight, bias)
            s = _fp32_logits(hs_c, weight, bias) if has_sub else None
            out = loss_ops._forward_triton(z, s, y, *options)  # fp32 [9, R]
            into = (z, s)
            if operand != torch.float32:
                into = tuple(None if x is None else torch.empty_like(x, dtype=operand) for x in (z, s))
            dz, ds = loss_ops._backward_triton(g_main, g_sub, out, z, s, y, *options, into=into)
            del into
        else:
            z, s = reference_logits(h_c), reference_logits(hs_c) if has_sub else None
            out = loss_ops.loss_forward_reference(z, s, y, *options)
            dz, ds = loss_ops.loss_backward_reference(g_main, g_sub, out, z, s, y, *options)
        losses[:, chunk] = out[MAIN : SUB + 1]
        for d, x, dx, dw, db in ((dz, h_c, dh, dw_main, db_main), (ds, hs_c, dhs, dw_sub, db_sub)):
            if not d.numel():
                continue  # this term's gradient is not wanted (or the chunk is empty)
            if dx.numel():
                dx.index_copy_(0, chunk, (d @ w).to(dx.dtype))  # [R, D]: fp32 accumulation, one rounding
            if dw.numel():
                _add_matmul(dw, d.T, x.to(operand))  # [C, D] += [C, R] @ [R, D]
            if db.numel():
                db += d.sum(0, dtype=acc)
        del z, s, dz, ds, out  # the chunk's buffers go before the next chunk's are made

    main, sub = losses[MAIN].sum(), losses[SUB].sum()
    if mean:  # the public functions' mean: the sum over counted rows / max(count, 1)
        main, sub = main * grad, sub * grad
    return main, sub, dh, dhs, dw_main, dw_sub, db_main, db_sub


# ----------------------------------------------------------------------------------------------------------------
# Gradients in the forward (ops/_linear_loss_py): 6 matmul units when the losses are reduced to scalars
# ----------------------------------------------------------------------------------------------------------------


def grads_chunk_rows(classes: int, dtype: torch.dtype) -> int:
    """Rows per chunk of the kernels' path: the chunk's buffers, 2 R C fp32 logits and (fp16 / bf16 inputs) 2 R C
    gradients in the inputs' dtype, within GRADS_CHUNK_BYTES; a power of two from 64 rows up (R = 1024 at
    C = 30522 in bf16: 358 MiB)."""
    per_row = 2 * classes * (4 + (2 if dtype in (torch.float16, torch.bfloat16) else 0))
    rows = max(1, GRADS_CHUNK_BYTES // per_row)
    return 1 << (rows.bit_length() - 1) if rows >= 64 else rows


def _grads_reference(hidden, sub_hidden, weight, bias, target, mean, need_h, need_hs, need_w, *options):
    from .linear_masksub_loss import chunk_rows  # the recompute reference's chunks (imported late: it imports us)

    return grads_in_forward(
        hidden, sub_hidden, weight, bias, target, mean, need_h, need_hs, need_w, options,
        rows_per_chunk=chunk_rows(weight.shape[0]), kernels=False,
    )  # fmt: skip


def _grads_triton(hidden, sub_hidden, weight, bias, target, mean, need_h, need_hs, need_w, *options):
    return grads_in_forward(
        hidden, sub_hidden, weight, bias, target, mean, need_h, need_hs, need_w, options,
        rows_per_chunk=grads_chunk_rows(weight.shape[0], hidden.dtype), kernels=True,
    )  # fmt: skip


@masksub_op(
    "linear_masksub_loss_grads",
    device="hidden",
    torch=_grads_reference,
    triton=_grads_triton,  # cuBLAS matmuls + the masksub_loss Triton kernels on each chunk's logits
    cuda=None,
    records=("linear_masksub_loss",),
)
def _linear_loss_grads_op(
    hidden: torch.Tensor,
    sub_hidden: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    mean: bool,
    need_hidden: bool,
    need_sub_hidden: bool,
    need_weight: bool,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    """(main, sub, dH, dHs, dW_main, dW_sub, db_main, db_sub): the reduced losses (fp32 0-d; mean or sum) and
    their gradients stored for the backward (ops/_linear_loss_py); an unneeded one is an empty [0]."""


@_linear_loss_grads_op.register_fake
def _(hidden, sub_hidden, weight, bias, target, mean, need_h, need_hs, need_w, *options):
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    has_sub, has_b = sub_hidden is not None, bias is not None
    want_main, want_sub = need_h or need_w, has_sub and (need_hs or need_w)

    def grad(shape, dtype, wanted):
        return hidden.new_empty(shape if wanted else (0,), dtype=dtype)

    (rows, depth), classes = hidden.shape, weight.shape[0]
    return (
        hidden.new_empty((), dtype=torch.float32),
        hidden.new_empty((), dtype=torch.float32),
        grad((rows, depth), hidden.dtype, need_h and want_main),
        grad((rows, depth), hidden.dtype, need_hs and want_sub),
        grad((classes, depth), acc, need_w and want_main),
        grad((classes, depth), acc, need_w and want_sub),
        grad((classes,), acc, need_w and has_b and want_main),
        grad((classes,), acc, need_w and has_b and want_sub),
    )


def _grads_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)  # .main alone backpropagated: no gradient for sub (no zero-scaled pass)
    ctx.save_for_backward(*output[2:])
    ctx.weight_dtype = inputs[2].dtype


def _grads_backward(ctx, grad_main, grad_sub, *_):
    """Scale the stored gradients by the scalars of the reduced losses: d = g_main d_main + g_sub d_sub."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not _tracing((grad_main, grad_sub)):
        raise RuntimeError(
            "linear_masksub_loss: double backward is not supported (its gradients were computed in the forward)"
        )
    dh, dhs, dw_main, dw_sub, db_main, db_sub = ctx.saved_tensors
    need_h, need_hs, need_w, need_b = ctx.needs_input_grad[:4]

    def scaled(d, g):
        absent = d.dim() == 1 and not d.numel()  # not stored ([0]); an empty batch stores [0, D]
        return None if g is None or absent else d * g.to(torch.float32)

    def combined(d_main, d_sub, wanted):
        terms = [t for t in (scaled(d_main, grad_main), scaled(d_sub, grad_sub)) if t is not None]
        if not wanted or not terms:
            return None
        return (terms[0] if len(terms) == 1 else terms[0].add_(terms[1])).to(ctx.weight_dtype)

    dh_out, dhs_out = scaled(dh, grad_main), scaled(dhs, grad_sub)
    return (
        dh_out.to(dh.dtype) if need_h and dh_out is not None else None,
        dhs_out.to(dhs.dtype) if need_hs and dhs_out is not None else None,
        combined(dw_main, dw_sub, need_w),
        combined(db_main, db_sub, need_b),
        *(None,) * 10,
    )


_linear_loss_grads_op.register_autograd(_grads_backward, setup_context=_grads_setup_context)


def _grads_wanted(hidden, sub_hidden, weight, bias, reduction) -> tuple[bool, bool, bool] | None:
    """(need_hidden, need_sub_hidden, need_weight) when the grads-in-forward path applies: a scalar reduction, grad
    mode on and some input requiring grad; else None (reduction='none' keeps the recompute backward, correct for
    per-row grads that differ, and a no-grad call computes no gradient). Under torch.compile and CUDA graph capture
    the recompute op is used too: this path reads the number of counted rows on the host (one sync), which a
    captured graph cannot do; the recompute op never synchronises."""
    if reduction == "none" or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    if hidden.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    need_h = hidden.requires_grad
    need_hs = sub_hidden is not None and sub_hidden.requires_grad
    need_w = weight.requires_grad or (bias is not None and bias.requires_grad)
    return (need_h, need_hs, need_w) if need_h or need_hs or need_w else None
