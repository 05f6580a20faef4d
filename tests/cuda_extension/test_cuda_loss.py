"""The CUDA extension's MaskSub loss (csrc/masksub_loss*.cu, bindings_loss.cpp): refusals on any machine, then
the kernels against the reference (fp32 arithmetic in another order than the reference: close, not equal) on the
kernels' device (extension_under_test.py)."""

import numpy as np
import pytest
import torch
from extension_under_test import _C, DEV, EXT, FLOAT_DTYPES, kernels, needs_C, refused

from masksub_kernels.ops import masksub_loss as ml
from masksub_kernels.ops import masksub_loss_reduced as mlr

# ---------------------------------------------------------------------------------------------------------------
# Refusals (any machine)
# ---------------------------------------------------------------------------------------------------------------


LOGITS, TARGET = torch.zeros(4, 10), torch.zeros(4, dtype=torch.int64)


@needs_C
@pytest.mark.parametrize(
    ("logits", "sub", "target", "options", "message"),
    [
        (LOGITS, LOGITS, TARGET, {}, "logits must be a CUDA tensor, got cpu"),
        (torch.zeros(10), None, None, {}, r"logits must be \[rows, classes\] \(2-D\)"),
        (LOGITS, torch.zeros(4, 9), TARGET, {}, r"sub_logits must have shape \[4, 10\], got \[4, 9\]"),
        (LOGITS, LOGITS.half(), TARGET, {}, r"sub_logits must have the dtype of logits \(float32\), got float16"),
        (LOGITS, None, TARGET.bool(), {}, "target must be int64, int32, float32, float16, bfloat16 or float64, got"),
        (LOGITS, None, torch.zeros(4, 9), {}, r"target must have shape \[4, 10\], got \[4, 9\]"),
        (LOGITS, None, torch.zeros(5, dtype=torch.int64), {}, r"target must have shape \[4\], got \[5\]"),
        (
            LOGITS,
            None,
            TARGET,
            {"temperature": 0.0},
            r"temperature must be a finite number > 0, in \[2\*\*-63, 2\*\*13\], got 0",
        ),
        # helper-205: values the fp32 kernels would meet as 0 or inf (a failed launch, inf losses), as Python refuses
        (LOGITS, None, TARGET, {"temperature": 1e-50}, "temperature must be a finite number > 0"),
        (LOGITS, None, TARGET, {"temperature": float("inf")}, "temperature must be a finite number > 0"),
        (LOGITS, None, TARGET, {"bce": True, "target_threshold": float("nan")}, r"target_threshold must be a finite"),
        (
            LOGITS,
            None,
            TARGET,
            {"bce": True, "target_threshold": 1.0},
            r"target_threshold must be a finite .* \[0, 1\)",
        ),
        (LOGITS, None, TARGET, {"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\], got 1.5"),
        (LOGITS, None, TARGET, {"target_threshold": 0.5}, "target_threshold binarises BCE targets"),
    ],
)
def test_masksub_loss_refusals(logits, sub, target, options, message):
    args = {"bce": False, "label_smoothing": 0.0, "ignore_index": -100, "temperature": 1.0, "target_threshold": None}
    args.update(options)
    with refused(message):
        _C.masksub_loss_forward(logits, sub, target, *args.values())
    out = torch.zeros(9, logits.shape[0] if logits.dim() == 2 else 1)
    with refused(message):
        _C.masksub_loss_backward(None, None, out, logits, sub, target, *args.values())


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------


def _loss_inputs(rows, classes, dtype, kind, seed=0):
    generator = torch.Generator().manual_seed(seed)
    main = (torch.randn(rows, classes, generator=generator) * 3).to(dtype).to(DEV)
    sub = (torch.randn(rows, classes, generator=generator) * 3).to(dtype).to(DEV)
    if kind == "dense":
        target = torch.softmax(torch.randn(rows, classes, generator=generator) * 2, 1).to(DEV)
    else:
        target = torch.randint(0, classes, (rows,), generator=generator)
        target[::3] = -100
        target = target.to(DEV)
    return main, sub, target


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("bce", "kind", "eps", "temperature", "threshold"),
    [
        (False, "index", 0.1, 1.0, None),
        (False, "dense", 0.0, 2.0, None),
        (True, "dense", 0.0, 1.0, 0.0),
        (True, "index", 0.1, 0.5, None),
    ],
)
@pytest.mark.parametrize(("rows", "classes"), [(7, 1000), (5, 3), (3, 4500)])
def test_masksub_loss_matches_reference(dtype, bce, kind, eps, temperature, threshold, rows, classes):
    main, sub, target = _loss_inputs(rows, classes, dtype, kind)
    options = (bce, eps, -100, temperature, threshold)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    assert out.dtype == torch.float32 and out.shape == (9, rows)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))
    grad_main = torch.randn(rows, device=DEV)
    grad_sub = torch.tensor(0.7, device=DEV).expand(rows)  # a broadcast scalar: stride 0
    dz, ds = EXT.masksub_loss_backward(grad_main, grad_sub, out, main, sub, target, *options)
    ez, es = ml.loss_backward_reference(grad_main, grad_sub, expected, main, sub, target, *options)
    assert dz.dtype == dtype and ds.dtype == dtype and dz.is_contiguous()
    rtol = {torch.float16: 2**-10, torch.bfloat16: 2**-7}.get(dtype, 1e-5)
    for got, want in ((dz, ez), (ds, es)):
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rtol * float(want.abs().max()))
    only_sub = EXT.masksub_loss_backward(None, grad_sub, out, main, sub, target, *options)
    assert only_sub[0].numel() == 0 and torch.equal(only_sub[1], ds)


@kernels
def test_masksub_loss_single_terms_and_ignored_rows():
    main, sub, target = _loss_inputs(6, 50, torch.float32, "index")
    target[:] = -100  # every row ignored: zero losses, zero gradients
    out = EXT.masksub_loss_forward(main, sub, target, False, 0.1, -100, 1.0, None)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    dz, ds = EXT.masksub_loss_backward(torch.ones(6, device=DEV), torch.ones(6, device=DEV), out, main, sub,
                                      target, False, 0.1, -100, 1.0, None)  # fmt: skip
    assert torch.equal(dz, torch.zeros_like(dz)) and torch.equal(ds, torch.zeros_like(ds))
    sub_only = EXT.masksub_loss_forward(main, sub, None, False, 0.0, -100, 1.0, None)
    expected = ml.loss_forward_reference(main, sub, None, False, 0.0, -100, 1.0, None)
    torch.testing.assert_close(sub_only, expected, rtol=2e-6, atol=1e-6)
    main_only = EXT.masksub_loss_forward(main, None, target.clamp_min(0), True, 0.0, -100, 1.0, None)
    expected = ml.loss_forward_reference(main, None, target.clamp_min(0), True, 0.0, -100, 1.0, None)
    torch.testing.assert_close(main_only, expected, rtol=2e-6, atol=1e-6)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_masksub_loss_forward_underflow_and_minus_inf(dtype, kind, temperature):
    # the forward's exponentials flush results below 2^-126 to 0 (ex2.approx.ftz): logits 80-200 below the row's
    # max (e^-d subnormal or 0), -inf logits in both branches (the teacher term's 0 * -inf guard), a row of -inf
    # sub logits except one, and a row whose every logit is -inf but one
    rows, classes = 6, 1000
    main, sub, target = _loss_inputs(rows, classes, dtype, kind)
    main, sub = main.clone(), sub.clone()
    main[:, 1::3] -= torch.linspace(80, 200, main[:, 1::3].shape[1], device=DEV).to(dtype)
    sub[:, 2::5] -= torch.linspace(85, 95, sub[:, 2::5].shape[1], device=DEV).to(dtype)
    main[0, 7::11] = sub[0, 7::11] = -torch.inf
    main[1, 5::13] = -torch.inf
    sub[2, 1:] = -torch.inf
    main[3, 1:] = -torch.inf
    options = (False, 0.0, -100, temperature, None)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected[expected.isfinite()].abs().max()))


@kernels
@pytest.mark.parametrize("bce", [False, True])
def test_masksub_loss_backward_splits_few_rows(bce):
    # 2 rows of 9000 fp32 classes: the backward spreads each row over 5 blocks (grid (M, splits)), split 0 also
    # taking the scalar classes before the row's first 16-byte boundary (row 1 starts 8 bytes past one)
    main, sub, target = _loss_inputs(2, 9002, torch.float32, "dense")
    _check_loss_both_ways(main, sub, target, (bce, 0.1, -100, 2.0, None), grad_rtol=1e-5)


@kernels
@pytest.mark.parametrize(
    ("bce", "kind", "temperature", "terms"),
    [
        (False, "index", 1.0, "both"),
        (False, "dense", 2.0, "both"),
        (True, "index", 1.0, "both"),
        (True, "dense", 0.5, "both"),
        (False, "index", 2.0, "main"),
        (False, "dense", 1.0, "sub"),
        (True, "dense", 2.0, "sub"),
        (False, "dense", 2.0, "sub offset"),
    ],
)
def test_masksub_loss_forward_splits_few_rows(bce, kind, temperature, terms):
    # 3 rows of 9002 fp32 classes: the forward spreads each row over 9 blocks of 128 threads (grid (M, splits)),
    # each storing its merged state in a workspace; the row's last block (an atomic ticket) merges them. Split 0
    # also takes the scalar classes before the row's first 16-byte boundary (row 1 starts 8 bytes past one). CE
    # with class ids: row 2's first 5000 logits -inf (splits whose states are empty; no smoothing, so that the loss
    # stays finite), row 0 ignored. "sub offset": s sits differently from z within 16 bytes, so split 0 reads the
    # whole row element by element and the other splits have no classes (empty states).
    main, sub, target = _loss_inputs(3, 9002, torch.float32, kind)
    if terms == "sub offset":
        sub, terms = _offset_columns(sub, 1), "both"
    eps = 0.1
    if kind == "index" and not bce:
        main[2, :5000] = sub[2, :5000] = -torch.inf
        target[2], eps = 7000, 0.0
    options = (bce, eps, -100, temperature, None)
    if terms == "both":
        _check_loss_both_ways(main, sub, target, options, grad_rtol=1e-5)
        return
    sub, target = (None, target) if terms == "main" else (sub, None)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize(("rows", "classes"), [(4, 9002), (4, 1000)])
def test_masksub_loss_bce_class_id_positions(dtype, eps, rows, classes):
    # BCE with class ids: the forward's vector loop compares no column with the id; the vector holding it is
    # peeled (folded after the loop by thread 0 of its split), and ids before the row's first 16-byte boundary or
    # after its last whole vector go with the scalar classes. Rows start one element past a boundary (fp32: a
    # 3-class head, 9002: a 3-class tail); ids in the head, in a vector of a middle split (4 x 9002: 9 splits),
    # in the last whole vector and in the tail. eps = 0: the instance that sums no z for the weight off the id.
    main, sub, target = _loss_inputs(rows, classes, dtype, "index")
    main, sub = _offset_columns(main, 1), _offset_columns(sub, 1)
    target = torch.tensor([1, classes // 2, classes - 4, classes - 1], device=DEV)
    grad_rtol = {torch.bfloat16: 2**-7}.get(dtype, 1e-5)
    _check_loss_both_ways(main, sub, target, (True, eps, -100, 1.0, None), grad_rtol=grad_rtol)
    target[1] = -100  # an ignored row
    _check_loss_both_ways(main, sub, target, (True, eps, -100, 2.0, None), grad_rtol=grad_rtol)


def _check_loss_both_ways(main, sub, target, options, grad_rtol):
    """The extension's forward (fp32 tolerance) and backward (grad_rtol, scaled by the largest gradient) against
    the reference, with random per-row upstream gradients."""
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))
    rows = main.shape[0]
    grad_main, grad_sub = torch.randn(rows, device=DEV), torch.randn(rows, device=DEV)
    dz, ds = EXT.masksub_loss_backward(grad_main, grad_sub, out, main, sub, target, *options)
    ez, es = ml.loss_backward_reference(grad_main, grad_sub, expected, main, sub, target, *options)
    for got, want in ((dz, ez), (ds, es)):
        torch.testing.assert_close(
            got.double(), want.double(), rtol=grad_rtol, atol=grad_rtol * float(want.abs().max())
        )


def _offset_columns(x, offset):
    """x's values in a wider buffer, starting `offset` columns into each row: the same values, rows that sit
    differently within 16 bytes than a contiguous tensor's (and a row stride that is no multiple of 16 bytes)."""
    wide = torch.zeros(x.shape[0], x.shape[1] + offset + 1, dtype=x.dtype, device=x.device)
    wide[:, offset : offset + x.shape[1]] = x
    return wide[:, offset : offset + x.shape[1]]


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "layout",
    ["sub offset", "main offset", "target offset", "target fp32", "target other dtype", "target fp32 offset"],
)
@pytest.mark.parametrize("bce", [False, True])
def test_masksub_loss_row_layouts(dtype, layout, bce):
    # The kernels read a row as 16-byte vectors from its first 16-byte boundary where z, s (dz, ds) and the
    # probabilities sit alike within 16 bytes, else element by element: every layout gives the reference's values.
    # "main offset": z's rows differ from the contiguous dz's (the backward's scalar path); probabilities in fp32
    # with narrower logits are two 16-byte words per vector; in another dtype, the binding makes them fp32.
    rows, classes = 5, 700
    main, sub, target = _loss_inputs(rows, classes, dtype, "index" if layout.endswith("offset") and
                                     not layout.startswith("target") else "dense")  # fmt: skip
    if layout == "sub offset":
        sub = _offset_columns(sub, 1)
    elif layout == "main offset":
        main = _offset_columns(main, 3)
    elif layout == "target fp32":
        target = target.float()
    elif layout == "target other dtype":
        target = target.to(torch.float16 if dtype != torch.float16 else torch.float64)
    elif layout == "target offset":
        target = _offset_columns(target.to(dtype), 1)
    elif layout == "target fp32 offset":
        target = _offset_columns(target.float(), 2)
    options = (bce, 0.1, -100, 1.0, None)
    _check_loss_both_ways(main, sub, target, options, grad_rtol={torch.bfloat16: 2**-7}.get(dtype, 1e-5))


# ---------------------------------------------------------------------------------------------------------------
# The reduced loss (masksub_loss_reduced_forward / _backward: the reduction in the kernels' launches)
# ---------------------------------------------------------------------------------------------------------------


def _finite_max(x: torch.Tensor) -> float:
    finite = x[x.isfinite()]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _assert_row_grads_close(got, expected, bound, rtol):
    """A reduced loss's logit gradients against the reference's. Each row's upstream gradient (w g_0 + g_term) / d
    cancels where w g_0 ~ -g_term, and each side rounds it in its own order (the kernel fmaf, the reference a product
    then a sum): an error of up to ~2^-24 (|w g_0| + |g_term|) / d, which ``bound`` (the same backward for |g|;
    weights >= 0) carries, 4x over; the rest within ``rtol`` of the result."""
    atol = rtol * _finite_max(expected) + 2.0**-22 * _finite_max(bound)
    torch.testing.assert_close(got.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)


def _check_reduced(main, sub, target, options, weights, mean, rtol=1e-5, grad_rtol=1e-5):
    """The reduced bindings against masksub_loss_reduced's reference: (reduced [4], out, d), then both gradients
    for a random gradient [4] (the per-row gradients computed in the kernel from it and d). Returns the outputs."""
    reduced, out, d = EXT.masksub_loss_reduced_forward(main, sub, target, *options, *weights, mean)
    want_reduced, want_out, want_d = mlr._forward_reference(main, sub, target, *options, *weights, mean)
    assert reduced.shape == (4,) and d.shape == (1,) and reduced.dtype == d.dtype == torch.float32
    torch.testing.assert_close(out, want_out, rtol=2e-6, atol=2e-6 * _finite_max(want_out), equal_nan=True)
    torch.testing.assert_close(reduced, want_reduced, rtol=rtol, atol=rtol * _finite_max(want_reduced), equal_nan=True)
    assert torch.equal(d, want_d)
    need_main, need_sub = target is not None, sub is not None
    # two random gradients, and one whose row gradients nearly cancel: (w g_0 + g_term) ~ 1e-5 |g_term|
    g_0 = 1.2345678
    cancelling = torch.tensor([g_0, -weights[0] * g_0 * (1 + 1e-5), -weights[1] * g_0 * (1 - 1e-5), 0.5])
    for grad in (*(torch.randn(4, generator=torch.Generator().manual_seed(seed)) for seed in range(2)), cancelling):
        grad = grad.to(DEV)
        dz, ds = EXT.masksub_loss_reduced_backward(grad, need_main, need_sub, d, out, main, sub, target, *options,
                                                   *weights)  # fmt: skip
        want = mlr._backward_reference(grad, need_main, need_sub, want_d, want_out, main, sub, target, *options,
                                       *weights)  # fmt: skip
        bound = mlr._backward_reference(grad.abs(), need_main, need_sub, want_d, want_out, main, sub, target,
                                        *options, *weights)  # fmt: skip
        for got, expected, scale, need in zip((dz, ds), want, bound, (need_main, need_sub)):
            if not need:
                assert got.numel() == 0
                continue
            _assert_row_grads_close(got, expected, scale, grad_rtol)
    return reduced, out, d


@kernels
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize(
    ("bce", "kind", "temperature"),
    [(False, "index", 1.0), (False, "dense", 2.0), (True, "index", 0.5), (True, "dense", 1.0)],
)
@pytest.mark.parametrize(("rows", "classes"), [(7, 1000), (3, 9002)])  # one block per row; rows split over blocks
def test_masksub_loss_reduced_matches_reference(mean, bce, kind, temperature, rows, classes):
    # class ids: every third row ignored (d counts the others); (3, 9002): each row over 9 blocks, the row's last
    # block takes the grid's ticket after the row's
    main, sub, target = _loss_inputs(rows, classes, torch.float32, kind)
    _check_reduced(main, sub, target, (bce, 0.1, -100, temperature, None), (0.7, 0.3), mean)


@kernels
@pytest.mark.parametrize("bce", [False, True])
@pytest.mark.parametrize(("need_main", "need_sub"), [(True, False), (False, True)])
def test_masksub_loss_reduced_one_gradient_strided_grad_ignore_index_in_range(bce, need_main, need_sub):
    # 3 rows of 9002 classes (split over blocks), int32 ids, ignore_index a valid class (3: the row holding it is
    # ignored, and under BCE its vector is the peeled one); one gradient wanted while both terms are present; the
    # gradient [4] a stride-0 expansion (as reduced.sum().backward() gives it) and a strided view
    main, sub, target = _loss_inputs(3, 9002, torch.float32, "index", seed=1)
    target = target.int()
    target[0], target[1] = 3, 9001
    options, weights = (bce, 0.1, 3, 1.0, None), (0.6, 0.4)
    reduced, out, d = EXT.masksub_loss_reduced_forward(main, sub, target, *options, *weights, True)
    want_reduced, want_out, want_d = mlr._forward_reference(main, sub, target, *options, *weights, True)
    assert torch.equal(d, want_d) and d.item() == 2.0
    torch.testing.assert_close(reduced, want_reduced, rtol=1e-5, atol=1e-5 * _finite_max(want_reduced))
    strided = torch.randn(8, generator=torch.Generator().manual_seed(2)).to(DEV)[::2]
    for grad in (torch.full((1,), 0.5, device=DEV).expand(4), strided):
        got = EXT.masksub_loss_reduced_backward(grad, need_main, need_sub, d, out, main, sub, target, *options,
                                                *weights)  # fmt: skip
        want = mlr._backward_reference(grad, need_main, need_sub, want_d, want_out, main, sub, target, *options,
                                       *weights)  # fmt: skip
        bound = mlr._backward_reference(grad.abs(), need_main, need_sub, want_d, want_out, main, sub, target,
                                        *options, *weights)  # fmt: skip
        for g, w, scale, need in zip(got, want, bound, (need_main, need_sub)):
            assert g.numel() == (w.numel() if need else 0)
            if need:
                assert not g[0].any()  # the ignored row
                _assert_row_grads_close(g, w, scale, 1e-5)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_masksub_loss_reduced_dtypes_and_int32_ids(dtype):
    main, sub, target = _loss_inputs(9, 300, dtype, "index")
    grad_rtol = {torch.bfloat16: 2**-7}.get(dtype, 1e-5)
    _check_reduced(main, sub, target.int(), (False, 0.1, -100, 1.0, None), (0.5, 0.5), True, grad_rtol=grad_rtol)


@kernels
@pytest.mark.parametrize("rows", [5, 3])  # 3 rows of 9002 classes: split over blocks
def test_masksub_loss_reduced_ignored_bad_and_single_terms(rows):
    classes = 9002 if rows == 3 else 50
    main, sub, target = _loss_inputs(rows, classes, torch.float32, "index")
    options = (False, 0.1, -100, 2.0, None)
    # every row ignored: 0 losses, d = max(0, 1) = 1, zero gradients
    reduced, _, d = _check_reduced(main, sub, torch.full_like(target, -100), options, (0.5, 0.5), True)
    assert reduced.tolist() == [0.0, 0.0, 0.0, 1.0] and d.tolist() == [1.0]
    # a bad class id (out of range, not ignored) poisons both losses; it counts in d
    bad = target.clone()
    bad[0], bad[1] = classes, -100
    reduced, _, d = _check_reduced(main, sub, bad, options, (0.5, 0.5), True)
    assert reduced[:3].isnan().all() and d.item() == float((bad != -100).sum())
    # the sub term only (no target: d = every row) and the main term only
    reduced, _, d = _check_reduced(main, sub, None, options, (0.5, 0.5), True)
    assert d.item() == rows and reduced[1].item() == 0.0
    reduced, _, _ = _check_reduced(main, None, target, options, (0.5, 0.5), False)
    assert reduced[2].item() == 0.0


@kernels
def test_masksub_loss_reduced_no_rows():
    main, sub, target = _loss_inputs(0, 10, torch.float32, "index")
    reduced, out, d = EXT.masksub_loss_reduced_forward(main, sub, target, False, 0.0, -100, 1.0, None, 0.5, 0.5, True)
    assert reduced.tolist() == [0.0, 0.0, 0.0, 1.0] and d.tolist() == [1.0] and out.shape == (9, 0)
    dz, ds = EXT.masksub_loss_reduced_backward(torch.ones(4, device=DEV), True, True, d, out, main, sub, target,
                                               False, 0.0, -100, 1.0, None, 0.5, 0.5)  # fmt: skip
    assert dz.shape == ds.shape == (0, 10)


def _block_sum(values: np.ndarray, threads: int) -> np.float32:
    """The forward's reduction order over fp32 per-row values: thread t sums rows t, t + threads, ... in turn, then
    each warp's butterfly of shuffles (xor 16, 8, ..., 1), then the warp sums' butterfly (xor 4, 2, 1) in lane 0."""
    partial = np.zeros(threads, dtype=np.float32)
    for start in range(0, len(values), threads):
        chunk = values[start : start + threads]
        partial[: len(chunk)] += chunk
    lanes = partial.reshape(-1, 32)
    for offset in (16, 8, 4, 2, 1):
        lanes = lanes + lanes[:, np.arange(32) ^ offset]
    warps = np.zeros(32, dtype=np.float32)
    warps[: lanes.shape[0]] = lanes[:, 0]
    for offset in (4, 2, 1):
        warps = warps + warps[np.arange(32) ^ offset]
    return warps[0]


@kernels
def test_masksub_loss_reduced_fixed_order():
    # The reduction's order is fixed (the same bits whichever row finishes last): the sums of the kernel's own
    # per-row losses in that order, bit for bit. 300 rows of 1000 fp32 classes run in blocks of 128 threads
    # (loss_threads); per-row losses spread over 8 decades, so that other orders give other bits.
    rows = 300
    main, sub, target = _loss_inputs(rows, 1000, torch.float32, "index")
    main = main * torch.logspace(-4, 4, rows, device=DEV)[:, None]
    sub = sub * torch.logspace(4, -4, rows, device=DEV)[:, None]
    options = (False, 0.0, -100, 1.0, None)
    reduced, out, d = EXT.masksub_loss_reduced_forward(main, sub, target, *options, 0.5, 0.5, True)
    losses = out[:2].cpu().numpy()
    assert d.item() == float((target != -100).sum())
    for term in (0, 1):
        fixed = _block_sum(losses[term], 128) / np.float32(d.item())
        assert reduced[1 + term].item() == float(fixed)
        # the data make the order matter: sequential sums in other orders give other bits
        orders = [np.random.default_rng(seed).permutation(rows) for seed in range(8)]
        assert len({float(np.cumsum(losses[term][order], dtype=np.float32)[-1]) for order in orders}) > 1
    again = EXT.masksub_loss_reduced_forward(main, sub, target, *options, 0.5, 0.5, True)[0]
    assert torch.equal(again, reduced)


# helper-184's mutation audit of csrc/masksub_loss.cu, masksub_loss_backward.cu and bindings_loss.cpp (17 mutants, 8
# gaps)

CE_OPTIONS = (False, 0.0, -100, 1.0, None)  # bce, label_smoothing, ignore_index, temperature, target_threshold


def _inputs(rows, classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    main = (torch.randn(rows, classes, generator=generator) * 3).to(DEV)
    sub = (torch.randn(rows, classes, generator=generator) * 3).to(DEV)
    target = torch.randint(0, classes, (rows,), generator=generator).to(DEV)
    return main, sub, target


# ---------------------------------------------------------------------------------------------------------------
# The bindings' own refusals, on the emulator's bindings too (test_cuda_loss.py's refusal tests run on the prebuilt
# _C only, so a mutant of bindings_loss.cpp reaches no test on a machine without a GPU)
# ---------------------------------------------------------------------------------------------------------------


@kernels
@pytest.mark.parametrize(
    ("call", "message"),
    [
        # kills K1 (bindings_loss.cpp:41 `!target_threshold || bce` -> `true`): a threshold with CE
        (lambda z, y, out: EXT.masksub_loss_forward(z, z, y, False, 0.0, -100, 1.0, 0.5), "target_threshold binarises"),
        # kills K4 (bindings_loss.cpp:37 `C >= 1` -> `C >= 0`): no classes
        (
            lambda z, y, out: EXT.masksub_loss_forward(z[:, :0], None, y, False, 0.0, -100, 1.0, None),
            "logits must have at least one class",
        ),
        # kills K2 (bindings_loss.cpp:96, the row gradient's length not checked): the kernel would read grad_main
        # past its end
        (
            lambda z, y, out: EXT.masksub_loss_backward(torch.ones(3, device=DEV), None, out, z, z, y, *CE_OPTIONS),
            r"grad_main must have shape \[4\]",
        ),
        # kills K3 (bindings_loss.cpp:214 CHECK_SHAPE(grad, 4) removed): the kernel would read grad[1], grad[2]
        # past a [1] tensor
        (
            lambda z, y, out: EXT.masksub_loss_reduced_backward(
                torch.ones(1, device=DEV), True, True, torch.ones(1, device=DEV), out, z, z, y, *CE_OPTIONS, 0.5, 0.5
            ),
            r"grad must have shape \[4\]",
        ),
    ],
    ids=["threshold with ce", "no classes", "short grad_main", "short reduced grad"],
)
def test_masksub_loss_bindings_refuse_what_the_ops_refuse(call, message):
    z, y = torch.randn(4, 9, device=DEV), torch.tensor([0, 8, 2, 3], device=DEV)
    out = EXT.masksub_loss_forward(z, z, y, *CE_OPTIONS)
    with refused(message):
        call(z, y, out)


@kernels
def test_masksub_loss_label_smoothing_one_is_accepted():
    # kills K5 (bindings_loss.cpp:38 `label_smoothing <= 1.0` -> `< 1.0`): the ops accept eps = 1 (losses.py
    # _check_options: [0, 1]), so the binding must too; every weight is then 1 / C
    main, sub, target = _inputs(3, 40)
    options = (False, 1.0, -100, 1.0, None)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------


@kernels
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_masksub_loss_student_minus_inf_where_the_teacher_probability_is_subnormal(temperature):
    # kills F4 (masksub_loss.cu:370 `log2_p >= -150.0f` -> `>= -100.0f`): a -inf student logit costs +inf where its
    # teacher probability is a nonzero fp32 subnormal (log2 p in [-150, -126)), nothing where it rounds to 0. The
    # tests elsewhere put their -inf student logits where the teacher's are -inf too, or where p is large.
    main, sub, target = _inputs(2, 300)
    main, sub = main.clone(), sub.clone()
    top = main.max(1).values
    main[0, 5] = top[0] - 95.0 * temperature  # p ~ e^-95 = 2^-137: a subnormal, not 0 -> the row's sub loss is +inf
    main[1, 5] = top[1] - 110.0 * temperature  # p ~ e^-110 = 2^-159: 0 in fp32 -> finite
    sub[:, 5] = -torch.inf
    options = (False, 0.0, -100, temperature, None)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    assert expected[1, 0].item() == float("inf") and torch.isfinite(expected[1, 1])
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected[expected.isfinite()].abs().max()))


@kernels
def test_masksub_loss_ce_probability_targets_that_do_not_sum_to_one():
    # kills B1 (masksub_loss_backward.cu:31 `g.s_z * exp2f(...)` -> `exp2f(...)`): the CE gradient is S p - w with
    # S = sum_c w_c; every other test's targets sum to 1 (softmax, one-hot with smoothing), where S = 1
    main, sub, target = _inputs(5, 700)
    target = torch.rand(5, 700, generator=torch.Generator().manual_seed(3)).to(DEV) * 0.01  # sums ~3.5
    options = (False, 0.1, -100, 2.0, None)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))
    grad_main, grad_sub = torch.randn(5, device=DEV), torch.randn(5, device=DEV)
    dz, ds = EXT.masksub_loss_backward(grad_main, grad_sub, out, main, sub, target, *options)
    ez, es = ml.loss_backward_reference(grad_main, grad_sub, expected, main, sub, target, *options)
    for got, want in ((dz, ez), (ds, es)):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@kernels
@pytest.mark.parametrize("classes", [700, 5])  # vectors and scalar classes; scalar classes only
def test_masksub_loss_bce_infinite_logits_at_targets_of_zero_and_one(classes):
    # kills F1 (masksub_loss.cu:41 `linear += t != 0.0f ? t * z[i] : 0.0f` -> `linear += t * z[i]`): BCE with
    # probability targets, softplus(z) - w z is finite at z = -inf where w = 0 and at z = +inf where w = 1
    # (t = [z > 0] - w = 0 there: 0, not 0 * inf = NaN); no other test puts an infinite logit under BCE
    main, _, _ = _inputs(3, classes)
    main = main.clone()
    target = (torch.rand(3, classes, generator=torch.Generator().manual_seed(4)) > 0.5).float().to(DEV)
    target[0, 3], main[0, 3] = 0.0, -torch.inf
    target[1, 4], main[1, 4] = 1.0, torch.inf
    target[2, 1], main[2, 1] = 0.0, -torch.inf
    target[2, 2], main[2, 2] = 1.0, torch.inf
    options = (True, 0.0, -100, 1.0, None)
    out = EXT.masksub_loss_forward(main, None, target, *options)
    expected = ml.loss_forward_reference(main, None, target, *options)
    assert expected[0].isfinite().all()
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))


@kernels
def test_masksub_loss_bce_class_ids_positive_infinite_logit_off_the_id():
    # kills F12 (masksub_loss.cu:340 `n = st.p_z == INFINITY ? 0.0f : st.n_z - st.p_z` -> `n = st.n_z - st.p_z`):
    # BCE with class ids and label smoothing, a +inf logit off the id: P = +inf, and the row's term is +inf
    # (N = A' - P would be inf - inf = NaN); no other test puts an infinite logit under BCE
    main, _, target = _inputs(3, 700)
    main = main.clone()
    target[:] = torch.tensor([10, 20, 30])
    main[0, 11] = torch.inf  # a vector of the row
    main[1, 699] = torch.inf  # the row's last class
    options = (True, 0.1, -100, 1.0, None)
    out = EXT.masksub_loss_forward(main, None, target, *options)
    expected = ml.loss_forward_reference(main, None, target, *options)
    assert expected[0, :2].tolist() == [float("inf")] * 2 and expected[0, 2].isfinite()
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected[expected.isfinite()].abs().max()))
