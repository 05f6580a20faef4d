"""The torch backend's eager path of the MaskSub loss (the CPU path): masksub_loss.py's reference maths, with
what the backward needs saved by the forward instead of recomputed. masksub_loss.py's reference functions stay
the compiled op and the oracle the tests compare this path against (tests/ops/test_masksub_loss_eager.py and
tests/ops/test_reduced_loss_eager.py); the names _mask_rows, _soft_ce, ... in the comments are theirs.

Two entry points share one forward (_forward) and one gradient step (_grad):
- loss_forward_eager: the per-row op (fp32 [NUM_OUT, M], reduction 'none'), an autograd.Function fed per-row
  grad_outputs;
- reduced_loss_eager: the reduced op, (reduced [4], out [NUM_OUT, M]) with reduced = (main_weight * main +
  sub_weight * sub, main, sub, divisor), fed a grad_output [4] that becomes one scalar per term.
"""

from __future__ import annotations

import math

import torch

from . import masksub_loss as ref  # the reference (read at call time: that module imports this one)
from ._common import first_order_only

# masksub_loss.py's reference is the op's exact output, stats included, for the kernels' layout, and its backward
# recomputes both softmaxes and masks [M, C] gradients with selects: about twice the [M, C] passes of the eager
# code it replaces (issue 12: 0.5x at M=256, C=1000 on a CPU). In eager mode the torch backend runs this path
# instead: the same per-row losses from the same formulas, and, when a gradient is asked for, the forward also
# forms that term's bracket of loss_backward_reference (p S - w, sigmoid(z) - w, q - p) from the softmaxes it has
# at hand, in buffers it owns (the teacher softmax(z) is the main term's p at T = 1), so that the backward is one
# multiply per gradient (the eager code it replaces keeps as many [M, C] tensors). Output rows C_Z..LOG_L_T are
# NaN: the kernels' private state for their backward, never read here.
#
# Passes over [M, C] (fp32, class ids, no smoothing, T = 1, both gradients): log_softmax(z), p = exp (the teacher
# and the main bracket p - onehot, a scatter), log_softmax(s), the dot p . log q (a product and a row sum), then
# q - p in place (exp_, sub_); the backward multiplies each bracket by its scalar. softmax(z) is exp(log_softmax
# (z)), as the reference's forward takes its teacher: within an fp32 ulp of log l (l = the row's sum of exps,
# log l <= log C) of torch.softmax, and p - 1 is formed before the multiply (exact where p is near 1).
#
# Rows: a gradient row is g_i * (its bracket), g_i replaced by 0 for an ignored row and NaN for a class id out of
# range: the reference's [M, C] selects folded into an [M] one. 0 * (bracket) is exactly 0 unless the bracket is
# not finite (an ignored row of -inf or +inf logits): the [M, C] select then still runs, always off the CPU
# (knowing would sync), on the CPU only when some row is ignored. On the CPU one aminmax of the ids (no sync there)
# finds the common case, every id in [0, C) and none equal to ignore_index: no masks at all.
#
# 0 * -inf: the dot products sum_c w_c log p_c are a product and a sum; a class without weight on a -inf logit
# makes that NaN where _soft_ce counts 0. On the CPU the NaN is looked for where a value is read anyway (the
# reduced path's sums; the per-row path reads one bool per term) and the term is then recomputed with _soft_ce's
# select; off the CPU the select always runs (knowing would sync).


def called_loss(ctx) -> str:
    """The public loss whose call made a loss op's call, for its double-backward refusal (first_order_only): the
    four share the ops, and their operands tell them apart (ctx.operands, saved by the forward: whether sub_logits
    and target were given, and bce). A direct torch.ops.masksub call is named as the loss that makes such a call."""
    has_sub, has_target, bce = ctx.operands
    if has_sub:
        return "masksub_loss" if has_target else "self_distillation_loss"
    return "soft_target_bce" if bce else "soft_target_cross_entropy"


def _readable(device: torch.device) -> bool:
    """Whether values of tensors on ``device`` may be read without a sync: the CPU (the tests also run the other
    devices' code on CPU tensors by patching this)."""
    return device.type == "cpu"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Rows:
    """The rows of one call: ``keep`` (the row counts and its class id is in range), ``fill`` (0 for an ignored
    row, NaN for a bad one), ``select`` (an [M, C] gradient needs the select) and ``count``, the rows that count:
    a Python int on the CPU (read without a sync), an int64 device tensor elsewhere. keep and fill are None when
    every row counts (probability targets, no target, or CPU ids all in range and none ignored)."""

    def __init__(self, target: torch.Tensor | None, ignore_index: int, shape, device):
        rows, classes = shape
        self.keep = self.fill = None
        self.select = False
        self.count = rows
        if target is None or target.is_floating_point():
            return
        cpu = _readable(device)
        if cpu and rows:
            low, high = target.aminmax()
            low, high = int(low), int(high)
            if 0 <= low and high < classes and not low <= ignore_index <= high:
                return
        elif cpu:
            return
        valid, bad = ref._row_masks(target, ignore_index, shape, device)
        self.keep, self.fill = valid & ~bad, torch.where(bad, torch.nan, 0.0)
        self.count = valid.sum()
        if cpu:
            self.count = int(self.count)
        self.select = not cpu or self.count < rows

    def values(self, values: torch.Tensor) -> torch.Tensor:
        """_mask_rows(values, valid, bad) for [M] values."""
        return values if self.keep is None else torch.where(self.keep, values, self.fill.to(values.dtype))


def _weights_lean(target: torch.Tensor, classes: int, eps: float, threshold: float | None, dtype) -> torch.Tensor:
    """_target_weights, bit for bit, skipping the passes that change nothing ((1 - 0) q + 0 is q)."""
    if eps != 0 or not target.is_floating_point():
        return ref._target_weights(target, classes, eps, threshold, dtype)
    q = target.to(dtype)
    return q if threshold is None else (q > threshold).to(dtype)


def _dot_ce(log_p: torch.Tensor, w: torch.Tensor, safe: bool) -> torch.Tensor:
    """_soft_ce(log_p, w): with ``safe`` its select; else the product and sum alone (no select, no mask pass),
    NaN where a zero weight meets a -inf log-probability (the caller looks for that, see the section's note)."""
    return ref._soft_ce(log_p, w) if safe else torch.mul(log_p, w).sum(1).neg_()


def _forward(logits, sub_logits, target, rows, out, bce, eps, temperature, threshold, keep):
    """Writes rows MAIN and SUB of ``out`` (the per-row losses as loss_forward_reference's) and returns (fixes,
    finish). ``fixes``: (row, fn) for each term written with a bare dot product (CPU only): fn() gives the row's
    values with _soft_ce's select, for a caller that found a NaN there. ``finish()``: (d_z, d_s), the brackets of
    the terms ``keep`` asks for (None for the others), formed in place in the forward's buffers: call it after
    the fixes (they read those buffers)."""
    acc = _acc(logits.dtype)
    z = logits if logits.dtype == acc else logits.to(acc)  # (a no-op .to still costs a dispatch)
    classes = z.shape[1]
    safe = not _readable(z.device)
    keep_main, keep_sub = keep
    fixes = []
    p_z = d_z = None  # p_z: softmax(z), when computed; d_z: a callable giving the main bracket
    # fp32 with every row counting (the common case): the CE rows' -log p_y and sum_c p_c log q_c are written
    # into ``out`` by the ops themselves (out=), and both rows negated by one op at the end
    direct = acc == torch.float32 and rows.keep is None
    negated = []

    if target is None:
        out[ref.MAIN] = 0.0
    elif bce:
        w = ref._target_weights(target, classes, eps, threshold, acc)
        out[ref.MAIN] = rows.values(ref._bce_terms(z, w).mean(1))
        if keep_main:
            d_z = lambda: torch.sigmoid(z).sub_(w)
    else:
        log_p = torch.log_softmax(z, dim=1)
        if keep_main or (sub_logits is not None and temperature == 1):
            p_z = torch.exp(log_p)
        if not target.is_floating_point():
            column = (target if rows.keep is None else target.clamp(0, classes - 1))[:, None]
            if eps:  # sum_c -w_c log p_c = -(1 - eps) log p_y - eps / C sum_c log p_c
                main = ref._class_id_ce(log_p, target, eps)
            elif direct:
                main = torch.gather(log_p, 1, column, out=out[ref.MAIN].unsqueeze(1))
                negated.append(ref.MAIN)
            else:
                main = log_p.gather(1, column)[:, 0].neg_()
            if keep_main:
                # p S - w, S = sum_c w_c = 1 in every row that counts (an ignored row's g is 0, a bad one's NaN):
                # p - eps / C, and -(1 - eps) at the target column, p - 1 exact where p is near 1
                def d_z():
                    bracket = p_z.sub_(eps / classes) if eps else p_z
                    return bracket.scatter_(1, column, -(1 - eps), reduce="add")
        else:
            w = _weights_lean(target, classes, eps, threshold, acc)
            main = _dot_ce(log_p, w, safe)
            if not safe:
                fixes.append((ref.MAIN, lambda: rows.values(ref._soft_ce(log_p, w))))
            if keep_main:  # p S - w, S = sum_c w_c
                d_z = lambda: torch.mul(p_z, w.sum(1, keepdim=True)).sub_(w)
        if not negated:
            out[ref.MAIN] = rows.values(main)

    d_s = None
    if sub_logits is None:
        out[ref.SUB] = 0.0
    else:
        x, zt = sub_logits if sub_logits.dtype == acc else sub_logits.to(acc), z
        if temperature != 1:
            x, zt = x / temperature, z / temperature
        t2 = temperature**2
        if bce:
            p_t = torch.sigmoid(zt)
            values = ref._bce_terms(x, p_t).mean(1)
            if keep_sub:
                d_s = lambda: torch.sigmoid(x).sub_(p_t)
        else:
            # exp(log_softmax), as the reference: torch.softmax rounds twice (exp, then the division), so its 0 and
            # the reference's differ for log-probabilities within ~0.5 of -104, where a -inf student logit's term is
            # +inf or nothing
            p_t = p_z if p_z is not None and temperature == 1 else torch.log_softmax(zt, dim=1).exp_()
            log_q = torch.log_softmax(x, dim=1)
            if direct and not safe and temperature == 1:
                values = torch.sum(torch.mul(log_q, p_t), 1, out=out[ref.SUB])
                negated.append(ref.SUB)
            else:
                values = _dot_ce(log_q, p_t, safe)
            if not safe:
                fixes.append((ref.SUB, lambda: rows.values(ref._soft_ce(log_q, p_t) * t2)))
            if keep_sub:  # q - p in log q's buffer
                d_s = lambda: log_q.exp_().sub_(p_t)
        if ref.SUB not in negated:
            out[ref.SUB] = rows.values(values * t2 if temperature != 1 else values)
    if negated:
        (out[: ref.SUB + 1] if len(negated) == 2 else out[negated[0]]).neg_()

    def finish():
        # the sub bracket first: the main one may be formed in p_z's buffer, the teacher at T = 1
        ds = d_s() if d_s is not None else None
        return (d_z() if d_z is not None else None), ds

    return fixes, finish


def _grad(bracket: torch.Tensor, g, scale: float, rows: _Rows, dtype: torch.dtype) -> torch.Tensor:
    """bracket * g, the rows masked, in ``dtype``. g: a Python float or 0-d tensor (one value for every row) or an
    [M] tensor; ``scale``: the term's constant factor (1 / C for BCE, T for the sub term)."""
    if isinstance(g, torch.Tensor):
        g = g.to(bracket.dtype)
    if scale != 1:
        g = g * scale
    if rows.keep is not None:
        g = torch.where(rows.keep, g, rows.fill.to(bracket.dtype))
    if isinstance(g, torch.Tensor) and g.dim():
        g = g[:, None]
    grad = bracket * g  # a new tensor: the saved bracket stays as it is (retain_graph)
    if rows.select:
        grad = ref._mask_rows(grad, rows.keep[:, None], rows.fill.isnan()[:, None])
    return grad if grad.dtype == dtype else grad.to(dtype)


def _grads(brackets, g_main, g_sub, rows, bce, temperature, logits_dtype, classes):
    """(d logits or None, d sub_logits or None) for per-term grads g (None: not wanted)."""
    d_z, d_s = brackets
    per_class = 1.0 / classes if bce else 1.0
    dz = None if g_main is None else _grad(d_z, g_main, per_class, rows, logits_dtype)
    ds = None if g_sub is None else _grad(d_s, g_sub, temperature * per_class, rows, logits_dtype)
    return dz, ds


def _new_out(rows: int, device) -> torch.Tensor:
    return torch.full((ref.NUM_OUT, rows), torch.nan, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------------------------------------------
# The per-row op (reduction 'none')
# ----------------------------------------------------------------------------------------------------------------


def _rows_forward(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, keep):
    rows = _Rows(target, ignore, logits.shape, logits.device)
    out = _new_out(logits.shape[0], logits.device)
    fixes, finish = _forward(logits, sub_logits, target, rows, out, bce, eps, temperature, threshold, keep)
    for row, fix in fixes:  # CPU: one bool per term (see the section's note)
        if bool(out[row].isnan().any()):
            out[row] = fix()
    return out, finish(), rows


class _EagerLoss(torch.autograd.Function):
    """The per-row op with the torch backend in eager mode when a logit tensor requires grad."""

    @staticmethod
    def forward(ctx, logits, sub_logits, target, bce, eps, ignore, temperature, threshold):
        keep = (ctx.needs_input_grad[0] and target is not None, ctx.needs_input_grad[1] and sub_logits is not None)
        out, brackets, ctx.rows = _rows_forward(
            logits, sub_logits, target, bce, eps, ignore, temperature, threshold, keep
        )
        ctx.save_for_backward(*brackets)
        ctx.options = (bce, temperature, logits.dtype, logits.shape[1])
        ctx.keep, ctx.operands = keep, (sub_logits is not None, target is not None, bce)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        brackets = ctx.saved_tensors
        grad_main = grad_out[ref.MAIN] if ctx.keep[0] else None
        grad_sub = grad_out[ref.SUB] if ctx.keep[1] else None
        dz, ds = _grads(brackets, grad_main, grad_sub, ctx.rows, *ctx.options)
        return dz, ds, *(None,) * 6


# first-order only, as the registered backwards (_common.first_order_only): create_graph=True raises
# (named by the op that the kernel backends run: masksub::masksub_loss_forward)
_EagerLoss.backward = staticmethod(
    first_order_only(lambda ctx: f"{called_loss(ctx)} (op masksub::masksub_loss_forward)", _EagerLoss.backward)
)


def loss_forward_eager(logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, threshold):
    """The torch backend's op in eager mode: fp32 [NUM_OUT, M], rows MAIN and SUB as loss_forward_reference's (the
    stats rows NaN), differentiable in both logits (a lean autograd.Function when one of them requires grad)."""
    options = (bce, label_smoothing, ignore_index, temperature, threshold)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (logits, sub_logits)):
        return _EagerLoss.apply(logits, sub_logits, target, *options)
    return _rows_forward(logits, sub_logits, target, *options, keep=(False, False))[0]


# ----------------------------------------------------------------------------------------------------------------
# The reduced op: (reduced [4], out [NUM_OUT, M]), reduced = (main_weight * main + sub_weight * sub, main, sub,
# divisor), main and sub the row sums over the divisor (the rows that count, at least 1, for 'mean'; 1 for 'sum')
# ----------------------------------------------------------------------------------------------------------------


def _divisor(rows: _Rows, mean: bool):
    """A Python float, or an fp32 device tensor where the count is one (class ids off the CPU: no sync)."""
    if not mean:
        return 1.0
    if isinstance(rows.count, torch.Tensor):
        return rows.count.clamp_min(1).to(torch.float32)
    return float(max(rows.count, 1))


def _reduced_forward(logits, sub_logits, target, bce, eps, ignore, temperature, threshold, mw, sw, mean, keep):
    """(reduced, out, brackets, rows, divisor)."""
    device = logits.device
    rows = _Rows(target, ignore, logits.shape, device)
    out = _new_out(logits.shape[0], device)
    fixes, finish = _forward(logits, sub_logits, target, rows, out, bce, eps, temperature, threshold, keep)
    divisor = _divisor(rows, mean)
    if _readable(device):
        # the two sums read once (no sync on the CPU), in fp64, and the 0 * -inf NaNs looked for there; the rest
        # is Python arithmetic (0 * inf is NaN there as in torch) and one small tensor
        sums = out[: ref.SUB + 1].sum(1, dtype=torch.float64).tolist()
        for row, fix in fixes:
            if math.isnan(sums[row]):
                out[row] = fix()
                sums[row] = float(out[row].sum(dtype=torch.float64))
        main, sub = sums[ref.MAIN] / divisor, sums[ref.SUB] / divisor
        reduced = torch.tensor([mw * main + sw * sub, main, sub, divisor], dtype=torch.float32, device=device)
    else:
        terms = out[: ref.SUB + 1].sum(1) / divisor
        count = divisor.reshape(1) if isinstance(divisor, torch.Tensor) else terms.new_full((1,), divisor)
        reduced = torch.cat((mw * terms[ref.MAIN : ref.MAIN + 1] + sw * terms[ref.SUB :], terms, count))
    return reduced, out, finish(), rows, divisor


class _ReducedLoss(torch.autograd.Function):
    """The reduced op with the torch backend in eager mode when a logit tensor requires grad."""

    @staticmethod
    def forward(ctx, logits, sub_logits, target, bce, eps, ignore, temperature, threshold, mw, sw, mean):
        keep = (ctx.needs_input_grad[0] and target is not None, ctx.needs_input_grad[1] and sub_logits is not None)
        options = (bce, eps, ignore, temperature, threshold, mw, sw, mean)
        reduced, out, brackets, ctx.rows, ctx.divisor = _reduced_forward(
            logits, sub_logits, target, *options, keep=keep
        )
        ctx.mark_non_differentiable(out)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*brackets)
        ctx.options = (bce, temperature, logits.dtype, logits.shape[1])
        ctx.keep, ctx.weights = keep, (mw, sw)
        ctx.operands = (sub_logits is not None, target is not None, bce)
        return reduced, out

    @staticmethod
    def backward(ctx, g, _):
        """Each term's rows get one grad: (its weight * g[0] + g[its field]) / divisor."""
        keep_main, keep_sub = ctx.keep
        if g is None or not (keep_main or keep_sub):
            return (None,) * 11
        mw, sw = ctx.weights
        divisor = ctx.divisor
        if _readable(g.device):  # Python floats (no sync on the CPU); a needed gradient of 0 is still a tensor
            g0, g1, g2 = g.tolist()[:3]
            g_main = (mw * g0 + g1) / divisor if keep_main else None
            g_sub = (sw * g0 + g2) / divisor if keep_sub else None
        else:  # 0-d tensors, in the accumulation dtype (fp64 for fp64 logits)
            g = g.to(_acc(ctx.options[2]))
            g_main = (mw * g[0] + g[1]) / divisor if keep_main else None
            g_sub = (sw * g[0] + g[2]) / divisor if keep_sub else None
        dz, ds = _grads(ctx.saved_tensors, g_main, g_sub, ctx.rows, *ctx.options)
        return dz, ds, *(None,) * 9


_ReducedLoss.backward = staticmethod(
    first_order_only(lambda ctx: f"{called_loss(ctx)} (op masksub::masksub_loss_reduced)", _ReducedLoss.backward)
)


def reduced_loss_eager(
    logits,
    sub_logits,
    target,
    bce,
    label_smoothing,
    ignore_index,
    temperature,
    target_threshold,
    main_weight,
    sub_weight,
    mean,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch backend's reduced op in eager mode: (reduced, out).

    reduced: fp32 [4] = (main_weight * main + sub_weight * sub, main, sub, divisor), main / sub = the sum of the
    term's per-row losses over divisor = max(rows that count, 1) if ``mean`` else 1 (an absent term is 0).
    out: fp32 [NUM_OUT, M], rows MAIN and SUB as loss_forward_reference's, the stats rows NaN; not differentiable.
    Differentiable in both logits through ``reduced`` (the logits get the main term's gradient only); a gradient
    is formed only for a tensor that requires it, a tensor even where its term's grad_output is exactly 0 (0 times
    its bracket, as the reference's)."""
    args = (logits, sub_logits, target, bce, label_smoothing, ignore_index, temperature, target_threshold)
    args += (main_weight, sub_weight, mean)
    if torch.is_grad_enabled() and (logits.requires_grad or (sub_logits is not None and sub_logits.requires_grad)):
        return _ReducedLoss.apply(*args)
    return _reduced_forward(*args, keep=(False, False))[:2]
