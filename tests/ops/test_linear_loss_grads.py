"""ops/_linear_loss_grads.py: the backward's scaling of the stored gradients (_scaled), in fp32 and rounded once,
by torch ops (the torch backend, traced backwards) or one _scale_kernel launch per tensor (the triton backend's
eager backward)."""

import pytest
import torch
from conftest import DEVICE
from test_linear_loss_chunks import _relative
from test_linear_masksub_loss import leaves, make_inputs

import masksub_kernels as mk


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
