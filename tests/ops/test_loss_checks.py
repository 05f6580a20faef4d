"""The loss ops' checks (ops/_loss_checks.py): a dtype that differs from the tensor it must match is a TypeError
on every path (masksub_loss's sub_logits, the fused-linear head's operands, as the token ops' mask_token and any
dtype outside the accepted ones), and a direct ``torch.ops.masksub`` call of a loss op is refused alike on every
backend, with the public functions' errors, before any backend runs (helper-330: Triton read past a short target
or a narrower sub_logits / weight and returned a loss, the reference failed with torch's own errors, the cuda
binding refused with its own)."""

import pytest
import torch
from conftest import DEVICE

import masksub_kernels as mk


def _like(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, dtype=dtype, device=device)


def _dtype_mismatches():
    z, y = _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w, b = _like(4, 3), _like(6, 3), _like(6)
    tokens, token = _like(2, 4, 4, 3), _like(3)
    return {
        "masksub_loss sub_logits": (lambda: mk.masksub_loss(z, z.double(), y), "sub_logits must match main_logits"),
        "self_distillation sub_logits": (lambda: mk.self_distillation_loss(z.half(), z), "sub_logits must match"),
        "linear sub_hidden": (lambda: mk.linear_masksub_loss(h, h.half(), w, b, y), "sub_hidden must be"),
        "linear weight": (lambda: mk.linear_masksub_loss(h, h, w.double(), b, y), "weight must be"),
        "linear integer weight": (lambda: mk.linear_masksub_loss(h, h, w.long(), b, y), "weight must be"),
        "linear bias": (lambda: mk.linear_masksub_loss(h, h, w, b.half(), y), "bias must be"),
        "linear ce weight": (lambda: mk.linear_soft_target_cross_entropy(h, w.half(), b, y), "weight must be"),
        "mask_token": (lambda: mk.mask_tokens_grid(tokens, token.double(), cell_size=2, seed=1), "mask_token must"),
    }  # fmt: skip


@pytest.mark.parametrize("call", sorted(_dtype_mismatches()))
def test_a_dtype_mismatch_is_a_type_error_on_every_path(backend, call):
    # docs/semantics.md: a wrong kind or dtype is a TypeError. The losses' and the fused-linear head's mismatches
    # were ValueErrors (mask_token's a TypeError), an integer weight too where integer hidden states were a TypeError
    fn, match = _dtype_mismatches()[call]
    with pytest.raises(TypeError, match=match):
        fn()


def test_a_shape_or_device_mismatch_stays_a_value_error(backend):
    z, y = _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w = _like(4, 3), _like(6, 3)
    with pytest.raises(ValueError, match="sub_logits must match main_logits"):
        mk.masksub_loss(z, _like(4, 5), y)
    with pytest.raises(ValueError, match="sub_logits must match main_logits"):
        mk.masksub_loss(z, _like(4, 6, device="meta"), y)
    with pytest.raises(ValueError, match=r"bias must be \[6\]"):
        mk.linear_masksub_loss(h, h, w, _like(5), y)


def _direct_calls():
    ops, z, y = torch.ops.masksub, _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w, b = _like(4, 3), _like(6, 3), _like(6)
    options = (False, 0.0, -100, 1.0, None)
    reduced = (*options, 0.5, 0.5, True)
    flags = (True,) * 6  # need_hidden, need_sub_hidden, need_weight, need_bias, gather, private
    return {
        "forward short target": (lambda: ops.masksub_loss_forward(z, z, y[:2], *options), ValueError,
                                 r"class-id target must be \[rows=4\], got shape \(2,\)"),
        "forward narrower sub": (lambda: ops.masksub_loss_forward(z, _like(4, 3), y, *options), ValueError,
                                 "sub_logits must match logits in shape"),
        "forward sub dtype": (lambda: ops.masksub_loss_forward(z, z.double(), y, *options), TypeError,
                              "sub_logits must match logits in shape, dtype"),
        "forward integer logits": (lambda: ops.masksub_loss_forward(z.long(), None, y, *options), TypeError,
                                   "logits must be float32, float16, bfloat16 or float64, got torch.int64"),
        "forward 3-D logits": (lambda: ops.masksub_loss_forward(z[None], None, y, *options), ValueError,
                               r"logits must be \[rows, classes\]"),
        "forward int16 target": (lambda: ops.masksub_loss_forward(z, None, y.short(), *options), TypeError,
                                 "target must be int64 or int32 class ids"),
        "forward zero temperature": (lambda: ops.masksub_loss_forward(z, z, y, False, 0.0, -100, 0.0, None),
                                     ValueError, "temperature must be a finite number > 0"),
        "forward threshold 1": (lambda: ops.masksub_loss_forward(z, z, y, True, 0.0, -100, 1.0, 1.0), ValueError,
                                r"target_threshold must be a finite number in \[0, 1\)"),
        "forward smoothing nan": (lambda: ops.masksub_loss_forward(z, z, y, False, float("nan"), -100, 1.0, None),
                                  ValueError, "label_smoothing must be a finite number"),
        "forward no target nor sub": (lambda: ops.masksub_loss_forward(z, None, None, *options), ValueError,
                                      "needs a target, sub_logits or both"),
        "reduced short target": (lambda: ops.masksub_loss_reduced(z, z, y[:2], *reduced), ValueError,
                                 r"class-id target must be \[rows=4\]"),
        "reduced negative weight": (lambda: ops.masksub_loss_reduced(z, z, y, *options, -1.0, 0.5, True),
                                    ValueError, "main_weight must be a finite number >= 0"),
        "linear narrower weight": (lambda: ops.linear_masksub_loss_forward(h, h, _like(6, 2), b, y, *options),
                                   ValueError, r"weight must be \[classes, hidden=3\]"),
        "linear short bias": (lambda: ops.linear_masksub_loss_forward(h, h, w, _like(3), y, *options), ValueError,
                              r"bias must be \[6\] with hidden's dtype and device"),
        "linear weight dtype": (lambda: ops.linear_masksub_loss_forward(h, h, w.double(), b, y, *options),
                                TypeError, r"weight must be \[6, 3\] with hidden's dtype"),
        "linear short target": (lambda: ops.linear_masksub_loss_forward(h, h, w, b, y[:2], *options), ValueError,
                                r"class-id target must be \[rows=4\]"),
        "grads narrower weight": (lambda: ops.linear_masksub_loss_grads(h, h, _like(6, 2), b, y, True, 0.5, 0.5,
                                                                        *flags, 0, *options),
                                  ValueError, r"weight must be \[classes, hidden=3\]"),
        "grads short target": (lambda: ops.linear_masksub_loss_grads(h, h, w, b, y[:2], True, 0.5, 0.5, *flags, 0,
                                                                     *options),
                               ValueError, r"class-id target must be \[rows=4\]"),
        "grads negative weight": (lambda: ops.linear_masksub_loss_grads(h, h, w, b, y, True, -0.5, 0.5, *flags, 0,
                                                                        *options),
                                  ValueError, "main_weight must be a finite number >= 0"),
        "grads negative chunk": (lambda: ops.linear_masksub_loss_grads(h, h, w, b, y, True, 0.5, 0.5, *flags, -1,
                                                                       *options),
                                 ValueError, r"an int >= 1 \(below 2\^31\) or 0 \(the default\), got -1"),
    }  # fmt: skip


@pytest.mark.parametrize("call", sorted(_direct_calls()))
def test_a_direct_loss_op_call_is_refused_alike_on_every_backend(backend, call):
    # helper-330: these ran on Triton (a short target or a narrower sub_logits / weight: reads past them, a loss
    # returned), failed with torch's shape errors on the reference or an InterpreterError (a zero temperature), and
    # were refused by the cuda binding with its own messages
    fn, error, match = _direct_calls()[call]
    with pytest.raises(error, match=match):
        fn()


def test_a_direct_loss_op_call_with_a_meta_operand_is_checked_too():
    # an operand on the meta device sends the dispatcher's call to the registered fake, which runs the same check
    meta = torch.device("meta")
    z, y = torch.empty(4, 6, device=meta), torch.empty(2, dtype=torch.long, device=meta)
    with pytest.raises(ValueError, match=r"class-id target must be \[rows=4\]"):
        torch.ops.masksub.masksub_loss_forward(z, z, y, False, 0.0, -100, 1.0, None)
    h, w = torch.empty(4, 3, device=meta), torch.empty(6, 2, device=meta)
    with pytest.raises(ValueError, match=r"weight must be \[classes, hidden=3\]"):
        torch.ops.masksub.linear_masksub_loss_forward(h, h, w, None, y[:1].expand(4), False, 0.0, -100, 1.0, None)


def test_the_public_functions_checked_options_take_the_cheap_path():
    # the op check's fast path (the public functions' Python floats) and its full path agree: a NaN or an
    # out-of-range float leaves the fast path for the full check's error
    from masksub_kernels.ops._loss_checks import check_op_options, check_reduced_loss_op

    check_op_options(True, 0.1, -(2**63), 2.0**-63, 0.0)
    for bad in (float("nan"), float("inf"), 2.0**13 * 2):
        with pytest.raises(ValueError, match="temperature"):
            check_op_options(False, 0.0, -100, bad, None)
    with pytest.raises(TypeError, match="bce must be a bool"):
        check_op_options(1, 0.0, -100, 1.0, None)
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sub_weight"):
        check_reduced_loss_op(z, z, None, False, 0.0, -100, 1.0, None, 0.5, float("nan"), True)
    with pytest.raises(TypeError, match="mean must be a bool"):
        check_reduced_loss_op(z, z, None, False, 0.0, -100, 1.0, None, 0.5, 0.5, 1)


# ---------------------------------------------------------------------------------------------------------------
# -> tests/ops/test_loss_checks.py (uses _like, DEVICE, the `backend` fixture as that file does)
# ---------------------------------------------------------------------------------------------------------------


# Python floats just outside each bound: the fast path of check_op_options / check_reduced_weights must hand every
# one to the full check. Kills L01 (label_smoothing <= 2.0), L02 (-1.0 <= label_smoothing), L03 (ignore_index's
# bounds widened by one), L04 (0.0 < temperature: 2^-64 accepted), L05 (0.0 <= target_threshold dropped),
# L07 (0.0 <= sub_weight dropped), L08 / L09 (main_weight / sub_weight <= inf: inf and 1e39 accepted),
# L10 (type(bce) is bool dropped from the fast path: bce=1 accepted), L23 (type(temperature) is float dropped:
# temperature=True accepted)
@pytest.mark.parametrize(("options", "error", "match"), [
    ((False, 1.5, -100, 1.0, None), ValueError, "label_smoothing"),
    ((False, -0.5, -100, 1.0, None), ValueError, "label_smoothing"),
    ((False, 0.0, 2**63, 1.0, None), ValueError, "ignore_index must fit in int64"),
    ((False, 0.0, -(2**63) - 1, 1.0, None), ValueError, "ignore_index must fit in int64"),
    ((False, 0.0, -100, 2.0**-64, None), ValueError, "temperature"),
    ((False, 0.0, -100, 2.0**13 * 1.5, None), ValueError, "temperature"),
    ((True, 0.0, -100, 1.0, -0.5), ValueError, "target_threshold"),
    ((1, 0.0, -100, 1.0, None), TypeError, "bce must be a bool"),
    ((False, 0.0, -100, True, None), TypeError, "temperature must be a real number"),
])  # fmt: skip
def test_the_fast_path_of_the_op_options_widens_no_bound(options, error, match):
    from masksub_kernels.ops._loss_checks import check_op_options

    with pytest.raises(error, match=match):
        check_op_options(*options)
    check_op_options(True, 1.0, 2**63 - 1, 2.0**13, 0.999)  # the bounds themselves: accepted


@pytest.mark.parametrize(("weights", "match"), [
    ((-0.5, 0.5), "main_weight"), ((0.5, -0.5), "sub_weight"),
    ((float("inf"), 0.5), "main_weight"), ((0.5, float("inf")), "sub_weight"),
    ((1e39, 0.5), "main_weight"), ((0.5, 1e39), "sub_weight"),
])  # fmt: skip
def test_the_fast_path_of_the_reduced_weights_widens_no_bound(weights, match):
    from masksub_kernels.ops._loss_checks import check_reduced_weights

    with pytest.raises(ValueError, match=match):
        check_reduced_weights(*weights, True)
    check_reduced_weights(0.0, 3.4028234663852886e38, False)  # the bounds themselves: accepted


# Kills L18 (check_linear_loss_op without check_op_options: a direct linear_masksub_loss_forward /
# linear_masksub_loss_grads call with a bad option ran on every backend)
@pytest.mark.parametrize("op", ["forward", "grads"])
def test_a_direct_linear_loss_op_call_checks_its_options(backend, op):
    ops, y = torch.ops.masksub, torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w, b = _like(4, 3), _like(6, 3), _like(6)
    options = (False, 0.0, -100, 0.0, None)  # temperature 0
    if op == "forward":
        call = lambda: ops.linear_masksub_loss_forward(h, h, w, b, y, *options)
    else:
        call = lambda: ops.linear_masksub_loss_grads(h, h, w, b, y, True, 0.5, 0.5, *(True,) * 6, 0, *options)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        call()
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.linear_masksub_loss_forward(h, h, w, b, y, False, 2.0, -100, 1.0, None)


def _backward_calls():
    ops, z, y = torch.ops.masksub, _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w, b = _like(4, 3), _like(6, 3), _like(6)
    options = (False, 0.0, -100, 1.0, None)
    out, g, g4, d = torch.zeros(9, 4, device=DEVICE), _like(4), _like(4), torch.ones(1, device=DEVICE)
    linear_flags = (True, True, True, False)  # need_hidden, need_weight, need_bias, gather
    return {
        "backward short out": (lambda: ops.masksub_loss_backward(g, g, out[:, :2], z, z, y, *options), ValueError,
                               r"out must be the forward op's output: contiguous \[9, rows=4\]"),
        "backward strided out": (lambda: ops.masksub_loss_backward(g, g, torch.zeros(4, 9, device=DEVICE).t(), z,
                                                                   z, y, *options),
                                 ValueError, r"\(not contiguous\)"),
        "backward fp16 out": (lambda: ops.masksub_loss_backward(g, g, out.half(), z, z, y, *options), TypeError,
                              "out must be the forward op's float32 output"),
        "backward short grad": (lambda: ops.masksub_loss_backward(g[:2], None, out, z, z, y, *options), ValueError,
                                r"grad_main must be \[4\]"),
        "backward integer grad": (lambda: ops.masksub_loss_backward(None, g.long(), out, z, z, y, *options),
                                  TypeError, "grad_sub must be float32"),
        "backward grad without sub": (lambda: ops.masksub_loss_backward(None, g, out, z, None, y, *options),
                                      ValueError, "grad_sub needs sub operands"),
        "backward grad without target": (lambda: ops.masksub_loss_backward(g, None, out, z, z, None, *options),
                                         ValueError, "grad_main needs a target"),
        "backward short target": (lambda: ops.masksub_loss_backward(g, g, out, z, z, y[:2], *options), ValueError,
                                  r"class-id target must be \[rows=4\]"),
        "reduced backward short grad": (lambda: ops.masksub_loss_reduced_backward(g4[:3], True, True, d, out, z, z,
                                                                                  y, *options, 0.5, 0.5),
                                        ValueError, r"grad must be \[4\]"),
        "reduced backward long d": (lambda: ops.masksub_loss_reduced_backward(g4, True, True, out[0], out, z, z, y,
                                                                              *options, 0.5, 0.5),
                                    ValueError, r"d must be \[1\]"),
        "reduced backward need_sub without sub": (lambda: ops.masksub_loss_reduced_backward(g4, True, True, d, out, z,
                                                                                            None, y, *options, 0.5,
                                                                                            0.5),
                                                  ValueError, "need_sub needs sub_logits"),
        "reduced backward short out": (lambda: ops.masksub_loss_reduced_backward(g4, True, True, d, out[:8], z, z, y,
                                                                                 *options, 0.5, 0.5),
                                       ValueError, r"contiguous \[9, rows=4\]"),
        "reduced backward negative weight": (lambda: ops.masksub_loss_reduced_backward(g4, True, True, d, out, z, z,
                                                                                       y, *options, -1.0, 0.5),
                                             ValueError, "main_weight must be a finite number >= 0"),
        "linear backward short out": (lambda: ops.linear_masksub_loss_backward(g, g, out[:, :3], h, h, w, b, y,
                                                                               *linear_flags, *options),
                                      ValueError, r"contiguous \[9, rows=4\]"),
        "linear backward short grad": (lambda: ops.linear_masksub_loss_backward(g, g[:1], out, h, h, w, b, y,
                                                                                *linear_flags, *options),
                                       ValueError, r"grad_sub must be \[4\]"),
        "linear backward narrower weight": (lambda: ops.linear_masksub_loss_backward(g, g, out, h, h, _like(6, 2), b,
                                                                                     y, *linear_flags, *options),
                                            ValueError, r"weight must be \[classes, hidden=3\]"),
        "linear backward grad without sub": (lambda: ops.linear_masksub_loss_backward(None, g, out, h, None, w, b, y,
                                                                                      *linear_flags, *options),
                                             ValueError, "grad_sub needs sub operands"),
    }  # fmt: skip


@pytest.mark.parametrize("call", sorted(_backward_calls()))
def test_a_direct_backward_op_call_is_refused_alike_on_every_backend(backend, call):
    # the backward ops had no check: a short out or grad was read past by Triton (a wrong gradient, silently), the
    # reference raised torch's indexing errors and the cuda binding refused with its own
    fn, error, match = _backward_calls()[call]
    with pytest.raises(error, match=match):
        fn()


def test_a_direct_backward_op_call_of_what_the_forward_made_runs_on_every_backend(backend):
    # the checks refuse nothing the autograd backward passes: the forward op's output, its grads' row views
    ops, z, y = torch.ops.masksub, _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w, b = _like(4, 3), _like(6, 3), _like(6)
    options = (False, 0.1, -100, 2.0, None)
    grad = _like(9, 4)
    out = ops.masksub_loss_forward(z, z, y, *options)
    dz, ds = ops.masksub_loss_backward(grad[0], grad[1], out, z, z, y, *options)
    zz, ss = z.clone().requires_grad_(), z.clone().requires_grad_()
    reference = torch.autograd.grad(ops.masksub_loss_forward(zz, ss, y, *options), (zz, ss), grad)
    torch.testing.assert_close((dz, ds), reference)
    if backend != "cuda":  # (the fused-linear ops have no CUDA-extension implementation)
        out = ops.linear_masksub_loss_forward(h, h, w, b, y, *options)
        dh, dhs, dw, db = ops.linear_masksub_loss_backward(grad[0], grad[1], out, h, h, w, b, y, True, True, True,
                                                           False, *options)  # fmt: skip
        assert dh.shape == dhs.shape == h.shape and dw.shape == w.shape and db.shape == b.shape
    _, out, d = ops.masksub_loss_reduced(z, z, y, *options, 0.5, 0.5, True)
    dz, ds = ops.masksub_loss_reduced_backward(torch.ones(4, device=DEVICE), True, True, d, out, z, z, y, *options,
                                               0.5, 0.5)  # fmt: skip
    assert dz.shape == ds.shape == z.shape


def test_a_backward_op_call_with_an_operand_elsewhere_or_of_another_shape_is_refused(backend):
    # helper-340's mutation audit: the checks' device and exact-shape tests (a grad [4, 1] for [4], an out or grad
    # on another device), need_main without a target and the divisor's dtype and device were not tried
    ops, z, y = torch.ops.masksub, _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    options = (False, 0.0, -100, 1.0, None)
    out, g, g4, d = torch.zeros(9, 4, device=DEVICE), _like(4), _like(4), torch.ones(1, device=DEVICE)
    calls = [
        (lambda: ops.masksub_loss_backward(g, g, out.to("meta"), z, z, y, *options), ValueError,
         r"out must be the forward op's output: .* got \(9, 4\) on meta"),
        (lambda: ops.masksub_loss_backward(g.to("meta"), g, out, z, z, y, *options), ValueError,
         r"grad_main must be \[4\] on .*, got \(4,\) on meta"),
        (lambda: ops.masksub_loss_backward(g, g[:, None], out, z, z, y, *options), ValueError,
         r"grad_sub must be \[4\] on .*, got \(4, 1\)"),
        (lambda: ops.masksub_loss_reduced_backward(g4, True, False, d, out, z, z, None, *options, 0.5, 0.5),
         ValueError, "need_main needs a target"),
        (lambda: ops.masksub_loss_reduced_backward(g4, True, True, d.double(), out, z, z, y, *options, 0.5, 0.5),
         TypeError, "d must be the reduced forward's float32 divisor"),
        (lambda: ops.masksub_loss_reduced_backward(g4, True, True, d.to("meta"), out, z, z, y, *options, 0.5, 0.5),
         ValueError, r"d must be \[1\] on .*, got \(1,\) on meta"),
    ]  # fmt: skip
    for fn, error, match in calls:
        with pytest.raises(error, match=match):
            fn()


def test_a_direct_linear_op_call_checks_a_probability_target_against_the_classes(backend):
    # helper-340's mutation audit: the fused-linear op's target layout is [rows, classes = weight's rows], not the
    # hidden states' [rows, hidden] (no test had a probability target in a direct call)
    ops, h, w, b = torch.ops.masksub, _like(4, 3), _like(6, 3), _like(6)
    options = (False, 0.0, -100, 1.0, None)
    with pytest.raises(ValueError, match=r"probability target must have the logits' shape \(4, 6\), got \(4, 3\)"):
        ops.linear_masksub_loss_forward(h, h, w, b, _like(4, 3).softmax(-1), *options)
    if backend != "cuda":  # (no CUDA-extension implementation of the fused-linear ops)
        out = ops.linear_masksub_loss_forward(h, h, w, b, _like(4, 6).softmax(-1), *options)
        assert out.shape == (9, 4) and bool(out.isfinite().all())


def test_the_autograd_backward_runs_no_backward_op_check_and_a_direct_call_does(kernel_backend, monkeypatch):
    # the autograd backward calls the backward ops on what the forward made (checked then) and the grads autograd
    # matched to its outputs: MaskSubOp.from_backward skips the ~10-16 us check; torch.ops.masksub calls keep it
    from masksub_kernels.ops import linear_masksub_loss, masksub_loss, masksub_loss_reduced

    ops = (masksub_loss._loss_backward_op, masksub_loss_reduced._reduced_backward_op,
           linear_masksub_loss._linear_loss_backward_op)  # fmt: skip
    checked = []
    for op in ops:
        monkeypatch.setattr(op, "_check", lambda *args, _check=op._check, _name=op.name: checked.append(_name) or
                            _check(*args))  # fmt: skip
    z, y = _like(4, 6), torch.tensor([0, 1, 2, 5], device=DEVICE)
    h, w, b = _like(4, 3), _like(6, 3), _like(6)
    calls = [
        lambda zz, ss, hh: mk.masksub_loss(zz, ss, y, reduction="none").loss.sum(),
        lambda zz, ss, hh: mk.masksub_loss(zz, ss, y).loss,
        lambda zz, ss, hh: mk.linear_masksub_loss(hh, hh * 2, w, b, y).loss,
        lambda zz, ss, hh: mk.linear_masksub_loss(hh, hh * 2, w, b, y, reduction="none").loss.sum(),
    ]
    for call in calls[:2] if kernel_backend == "cuda" else calls:  # (no CUDA-extension fused-linear ops)
        inputs = [t.clone().requires_grad_() for t in (z, z * 0.5, h)]
        got = torch.autograd.grad(call(*inputs), inputs, allow_unused=True)
        with mk.use_backend("torch"):
            inputs = [t.clone().requires_grad_() for t in (z, z * 0.5, h)]
            want = torch.autograd.grad(call(*inputs), inputs, allow_unused=True)
        for g, r in zip(got, want):
            assert (g is None) == (r is None)
            if g is not None:
                torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert checked == []
    out = torch.ops.masksub.masksub_loss_forward(z, z, y, False, 0.0, -100, 1.0, None)
    torch.ops.masksub.masksub_loss_backward(_like(4), _like(4), out, z, z, y, False, 0.0, -100, 1.0, None)
    assert checked == ["masksub_loss_backward"]


# helper-347's audit of MaskSubOp.from_backward (ops/_common.py)
# kills from_backward's `_tracing(args)` left out: make_fx (real mode) traced the backward op's eager implementation
# on the real operands (the triton / cuda backends: gradients baked into the graph as constants; torch: its aten ops)
# instead of one masksub backward node
def test_make_fx_traces_each_loss_backward_as_its_op(kernel_backend):
    from torch.fx.experimental.proxy_tensor import make_fx

    y = torch.tensor([0, 1, 2, 5], device=DEVICE)
    w, b = _like(6, 3), _like(6)
    calls = {
        "masksub_loss_backward": lambda a, h: mk.masksub_loss(a, a * 0.5, y, reduction="none").loss.sum(),
        "masksub_loss_reduced_backward": lambda a, h: mk.masksub_loss(a, a * 0.5, y).loss,
        "linear_masksub_loss_backward": lambda a, h: mk.linear_masksub_loss(
            h, h * 2, w, b, y, reduction="none"
        ).loss.sum(),
    }
    for name, call in calls.items():
        if kernel_backend == "cuda" and name.startswith("linear"):
            continue  # (no CUDA-extension fused-linear ops)

        def grads(a, h):
            return torch.autograd.grad(call(a, h), (a, h), allow_unused=True, materialize_grads=True)  # noqa: B023

        inputs = [_like(4, 6).requires_grad_(), _like(4, 3).requires_grad_()]
        graph = make_fx(grads)(*inputs)
        called = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
        assert f"masksub.{name}.default" in called, (name, called)
        others = [_like(4, 6).requires_grad_(), _like(4, 3).requires_grad_()]
        for got, want in zip(graph(*others), grads(*others)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# kills from_backward without __call__'s forward-AD refusal (dcd7ef7 as committed): a dual grad_outputs (forward over
# reverse) reached the kernels, which dropped its tangent: a silent zero where torch's own ops give the jvp of the
# vjp. Refused as the forward op's dual operands are
def test_a_dual_upstream_gradient_is_refused_on_every_backend(backend):
    from torch.autograd import forward_ad

    y = torch.tensor([0, 1, 2, 5], device=DEVICE)
    z = _like(4, 6).requires_grad_()
    per_row = mk.masksub_loss(z, z * 0.5, y, reduction="none").loss
    reduced = mk.masksub_loss(z, z * 0.5, y).loss
    losses = [per_row, reduced]  # (the torch backend's eager reduced loss dropped the tangent: a silent zero)
    if backend != "cuda":  # (no CUDA-extension fused-linear ops)
        w = _like(6, 6)
        losses.append(mk.linear_masksub_loss(z, z * 0.5, w, None, y, reduction="none").loss)
        losses.append(mk.linear_masksub_loss(z, z * 0.5, w, None, y).loss)
    with forward_ad.dual_level():
        for loss in losses:
            upstream = forward_ad.make_dual(torch.ones_like(loss), torch.ones_like(loss))
            with pytest.raises(RuntimeError, match=r"does not support forward-mode AD"):
                torch.autograd.grad(loss, z, upstream, retain_graph=True)
    torch.autograd.grad(per_row, z, torch.ones_like(per_row))  # outside a dual level: unchanged


# kills from_backward's `torch._C._are_functorch_transforms_active()` left out: a torch.func.vmap over
# torch.autograd.grad of a graph built outside it handed the kernels batched grads (Triton: "Cannot access storage of
# BatchedTensorImpl"); refused as __call__ refuses the transforms
def test_a_vmapped_backward_is_refused_by_the_kernel_backends(kernel_backend):
    y = torch.tensor([0, 1, 2, 5], device=DEVICE)
    z = _like(4, 6).requires_grad_()
    loss = mk.masksub_loss(z, z * 0.5, y, reduction="none").loss
    with pytest.raises(RuntimeError, match=r"masksub_loss_backward .* does not support torch.func transforms"):
        torch.func.vmap(lambda v: torch.autograd.grad(loss, z, v, retain_graph=True)[0])(torch.eye(4, device=DEVICE))
