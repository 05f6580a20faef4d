"""The Triton loss's split-class path (ops/masksub_loss.py: class_splits): a few rows of many classes run as a 2-D
grid of (row, class split) programs, the row's last program merging the splits' online-softmax / BCE states in split
order, the backward split the same way.

The rule first, then the path against the reference (the [9, M] output with its stats, both gradients) and the
float64 oracle (public API) for every option, at two splits of several blocks (the second with a partial last
block) and at one block per split. Tolerances as in test_masksub_loss.py.
"""

import math

import pytest
import torch
from conftest import DEVICE, kernel_backends
from test_masksub_loss import BF16, F16, F32, GRAD_RTOL, assert_close, check_masksub, make_inputs, oracle

import masksub_kernels as mk
from masksub_kernels.ops import masksub_loss as ml
from masksub_kernels.ops import masksub_loss_reduced as reduced_op

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

ROWS, CLASSES = 5, 300


def test_split_rule():
    # the model's few-rows case on an H200: 33 programs wanted per row, 2 blocks each, 32 splits, 256 programs
    assert ml.class_splits(8, 128256, 1024, 132) == (32, 4096)
    assert ml.class_splits(8, 128256, 2048, 132) == (32, 4096)
    # enough rows, no SMs (the forced one-program path), or one block per row: one split
    for rows, classes, block, sms in ((264, 128256, 2048, 132), (8, 128256, 2048, 0), (8, 1000, 1024, 132)):
        assert ml.class_splits(rows, classes, block, sms)[0] == 1
    for rows in (1, 7, 100, 263, 5000):
        for classes in (1, 17, 1000, 30522, 128256, 262144):
            for block in (16, 2048, 4096):
                splits, chunk = ml.class_splits(rows, classes, block, 132)
                assert chunk % block == 0 and (splits - 1) * chunk < classes <= splits * chunk  # none empty
                assert splits == 1 or rows * splits <= 2 * ml.SPLIT_PROGRAMS_PER_SM * 132  # no more than needed


@pytest.fixture
def triton_backend():
    if "triton" not in kernel_backends():
        pytest.skip("needs the Triton backend")
    with mk.use_backend("triton"):
        yield


@pytest.fixture(params=[4, 132], ids=["2 splits of blocks", "1 block per split"])
def split(request, monkeypatch):
    """Split blocks of 16 classes and an SM count that splits 5 rows of 300 (19 blocks) into 2 splits of 10 blocks
    (the second with a partial last block) or 19 of one block."""
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: request.param)
    assert ml._split_max_block() == 16
    assert ml.class_splits(ROWS, CLASSES, 16, request.param) == ((2, 160) if request.param == 4 else (19, 16))
    return request.param


def _extreme(main, sub, target, kind):
    """1e4 and -1e4 logits, -inf ones (none under target or teacher mass), a row whose first split is all -inf, a
    row far below 0 (a shift of 0 would underflow its sums), the row max in the last split."""
    main[:, 0], sub[:, 250] = 1e4, -1e4
    main[0, :160] = sub[0, :160] = float("-inf")  # every class of split 0 (both split sizes)
    main[1, 200] = main[3, 40] = sub[3, 40] = float("-inf")
    main[2], sub[2] = main[2] - 1e4, sub[2] - 1e4
    main[4, -1] = sub[4, -3] = 2e4
    if kind == "dense":
        target[0, :160] = target[1, 200] = target[3, 40] = 0.0
    else:
        target[:] = torch.tensor([170, 201, 5, 41, 299])
    return main, sub, target


CASES = [
    # mode, dtype, target kind, label_smoothing, temperature, target_threshold, extreme values
    ("ce", F32, "index_ignore", 0.1, 1.0, None, False),
    ("ce", F32, "index", 0.0, 2.0, None, True),
    ("ce", F32, "dense", 0.0, 0.5, None, True),
    ("ce", BF16, "index", 0.1, 1.0, None, False),
    ("ce", F16, "dense", 0.1, 2.0, None, False),
    ("bce", F32, "index_ignore", 0.1, 2.0, None, False),
    ("bce", F32, "dense", 0.0, 1.0, 0.0, True),
    ("bce", BF16, "dense", 0.1, 1.0, None, False),
    ("bce", F16, "index", 0.0, 0.5, 0.5, True),
]


# two roundings to bf16 of nearly equal fp32 gradients (kernel and reference) can land an ulp apart: 2^-8
BETWEEN_BACKENDS = {**GRAD_RTOL, BF16: 2**-8}


@pytest.mark.parametrize(("mode", "dtype", "kind", "eps", "temperature", "threshold", "extreme"), CASES)
def test_split_matches_reference_and_oracle(
    triton_backend, split, mode, dtype, kind, eps, temperature, threshold, extreme
):
    main, sub, target = make_inputs(ROWS, CLASSES, F32, kind, seed=split)
    if extreme:
        main, sub, target = _extreme(main, sub, target, kind)
    main, sub = main.to(dtype), sub.to(dtype)
    options = (mode == "bce", eps, -100, temperature, threshold)
    # the op's output (losses and the saved stats) and gradients against the reference on the same inputs
    out = ml._forward_triton(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    assert_close(out, expected, 1e-6 if dtype == F32 else 1e-5, name="forward [9, M]")
    grads = [torch.randn(ROWS, generator=torch.Generator().manual_seed(2)).to(DEVICE) for _ in "ms"]
    got = ml._backward_triton(*grads, out, main, sub, target, *options)
    want = ml.loss_backward_reference(*grads, expected, main, sub, target, *options)
    for name, a, e in zip(("d main", "d sub"), got, want):
        assert a.dtype == dtype
        assert_close(a, e, BETWEEN_BACKENDS[dtype], name=name)
    # the public loss against the float64 oracle
    check_masksub(
        main, sub, target, mode=mode, label_smoothing=eps, temperature=temperature, target_threshold=threshold,
        reduction="none", main_weight=0.6, sub_weight=0.3,
    )  # fmt: skip
    if extreme:
        assert bool(torch.isfinite(out[: ml.SUB + 1]).all())


@pytest.mark.parametrize("bce", [False, True])
def test_split_single_terms_bad_and_ignored_rows(triton_backend, split, bce):
    # one term only (main, or sub with main a constant), int32 ids; an id out of range gives a NaN row, an ignored
    # row gives 0, in the loss and in every gradient element
    main, sub, _ = make_inputs(ROWS, CLASSES, F32, "index")
    target = torch.tensor([3, CLASSES, -100, -1, 299], dtype=torch.int32, device=DEVICE)
    bad = torch.tensor([False, True, False, True, False], device=DEVICE)
    for logits, sub_logits, term in ((main, None, ml.MAIN), (main, sub, ml.SUB), (main, sub, ml.MAIN)):
        options = (bce, 0.1, -100, 2.0, None)
        out = ml._forward_triton(logits, sub_logits, target, *options)
        expected = ml.loss_forward_reference(logits, sub_logits, target, *options)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6, equal_nan=True)
        assert torch.equal(out[term].isnan(), bad) and float(out[term][2]) == 0.0
        g = torch.ones(ROWS, device=DEVICE)
        grads = (g, None) if term == ml.MAIN else (None, g)
        got = ml._backward_triton(*grads, out, logits, sub_logits, target, *options)
        want = ml.loss_backward_reference(*grads, expected, logits, sub_logits, target, *options)
        grad = got[0] if term == ml.MAIN else got[1]
        torch.testing.assert_close(grad, want[0] if term == ml.MAIN else want[1], rtol=1e-6, atol=1e-7, equal_nan=True)
        assert grad.isnan().all(1).equal(bad) and not grad[2].any()


def test_split_is_deterministic_and_compiles(triton_backend, split):
    main, sub, target = make_inputs(ROWS, CLASSES, F32, "index_ignore")
    args = (main, sub, target, False, 0.1, -100, 2.0, None)
    first, again = ml._loss_op(*args), ml._loss_op(*args)
    assert torch.equal(first, again)  # the states merge in split order, whichever program finishes last
    main.requires_grad_(True)
    sub.requires_grad_(True)
    compiled = torch.compile(lambda a, b, y: mk.masksub_loss(a, b, y).loss, fullgraph=True, backend="aot_eager")
    value = compiled(main, sub, target)
    value.backward()
    expected, *_ = oracle(main, sub, target)
    assert_close(value, expected, 2e-6)


@pytest.mark.parametrize("kind", ["index_ignore", "dense"])
def test_split_reduced_matches_reference(triton_backend, split, kind):
    # the reduction folded into the split forward (the row's last split stores the row, the last row reduces) and
    # the backward's row gradients from the reduced loss's gradient
    main, sub, target = make_inputs(ROWS, CLASSES, F32, kind)
    args = (main, sub, target, False, 0.1, -100, 2.0, None, 0.6, 0.3, True)
    got, out, d = reduced_op._forward_triton_reduced(*args)
    want, expected_out, expected_d = reduced_op._forward_reference(*args)
    assert_close(got, want, 1e-6, name="reduced")
    grad = torch.tensor([1.0, 0.5, -2.0, 0.0], device=DEVICE)
    options = args[3:-1]
    got_grads = reduced_op._backward_triton_reduced(grad, True, True, d, out, main, sub, target, *options)
    want_grads = reduced_op._backward_reference(grad, True, True, expected_d, expected_out, main, sub, target, *options)
    for name, a, e in zip(("d main", "d sub"), got_grads, want_grads):
        assert_close(a, e, GRAD_RTOL[F32], name=name)


@pytest.mark.parametrize("kind", ["index_ignore", "dense"])
@pytest.mark.parametrize(("bce", "has_sub"), [(False, True), (True, False)])  # BCE and no sub: the kernel's zeros
def test_split_into_columns_of_a_wider_output_with_reused_tickets(triton_backend, split, kind, bce, has_sub):
    # the fused-linear op's chunks: the stats written straight into columns of a wider [9, N] (row stride N), the
    # split rows' tickets one buffer for every call (left zero by each launch: no fill, so the kernel writes the
    # zeros of the entries a variant has none for: BCE's CE stats, an absent sub term). Three calls into three
    # column ranges of a NaN-poisoned output, one zeroed ticket buffer: each range equals a fresh (zero-filled)
    # call's output bit for bit, the columns outside every range stay NaN, the tickets end zero; the backward reads
    # the strided stats
    main, sub, target = make_inputs(ROWS, CLASSES, F32, kind)
    sub = sub if has_sub else None
    options = (bce, 0.1, -100, 2.0, None)
    fresh = ml._forward_triton(main, sub, target, *options)
    assert not fresh.isnan().any()
    wide = torch.full((ml.NUM_OUT, 4 * ROWS + 3), float("nan"), device=DEVICE)
    tickets = torch.zeros(ROWS, dtype=torch.int32, device=DEVICE)
    starts = (1, ROWS + 2, 3 * ROWS + 3)
    for start in starts:
        out = ml._forward_triton(main, sub, target, *options, out=wide[:, start : start + ROWS], tickets=tickets)
        assert out.data_ptr() == wide[:, start].data_ptr()
        assert torch.equal(out, fresh)
        assert not tickets.any()
    outside = torch.ones(wide.shape[1], dtype=torch.bool)
    for start in starts:
        outside[start : start + ROWS] = False
    assert wide[:, outside.to(DEVICE)].isnan().all()
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(ROWS, generator=gen).to(DEVICE), torch.randn(ROWS, generator=gen).to(DEVICE)]
    grads[1] = grads[1] if has_sub else None
    want = ml._backward_triton(*grads, fresh, main, sub, target, *options)
    got = ml._backward_triton(*grads, wide[:, starts[1] : starts[1] + ROWS], main, sub, target, *options)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


# helper-179's mutation audit of the split path (25 mutants, 4 gaps). Three splits (16, 16, 8: a partial last
# block) of 3 rows x 40 classes with blocks of 16 (MAX_BLOCK_C = 64) on 4 SMs: BLOCK_S = 4, so the merge's fourth
# lane is a missing split whose `other=` values are read (the fixtures above, with 2 splits, have BLOCK_S = 2); and
# the merges' guards against 0 * inf where a student's logits span the fp32 range.

ROWS3, CLASSES3 = 3, 40  # the three-split tests' shape (the tests above: ROWS, CLASSES)


@pytest.fixture
def three_splits(monkeypatch):
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 4)
    assert ml._split_max_block() == 16
    assert ml.class_splits(ROWS3, CLASSES3, 16, 4) == (3, 16)
    with mk.use_backend("triton"):
        yield


def _inputs(kind, seed=0):
    """Row 0 plain; row 1 every logit near -1e4 (a row shift far below 0: a missing split taken as m = 0 would
    underflow the row's sums); row 2: the student -inf on the first split, where the teacher's z is -1e4 (its mass
    there underflows: a finite loss)."""
    gen = torch.Generator().manual_seed(seed)
    z, s = torch.randn(ROWS3, CLASSES3, generator=gen), torch.randn(ROWS3, CLASSES3, generator=gen)
    z[1], s[1] = z[1] - 1e4, s[1] - 1e4
    s[2, :16] = float("-inf")
    z[2, :16] = -1e4
    if kind == "dense":
        y = torch.rand(ROWS3, CLASSES3, generator=gen)
        y = y / y.sum(1, keepdim=True)
        y[2, :16] = 0.0
    else:
        y = torch.tensor([3, 37, 20])
    return z.to(DEVICE), s.to(DEVICE), y.to(DEVICE)


def _check(z, s, y, options, rtol=1e-4):
    # rtol 1e-4: row 1's logits near -1e4 carry an fp32 ulp of ~1e-3 (a mutant is off by 1 or more, or inf)
    out = ml._forward_triton(z, s, y, *options)
    expected = ml.loss_forward_reference(z, s, y, *options)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=1e-4, equal_nan=True)
    assert bool(torch.isfinite(out[: ml.SUB + 1]).all())
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(ROWS3, generator=gen).to(DEVICE) for _ in "ms"]
    got = ml._backward_triton(*grads, out, z, s, y, *options)
    want = ml.loss_backward_reference(*grads, expected, z, s, y, *options)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, equal_nan=True)
    return out


@pytest.mark.triton
@pytest.mark.parametrize("bce", [False, True], ids=["ce", "bce"])
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_three_splits_with_a_missing_merge_lane(three_splits, bce, kind, temperature):
    # kills the split merge's `other=` values (kernels.py: pm_z / pm_s other=low -> 0.0, pm_n other=-inf -> 0.0,
    # pa_z / pb_z / pd_t other=0.0 -> 1.0), the merge's `has = j < splits` -> `j <= splits`, the backward's split
    # bound `hi = min(lo + chunk, C)`, and the blocks' masks on the partial last block of the last split
    _check(*_inputs(kind), (bce, 0.1, -100, temperature, None))


@pytest.mark.triton
def test_three_splits_reduced_and_reused_tickets(three_splits):
    # kills the ticket's `ticket == splits - 1` (merge by a program that is not the row's last) and the tickets'
    # reset (`tl.store(ticket_ptr + row, 0)` dropped): three calls on one zeroed ticket buffer equal a fresh call
    z, s, y = _inputs("index")
    options = (False, 0.1, -100, 2.0, None)
    fresh = ml._forward_triton(z, s, y, *options)
    tickets = torch.zeros(ROWS3, dtype=torch.int32, device=DEVICE)
    for _ in range(3):
        out = torch.full((ml.NUM_OUT, ROWS3), float("nan"), device=DEVICE)
        ml._forward_triton(z, s, y, *options, out=out, tickets=tickets)
        assert torch.equal(out, fresh)
        assert not tickets.any()
    args = (z, s, y, *options, 0.6, 0.3, True)
    got, _, _ = reduced_op._forward_triton_reduced(*args)
    want, _, _ = reduced_op._forward_reference(*args)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _check_one_row_forward(z, s, options):
    """The Triton forward of one row (label 20) against the reference: a finite sub loss, as the reference's."""
    z, s, label = z.to(DEVICE), s.to(DEVICE), torch.tensor([20], device=DEVICE)
    with mk.use_backend("triton"):
        out = ml._forward_triton(z, s, label, *options)
    expected = ml.loss_forward_reference(z, s, label, *options)
    assert bool(torch.isfinite(expected[ml.SUB]).all()) and bool(torch.isfinite(out[ml.SUB]).all())
    torch.testing.assert_close(out[: ml.SUB + 1], expected[: ml.SUB + 1], rtol=1e-6, atol=1e-6)


@pytest.mark.triton
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("sms", [0, 132], ids=["two blocks of one program", "two splits"])
def test_a_teacher_rescale_of_zero_skips_an_infinite_old_sum(monkeypatch, sms, temperature):
    # Blocks of 16 classes. The teacher's logits go from -1e4 (classes 0-15) to 1e4 (16-31) and the student's from
    # -2e38 to 2e38: where the teacher's max moves to 1e4, the first block's rescale is 0 (its mass underflows) and
    # its moved sum l_t (m_s - m_s') is -inf; 0 * -inf would be NaN where the loss is finite. sms = 0: one program,
    # the rescale between its blocks (kills _masksub_loss_blocks.py's `tl.where(alpha_t != 0.0, alpha_t * (d_t +
    # moved), 0.0)` -> `alpha_t * (d_t + moved)`); 132 SMs: 2 splits of one block each, the split merge's rescale
    # (kills _masksub_loss_kernels.py's `tl.where(beta_t != 0.0, beta_t * (d_t + moved), 0.0)` -> `beta_t * (...)`)
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 32 if sms == 0 else 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    assert ml.class_splits(1, 32, ml._split_max_block(), sms)[0] == (1 if sms == 0 else 2)
    z = torch.cat([torch.full((1, 16), -1e4), torch.full((1, 16), 1e4)], 1) + torch.linspace(0, 1, 32)
    s = torch.cat([torch.full((1, 16), -2e38), torch.full((1, 16), 2e38)], 1)
    _check_one_row_forward(z, s, (False, 0.0, -100, temperature, None))


@pytest.mark.skipif(
    DEVICE.type == "cuda",
    reason="a subnormal teacher mass (2^-148): a GPU's exp2 flushes it to 0, the guard unobservable",
)
def test_split_merge_moved_skips_a_split_of_only_minus_inf_students(monkeypatch):
    # (not marked triton: under a GPU's arithmetic, MASKSUB_GPU_MATH=1, exp2 flushes the subnormal and the mutant
    # passes; the interpreter's own arithmetic keeps it, helper-185)
    # kills _masksub_loss_kernels.py:122 `m_s > -FLT_MAX` -> `m_s >= -FLT_MAX` (the merge's `moved` guard): split 0's
    # student logits are all -inf (its m_s stays -FLT_MAX) and its teacher mass is below fp32's 2^-149 in the row
    # (log2 p = -148 - log2 16: a finite loss) while its beta_t = 2^-148 is not 0; the mutant's moved =
    # l_t (-FLT_MAX - c_s) overflows to -inf (c_s = 1e38) and the loss becomes inf
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 132)
    z = torch.cat([torch.full((1, 16), -148 * math.log(2)), torch.zeros(1, 16)], 1)
    s = torch.cat([torch.full((1, 16), float("-inf")), torch.full((1, 16), 1e38)], 1)
    s[0, 16:] += torch.linspace(0, 1e37, 16)
    _check_one_row_forward(z, s, (False, 0.0, -100, 1.0, None))
