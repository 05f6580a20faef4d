"""The torch backend's eager path of the MaskSub loss (the CPU path): masksub_loss.py's reference maths, with
what the backward needs saved by the forward instead of recomputed. masksub_loss.py's reference functions stay
the compiled op and the oracle the tests compare this path against (tests/ops/test_masksub_loss_eager.py);
the names _mask_rows, _soft_ce, ... in the comments are theirs.
"""

from __future__ import annotations

import torch

from . import masksub_loss as ref  # the reference (read at call time: that module imports this one)

# masksub_loss.py's reference is the op's exact output, stats included, for the kernels' layout, and its backward
# recomputes both softmaxes and masks [M, C] gradients with selects: about twice the [M, C] passes of the eager
# code it replaces (issue 12: 0.5x at M=256, C=1000 on a CPU). In eager mode the torch backend runs this
# autograd.Function instead (MaskSubOp's torch_eager): the same per-row losses from the same formulas, and, when a
# gradient is asked for, the forward also forms that term's bracket of loss_backward_reference (p S - w, q - p,
# sigmoid - w) from the softmaxes it has at hand (the teacher softmax(z) is the main term's p at T = 1), so the
# backward is one multiply per gradient (the eager code it replaces keeps as many [M, C] tensors). Softmaxes are
# torch.softmax, as in the reference's backward: the gradient p - onehot cancels where p is near 1, and the same
# roundings give the same gradients. Its output rows C_Z..LOG_L_T are NaN: those are the kernels' private state
# for their backward, never read here. The reference functions stay the compiled op's torch implementation and the
# oracle the tests compare this path against.
#
# Rows: a gradient row is g_i * (its softmax terms), with g_i replaced by 0 for an ignored row and NaN for a class
# id out of range: the reference's [M, C] selects, folded into an [M] one. 0 * (softmax terms) is exactly 0
# unless those are not finite (an ignored row of -inf or +inf logits): the [M, C] select then still runs, always
# off the CPU (knowing would sync), on the CPU only when some row is ignored.


class _Rows:
    """The per-row masking of one call: ``keep`` (the row counts and its class id is in range), ``fill`` (0 for an
    ignored row, NaN for a bad one) and whether an [M, C] gradient needs the select; all None for targets without
    class ids (every row counts)."""

    def __init__(self, target: torch.Tensor | None, ignore_index: int, shape, device):
        self.keep = self.fill = None
        self.select = False
        if target is not None and not target.is_floating_point():
            valid, bad = ref._row_masks(target, ignore_index, shape, device)
            self.keep, self.fill = valid & ~bad, torch.where(bad, torch.nan, 0.0)
            self.select = device.type != "cpu" or bool((~valid).any())

    def values(self, values: torch.Tensor) -> torch.Tensor:
        """_mask_rows(values, valid, bad) for [M] values."""
        return values if self.keep is None else torch.where(self.keep, values, self.fill.to(values.dtype))

    def grad(self, grad: torch.Tensor) -> torch.Tensor:
        """_mask_rows(grad, valid, bad) for an [M, C] gradient whose rows were scaled by ``values(g)``."""
        return ref._mask_rows(grad, self.keep[:, None], self.fill.isnan()[:, None]) if self.select else grad


def _soft_ce_lean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """_soft_ce(log_softmax(x), w), the products written over the log-probabilities (no select, no [M, C] tensor
    more), the same sums. A NaN row may be a 0 * -inf (a class without weight on a -inf logit), which _soft_ce
    counts as 0: then _soft_ce runs. The check reads one bool on CPU tensors (no sync there); on other devices
    _soft_ce always runs."""
    log_p = torch.log_softmax(x, dim=1)
    if x.device.type != "cpu":
        return ref._soft_ce(log_p, w)
    values = -log_p.mul_(w).sum(1)
    return values if not bool(values.isnan().any()) else ref._soft_ce(torch.log_softmax(x, dim=1), w)


def _weights_lean(target: torch.Tensor, classes: int, eps: float, threshold: float | None, dtype) -> torch.Tensor:
    """_target_weights, bit for bit, skipping the passes that change nothing ((1 - 0) q + 0 is q)."""
    if eps != 0 or not target.is_floating_point():
        return ref._target_weights(target, classes, eps, threshold, dtype)
    q = target.to(dtype)
    return q if threshold is None else (q > threshold).to(dtype)


def _eager_forward(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, keep):
    """(out [NUM_OUT, M] fp32, (d_z, d_s), rows): the per-row losses as loss_forward_reference gives them, the stats
    rows NaN. ``keep`` = (main gradient needed, sub gradient needed): then d_z / d_s is the term's gradient per
    unit of its row's grad_output, loss_backward_reference's bracket (p S - w, sigmoid(z) - w, q - p), computed
    here from the softmaxes the forward has anyway, so that the backward is one multiply per gradient."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    classes = z.shape[1]
    rows = _Rows(target, ignore, z.shape, z.device)
    main = sub = None  # an absent term: a row of zeros
    keep_main, keep_sub = keep
    d_z = d_s = p_z = None  # p_z: softmax(z), when computed
    if target is not None:
        ids = not target.is_floating_point()
        if bce:
            w = ref._target_weights(target, classes, eps, threshold, acc)
            main = ref._bce_terms(z, w).mean(1)
            d_z = torch.sigmoid(z).sub_(w) if keep_main else None
        else:
            w = None if ids else _weights_lean(target, classes, eps, threshold, acc)
            if keep_main or (sub_logits is not None and temperature == 1):
                p_z = torch.softmax(z, dim=1)  # the reference backward's softmax(z), bit for bit
            if ids and not eps and p_z is not None:
                # -log_softmax(z)_y = (c - z_y) + log l with c = max z: p's largest entry is exp(0) / l, so
                # log l = -log max p, two row maxima instead of a log_softmax pass. The rounding of 1 / l adds
                # half an ulp of relative error to l, as its own sum has: the same fp32 accuracy.
                column = z.gather(1, target.long().clamp(0, classes - 1)[:, None])[:, 0]
                main = (z.amax(1) - column).sub_(torch.log(p_z.amax(1)))
            elif ids and not eps:  # _class_id_ce's 0 - 1 * logp[y], bit for bit, in one gather and one subtraction
                main = 0.0 - torch.log_softmax(z, dim=1).gather(1, target.long().clamp(0, classes - 1)[:, None])[:, 0]
            else:
                main = ref._class_id_ce(torch.log_softmax(z, dim=1), target, eps) if ids else _soft_ce_lean(z, w)
            if keep_main and not ids:  # p S - w, S = sum_c w_c
                d_z = (p_z * w.sum(1, keepdim=True)).sub_(w)
            elif keep_main and eps:  # p S - eps / C; the one-hot part is the backward's scatter (see there)
                in_range = ((target >= 0) & (target < classes))[:, None]  # only rows that count matter (g = 0, NaN)
                d_z = (p_z * ((1 - eps) * in_range + eps)).sub_(eps / classes)
            elif keep_main:  # S = 1 in a row that counts: p
                d_z = p_z
        main = rows.values(main)
    if sub_logits is not None:
        x, zt = sub_logits.to(acc), z
        if temperature != 1:
            x, zt = x / temperature, z / temperature
        if bce:
            p_t = torch.sigmoid(zt)
            sub = ref._bce_terms(x, p_t).mean(1)
            d_s = torch.sigmoid(x).sub_(p_t) if keep_sub else None
        else:
            p_t = p_z if p_z is not None and temperature == 1 else torch.softmax(zt, dim=1)
            sub = _soft_ce_lean(x, p_t)
            d_s = torch.softmax(x, dim=1).sub_(p_t) if keep_sub else None
        sub = rows.values(sub * temperature**2 if temperature != 1 else sub)
    out = torch.full((ref.NUM_OUT, z.shape[0]), torch.nan, dtype=torch.float32, device=z.device)
    for row, values in ((ref.MAIN, main), (ref.SUB, sub)):
        out[row] = 0 if values is None else values
    return out, (d_z, d_s), rows


def _eager_backward(grad_main, grad_sub, saved, rows, logits, sub_logits, target, bce, eps, temperature):
    """(d logits or None, d sub_logits or None): g * d for the saved brackets d (the reference's order of
    roundings), g the [M] grad_output row with the row masks applied; for class ids the one-hot part of the main
    term, -(1 - eps) g, added to the target column after the multiply, as the reference does (where p is near 1,
    p - 1 cancels: the same roundings give the same gradient)."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    classes = logits.shape[1]
    d_z, d_s = saved
    dz = ds = None
    if grad_main is not None:
        g = grad_main.to(acc)
        g = rows.values(g * (1.0 / classes) if bce else g)[:, None]
        dz = d_z * g
        if not bce and not target.is_floating_point():
            dz.scatter_add_(1, target.long().clamp(0, classes - 1)[:, None], g * -(1 - eps))
        dz = rows.grad(dz).to(logits.dtype)
    if grad_sub is not None:
        scale = temperature * (1.0 / classes) if bce else temperature
        g = grad_sub.to(acc)
        ds = rows.grad(d_s * rows.values(g * scale if scale != 1 else g)[:, None]).to(sub_logits.dtype)
    return dz, ds


class _EagerLoss(torch.autograd.Function):
    """The op with the torch backend in eager mode when a logit tensor requires grad (see the section's note)."""

    @staticmethod
    def forward(ctx, logits, sub_logits, target, bce, eps, ignore, temperature, threshold):
        keep = (ctx.needs_input_grad[0] and target is not None, ctx.needs_input_grad[1] and sub_logits is not None)
        options = (bce, eps, ignore, temperature, threshold)
        out, saved, ctx.rows = _eager_forward(logits, sub_logits, target, *options, keep=keep)
        ctx.save_for_backward(logits, sub_logits, target, *saved)
        ctx.options, ctx.keep = (bce, eps, temperature), keep
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, sub_logits, target, *saved = ctx.saved_tensors
        grad_main = grad_out[ref.MAIN] if ctx.keep[0] else None
        grad_sub = grad_out[ref.SUB] if ctx.keep[1] else None
        dz, ds = _eager_backward(grad_main, grad_sub, saved, ctx.rows, logits, sub_logits, target, *ctx.options)
        return dz, ds, *(None,) * 6


def loss_forward_eager(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold):
    """The torch backend's op in eager mode: fp32 [NUM_OUT, M], rows MAIN and SUB as loss_forward_reference's (the
    stats rows NaN), differentiable in both logits (a lean autograd.Function when one of them requires grad)."""
    options = (bce, label_smoothing, ignore_index, temperature, threshold)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (logits, sub_logits)):
        return _EagerLoss.apply(logits, sub_logits, target, *options)
    return _eager_forward(logits, sub_logits, target, *options, keep=(False, False))[0]
