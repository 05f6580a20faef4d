"""ops/_linear_loss_chunks.py's kernels flavour against its reference flavour, on the stored gradients themselves:
the fp16 / bf16 path with a bias, whose db comes out of dW's matmul (a ones column in the stacked rows), with
both terms, one term weighted 0, no sub-branch, and ignored rows (gathered chunks), over several chunks; the fp16 /
bf16 gradients written over their logits' rows."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import DEVICE
from test_linear_masksub_loss import (  # noqa: F401 (the fixtures op_backend and several_chunks)
    F16,
    GRAD_RTOL,
    assert_grad_close,
    composite,
    leaves,
    make_inputs,
    op_backend,
    several_chunks,
)
from torch._subclasses.fake_tensor import FakeTensorMode

import masksub_kernels as mk
from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops import _linear_loss_matmuls as matmuls
from masksub_kernels.ops._linear_loss_grads import _linear_loss_grads_op
from masksub_kernels.ops._loss_layout import DEFAULT_SMS

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

OPTIONS = (False, 0.1, -100, 2.0, None)  # bce, label_smoothing, ignore_index, temperature, target_threshold


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("main_weight", "sub_weight", "has_sub"), [(0.5, 0.5, True), (0.0, 1.0, True),
                                                                     (1.0, 0.0, True), (1.0, 0.0, False)])  # fmt: skip
@pytest.mark.parametrize("kind", ["index", "index_ignore"])
@pytest.mark.triton
def test_ones_column_gives_db_and_dw(dtype, main_weight, sub_weight, has_sub, kind):
    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=30, dtype=dtype, kind=kind, seed=3)
    sub = hs if has_sub else None
    args = (h, sub, w, b, target, True, main_weight, sub_weight, True, has_sub, True, True, OPTIONS)
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True)  # 5 chunks
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    dw, db = kernels[5], kernels[6]
    # dW: the [C, D] view of the [dW | db | 0...] accumulator (no copy); db its own
    assert dw.shape == (30, 20) and dw.stride() == (chunks.padded_depth(20), 1)
    assert (
        db.shape == (30,) and db.is_contiguous() and db.untyped_storage().data_ptr() != dw.untyped_storage().data_ptr()
    )
    assert dw.dtype == db.dtype == torch.float32 and dw.device.type == db.device.type == DEVICE.type
    # the two flavours differ by the dtype of dz, ds in the matmuls (one rounding to fp16 / bf16 on the kernels'
    # path, as the composite's): norm-wise within a few of its units
    limit = 4 * torch.finfo(dtype).eps
    assert _relative(dw, reference[5]) <= limit
    assert _relative(db, reference[6]) <= limit
    for got, want in zip(kernels[:3], reference[:3]):  # the losses
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("bias", "one_launch"), [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.triton
def test_gradients_over_the_logits_rows(monkeypatch, bias, one_launch, dtype):
    # fp16 / bf16: each chunk's dz and ds are written over its own fp32 logits rows (narrower views of the one chunk
    # buffer, the backward kernel's over_rows: one program per row), and dW's matmul runs once per chunk over them,
    # before the next chunk's logits overwrite them: chunks of 8 counted rows (gathered: the ignored rows skipped)
    from masksub_kernels.ops import _loss_fwd_bwd

    monkeypatch.setattr(_loss_fwd_bwd, "ONE_LAUNCH", one_launch)  # False: the loss's two launches, the tail by matmuls
    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=30, dtype=dtype, kind="index_ignore", seed=4)
    b = b if bias else None
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    recorded, backwards, backward = [], [], chunks.forward_backward_triton
    add_matmul = matmuls.add_matmul

    def recorded_matmul(acc, a, x):
        recorded.append((acc.shape[0], a.shape[1], a.dtype, a.stride()))
        add_matmul(acc, a, x)

    def recorded_backward(*args, into, over_rows, **kwargs):
        backwards.append(over_rows)
        logits = args[2]  # z: the chunk's fp32 rows; dz over them, same start, same bytes per row
        assert over_rows and into[0].data_ptr() == logits.data_ptr() and into[0].dtype == dtype
        assert into[0].stride(0) * 2 == logits.stride(0) * 4
        return backward(*args, into=into, over_rows=over_rows, **kwargs)

    monkeypatch.setattr(matmuls, "add_matmul", recorded_matmul)
    monkeypatch.setattr(chunks, "forward_backward_triton", recorded_backward)  # the loss's one launch per chunk
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True)
    counted = int((target != -100).sum())
    sizes = [min(8, counted - start) for start in range(0, counted, 8)]  # the chunks' rows, the last one short
    wide = 2 * chunks.aligned_classes(30)  # the gradients' row stride: the fp32 rows' bytes in fp16 / bf16
    # per chunk (C = 30: a head of 24 classes, a tail of 6, whose logits and dH's share the loss launch computes):
    # dH's head added into the fp32 [2n, D] products, then dW's matmul over the head's rows of the accumulator,
    # reading its columns of the chunk's gradients in place (row stride: the fp32 rows' bytes); after the loop dW's
    # tail, one matmul per branch over the counted rows' kept tail columns ([K, 8] in the gradients' dtype)
    expected = [[(2 * n, 24, dtype, (wide, 1)), (24, 2 * n, dtype, (1, wide))] for n in sizes]
    expected.append([(6, counted, dtype, (1, 8))] * 2)
    if not one_launch:  # the tail's dH by a matmul added to the head's (a contiguous copy on the CPU), dW's per chunk
        expected = [
            [(2 * n, 6, dtype, (6, 1)), (24, 2 * n, dtype, (1, wide)), (6, 2 * n, dtype, (1, wide))] for n in sizes
        ]
    assert recorded == [call for calls in expected for call in calls] and backwards == [True] * len(sizes)
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    for i in (3, 4, 5, 6):  # dH, dHs, dW, db (empty without a bias)
        assert kernels[i].shape == reference[i].shape
        if reference[i].numel():
            assert _relative(kernels[i], reference[i]) <= 4 * torch.finfo(dtype).eps, i


@pytest.mark.parametrize(("bce", "kind"), [(False, "index"), (True, "dense")])
@pytest.mark.triton
def test_gradients_over_rows_of_several_blocks(monkeypatch, bce, kind):
    # the over-rows backward on rows of several whole blocks and a masked tail, where one block's stores land on
    # logits that earlier blocks loaded (the interpreter: blocks of 64 over 300 classes; a GPU, whose warps run
    # concurrently: its own blocks over 10000), against the reference flavour
    from masksub_kernels.ops import masksub_loss as ml

    on_gpu = DEVICE.type == "cuda"
    if not on_gpu:
        monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    classes = 10000 if on_gpu else 300
    h, hs, w, b, target = make_inputs(rows=20, depth=16, classes=classes, dtype=torch.bfloat16, kind=kind, seed=6)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, (bce, 0.1, -100, 2.0, None))
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True)
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    torch.testing.assert_close(kernels[7], reference[7], rtol=1e-4, atol=1e-5)  # the per-row stats [9, M]
    for i in (3, 4, 5, 6):  # dH, dHs, dW, db
        assert _relative(kernels[i], reference[i]) <= 4 * torch.finfo(torch.bfloat16).eps, i


def test_chunk_rows_fill_the_budget_from_a_floor(monkeypatch):
    # the chunk's fp32 logits [2R, C_pad] within GRADS_CHUNK_BYTES whatever the inputs' dtype (fp16 / bf16 gradients
    # need no memory of their own): BERT's C gives 384 rows; rows in multiples of 64, never fewer than
    # GRADS_CHUNK_MIN_ROWS where M has 32 times as many (dW's accumulator passes, one per chunk, would outlast its
    # matmul), nor than M / 32 below
    rows = chunks.grads_chunk_rows
    m = 16384
    assert rows(30522, m) == 384 and 2 * 384 * chunks.aligned_classes(30522) * 4 <= chunks.GRADS_CHUNK_BYTES
    assert rows(1000, m) == 12288 and rows(8192, m) == 1536 and rows(1000, 8) == 12288  # the loop takes min(R, M)
    # the floor decides from C = 32769 up (the budget would give 320 rows there), and the buffer outgrows the budget
    assert rows(32768, m) == 384 and 2 * 384 * 32768 * 4 == chunks.GRADS_CHUNK_BYTES
    assert rows(32769, m) == rows(50265, m) == rows(10**6, m) == 384
    # where M is smaller the floor is M / 32 in multiples of 64 (the buffer within 1 / 32 of the composite's logits
    # and gradients): M = 12288 keeps 384 rows, 8192 takes 256, 2048 64, fewer the budget alone
    assert rows(128256, 12288) == 384 and rows(128256, 12287) == 320 and rows(128256, 8192) == 256
    assert rows(10**6, 2048) == 64 and rows(10**6, 2047) == rows(10**6, 384) == 12
    monkeypatch.setattr(chunks, "GRADS_CHUNK_MIN_ROWS", 0)  # the budget alone (the benchmark's chunk sweep)
    assert rows(32769, m) == 320 and rows(50265, m) == 192
    assert rows(128256, m) == 64 and rows(10**6, m) == 12


@pytest.mark.triton
def test_the_loop_runs_chunks_of_the_floor(monkeypatch):
    # a floor above the budget's rows gives the loop its chunks: M = 128 rows, C = 40, a budget of 2 rows, a floor of
    # 64 where M has 2 x 64 rows: two chunks of 64 (the op's path to the loop: _grads_triton), on the interpreter,
    # the same values as the reference in chunks of 5
    from masksub_kernels.ops import _linear_loss_grads as grads_ops

    monkeypatch.setattr(chunks, "GRADS_CHUNK_BYTES", 2 * 2 * chunks.aligned_classes(40) * 4)
    monkeypatch.setattr(chunks, "GRADS_CHUNK_MIN_ROWS", 64)
    monkeypatch.setattr(chunks, "GRADS_CHUNK_MIN_SHARE", 2)
    assert chunks.grads_chunk_rows(40, 128) == 64 and chunks.grads_chunk_rows(40, 127) == 2
    h, hs, w, b, target = make_inputs(rows=128, depth=16, classes=40, dtype=torch.bfloat16, kind="ids", seed=3)
    flags, options = (True, 0.5, 0.5, True, True, True, True), (False, 0.0, -100, 1.0, None)
    shapes, empty = [], torch.empty

    def spy(*size, **kwargs):  # the loop's buffers: the chunk's fp32 logits [2R, C_pad] among them
        out = empty(*size, **kwargs)
        shapes.append((tuple(out.shape), out.dtype))
        return out

    monkeypatch.setattr(chunks.torch, "empty", spy)
    kernels = grads_ops._grads_triton(h, hs, w, b, target, *flags, True, None, 0, *options)
    monkeypatch.setattr(chunks.torch, "empty", empty)
    assert ((128, chunks.aligned_classes(40)), torch.float32) in shapes  # 2 x 64 rows of logits
    reference = chunks.grads_in_forward(h, hs, w, b, target, *flags, options, rows_per_chunk=5, kernels=False)
    for i in (0, 3, 4, 5, 6):  # the loss, dH, dHs, dW, db
        assert _relative(kernels[i], reference[i]) <= 4 * torch.finfo(torch.bfloat16).eps, i


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("kind", ["index_ignore", "dense"])
def test_chunk_rows_sets_the_chunks_of_either_backend(op_backend, several_chunks, monkeypatch, single, kind):  # noqa: F811
    # the public chunk_rows reaches the loop on both backends, below and above their default (6 rows here:
    # several_chunks) and past M (one chunk of every row), a NumPy int too, with the values and gradients of the
    # default's chunks (gathered rows of class ids; every row for probabilities)
    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=40, kind=kind, seed=4)
    seen, loop = [], chunks.grads_in_forward
    monkeypatch.setattr(chunks, "grads_in_forward", lambda *a, **k: seen.append(k["rows_per_chunk"]) or loop(*a, **k))

    def run(chunk_rows):
        inputs = leaves(h, hs, w, b)
        if single:
            loss = mk.linear_soft_target_cross_entropy(inputs[0], *inputs[2:], target, chunk_rows=chunk_rows)
        else:
            loss = mk.linear_masksub_loss(*inputs, target, chunk_rows=chunk_rows, label_smoothing=0.1).loss
        loss.backward()
        return [loss] + [x.grad for x in inputs if x.grad is not None]

    default = run(None)
    for value in (1, 40, np.int64(5)):
        for got, want in zip(run(value), default):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert seen == [6, 1, 40, 5] and all(type(rows) is int for rows in seen)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [(0, ValueError, "got 0"), (2**31, ValueError, "below 2"), (2.0, TypeError, "got float"),
     (True, TypeError, "got bool"), ("4", TypeError, "got str")],
)  # fmt: skip
def test_chunk_rows_refuses_clearly(value, error, match):
    h, hs, w, b, target = make_inputs(rows=4, depth=5, classes=6)
    with pytest.raises(error, match=f"chunk_rows must be an int >= 1.*{match}"):
        mk.linear_masksub_loss(h, hs, w, b, target, chunk_rows=value)
    with pytest.raises(error, match=f"chunk_rows must be an int >= 1.*{match}"):
        mk.linear_soft_target_cross_entropy(h, w, b, target, chunk_rows=value)


def test_grads_in_forward_stores_only_what_is_needed(op_backend):  # noqa: F811
    h, hs, w, b, target = make_inputs(kind="index_ignore")
    options = (True, False, 0, False, 0.0, -100, 1.0, None)  # gather, private, chunk_rows, the loss options
    stored = _linear_loss_grads_op(h, hs, w, b, target, True, 0.5, 0.5, False, True, False, False, *options)
    assert [tuple(t.shape) for t in stored[3:7]] == [(0,), tuple(h.shape), (0,), (0,)]  # dHs only
    stored = _linear_loss_grads_op(h, hs, w, None, target, True, 0.5, 0.5, False, False, True, True, *options)
    assert [tuple(t.shape) for t in stored[3:7]] == [(0,), (0,), tuple(w.shape), (0,)]  # one dW for both terms
    assert stored[5].dtype == torch.float32 and tuple(stored[7].shape) == (9, h.shape[0])  # + the per-row stats
    stored = _linear_loss_grads_op(h, hs, w, b, target, True, 0.0, 0.5, True, True, False, False, *options)
    assert [tuple(t.shape) for t in stored[3:5]] == [(0,), tuple(h.shape)]  # main_weight 0: no main term in L
    # the bias alone (a frozen weight): db, no dW; the weight alone (a frozen bias): dW, no db, and in bf16 a plain
    # [C, D] (no ones column: the [C, D + pad] accumulator holds dW beside db only)
    stored = _linear_loss_grads_op(h, hs, w, b, target, True, 0.5, 0.5, False, False, False, True, *options)
    assert [tuple(t.shape) for t in stored[3:7]] == [(0,), (0,), (0,), tuple(b.shape)]
    stored = _linear_loss_grads_op(h, hs, w, b, target, True, 0.5, 0.5, False, False, True, False, *options)
    assert [tuple(t.shape) for t in stored[3:7]] == [(0,), (0,), tuple(w.shape), (0,)]
    h, hs, w, b = (t.to(torch.bfloat16) for t in (h, hs, w, b))
    for need_w, need_b, dw_stride in ((True, True, chunks.padded_depth(w.shape[1])), (True, False, w.shape[1])):
        stored = _linear_loss_grads_op(h, hs, w, b, target, True, 0.5, 0.5, False, False, need_w, need_b, *options)
        assert stored[5].shape == w.shape and stored[5].stride() == (dw_stride, 1), (need_w, need_b)
        assert tuple(stored[6].shape) == (tuple(b.shape) if need_b else (0,))


def test_the_backward_over_rows_never_splits_a_row():
    # a split row's programs would store into each other's logits: over_rows keeps one program per row (and VEC 1)
    # where the same launch with buffers of their own splits the classes (8 rows of 30 classes, blocks of 16)
    from masksub_kernels.ops import masksub_loss as ml

    buffer = torch.empty(16, chunks.aligned_classes(30), device="meta")
    z, s = buffer[:8, :30], buffer[8:, :30]
    narrow = buffer.view(torch.bfloat16)[:, :30]
    own = torch.empty(16, 30, dtype=torch.bfloat16, device="meta")
    y = torch.empty(8, dtype=torch.int64, device="meta")
    options = (False, False, True, True, True, True)  # bce, binarise, unit_t, bias, dz, ds
    for over_rows, (dz, ds) in ((True, (narrow[:8], narrow[8:])), (False, (own[:8], own[8:]))):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ml, "MAX_BLOCK_C", 16)
            (splits, _), _, _, constexprs = ml._backward_config(z, s, y, dz, ds, *options, over_rows, DEFAULT_SMS)
        assert (splits == 1) == over_rows and constexprs["SPLIT"] == (not over_rows)
        assert constexprs["OVER_ROWS"] == over_rows and constexprs["VEC"] == 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_fake_outputs_follow_the_backend(backend, dtype):
    # the fake registration must give each output the shape, dtype and strides the backend's implementation returns
    # (dW the view of the wider accumulator on Triton's fp16 / bf16 path; fp32 for fp64 inputs on Triton)
    h, hs, w, b, target = make_inputs(rows=9, depth=20, classes=30, dtype=dtype, kind="index_ignore", seed=5)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, True, False, 0, *OPTIONS)
    op = _linear_loss_grads_op.custom_op
    with mk.use_backend(backend):
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in args))
        torch.library.opcheck(op, args, test_utils=("test_faketensor",))
    for i, (r, f) in enumerate(zip(real, fake)):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride()), i


@pytest.mark.parametrize("kind", ["index", "index_ignore"])
@pytest.mark.triton
def test_split_chunks_share_their_tickets(monkeypatch, kind):
    # chunks whose loss forward splits each row's classes over 2 programs (blocks of 16 classes, C = 30): every chunk
    # reuses the op's one ticket buffer (left zero by each launch) and, where the chunks are slices, writes its stats
    # straight into their columns of [9, M]; all of it against the reference flavour, over 5 chunks
    from masksub_kernels.ops import masksub_loss as ml

    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    assert ml.class_splits(8, 30, ml._split_max_block(), DEFAULT_SMS)[0] == 2
    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=30, dtype=torch.float32, kind=kind, seed=4)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True)
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    torch.testing.assert_close(kernels[7], reference[7], rtol=1e-5, atol=1e-6)  # the per-row stats [9, M]
    for got, want in zip(kernels[:7], reference[:7]):  # losses, dH, dHs, dW, db
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference"])
@pytest.mark.parametrize("kind", ["index", "index_ignore", "dense"])
@pytest.mark.triton
def test_every_row_without_a_host_sync_matches_the_gathered_rows(monkeypatch, kernels, kind):
    # gather=False (torch.compile, CUDA graphs): chunks of every row, ignored ones included, the count and the mean's
    # divisor on the device; never reads the count on the host. Against gather=True (the counted rows only): the same
    # losses, stored gradients, unit scale; bit for bit where every row counts (the same chunks)
    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=30, dtype=torch.bfloat16, kind=kind, seed=6)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    gathered = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=kernels)

    def no_sync(*_):
        raise AssertionError("gather=False read the counted rows on the host")

    monkeypatch.setattr(chunks, "counted_rows", no_sync)
    every = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=kernels, gather=False)
    names = ("loss", "main", "sub", "dH", "dHs", "dW", "db")
    for i, (name, got, want) in enumerate(zip(names, every[:7], gathered[:7])):
        assert got.shape == want.shape and got.dtype == want.dtype and got.stride() == want.stride(), name
        if kind == "index_ignore":
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
        elif i < 3:  # the means: a device divisor against a host one (CUDA multiplies by its reciprocal: 1 ulp)
            torch.testing.assert_close(got, want, rtol=2.5e-7, atol=0, msg=name)
        else:
            assert torch.equal(got, want), name
    assert torch.equal(every[8], gathered[8])  # the unit scale, a power of two


@pytest.mark.triton
def test_mean_over_no_counted_rows_without_a_host_sync():
    # every row ignored: the losses are 0 (mean over max(count, 1)), every stored gradient 0, the scale the weights'
    # power of two over a unit of 1
    h, hs, w, b, target = make_inputs(rows=9, depth=20, classes=30, dtype=torch.float32, kind="index", seed=2)
    target = torch.full_like(target, -100)
    out = chunks.grads_in_forward(
        h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS, rows_per_chunk=4, kernels=True,
        gather=False,
    )  # fmt: skip
    assert all(float(x) == 0.0 for x in out[:3]) and float(out[8]) == 0.5
    assert all(not x.any() for x in out[3:7])


@pytest.mark.parametrize(("main_weight", "sub_weight", "term"), [
    (2.0**20, 0.0, "main"), (1e-5, 0.0, "main"), (0.0, 2.0**20, "sub"), (0.0, 1e-5, "sub")])  # fmt: skip
def test_one_term_with_an_extreme_weight_in_fp16(op_backend, main_weight, sub_weight, term):  # noqa: F811
    # One term weighted (the other 0): its gradients are stored unweighted, the weight applied in fp32 by the
    # backward. Stored times the weight in fp16 they overflowed at 2^20 (inf, NaN) and lost ~1e-2 at 1e-5, where the
    # composite's gradient of that term does not depend on its weight. .loss's own gradients (weight times those)
    # are checked where fp16 holds them: at 2^20 (at 1e-5 they are fp16 subnormals, in the composite too)
    h, hs, w, b, target = make_inputs(dtype=F16, kind="index_ignore")
    options = {"main_weight": main_weight, "sub_weight": sub_weight}
    for backward in (term, "loss") if max(main_weight, sub_weight) > 1 else (term,):
        ours = leaves(h, hs, w, b)
        getattr(mk.linear_masksub_loss(*ours, target, **options), backward).backward()
        expected, ref_leaves = composite(h, hs, w, b, target, **options)
        getattr(expected, backward).backward()
        for name, a, e in zip(("d main_hidden", "d sub_hidden", "d weight", "d bias"), ours, ref_leaves):
            if e.grad is not None and 0 < e.grad.abs().max() < torch.finfo(F16).max:
                assert_grad_close(a.grad, e.grad, GRAD_RTOL[F16], f"{name} ({backward})")


@pytest.mark.parametrize(("main_weight", "sub_weight"), [(1e5, 1e5), (3e4, 1e5), (3e4, 1.0), (1e-5, 1e-5)])
def test_both_terms_with_extreme_weights_in_fp16(op_backend, main_weight, sub_weight):  # noqa: F811
    # Both terms weighted: their stored gradients carry the weights over a common power of two that the backward
    # applies in fp32 (_common_scale). Stored with the weights themselves, 1e5 and 1e5 overflowed fp16 (inf in dH,
    # NaN in dW) where the true gradients are within its range; over the heavier weight's own power of two, a
    # lighter weight of 1 beside 3e4 lost its dHs to fp16's subnormals (3% off). Compared where the composite's
    # gradient is made of normal fp16 numbers (the ignored rows' zeros aside; at 1e-5 through a loss scale of 2^22)
    h, hs, w, b, target = make_inputs(dtype=F16, kind="index_ignore")
    options = {"main_weight": main_weight, "sub_weight": sub_weight}
    ours = leaves(h, hs, w, b)
    scaled = 2.0**22 if main_weight < 1 else 1.0  # a loss scale for tiny weights: normal fp16 numbers
    mk.linear_masksub_loss(*ours, target, **options).loss.backward(torch.tensor(scaled, device=DEVICE))
    expected, ref_leaves = composite(h, hs, w, b, target, **options)
    expected.loss.backward(torch.tensor(scaled, dtype=torch.float64, device=DEVICE))
    compared = []
    for name, a, e in zip(("d main_hidden", "d sub_hidden", "d weight", "d bias"), ours, ref_leaves):
        assert a.grad.isfinite().all(), name
        magnitudes = e.grad[e.grad != 0].abs()
        if magnitudes.min() > torch.finfo(F16).tiny and magnitudes.max() < torch.finfo(F16).max:
            assert_grad_close(a.grad, e.grad, GRAD_RTOL[F16], name)
            compared.append(name)
    assert len(compared) == 4  # every gradient compared


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_term_backward_with_a_subnormal_weight(op_backend, dtype):  # noqa: F811
    # .sub's backward with main_weight 0: the stored gradients times `scale` (the weight over the unit) divided by
    # the weight; 1 / 1e-39 overflowed fp32 (inf dHs, NaN elsewhere) where .sub's gradient does not depend on it
    h, hs, w, b, target = make_inputs(dtype=dtype, kind="index_ignore")
    options = {"main_weight": 0.0, "sub_weight": 1e-39}
    ours = leaves(h, hs, w, b)
    mk.linear_masksub_loss(*ours, target, **options).sub.backward()
    expected, ref_leaves = composite(h, hs, w, b, target, **options)
    expected.sub.backward()
    for name, a, e in zip(("d main_hidden", "d sub_hidden", "d weight", "d bias"), ours, ref_leaves):
        assert a.grad.isfinite().all(), name
        assert_grad_close(a.grad, e.grad, GRAD_RTOL[dtype], name)


def test_common_scale_is_an_exact_power_of_two_for_every_weight():
    # weights up to fp32's max (the public checks' bound) and down to its subnormals: a power of two that fp32 holds
    # (rounding to the nearest one gave 2^128 near the max: the scale's fp32 tensor raised), the stored weight in
    # [1, 2^9) outside [1, 2^8] and the weight itself inside
    for weight in (torch.finfo(torch.float32).max, 3e38, 1e5, 300.0, 256.0, 3.0, 1.0, 0.5, 1e-5, 1e-44):
        scale = chunks._common_scale(weight)
        assert math.frexp(scale)[0] == 0.5 and math.isfinite(float(torch.tensor(scale, dtype=torch.float32)))
        stored = weight / scale
        assert (
            (stored == weight)
            if 1 <= weight <= chunks.STORED_WEIGHT_MAX
            else 1 <= stored < 2 * chunks.STORED_WEIGHT_MAX
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_stored_rows_of_row_strided_gradients_read_their_columns_only(dtype):
    # the chunk's gradients are row-strided views (over the logits' padded rows); the CPU's bf16 mm (torch 2.14,
    # oneDNN) read past their last column: NaN there came out in dH. times_weight multiplies what the view holds,
    # over C = 257's head (256 classes) and tail (1), in fp32; _store_rows rounds it once into dx's rows
    rows, classes, padded, depth = 33, 257, 320, 3
    generator = torch.Generator().manual_seed(0)
    wide = torch.full((rows, padded), float("nan"), dtype=dtype)
    wide[:, :classes] = torch.randn(rows, classes, generator=generator).to(dtype)
    d, w = wide[:, :classes], torch.randn(classes, depth, generator=generator).to(dtype)
    d, w, wide = d.to(DEVICE), w.to(DEVICE), wide.to(DEVICE)
    product = matmuls.times_weight(d, w)
    exact = d.double() @ w.double()
    assert product.dtype == torch.float32 and product.shape == (rows, depth)
    torch.testing.assert_close(product.double(), exact, rtol=1e-5, atol=1e-5)  # fp32 accumulation, not rounded
    into = torch.full((rows, depth), float("nan"), device=DEVICE)  # the chunk loop's product buffer: written in place
    assert matmuls.times_weight(d, w, into) is into and torch.equal(into, product)
    for into_rows in (True, False):  # straight into dx's rows, or by row ids
        dx = torch.zeros(rows + 2, depth, dtype=dtype, device=DEVICE)
        chunk = slice(1, rows + 1) if into_rows else torch.arange(1, rows + 1, device=DEVICE)
        chunks._store_rows(chunk, [(dx, dx[chunk] if into_rows else None)], [product])
        assert dx[1:-1].isfinite().all() and not dx[0].any() and not dx[-1].any()
        assert torch.equal(dx[1:-1], product.to(dtype))  # one rounding


def test_stored_rows_of_both_branches_take_one_copy(monkeypatch):
    # dH's and dHs's rows of a chunk that is a slice: one multi-tensor copy (one launch on CUDA) rounding each once;
    # by row ids (gathered chunks): an indexed store each
    product = torch.randn(10, 3, device=DEVICE)
    copies, foreach_copy = [], torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: copies.append(len(dst)) or foreach_copy(dst, src))
    for chunk in (slice(2, 7), torch.arange(2, 7, device=DEVICE)):
        dh, dhs = (torch.zeros(8, 3, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
        views = (dh[chunk], dhs[chunk]) if isinstance(chunk, slice) else (None, None)
        chunks._store_rows(chunk, [(dh, views[0]), (dhs, views[1])], [product[:5], product[5:]])
        assert torch.equal(dh[2:7], product[:5].bfloat16()) and torch.equal(dhs[2:7], product[5:].bfloat16())
        assert not dh[:2].any() and not dh[7:].any() and not dhs[:2].any() and not dhs[7:].any()
    assert copies == [2]


@pytest.mark.parametrize("layout", ["weight_t", "hidden_t_one_branch"])
@pytest.mark.triton
def test_the_class_tail_takes_operands_of_any_last_stride(layout):
    # W as the transpose of a [D, C] tensor (a tied / transposed head), or one branch's hidden rows with a non-unit
    # last stride (no bias: the loop hands the rows to the loss launch as they are): C = 30 (a tail of 6) gives the
    # reference's result, as C = 32 and the torch backend do (the tail then goes to the matmuls; helper-128's case)
    h, hs, w, _, target = make_inputs(rows=37, depth=20, classes=30, dtype=torch.bfloat16, kind="index", seed=4)
    if layout == "weight_t":
        w = w.t().contiguous().t()
        args = (h, hs, w, None, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    else:
        h = h.t().contiguous().t()
        args = (h, None, w, None, target, True, 1.0, 0.0, True, False, True, True, OPTIONS)
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True)
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    for i in (3, 5):
        assert _relative(kernels[i], reference[i]) <= 4 * torch.finfo(torch.bfloat16).eps, i


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize(("main_weight", "sub_weight"), [(0.5, 0.5), (0.3, 0.0), (0.7, 0.2)])
def test_fp64_gradients_to_fp64_precision(gather, main_weight, sub_weight):
    # fp64 inputs on the reference: the row gradient 1 / count and the stored gradients' scale (a weight of 0.3) in
    # fp64 too (in fp32 they cost every gradient ~1e-8, where fp64's own error is ~1e-15), with and without the
    # host's count (torch.compile and CUDA graphs take gather=False)
    h, hs, w, b, target = (t.double() if t.is_floating_point() else t for t in make_inputs(kind="index_ignore", seed=3))
    ours = leaves(h, hs, w, b)
    with mk.use_backend("torch"):
        out = _linear_loss_grads_op.custom_op(*ours, target, True, main_weight, sub_weight, *(True,) * 4, gather,
                                              True, 7, *OPTIONS)  # fmt: skip
    out[0].backward()
    options = dict(main_weight=main_weight, sub_weight=sub_weight, label_smoothing=0.1, temperature=2.0)
    expected, ref_leaves = composite(h, hs, w, b, target, **options)
    expected.loss.backward()
    for name, a, e in zip(("d main_hidden", "d sub_hidden", "d weight", "d bias"), ours, ref_leaves):
        if a.grad is not None or e.grad.abs().max() > 0:
            assert_grad_close(a.grad, e.grad, 1e-13, name)


def test_class_parts_are_an_aligned_head_and_a_short_tail():
    assert matmuls.class_parts(30522) == (slice(0, 30520), slice(30520, 30522))  # BERT's head
    assert matmuls.class_parts(40) == (slice(0, 40),)  # aligned: one part
    assert matmuls.class_parts(5) == (slice(0, 5),)  # the tail alone
    for classes in range(1, 50):
        parts = matmuls.class_parts(classes)
        assert parts[0].start == 0 and parts[-1].stop == classes
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
        assert parts[0].stop % matmuls.MATMUL_ALIGN == 0 or parts[0].stop < matmuls.MATMUL_ALIGN
        assert len(parts) == 1 or parts[1].stop - parts[1].start < matmuls.MATMUL_ALIGN


@pytest.mark.parametrize("classes", [30, 40])  # 30: a head of 24 classes and a tail of 6; 40: aligned, one part
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.triton
def test_kernels_matmuls_take_aligned_class_extents_as_views_of_w(classes, dtype):
    # cuBLAS runs slow sm_80 kernels on an H200 when a matmul's contiguous extent is C = 30522 (2026-12-04): every
    # matmul of the kernels' path (logits, dH, dW) runs over class_parts(C), an aligned head and a tail of < 8
    # classes, never over C itself, and W is never copied whole (2026-12-04's padded copy: 45 MiB at BERT's head).
    # D = 12 (16 with the ones column), 7 rows per chunk (14 stacked; the last chunk 2, 4): no other size is 24 or 6
    from torch.utils._python_dispatch import TorchDispatchMode

    h, hs, w, b, target = make_inputs(rows=37, depth=12, classes=classes, dtype=dtype, kind="index", seed=3)
    recorded, copies = [], []

    class Recorded(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                recorded.append({size for t in [*tensors, out] for size in t.shape})
            storages = {t.untyped_storage().data_ptr() for t in tensors}
            made = isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in storages
            # a new [>= C, D] made from a tensor: a copy of W, padded or not (dW's accumulator: zeros, from no
            # tensor); bf16: the CPU line's fp32 conversion of W's parts for the logits (_to_copy) is no GPU's
            cpu_line = dtype != torch.float32 and func is torch.ops.aten._to_copy.default
            if made and tensors and out.dim() == 2 and out.shape[0] >= classes and out.shape[1] == 12 and not cpu_line:
                copies.append(func)
            return out

    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    with Recorded():
        kernels = chunks.grads_in_forward(*args, rows_per_chunk=7, kernels=True)
    chunk_count = -(-37 // 7)
    assert not any(classes in sizes for sizes in recorded) or classes == 40
    if classes == 30:  # per chunk the logits' head, dH's head, dW's head (the loss launch: the tails), dW's tail
        assert sum(24 in sizes for sizes in recorded) == 3 * chunk_count  # once per branch after the loop
        assert sum(6 in sizes for sizes in recorded) == 2
    else:
        assert sum(40 in sizes for sizes in recorded) == 3 * chunk_count == len(recorded)
    assert not copies
    reference = chunks.grads_in_forward(*args, rows_per_chunk=7, kernels=False)
    for got, want in zip(kernels[3:7], reference[3:7]):
        assert got.shape == want.shape and _relative(got, want) < 2e-2


@pytest.mark.triton
def test_a_chunk_plan_is_reused_only_for_targets_laid_out_alike():
    # the loop makes the loss launch's configuration once per chunk size and targets' layout: bf16 probabilities of
    # C = 12 classes in chunks of 3 rows start 24 bytes apart, on and off 16-byte boundaries (the kernels' ALIGNED
    # hint): a plan per alignment (MASKSUB_CHECK_LAUNCH_CACHE, on in the tests, derives each reuse again and fails
    # a stale one), the values the reference's
    h, hs, w, b, target = make_inputs(rows=12, depth=16, classes=12, dtype=torch.bfloat16, kind="dense", seed=5)
    target = target.to(torch.bfloat16)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    kernels = chunks.grads_in_forward(*args, rows_per_chunk=3, kernels=True)
    reference = chunks.grads_in_forward(*args, rows_per_chunk=3, kernels=False)
    for i in (3, 4, 5, 6):  # dH, dHs, dW, db
        assert _relative(kernels[i], reference[i]) <= 4 * torch.finfo(torch.bfloat16).eps, i


@pytest.mark.parametrize("kind", ["index", "index_ignore"])
@pytest.mark.triton
def test_the_chunk_buffers_are_let_go_before_dws_tail(monkeypatch, kind):
    # dW's tail (a matmul per branch over the counted rows, gathered where some are ignored) runs after the loop has
    # let go of its buffers (the [2R, C] logits, the stacked rows, the products; helper-130): nothing holds them then
    import gc

    from torch.multiprocessing.reductions import StorageWeakRef

    buffers, alive, of, add_tail_dw = {}, [], chunks._ChunkViews.of.__func__, matmuls.add_tail_dw

    def views_of(cls, n, has_sub, depth, classes, stacked, logits, narrow, g_main, g_sub, products):
        for name, t in (("logits", logits), ("stacked", stacked), ("products", products)):
            buffers.setdefault(name, StorageWeakRef(t.untyped_storage()))
        return of(cls, n, has_sub, depth, classes, stacked, logits, narrow, g_main, g_sub, products)

    def tail_dw(*args):
        gc.collect()  # (the interpreter's launches leave reference cycles)
        alive.extend(name for name, ref in buffers.items() if not ref.expired())
        return add_tail_dw(*args)

    monkeypatch.setattr(chunks._ChunkViews, "of", classmethod(views_of))
    monkeypatch.setattr(matmuls, "add_tail_dw", tail_dw)
    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=30, dtype=torch.bfloat16, kind=kind, seed=4)
    chunks.grads_in_forward(h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS, rows_per_chunk=8,
                            kernels=True)  # fmt: skip
    assert len(buffers) == 3 and alive == []
