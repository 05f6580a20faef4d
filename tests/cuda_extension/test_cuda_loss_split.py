"""The CUDA loss kernels' class-split path (csrc/masksub_loss.cu: a row's classes over programs when rows are few, the
last program merging their states), on a GPU or the CUDA emulator: cases the split tests of test_cuda_loss.py do not
reach (helper-186's mutation audit). The split is forced by shape: <= 3 rows of 9002 fp32 classes run 9 splits of the
forward, 1 row of 4096 runs 4."""

import pytest
import torch
from extension_under_test import DEV, EXT, kernels
from test_cuda_loss import _offset_columns

from masksub_kernels.ops import masksub_loss as ml


@kernels
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_masksub_loss_bce_class_id_in_the_first_vector_of_a_split(eps):
    # kills S9 (masksub_loss.cu:481 `peeled < end` -> `peeled <= end`: the split before also folds the id's vector)
    # and S10 (`peeled >= begin` -> `peeled > begin`: no split folds it). 2 rows of 9002 fp32 classes, one element
    # past a 16-byte boundary (a 3-class head): the forward's 9 splits of 256 vectors (blocks of 128 threads). BCE
    # with class ids: the id's vector is peeled and folded by thread 0 of the split holding it; here it is the
    # split's first vector: row 0's id in vector 0 (split 0), row 1's in vector 1024 (split 4's first). The
    # suite's ids sit in the head, mid-split and in the last whole vector.
    rows, classes = 2, 9002
    generator = torch.Generator().manual_seed(0)
    main = _offset_columns((torch.randn(rows, classes, generator=generator) * 3).to(DEV), 1)
    sub = _offset_columns((torch.randn(rows, classes, generator=generator) * 3).to(DEV), 1)
    target = torch.tensor([3 + 1, 3 + 1024 * 4 + 2], device=DEV)
    assert EXT is not None
    for temperature in (1.0, 2.0):
        options = (True, eps, -100, temperature, None)
        out = EXT.masksub_loss_forward(main, sub, target, *options)
        expected = ml.loss_forward_reference(main, sub, target, *options)
        torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))


@kernels
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("heavy_first", [True, False])
def test_masksub_loss_split_merge_skips_a_teacher_rescale_of_zero(temperature, heavy_first):
    # kills S14 (masksub_loss.cu:198 `beta_b != 0.0f ? beta_b * (b.d_t + l_tb (c_s,b - c_s)) : 0.0f` -> unguarded)
    # and, with the halves swapped, the same guard on state a (:197): 1 row of 4096 fp32 classes runs as 4 splits
    # of 1024 (blocks of 128 threads); the row's last block merges split t's state in lane t, lane 0 taking lane
    # 2's at the xor-2 step. One half's splits: teacher ~1e4, student 2e38; the other's: teacher -1e4, student
    # -2e38. The second half's teacher mass is 0 about the row's max (beta = 0) and its moved sum l_t (c_s,b - c_s)
    # is -inf: 0 * -inf would make the finite sub loss NaN (as the Triton split test
    # test_a_teacher_rescale_of_zero_skips_an_infinite_old_sum). Outside the documented range of logits (|x| <
    # 2^100, docs/semantics.md), where the kernels still agree with the reference here.
    half = 2048
    heavy, light = (torch.full((1, half), v) for v in (1e4, -1e4))
    teacher = torch.cat([heavy, light] if heavy_first else [light, heavy], 1) + torch.linspace(0, 1, 2 * half)
    student = torch.cat([torch.full((1, half), 2e38), torch.full((1, half), -2e38)], 1)
    z, s = teacher.to(DEV), (student if heavy_first else student.flip(1)).to(DEV)
    label = torch.tensor([20 if heavy_first else 2 * half - 20], device=DEV)
    options = (False, 0.0, -100, temperature, None)
    out = EXT.masksub_loss_forward(z, s, label, *options)
    expected = ml.loss_forward_reference(z, s, label, *options)
    assert torch.isfinite(expected[: ml.SUB + 1]).all()
    torch.testing.assert_close(out[: ml.SUB + 1], expected[: ml.SUB + 1], rtol=1e-6, atol=1e-6)


@kernels
def test_masksub_loss_smoothed_class_ids_over_lanes_of_unequal_counts_and_maxima():
    # helper-256: the shifted smoothing sum (d_z, s_z) merged over lanes that folded unequal class counts and hold
    # very different maxima (a +60 logit in lane 0's extra vector), at an offset of 1e4, on one-block rows and
    # on a split row (1 row of ~37k fp32 classes): kills dropping s_z from shuffle_xor or merge (the offsets test's
    # lanes fold equal counts but three, within its tolerance, and never split on CUDA)
    for rows, classes in ((4, 4 * (128 * 8 + 64)), (1, 4 * (128 * 8 * 9 + 64))):
        generator = torch.Generator().manual_seed(1)
        main = (torch.randn(rows, classes, generator=generator) + 1e4).to(DEV)
        main[:, 4 * 128 * 8] = 1e4 + 60.0  # the first extra vector (lane 0's last)
        target = torch.arange(rows, device=DEV) * 7
        options = (False, 0.1, -100, 1.0, None)
        out = EXT.masksub_loss_forward(main, None, target, *options)
        expected = ml.loss_forward_reference(main.double(), None, target, *options)
        error = (out[ml.MAIN].double() - expected[ml.MAIN]).abs()
        assert bool((error <= 2e-6 * expected[ml.MAIN].abs() + 1e-6).all()), error
