"""The torch backend's eager path of the fused loss (ops/masksub_loss.py, _EagerLoss) against the reference functions
loss_forward_reference / loss_backward_reference, its oracle: the per-row losses and both gradients, for every
option and the edge cases the reference handles (ignored rows, ids out of range, -inf logits, empty batches...).

fp32: values and gradients to 1e-6 relative (plus 1e-6 of the largest gradient): the eager path sums w log p as a
dot product and takes softmax(z) as exp(log_softmax(z)), so roundings may differ, never more. The test of the
public losses against the float64 oracle (test_masksub_loss.py) runs this path as its 'torch' backend.
"""

import pytest
import torch
from _eager_cases import BF16, F16, F32, F64
from _eager_cases import assert_close_to_oracle as _close
from _eager_cases import loss_inputs as _inputs
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels.ops import _masksub_loss_eager as eager_path
from masksub_kernels.ops import masksub_loss as ml


def _check(main, sub, target, options, *, need=(True, True), grad_rows=None):
    """The eager op (through _loss_op with the torch backend) against the reference: rows MAIN and SUB of the
    output, and the gradients of sum(g_main * main + g_sub * sub) for per-row weights g."""
    rows = main.shape[0]
    gen = torch.Generator().manual_seed(5)
    g_main, g_sub = grad_rows or (torch.randn(rows, generator=gen).to(DEVICE) for _ in "ms")
    leaves = [t.detach().clone().requires_grad_(n) if t is not None else None for t, n in zip((main, sub), need)]
    with mk.use_backend("torch"):
        out = ml._loss_op(leaves[0], leaves[1], target, *options)
    assert mk.last_backend("masksub_loss") == "torch"
    assert out.shape == (ml.NUM_OUT, rows) and out.dtype == torch.float32
    assert bool(out[ml.SUB + 1 :].isnan().all())  # the kernels' stats: not computed on the eager path
    expected = ml.loss_forward_reference(main, sub, target, *options)
    _close(out[ml.MAIN], expected[ml.MAIN], F32 if main.dtype != F64 else F64, "main")
    _close(out[ml.SUB], expected[ml.SUB], F32 if main.dtype != F64 else F64, "sub")
    wanted = [leaf is not None and leaf.requires_grad for leaf in leaves]
    wanted[0] = wanted[0] and target is not None
    if not any(wanted):
        return out
    (g_main * out[ml.MAIN] + g_sub * out[ml.SUB]).sum().backward()
    ref_main = g_main if wanted[0] else None
    ref_sub = g_sub if wanted[1] else None
    dz, ds = ml.loss_backward_reference(ref_main, ref_sub, expected, main, sub, target, *options)
    for name, leaf, want, reference in (("d main", leaves[0], wanted[0], dz), ("d sub", leaves[1], wanted[1], ds)):
        if want:
            assert leaf.grad.dtype == leaf.dtype
            _close(leaf.grad, reference, leaf.dtype, name)
        elif leaf is not None and leaf.requires_grad:
            assert leaf.grad is None  # the sub term never reaches the main logits
    return out


# mode, classes, dtype, target kind, label_smoothing, temperature, target_threshold
CASES = [
    ("ce", 1, F32, "ids", 0.0, 1.0, None),
    ("ce", 1, F32, "ids", 0.1, 1.0, None),
    ("ce", 7, F32, "ignore", 0.1, 1.0, None),
    ("ce", 1000, F32, "ids", 0.0, 1.0, None),
    ("ce", 1000, F32, "ignore", 0.0, 2.0, None),
    ("ce", 50, F32, "dense", 0.0, 1.0, None),
    ("ce", 50, F32, "dense", 0.2, 0.5, None),
    ("ce", 33, F32, "bad", 0.1, 1.0, None),
    ("ce", 33, F64, "ignore", 0.1, 3.0, None),
    ("ce", 33, F16, "ids", 0.0, 1.0, None),
    ("ce", 33, BF16, "dense", 0.1, 2.0, None),
    ("bce", 1, F32, "ids", 0.0, 1.0, None),
    ("bce", 7, F32, "ignore", 0.1, 2.0, None),
    ("bce", 50, F32, "dense", 0.0, 1.0, 0.0),
    ("bce", 50, F32, "dense", 0.1, 1.0, 0.3),
    ("bce", 33, F32, "bad", 0.0, 1.0, None),
    ("bce", 33, F64, "dense", 0.1, 0.5, None),
    ("bce", 33, BF16, "ids", 0.1, 1.0, None),
]


@pytest.mark.parametrize(("mode", "classes", "dtype", "kind", "eps", "temperature", "threshold"), CASES)
def test_eager_path_matches_the_reference(mode, classes, dtype, kind, eps, temperature, threshold):
    main, sub, target = _inputs(9, classes, dtype, kind)
    _check(main, sub, target, (mode == "bce", eps, -100, temperature, threshold))


@pytest.mark.parametrize("mode", ["ce", "bce"])
@pytest.mark.parametrize("need", [(True, False), (False, True), (False, False)])
def test_one_gradient_or_none(mode, need):
    main, sub, target = _inputs(6, 20, F32, "ignore")
    _check(main, sub, target, (mode == "bce", 0.1, -100, 2.0, None), need=need)


@pytest.mark.parametrize("mode", ["ce", "bce"])
def test_one_term(mode):
    main, sub, target = _inputs(6, 20, F32, "ids")
    _check(main, None, target, (mode == "bce", 0.1, -100, 1.0, None), need=(True, False))  # the main term alone
    _check(main, sub, None, (mode == "bce", 0.0, -100, 2.0, None))  # the sub term alone (self-distillation)


def test_empty_batch():
    for mode in ("ce", "bce"):
        main, sub, target = _inputs(0, 5, F32, "ids")
        out = _check(main, sub, target, (mode == "bce", 0.1, -100, 1.0, None))
        assert out.shape == (ml.NUM_OUT, 0)


@pytest.mark.parametrize(("mode", "kind"), [("ce", "ids"), ("ce", "dense"), ("bce", "ids"), ("bce", "dense")])
def test_infinite_logits(mode, kind):
    # -inf where a class has no weight: 0 * -inf must count as 0 (the dot product falls back to the select); 1e4
    # logits; an ignored row of -inf (and one of +inf) logits: its gradient is 0, not 0 * NaN (the [M, C] select).
    main, sub, target = _inputs(6, 7, F32, kind)
    main[:, 0], sub[:, 1] = 1e4, -1e4
    main[1, 2] = main[3, 4] = sub[3, 4] = sub[0, 5] = float("-inf")
    if kind == "dense":
        target[1, 2] = target[3, 4] = 0.0
    else:
        target = torch.tensor([0, 1, 3, 5, -100, -100], device=DEVICE)
        main[4], sub[4] = float("-inf"), float("-inf")
        main[5, 3] = sub[5, 2] = float("inf")
    _check(main, sub, target, (mode == "bce", 0.0, -100, 1.0, None))
    if kind != "dense":
        _check(main, sub, target, (mode == "bce", 0.0, -100, 2.0, None))


def test_any_grad_output_and_retained_graph():
    # Non-finite grad_output on ignored rows still gives 0 there; a second backward of the same graph (retain_graph)
    # gives the same gradients: the backward never writes the tensors it saved.
    main, sub, target = _inputs(6, 30, F32, "ignore")
    g_main = torch.tensor([float("nan"), 1.0, 2.0, float("inf"), -1.0, 0.5], device=DEVICE)
    _check(main, sub, target, (False, 0.1, -100, 1.0, None), grad_rows=(g_main, torch.ones(6, device=DEVICE)))
    leaves = [t.clone().requires_grad_(True) for t in (main, sub)]
    with mk.use_backend("torch"):
        out = ml._loss_op(*leaves, target, False, 0.1, -100, 1.0, None)
    objective = (out[ml.MAIN] + 2 * out[ml.SUB]).sum()
    first = torch.autograd.grad(objective, leaves, retain_graph=True)
    second = torch.autograd.grad(objective, leaves)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("reduction", "function"), [("mean", "_ReducedLoss"), ("none", "_EagerLoss")])
def test_public_loss_runs_the_eager_path_and_compile_the_reference(monkeypatch, reduction, function):
    # Eager: the public loss reaches the eager path's autograd.Function (the reduced one for 'mean', the per-row one
    # for 'none'); under torch.compile the custom op (the reference) runs instead.
    main, sub, target = _inputs(5, 10, F32, "ignore")
    main.requires_grad_(True)
    calls = []
    cls = getattr(eager_path, function)
    original = cls.apply
    monkeypatch.setattr(cls, "apply", lambda *args: calls.append(1) or original(*args))

    def loss(a, b, y):
        return mk.masksub_loss(a, b, y, label_smoothing=0.1, reduction=reduction).loss

    with mk.use_backend("torch"):
        eager = loss(main, sub, target)
        assert calls == [1]
        value = torch.compile(loss, backend="eager")(main, sub, target)
        assert calls == [1]
    torch.testing.assert_close(value, eager, rtol=1e-6, atol=0)


# helper-176's mutation audit of _masksub_loss_eager.py: the fast path's conditions (no masks where every id is in
# range and ignore_index outside the ids' range)


def _rows_close(out, expected):
    for row in (ml.MAIN, ml.SUB):
        torch.testing.assert_close(out[row], expected[row], rtol=1e-6, atol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# _masksub_loss_eager.py
# ---------------------------------------------------------------------------------------------------------------


def test_eager_id_equal_to_classes_alone_is_a_nan_row():
    # kills _masksub_loss_eager.py:76 `high < classes` -> `high <= classes`: the only out-of-range id is exactly C
    # (every other id in range, no ignored row), so the CPU fast path (no masks) must not be taken: row 1 is NaN
    # (the mutant gathers column C: an index error)
    gen = torch.Generator().manual_seed(0)
    z, s = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    target = torch.tensor([0, 5, 2, 4])
    options = (False, 0.0, -100, 1.0, None)  # bce, label_smoothing, ignore_index, temperature, threshold
    out = eager_path.loss_forward_eager(z, s, target, *options)
    expected = ml.loss_forward_reference(z, s, target, *options)
    _rows_close(out, expected)
    assert bool(out[ml.MAIN, 1].isnan()) and bool(out[ml.SUB, 1].isnan())


@pytest.mark.parametrize("reduced", [False, True])
def test_eager_ignore_index_inside_the_class_range(reduced):
    # kills _masksub_loss_eager.py:76 `not low <= ignore_index <= high` dropped: ignore_index = 2 is a valid class
    # id, so the ids' range [0, 4] holds it and row 1 (id 2) must be ignored (loss 0, no gradient); the mutant takes
    # the fast path and counts it
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, 5, generator=gen).requires_grad_()
    s = torch.randn(3, 5, generator=gen).requires_grad_()
    target = torch.tensor([0, 2, 4])
    options = (False, 0.0, 2, 1.0, None)
    expected = ml.loss_forward_reference(z.detach(), s.detach(), target, *options)
    assert float(expected[ml.MAIN, 1]) == 0.0 and float(expected[ml.SUB, 1]) == 0.0
    if reduced:
        red, out = eager_path.reduced_loss_eager(z, s, target, *options, 0.5, 0.5, True)
        assert float(red[3].detach()) == 2.0  # rows that count
        red[0].backward()
        assert bool((z.grad[1] == 0).all()) and bool((s.grad[1] == 0).all())
    else:
        out = eager_path.loss_forward_eager(z, s, target, *options)
        out[: ml.SUB + 1].sum().backward()
        assert bool((z.grad[1] == 0).all()) and bool((s.grad[1] == 0).all())
    _rows_close(out.detach(), expected)


# helper-338's mutation audit of _masksub_loss_eager.py: option combinations no case above reached


@pytest.mark.parametrize("reduced", [False, True])
def test_eager_negative_id_alone_is_a_nan_row(reduced):
    # kills _masksub_loss_eager.py _Rows `0 <= low and high < classes` -> `high < classes`: the only out-of-range
    # id is negative (no id C, no ignored row: ignore_index -100 lies below the ids' range), so the CPU fast path
    # (no masks) must not be taken: row 2 is NaN in both terms and in both gradients, as the reference's
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 6, generator=gen).requires_grad_()
    s = torch.randn(4, 6, generator=gen).requires_grad_()
    target = torch.tensor([0, 5, -7, 3])
    options = (False, 0.1, -100, 1.0, None)
    expected = ml.loss_forward_reference(z.detach(), s.detach(), target, *options)
    if reduced:
        red, out = eager_path.reduced_loss_eager(z, s, target, *options, 1.0, 1.0, False)
        assert bool(red[:3].isnan().all())
        red[0].backward()
        g = torch.ones(4)
    else:
        out = eager_path.loss_forward_eager(z, s, target, *options)
        g = torch.randn(4, generator=gen)
        (g * (out[ml.MAIN] + out[ml.SUB])).sum().backward()
    _rows_close(out.detach(), expected)
    assert bool(out[ml.MAIN, 2].isnan()) and bool(out[ml.SUB, 2].isnan())
    dz, ds = ml.loss_backward_reference(g, g, expected, z.detach(), s.detach(), target, *options)
    _close(z.grad, dz, F32, "d main")
    _close(s.grad, ds, F32, "d sub")


@pytest.mark.parametrize("reduced", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_eager_fp64_class_ids_all_counting(reduced, temperature):
    # kills _masksub_loss_eager.py _forward `direct = acc == torch.float32 and rows.keep is None` -> `direct =
    # rows.keep is None`: fp64 logits with every id in range and none ignored (the cases above give fp64 ignored
    # rows) must not gather fp64 log-probabilities into the fp32 output (out=: a dtype error), and stay fp64-exact
    main, sub, target = _inputs(7, 33, F64, "ids")
    options = (False, 0.0, -100, temperature, None)
    if not reduced:
        _check(main, sub, target, options)
        return
    red, out = eager_path.reduced_loss_eager(main, sub, target, *options, 0.5, 0.5, True)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    _close(out[: ml.SUB + 1], expected[: ml.SUB + 1], F64, "rows")
    _close(red[1:3], expected[: ml.SUB + 1].double().mean(1), F32, "reduced")


@pytest.mark.parametrize("reduced", [False, True])
def test_eager_ce_probability_target_threshold_without_smoothing(reduced):
    # kills _masksub_loss_eager.py _weights_lean `(q > threshold)` dropped (-> `q`) and `q > threshold` -> `q >=
    # threshold`: the op (not the public losses, which refuse a threshold with mode='ce') binarises a CE
    # probability target as the reference does, here with no label smoothing (the lean weights' own branch) and
    # targets exactly at the threshold (0.25: not above it, weight 0)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5, 8, generator=gen).requires_grad_()
    s = torch.randn(5, 8, generator=gen).requires_grad_()
    target = torch.tensor([0.0, 0.25, 0.5, 0.125, 0.125, 0.0, 0.0, 0.0]).repeat(5, 1)
    target[:, 5:] = torch.rand(5, 3, generator=gen)  # some above, some below 0.25
    target[1, 0] = 0.25
    options = (False, 0.0, -100, 1.0, 0.25)
    expected = ml.loss_forward_reference(z.detach(), s.detach(), target, *options)
    if reduced:
        red, out = eager_path.reduced_loss_eager(z, s, target, *options, 1.0, 0.0, False)
        _close(red[1], expected[ml.MAIN].double().sum(), F32, "reduced main")
        red[0].backward()
        g = torch.ones(5)
    else:
        out = eager_path.loss_forward_eager(z, s, target, *options)
        g = torch.randn(5, generator=gen)
        (g * out[ml.MAIN]).sum().backward()
    _close(out[ml.MAIN].detach(), expected[ml.MAIN], F32, "main")
    dz, _ = ml.loss_backward_reference(g, None, expected, z.detach(), s.detach(), target, *options)
    _close(z.grad, dz, F32, "d main")
