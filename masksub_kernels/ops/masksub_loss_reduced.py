"""The MaskSub loss reduced on the device: the per-row op of masksub_loss.py and its 'mean' / 'sum' in one op.

Why: at ImageNet shapes the loss is host-bound. On an H200 (benchmarks/results/GPU-NVIDIA-H200-2026-11-30.md) the
M = 1024, C = 1000 loss took ~0.26 ms of host time per forward against 0.048 ms of kernels: the reduction after
the per-row op (select the two loss rows, count the rows that count, two sums, a division each, the weighted sum:
~12 small torch ops, each a launch) and its autograd (~9 more nodes and launches) cost more than the kernels. Here
the reduction happens inside the per-row kernels' launches:

    forward   out = the per-row losses and softmax stats (fp32 [9, M], as masksub_loss.py's op)
              reduced = (a main + b sub, main, sub, d)  fp32 [4],  main = sum_i out[MAIN, i] / d (sub alike)
              d = max(rows that count, 1) for 'mean' (class ids != ignore_index; every row otherwise), 1 for 'sum'
    backward  g [4] (the gradients of the three losses; d gets none)
              per-row gradients g_main = (a g_0 + g_1) / d, g_sub = (b g_0 + g_2) / d: the same for every row

a, b: main_weight, sub_weight. The op returns (reduced, out, d): out and d [1] are what the backward reads (outputs
so that they can be saved; they get no gradient). The backward saves d, not reduced: the public losses are views of
reduced, which a caller may change in place (``loss /= accumulation_steps``). An absent term (no target, or no sub
logits) has per-row values 0, so its loss is 0. The sum runs in a fixed order: deterministic.

Backends: triton runs the per-row forward kernel with REDUCE (the last row to finish sums the rows:
_masksub_loss_kernels._reduce_rows) and the per-row backward kernel with REDUCED (each program computes its row's
gradient from g and d: _row_grad): one launch each way, as the per-row op. cuda likewise (the extension's
masksub_loss_reduced_forward / _backward: csrc/masksub_loss.cu's reduce_rows, masksub_loss_backward.cu's
row_grad; one launch each way and the forward's zeroed tickets, a fill). torch reduces with torch ops around its
per-row implementation (reduce_reference, row_grads_reference). The torch backend in eager mode runs
_masksub_loss_eager.reduced_loss_eager instead (the CPU path: the reduction folded into its own autograd).
"""

from __future__ import annotations

import torch

from ._common import masksub_op
from ._loss_checks import check_reduced_backward_op, check_reduced_loss_op
from ._masksub_loss_eager import called_loss, reduced_loss_eager
from .masksub_loss import (
    MAIN,
    NUM_OUT,
    SUB,
    _backward_triton,
    _forward_triton,
    loss_backward_reference,
    loss_forward_reference,
)

NUM_REDUCED = 4  # loss, main, sub, d

# ----------------------------------------------------------------------------------------------------------------
# Reference (PyTorch): the reduction and the row gradients
# ----------------------------------------------------------------------------------------------------------------


def divisor(target: torch.Tensor | None, ignore_index: int, rows: int, mean: bool, device) -> torch.Tensor:
    """fp32 0-d d: max(rows that count, 1) for a mean (a device tensor: no sync), 1 for a sum."""
    if not mean:
        return torch.ones((), dtype=torch.float32, device=device)
    if target is None or target.is_floating_point():
        return torch.full((), float(max(rows, 1)), dtype=torch.float32, device=device)
    return (target != ignore_index).sum().clamp_min(1).to(torch.float32)


def reduce_reference(out, target, ignore_index, main_weight, sub_weight, mean) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [4] (a main + b sub, main, sub, d), fp32 [1] d) from the per-row op's out [9, M]."""
    d = divisor(target, ignore_index, out.shape[1], mean, out.device)
    terms = out[MAIN : SUB + 1].sum(1) / d
    return torch.stack((main_weight * terms[0] + sub_weight * terms[1], terms[0], terms[1], d)), d.reshape(1)


def row_grads_reference(grad, d, main_weight, sub_weight, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-row gradients [M] (row stride 0) of the main and sub terms: (a g_0 + g_1) / d, (b g_0 + g_2) / d."""
    g = grad.to(torch.float32)
    both = torch.stack((main_weight * g[0] + g[1], sub_weight * g[0] + g[2])) / d[0]
    return both[0].expand(rows), both[1].expand(rows)


def _forward_reference(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    out = loss_forward_reference(logits, sub_logits, target, bce, eps, ignore, temperature, threshold)
    reduced, d = reduce_reference(out, target, ignore, a, b, mean)
    return reduced, out, d


def _forward_cuda(extension, logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    options = (bce, eps, ignore, temperature, threshold)
    return tuple(extension.masksub_loss_reduced_forward(logits, sub_logits, target, *options, a, b, mean))


def _forward_triton_reduced(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    return _forward_triton(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, reduce=(a, b, mean))


def _eager(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean):
    """The torch backend in eager mode: reduced_loss_eager (its own autograd; it saves neither output), d a view."""
    reduced, out = reduced_loss_eager(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, a, b, mean)
    return reduced, out, reduced.detach()[3:]


def _per_row_grads(backward, grad, need_main, need_sub, d, out, logits, sub_logits, target, options, a, b):
    """A per-row backward (the reference's or the extension's) on the row gradients of row_grads_reference."""
    grad_main, grad_sub = row_grads_reference(grad, d, a, b, logits.shape[0])
    grad_main, grad_sub = grad_main if need_main else None, grad_sub if need_sub else None
    return backward(grad_main, grad_sub, out, logits, sub_logits, target, *options)


def _backward_reference(grad, need_main, need_sub, d, out, logits, sub_logits, target, *rest):
    *options, a, b = rest
    args = (grad, need_main, need_sub, d, out, logits, sub_logits, target, options, a, b)
    return _per_row_grads(loss_backward_reference, *args)


def _backward_cuda(extension, grad, need_main, need_sub, d, out, logits, sub_logits, target, *rest):
    return tuple(extension.masksub_loss_reduced_backward(grad, need_main, need_sub, d, out, logits, sub_logits, target,
                                                         *rest))  # fmt: skip


def _backward_triton_reduced(grad, need_main, need_sub, d, out, logits, sub_logits, target, *rest):
    *options, a, b = rest
    grad_main, grad_sub = grad if need_main else None, grad if need_sub else None
    return _backward_triton(grad_main, grad_sub, out, logits, sub_logits, target, *options, reduced=(d, a, b))


# ----------------------------------------------------------------------------------------------------------------
# Custom ops and autograd
# ----------------------------------------------------------------------------------------------------------------


@masksub_op(
    "masksub_loss_reduced",
    device="logits",
    torch=_forward_reference,
    triton=_forward_triton_reduced,
    cuda=_forward_cuda,
    records=("masksub_loss",),
    torch_eager=_eager,
    check=check_reduced_loss_op,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 [4] (loss, main, sub, d), fp32 [NUM_OUT, M] the per-row op's output, fp32 [1] d)."""


@_reduced_loss_op.register_fake
def _(logits, *options):
    reduced, d = (logits.new_empty(n, dtype=torch.float32) for n in (NUM_REDUCED, 1))
    return reduced, logits.new_empty(NUM_OUT, logits.shape[0], dtype=torch.float32), d


@masksub_op(
    "masksub_loss_reduced_backward",
    device="logits",
    torch=_backward_reference,
    triton=_backward_triton_reduced,
    cuda=_backward_cuda,
    records=("masksub_loss",),
    check=check_reduced_backward_op,
)
def _reduced_backward_op(
    grad: torch.Tensor,
    need_main: bool,
    need_sub: bool,
    d: torch.Tensor,
    out: torch.Tensor,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d logits, d sub_logits) for the gradient ``grad`` [4] of the reduced losses, each [0] when not needed."""


@_reduced_backward_op.register_fake
def _(grad, need_main, need_sub, d, out, logits, *options):
    return tuple(logits.new_empty(logits.shape if need else (0,)) for need in (need_main, need_sub))


def _setup_context(ctx, inputs, output):
    logits, sub_logits, target, *options = inputs
    _, out, d = output
    ctx.mark_non_differentiable(out, d)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(logits, sub_logits, target, d, out)
    ctx.options = options[:-1]  # bce, label_smoothing, ignore_index, temperature, target_threshold, a, b
    ctx.operands = (sub_logits is not None, target is not None, options[0])  # for called_loss


def _backward(ctx, grad_reduced, grad_out, grad_d):
    logits, sub_logits, target, d, out = ctx.saved_tensors
    # the main term's gradient only reaches the main logits: the sub term's teacher is detached
    need_main = grad_reduced is not None and ctx.needs_input_grad[0] and target is not None
    need_sub = grad_reduced is not None and ctx.needs_input_grad[1] and sub_logits is not None
    if not (need_main or need_sub):
        return (None,) * 11
    args = (grad_reduced, need_main, need_sub, d, out, logits, sub_logits, target, *ctx.options)
    dz, ds = _reduced_backward_op.from_backward(*args)
    return (dz if need_main else None), (ds if need_sub else None), *(None,) * 9


_reduced_loss_op.register_autograd(_backward, setup_context=_setup_context, called=called_loss)
