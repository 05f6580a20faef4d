"""ops/_linear_loss_grads.py: the backward's scaling of the stored gradients (_scaled), in fp32 and rounded once,
by torch ops (the torch backend, traced backwards) or one _scale_kernel launch per tensor (the triton backend's
eager backward)."""

import pytest
import torch
from conftest import DEVICE
from test_linear_loss_chunks import _relative
from test_linear_masksub_loss import (  # noqa: F401 (the fixture _small_tiles, autouse)
    GRAD_RTOL,
    _small_tiles,
    assert_grad_close,
    composite,
    leaves,
    make_inputs,
)

import masksub_kernels as mk
from masksub_kernels.ops._linear_loss_grads import _linear_loss_grads_op


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("block", [1 << 23, 2])  # one block; one row per block (the temporary's bound)
def test_stored_gradients_are_scaled_in_fp32(monkeypatch, dtype, in_place, block):
    # The backward's factor g is a 0-d fp32 tensor on the gradients' device: on a GPU, multiplying an fp16 / bf16
    # tensor by it casts g to fp16 / bf16 first (only CPU scalars keep fp32), rounding a weight such as 0.3 (a 2^-9
    # bias in bf16) or overflowing g = w / unit > 65504 in fp16 (inf; NaN in zero rows). The multiply must run on
    # fp32 operands (recorded here: the CPU would hide the rounding) and round once
    from torch.utils._python_dispatch import TorchDispatchMode

    from masksub_kernels.ops import _linear_loss_grads

    monkeypatch.setattr(_linear_loss_grads, "SCALE_BLOCK_ELEMENTS", block)

    dtypes, sizes = [], []

    class Multiplies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mul, torch.ops.aten.mul_):
                dtypes.append(args[0].dtype)
                sizes.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    stored = torch.tensor([[0.0, 3.0], [1.5, -2.0]], dtype=dtype, device=DEVICE)
    g = torch.tensor(0.3 * 2.0**20 / 8, device=DEVICE)  # 39321.6: beyond fp16's precision, within its range
    expected = (stored.double() * g.double()).to(dtype)
    with Multiplies():
        scaled = _linear_loss_grads._scaled(stored.clone(), g, in_place)
    assert dtypes and set(dtypes) == {torch.float32} and max(sizes) <= block
    assert scaled.dtype == dtype and torch.equal(scaled, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.triton
def test_stored_gradients_are_scaled_by_one_launch_each(dtype):
    # the triton backend's eager backward: _scale_kernel, one launch per tensor, fp32 arithmetic rounded once: dH in
    # place, dW from its fp32 accumulator's strided [C, D] view into the weight's dtype, db from its [C]
    from conftest import GPU_MATH

    from masksub_kernels.ops import _linear_loss_grads as grads

    # exact, but within one bf16 step where the plain interpreter truncates fp32 to bf16 (a GPU rounds to nearest)
    truncates = dtype == torch.bfloat16 and mk.triton_interpreted() and not GPU_MATH

    def check(got, fp32):
        assert got.dtype == dtype
        if truncates:
            torch.testing.assert_close(got.float(), fp32.to(dtype).float(), rtol=2**-7, atol=0)
        else:
            assert torch.equal(got, fp32.to(dtype))

    g = torch.tensor(0.3 * 2.0**20 / 8, device=DEVICE)  # beyond fp16's precision, within its range
    stored = (torch.randn(37, 20) * 3).to(DEVICE, dtype)
    for in_place in (True, False):
        before = stored.clone()
        scaled = grads._scaled(stored, g, in_place, dtype, kernel=True)
        assert (scaled.data_ptr() == stored.data_ptr()) == in_place
        check(scaled, before.float() * g)
        stored = before
    accumulator = torch.randn(30, 24, device=DEVICE)  # [dW | db | 0...]: dW its [30, 20] view, rows 24 apart
    expected = accumulator[:, :20] * g
    dw = grads._scaled(accumulator[:, :20], g, True, dtype, kernel=True)  # fp32: in place, the view itself
    assert dw.is_contiguous() == (dtype != torch.float32)
    check(dw, expected)
    db = grads._scaled(accumulator[:, 20].clone(), g, True, dtype, kernel=True)
    check(db, accumulator[:, 20] * g)
    # a db longer than a GPU grid's 65535 blocks on axis 1 hold at 256 classes each (16.7M classes): one column of
    # rows instead (helper-244; the limit lowered here to 1 block, so 30 classes are "long")
    launches = []
    real = grads._scale_kernel
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grads, "GRID_Y_LIMIT", 0)
        patch.setattr(grads, "_scale_kernel", type("K", (), {"__getitem__": lambda _, grid: launches.append(grid)
                                                              or real[grid]})())  # fmt: skip
        db = grads._scaled(accumulator[:, 20].clone(), g, True, dtype, kernel=True)
    assert launches == [(2, 1)]  # 30 rows of one class: 2 blocks of 16 rows on axis 0, 1 on axis 1
    check(db, accumulator[:, 20] * g)


@pytest.mark.triton
def test_the_eager_backward_scales_with_the_kernel(monkeypatch):
    # .loss.backward() of the gradients-in-forward path on the triton backend scales dH, dHs, dW and db with one
    # launch each (the torch backend, and a backward under tracing, keep torch ops), to the same gradients
    from masksub_kernels.ops import _linear_loss_grads as grads

    launches, kernel = [], grads._scale_kernel

    class Recorded:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(grads, "_scale_kernel", Recorded())
    h, hs, w, b, target = make_inputs(dtype=torch.bfloat16, kind="index_ignore", seed=9)
    results = {}
    for backend in ("torch", "triton"):
        launches.clear()
        leaves_ = leaves(h, hs, w, b)
        with mk.use_backend(backend):
            mk.linear_masksub_loss(*leaves_, target).loss.backward()
        results[backend] = [t.grad for t in leaves_]
        assert len(launches) == (4 if backend == "triton" else 0)
    for got, want in zip(results["triton"], results["torch"]):
        assert _relative(got, want) <= 4 * torch.finfo(torch.bfloat16).eps


# helper-168's mutation audit: the fake with both weights 0, .loss's second backward, every row ignored
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_grads_op_fake_with_both_weights_zero(backend):
    # G2 (_linear_loss_grads.py:94): both terms weigh 0: no dW is stored ([0]) on the backends; the fake must agree
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=30)
    args = (h, hs, w, b, target, True, 0.0, 0.0, True, True, True, True, True, False, 0, False, 0.0, -100, 1.0, None)
    with mk.use_backend(backend):
        torch.library.opcheck(_linear_loss_grads_op.custom_op, args, test_utils=("test_faketensor",))


def test_second_backward_of_loss_through_a_retained_graph():
    # G8 (_linear_loss_grads.py:210): the second backward of .loss (stored gradients used up by the first, in place)
    # recomputes each term with coefficient g * weight; both backwards must give the composite's gradients
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=24)
    options = {"main_weight": 0.3, "sub_weight": 1.7, "temperature": 2.0}
    ours = leaves(h, hs, w, b)
    out = mk.linear_masksub_loss(*ours, target, **options)
    out.loss.backward(retain_graph=True)
    first = [x.grad.clone() for x in ours]
    for x in ours:
        x.grad = None
    out.loss.backward()
    expected, ref = composite(h, hs, w, b, target, **options)
    expected.loss.backward()
    for a, f, e in zip(ours, first, ref):
        assert_grad_close(f, e.grad, GRAD_RTOL[torch.float32], "first")
        assert_grad_close(a.grad, e.grad, GRAD_RTOL[torch.float32], "second")


def test_term_backward_with_every_row_ignored_gives_zeros():
    # G9 (_linear_loss_grads.py:248): the per-term recompute of a mean over no counted rows divides by max(count, 1)
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=24)
    target = torch.full_like(target, -100)
    ours = leaves(h, hs, w, b)
    out = mk.linear_masksub_loss(*ours, target, main_weight=0.5, sub_weight=0.5)
    out.main.backward()  # one term while both weigh > 0: recomputed on the saved stats
    for x in ours:
        assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x.grad))


def test_term_backward_over_every_row_with_every_row_ignored(monkeypatch):
    # G9 (_linear_loss_grads.py:248), the backward run where no host sync is allowed (a CUDA graph capture of the
    # backward after an eager forward, stood in for by sync_free): every row computed, the mean over max(count, 1)
    from masksub_kernels.ops import _linear_loss_chunks as chunks

    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=24)
    target = torch.full_like(target, -100)
    ours = leaves(h, hs, w, b)
    out = mk.linear_masksub_loss(*ours, target, main_weight=0.5, sub_weight=0.5)
    monkeypatch.setattr(chunks, "sync_free", lambda hidden: True)
    out.main.backward()
    for x in ours:
        assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x.grad))


@pytest.mark.parametrize("backend", ["torch", *(b for b in mk.available_backends() if b == "triton")])
def test_meta_tensors_get_the_stored_gradients_shapes_on_every_backend(backend):
    # the forward on meta tensors is answered by its fake on any backend; the backward's scaling resolved the triton
    # backend for the meta device and refused it ("got tensors on meta": helper-211): torch's ops give the shapes
    meta = torch.device("meta")
    h, hs, w = (torch.empty(*shape, device=meta, requires_grad=True) for shape in ((8, 4), (8, 4), (10, 4)))
    b = torch.empty(10, device=meta, requires_grad=True)
    with mk.use_backend(backend):
        mk.linear_masksub_loss(h, hs, w, b, torch.zeros(8, dtype=torch.long, device=meta)).loss.backward()
    assert [x.grad.shape for x in (h, hs, w, b)] == [(8, 4), (8, 4), (10, 4), (10,)]
    assert all(x.grad.device == meta for x in (h, hs, w, b))


# helper-250's mutation audit (the mutant named in the comment)
# kills _linear_loss_grads.py _scaled's `cdiv(stored.numel(), SCALE_BLOCK[1]) > GRID_Y_LIMIT` -> `>=` (M34): a db
# of exactly GRID_Y_LIMIT column blocks fits axis 1 and keeps its one row (the existing test lowers the limit to 0)
@pytest.mark.triton
def test_a_db_at_the_grid_limit_stays_one_row():
    from masksub_kernels.ops import _linear_loss_grads as grads

    launches, real = [], grads._scale_kernel
    g = torch.tensor(0.5, device=DEVICE)
    db = torch.randn(30, device=DEVICE)  # 30 classes: one column block of 256
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grads, "GRID_Y_LIMIT", 1)
        patch.setattr(grads, "_scale_kernel", type("K", (), {"__getitem__": lambda _, grid: launches.append(grid)
                                                              or real[grid]})())  # fmt: skip
        scaled = grads._scaled(db.clone(), g, True, torch.float32, kernel=True)
    assert launches == [(1, 1)]  # one row of 30 classes: 1 block on axis 0, 1 on axis 1
    assert torch.equal(scaled, db * g)
