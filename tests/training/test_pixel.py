"""The CNN sub-branch (masksub_kernels/training/pixel.py) beyond test_wrapper_families.py's: a non-square grid's
cells row-major and exactly zero with no gradient to the images, a direct sub_logits call's size advice, PoolFormer
not counted as a CNN (helper-227's mutation audit of the ViT and CNN sub-branches)."""

import pytest
import torch
from _models import NUM_CLASSES, pixel_cells, tiny_resnet

import masksub_kernels as mk
from masksub_kernels.training import MaskSub


# The pixel family on a non-square grid (the references use 64 x 64 images: a 2 x 2 grid, where a cell mask read as
# [W, H] could pass): 64 x 96 images, 2 x 3 cells, row-major cells, the removed ones exactly 0 in the model's input.
# Also pins that no gradient reaches the images (docs/semantics.md §5: they are data). Kills P02.
def test_pixel_cells_on_a_non_square_grid_are_row_major_and_zero():
    torch.manual_seed(0)
    ms = MaskSub(tiny_resnet().double()).train()
    seen = []
    ms.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    images = torch.randn(4, 3, 64, 96, dtype=torch.float64, requires_grad=True)
    ms.sub_logits(images, seed=9).sum().backward()
    assert images.grad is None  # the masked images are data: no gradient flows back to the input
    cells = mk.random_grid_mask(4, (2, 3), 3, seed=9)  # floor(6 * 0.5) = 3 of 6 cells kept
    removed = pixel_cells(cells, 32).bool()[:, None].expand(-1, 3, -1, -1)
    assert torch.equal(seen[0][removed], torch.zeros_like(seen[0][removed]))
    torch.testing.assert_close(seen[0][~removed], images.detach()[~removed], rtol=0, atol=0)
    assert NUM_CLASSES == ms.sub_logits(images.detach(), seed=9).shape[1]


# Kills P03 (pixel_sub_logits' own check_input_size left out): MaskSub.forward checks the batch first, so only a
# direct sub_logits call (how compiled / custom loops run the sub-branch) reaches pixel_sub_logits' check; without it
# the op's "keeps 0 of 1 tokens" replaces the size advice that a CNN user can act on.
def test_pixel_sub_logits_alone_gives_the_size_advice():
    torch.manual_seed(0)
    ms = MaskSub(tiny_resnet().double()).train()
    with pytest.raises(ValueError, match=r"keeps none of the 1 mask cell\(s\) of 32 pixels .* or more"):
        ms.sub_logits(torch.randn(2, 3, 32, 32, dtype=torch.float64), seed=1)
    with pytest.raises(ValueError, match="not divisible by the mask cell of 32 pixels"):
        ms.sub_logits(torch.randn(2, 3, 64, 48, dtype=torch.float64), seed=1)


def test_a_size_of_more_cells_than_a_mask_selects_among_is_refused_before_training():
    # helper-251: a CNN at 4096 px in cells of 32 has 16384 cells, more than the 8192 the selection takes: the ops
    # refuse it at the first step; check_input_size (the command's set-up, MaskSub's construction) now says so first,
    # naming a cell size that fits
    from masksub_kernels.training.families import check_input_size

    with pytest.raises(ValueError, match=r"images of 4096 x 4096: 16384 cells .* 8192 .* \(cell_size=64 gives 4096\)"):
        check_input_size("pixel", tiny_resnet(), 4096, 32, 0.5)
    check_input_size("pixel", tiny_resnet(), 4096, 64, 0.5)


# Kills P07 (is_convolutional's "stride 1" rule loosened to stride <= 2): PoolFormer's only wide convolutions are
# its 7x7/4 stem and 3x3/2 downsamplings, so the stride rule is all that keeps it from counting as a CNN (its
# docstring names it); no model in the test depended on the stride.
def test_poolformer_is_no_cnn_its_strided_convolutions_do_not_mix():
    import timm

    from masksub_kernels.training.pixel import is_convolutional

    with torch.device("meta"):
        assert not is_convolutional(timm.create_model("poolformer_s12"))
