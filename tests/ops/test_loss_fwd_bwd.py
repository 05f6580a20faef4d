"""The loss's forward and backward of a row in one launch (ops/_loss_fwd_bwd.py), the fused-linear chunks' path.

The fused kernel calls the two kernels' code, so it must give their values bit for bit: every option (CE / BCE,
class ids with ignored and out-of-range rows / probabilities, label smoothing, temperatures, a threshold, a bias or
none, one term or two, either gradient alone), fp32 / fp16 / bf16 logits, gradients of their own or written over
the fp32 logits' rows (the chunks' bf16), extreme values, several blocks per row. It runs in one launch where no
class split is configured, in masksub_loss's two where one is (few rows: class_splits).
"""

import inspect

import pytest
import torch
from conftest import DEVICE, kernel_backends
from test_masksub_loss import make_inputs

from masksub_kernels.ops import _loss_fwd_bwd as fused
from masksub_kernels.ops import masksub_loss as ml

pytestmark = [
    pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning"),
    pytest.mark.triton,
]

ROWS, CLASSES = 6, 200


@pytest.fixture(autouse=True)
def _triton_only():
    if "triton" not in kernel_backends():
        pytest.skip("needs the Triton backend")


@pytest.fixture
def launches(monkeypatch):
    """The launches made: 'fused', or 'forward' and 'backward' (masksub_loss's two launchers)."""
    made = []
    for name, label in (("_forward_triton", "forward"), ("_backward_triton", "backward")):
        launcher = getattr(ml, name)
        monkeypatch.setattr(ml, name, lambda *a, _f=launcher, _l=label, **k: made.append(_l) or _f(*a, **k))
    kernel = fused._loss_fwd_bwd_kernel

    class Recorded:
        def __getitem__(self, grid):
            made.append("fused")
            return kernel[grid]

    monkeypatch.setattr(fused, "_loss_fwd_bwd_kernel", Recorded())
    return made


def _buffers(dtype, over_rows, has_sub, seed, extreme):
    """(z, s, (dz, ds)): the logits and the gradients' buffers. over_rows: the chunks' layout (fp32 logits in a
    buffer of padded rows, bf16 gradients over their rows); else logits of ``dtype`` and gradients of their own.
    extreme: logits of 1e4 and -1e4, -inf ones (column 10 of row 3: no target mass there, _run), a row far below 0."""
    main, sub, _ = make_inputs(ROWS, CLASSES, torch.float32, "index", seed=seed)
    if extreme:
        main[:, 0], sub[:, 150] = 1e4, -1e4
        main[3, 10] = sub[3, 10] = float("-inf")
        main[4], sub[4] = main[4] - 1e4, sub[4] - 1e4
    if over_rows:
        buffer = torch.full((2 * ROWS, CLASSES + 8), float("nan"), device=DEVICE)
        buffer[:ROWS, :CLASSES], buffer[ROWS:, :CLASSES] = main, sub
        z, s = buffer[:ROWS, :CLASSES], buffer[ROWS:, :CLASSES]
        narrow = buffer.view(torch.bfloat16)
        into = (narrow[:ROWS, :CLASSES], narrow[ROWS:, :CLASSES])
    else:
        z, s = main.to(dtype), sub.to(dtype)
        into = tuple(torch.full_like(z, float("nan")) for _ in range(2))
    return z, s if has_sub else None, into


def _run(one_launch, args, kind, options, bias, grads, over_rows, seed, extreme):
    """(stats, dz, ds) of one path on fresh buffers (the over-rows gradients overwrite the logits)."""
    dtype, has_sub = args
    z, s, into = _buffers(dtype, over_rows, has_sub, seed, extreme)
    target = make_inputs(ROWS, CLASSES, torch.float32, kind, seed=seed + 1)[2]
    if kind == "dense":
        target[3, 10] = 0.0  # no target mass on the -inf logit (extreme)
    else:
        target[1] = CLASSES + 3  # an out-of-range id: NaN in the row's values and gradients
        target[3] = 11
    stats = torch.full((ml.NUM_OUT, 2 * ROWS), float("nan"), device=DEVICE)[:, ROWS:]  # a view into a wider [9, N]
    tickets = torch.zeros(ROWS, dtype=torch.int32, device=DEVICE)
    gm, gs = grads
    gs = gs if has_sub else None
    if one_launch:
        out, (dz, ds) = fused.forward_backward_triton(
            gm, gs, z, s, target, *options, out=stats, tickets=tickets, into=into, bias=bias, over_rows=over_rows
        )
    else:
        out = ml._forward_triton(z, s, target, *options, bias=bias, out=stats, tickets=tickets)
        dz, ds = ml._backward_triton(gm, gs, out, z, s, target, *options, into=into, bias=bias, over_rows=over_rows)
    assert out is stats and not tickets.any()
    return [t.detach().cpu().float().clone() for t in (out, dz, ds)]


CASES = [  # logits dtype, kind, mode, eps, temperature, threshold, bias, sub-branch, grads (main, sub), over rows
    (torch.float32, "index_ignore", "ce", 0.0, 1.0, None, True, True, (True, True), True),  # BERT's chunks
    (torch.float32, "index", "ce", 0.1, 2.0, None, False, True, (True, True), True),
    (torch.float32, "dense", "ce", 0.1, 1.0, None, False, True, (True, True), True),  # mixup's
    (torch.float32, "dense", "bce", 0.0, 2.0, 0.5, True, True, (True, True), True),  # DeiT-III's
    (torch.float32, "index_ignore", "bce", 0.1, 1.0, None, True, True, (True, True), True),
    (torch.float32, "index", "ce", 0.0, 1.0, None, True, False, (True, False), True),  # one branch
    (torch.float32, "index", "ce", 0.0, 0.5, None, True, True, (False, True), True),  # the sub term alone
    (torch.float32, "dense", "ce", 0.0, 2.0, None, True, True, (True, False), False),
    (torch.bfloat16, "index_ignore", "ce", 0.1, 2.0, None, True, True, (True, True), False),
    (torch.float16, "dense", "bce", 0.1, 1.0, None, False, True, (True, True), False),
]


@pytest.mark.parametrize(("dtype", "kind", "mode", "eps", "temperature", "threshold", "bias", "sub", "grads",
                          "over_rows"), CASES)  # fmt: skip
@pytest.mark.parametrize("extreme", [False, True])
def test_one_launch_equals_the_two(launches, dtype, kind, mode, eps, temperature, threshold, bias, sub, grads,
                                   over_rows, extreme, monkeypatch):  # fmt: skip
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)  # several blocks per row and a partial last one (200 classes)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)  # no class split of the 6 rows: one program each
    options = (mode == "bce", eps, -100, temperature, threshold)
    gen = torch.Generator().manual_seed(3)
    row_grads = tuple(torch.randn(ROWS, generator=gen).to(DEVICE) if want else None for want in grads)
    b = (torch.randn(CLASSES, generator=gen) * 2).to(DEVICE, torch.bfloat16) if bias else None
    args, seed = (dtype, sub), 11 if extreme else 5
    one = _run(True, args, kind, options, b, row_grads, over_rows, seed, extreme)
    assert launches == ["fused"]
    launches.clear()
    two = _run(False, args, kind, options, b, row_grads, over_rows, seed, extreme)
    assert launches == ["forward", "backward"]
    for name, got, want in zip(("stats", "dz", "ds"), one, two):
        assert torch.equal(got.nan_to_num(7.0, 8.0, -8.0), want.nan_to_num(7.0, 8.0, -8.0)), name
        assert torch.equal(got.isnan(), want.isnan()), name
    assert one[0].isnan().any(dim=0).tolist()[1] == (kind != "dense")  # the out-of-range id's row
    if eps == 0:  # every other row finite, extreme values included (smoothing puts mass on the -inf logit)
        assert one[0][:, [0, 2, 3, 4, 5]].isfinite().all()


@pytest.mark.parametrize("over_rows", [False, True])
def test_a_class_split_takes_the_two_launches(launches, monkeypatch, over_rows):
    # few rows on many SMs: the forward splits each row's classes over programs (merged through tickets), so the
    # fused launch, one program per row, does not apply; the two launches run, with the same values
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 132)
    forward_config = ml._forward_config(*_buffers(torch.float32, over_rows, True, 5, False)[:2], None, False, False,
                                        False, True, True, 132)  # fmt: skip
    assert forward_config[0][0] > 1  # split
    options, grads = (False, 0.0, -100, 1.0, None), (torch.ones(ROWS, device=DEVICE),) * 2
    got = _run(True, (torch.float32, True), "index", options, None, grads, over_rows, 5, False)
    assert launches == ["forward", "backward"]
    want = _run(False, (torch.float32, True), "index", options, None, grads, over_rows, 5, False)
    assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) for a, b in zip(got, want))


def test_fused_constants():
    # the fused launch's constants: the shared ones once, the rest of each kernel's under F_ / B_, the larger
    # num_warps; None where either configuration splits; an AssertionError where the shared ones disagree
    shared = {"BCE": False, "DENSE": True, "BINARISE": False, "HAS_BIAS": True, "SPLIT": False}
    per_kernel = {"BLOCK_C": 1024, "UNIT_T": True, "VEC": 1, "GROUP": 4, "ALIGNED": True, "EVEN": False}
    forward = {**shared, **per_kernel, "HAS_MAIN": True, "HAS_SUB": True, "SMOOTHED": False, "num_warps": 4}
    forward["BLOCK_S"] = 1
    backward = {**shared, **per_kernel, "BLOCK_C": 2048, "UNIT_T": False, "num_warps": 8}
    backward |= {"LABELS": False, "WRITE_DZ": True, "WRITE_DS": False, "OVER_ROWS": True}
    merged = fused.fused_constexprs(forward, backward)
    assert merged["F_BLOCK_C"] == 1024 and merged["B_BLOCK_C"] == 2048 and merged["num_warps"] == 8
    assert merged["F_UNIT_T"] and not merged["B_UNIT_T"] and merged["OVER_ROWS"] and not merged["SMOOTHED"]
    kernel_constants = [
        name for name, p in inspect.signature(fused._loss_fwd_bwd_kernel.fn).parameters.items()
        if "constexpr" in str(p.annotation)
    ]  # fmt: skip
    assert sorted(kernel_constants) == sorted(k for k in merged if k != "num_warps")  # every constant, no other
    assert fused.fused_constexprs({**forward, "SPLIT": True}, backward) is None
    assert fused.fused_constexprs(forward, {**backward, "SPLIT": True}) is None
    with pytest.raises(AssertionError, match="disagree"):
        fused.fused_constexprs(forward, {**backward, "DENSE": False})
