"""soft_target_cross_entropy, soft_target_bce, self_distillation_loss, masksub_loss: every backend against a float64
oracle written from docs/semantics.md (§7), values and both gradients.

Tolerances: fp32 inputs agree with the oracle to 1e-6 relative (gradients: plus 1e-6 of the largest). fp16/bf16
inputs are compared with the oracle evaluated on the same rounded inputs: losses (fp32 accumulation) to 1e-5
relative, gradients to one rounding of the output dtype to nearest (2^-11 fp16, 2^-9 bf16 relative, plus that much
of the largest gradient; bf16 2^-8 where the plain interpreter truncates: conftest.grad_tolerance). Under the
interpreter the tests raise MAX_BLOCK_C so that one block covers a row, except test_many_blocks_online_rescaling,
which runs 16 blocks per row (in one program, and split over the classes: the split path's own tests are in
test_masksub_loss_split.py).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, grad_tolerance

import masksub_kernels as mk
from masksub_kernels.ops import _loss_layout as loss_layout
from masksub_kernels.ops import masksub_loss as ml

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# one rounding of an fp32 gradient (conftest.grad_tolerance); fp64 is computed in fp32 by the kernels, where the sub
# gradient, a difference of two fp32 softmaxes (sigmoids), keeps their rounding (3.6e-6 measured, the CUDA emulator)
GRAD_RTOL = {F32: 1e-6, F16: 2**-11, BF16: 2**-9, torch.float64: 1e-5}


@pytest.fixture(autouse=True)
def _few_loop_iterations(monkeypatch):
    # The interpreter's cost grows with loop iterations: one block covers even C = 30522 there.
    if mk.triton_interpreted():
        monkeypatch.setattr(ml, "MAX_BLOCK_C", 32768)


# ---------------------------------------------------------------------------------------------------------------
# The oracle: float64, autograd, straight from the definitions
# ---------------------------------------------------------------------------------------------------------------


def _xent(x, w):
    return -torch.where(w != 0, w * torch.log_softmax(x, 1), 0.0).sum(1)


def _bce(x, w):
    return (F.softplus(x) - torch.where(w != 0, w * x, 0.0)).mean(1)


def oracle(
    main,
    sub,
    target,
    *,
    mode="ce",
    label_smoothing=0.0,
    ignore_index=-100,
    temperature=1.0,
    target_threshold=None,
    main_weight=0.5,
    sub_weight=0.5,
    reduction="mean",
):
    """(loss, main, sub, z, s): z, s the float64 leaves the terms were computed from."""
    z = main.detach().cpu().double().requires_grad_(True)
    s = sub.detach().cpu().double().requires_grad_(True)
    rows, classes = z.shape
    target = target.cpu()
    if target.is_floating_point():
        valid, q = torch.ones(rows, dtype=torch.bool), target.double()
    else:
        valid = target != ignore_index
        q = F.one_hot(torch.where(valid, target, 0), classes).double()
    if target_threshold is not None:
        q = (q > target_threshold).double()
    w = (1 - label_smoothing) * q + label_smoothing / classes
    crit, act = (_xent, lambda v: torch.softmax(v, 1)) if mode == "ce" else (_bce, torch.sigmoid)
    main_rows = torch.where(valid, crit(z, w), 0.0)
    sub_rows = torch.where(valid, temperature**2 * crit(s / temperature, act(z.detach() / temperature)), 0.0)
    count = valid.sum().clamp_min(1)
    red = {"none": lambda r: r, "sum": lambda r: r.sum(), "mean": lambda r: r.sum() / count}[reduction]
    main_value, sub_value = red(main_rows), red(sub_rows)
    return main_weight * main_value + sub_weight * sub_value, main_value, sub_value, z, s


def make_inputs(rows, classes, dtype, target_kind, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    main = (torch.randn(rows, classes, generator=gen) * scale).to(dtype)
    sub = (torch.randn(rows, classes, generator=gen) * scale).to(dtype)
    if target_kind == "dense":
        target = torch.softmax(torch.randn(rows, classes, generator=gen) * 2, 1)
    else:
        target = torch.randint(0, classes, (rows,), generator=gen)
        if target_kind == "index_ignore":
            target[::3] = -100
    return main.to(DEVICE), sub.to(DEVICE), target.to(DEVICE)


def grad_weights(reduction, rows, seed=1):
    """Weights of (loss, main, sub) in the objective that is backpropagated: scalars != 1, or per-row tensors."""
    if reduction != "none":
        return 1.3, 0.4, -0.7
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, generator=gen, dtype=torch.float64) for _ in range(3))


def objective(values, weights):
    return sum((v * g.to(v.device, v.dtype) if torch.is_tensor(g) else v * g).sum() for v, g in zip(values, weights))


def assert_close(actual, expected, rtol, atol_scale=None, name=""):
    dtype = actual.dtype
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max() if finite.numel() else torch.tensor(0.0)
    tiny = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the spacing of subnormals
    atol = float(scale) * (rtol if atol_scale is None else atol_scale) + tiny
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def check_masksub(main, sub, target, **options):
    reduction = options.get("reduction", "mean")
    weights = grad_weights(reduction, main.shape[0])
    main_leaf = main.detach().clone().requires_grad_(True)
    sub_leaf = sub.detach().clone().requires_grad_(True)
    out = mk.masksub_loss(main_leaf, sub_leaf, target, **options)
    for value in out:
        assert value.dtype == torch.float32 and value.device.type == DEVICE.type
        assert value.shape == ((main.shape[0],) if reduction == "none" else ())
    objective(out, weights).backward()
    *expected, z, s = oracle(main, sub, target, **options)
    objective(expected, weights).backward()
    for name, a, e in zip(("loss", "main", "sub"), out, expected):
        assert_close(a, e, 1e-6 if main.dtype == F32 else 1e-5, name=name)
    rtol = grad_tolerance(GRAD_RTOL, main.dtype, mk.last_backend("masksub_loss"))
    assert main_leaf.grad.dtype == main.dtype and sub_leaf.grad.dtype == main.dtype
    assert_close(main_leaf.grad, z.grad, rtol, name="d main")
    assert_close(sub_leaf.grad, s.grad, rtol, name="d sub")


# ---------------------------------------------------------------------------------------------------------------
# Against the oracle
# ---------------------------------------------------------------------------------------------------------------

CASES = [
    # mode, rows, classes, dtype, target kind, label_smoothing, temperature, target_threshold, reduction
    ("ce", 5, 1, F32, "index", 0.0, 1.0, None, "mean"),
    ("ce", 7, 7, F32, "index_ignore", 0.1, 1.0, None, "mean"),
    ("ce", 9, 7, F32, "dense", 0.0, 2.0, None, "sum"),
    ("ce", 13, 1000, F32, "index_ignore", 0.1, 1.0, None, "none"),
    ("ce", 3, 30522, F32, "index", 0.1, 1.0, None, "mean"),
    ("ce", 5, 1000, F16, "dense", 0.1, 1.0, None, "mean"),
    ("ce", 7, 1000, BF16, "index_ignore", 0.0, 0.5, None, "none"),
    ("ce", 3, 30522, BF16, "dense", 0.0, 1.0, None, "sum"),
    ("bce", 5, 1, F32, "index", 0.0, 1.0, None, "mean"),
    ("bce", 7, 7, F32, "dense", 0.1, 1.0, 0.0, "mean"),
    ("bce", 9, 1000, F32, "index_ignore", 0.1, 2.0, None, "none"),
    ("bce", 5, 1000, F16, "index", 0.0, 1.0, None, "sum"),
    ("bce", 3, 30522, BF16, "dense", 0.0, 1.0, 0.0, "mean"),
]


@pytest.mark.parametrize(
    ("mode", "rows", "classes", "dtype", "kind", "eps", "temperature", "threshold", "reduction"), CASES
)
def test_masksub_loss_matches_oracle(backend, mode, rows, classes, dtype, kind, eps, temperature, threshold, reduction):
    main, sub, target = make_inputs(rows, classes, dtype, kind)
    check_masksub(
        main,
        sub,
        target,
        mode=mode,
        label_smoothing=eps,
        temperature=temperature,
        target_threshold=threshold,
        reduction=reduction,
        main_weight=0.6,
        sub_weight=0.3,
    )
    assert mk.last_backend("masksub_loss") == backend


@pytest.mark.parametrize(
    ("classes", "dtype", "kind", "reduction"),
    [
        (1, F32, "index", "mean"),
        (7, F32, "index_ignore", "none"),
        (1000, F32, "dense", "sum"),
        (1000, BF16, "index_ignore", "mean"),
        (30522, F16, "index", "none"),
    ],
)
@pytest.mark.parametrize("function", ["ce", "bce", "distill"])
def test_single_branch_ops_match_oracle(backend, function, classes, dtype, kind, reduction):
    rows = 3 if classes > 1000 else 7
    main, sub, target = make_inputs(rows, classes, dtype, kind, seed=classes)
    if function == "distill" and kind == "index_ignore":
        target = target.clamp(min=0)  # no target in self_distillation_loss (soft_target_bce ignores as CE does)
    options = {"label_smoothing": 0.1} if function != "distill" else {"temperature": 2.0}
    options["target_threshold"] = 0.0 if function == "bce" and kind == "dense" else None
    weights = grad_weights(reduction, rows)[0]
    leaf = (sub if function == "distill" else main).detach().clone().requires_grad_(True)
    if function == "ce":
        value = mk.soft_target_cross_entropy(leaf, target, label_smoothing=0.1, reduction=reduction)
    elif function == "bce":
        value = mk.soft_target_bce(
            leaf, target, label_smoothing=0.1, reduction=reduction, target_threshold=options["target_threshold"]
        )
    else:
        teacher = main.detach().clone().requires_grad_(True)
        value = mk.self_distillation_loss(leaf, teacher, temperature=2.0, reduction=reduction)
    name = {"ce": "soft_target_cross_entropy", "bce": "soft_target_bce", "distill": "self_distillation_loss"}
    assert mk.last_backend(name[function]) == backend
    objective([value], [weights]).backward()
    _, exp_main, exp_sub, z, s = oracle(
        main,
        sub,
        target,
        mode="bce" if function == "bce" else "ce",
        reduction=reduction,
        temperature=options.get("temperature", 1.0),
        label_smoothing=options.get("label_smoothing", 0.0),
        target_threshold=options["target_threshold"],
    )
    expected, leaf_expected = (exp_sub, s) if function == "distill" else (exp_main, z)
    objective([expected], [weights]).backward()
    assert value.dtype == torch.float32
    assert_close(value, expected, 1e-6 if dtype == F32 else 1e-5, name="value")
    assert_close(leaf.grad, leaf_expected.grad, grad_tolerance(GRAD_RTOL, dtype, backend), name="grad")
    if function == "distill":
        assert teacher.grad is None  # the teacher is detached


# ---------------------------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ce", "bce"])
def test_all_ignored_rows_give_zero_loss_and_gradients(backend, mode):
    main, sub, _ = make_inputs(5, 7, F32, "index")
    target = torch.full((5,), -100, dtype=torch.int64, device=DEVICE)
    main.requires_grad_(True)
    sub.requires_grad_(True)
    out = mk.masksub_loss(main, sub, target, mode=mode)
    (out.loss + out.main + out.sub).backward()
    for value in out:
        assert float(value.detach()) == 0.0
    assert torch.equal(main.grad, torch.zeros_like(main)) and torch.equal(sub.grad, torch.zeros_like(sub))
    assert float(mk.soft_target_cross_entropy(main, target).detach()) == 0.0


def test_empty_batch(backend):
    main = torch.zeros(0, 5, device=DEVICE, requires_grad=True)
    out = mk.masksub_loss(main, torch.zeros(0, 5, device=DEVICE), torch.zeros(0, dtype=torch.int64, device=DEVICE))
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and main.grad.shape == (0, 5)


@pytest.mark.parametrize(("mode", "kind"), [("ce", "index"), ("ce", "dense"), ("bce", "index"), ("bce", "dense")])
def test_extreme_and_infinite_logits(backend, mode, kind):
    main, sub, target = make_inputs(5, 7, F32, kind)
    main[:, 0], sub[:, 1] = 1e4, -1e4
    main[1, 2] = main[3, 4] = sub[3, 4] = float("-inf")  # sub's -inf only where the teacher has no mass
    if kind == "index":
        target = torch.tensor([0, 1, 2, 5, 6], device=DEVICE)  # no class id on a -inf logit
    else:  # no target mass on a -inf logit of main, nor teacher mass on sub's -inf (main is finite there)
        target[1, 2] = target[3, 4] = 0.0
    check_masksub(main, sub, target, mode=mode)
    out = mk.masksub_loss(main, sub, target, mode=mode, reduction="none")
    assert all(bool(torch.isfinite(v).all()) for v in out)


@pytest.mark.parametrize(("mode", "kind"), [("ce", "index"), ("ce", "dense"), ("bce", "index"), ("bce", "dense")])
def test_logits_at_the_range_limit(backend, mode, kind):
    # docs/semantics.md §7: finite logits up to 2^100 in magnitude are supported (beyond, the kernels' scaled states
    # may overflow: CE's sub term was NaN at 2^107 on Triton): values and gradients match the oracle, on either
    # branch and either sign
    main, sub, target = make_inputs(5, 7, F32, kind)
    main[0, 0], main[1, 2], sub[2, 1], sub[3, 3] = 2.0**100, -(2.0**100), 2.0**100, -(2.0**100)
    main[4, 5] = sub[4, 5] = 2.0**100
    check_masksub(main, sub, target, mode=mode)
    out = mk.masksub_loss(main, sub, target, mode=mode, reduction="none")
    assert all(bool(torch.isfinite(v).all()) for v in out)


def test_bce_infinite_logit_on_full_weight(backend):
    # w = 1 at x = +inf: softplus(x) - x -> 0 (the (1 - w) max(x, 0) term must be skipped, not 0 * inf). Main: a class
    # id on +inf (eps = 0); sub: +inf where the teacher's sigmoid(1e4) is exactly 1.
    main, sub, _ = make_inputs(3, 7, F32, "index")
    target = torch.tensor([0, 1, 2], device=DEVICE)
    main[0, 0] = float("inf")
    main[1, 3], sub[1, 3] = 1e4, float("inf")
    out = mk.masksub_loss(main, sub, target, mode="bce", reduction="none")
    assert all(bool(torch.isfinite(v).all()) for v in out), out
    # The oracle's softplus(x) - w x is inf - inf there; at x = 1e4 it is exactly the limit, 0, in float64.
    *expected, _, _ = oracle(main.clamp(max=1e4), sub.clamp(max=1e4), target, mode="bce", reduction="none")
    for name, got, want in zip(("loss", "main", "sub"), out, expected):
        assert_close(got, want, 1e-6, name=name)


def _confident_rows(kind, rows=6, classes=1000):
    # every element's BCE term ~1e-27: |logits| in [60, 62], negative (the class id's positive), the teacher as
    # sure with the same signs; probabilities: an all-zero target
    gen = torch.Generator().manual_seed(3)
    main = -(60 + 2 * torch.rand(rows, classes, generator=gen))
    sub = -(60 + 2 * torch.rand(rows, classes, generator=gen))
    if kind == "dense":
        target = torch.zeros(rows, classes)
    else:
        target = torch.randint(0, classes, (rows,), generator=gen)
        main[torch.arange(rows), target] *= -1
        sub[torch.arange(rows), target] *= -1
    return main.to(DEVICE), sub.to(DEVICE), target.to(DEVICE)


def _check_values(main, sub, target, **options):
    # the losses only: a gradient element at |z| = 61 carries the rounding of its exponent's argument, |z| 2^-24
    # relative (exp as exp2 of z log2(e) in fp32, every backend), which a row's sum of 1000 terms averages out
    out = mk.masksub_loss(main, sub, target, **options)
    *expected, _, _ = oracle(main, sub, target, **options)
    for name, got, want in zip(("loss", "main", "sub"), out, expected):
        assert_close(got, want, 1e-6, name=name)
    return out


def test_bce_tiny_terms_keep_their_relative_accuracy(backend):
    # Each row's loss is a sum of ~1e-27 terms: log1p of them (the Triton forward: of a group's product,
    # _log1p_wide) must keep their relative accuracy (the float64 oracle at rtol 1e-6: the rows' scale leaves no
    # absolute slack)
    out = _check_values(*_confident_rows("dense"), mode="bce", reduction="none")
    assert bool(((out.main > 0) & (out.main < 1e-25) & (out.sub > 0) & (out.sub < 1e-24)).all()), out


def test_bce_tiny_terms_with_class_ids(kernel_backend):
    # As above with class ids on positive logits, whose terms are tiny too: softplus(x) - w x = (1 - w) x +
    # log1p(exp(-x)) at x > 0. The oracle's float64 softplus(61) - 61 (and 1 - sigmoid(61)) cancel to 0, so the
    # expected rows are that sum in float64 with 1 - w exact (1 - sigmoid(z) = sigmoid(-z)); the kernels only (the
    # torch backend cancels likewise, in fp32). The kernels' sub element is q |s| with q = sigmoid(-|z|) where s and
    # z agree in sign (Triton's _distill_linear, csrc's fold), not (1 - p) s, which cancels to 0 at p = 1 in fp32.
    main, sub, target = _confident_rows("index")
    z, s = main.double().cpu(), sub.double().cpu()
    w = F.one_hot(target.cpu(), z.shape[1]).double()

    def rows(x, w, w_off):  # mean_c of softplus(x) - w x, with w_off = 1 - w given exactly
        return (torch.where(x > 0, w_off * x, -w * x) + torch.log1p(torch.exp(-x.abs()))).mean(1)

    expected = (rows(z, w, 1 - w), rows(s, torch.sigmoid(z), torch.sigmoid(-z)))
    out = mk.masksub_loss(main, sub, target, mode="bce", reduction="none")
    for name, got, want in zip(("main", "sub"), out[1:], expected):
        assert_close(got, want, 1e-6, name=name)


@pytest.mark.parametrize(("classes", "dtype"), [(203, BF16), (200, BF16), (201, F32)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_bce_class_ids_over_many_blocks(backend, monkeypatch, classes, dtype, eps, sms):
    # BCE with class ids over ~13 blocks of 16 classes (the forward's at MAX_BLOCK_C = 64): the Triton forward runs
    # the whole block that holds the class id on its own between two loops that compare no column with it, the
    # masked first (realigned rows: C = 203, 201) and last blocks compare; ids in the first, middle and last
    # blocks, ignored rows; eps = 0 sums no z for the weight off the id (SMOOTHED); C = 200: aligned rows (no
    # masked first block, a partial last one)
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    main, sub, _ = make_inputs(8, classes, dtype, "index")
    main[:, ::7] = -main[:, ::7] + 40.0  # some large positive logits off the ids (N = A - P with cancellation)
    target = torch.tensor([0, 3, 16, 100, classes - 1, -100, 17, classes - 9], device=DEVICE)
    check_masksub(main, sub, target, mode="bce", label_smoothing=eps, reduction="none")


def test_main_logits_never_written_and_get_no_sub_gradient(backend):
    main, sub, target = make_inputs(7, 33, BF16, "index_ignore")
    main.requires_grad_(True)
    sub.requires_grad_(True)
    before = main.detach().clone()
    out = mk.masksub_loss(main, sub, target)
    assert torch.equal(main.detach(), before)
    out.sub.backward(retain_graph=True)
    assert main.grad is None or not bool(main.grad.any())  # the sub term sends nothing to main
    assert sub.grad is not None and bool(sub.grad.any())
    out.loss.backward()
    assert torch.equal(main.detach(), before)
    main.grad = None
    mk.self_distillation_loss(sub, main).backward()
    assert main.grad is None
    assert torch.equal(main.detach(), before)


@pytest.mark.parametrize(
    ("mode", "kind", "eps", "temperature"),
    [
        ("ce", "index_ignore", 0.1, 2.0),
        ("ce", "dense", 0.0, 2.0),
        ("bce", "dense", 0.0, 2.0),
        ("ce", "index_ignore", 0.0, 1.0),  # T = 1: the teacher's exponentials and rescales are the main term's
        ("ce", "dense", 0.1, 1.0),
    ],
)
@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_many_blocks_online_rescaling(backend, monkeypatch, mode, kind, eps, temperature, sms):
    # 16 blocks of 64 classes: the running max grows block after block (row 0 starts with an all -inf block),
    # falls (row 1), or jumps at the end (row 2); the stats must rescale every time. Triton: in one program per
    # row, or split over the classes (a program per block, the partial states merged: class_splits).
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    main, sub, target = make_inputs(5, 1000, F32, kind)
    ramp = torch.linspace(-40.0, 40.0, 1000, device=DEVICE)
    main[0] += ramp
    sub[0] += ramp
    main[1] -= ramp
    sub[1] += 0.5 * ramp
    main[2, -1] = sub[2, -3] = 60.0
    if eps == 0.0:  # label smoothing puts mass on every logit: -inf ones make the loss infinite
        main[0, :64] = sub[0, :64] = float("-inf")
    if kind == "dense":
        target[0, :64] = 0.0  # no target mass on -inf logits
    else:
        target[0] = 500
    options = {"target_threshold": 0.0} if mode == "bce" else {"label_smoothing": eps}
    check_masksub(main, sub, target, mode=mode, temperature=temperature, reduction="none", **options)


@pytest.mark.parametrize(
    ("mode", "kind", "dtype"), [("ce", "index_ignore", BF16), ("ce", "dense", F32), ("bce", "index", BF16)]
)
@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_unaligned_rows_realigned_to_16_bytes(backend, monkeypatch, mode, kind, dtype, sms):
    # C = 203 (bf16) / 201 (fp32): rows start off 16-byte boundaries, at every shift in turn over 8 rows; the
    # Triton kernels then begin each row (or class split) with a masked block from the boundary before it
    # (row_alignment, _block_range), then whole blocks of 64, then a masked last block.
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    classes = 203 if dtype == BF16 else 201  # 4 blocks of 64 with the shift: first, whole ones, last
    main, sub, target = make_inputs(8, classes, dtype, kind)
    assert loss_layout.row_alignment(main, sub) == 16 // main.element_size()
    check_masksub(main, sub, target, mode=mode, label_smoothing=0.1 if mode == "ce" else 0.0, temperature=2.0)


def test_row_alignment_only_where_it_pays():
    row_alignment = loss_layout.row_alignment
    z = torch.empty(4, 1003, dtype=BF16)
    assert row_alignment(z) == 8 and row_alignment(z.float()) == 4 and row_alignment(z.double()) == 2
    assert row_alignment(torch.empty(4, 1000, dtype=BF16)) == 1  # rows already 16-byte aligned
    assert row_alignment(z, torch.empty(4, 1004, dtype=BF16)[:, :1003]) == 1  # another stride: no realignment
    assert row_alignment(z[:1]) == 1 and row_alignment(z, torch.empty(0)) == 8  # one row; absent operands
    offset = torch.empty(4 * 1003 + 1, dtype=BF16)[1:].view(4, 1003)  # starts 2 bytes past a 16-byte boundary
    assert row_alignment(offset) == 1 and row_alignment(z, offset) == 1


def test_aligned_rows_hinted_only_where_true():
    # ALIGNED promises the compiler 16-byte rows (row strides of GROUP elements, aligned data); EVEN also a
    # word-uniform last block (C % GROUP == 0). A wrong promise would be a wrong load on a GPU: never given then.
    # GROUP (the forward's classes per state) is a 16-byte word only where the words are aligned, else 1.
    z = torch.empty(4, 1000, dtype=BF16)
    assert loss_layout._alignment_flags(1, z, z) == {"GROUP": 8, "ALIGNED": True, "EVEN": True}
    assert loss_layout._alignment_flags(1, z.float()) == {"GROUP": 4, "ALIGNED": True, "EVEN": True}
    assert loss_layout._alignment_flags(1, z[:, :996]) == {"GROUP": 8, "ALIGNED": True, "EVEN": False}  # C % 8 != 0
    assert loss_layout._alignment_flags(8, z) == {"GROUP": 8, "ALIGNED": False, "EVEN": False}  # realigned (VEC > 1)
    odd = torch.empty(4, 1003, dtype=BF16)
    assert loss_layout._alignment_flags(1, odd) == {"GROUP": 1, "ALIGNED": False, "EVEN": False}  # odd stride
    assert loss_layout._alignment_flags(1, odd[:1])["ALIGNED"]  # one row: only its start counts
    assert not loss_layout._alignment_flags(1, z, torch.empty(4, 1004, dtype=BF16)[:, :1000])["ALIGNED"]  # 1004 % 8
    offset = torch.empty(4 * 1000 + 8, dtype=BF16)[1:4001].view(4, 1000)  # starts 2 bytes past a boundary
    assert loss_layout._alignment_flags(1, z, offset)["GROUP"] == 1
    assert not loss_layout._alignment_flags(1, z, torch.empty(4, 1001)[:, :1000])["ALIGNED"]  # probabilities' stride


def test_gradient_rows_hinted_in_their_own_elements():
    # D_GROUP: the gradients' rows as a multiple of their own elements per 16 bytes where that holds (bf16 gradients
    # over fp32 logits' rows, the fused-linear chunks': 8, where GROUP counts 4 of the logits'), else GROUP, which
    # ALIGNED already holds them to; 1 without ALIGNED. A wrong promise would be a misaligned store on a GPU.
    def d_group(z, dz, ds=None):
        ds = torch.empty(0, dtype=dz.dtype) if ds is None else ds
        options = (False, False, True, False, True, ds.numel() > 0, False)  # bce, binarise, unit_t, bias, dz, ds, rows
        y = torch.zeros(z.shape[0], dtype=torch.long)
        return ml._backward_config(z, None, y, dz, ds, *options, 1)[3]["D_GROUP"]

    buffer = torch.empty(8, 1000)  # fp32 logits, rows of 16 bytes; bf16 gradients over them: rows of 2000
    narrow = buffer.view(BF16)[:, :1000]
    assert d_group(buffer[:4], narrow[:4], narrow[4:]) == 8
    assert d_group(buffer[:4], torch.empty(4, 1000)) == 4  # fp32 gradients: GROUP
    assert d_group(buffer[:4], torch.empty(4, 1004, dtype=BF16)[:, :1000]) == 4  # 1004 % 8: GROUP's 4 holds
    assert d_group(torch.empty(4, 1000, dtype=BF16), torch.empty(4, 1000, dtype=BF16)) == 8
    assert d_group(torch.empty(4, 1000, dtype=BF16), torch.empty(4, 1000)) == 8  # GROUP 8 already: kept
    assert d_group(torch.empty(4, 1001)[:, :1000], torch.empty(4, 1000)) == 1  # not ALIGNED: no hint


@pytest.mark.parametrize("dtype", [BF16, F32])
def test_aligned_rows_with_a_partial_last_block(backend, monkeypatch, dtype):
    # C = 200: rows of 16 bytes (ALIGNED, EVEN), 3 whole blocks of 64 and a masked last block of 8 classes
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 128)
    main, sub, target = make_inputs(6, 200, dtype, "index_ignore")
    assert loss_layout._alignment_flags(loss_layout.row_alignment(main, sub), main, sub)["EVEN"]
    check_masksub(main, sub, target, mode="ce", label_smoothing=0.1, temperature=2.0)
    check_masksub(main, sub, target, mode="ce")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("mode", ["ce", "bce"])
def test_misaligned_rows_one_state_per_class(backend, monkeypatch, temperature, mode):
    # rows starting 2 bytes past a 16-byte boundary with sub logits of another stride: neither realigned nor
    # ALIGNED, so GROUP = 1 (a state per class slot, as before the per-word states; BCE: log1p per element, not
    # per word), over 5 blocks of 64 (BCE: 10 of 32)
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 128)
    wide_main, _, target = make_inputs(5, 301, BF16, "index_ignore")
    main, sub = wide_main[:, 1:], make_inputs(5, 300, BF16, "index")[1]
    assert loss_layout._alignment_flags(loss_layout.row_alignment(main, sub), main, sub)["GROUP"] == 1
    check_masksub(main, sub, target.clamp_max(299), mode=mode, label_smoothing=0.1, temperature=temperature)


def test_two_half_weight_backwards_equal_one_of_the_sum(backend):
    # The official sequential schedule: backward of crit_main / 2, then of crit_sub / 2, one optimizer step.
    main, sub, target = make_inputs(9, 50, F32, "dense")
    leaves = [t.detach().clone().requires_grad_(True) for t in (main, sub, main, sub)]
    (0.5 * mk.soft_target_cross_entropy(leaves[0], target, label_smoothing=0.1)).backward()
    (0.5 * mk.self_distillation_loss(leaves[1], leaves[0])).backward()
    mk.masksub_loss(leaves[2], leaves[3], target, label_smoothing=0.1).loss.backward()
    torch.testing.assert_close(leaves[0].grad, leaves[2].grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(leaves[1].grad, leaves[3].grad, rtol=1e-6, atol=1e-9)


def test_strided_logits_and_targets(backend):
    wide_main, wide_sub, wide_target = make_inputs(6, 20, F32, "dense")
    main, sub, target = wide_main[::2, 3:13], wide_sub[::2, 3:13], torch.softmax(wide_target[::2, :10], 1).t().t()
    check_masksub(main, sub, target, label_smoothing=0.1)


def test_default_is_the_paper_loss():
    main, sub, target = make_inputs(6, 10, F32, "index")
    out = mk.masksub_loss(main, sub, target)
    ce = F.cross_entropy(main, target)
    distill = -(torch.softmax(main, 1) * torch.log_softmax(sub, 1)).sum(1).mean()
    torch.testing.assert_close(out.loss, (ce + distill) / 2)


def test_opcheck_and_torch_compile(backend):
    main, sub, target = make_inputs(5, 7, F32, "index_ignore")
    main.requires_grad_(True)
    sub.requires_grad_(True)
    args = (main, sub, target, False, 0.1, -100, 2.0, None)
    torch.library.opcheck(
        ml._loss_op.custom_op,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    compiled = torch.compile(lambda a, b, y: mk.masksub_loss(a, b, y).loss, fullgraph=True, backend="aot_eager")
    value = compiled(main, sub, target)
    value.backward()
    expected, *_ = oracle(main, sub, target)
    assert_close(value, expected, 2e-6)
    # dynamic=True: the options' floats reach the checks as SymFloats (math.isfinite failed on them; helper-105)
    for loss in (lambda a, b, y: mk.masksub_loss(a, b, y, label_smoothing=0.1).loss,
                 lambda a, b, y: mk.self_distillation_loss(b, a, temperature=2.0, reduction="none").sum(),
                 lambda a, b, y: mk.soft_target_bce(a, y.clamp(min=0), label_smoothing=0.2)):  # fmt: skip
        dynamic = torch.compile(loss, fullgraph=True, dynamic=True, backend="aot_eager")
        assert_close(dynamic(main, sub, target), loss(main, sub, target), 2e-6)


@pytest.mark.parametrize("bce", [False, True])
@pytest.mark.parametrize("kind", ["index", "dense", None])
@pytest.mark.parametrize("has_sub", [True, False])
@pytest.mark.triton
def test_per_row_forward_writes_every_entry(monkeypatch, bce, kind, has_sub):
    # Without tickets (no split, no reduction) the Triton forward's output is not zero-filled: the kernel must write
    # every entry, 0 where the variant has none (an absent term; the CE stats under BCE). Fresh tensors come filled
    # with NaN here, and the output must equal the reference's, zeros included.
    if kind is None and not has_sub:
        pytest.skip("no term")
    generator = torch.Generator().manual_seed(7)
    main, sub = (torch.randn(6, 40, generator=generator).to(DEVICE) for _ in range(2))
    target = {
        "index": torch.randint(0, 40, (6,), generator=generator),
        "dense": torch.rand(6, 40, generator=generator),
        None: None,
    }[kind]
    target = None if target is None else target.to(DEVICE)
    options = (bce, 0.1, -100, 2.0, None)
    args = (main, sub if has_sub else None, target, *options)
    empty = torch.empty

    def nan_filled(*shape, **kwargs):
        return empty(*shape, **kwargs).fill_(float("nan")) if kwargs.get("dtype", torch.float32).is_floating_point \
            else empty(*shape, **kwargs)  # fmt: skip

    monkeypatch.setattr(torch, "empty", nan_filled)
    out = ml._forward_triton(*args)
    monkeypatch.undo()
    expected = ml.loss_forward_reference(*args)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
