"""target_threshold's comparison q > threshold in each logits dtype: fp64 logits compare in fp64 on every backend
(the public functions binarise the target before the kernels, which compute fp64 in fp32: helper-208), other
logits in fp32 as the kernels and the reference do (helper-211). check_masksub compares with test_masksub_loss.py's
float64 oracle."""

import pytest
import torch
from conftest import DEVICE
from test_masksub_loss import BF16, F32, check_masksub

import masksub_kernels as mk


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_fp64_target_threshold_compares_in_fp64(backend, reduction):
    # The kernels compute fp64 logits in fp32, but q > threshold is the reference's fp64 comparison: the fp32 0.3
    # (0.30000001) is above 0.3 in fp64 and not in fp32, and so is the fp64 0.3 + 1e-10; compared in fp32, a whole
    # class's target flipped (a BCE loss off by 1.0: helper-208). The op is handed the binarised target.
    main = torch.full((2, 4), 2.0, dtype=torch.float64, device=DEVICE)
    sub = main - torch.linspace(0, 1, 8, dtype=torch.float64, device=DEVICE).view(2, 4)
    target = torch.tensor([[0.3, 1.0, 0.0, 0.3], [0.3 + 1e-10, 0.0, 1.0, 0.2]], dtype=torch.float64, device=DEVICE)
    for tgt in (target.float(), target):
        check_masksub(main, sub, tgt, mode="bce", target_threshold=0.3, reduction=reduction)
        assert mk.last_backend("masksub_loss") == backend


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_target_threshold_with_non_fp64_logits_compares_in_fp32_as_before(backend, dtype):
    # Only fp64 logits have their target binarised in fp64 by the public functions (helper-211); other logits
    # keep the op's own fp32 comparison, as the reference (_target_weights: q.to(fp32) > threshold) does: an fp64
    # 0.3 + 1e-10 rounds to the fp32 0.3, which is not above the fp32 0.3. Equal to the loss of the target binarised
    # in fp32 beforehand, values and gradients, on every backend.
    main = torch.full((2, 4), 2.0, device=DEVICE).to(dtype)
    sub = main - torch.linspace(0, 1, 8, device=DEVICE).view(2, 4).to(dtype)
    target = torch.tensor([[0.3 + 1e-10, 1.0, 0.0, 0.3], [0.3 + 1e-10, 0.0, 1.0, 0.2]], dtype=torch.float64,
                          device=DEVICE)  # fmt: skip
    binarised = (target.float() > 0.3).float()
    for reduction in ("none", "mean"):
        leaves = [x.detach().clone().requires_grad_(True) for x in (main, sub)]
        out = mk.masksub_loss(*leaves, target, mode="bce", target_threshold=0.3, reduction=reduction)
        out.loss.sum().backward()
        ref_leaves = [x.detach().clone().requires_grad_(True) for x in (main, sub)]
        expected = mk.masksub_loss(*ref_leaves, binarised, mode="bce", reduction=reduction)
        expected.loss.sum().backward()
        for a, e in zip(out, expected):
            torch.testing.assert_close(a, e, rtol=0, atol=0)
        for a, e in zip(leaves, ref_leaves):
            torch.testing.assert_close(a.grad, e.grad, rtol=0, atol=0)
        single = mk.soft_target_bce(main, target, target_threshold=0.3, reduction=reduction)
        torch.testing.assert_close(single, mk.soft_target_bce(main, binarised, reduction=reduction), rtol=0, atol=0)
