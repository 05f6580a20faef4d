"""The matmul helpers' GPU lines (cuBLAS with out_dtype into views: fp32_logits, times_weight, add_matmul of
ops/_linear_loss_matmuls.py), which only a GPU runs for real: here on CPU tensors, with the ops they call stood in
for by fp32 products that check and honour their arguments."""

import pytest
import torch
from test_linear_loss_chunks import OPTIONS, _relative
from test_linear_masksub_loss import make_inputs

from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops import _linear_loss_matmuls as matmuls
from masksub_kernels.ops import _loss_fwd_bwd as fwd_bwd

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


class _CudaLike(torch.Tensor):
    """A CPU tensor that says it is on CUDA: the GPU-only branches of the chunk loop's helpers run on it."""

    @property
    def is_cuda(self):
        return True


def test_cuda_dw_accumulation_takes_addmm_into_fp32_or_falls_back_once(monkeypatch):
    # add_matmul's CUDA branch, which only a GPU runs: torch.addmm into the fp32 accumulator (out_dtype, out=acc,
    # beta = 1); where a torch refuses an fp32 self (2.8 / 2.9: a dtype error, raised before any work) an fp32
    # product and an add, decided by the first call; any other error propagates and decides nothing. cuBLAS's ops
    # are stood in for by fp32 CPU products that honour the arguments given (out, beta, alpha, out_dtype)
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape, dtype):
        return torch.randn(*shape, generator=generator).to(dtype).as_subclass(_CudaLike)

    a, b = tensor(8, 16, dtype=torch.bfloat16), tensor(16, 4, dtype=torch.bfloat16)
    start = tensor(8, 4, dtype=torch.float32)
    product = a.float() @ b.float()
    calls = []

    def addmm(refuse=None):
        def call(self, mat1, mat2, out_dtype=None, *, beta=1, alpha=1, out=None):
            calls.append(("addmm", out_dtype, out is self))
            if refuse is not None:
                raise refuse
            return out.copy_(beta * self + alpha * (mat1.to(out_dtype) @ mat2.to(out_dtype)))

        return call

    def mm(mat1, mat2, out_dtype=None):
        calls.append(("mm", out_dtype, False))
        return mat1.to(out_dtype) @ mat2.to(out_dtype)

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(matmuls, "cublas_lines", lambda t: True)
    for refusal, expected in [
        (None, True),  # a torch that accepts: one addmm into acc, remembered
        (RuntimeError("self and mat2 must have the same dtype, but got Float and BFloat16"), False),  # 2.8 / 2.9
    ]:
        monkeypatch.setattr(matmuls, "_addmm_into_fp32", None)
        monkeypatch.setattr(torch, "addmm", addmm(refusal))
        calls.clear()
        acc = start.clone()
        matmuls.add_matmul(acc, a, b)
        matmuls.add_matmul(acc, a, b)
        assert matmuls._addmm_into_fp32 is expected
        torch.testing.assert_close(acc, start + 2 * product)  # accumulated, in fp32, into the caller's tensor
        if expected:
            assert calls == [("addmm", torch.float32, True)] * 2
        else:  # tried once, then the fp32 product (and an add) every call
            assert calls == [("addmm", torch.float32, True), ("mm", torch.float32, False), ("mm", torch.float32, False)]
    monkeypatch.setattr(matmuls, "_addmm_into_fp32", None)
    monkeypatch.setattr(torch, "addmm", addmm(RuntimeError("CUDA out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        matmuls.add_matmul(start.clone(), a, b)
    assert matmuls._addmm_into_fp32 is None


def test_a_stand_in_call_decides_nothing_about_cuda_addmm(monkeypatch):
    # helper-129's H5: only a CUDA accumulator's first call tells whether this torch's addmm takes an fp32 self; a
    # call on other tensors taking the GPU line (meta, or the tests' stand-ins) leaves that undecided, accepted or
    # refused
    monkeypatch.setattr(matmuls, "cublas_lines", lambda t: True)
    a, b, acc = torch.ones(4, 8, dtype=torch.bfloat16), torch.ones(8, 2, dtype=torch.bfloat16), torch.zeros(4, 2)
    for refusal in (None, RuntimeError("self and mat2 must have the same dtype, but got Float and BFloat16")):
        monkeypatch.setattr(matmuls, "_addmm_into_fp32", None)

        def addmm(self, mat1, mat2, out_dtype=None, *, out=None, refusal=refusal):
            if refusal is not None:
                raise refusal
            return out.add_(mat1.to(out_dtype) @ mat2.to(out_dtype))

        monkeypatch.setattr(torch, "addmm", addmm)
        monkeypatch.setattr(torch, "mm", lambda mat1, mat2, out_dtype=None: mat1.to(out_dtype) @ mat2.to(out_dtype))
        matmuls.add_matmul(acc, a, b)
        assert matmuls._addmm_into_fp32 is None, refusal
    assert torch.equal(acc, torch.full((4, 2), 16.0))  # both calls added their product
    meta = [
        torch.empty(4, 8, dtype=torch.bfloat16, device="meta"),
        torch.empty(8, 2, dtype=torch.bfloat16, device="meta"),
    ]
    monkeypatch.undo()
    # undecided again (the process's own value, which undo() restored, is set by any earlier CUDA bf16 test: helper-147)
    monkeypatch.setattr(matmuls, "_addmm_into_fp32", None)
    matmuls.add_matmul(torch.empty(4, 2, device="meta"), *meta)  # the GPU line's registration, on meta tensors
    assert matmuls._addmm_into_fp32 is None


@pytest.mark.parametrize("one_launch", [True, False])  # False: each chunk as one whose forward splits the classes
@pytest.mark.parametrize("classes", [30, 40])  # a head and a tail; aligned
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.triton
def test_the_gpu_lines_of_the_matmul_helpers_give_the_references_values(monkeypatch, classes, dtype, one_launch):
    # The cuBLAS lines of fp32_logits, times_weight and add_matmul (mm / addmm with out_dtype into views of the
    # chunk buffers, of dW's rows and of the fp32 product) run on a GPU only: here they run on CPU tensors, with
    # torch.mm / torch.addmm's out_dtype overloads stood in for by fp32 products that check what cuBLAS needs of an
    # out= view (unit last stride, a leading dimension of at least its columns, its own columns only written) and
    # honour it. The kernels' path's gradients then equal the reference's
    real_mm, real_addmm, calls = torch.mm, torch.addmm, []

    def checked(out):
        assert out.stride(-1) == 1 and out.stride(0) >= out.shape[1], out.stride()
        return out

    def mm(a, b, out_dtype=None, *, out=None):
        if out_dtype is None:
            return real_mm(a, b) if out is None else real_mm(a, b, out=out)
        calls.append("mm")
        product = a.to(out_dtype) @ b.to(out_dtype)
        return product if out is None else checked(out).copy_(product)

    def addmm(acc, a, b, out_dtype=None, *, beta=1, alpha=1, out=None):
        if out_dtype is None:
            return real_addmm(acc, a, b, beta=beta, alpha=alpha, out=out)
        calls.append("addmm")
        return checked(out).copy_(beta * acc + alpha * (a.to(out_dtype) @ b.to(out_dtype)))

    h, hs, w, b, target = make_inputs(rows=37, depth=20, classes=classes, dtype=dtype, kind="index_ignore", seed=6)
    args = (h, hs, w, b, target, True, 0.5, 0.5, True, True, True, True, OPTIONS)
    reference = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=False)
    monkeypatch.setattr(matmuls, "cublas_lines", lambda t: True)
    monkeypatch.setattr(fwd_bwd, "ONE_LAUNCH", one_launch)  # (off: times_weight into the chunks' product buffer)
    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch, "addmm", addmm)
    for gather in (True, False):
        calls.clear()
        kernels = chunks.grads_in_forward(*args, rows_per_chunk=8, kernels=True, gather=gather)
        assert "mm" in calls and ("addmm" in calls or dtype == torch.float32)  # the GPU lines ran
        for i, (got, want) in enumerate(zip(kernels[3:7], reference[3:7])):
            assert got.shape == want.shape and got.isfinite().all()
            if want.numel():
                assert _relative(got, want) <= (4 * torch.finfo(dtype).eps if dtype != torch.float32 else 1e-5), i


def test_a_dtype_error_after_addmm_was_accepted_propagates(monkeypatch):
    # M2 (_linear_loss_matmuls.py:52): once a CUDA addmm into fp32 has worked (_addmm_into_fp32 True), a later dtype
    # error is a real error (raised), not the first call's refusal (no silent fallback to mm)
    a = torch.randn(8, 16).bfloat16().as_subclass(_CudaLike)
    b = torch.randn(16, 4).bfloat16().as_subclass(_CudaLike)
    acc = torch.zeros(8, 4).as_subclass(_CudaLike)

    def addmm(*args, **kwargs):
        raise RuntimeError("expected mat1 and mat2 to have the same dtype")

    monkeypatch.setattr(torch, "addmm", addmm)
    monkeypatch.setattr(torch, "mm", lambda m1, m2, out_dtype=None: m1.to(out_dtype) @ m2.to(out_dtype))
    monkeypatch.setattr(matmuls, "cublas_lines", lambda t: True)
    monkeypatch.setattr(matmuls, "_addmm_into_fp32", True)
    with pytest.raises(RuntimeError, match="dtype"):
        matmuls.add_matmul(acc, a, b)
    assert matmuls._addmm_into_fp32 is True


def test_meta_tensors_take_the_gpu_lines():
    # M10 (_linear_loss_matmuls.py:29): meta tensors take the cuBLAS lines (the tests check those registrations on
    # them); CPU tensors do not
    assert matmuls.cublas_lines(torch.empty(1, device="meta"))
    assert not matmuls.cublas_lines(torch.empty(1))


def test_mm_fp32_without_out_dtype_multiplies_fp32_copies(monkeypatch):
    # helper-342's mutation audit of _linear_loss_matmuls.py:64: on a torch without mm's out_dtype (before 2.8: a
    # TypeError) mm_fp32 multiplies fp32 copies of the bf16 operands, never their bf16 product made fp32 after
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(16, 64, generator=generator).bfloat16()
    b = torch.randn(64, 8, generator=generator).bfloat16()
    real_mm = torch.mm

    def mm(mat1, mat2, **kwargs):
        if "out_dtype" in kwargs:
            raise TypeError("mm() got an unexpected keyword argument 'out_dtype'")
        return real_mm(mat1, mat2, **kwargs)

    monkeypatch.setattr(torch, "mm", mm)
    product = matmuls.mm_fp32(a, b)
    assert product.dtype == torch.float32
    torch.testing.assert_close(product, a.float() @ b.float(), rtol=1e-6, atol=1e-6)


def test_times_weight_without_a_buffer_keeps_the_gpu_lines_product_in_fp32(monkeypatch):
    # helper-342's mutation audit of _linear_loss_matmuls.py:92: times_weight's GPU line with no product buffer (a
    # chunk whose forward splits the classes) takes mm_fp32 (cuBLAS, an fp32 output), not a bf16 product made fp32;
    # C = 20: the head of 16 classes by mm, the tail of 4 added by add_matmul (torch's ops stood in for, as above)
    generator = torch.Generator().manual_seed(0)
    d = torch.randn(8, 20, generator=generator).bfloat16()
    w = torch.randn(20, 6, generator=generator).bfloat16()
    real_mm = torch.mm

    def mm(mat1, mat2, out_dtype=None, **kwargs):
        return real_mm(mat1, mat2, **kwargs) if out_dtype is None else mat1.to(out_dtype) @ mat2.to(out_dtype)

    def addmm(acc, mat1, mat2, out_dtype=None, *, out=None):
        return out.copy_(acc + mat1.to(out_dtype) @ mat2.to(out_dtype))

    monkeypatch.setattr(matmuls, "cublas_lines", lambda t: True)
    monkeypatch.setattr(matmuls, "_addmm_into_fp32", None)
    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch, "addmm", addmm)
    product = matmuls.times_weight(d, w)
    assert product.dtype == torch.float32
    torch.testing.assert_close(product, d.float() @ w.float(), rtol=1e-6, atol=1e-6)
