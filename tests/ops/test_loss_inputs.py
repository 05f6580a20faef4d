"""Bad input to the losses (docs/semantics.md §7): a clear TypeError / ValueError from the public functions, the
same on every backend, and never a silent wrong result.

- Refusals: each argument of each public loss, on every backend (raised before any kernel runs).
- A class id outside [0, C) that is not ignore_index: a ValueError on CPU tensors in eager mode; wherever that check
  cannot run without a host sync (CUDA tensors, torch.compile) its row is NaN in the values and the gradients. The
  NaN path is tested under torch.compile and through the internal op on every backend (the CUDA emulator too).
- Property tests (hypothesis): random valid arguments give the reference's values and gradients on every kernel
  backend; random invalid scalars raise TypeError / ValueError, never anything else, never a result. Tiny shapes:
  the Triton interpreter's cost grows with the programs launched.
"""

import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, property_settings
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import masksub_kernels as mk
from masksub_kernels.ops import masksub_loss as ml

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

LOSSES = {
    "ce": mk.soft_target_cross_entropy,
    "bce": mk.soft_target_bce,
    "distill": lambda main, sub, target, **kw: mk.self_distillation_loss(sub, main, **kw),
    "masksub": mk.masksub_loss,
}


def _call(name, main, sub, target, **options):
    """The public loss ``name`` on (main, sub, target), as a tuple of its outputs."""
    if name in ("ce", "bce"):
        return (LOSSES[name](main, target, **options),)
    value = LOSSES[name](main, sub, target, **options)
    return tuple(value) if name == "masksub" else (value,)


def _inputs():
    """main, sub [4, 6] and class ids with an ignored row."""
    gen = torch.Generator().manual_seed(0)
    main, sub = (torch.randn(4, 6, generator=gen).to(DEVICE) for _ in "ms")
    return main, sub, torch.tensor([0, 5, -100, 2], device=DEVICE)


# ---------------------------------------------------------------------------------------------------------------
# Refusals: (loss, options or a change of the inputs, error, message)
# ---------------------------------------------------------------------------------------------------------------

# The eager check of class ids reads them: CPU tensors only (on a GPU the row is NaN instead, tested below).
CPU_ONLY = pytest.mark.skipif(DEVICE.type != "cpu", reason="class ids are checked on the host for CPU tensors only")
REFUSALS = [
    # tensors
    ("masksub", lambda m, s, y: (m, s[:, :5], y), ValueError, r"match main_logits.*\(4, 6\).*\(4, 5\)"),
    ("masksub", lambda m, s, y: (m, s.double(), y), TypeError, "dtype"),
    ("masksub", lambda m, s, y: (m, s, y[:3]), ValueError, r"\[rows=4\], got shape \(3,\)"),
    ("masksub", lambda m, s, y: (m, s, y.float()), ValueError, "probability target must have"),
    ("masksub", lambda m, s, y: (m, s, y.bool()), TypeError, "got torch.bool"),
    ("masksub", lambda m, s, y: (m, s, y.tolist()), TypeError, "target must be a torch.Tensor, got list"),
    ("masksub", lambda m, s, y: (m, s, y.to("meta")), ValueError, "target must be on the device"),
    pytest.param("masksub", lambda m, s, y: (m, s, y + 6), ValueError, r"\[0, 6\).*got \d+", marks=CPU_ONLY),
    ("ce", lambda m, s, y: (m, s, torch.zeros_like(m, dtype=torch.long)), ValueError, "must be a float tensor"),
    ("ce", lambda m, s, y: (m[0], s, y), ValueError, r"\[rows, classes\]"),
    ("ce", lambda m, s, y: (m.long(), s, y), TypeError, "float32, float16"),
    ("ce", lambda m, s, y: (m.tolist(), s, y), TypeError, "logits must be a torch.Tensor"),
    pytest.param(
        "bce",
        lambda m, s, y: (m, s, torch.full_like(y, -7)),
        ValueError,
        r"\[0, 6\) or ignore_index=-100, got -7",
        marks=CPU_ONLY,
    ),
    ("distill", lambda m, s, y: (m, s.to(torch.float16), y), TypeError, "dtype"),
    # probability targets that require grad would get none
    *(
        (name, lambda m, s, y: (m, s, torch.rand_like(m).requires_grad_(True)), ValueError, r"target\.detach\(\)")
        for name in ("ce", "bce", "masksub")
    ),
    # strings
    ("masksub", {"mode": "kl"}, ValueError, "mode must be one of"),
    ("masksub", {"mode": 1}, TypeError, "mode must be one of"),
    ("masksub", {"reduction": "avg"}, ValueError, "reduction must be one of"),
    ("ce", {"reduction": None}, TypeError, "reduction must be one of"),
    ("distill", {"mode": "mse"}, ValueError, "mode must be one of"),
    # weights: finite, >= 0, real numbers
    ("masksub", {"main_weight": -0.5}, ValueError, "main_weight must be a finite number >= 0.*got -0.5"),
    ("masksub", {"sub_weight": math.nan}, ValueError, "sub_weight must be a finite number >= 0.*got nan"),
    ("masksub", {"sub_weight": math.inf}, ValueError, "got inf"),
    ("masksub", {"main_weight": 1e39}, ValueError, "fp32"),
    ("masksub", {"main_weight": True}, TypeError, "main_weight must be a real number.*got bool"),
    ("masksub", {"sub_weight": "0.5"}, TypeError, "got str"),
    ("masksub", {"sub_weight": torch.tensor(0.5)}, TypeError, "got Tensor"),
    # temperature: > 0, finite, T^2 a normal fp32 number, at most 2^13 (above, the sub gradient cancels away)
    *(("masksub", {"temperature": t}, ValueError, r"temperature must be a finite number > 0") for t in (0, -1.0)),
    *(("distill", {"temperature": t}, ValueError, r"in \[2\*\*-63, 2\*\*13\]") for t in (math.inf, 1e30, 9e3)),
    ("distill", {"temperature": 1e-30}, ValueError, "temperature"),
    ("distill", {"temperature": None}, TypeError, "temperature must be a real number"),
    # label smoothing in [0, 1]
    *(("ce", {"label_smoothing": e}, ValueError, r"label_smoothing.*\[0, 1\]") for e in (1.5, -0.1, math.nan)),
    ("bce", {"label_smoothing": False}, TypeError, "label_smoothing must be a real number"),
    # target_threshold: BCE only, in [0, 1)
    ("masksub", {"target_threshold": 0.0}, ValueError, "needs mode='bce'"),
    *(("bce", {"target_threshold": t}, ValueError, r"\[0, 1\)") for t in (math.nan, math.inf, -0.5, 1.0)),
    ("masksub", {"mode": "bce", "target_threshold": "0"}, TypeError, "target_threshold must be a real number"),
    # ignore_index: an int (a float was silently truncated)
    ("ce", {"ignore_index": -100.0}, TypeError, "ignore_index must be an int, got float"),
    ("masksub", {"ignore_index": True}, TypeError, "ignore_index must be an int, got bool"),
    ("masksub", {"ignore_index": 2**63}, ValueError, "int64"),
    ("masksub", {"ignore_index": -(2**63)}, ValueError, r"not be -2\*\*63 \(reserved\)"),
]


@pytest.mark.parametrize(("name", "change", "error", "match"), REFUSALS)
def test_bad_input_raises_clear_errors(backend, name, change, error, match):
    main, sub, target = _inputs()
    options = change if isinstance(change, dict) else {}
    if not isinstance(change, dict):
        main, sub, target = change(main, sub, target)
    with pytest.raises(error, match=match):
        _call(name, main, sub, target, **options)


def test_valid_edge_values_and_numpy_scalars_are_accepted(backend):
    main, sub, target = _inputs()
    np_options = {"ignore_index": np.int64(-100), "temperature": np.float32(2.0), "main_weight": np.float64(1.0)}
    for options in ({"label_smoothing": 1.0, "main_weight": 0, "sub_weight": 0.0}, np_options):
        assert all(torch.isfinite(v).all() for v in _call("masksub", main, sub, target, **options))
    assert torch.isfinite(mk.soft_target_bce(main, target.clamp(min=0), target_threshold=0.0))
    with torch.no_grad():  # nothing is differentiated: a target that requires grad loses nothing
        mk.soft_target_cross_entropy(main, torch.rand_like(main).requires_grad_(True))


# ---------------------------------------------------------------------------------------------------------------
# A class id outside [0, C): NaN rows, no host sync
# ---------------------------------------------------------------------------------------------------------------

BAD_IDS = [0, 6, -100, -1, 2]  # C = 6: rows 1 and 3 are bad, row 2 ignored
BAD_ROWS = torch.tensor([False, True, False, True, False])


def _check_nan_rows(values, grads):
    """NaN exactly in the bad rows (values and every gradient element), 0 in the ignored row, finite elsewhere."""
    bad = BAD_ROWS.to(DEVICE)
    for v in values:
        v = v.detach()
        assert torch.equal(v.isnan(), bad) and float(v[2]) == 0.0 and torch.isfinite(v[~bad]).all(), v
    for g in grads:
        assert g.isnan().all(1).equal(bad) and torch.isfinite(g[~bad]).all() and not g[2].any(), g


@pytest.mark.parametrize("bce", [False, True])
def test_out_of_range_ids_give_nan_rows_on_every_backend(backend, bce):
    main, sub = (torch.randn(5, 6, device=DEVICE, requires_grad=True) for _ in "ms")
    target = torch.tensor(BAD_IDS, device=DEVICE)
    for int32 in (False, True):
        out = ml._loss_op(main, sub, target.int() if int32 else target, bce, 0.1, -100, 2.0, None)
        assert mk.last_backend("masksub_loss") == backend
        (out[ml.MAIN] + out[ml.SUB]).sum().backward()
        _check_nan_rows(out[: ml.SUB + 1], (main.grad, sub.grad))
        main.grad = sub.grad = None
    # one term, one gradient: the main term only (no sub logits), the sub gradient only (main is a constant)
    out = ml._loss_op(main, None, target, bce, 0.0, -100, 1.0, None)
    out[ml.MAIN].sum().backward()
    _check_nan_rows(out[: ml.MAIN + 1], (main.grad,))
    out = ml._loss_op(main.detach(), sub, target, bce, 0.0, -100, 1.0, None)
    out[ml.SUB].sum().backward()
    _check_nan_rows(out[ml.SUB : ml.SUB + 1], (sub.grad,))


def test_out_of_range_ids_poison_the_loss_under_torch_compile(backend):
    # Compiled, the public losses skip the eager CPU check (it would read the ids): the NaN rows show instead.
    main, sub = (torch.randn(5, 6, device=DEVICE, requires_grad=True) for _ in "ms")
    target = torch.tensor(BAD_IDS, device=DEVICE)

    def losses(a, b, y):
        out = mk.masksub_loss(a, b, y, reduction="none")
        return out.loss, mk.soft_target_cross_entropy(a, y), mk.soft_target_bce(a, y, reduction="sum")

    rows, ce, bce = torch.compile(losses, fullgraph=True, backend="aot_eager")(main, sub, target)
    assert ce.isnan() and bce.isnan()
    rows.sum().backward()
    _check_nan_rows([rows], (main.grad, sub.grad))
    if DEVICE.type == "cpu":  # eager on CPU tensors: the clearer error
        with pytest.raises(ValueError, match=r"class ids must be in \[0, 6\) or ignore_index=-100, got 6"):
            losses(main, sub, target)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the eager check reads the ids of CPU tensors only")
@pytest.mark.parametrize("name", ["ce", "bce", "masksub"])
def test_a_class_id_equal_to_the_class_count_is_refused_on_cpu(name):
    # every id in [0, C] and none negative: the one-pass range check, not the slower one after it, must refuse C
    main, sub = torch.randn(3, 6), torch.randn(3, 6)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 6\).* got 6"):
        _call(name, main, sub, torch.tensor([0, 6, 2]))


# ---------------------------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------------------------

PROPERTY = property_settings(40, suppress_health_check=[HealthCheck.function_scoped_fixture])
OPTIONS = {  # the scalar options each loss takes
    "ce": ("label_smoothing", "ignore_index", "reduction"),
    "bce": ("label_smoothing", "target_threshold", "reduction"),
    "distill": ("mode", "temperature", "reduction"),
    "masksub": ("mode", "main_weight", "sub_weight", "label_smoothing", "ignore_index", "temperature",
                "target_threshold", "reduction"),
}  # fmt: skip


@st.composite
def valid_calls(draw):
    """(loss, main, sub, target, options): tiny shapes, class ids (some ignored) or probabilities, valid options."""
    name = draw(st.sampled_from(sorted(LOSSES)))
    rows, classes = draw(st.integers(0, 3)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    main, sub = ((torch.randn(rows, classes, generator=gen) * 3).to(DEVICE, dtype) for _ in "ms")
    mode = "bce" if name == "bce" else draw(st.sampled_from(["ce", "bce"]))
    unit = st.floats(0, 1, width=32)
    options = {
        "mode": mode,
        "reduction": draw(st.sampled_from(["none", "sum", "mean"])),
        "label_smoothing": draw(unit),
        "temperature": draw(st.floats(0.1, 10)),
        "main_weight": draw(st.floats(0, 10)),
        "sub_weight": draw(st.floats(0, 10)),
        "ignore_index": draw(st.integers(-3, classes + 2)),
        "target_threshold": draw(st.none() | unit.filter(lambda t: t < 1)) if mode == "bce" else None,
    }
    if draw(st.booleans()):  # probabilities, from mixup or multi-label
        target = torch.rand(rows, classes, generator=gen).to(DEVICE, draw(st.sampled_from([torch.float32, dtype])))
    else:
        ids = torch.randint(0, classes, (rows,), generator=gen)
        ignored = torch.rand(rows, generator=gen) < 0.3
        if "ignore_index" in OPTIONS[name]:
            ids = torch.where(ignored, options["ignore_index"], ids)
        target = ids.to(DEVICE)
    return name, main, sub, target, {k: v for k, v in options.items() if k in OPTIONS[name]}


def _values_and_grads(name, main, sub, target, options):
    main, sub = (t.detach().clone().requires_grad_(True) for t in (main, sub))
    values = _call(name, main, sub, target, **options)
    weights = [torch.linspace(-1, 2, v.numel(), device=DEVICE).reshape(v.shape) for v in values]
    sum(((v * w).sum() for v, w in zip(values, weights)), torch.zeros((), device=DEVICE)).backward()
    return [v.detach() for v in values], [g for g in (main.grad, sub.grad) if g is not None]


@PROPERTY
@given(call=valid_calls())
def test_valid_arguments_match_the_reference(kernel_backend, call):
    got = _values_and_grads(*call)
    with mk.use_backend("torch"):
        expected = _values_and_grads(*call)
    # a gradient such as w (p - 1) cancels where p is near 1: its error is fp32's error of p, times the loss weight,
    # T and the grad_output weights (up to 2), not a fraction of the small result. With p = softmax(x/T) that error
    # is ~6e-8 (a few + |x| / T) of p, so T's factor cancels: the gradient errs by ~6e-8 max(T, |x|). The interpreter's
    # consistent roundings hide the |x| part; a GPU shows it (tools/gpu_math.py: x * (1/T) - max is one fma, exact
    # where the forward's max was rounded: one class, T = 0.1, gave ~1e-6 where the interpreter gives 0)
    options = call[4]
    logits = torch.cat([call[1].flatten(), call[2].flatten()])
    cancelling = 2 * max(1.0, options.get("main_weight", 1.0), options.get("sub_weight", 1.0))
    cancelling *= max(1.0, options.get("temperature", 1.0), float(logits.abs().max()) if logits.numel() else 1.0)
    for i, (a, e) in enumerate(zip(got[0] + got[1], expected[0] + expected[1])):
        scale = float(e.abs().max()) if e.numel() else 0.0
        floor = 3e-7 * cancelling if i >= len(got[0]) else 1e-7
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * scale + floor)


def _is_valid(option: str, value) -> bool:
    """The rule of docs/semantics.md §7, stated independently of the code under test."""
    if isinstance(value, bool):
        return False
    if value is None:
        return option == "target_threshold"
    if option in ("mode", "reduction"):
        return value in (("ce", "bce") if option == "mode" else ("none", "sum", "mean")) and isinstance(value, str)
    if option == "ignore_index":  # -2^63 is reserved (no ignored rows)
        return isinstance(value, int) and -(2**63) < value < 2**63
    if not isinstance(value, (int, float)) or abs(value) > 1e300:  # beyond 1e300: no fp32 range contains it
        return False
    low, high = {"temperature": (2.0**-63, 2.0**13), "label_smoothing": (0, 1), "target_threshold": (0, 1)}.get(
        option, (0, torch.finfo(torch.float32).max)
    )
    return math.isfinite(value) and low <= value <= high and not (option == "target_threshold" and value == 1)


ANY_SCALAR = st.one_of(
    st.floats(), st.integers(), st.integers(2**62, 2**70).map(lambda v: v * (-1) ** v), st.booleans(), st.none(),
    st.sampled_from(["ce", "bce", "sum", "mean", "none", "1", ""]), st.complex_numbers(max_magnitude=2),
)  # fmt: skip


@PROPERTY
@given(data=st.data())
def test_invalid_scalars_raise_type_or_value_errors(backend, data):
    name = data.draw(st.sampled_from(sorted(LOSSES)))
    option = data.draw(st.sampled_from(OPTIONS[name]))
    value = data.draw(ANY_SCALAR.filter(lambda v: not _is_valid(option, v)), label=option)
    options = {option: value, **({"mode": "bce"} if option == "target_threshold" and name == "masksub" else {})}
    main, sub, target = _inputs()
    try:
        _call(name, main, sub, target.clamp(min=0), **options)
    except (TypeError, ValueError):
        return
    pytest.fail(f"{name}({option}={value!r}) returned a result")


def test_logits_without_classes_are_refused(backend):
    # losses.py:70 `x.shape[1] < 1`: [M, 0] logits are refused up front, whatever the target
    logits = torch.zeros(3, 0, device=DEVICE)
    for call in (lambda: mk.masksub_loss(logits, logits.clone(), torch.zeros(3, 0, device=DEVICE)),
                 lambda: mk.self_distillation_loss(logits, logits.clone())):  # fmt: skip
        with pytest.raises(ValueError, match="classes >= 1"):
            call()


def _losses_of_rows(rows: int) -> tuple:
    logits, target = torch.empty(rows, 1, device="meta"), torch.empty(rows, dtype=torch.long, device="meta")
    return (lambda: mk.masksub_loss(logits, logits, target, mode="bce"),
            lambda: mk.self_distillation_loss(logits, logits))  # fmt: skip


def test_logits_of_more_rows_than_a_grid_holds_are_refused(backend):
    # one program per row: past 2^31 - 1 rows the cuda launch failed with "invalid argument" and Triton's grid
    # overflowed (helper-208); and the reduced op's last program sums the rows in int32 steps of 1024, which wrapped
    # past 2^31 - 2^10 (helper-336). Every backend refuses up front (meta tensors: sizes only); 2^31 - 2^10 rows pass
    for rows in (2**31, 2**31 - 2**10 + 1):
        for call in _losses_of_rows(rows):
            with pytest.raises(ValueError, match=rf"at most 2147482624 rows \(2\^31 - 2\^10\), got {rows}$"):
                call()
    for call in _losses_of_rows(2**31 - 2**10):
        call()


def _losses_of_classes(classes: int) -> tuple:
    logits, ids = torch.empty(2, classes, device="meta"), torch.empty(2, dtype=torch.long, device="meta")
    weight, hidden = torch.empty(classes, 1, device="meta"), torch.empty(2, 1, device="meta")
    return (lambda: mk.masksub_loss(logits, logits, ids), lambda: mk.soft_target_cross_entropy(logits, logits),
            lambda: mk.linear_masksub_loss(hidden, hidden, weight, None, ids))  # fmt: skip


def test_logits_of_more_classes_than_int32_columns_reach_are_refused(backend):
    # a row's column positions are int32 in the kernels (helper-245: the docstring promised 262144 classes and
    # nothing checked); every backend refuses past MAX_CLASSES up front, the fused-linear loss's weight alike
    from masksub_kernels.ops._common import MAX_CLASSES

    for call in _losses_of_classes(MAX_CLASSES + 1):
        with pytest.raises(ValueError, match=rf"at most {MAX_CLASSES} classes \(2\^31 - 2\^16\), got"):
            call()
    for call in _losses_of_classes(MAX_CLASSES):
        call()


def test_single_branch_losses_take_meta_tensors_on_every_backend(backend):  # helper-164: C7
    logits = torch.empty(3, 5, device="meta")
    for loss in (
        mk.soft_target_cross_entropy(logits, logits),
        mk.soft_target_bce(logits, logits),
        mk.self_distillation_loss(logits, logits),
    ):
        assert loss.is_meta


# helper-176's mutation audit of the loss kernels: the binarising threshold is strict ([q > threshold]) on both
# target kinds
def _triton_loss_rows(z, s, target, options):
    with mk.use_backend("triton"):
        out = ml._loss_op(z, s, target, *options)
    assert mk.last_backend("masksub_loss") == "triton"
    return out


@pytest.mark.triton
@pytest.mark.parametrize("dense", [False, True])
def test_kernel_binarise_threshold_is_strict(dense):
    # kills _masksub_loss_kernels.py's `1.0 > threshold` -> `1.0 >= threshold` (class ids; no other test saw it) and
    # _masksub_loss_blocks.py's `q > threshold` -> `q >= threshold` (probabilities): a target equal to the
    # threshold binarises to 0 ([q > threshold], SEMANTICS), so with threshold 1.0 (ids) / 0.5 (probabilities)
    # every weight is 0
    gen = torch.Generator().manual_seed(3)
    z, s = (torch.randn(3, 6, generator=gen).to(DEVICE) for _ in range(2))
    if dense:
        target, threshold = torch.full((3, 6), 0.5, device=DEVICE), 0.5
    else:
        target, threshold = torch.tensor([0, 3, 5], device=DEVICE), 1.0
    options = (True, 0.0, -100, 1.0, threshold)  # BCE (the threshold's mode)
    # the Triton implementation itself: the op's check refuses threshold 1.0 (outside [0, 1), as the public losses)
    out = ml._forward_triton(z, s, target, *options)
    expected = ml.loss_forward_reference(z, s, target, *options)
    for row in (ml.MAIN, ml.SUB):
        torch.testing.assert_close(out[row], expected[row], rtol=1e-6, atol=1e-6, equal_nan=True)


# helper-184's CUDA cases on the Triton kernels too: BCE at infinite logits (0 * inf avoided where a target is 0 or
# 1), CE probability targets that do not sum to 1 (the gradient S p - w, S = sum of the weights)
@pytest.mark.triton
@pytest.mark.parametrize("classes", [700, 5])
def test_triton_bce_infinite_logits_at_targets_of_zero_and_one(classes):
    generator = torch.Generator().manual_seed(4)
    main = torch.randn(3, classes, generator=generator) * 3
    target = (torch.rand(3, classes, generator=generator) > 0.5).float()
    target[0, 3], main[0, 3] = 0.0, -torch.inf
    target[1, 4], main[1, 4] = 1.0, torch.inf
    target[2, 1], main[2, 1] = 0.0, -torch.inf
    target[2, 2], main[2, 2] = 1.0, torch.inf
    main, target = main.to(DEVICE), target.to(DEVICE)
    options = (True, 0.0, -100, 1.0, None)
    expected = ml.loss_forward_reference(main, None, target, *options)
    assert bool(expected[0].isfinite().all())
    out = _triton_loss_rows(main, None, target, options)
    torch.testing.assert_close(out[0], expected[0], rtol=2e-6, atol=2e-6)
    ids = torch.tensor([10, 20, 30], device=DEVICE) % classes
    main = torch.randn(3, classes, generator=generator).to(DEVICE)
    main[0, (int(ids[0]) + 1) % classes] = torch.inf  # +inf off the id, with smoothing: the row's term is +inf
    options = (True, 0.1, -100, 1.0, None)
    expected = ml.loss_forward_reference(main, None, ids, *options)
    assert expected[0, 0].item() == float("inf")
    out = _triton_loss_rows(main, None, ids, options)
    torch.testing.assert_close(out[0], expected[0], rtol=2e-6, atol=2e-6)


@pytest.mark.triton
def test_triton_ce_probability_targets_that_do_not_sum_to_one():
    generator = torch.Generator().manual_seed(3)
    main, sub = (torch.randn(5, 700, generator=generator).to(DEVICE) * 3 for _ in range(2))
    target = torch.rand(5, 700, generator=generator).to(DEVICE) * 0.01  # sums ~3.5
    options = (False, 0.1, -100, 2.0, None)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    out = _triton_loss_rows(main, sub, target, options)
    torch.testing.assert_close(out[: ml.SUB + 1], expected[: ml.SUB + 1], rtol=1e-5, atol=1e-5)
    grads = torch.randn(5, generator=generator).to(DEVICE), torch.randn(5, generator=generator).to(DEVICE)
    with mk.use_backend("triton"):
        got = ml._backward_triton(*grads, out, main, sub, target, *options)
    want = ml.loss_backward_reference(*grads, expected, main, sub, target, *options)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


# kills losses.py:93 `target.shape != logits.shape` -> `target.dim() != 2` (a probability target of the logits' rows
# but another class count was taken: the torch backend failed with a broadcasting RuntimeError, the Triton kernel
# read the target with the logits' class count and returned a finite, wrong loss: 7.63 for [4, 5] probabilities)
@pytest.mark.parametrize("classes", [5, 7])
def test_probability_target_of_another_class_count_is_refused(backend, classes):
    main, sub, _ = _inputs()
    target = torch.rand(4, classes, device=DEVICE).softmax(1)
    calls = (
        lambda: mk.soft_target_cross_entropy(main, target),
        lambda: mk.soft_target_bce(main, target, reduction="none"),
        lambda: mk.masksub_loss(main, sub, target, mode="bce"),
    )
    for call in calls:
        with pytest.raises(
            ValueError,
            match=rf"probability target must have the logits' shape \(4, 6\), got \(4, {classes}\)",
        ):
            call()


# kills losses.py:70 `x.dim() != 2` -> `x.dim() < 2` (3-D logits reached `rows, classes = logits.shape` or the op:
# a ValueError still, but "too many values to unpack" instead of the shape the losses take; the REFUSALS only try
# 1-D logits)
def test_logits_of_three_dims_are_refused_with_the_expected_shape(backend):
    logits = torch.randn(2, 4, 6, device=DEVICE)
    ids = torch.zeros(2, 4, dtype=torch.int64, device=DEVICE)
    calls = (
        lambda: mk.soft_target_cross_entropy(logits, ids),
        lambda: mk.soft_target_bce(logits, torch.rand_like(logits)),
        lambda: mk.self_distillation_loss(logits, logits.clone()),
        lambda: mk.masksub_loss(logits, logits.clone(), ids),
    )
    for call in calls:
        with pytest.raises(
            ValueError,
            match=r"must be \[rows, classes\] \(2-D, classes >= 1\), got shape \(2, 4, 6\) \(flatten the leading",
        ):
            call()


# kills losses.py:79 dropping `or sub.device != main.device` (the REFUSALS try a shape and a dtype mismatch, never a
# device one: without the check the torch backend raised "Tensor on device cpu is not on the expected device meta!",
# Triton "Cannot copy out of meta tensor"; on a GPU, logits on cuda:0 and cuda:1 would meet in one kernel)
def test_sub_logits_on_another_device_are_refused(backend):
    main, sub, target = _inputs()
    for call in (lambda: mk.masksub_loss(main, sub.to("meta"), target),
                 lambda: mk.self_distillation_loss(sub.to("meta"), main)):  # fmt: skip
        with pytest.raises(
            ValueError,
            match=rf"match main_logits in shape, dtype and device: .*{DEVICE.type}.*meta",
        ):
            call()


# kills losses.py:104 `target.dtype not in INDEX_DTYPES` widened to int16 / uint8 / int8 (accepted and cast: the
# docs say int64 or int32; uint8 ids cannot hold ignore_index -100, int8 wraps ids >= 128; the REFUSALS try bool only)
@pytest.mark.parametrize("dtype", [torch.int16, torch.int8, torch.uint8])
def test_class_ids_of_other_integer_dtypes_are_refused(backend, dtype):
    main, sub, target = _inputs()
    ids = target.clamp(min=0).to(dtype)
    for call in (
        lambda: mk.soft_target_cross_entropy(main, ids),
        lambda: mk.masksub_loss(main, sub, ids),
    ):
        with pytest.raises(TypeError, match=rf"int64 or int32 class ids .*got {dtype}"):
            call()


# kills losses.py:148 `x = math.inf` -> `x = 0.0` (an int beyond float's range, whose float() overflows, became a
# weight of 0 or no smoothing instead of a refusal; the property test's integers stay within 2**70)
@pytest.mark.parametrize("option", ["main_weight", "sub_weight", "label_smoothing", "temperature"])
def test_integers_beyond_the_float_range_are_refused(option):
    main, sub, target = _inputs()
    huge = 10**400
    with pytest.raises(OverflowError):
        float(huge)  # what the check catches
    with pytest.raises(ValueError, match=rf"{option} must be a finite number .*got 1000"):
        mk.masksub_loss(main, sub, target, **{option: huge})
    assert math.isfinite(float(mk.masksub_loss(main, sub, target, **{option: 1}).loss))


# kills _common.py:261 dropping the `_get_current_dispatch_mode() is not None` test of _tracing: make_fx's default
# (real) mode passes plain tensors under a dispatch mode, so without it the op ran its eager implementation inside
# the trace (here: the torch backend's eager autograd on real data, which raised on reading a tracing tensor) instead
# of one opaque custom-op node (class ids in [0, C) here; an ignored row: the test below)
def test_make_fx_traces_the_loss_as_one_custom_op(backend):
    from torch.fx.experimental.proxy_tensor import make_fx

    gen = torch.Generator().manual_seed(1)
    main, sub, main2, sub2 = (torch.randn(4, 6, generator=gen).to(DEVICE) for _ in range(4))
    target = torch.tensor([0, 5, 1, 2], device=DEVICE)

    def loss(a, b, y):
        return mk.masksub_loss(a, b, y, reduction="none").loss

    graph = make_fx(loss)(main, sub, target)
    called = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert "masksub.masksub_loss_forward.default" in called, called
    torch.testing.assert_close(graph(main2, sub2, target), loss(main2, sub2, target))  # traced, not constants


# helper-196's bug, fixed: the class-id check's test for tracers saw only fake / functional tensors, and make_fx's
# real mode passes plain ones under a dispatch mode, so the eager check ran inside the trace: with an id outside
# [0, C) (an ignored row) its slow path read a tracing tensor ("RuntimeError: It appears that you're trying to get
# value out of a tracing tensor"). Now it asks _common.values_readable, which asks _tracing as the op itself does
def test_make_fx_traces_ignored_rows(backend):
    from torch.fx.experimental.proxy_tensor import make_fx

    main, sub, target = _inputs()  # row 2 ignored (-100)

    def loss(a, b, y):
        return mk.masksub_loss(a, b, y, reduction="none").loss

    graph = make_fx(loss)(main, sub, target)
    torch.testing.assert_close(graph(main * 2, sub, target), loss(main * 2, sub, target))


# helper-250's mutation audit (the mutant named in the comment)
# kills _common.py `MAX_CLASSES = 2**31 - 2**16` -> any value past 2^31 - the widest block (M36: the existing test
# reads the constant, so it passes for any value, and its message keeps saying 2^31 - 2^16): a row of the most
# classes admitted keeps its column positions int32 up to the start after its last block, at the widest block
def test_the_class_limit_leaves_the_last_block_within_int32():
    from masksub_kernels.ops import linear_masksub_loss as lm
    from masksub_kernels.ops import masksub_loss as ml
    from masksub_kernels.ops._common import MAX_CLASSES

    widest = max(ml.MAX_BLOCK_C, lm.MAX_BLOCK_N)
    assert -(-MAX_CLASSES // widest) * widest <= 2**31 - 1  # a class loop's start after its last block: int32
    assert MAX_CLASSES == 2**31 - 2**16  # the number the refusals name


# kills losses.py:75 `x.dim() > 2` -> `x.dim() >= 2` (2-D logits of 0 classes were told to flatten) and ->
# `x.dim() != 2` (1-D logits were told to flatten; the test above tries 3-D logits only, the REFUSALS' 1-D match is
# unanchored)
def test_only_logits_of_more_than_two_dims_are_told_to_flatten(backend):
    for logits in (torch.randn(4, 0, device=DEVICE), torch.randn(6, device=DEVICE)):
        with pytest.raises(
            ValueError, match=rf"got shape {tuple(logits.shape)}$".replace("(", r"\(").replace(")", r"\)")
        ):
            mk.soft_target_cross_entropy(logits, torch.zeros(logits.shape[:1], dtype=torch.int64, device=DEVICE))
