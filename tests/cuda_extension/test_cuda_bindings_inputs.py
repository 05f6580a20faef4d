"""The bindings called directly with operands the public ops never pass (csrc/bindings*.cpp): a tensor on another
device than the op's is refused, naming it (read by a kernel, a meta tensor's missing data would crash the process),
and a cell mask with strides of its own is read as its values (the binding makes it contiguous). The public ops
check devices first, so only these direct calls reach the bindings' own checks (helper-121's mutation sweep)."""

import pytest
import torch
from extension_under_test import DEV, EXT, kernels, refused

from masksub_kernels.ops import grid_mask as gm
from masksub_kernels.ops import token_grid_mask as tgm

META = torch.device("meta")
LOSS_OPTIONS = (False, 0.0, -100, 1.0, None)  # bce, label_smoothing, ignore_index, temperature, target_threshold


def _calls_with_a_meta_operand():
    """name -> (the message, a call of a binding with that operand on the meta device, the others on DEV)."""
    x, ids = torch.randn(2, 11, 4, device=DEV), torch.tensor([[0, 3], [1, 9]], device=DEV)
    flags = torch.zeros(2, 10, dtype=torch.bool, device=DEV)
    meta_seed, meta_flags = torch.tensor([5], device=META), flags.to(META)
    images, cells = torch.randn(2, 3, 8, 8, device=DEV), torch.zeros(2, 2, 2, dtype=torch.bool, device=DEV)
    tokens, token = torch.randn(2, 8, 8, 6, device=DEV), torch.randn(6, device=DEV)
    z, y = torch.randn(4, 9, device=DEV), torch.tensor([0, 8, 2, 3], device=DEV)
    out, grad = EXT.masksub_loss_forward(z, z, y, *LOSS_OPTIONS), torch.ones(4, device=DEV)
    reduced = EXT.masksub_loss_reduced_forward(z, z, y, *LOSS_OPTIONS, 0.5, 0.5, True)
    on = "must be on .*, got meta"
    return {
        "select seed": (f"seed tensor {on}", lambda: EXT.select_tokens(0, meta_seed, 2, 10, 3, False, True, DEV)),
        "select always_keep": (
            f"always_keep {on}",
            lambda: EXT.select_tokens(0, None, 2, 10, 3, False, True, DEV, meta_flags),
        ),
        "select drop_first": (
            f"drop_first {on}",
            lambda: EXT.select_tokens(0, None, 2, 10, 3, False, True, DEV, None, meta_flags),
        ),
        "select_gather seed": (f"seed tensor {on}", lambda: EXT.select_gather_tokens(x, 0, meta_seed, 3, 1, False)),
        "select_gather always_keep": (
            f"always_keep {on}",
            lambda: EXT.select_gather_tokens(x, 0, None, 3, 1, False, meta_flags),
        ),
        "gather ids": (f"ids {on}", lambda: EXT.gather_tokens(x, ids.to(META), 1)),
        "scatter inv": (
            f"inv {on}",
            lambda: EXT.scatter_tokens(x[:, :3], torch.zeros(2, 10, dtype=torch.int32, device=META), 1),
        ),
        "grid_cell_mask seed": (f"seed tensor {on}", lambda: EXT.grid_cell_mask(0, meta_seed, 2, 4, 2, DEV)),
        "mask_image cell_mask": (f"cell_mask {on}", lambda: EXT.mask_image_grid(images, cells.to(META), 4, 0.0)),
        "mask_image_random seed": (
            f"seed tensor {on}",
            lambda: EXT.mask_image_grid_random(images, 0, meta_seed, 4, 2, 0.0),
        ),
        "tokens mask_token": (
            f"mask_token {on}",
            lambda: EXT.mask_tokens_grid_forward(tokens, token.to(META), cells, 4),
        ),
        "tokens cell_mask": (f"cell_mask {on}", lambda: EXT.mask_tokens_grid_forward(tokens, token, cells.to(META), 4)),
        "tokens_random mask_token": (
            f"mask_token {on}",
            lambda: EXT.mask_tokens_grid_random(tokens, token.to(META), 0, None, 4, 2),
        ),
        "tokens_random seed": (
            f"seed tensor {on}",
            lambda: EXT.mask_tokens_grid_random(tokens, token, 0, meta_seed, 4, 2),
        ),
        "tokens_backward cell_mask": (
            f"cell_mask {on}",
            lambda: EXT.mask_tokens_grid_backward(tokens, cells.to(META), 4, True, True),
        ),
        "loss sub_logits": (f"sub_logits {on}", lambda: EXT.masksub_loss_forward(z, z.to(META), y, *LOSS_OPTIONS)),
        "loss target": (f"target {on}", lambda: EXT.masksub_loss_forward(z, z, y.to(META), *LOSS_OPTIONS)),
        "loss_backward out": (
            f"out {on}",
            lambda: EXT.masksub_loss_backward(grad, None, out.to(META), z, z, y, *LOSS_OPTIONS),
        ),
        "loss_backward grad_main": (
            f"grad_main {on}",
            lambda: EXT.masksub_loss_backward(grad.to(META), None, out, z, z, y, *LOSS_OPTIONS),
        ),
        "reduced_backward grad": (
            f"grad {on}",
            lambda: EXT.masksub_loss_reduced_backward(
                torch.ones(4, device=META), True, True, reduced[2], reduced[1], z, z, y, *LOSS_OPTIONS, 0.5, 0.5
            ),
        ),
        "reduced_backward divisor": (
            f"divisor {on}",
            lambda: EXT.masksub_loss_reduced_backward(
                torch.ones(4, device=DEV), True, True, reduced[2].to(META), reduced[1], z, z, y, *LOSS_OPTIONS, 0.5, 0.5
            ),
        ),
    }


META_OPERANDS = [
    "select seed", "select always_keep", "select drop_first", "select_gather seed", "select_gather always_keep",
    "gather ids", "scatter inv", "grid_cell_mask seed", "mask_image cell_mask", "mask_image_random seed",
    "tokens mask_token", "tokens cell_mask", "tokens_random mask_token", "tokens_random seed",
    "tokens_backward cell_mask", "loss sub_logits", "loss target", "loss_backward out", "loss_backward grad_main",
    "reduced_backward grad", "reduced_backward divisor",
]  # fmt: skip


@kernels
@pytest.mark.parametrize("operand", META_OPERANDS)
def test_operands_on_another_device_are_refused(operand):
    calls = _calls_with_a_meta_operand()
    assert sorted(calls) == sorted(META_OPERANDS)
    message, call = calls[operand]
    with refused(message):
        call()


@kernels
def test_cell_masks_with_strides_of_their_own():
    # a transposed cell mask: read in place, its bytes would be those of its transpose
    generator = torch.Generator().manual_seed(0)
    cells = (torch.rand(2, 3, 2, generator=generator) < 0.5).transpose(1, 2).to(DEV)  # [2, 2, 3], not contiguous
    images = torch.randn(2, 3, 8, 12, generator=generator).to(DEV)
    expected = gm.mask_image_reference(images.cpu(), cells.cpu(), 4, -1.0)
    assert torch.equal(EXT.mask_image_grid(images, cells, 4, -1.0).cpu(), expected)
    tokens, token = torch.randn(2, 8, 12, 5, generator=generator).to(DEV), torch.randn(5, generator=generator).to(DEV)
    expected = tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), cells.cpu(), 4)
    assert torch.equal(EXT.mask_tokens_grid_forward(tokens, token, cells, 4).cpu(), expected)
    expected_tokens, expected_mask = tgm.mask_tokens_backward_reference(tokens.cpu(), cells.cpu(), 4)
    grad_tokens, grad_mask = EXT.mask_tokens_grid_backward(tokens, cells, 4, True, True)
    assert torch.equal(grad_tokens.cpu(), expected_tokens)
    torch.testing.assert_close(grad_mask.cpu(), expected_mask, rtol=1e-5, atol=1e-5)


# helper-215's second-pass mutation audit of csrc/ on the emulator (42 mutants, 14 gaps): the tests below


@kernels
@pytest.mark.parametrize("rows", [1, 3])
def test_flags_of_another_batch_size_are_refused(rows):
    # Kills csrc/bindings_token_select.cpp position_flags `flags->size(0) == B` left out of the shape check: the
    # kernel reads flags[b, n] for every b < B through the flags' strides, so a [1, N] mask reads past its end (an
    # illegal address on a GPU) and a [3, N] one passes unnoticed for B = 2; the Python ops refuse both
    # (_check_priority_masks). The test of the binding's own checks had only a wrong token count.
    flags = torch.zeros(rows, 10, dtype=torch.bool, device=DEV)
    x = torch.randn(2, 11, 4, device=DEV)
    for name, masks in (("always_keep", (flags, None)), ("drop_first", (None, flags))):
        with refused(rf"{name} must have shape \[2, 10\], got \[{rows}, 10\]"):
            EXT.select_tokens(0, None, 2, 10, 3, False, True, DEV, *masks)
        with refused(rf"{name} must have shape \[2, 10\], got \[{rows}, 10\]"):
            EXT.select_gather_tokens(x, 0, None, 3, 1, False, *masks)


@kernels
def test_batch_sizes_from_two_to_the_31_are_refused():
    # Kills csrc/bindings.h check_selection `batch_size >= 0 && batch_size <= INT_MAX` -> `batch_size >= 0`: one
    # block per sample on a grid's x axis, so 2^31 samples are a ValueError naming batch_size, as the Python ops
    # raise (check_keep_args), before anything is allocated; without the bound the binding allocated the outputs
    # and the launcher's own check failed the launch (a RuntimeError). The tests had only -1. (One cell per sample:
    # the mutant's allocation is 2 GiB of untouched memory.)
    with refused(r"batch_size must be in \[0, 2\*\*31\), got 2147483648"):
        EXT.grid_cell_mask(0, None, 2**31, 1, 1, DEV)
