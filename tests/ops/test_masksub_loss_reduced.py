"""The reduced MaskSub loss op (ops/masksub_loss_reduced.py): every backend against the per-row op reduced with
torch ops (the semantics the public losses had before the reduction moved into the op), values and gradients.

The per-row op itself is tested against a float64 oracle in test_masksub_loss.py; here the reduction and the
gradients it feeds back are: the count of the rows that count (ignored rows, all rows ignored, probability targets,
no target), 'mean' and 'sum', the weights, a gradient on each of the three losses alone and together, more rows than
one iteration of the reduction kernel, torch.compile and the custom ops' registrations.
"""

import pytest
import torch
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels.ops import masksub_loss as ml
from masksub_kernels.ops import masksub_loss_reduced as reduced_op

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

OPTIONS = {  # bce, label_smoothing, ignore_index, temperature, target_threshold
    "ce": (False, 0.0, -100, 1.0, None),
    "ce smoothed, T=2": (False, 0.1, -100, 2.0, None),
    "bce": (True, 0.0, -100, 1.0, None),
    "bce threshold": (True, 0.1, -100, 1.0, 0.2),
}


def _inputs(rows, classes, target_kind, seed=0):
    generator = torch.Generator().manual_seed(seed)
    main, sub = (torch.randn(rows, classes, generator=generator).to(DEVICE) for _ in range(2))
    if target_kind == "ids":
        target = torch.randint(0, classes, (rows,), generator=generator)
        target[::3] = -100
    elif target_kind == "all ignored":
        target = torch.full((rows,), -100)
    elif target_kind == "probabilities":
        target = torch.softmax(torch.randn(rows, classes, generator=generator), 1)
    else:
        target = None
    return main.requires_grad_(True), sub.requires_grad_(True), None if target is None else target.to(DEVICE)


def _expected(main, sub, target, options, a, b, mean):
    """The per-row op (reference backend) reduced with torch ops: (loss, main, sub) scalars."""
    with mk.use_backend("torch"):
        out = ml._loss_op(main, sub, target, *options)
    if not mean:
        count = 1.0
    elif target is None or target.is_floating_point():
        count = float(max(main.shape[0], 1))
    else:
        count = (target != options[2]).sum().clamp_min(1).float()
    terms = out[ml.MAIN].sum() / count, out[ml.SUB].sum() / count
    return a * terms[0] + b * terms[1], terms[0], terms[1]


def _grads(values, weights, leaves):
    objective = sum(w * v for w, v in zip(weights, values) if w)
    return torch.autograd.grad(objective, leaves, allow_unused=True, retain_graph=True)


def _close(actual, expected, what):
    # None where the objective does not reach a leaf (allow_unused: its terms weigh 0), which must then be zero on the
    # other side (a needed zero gradient is a zero tensor on every backend since 95abde8)
    if expected is None or actual is None:
        other = actual if expected is None else expected
        assert other is None or not other.abs().max(), what
        return
    expected = expected.detach()
    torch.testing.assert_close(actual.detach(), expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()) + 1e-12)


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("target_kind", ["ids", "probabilities", "none"])
@pytest.mark.parametrize("mean", [True, False])
def test_matches_the_per_row_op_reduced(backend, name, target_kind, mean):
    main, sub, target = _inputs(13, 37, target_kind)
    options, a, b = OPTIONS[name], 0.3, 1.7
    reduced, out, d = reduced_op._reduced_loss_op(main, sub, target, *options, a, b, mean)
    expected = _expected(main, sub, target, options, a, b, mean)
    assert reduced.dtype == torch.float32 and reduced.shape == (4,) and out.shape == (ml.NUM_OUT, 13)
    assert d.shape == (1,) and float(d) == float(reduced[3].detach())
    for k in range(3):
        _close(reduced[k], expected[k], f"reduced[{k}]")
    # a gradient on each loss alone, then on all three
    for weights in ((1.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 0.0, -1.5), (1.0, 0.5, 0.25)):
        if target is None and weights[2] == 0 and weights[0] == 0:
            continue  # no term with a gradient
        actual = _grads([reduced[k] for k in range(3)], weights, (main, sub))
        wanted = _grads(expected, weights, (main, sub))
        for x, y, what in zip(actual, wanted, ("d main", "d sub")):
            _close(x, y, f"{what} for weights {weights}")


def test_all_rows_ignored_is_zero(backend):
    main, sub, target = _inputs(6, 11, "all ignored")
    reduced, _, _ = reduced_op._reduced_loss_op(main, sub, target, *OPTIONS["ce"], 0.5, 0.5, True)
    assert reduced.tolist() == [0.0, 0.0, 0.0, 1.0]  # d = max(0 rows, 1)
    d_main, d_sub = torch.autograd.grad(reduced[0], (main, sub))
    assert not d_main.abs().max() and not d_sub.abs().max()


def test_more_rows_than_one_reduction_block(backend):
    from masksub_kernels.ops._masksub_loss_kernels import REDUCE_LANES

    rows = REDUCE_LANES + 5  # the reduction's loop takes 1024 rows a trip (not the rows' 16 lanes): two trips
    main, sub, target = _inputs(rows, 3, "ids", seed=1)
    reduced, _, _ = reduced_op._reduced_loss_op(main, sub, target, *OPTIONS["ce"], 0.5, 0.5, True)
    expected = _expected(main, sub, target, OPTIONS["ce"], 0.5, 0.5, True)
    assert reduced[3].item() == (target != -100).sum().item()
    for k in range(3):
        _close(reduced[k], expected[k], f"reduced[{k}]")


def test_public_losses_reduce_in_the_op(backend):
    main, sub, target = _inputs(9, 21, "ids")
    out = mk.masksub_loss(main, sub, target, main_weight=0.25, sub_weight=2.0)
    per_row = mk.masksub_loss(main, sub, target, main_weight=0.25, sub_weight=2.0, reduction="none")
    count = (target != -100).sum()
    for value, rows in zip(out, per_row):
        _close(value, rows.sum() / count, "public mean")
    total = mk.soft_target_cross_entropy(main, target, reduction="sum")
    _close(total, mk.soft_target_cross_entropy(main, target, reduction="none").sum(), "public sum")
    _close(mk.self_distillation_loss(sub, main), mk.self_distillation_loss(sub, main, reduction="none").mean(), "sd")


def test_losses_changed_in_place_still_backpropagate(backend):
    # the public losses are views of the op's reduced output: the backward must not have saved that output
    main, sub, target = _inputs(7, 19, "ids")
    expected = torch.autograd.grad(mk.masksub_loss(main, sub, target).loss / 4, (main, sub))
    loss = mk.masksub_loss(main, sub, target).loss
    loss /= 4  # gradient accumulation
    for got, want in zip(torch.autograd.grad(loss, (main, sub)), expected):
        _close(got, want, "in-place")


def test_retain_graph_gives_the_same_gradients_twice(backend):
    main, sub, target = _inputs(7, 19, "ids")
    loss = mk.masksub_loss(main, sub, target)
    first = torch.autograd.grad(loss.loss, (main, sub), retain_graph=True)
    second = torch.autograd.grad(loss.loss, (main, sub))
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_opcheck_and_torch_compile(backend):
    main, sub, target = _inputs(5, 7, "ids")
    args = (main, sub, target, False, 0.1, -100, 2.0, None, 0.5, 0.5, True)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(reduced_op._reduced_loss_op.custom_op, args, test_utils=utils)
    _, out, d = reduced_op._reduced_loss_op(*args)
    grad = torch.tensor([1.0, 0.5, -2.0, 0.0], device=DEVICE)
    backward_args = (grad, True, True, d, out, main.detach(), sub.detach(), target, *args[3:-1])
    torch.library.opcheck(reduced_op._reduced_backward_op.custom_op, backward_args, test_utils=utils[:3])
    compiled = torch.compile(lambda a, b, y: mk.masksub_loss(a, b, y).loss, fullgraph=True, backend="aot_eager")
    value = compiled(main, sub, target)
    value.backward()
    expected = _expected(main.detach(), sub.detach(), target, OPTIONS["ce"], 0.5, 0.5, True)[0]
    _close(value.detach(), expected, "compiled")


needs_gpu = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")


@needs_gpu
def test_cuda_graph_replay_rezeroes_the_tickets(kernel_backend):
    # The forward's tickets (the grid's, and the rows' where rows split) are zeroed in the captured graph: each
    # replay on new inputs must reduce afresh, equal to an eager call (bit for bit: the same kernels and order).
    for rows, classes in ((300, 1000), (8, 128256)):  # one block per row; rows split over blocks
        main, sub, target = (t.detach() for t in _inputs(rows, classes, "ids"))
        options = OPTIONS["ce smoothed, T=2"]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: kernels compile outside the capture
            reduced_op._reduced_loss_op(main, sub, target, *options, 0.5, 0.5, True)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured, _, _ = reduced_op._reduced_loss_op(main, sub, target, *options, 0.5, 0.5, True)
        for seed in (1, 2, 3):
            new_main, new_sub, new_target = (t.detach() for t in _inputs(rows, classes, "ids", seed=seed))
            for old, new in ((main, new_main), (sub, new_sub), (target, new_target)):
                old.copy_(new)
            graph.replay()
            eager, _, _ = reduced_op._reduced_loss_op(main, sub, target, *options, 0.5, 0.5, True)
            assert torch.equal(captured, eager), (rows, seed)


@needs_gpu
def test_many_concurrent_rows_reduce_deterministically(kernel_backend):
    # 65536 rows of 64 classes: thousands of blocks finish in any order; the count and the fixed-order sums must
    # be the same bits on every run, and equal to the rows' own losses summed (within fp32 rounding)
    main, sub, target = (t.detach() for t in _inputs(65536, 64, "ids", seed=4))
    options = OPTIONS["ce"]
    first, out, d = reduced_op._reduced_loss_op(main, sub, target, *options, 0.5, 0.5, True)
    assert d.item() == (target != -100).sum().item()
    for _ in range(20):
        again, _, _ = reduced_op._reduced_loss_op(main, sub, target, *options, 0.5, 0.5, True)
        assert torch.equal(again, first)
    expected = out[ml.MAIN].double().sum() / d.double()
    torch.testing.assert_close(first[1].double(), expected[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("target_kind", ["probs", "none", "ids"])
def test_reference_divisor_of_an_empty_or_all_ignored_batch_is_one(target_kind):
    # masksub_loss_reduced.py:57 `max(rows, 1)` / :58 `clamp_min(1)`: the torch op's non-eager path (compile, fake)
    # divides by d = max(rows that count, 1); the eager path has its own copy (_masksub_loss_eager._divisor)
    from masksub_kernels.ops import masksub_loss_reduced as mr

    target = {"probs": torch.zeros(0, 5), "none": None, "ids": torch.full((3,), -100)}[target_kind]
    assert mr.divisor(target, -100, 0 if target_kind != "ids" else 3, True, "cpu").item() == 1.0


@pytest.mark.parametrize("target_kind", ["probs", "ids"])
def test_reference_reduction_matches_the_eager_path(target_kind):
    # masksub_loss_reduced.py:56 (probability targets: d = M, not the count of entries != ignore_index) and :65
    # (a main + b sub): the torch op's non-eager forward (compile, fake, opcheck) against its eager one, with
    # probability targets and unequal weights (the compile test uses ids and a = b = 0.5)
    from masksub_kernels.ops import masksub_loss_reduced as mr

    g = torch.Generator().manual_seed(0)
    main, sub = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ids = torch.tensor([0, 1, -100, 3, 4, 2])
    target = torch.randn(6, 5, generator=g).softmax(1) if target_kind == "probs" else ids
    args = (main, sub, target, False, 0.0, -100, 1.0, None, 0.3, 0.7, True)
    torch.testing.assert_close(mr._forward_reference(*args)[0], mr._eager(*args)[0])


# The torch backend's non-eager path (torch.compile, make_fx, opcheck: _forward_reference, _backward_reference)
# is only compared with values and the gradient of .loss alone with ignore_index -100 (test_opcheck_and_torch_compile);
# its backward's per-term gradients and an ignore_index inside [0, C) were never checked against the eager path. Kills
#   masksub_loss_reduced.py:58 `target != ignore_index` -> `target >= 0` (an ignore_index that is a class id, a
#     padding token's, was counted in the mean's divisor under torch.compile only),
#   :71 `main_weight * g[0] + g[1], sub_weight * g[0] + g[2]` with g[1] / g[2] swapped, or sub_weight -> main_weight,
#     or without `/ d[0]` (the gradients of .main / .sub, and of a mean),
#   :99 need_main / need_sub swapped (sub logits that need no gradient)
def test_compiled_reference_gradients_of_each_term_match_the_eager_path():
    gen = torch.Generator().manual_seed(0)
    main, sub = (torch.randn(6, 5, generator=gen).to(DEVICE) for _ in range(2))
    target = torch.tensor([0, 1, 3, 0, 4, 2], device=DEVICE)  # ignore_index=0: two rows ignored, a class id

    def objective(a, b, y):
        out = mk.masksub_loss(a, b, y, ignore_index=0, main_weight=0.3, sub_weight=1.7, label_smoothing=0.1)
        return 1.3 * out.loss + 0.4 * out.main - 0.7 * out.sub

    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    with mk.use_backend("torch"):
        for sub_needs_grad in (True, False):
            results = []
            for function in (objective, compiled):
                a, b = main.clone().requires_grad_(True), sub.clone().requires_grad_(sub_needs_grad)
                value = function(a, b, target)
                value.backward()
                results.append((value.detach(), a.grad, b.grad))
            (value, d_main, d_sub), (value_c, d_main_c, d_sub_c) = results
            torch.testing.assert_close(value_c, value, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(d_main_c, d_main, rtol=1e-5, atol=1e-7)
            if sub_needs_grad:
                torch.testing.assert_close(d_sub_c, d_sub, rtol=1e-5, atol=1e-7)
            else:
                assert d_sub is None and d_sub_c is None
