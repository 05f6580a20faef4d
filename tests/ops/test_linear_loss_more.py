"""Fused-linear loss cases that a mutation sweep of its Python side found untested: an ignore_index other than -100 on
every path, the single branch's 'sum' and no-grad mean, a trained bias under a frozen head, .loss with one term's own
backward where the other weighs 0, the ignored rows' gradients (zeros, not stale memory), the chunks' memory (chunk_rows
beyond the batch, the reference's default chunks, seen inside the ops), a class id equal to C, fp64 on the recompute
reference, the fakes (a zero-weighted term, the recompute backward's dtypes), and argument checks."""

import pytest
import torch
from conftest import DEVICE, grad_tolerance
from test_linear_loss_chunks import _relative
from test_linear_masksub_loss import (  # noqa: F401 (the fixtures _small_tiles, autouse, and several_chunks)
    GRAD_RTOL,
    OP_BACKENDS,
    _small_tiles,
    assert_grad_close,
    composite,
    leaves,
    make_inputs,
    several_chunks,
)
from torch.utils._python_dispatch import TorchDispatchMode

import masksub_kernels as mk
from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops import _linear_loss_matmuls as matmuls
from masksub_kernels.ops import linear_masksub_loss as lm
from masksub_kernels.ops._linear_loss_grads import _linear_loss_grads_op

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

GRAD_NAMES = ("d main_hidden", "d sub_hidden", "d weight", "d bias")
PAD = 0  # an ignore_index that is a valid class id (a padding token's): its rows count in neither term


@pytest.fixture(
    params=[
        pytest.param(name, marks=(pytest.mark.triton, pytest.mark.gpu_math) if name == "triton" else ())
        for name in OP_BACKENDS
    ]
)
def op_backend(request):
    """Each backend that has the op; the Triton one marked as the loss kernels' test files' are (tests/conftest.py:
    gpu_math, run by `make test` under a GPU's arithmetic)."""
    with mk.use_backend(request.param):
        yield request.param


def _padded_inputs(seed=21, **kwargs):
    """make_inputs' class ids with every third row the padding id PAD."""
    h, hs, w, b, target = make_inputs(kind="index", seed=seed, **kwargs)
    target = torch.where(target == PAD, 1, target)
    target[::3] = PAD
    return h, hs, w, b, target


def _assert_values(values, expected):
    for i, (a, e) in enumerate(zip(values, expected)):
        torch.testing.assert_close(a.detach().double(), e.detach().double(), rtol=1e-5, atol=1e-6, msg=str(i))


def _assert_grads(ours, ref_leaves, rtol, names=GRAD_NAMES):
    for name, a, e in zip(names, ours, ref_leaves):
        if a is not None and e is not None and e.grad is not None:
            assert_grad_close(a.grad, e.grad, rtol, name)


# ---------------------------------------------------------------------------------------------------------------
# ignore_index other than -100: the count of rows on every path
# ---------------------------------------------------------------------------------------------------------------

BACKWARDS = {
    "loss": lambda out: out.loss.backward(),  # the stored gradients; the host's count of rows
    # each term on its own: the recompute op's backward on the saved stats, the mean's count on the device
    "sequential": lambda out: ((0.7 * out.main).backward(retain_graph=True), (1.9 * out.sub).backward()),
    "none": lambda out: (out.loss * torch.linspace(0.5, 1.5, out.loss.shape[0], device=DEVICE)).sum().backward(),
    "no grad": None,  # the recompute op's mean of the values alone
}


@pytest.mark.parametrize("schedule", list(BACKWARDS))
def test_an_ignore_index_other_than_the_default(op_backend, several_chunks, schedule):  # noqa: F811
    h, hs, w, b, target = _padded_inputs()
    options = {"ignore_index": PAD, "main_weight": 0.6, "sub_weight": 0.3, "temperature": 2.0}
    options["reduction"] = "none" if schedule == "none" else "mean"
    ours = leaves(h, hs, w, b)
    with torch.set_grad_enabled(schedule != "no grad"):
        out = mk.linear_masksub_loss(*ours, target, **options)
    expected, ref_leaves = composite(h, hs, w, b, target, **options)
    _assert_values(out, expected)
    if BACKWARDS[schedule] is not None:
        BACKWARDS[schedule](out)
        BACKWARDS[schedule](expected)
        _assert_grads(ours, ref_leaves, GRAD_RTOL[torch.float32])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("grad", [True, False])
def test_single_branch_reductions_with_an_ignore_index(op_backend, several_chunks, reduction, grad):  # noqa: F811
    # linear_soft_target_cross_entropy's 'sum' through the gradients in the forward (it took the mean there), and
    # its no-grad mean (the recompute op's values) over the rows that count under ignore_index=PAD
    h, _, w, b, target = _padded_inputs(seed=22)
    ours = leaves(h, w, b)
    with torch.set_grad_enabled(grad):
        value = mk.linear_soft_target_cross_entropy(*ours, target, ignore_index=PAD, reduction=reduction)
    options = {"ignore_index": PAD, "reduction": reduction, "label_smoothing": 0.0}
    expected, ref_leaves = composite(h, None, w, b, target, single=True, **options)
    _assert_values([value], [expected])
    if grad:
        value.backward()
        expected.backward()
        _assert_grads(ours, ref_leaves, GRAD_RTOL[torch.float32], ("d hidden", "d weight", "d bias"))


# ---------------------------------------------------------------------------------------------------------------
# Which gradients: a bias trained under a frozen head, one term's backward beside .loss
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("single", [False, True])
def test_bias_trained_under_a_frozen_weight(op_backend, single):
    # BitFit-style: the head's weight frozen, its bias and the features trained. The bias's gradient was zeros where
    # the weight alone decided whether the forward stores dW and db
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=23)
    ours = leaves(h, hs, w, b)
    ours[2].requires_grad_(False)
    if single:
        mk.linear_soft_target_cross_entropy(ours[0], *ours[2:], target).backward()
    else:
        mk.linear_masksub_loss(*ours, target).loss.backward()
    expected, ref_leaves = composite(h, None if single else hs, w, b, target, single=single)
    (expected if single else expected.loss).backward()
    assert ours[2].grad is None and ours[3].grad is not None and bool(ours[3].grad.any())
    trained = (0, 3) if single else (0, 1, 3)  # the composite's leaves: (h, W, b) for one branch
    for i in trained:
        assert_grad_close(
            ours[i].grad, ref_leaves[i - 1 if single and i else i].grad, GRAD_RTOL[torch.float32], GRAD_NAMES[i]
        )


@pytest.mark.parametrize(("weights", "term"), [((0.0, 1.5), "sub"), ((1.5, 0.0), "main")])
def test_loss_and_the_weighted_terms_own_backward(op_backend, weights, term):
    # .loss and the one weighted term backpropagated together (the other weighs 0): both come from the stored
    # gradients, L's g plus the term's g over its weight; the term's part was dropped
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=24)
    options = {"main_weight": weights[0], "sub_weight": weights[1], "temperature": 2.0}
    ours = leaves(h, hs, w, b)
    out = mk.linear_masksub_loss(*ours, target, **options)
    (out.loss + 0.5 * getattr(out, term)).backward()
    expected, ref_leaves = composite(h, hs, w, b, target, **options)
    (expected.loss + 0.5 * getattr(expected, term)).backward()
    for name, a, e in zip(GRAD_NAMES, ours, ref_leaves):
        if e.grad is None or not bool(e.grad.any()):  # the zero-weighted term's hidden state
            assert a.grad is None or not bool(a.grad.any()), name
        else:
            assert_grad_close(a.grad, e.grad, GRAD_RTOL[torch.float32], name)


# ---------------------------------------------------------------------------------------------------------------
# The chunk loop's memory: the ignored rows' gradients, chunk_rows beyond the batch
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ignored_rows_get_zero_gradients_whatever_memory_holds(op_backend, monkeypatch, dtype):
    # gathered chunks (some rows ignored) write the counted rows of dH, dHs only: the others must be zeros, not
    # what the allocator's memory held (NaN here: every new floating tensor made by torch.empty is filled with it)
    h, hs, w, b, target = make_inputs(kind="index_ignore", dtype=dtype, seed=25)
    empty = torch.empty

    def stale(*size, **kwargs):
        out = empty(*size, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    ours = leaves(h, hs, w, b)
    monkeypatch.setattr(torch, "empty", stale)
    out = mk.linear_masksub_loss(*ours, target)
    monkeypatch.setattr(torch, "empty", empty)
    out.loss.backward()
    ignored = target == -100
    for name, x in zip(GRAD_NAMES[:2], ours[:2]):
        assert bool(x.grad.isfinite().all()), name
        assert not bool(x.grad[ignored].any()) and bool(x.grad[~ignored].any()), name
    expected, ref_leaves = composite(h, hs, w, b, target)
    expected.loss.backward()
    _assert_grads(ours, ref_leaves, grad_tolerance(GRAD_RTOL, dtype, op_backend))


@pytest.mark.parametrize("every_row", [False, True], ids=["rows skipped", "every row (CUDA's reference)"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_nan_hidden_state_in_an_ignored_row_reaches_no_gradient(op_backend, monkeypatch, reduction, every_row):
    # a padding position's hidden state may be NaN: its row is ignored, so it reaches no gradient on any path (the
    # composite's dW = dz^T h would be 0 x NaN there); the reference processes every row for CUDA tensors (counting
    # them would synchronise), taken here on the CPU's too
    if every_row:
        if op_backend != "torch":
            pytest.skip("the reference's branch")
        every = lambda target, ignore_index, classes: torch.arange(target.shape[0], device=target.device).split(
            lm.reference_chunk_rows(classes)
        )
        monkeypatch.setattr(lm, "_counted_row_chunks", every)
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=31)
    ignored = target == -100
    ours = leaves(h.masked_fill(ignored[:, None], float("nan")), hs.masked_fill(ignored[:, None], float("inf")), w, b)
    out = mk.linear_masksub_loss(*ours, target, reduction=reduction)
    (out.loss.sum() + 0.5 * out.main.sum() - 0.25 * out.sub.sum()).backward()  # the stored gradients and recompute
    expected, ref_leaves = composite(*(x.masked_fill(ignored[:, None], 0.0) for x in (h, hs)), w, b, target,
                                     reduction=reduction)  # fmt: skip
    (expected.loss.sum() + 0.5 * expected.main.sum() - 0.25 * expected.sub.sum()).backward()
    torch.testing.assert_close(out.loss, expected.loss.float(), rtol=1e-5, atol=1e-6)
    for name, x in zip(GRAD_NAMES, ours):
        assert bool(x.grad.isfinite().all()), name
    _assert_grads(ours, ref_leaves, grad_tolerance(GRAD_RTOL, torch.float32, op_backend))


class LargestStorage(TorchDispatchMode):
    """The most bytes held by the storage of any tensor an aten op returns (in bytes: the interpreter copies the
    kernels' operands as bytes). Run around the ops' own Python code: around the public op it would see nothing
    inside the custom ops."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.untyped_storage().nbytes())
        return result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_rows_beyond_the_batch_hold_the_batch_only(op_backend, dtype):
    # chunk_rows >= M: one chunk of M rows, whose buffers (the kernels' [2M, C_pad] fp32 logits, the tickets of its
    # rows) hold M rows, not chunk_rows (10^6 rows: 2^27 fp32 logits). The op's implementation is run in Python
    # (.run): a dispatch mode sees none of the tensors inside a custom op called as one
    rows, depth, classes = 20, 24, 40
    h, hs, w, b, target = make_inputs(rows, depth, classes, dtype=dtype, kind="index_ignore", seed=26)
    options = (True, 0.5, 0.5, True, True, True, True, True, True)  # mean, weights, need_*, gather, private
    with LargestStorage() as seen:
        stored = _linear_loss_grads_op.run(h, hs, w, b, target, *options, 10**6, False, 0.1, -100, 1.0, None)
    bound = 4 * max(2 * rows * chunks.aligned_classes(classes), classes * chunks.padded_depth(depth), 9 * rows)
    assert seen.largest <= bound, (seen.largest, bound)
    expected = _linear_loss_grads_op.run(h, hs, w, b, target, *options, 7, False, 0.1, -100, 1.0, None)
    for i, (got, want) in enumerate(zip(stored[:7], expected[:7])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=str(i))


def test_reference_chunks_hold_their_rows_only(monkeypatch):
    # the torch backend's default chunks (CHUNK_ELEMENTS // C rows: 16 here) on both of its ops, the gradients in the
    # forward and the recompute op (run in Python: a dispatch mode around the public op sees no tensor inside the
    # custom ops, so the test that did so until 2026-12-04 could not fail); all counted rows at once, [2 x 341, 64]
    # fp32, would be 9 times the bound
    rows, depth, classes = 512, 8, 64
    monkeypatch.setattr(lm, "CHUNK_ELEMENTS", 16 * classes)
    h, hs, w, b, target = (t.cpu() for t in make_inputs(rows, depth, classes, kind="index_ignore", seed=29))
    options = (False, 0.0, -100, 1.0, None)
    bound = 4 * max(lm.NUM_OUT * rows, rows * depth, 2 * 16 * classes)  # stats, dH, one chunk's [z; s] (fp32)
    with mk.use_backend("torch"), LargestStorage() as seen:
        _linear_loss_grads_op.run(h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, True, True, 0, *options)
        out = lm._linear_loss_op.run(h, hs, w, b, target, *options)
        g = torch.ones(rows)
        lm._linear_loss_backward_op.run(g, g, out, h, hs, w, b, target, True, True, True, True, *options)
    assert seen.largest <= bound, (seen.largest, bound)


# ---------------------------------------------------------------------------------------------------------------
# The recompute op: a class id equal to C, fp64 on the reference
# ---------------------------------------------------------------------------------------------------------------
def test_class_id_equal_to_classes_gives_a_nan_row(op_backend):
    # the first id out of range (C itself; the public functions refuse it on CPU tensors, a GPU gets the op's NaN row)
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=27)
    target[1] = w.shape[0]
    ours = leaves(h, hs, w, b)
    out = lm._linear_loss_op(*ours, target, False, 0.0, -100, 1.0, None)
    assert bool(out[lm.MAIN, 1].isnan()) and bool(out[lm.SUB, 1].isnan())
    others = torch.arange(h.shape[0], device=DEVICE) != 1
    assert bool(out[lm.MAIN, others].isfinite().all()) and bool(out[lm.SUB, others].isfinite().all())
    out[lm.SUB].nansum().backward()
    assert bool(ours[1].grad[1].isnan().all()) and bool(ours[1].grad[others].isfinite().all())


def test_fp64_recompute_reference_keeps_fp64_precision():
    # fp64 inputs on the torch backend: the recompute op's logits, losses and gradients in fp64 (docs/fused_linear.md:
    # "fp64 on the reference"): gradients ~1e-16 off (through the fp32 per-row losses), 6e-7 where computed in fp32
    h, hs, w, b, target = (t.double() if t.is_floating_point() else t for t in make_inputs(kind="index_ignore"))
    ours = leaves(h, hs, w, b)
    with mk.use_backend("torch"):
        out = mk.linear_masksub_loss(*ours, target, reduction="none", temperature=2.0)
    expected, ref_leaves = composite(h, hs, w, b, target, reduction="none", temperature=2.0)
    # the backwards on the torch backend too: an op's backward runs on the backend in force when it runs (auto:
    # Triton's fp32 arithmetic on a GPU, ~4e-7 off; seen on an H200, 2026-12-04)
    with mk.use_backend("torch"):
        (out.main.double() * 0.3 + out.sub.double()).sum().backward()
        (expected.main * 0.3 + expected.sub).sum().backward()
    torch.testing.assert_close(out.main.double(), expected.main.detach().double(), rtol=1e-7, atol=1e-8)
    _assert_grads(ours, ref_leaves, 1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h, s, w, b: (h[:, :0], s[:, :0], w[:, :0], b), r"main_hidden must be \[rows, depth\]"),
        (lambda h, s, w, b: (h, s, w[:0], b[:0]), r"weight must be \[classes, hidden=5\] \(classes >= 1\)"),
        (lambda h, s, w, b: (h, s, w.to("meta"), b), "weight must be .* device"),
        (lambda h, s, w, b: (h, s, w, b.to("meta")), "bias must be .* device"),
    ],
)
def test_shapes_and_devices_are_refused_clearly(change, match):
    h, s, w, b = torch.randn(4, 5), torch.randn(4, 5), torch.randn(6, 5), torch.randn(6)
    with pytest.raises(ValueError, match=match):
        mk.linear_masksub_loss(*change(h, s, w, b), torch.tensor([0, 5, -100, 2]))


@pytest.mark.parametrize("name", ["main_weight", "sub_weight"])
@pytest.mark.parametrize("value", [-0.5, float("inf")])
def test_negative_or_infinite_term_weights_are_refused(name, value):
    h, hs, w, b, target = make_inputs(rows=4, depth=5, classes=6)
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        mk.linear_masksub_loss(h, hs, w, b, target, **{name: value})


@pytest.mark.parametrize(("need_weight", "need_bias"), [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_recompute_backward_outputs_match_its_fake(op_backend, dtype, need_weight, need_bias):
    # the recompute op's backward (reduction='none', each term's own backward) gives each gradient in its input's
    # dtype on every backend, as its fake says (a graph compiled under one backend may run under another); with the
    # weight's and the bias's gradients asked for apart too (helper-326: a fake's db flag reverted was caught only
    # through the grads op's autograd)
    h, hs, w, b, target = make_inputs(kind="index_ignore", dtype=dtype, seed=28)
    out = lm._linear_loss_op(h, hs, w, b, target, False, 0.1, -100, 2.0, None)
    g = torch.linspace(0.5, 1.5, h.shape[0], device=DEVICE)
    args = (g, g, out, h, hs, w, b, target, True, need_weight, need_bias, True, False, 0.1, -100, 2.0, None)
    torch.library.opcheck(lm._linear_loss_backward_op.custom_op, args, test_utils=("test_schema", "test_faketensor"))
    assert [t.dtype for t in lm._linear_loss_backward_op.custom_op(*args)] == [dtype] * 4


@pytest.mark.parametrize("weights", [(0.0, 0.5), (0.5, 0.0)])
def test_grads_op_fake_with_a_zero_weighted_term(op_backend, weights):
    # a term of weight 0 has no stored gradients ([0] for its hidden state) on every backend and in the fake that
    # torch.compile traces with (the MLM family's sequential schedule: main_weight 0)
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=30)
    args = (h, hs, w, b, target, True, *weights, True, True, True, True, True, False, 0, False, 0.0, -100, 1.0, None)
    torch.library.opcheck(_linear_loss_grads_op.custom_op, args, test_utils=("test_schema", "test_faketensor"))


def test_linear_loss_mean_over_zero_rows_with_probability_target(op_backend):
    # losses.py:214 `max(target.shape[0], 1)` (_row_count, used by linear_masksub_loss): 0 rows -> mean 0, not NaN
    w = torch.randn(5, 4, device=DEVICE)
    h = torch.randn(0, 4, device=DEVICE)
    out = mk.linear_masksub_loss(h, h.clone(), w, None, torch.zeros(0, 5, device=DEVICE))
    assert all(float(v.detach()) == 0.0 for v in out)


# kills losses.py:213 `target.is_floating_point() or ignore_index is None` -> `ignore_index is None` (_row_count:
# probability targets [M, C] counted their entries != ignore_index, M C, so the mean was 1/C of the right one) and
# losses.py:215 dropping `.clamp_min(1)` (every row ignored: 0 / 0 = NaN instead of 0). Both only on the path that
# reduces on the host: the fused-linear losses without gradients (no_grad, evaluation), where the grads-in-forward
# op does not apply; the "no grad" schedule of test_an_ignore_index_other_than_the_default uses class ids, some kept
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_no_grad_reductions_of_probability_targets_and_all_ignored_rows(op_backend, reduction):
    h, hs, w, b, probs = make_inputs(rows=6, classes=8, kind="dense", seed=5)
    with torch.no_grad():
        rows = mk.linear_masksub_loss(h, hs, w, b, probs, reduction="none")
        reduced = mk.linear_masksub_loss(h, hs, w, b, probs, reduction=reduction)
        single = mk.linear_soft_target_cross_entropy(h, w, b, probs, reduction=reduction)
        divisor = 6 if reduction == "mean" else 1  # every row of a probability target counts
        for value, per_row in zip((*reduced, single), (*rows, rows.main)):
            torch.testing.assert_close(value, per_row.sum() / divisor, rtol=1e-6, atol=1e-6)
        ignored = torch.full((6,), -100, device=DEVICE)
        for value in (*mk.linear_masksub_loss(h, hs, w, b, ignored, reduction=reduction),
                      mk.linear_soft_target_cross_entropy(h, w, b, ignored, reduction=reduction)):  # fmt: skip
            assert float(value) == 0.0  # mean over no rows: 0 (d = max(0, 1)), not NaN


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.triton
def test_fp64_inputs_on_the_kernels_path_add_dws_class_tail(bias):
    # (helper-212: dropping the tail's condition on its gradient buffer left dW's last classes out, unnoticed)
    # fp64 inputs on the kernels' path compute in fp32 with fp64 outputs. C = 30: a head of 24 classes and a tail of
    # 6 that the loss launch takes (ClassTail); with fp64 inputs no tail gradient buffer is kept (it holds the
    # gradients in the inputs' dtype), so each chunk's dW matmul must run over the tail classes too
    h, hs, w, b, target = (
        t.double() if t.is_floating_point() else t
        for t in make_inputs(rows=37, depth=20, classes=30, kind="index_ignore", seed=3)
    )
    args = (h, hs, w, b if bias else None, target, True, 0.5, 0.5, *(True,) * 4, (False, 0.1, -100, 2.0, None))
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True)  # 4 chunks of the counted rows
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    assert matmuls.class_parts(30)[1] == slice(24, 30)

    for i in (3, 4, 5, 6):  # dH, dHs, dW, db: fp64, within fp32's rounding of the reference's fp64
        assert kernels[i].dtype == torch.float64 and kernels[i].shape == reference[i].shape
        if reference[i].numel():
            assert _relative(kernels[i], reference[i]) <= 1e-5, i
    assert _relative(kernels[5][24:], reference[5][24:]) <= 1e-5  # dW's rows of the tail classes above all
