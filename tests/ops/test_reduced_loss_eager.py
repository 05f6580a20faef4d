"""The reduced op's eager path (reduced_loss_eager, ops/_masksub_loss_eager.py) against its oracle: the reference
per-row losses (loss_forward_reference) reduced in float64, and loss_backward_reference fed the per-row grads
g_main = (main_weight g[0] + g[1]) / divisor and g_sub = (sub_weight g[0] + g[2]) / divisor.

reduced = (main_weight * main + sub_weight * sub, main, sub, divisor), fp32 [4]; out: fp32 [9, M], rows MAIN and
SUB the per-row losses. fp32: values and gradients to 1e-6 relative (plus 1e-6 of the largest gradient).
"""

import pytest
import torch
from _eager_cases import BF16, F16, F32, F64
from _eager_cases import assert_close_to_oracle as _close
from _eager_cases import loss_inputs as _inputs
from conftest import DEVICE

from masksub_kernels.ops import _masksub_loss_eager as eager_path
from masksub_kernels.ops import masksub_loss as ml
from masksub_kernels.ops._masksub_loss_eager import reduced_loss_eager


def _oracle(main, sub, target, options, weights, mean):
    """(reduced float64 [4], out rows [2, M]) from the reference's per-row losses."""
    out = ml.loss_forward_reference(main, sub, target, *options)
    if target is None or target.is_floating_point():
        count = main.shape[0]
    else:
        count = int((target != options[2]).sum())
    divisor = float(max(count, 1)) if mean else 1.0
    terms = out[: ml.SUB + 1].double().sum(1) / divisor
    loss = weights[0] * terms[0] + weights[1] * terms[1]
    return torch.stack([loss, terms[0], terms[1], torch.tensor(divisor, dtype=F64, device=out.device)]), out


def _check(main, sub, target, options, *, weights=(0.5, 0.5), mean=True, need=(True, True), g=None, sub_term=True):
    """Values, then the gradients of g . reduced (g [4], random by default) against the reference's."""
    sub = sub if sub_term else None
    leaves = [t.detach().clone().requires_grad_(n) if t is not None else None for t, n in zip((main, sub), need)]
    reduced, out = reduced_loss_eager(leaves[0], leaves[1], target, *options, *weights, mean)
    assert reduced.shape == (4,) and reduced.dtype == F32 and out.shape == (ml.NUM_OUT, main.shape[0])
    assert out.dtype == F32 and not out.requires_grad
    expected, expected_out = _oracle(main, sub, target, options, weights, mean)
    value_dtype = F64 if main.dtype == F64 else F32
    _close(out[: ml.SUB + 1], expected_out[: ml.SUB + 1], value_dtype, "rows")
    _close(reduced, expected, F32, "reduced")  # fp32 [4] on every dtype
    wanted = [leaf is not None and leaf.requires_grad for leaf in leaves]
    wanted[0] = wanted[0] and target is not None
    if not any(leaf is not None and leaf.requires_grad for leaf in leaves):
        assert not reduced.requires_grad
        return reduced
    if g is None:
        g = torch.randn(4, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    grads = torch.autograd.grad(reduced, [x for x in leaves if x is not None and x.requires_grad], g, allow_unused=True)
    grads = dict(zip([i for i, x in enumerate(leaves) if x is not None and x.requires_grad], grads))
    divisor = float(expected[3])
    g64 = g.double().cpu()
    g_rows = [((w * g64[0] + g64[1 + i]) / divisor).item() for i, w in enumerate(weights)]
    rows = main.shape[0]
    per_row = [
        torch.full((rows,), v, dtype=F64, device=main.device) if want else None for v, want in zip(g_rows, wanted)
    ]
    dz, ds = ml.loss_backward_reference(*per_row, expected_out, main, sub, target, *options)
    for i, (want, reference) in enumerate(zip(wanted, (dz, ds))):
        if i not in grads:
            continue
        got = grads[i]
        if not want:  # the sub term never reaches the main logits
            assert got is None
            continue
        if got is None:  # a zero grad_output: autograd's zero
            got = torch.zeros_like(reference)
        assert got.dtype == leaves[i].dtype
        _close(got, reference, leaves[i].dtype, f"d{'main sub'.split()[i]}")
    return reduced


# mode, classes, dtype, target kind, label_smoothing, temperature, target_threshold
CASES = [
    ("ce", 1, F32, "ids", 0.0, 1.0, None),
    ("ce", 7, F32, "ignore", 0.1, 1.0, None),
    ("ce", 1000, F32, "ids", 0.0, 1.0, None),
    ("ce", 100, F32, "ignore", 0.0, 2.0, None),
    ("ce", 50, F32, "dense", 0.0, 1.0, None),
    ("ce", 50, F32, "dense", 0.2, 0.5, None),
    ("ce", 33, F32, "none", 0.0, 3.0, None),
    ("ce", 33, F32, "bad", 0.1, 1.0, None),
    ("ce", 33, F32, "all_ignored", 0.0, 1.0, None),
    ("ce", 33, F64, "ignore", 0.1, 3.0, None),
    ("ce", 33, F16, "ids", 0.0, 1.0, None),
    ("ce", 33, BF16, "dense", 0.1, 2.0, None),
    ("bce", 1, F32, "ids", 0.0, 1.0, None),
    ("bce", 7, F32, "ignore", 0.1, 2.0, None),
    ("bce", 50, F32, "dense", 0.0, 1.0, 0.0),
    ("bce", 50, F32, "dense", 0.1, 1.0, 0.3),
    ("bce", 20, F32, "none", 0.0, 0.5, None),
    ("bce", 33, F32, "bad", 0.0, 1.0, None),
    ("bce", 33, F64, "dense", 0.1, 0.5, None),
    ("bce", 33, BF16, "ids", 0.1, 1.0, None),
]


@pytest.fixture(params=["host", "device"])
def readable(request, monkeypatch):
    """'device': the code for tensors whose values the host may not read (CUDA: no sync), run on these tensors."""
    if request.param == "device":
        monkeypatch.setattr(eager_path, "_readable", lambda device: False)
    return request.param


@pytest.mark.parametrize(("mode", "classes", "dtype", "kind", "eps", "temperature", "threshold"), CASES)
@pytest.mark.parametrize("mean", [True, False])
def test_reduced_matches_the_oracle(mode, classes, dtype, kind, eps, temperature, threshold, mean, readable):
    main, sub, target = _inputs(9, classes, dtype, kind)
    _check(main, sub, target, (mode == "bce", eps, -100, temperature, threshold), weights=(0.7, 0.4), mean=mean)


@pytest.mark.parametrize("mode", ["ce", "bce"])
@pytest.mark.parametrize("kind", ["ids", "ignore", "dense"])
def test_each_field_alone_and_weights(mode, kind, readable):
    main, sub, target = _inputs(6, 20, F32, kind)
    options = (mode == "bce", 0.1 if kind != "dense" else 0.0, -100, 2.0 if kind == "ignore" else 1.0, None)
    for g in ([1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0], [0.5, -2.0, 3.0, 9.0]):
        _check(main, sub, target, options, g=torch.tensor(g, device=DEVICE))
    _check(main, sub, target, options, weights=(0.0, 1.5))
    _check(main, sub, target, options, weights=(2.0, 0.0), mean=False)


@pytest.mark.parametrize("need", [(True, False), (False, True), (False, False)])
def test_one_gradient_one_term_or_none(need):
    main, sub, target = _inputs(6, 20, F32, "ignore")
    options = (False, 0.1, -100, 2.0, None)
    _check(main, sub, target, options, need=need)
    _check(main, sub, target, options, need=need, sub_term=False)  # no sub term
    _check(main, sub, None, (*options[:1], 0.0, *options[2:]), need=need)  # no main term
    with torch.no_grad():
        reduced, _ = reduced_loss_eager(
            *(t.requires_grad_(True) for t in (main, sub)), target, *options, 0.5, 0.5, True
        )
    assert not reduced.requires_grad


def test_empty_batch(readable):
    for mode in ("ce", "bce"):
        main, sub, target = _inputs(0, 5, F32, "ids")
        reduced = _check(main, sub, target, (mode == "bce", 0.1, -100, 1.0, None))
        assert reduced.tolist() == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(("mode", "kind"), [("ce", "ids"), ("ce", "dense"), ("bce", "ids"), ("bce", "dense")])
def test_infinite_logits(mode, kind, readable):
    # 0 * -inf counts as 0 (the dot products fall back to _soft_ce's select), 1e4 logits, ignored rows of -inf and
    # +inf logits: a zero gradient there, not NaN
    main, sub, target = _inputs(6, 7, F32, kind)
    main[:, 0], sub[:, 1] = 1e4, -1e4
    main[1, 2] = main[3, 4] = sub[3, 4] = sub[0, 5] = float("-inf")
    if kind == "dense":
        target[1, 2] = target[3, 4] = 0.0
    else:
        target = torch.tensor([0, 1, 3, 5, -100, -100], device=DEVICE)
        main[4], sub[4] = float("-inf"), float("-inf")
        main[5, 3] = sub[5, 2] = float("inf")
    for temperature in (1.0, 2.0):
        _check(main, sub, target, (mode == "bce", 0.0, -100, temperature, None))


def test_retained_graph_and_caller_tensors_untouched(readable):
    for kind in ("ids", "ignore", "dense"):
        main, sub, target = _inputs(6, 30, F32, kind)
        leaves = [t.clone().requires_grad_(True) for t in (main, sub)]
        copies = [t.detach().clone() for t in (*leaves, target)]
        reduced, _ = reduced_loss_eager(*leaves, target, False, 0.0, -100, 1.0, None, 0.5, 0.5, True)
        g = torch.tensor([1.0, 0.5, -0.25, 3.0], device=DEVICE)
        first = torch.autograd.grad(reduced, leaves, g, retain_graph=True)
        second = torch.autograd.grad(reduced, leaves, g)
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        for before, after in zip(copies, (*leaves, target)):
            assert torch.equal(before, after)
