"""The MaskSub loss reduced on the device: the per-row op of masksub_loss.py and its 'mean' / 'sum' in one op.

Why: at ImageNet shapes the loss is host-bound. On an H200 (benchmarks/results/GPU-NVIDIA-H200-2026-11-30.md) the
M = 1024, C = 1000 loss took ~0.26 ms of host time per forward against 0.048 ms of kernels: the reduction after
the op (select the two loss rows, count the rows that count, two sums, a division each, the weighted sum: ~12
small torch ops, each a launch) and its autograd (~9 more nodes and launches) cost more than the kernels. Here the
reduction is one launch in the forward and one in the backward:

    forward   out = the per-row op (fp32 [9, M]: per-row main and sub losses, the softmax stats)
              reduced = (a main + b sub, main, sub, d)  fp32 [4],  main = sum_i out[MAIN, i] / d (sub alike)
              d = max(rows that count, 1) for 'mean' (class ids != ignore_index; every row otherwise), 1 for 'sum'
    backward  g [4] (the gradients of the three losses; entry 3, d, gets none)
              per-row gradients g_main = (a g_0 + g_1) / d, g_sub = (b g_0 + g_2) / d: the same for every row, so
              the per-row op's backward reads them as [M] vectors of row stride 0 (no [M] tensor is written)

a, b: main_weight, sub_weight. The op returns (reduced, out): out is what the per-row backward reads (the op's
output so that it can be saved; it gets no gradient). The sums run in a fixed order (deterministic). An absent term
(no target, or no sub logits) has per-row values 0, so its loss is 0.

Backends: triton launches the per-row forward kernel and one single-program reduction kernel (the backward: one
single-program kernel for the two row gradients, then the per-row backward kernel); torch and cuda reduce with
torch ops around their per-row implementations; the torch backend in eager mode runs
_masksub_loss_eager.reduced_loss_eager (the CPU path: the reduction folded into its own autograd).
"""

from __future__ import annotations

import torch

from .._triton import jit, next_power_of_2, tl
from ._common import masksub_op
from .masksub_loss import MAIN, NUM_OUT, SUB, _forward_triton, _loss_backward_op, loss_forward_reference

NUM_REDUCED = 4  # loss, main, sub, d
REDUCE_BLOCK = 1024  # rows per iteration of the reduction's single program

# ----------------------------------------------------------------------------------------------------------------
# Reference (PyTorch): the reduction and the row gradients, also the cuda backend's (around the extension's op)
# ----------------------------------------------------------------------------------------------------------------


def divisor(target: torch.Tensor | None, ignore_index: int, rows: int, mean: bool, device) -> torch.Tensor:
    """fp32 0-d d: max(rows that count, 1) for a mean (a device tensor: no sync), 1 for a sum."""
    if not mean:
        return torch.ones((), dtype=torch.float32, device=device)
    if target is None or target.is_floating_point():
        return torch.full((), float(max(rows, 1)), dtype=torch.float32, device=device)
    return (target != ignore_index).sum().clamp_min(1).to(torch.float32)


def reduce_reference(out, target, ignore_index, main_weight, sub_weight, mean) -> torch.Tensor:
    """fp32 [4] (a main + b sub, main, sub, d) from the per-row op's out [9, M]."""
    d = divisor(target, ignore_index, out.shape[1], mean, out.device)
    terms = out[MAIN : SUB + 1].sum(1) / d
    return torch.stack((main_weight * terms[0] + sub_weight * terms[1], terms[0], terms[1], d))


def row_grads_reference(grad, reduced, main_weight, sub_weight) -> torch.Tensor:
    """fp32 [2]: the per-row gradients (g_main, g_sub) = ((a g_0 + g_1) / d, (b g_0 + g_2) / d)."""
    g = grad.to(torch.float32)
    return torch.stack((main_weight * g[0] + g[1], sub_weight * g[0] + g[2])) / reduced[3]


def forward_reference(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    """(reduced fp32 [4], out fp32 [9, M]) by masksub_loss.py's reference and reduce_reference."""
    out = loss_forward_reference(logits, sub_logits, target, bce, eps, ignore, temperature, threshold)
    return reduce_reference(out, target, ignore, a, b, mean), out


def _forward_cuda(extension, logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    out = extension.masksub_loss_forward(logits, sub_logits, target, bce, eps, ignore, temperature, threshold)
    return reduce_reference(out, target, ignore, a, b, mean), out


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels: one program each (the work is O(M) scalars)
# ----------------------------------------------------------------------------------------------------------------


@jit
def _reduce_kernel(
    out_ptr,  # fp32 [9, M], the per-row op's output (rows MAIN and SUB read)
    y_ptr,  # class ids [M] (LABELS), else unused
    red_ptr,  # fp32 [4] out: a main + b sub, main, sub, d
    M,
    ignore_index,
    rows_d,  # max(M, 1) as a float: d for a mean without class ids
    main_weight,
    sub_weight,
    LABELS: tl.constexpr,  # count the rows whose id is not ignore_index (else every row counts)
    MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    lanes = tl.arange(0, BLOCK)
    main = tl.zeros([BLOCK], tl.float32)
    sub = tl.zeros([BLOCK], tl.float32)
    count = tl.zeros([BLOCK], tl.int32)
    m64 = tl.program_id(0).to(tl.int64) * 0 + M  # the SUB row's offset, int64 (out has 9 M elements)
    for start in range(0, M, BLOCK):  # per-lane partial sums in a fixed order, summed once: deterministic
        rows = start + lanes
        in_rows = rows < M
        main += tl.load(out_ptr + MAIN * m64 + rows, mask=in_rows, other=0.0)
        sub += tl.load(out_ptr + SUB * m64 + rows, mask=in_rows, other=0.0)
        if LABELS:
            label = tl.load(y_ptr + rows, mask=in_rows, other=0).to(tl.int64)
            count += (in_rows & (label != ignore_index)).to(tl.int32)
    d = 1.0
    if MEAN:
        d = rows_d
        if LABELS:
            d = tl.maximum(tl.sum(count, axis=0), 1).to(tl.float32)
    main_loss = tl.sum(main, axis=0) / d
    sub_loss = tl.sum(sub, axis=0) / d
    tl.store(red_ptr, main_weight * main_loss + sub_weight * sub_loss)
    tl.store(red_ptr + 1, main_loss)
    tl.store(red_ptr + 2, sub_loss)
    tl.store(red_ptr + 3, d)


@jit
def _row_grads_kernel(grad_ptr, stride_g, red_ptr, rows_ptr, main_weight, sub_weight):
    # grad [4] (any float dtype and stride: autograd's), reduced [4]: rows [2] = ((a g0 + g1) / d, (b g0 + g2) / d)
    g0 = tl.load(grad_ptr).to(tl.float32)
    g1 = tl.load(grad_ptr + stride_g).to(tl.float32)
    g2 = tl.load(grad_ptr + 2 * stride_g).to(tl.float32)
    d = tl.load(red_ptr + 3)
    tl.store(rows_ptr, (main_weight * g0 + g1) / d)
    tl.store(rows_ptr + 1, (sub_weight * g0 + g2) / d)


def _forward_triton_reduced(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    out = _forward_triton(logits, sub_logits, target, bce, eps, ignore, temperature, threshold)
    reduced = torch.empty(NUM_REDUCED, dtype=torch.float32, device=out.device)
    labels = target is not None and not target.is_floating_point()
    rows = out.shape[1]
    block = min(REDUCE_BLOCK, max(16, next_power_of_2(rows)))
    args = (out, target if labels else out, reduced, rows, ignore, float(max(rows, 1)), a, b)
    _reduce_kernel[(1,)](*args, LABELS=labels, MEAN=mean, BLOCK=block)
    return reduced, out


def _row_grads_triton(grad, reduced, main_weight, sub_weight):
    rows = torch.empty(2, dtype=torch.float32, device=grad.device)
    _row_grads_kernel[(1,)](grad, grad.stride(0), reduced, rows, main_weight, sub_weight, num_warps=1)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Custom ops and autograd
# ----------------------------------------------------------------------------------------------------------------


@masksub_op(
    "masksub_loss_reduced",
    device="logits",
    torch=forward_reference,
    triton=_forward_triton_reduced,
    cuda=_forward_cuda,
    records=("masksub_loss",),
)
def _reduced_loss_op(
    logits: torch.Tensor,
    sub_logits: torch.Tensor | None,
    target: torch.Tensor | None,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
    main_weight: float,
    sub_weight: float,
    mean: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [4] (loss, main, sub, d), fp32 [NUM_OUT, M] the per-row op's output)."""


@_reduced_loss_op.register_fake
def _(logits, *options):
    return logits.new_empty(NUM_REDUCED, dtype=torch.float32), logits.new_empty(
        NUM_OUT, logits.shape[0], dtype=torch.float32
    )


@masksub_op(
    "masksub_loss_row_grads",
    device="grad",
    torch=row_grads_reference,
    triton=_row_grads_triton,
    cuda=lambda extension, *args: row_grads_reference(*args),
    records=("masksub_loss",),
)
def _row_grads_op(grad: torch.Tensor, reduced: torch.Tensor, main_weight: float, sub_weight: float) -> torch.Tensor:
    """fp32 [2]: the per-row gradients of the main and sub terms for the gradient ``grad`` [4] of the reduced op."""


@_row_grads_op.register_fake
def _(grad, *args):
    return grad.new_empty(2, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    logits, sub_logits, target, *options = inputs
    reduced, out = output
    ctx.mark_non_differentiable(out)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(logits, sub_logits, target, reduced, out)
    ctx.options = options  # bce, label_smoothing, ignore_index, temperature, target_threshold, a, b, mean


def _backward(ctx, grad_reduced, grad_out):
    logits, sub_logits, target, reduced, out = ctx.saved_tensors
    *options, main_weight, sub_weight, _ = ctx.options
    need_dmain = grad_reduced is not None and ctx.needs_input_grad[0] and target is not None
    need_dsub = grad_reduced is not None and ctx.needs_input_grad[1] and sub_logits is not None
    if not (need_dmain or need_dsub):
        return (None,) * 11
    rows = _row_grads_op(grad_reduced, reduced, main_weight, sub_weight)
    m = logits.shape[0]
    grad_main = rows[0].expand(m) if need_dmain else None
    grad_sub = rows[1].expand(m) if need_dsub else None
    dz, ds = _loss_backward_op(grad_main, grad_sub, out, logits, sub_logits, target, *options)
    return (dz if need_dmain else None), (ds if need_dsub else None), *(None,) * 9


_reduced_loss_op.register_autograd(_backward, setup_context=_setup_context)
