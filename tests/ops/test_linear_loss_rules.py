"""Fused-linear loss rules that change no value but memory, speed or a GPU's grid, and cases a mutation sweep found
untested (helper-167): a negative class id other than ignore_index, the recompute backward of the weight and bias
alone, exactly MAX_ROWS rows, the autocast hint only for the main hidden state, the reference's chunk floor and its
counted rows, the grid and tile rules, the chunks' padding and their one weighted term stored unweighted."""

import pytest
import torch
from conftest import DEVICE
from test_linear_masksub_loss import _small_tiles, leaves, make_inputs, op_backend  # noqa: F401 (fixtures)

import masksub_kernels as mk
from masksub_kernels.ops import _linear_loss_checks as checks
from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops import linear_masksub_loss as lm


def test_a_negative_class_id_gives_a_nan_row(op_backend):  # noqa: F811
    # a negative id other than ignore_index (-1) is out of range: NaN row, like id C
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=27)
    target[1] = -1
    out = lm._linear_loss_op(h, hs, w, b, target, False, 0.0, -100, 1.0, None)
    assert bool(out[lm.MAIN, 1].isnan()) and bool(out[lm.SUB, 1].isnan())
    others = torch.arange(h.shape[0], device=DEVICE) != 1
    assert bool(out[lm.MAIN, others].isfinite().all())


def test_the_reference_chunks_take_at_least_one_row():
    assert lm.reference_chunk_rows(2**20 + 1) == 1
    assert lm.reference_chunk_rows(2**19 + 1) == 1
    assert lm.reference_chunk_rows(2**19) == 2


def test_the_cpu_reference_computes_the_counted_rows_only(monkeypatch):
    seen = []
    orig = lm.loss_forward_reference
    monkeypatch.setattr(lm, "loss_forward_reference", lambda z, *a: (seen.append(z.shape[0]), orig(z, *a))[1])
    h, hs, w, b, target = (t.cpu() for t in make_inputs(kind="index_ignore"))
    with mk.use_backend("torch"):
        lm._linear_loss_op.run(h, hs, w, b, target, False, 0.0, -100, 1.0, None)
    assert sum(seen) == int((target != -100).sum()) < target.shape[0]


def test_the_recompute_grids_split_rules():
    cpu = torch.device("cpu")  # INTERPRETER_PROGRAMS = 4 programs fill the "device"
    assert lm._row_splits(1, 2, cpu) == 2  # no more dW splits than row tiles
    assert lm._row_splits(2, 8, cpu) == 2  # 4 programs // 2 class tiles
    # probabilities (every row counts): the splits that fill the device; class ids: up to MAX_COUNT_SPLITS
    assert lm._class_split_grid(1, 16, True, cpu) == ((1, 4), 4)
    assert lm._class_split_grid(1, 16, False, cpu) == ((1, 8), 4)


def test_the_recompute_backward_of_the_weight_and_bias_alone(op_backend):  # noqa: F811
    # reduction='none' (the recompute op's backward) with frozen hidden states: dW, db from both terms
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=5)
    ours = [h, hs, *leaves(w, b)]
    ref = [h.double(), hs.double(), *leaves(w.double(), b.double())]
    out = mk.linear_masksub_loss(*ours, target, reduction="none")
    (out.main.sum() + 0.5 * out.sub.sum()).backward()
    with mk.use_backend("torch"):
        e = mk.masksub_loss(ref[0] @ ref[2].T + ref[3], ref[1] @ ref[2].T + ref[3], target, reduction="none")
    (e.main.sum() + 0.5 * e.sub.sum()).backward()
    for a, x in zip(ours[2:], ref[2:]):
        torch.testing.assert_close(a.grad.double(), x.grad, rtol=1e-4, atol=1e-5)


def test_exactly_max_rows_is_accepted(monkeypatch):
    monkeypatch.setattr(checks, "MAX_ROWS", 4)  # read by _check_linear
    h, s, w, b = torch.randn(4, 5), torch.randn(4, 5), torch.randn(6, 5), torch.randn(6)
    mk.linear_masksub_loss(h, s, w, b, torch.tensor([0, 5, -100, 2]))  # 4 rows: allowed
    with pytest.raises(ValueError, match="at most 4 rows"):
        mk.linear_masksub_loss(torch.randn(5, 5), torch.randn(5, 5), w, b, torch.tensor([0, 5, -100, 2, 1]))


def test_the_tiles_by_dtype(monkeypatch):
    for name, value in (("MAX_BLOCK_M", 64), ("MAX_BLOCK_N", 128), ("MAX_BLOCK_K", 64)):
        monkeypatch.setattr(lm, name, value)  # undo the interpreter's small tiles
    assert lm._max_blocks(torch.float32) == (64, 64, 16)
    assert lm._max_blocks(torch.bfloat16) == (64, 128, 64)


def test_no_autocast_hint_for_the_sub_hidden_state():
    h, s, w, b = torch.randn(4, 5), torch.randn(4, 5), torch.randn(6, 5), torch.randn(6)
    with pytest.raises(TypeError, match="sub_hidden must be") as error:
        mk.linear_masksub_loss(h, s.double(), w, b, torch.tensor([0, 5, -100, 2]))
    assert "cast it" not in str(error.value)
    # a sub-branch that kept fewer rows: how to align them (helper-312)
    with pytest.raises(ValueError, match=r"sub_hidden must be \[4, 5\].*gather the main rows at its kept positions"):
        mk.linear_masksub_loss(h, s[:2], w, b, torch.tensor([0, 5, -100, 2]))
    # more rows than the main branch, or an integer weight (helper-314): no gather hint, no cast hint
    for args, kind in (((h, torch.cat([s, s]), w, b), ValueError), ((h, s, w.long(), b), TypeError)):
        with pytest.raises(kind, match="must be") as error:
            mk.linear_masksub_loss(*args, torch.tensor([0, 5, -100, 2]))
        assert "gather" not in str(error.value) and "cast it" not in str(error.value)


def test_the_chunks_padding_rules():
    assert not chunks.padded_dw(True, False, torch.bfloat16)  # no db (no bias, or a frozen one): dW unpadded
    assert not chunks.padded_dw(False, True, torch.bfloat16)  # db alone: no dW at all
    assert not chunks.padded_dw(True, True, torch.float32)  # fp32: db summed on its own
    assert chunks.padded_dw(True, True, torch.float16)  # dW beside db: [dW | db | 0...]
    assert chunks.padded_depth(768) == 776 and chunks.padded_depth(24) == 32 and chunks.padded_depth(23) == 24


@pytest.mark.parametrize("weights", [(3.0, 0.0), (0.0, 3.0)])
def test_one_weighted_term_is_stored_unweighted(weights):
    h, hs, w, b, target = (t.cpu() for t in make_inputs(kind="index_ignore"))
    out = chunks.grads_in_forward(
        h,
        hs,
        w,
        b,
        target,
        False,
        *weights,
        True,
        True,
        True,
        True,
        (False, 0.0, -100, 1.0, None),
        rows_per_chunk=8,
        kernels=False,
    )
    assert float(out[-1]) == 3.0  # scale: the term's weight, applied in fp32 by the backward


def test_small_heads_take_int32_offsets():
    h, hs, w, b, target = (t.cpu() for t in make_inputs())
    flags = lm._kernel_inputs(h, hs, w, b, target, -100, False, None)[2]
    assert flags["WIDE_W"] is False


@pytest.mark.triton
def test_the_dw_kernel_takes_the_row_splits_of_its_shape(monkeypatch):
    # class ids without gather: the recompute kernels; 37 rows (3 row tiles of 16), 40 classes (2 tiles of 32):
    # 4 interpreter programs // 2 class tiles = 2 row splits of dW
    seen, real = [], lm._sum_splits
    monkeypatch.setattr(lm, "_sum_splits", lambda part, dtype: seen.append(part.shape[0]) or real(part, dtype))
    h, hs, w, b, target = make_inputs(rows=37, kind="index_ignore", seed=11)
    options = (False, 0.1, -100, 2.0, None)
    with mk.use_backend("torch"):
        out = lm._linear_loss_op(h, hs, w, b, target, *options)
    g = torch.ones(h.shape[0], device=DEVICE)
    with mk.use_backend("triton"):
        lm._linear_loss_backward_op(g, g, out, h, hs, w, b, target, False, True, True, False, *options)
    assert seen and seen[0] == 2, seen


@pytest.mark.parametrize("gather", [False, True])
def test_out_of_range_ids_give_nan_gradient_rows_in_the_recompute_backward(op_backend, gather):  # noqa: F811
    # where no check reads the ids (the public ops refuse them eagerly; under torch.compile or CUDA graph capture
    # they cannot), the recompute backward marks a row NaN whose id is outside [0, C): id C and -1 here (helper-168's
    # K4: id C went unchecked on the kernels' path, gather False, which class ids take under capture); its hidden
    # gradients NaN, every other row's finite
    h, hs, w, b, target = make_inputs(kind="index", seed=31)
    target[1], target[2] = w.shape[0], -1
    options = (False, 0.0, -100, 1.0, None)
    out = lm._linear_loss_op(h, hs, w, b, target, *options)
    g = torch.ones(h.shape[0], device=DEVICE)
    dh, dhs, _, _ = lm._linear_loss_backward_op(g, g, out, h, hs, w, b, target, True, True, True, gather, *options)
    bad = torch.zeros(h.shape[0], dtype=torch.bool, device=DEVICE)
    bad[[1, 2]] = True
    for grad in (dh, dhs):
        assert grad[bad].isnan().all() and grad[~bad].isfinite().all()


# helper-318's mutation audit
# kills M4  ops/_linear_loss_checks.py:80  `x.shape[0] < len(hidden)` -> `x.shape[0] <= len(hidden)`
#   (a sub_hidden of the right rows but another dtype got the gather hint)
# kills M5  ops/_linear_loss_checks.py:80  drop `x.shape[1:] == hidden.shape[1:] and`
#   (fewer rows but another depth got the gather hint)
# kills M6  ops/_linear_loss_checks.py:80  drop `name == "sub_hidden" and`
#   (a fp64 weight with fewer classes than rows got the gather hint instead of the cast hint)
def test_the_gather_hint_only_for_a_sub_hidden_with_fewer_rows_of_the_same_depth():
    h, s, w, b = torch.randn(4, 5), torch.randn(4, 5), torch.randn(3, 5), torch.randn(3)
    target = torch.tensor([0, 2, -100, 1])
    for args, hint, kind in (
        ((h, s.double(), w, b), None, TypeError),  # the same rows, another dtype (M4)
        ((h, torch.randn(2, 7), w, b), None, ValueError),  # fewer rows, another depth (M5)
        ((h, s, w.double(), b), "(cast it: weight.to(main_hidden.dtype)", TypeError),  # 3 classes < 4 rows (M6)
    ):
        with pytest.raises(kind, match="must be") as error:
            mk.linear_masksub_loss(*args, target)
        assert "gather" not in str(error.value)
        assert hint is None or hint in str(error.value)
