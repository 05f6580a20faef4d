"""The fused-linear loss with a frozen weight or a frozen bias: no gradient work for the frozen one (no dW
accumulator or matmul for a bias-only gradient, no db or ones column for a weight-only one) on every path, and the
trained one's gradient against the float64 composite (helper-320's need_weight / need_bias split)."""

import contextlib

import pytest
import torch
from conftest import grad_tolerance
from test_linear_masksub_loss import (  # noqa: F401 (the fixtures op_backend and _small_tiles, autouse)
    BF16,
    F32,
    GRAD_RTOL,
    _small_tiles,
    assert_grad_close,
    leaves,
    make_inputs,
    op_backend,
)

import masksub_kernels as mk
from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops import linear_masksub_loss as lm


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("path", ["grads in forward", "recompute", "recompute sync-free"])
@pytest.mark.parametrize("frozen", ["weight", "bias"])
def test_a_frozen_weight_or_bias_gets_no_gradient_work(op_backend, monkeypatch, dtype, path, frozen):  # noqa: F811
    # a trained bias beside a frozen weight (BitFit; a weight tied to a frozen embedding) allocates no dW
    # accumulator ([C, D], [splits, C, D] or [C, D + pad]) and runs no dW matmul; a frozen bias beside a trained
    # weight no db ([C], [splits, C]) and no ones column ([C, D + pad]). Every path: the grads-in-forward op
    # (mean), the recompute op's backward (reduction 'none': the chunk loop, or the reference), and sync-free
    # (mk.capture_safe: class ids take the recompute op, whose Triton backward runs its own kernels: _dw_kernel
    # with STORE_DW / STORE_DB). Before the split, either gradient computed and allocated both.
    h, hs, w, b, target = make_inputs(rows=20, depth=24, classes=37, dtype=dtype, kind="index_ignore", seed=9)
    classes, pad = w.shape[0], chunks.padded_depth(w.shape[1])
    ours, ref = leaves(h, hs, w, b), leaves(*(t.double() for t in (h, hs, w, b)))
    for group in (ours, ref):
        group[2 if frozen == "weight" else 3].requires_grad_(False)
    shapes, zeros, launches, dw_kernel = [], torch.zeros, [], lm.kernels._dw_kernel

    def recorded_zeros(*size, **kwargs):
        out = zeros(*size, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    class RecordedKernel:  # _dw_kernel's launches: their STORE_DW / STORE_DB
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((kwargs["STORE_DW"], kwargs["STORE_DB"]))
                return dw_kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(lm.kernels, "_dw_kernel", RecordedKernel())
    reduction = "none" if path == "recompute" else "mean"
    with contextlib.ExitStack() as stack:
        if path == "recompute sync-free":
            stack.enter_context(mk.capture_safe())
        monkeypatch.setattr(torch, "zeros", recorded_zeros)
        out = mk.linear_masksub_loss(*ours, target, reduction=reduction)
        out.loss.sum().backward()
        monkeypatch.setattr(torch, "zeros", zeros)
    with mk.use_backend("torch"):
        expected = mk.masksub_loss(ref[0] @ ref[2].T + ref[3], ref[1] @ ref[2].T + ref[3], target, reduction=reduction)
    expected.loss.sum().backward()
    trained = 3 if frozen == "weight" else 2
    assert ours[5 - trained].grad is None
    assert_grad_close(ours[trained].grad, ref[trained].grad, grad_tolerance(GRAD_RTOL, dtype, op_backend), frozen)
    if frozen == "weight":
        assert not [s for s in shapes if len(s) >= 2 and s[-2] == classes], shapes  # no dW accumulator
        assert any(s[-1] == classes for s in shapes), shapes  # db's: [C] or [splits, C]
    else:
        assert not [s for s in shapes if s[-1] == classes or s[-1] == pad], shapes  # no db, no ones column
        assert any(len(s) >= 2 and s[-2] == classes for s in shapes), shapes  # dW's
    if launches:  # the Triton backward's own kernels (class ids, sync-free)
        assert launches == [(frozen != "weight", frozen != "bias")], launches
    assert bool(launches) == (op_backend == "triton" and path == "recompute sync-free")
