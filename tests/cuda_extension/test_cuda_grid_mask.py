"""The CUDA extension's grid masks (csrc/grid_mask.cu, bindings_grid_mask.cpp): refusals on any machine, then
the kernels against the reference (bit for bit; the mask token's gradient within fp32 rounding: sums in another
order) on the kernels' device (extension_under_test.py)."""

import pytest
import torch
from extension_under_test import _C, CPU, DEV, EXT, FLOAT_DTYPES, kernels, needs_C, refused

from masksub_kernels._philox import philox_uint32
from masksub_kernels.ops import grid_mask as gm
from masksub_kernels.ops import token_grid_mask as tgm

# ---------------------------------------------------------------------------------------------------------------
# Refusals (any machine)
# ---------------------------------------------------------------------------------------------------------------


@needs_C
def test_grid_cell_mask_refusals():
    with refused("device must be a CUDA device, got cpu"):
        _C.grid_cell_mask(1, None, 2, 49, 24, CPU)
    with refused(r"num_cells must be in \[1, 8192\], got 0"):
        _C.grid_cell_mask(1, None, 2, 0, 1, CPU)
    with refused(r"num_keep must be in \[1, num_cells=49\], got 50"):
        _C.grid_cell_mask(1, None, 2, 49, 50, CPU)


MASK = torch.zeros(2, 2, 2, dtype=torch.bool)


@needs_C
@pytest.mark.parametrize(
    ("images", "mask", "cell_size", "message"),
    [
        (torch.zeros(2, 3, 64, 64), MASK, 32, "images must be a CUDA tensor, got cpu"),
        (torch.zeros(3, 64, 64), MASK, 32, r"images must be \[batch, channels, height, width\] \(4-D\)"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.int32), MASK, 32, "images must be float32, float16, bfloat16 or"),
        (torch.zeros(2, 3, 64, 60), MASK, 32, "images of 64 x 60 are not divisible by cell_size=32"),
        (torch.zeros(2, 3, 64, 64), MASK, 0, "cell_size must be >= 1, got 0"),
        (torch.zeros(2, 3, 64, 64), MASK.to(torch.uint8), 32, "cell_mask must be bool, got uint8"),
        (torch.zeros(2, 3, 64, 96), MASK, 32, r"cell_mask must have shape \[2, 2, 3\], got \[2, 2, 2\]"),
    ],
)
def test_mask_image_grid_refusals(images, mask, cell_size, message):
    with refused(message):
        _C.mask_image_grid(images, mask, cell_size, 0.0)


@needs_C
def test_mask_tokens_grid_refusals():
    tokens, token = torch.zeros(2, 16, 16, 40), torch.zeros(40)
    with refused("tokens must be a CUDA tensor, got cpu"):
        _C.mask_tokens_grid_forward(tokens, token, MASK, 8)
    with refused(r"mask_token must have shape \[C=40\], got shape \[39\]"):
        _C.mask_tokens_grid_forward(tokens, torch.zeros(39), MASK, 8)
    with refused("mask_token must have the dtype of tokens \\(float32\\), got float16"):
        _C.mask_tokens_grid_forward(tokens, token.half(), MASK, 8)
    with refused("grad_out must be a CUDA tensor, got cpu"):
        _C.mask_tokens_grid_backward(tokens, MASK, 8, True, True)
    with refused("grad_out of 16 x 16 is not divisible by cell_size=5"):
        _C.mask_tokens_grid_backward(tokens, MASK, 5, True, True)


# The bounds, fill values and mask token shapes the Python ops refuse, the bindings refuse alike (a ValueError before
# anything is allocated; helper-215: past the bounds a direct call allocated its outputs and the launch failed, a
# RuntimeError; an infinite fill value and a [1, C] mask token were taken). Sizes past the bounds come from expanded
# views (no memory); at a bound the call gets past the check to the cell mask's shape (the next one), so the bounds
# are the Python ops' MAX_GRID_*, to the element.
BEYOND = rf"must have at most {gm.MAX_GRID_EXTENT} rows \(batch x height\), a height of at most {gm.MAX_GRID_HEIGHT} "
BEYOND += rf"and at most {gm.MAX_GRID_LINE} elements per row"
ROWS_AT_HEIGHT = gm.MAX_GRID_EXTENT // gm.MAX_GRID_HEIGHT  # samples of the largest height within the row bound
AT_AND_BEYOND = {  # [B, H, W, C] at a bound, and one past it
    "rows": ((gm.MAX_GRID_EXTENT, 1, 1, 1), (gm.MAX_GRID_EXTENT + 1, 1, 1, 1)),
    "rows of the largest height": (
        (ROWS_AT_HEIGHT, gm.MAX_GRID_HEIGHT, 1, 1),
        (ROWS_AT_HEIGHT + 1, gm.MAX_GRID_HEIGHT, 1, 1),
    ),
    "height": ((1, gm.MAX_GRID_HEIGHT, 1, 1), (1, gm.MAX_GRID_HEIGHT + 1, 1, 1)),
    "width": ((1, 1, gm.MAX_GRID_LINE, 1), (1, 1, gm.MAX_GRID_LINE + 1, 1)),
    "channels": ((1, 1, 1, gm.MAX_GRID_LINE), (1, 1, 1, gm.MAX_GRID_LINE + 1)),
}


def _grid_calls(B, H, W, C):
    """Each binding called on a [B, ..., H, W, ...] view of one element (cell size 1, a 1 x 1 cell mask)."""
    images, tokens = torch.zeros(1).expand(B, C, H, W), torch.zeros(1).expand(B, H, W, C)
    cells, token = torch.zeros(1, 1, 1, dtype=torch.bool), torch.zeros(1).expand(C)
    return [
        lambda: _C.mask_image_grid(images, cells, 1, 0.0),
        lambda: _C.mask_image_grid_random(images, 1, None, 1, 1, 0.0),
        lambda: _C.mask_tokens_grid_forward(tokens, token, cells, 1),
        lambda: _C.mask_tokens_grid_random(tokens, token, 1, None, 1, 1),
        lambda: _C.mask_tokens_grid_backward(tokens, cells, 1, True, True),
    ]


@needs_C
@pytest.mark.parametrize("bound", list(AT_AND_BEYOND))
def test_grid_bounds_are_the_python_ops(bound):
    at_bound, beyond = AT_AND_BEYOND[bound]
    with pytest.raises(ValueError, match="must have at most"):
        gm._check_extent(*beyond, "images")
    gm._check_extent(*at_bound, "images")
    for call in _grid_calls(*beyond):
        with pytest.raises(ValueError, match=BEYOND):
            call()
    for call in _grid_calls(*at_bound):  # past the bounds' check: refused next (cells, or a CPU tensor) or taken
        with pytest.raises((ValueError, RuntimeError), match=r"cell_mask must have|num_cells must|a CUDA tensor, got"):
            call()


@needs_C
@pytest.mark.parametrize(
    ("dtype", "fill_value"),
    [(torch.float32, float("nan")), (torch.float32, float("inf")), (torch.float64, -float("inf")),
     (torch.float16, 65520.0), (torch.bfloat16, 3.4e38), (torch.float32, 3.5e38)],
)  # fmt: skip
def test_fill_values_the_python_ops_refuse_are_refused(dtype, fill_value):
    images = torch.zeros(2, 3, 8, 8, dtype=dtype)
    with pytest.raises(ValueError, match=r"fill_value must be finite and within ±"):
        gm._check_fill_value(fill_value, dtype)
    with refused(rf"fill_value must be finite and within ±.* for {str(dtype)[6:]} images, got"):
        _C.mask_image_grid(images, MASK, 4, fill_value)
    with refused(rf"fill_value must be finite and within ±.* for {str(dtype)[6:]} images, got"):
        _C.mask_image_grid_random(images, 1, None, 4, 1, fill_value)


@needs_C
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_the_largest_finite_fill_value_is_taken(dtype):
    # torch.finfo(dtype).max (fp16's 65504) is finite in the dtype: past the check, to the device's (a CPU tensor)
    largest = torch.finfo(dtype).max
    for fill_value in (largest, -largest):
        with refused("images must be a CUDA tensor, got cpu"):
            _C.mask_image_grid(torch.zeros(2, 3, 8, 8, dtype=dtype), MASK, 4, fill_value)


@needs_C
def test_a_mask_token_of_the_public_shape_is_refused_by_the_op():
    # the public functions reshape [1, ..., 1, C] to the ops' [C]; a direct call with [1, C] is refused as the op is
    tokens = torch.zeros(2, 16, 16, 40)
    for call in (
        lambda token: _C.mask_tokens_grid_forward(tokens, token, MASK, 8),
        lambda token: _C.mask_tokens_grid_random(tokens, token, 1, None, 8, 2),
    ):
        with refused(r"mask_token must have shape \[C=40\], got shape \[1, 40\]"):
            call(torch.zeros(1, 40))


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------


def _bits(x):
    return x.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]).cpu()


@kernels
@pytest.mark.parametrize(("batch_size", "num_cells", "num_keep"), [(3, 49, 24), (2, 240, 100), (1, 4096, 1)])
def test_grid_cell_mask_matches_reference(batch_size, num_cells, num_keep):
    mask = EXT.grid_cell_mask(21, None, batch_size, num_cells, num_keep, DEV)
    assert mask.dtype == torch.bool and mask.shape == (batch_size, num_cells)
    assert torch.equal(mask.cpu(), gm.cell_mask_reference(21, batch_size, num_cells, num_keep, CPU))


def _image_layouts(x):
    wide = torch.zeros(*x.shape[:3], x.shape[3] + 5, dtype=x.dtype, device=x.device)
    wide[..., 2 : 2 + x.shape[3]] = x
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide[..., 2 : 2 + x.shape[3]],
    }


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("channels", "height", "width", "cell_size"), [(3, 64, 96, 32), (1, 48, 72, 24), (5, 8, 8, 1)])
def test_mask_image_grid_matches_reference(dtype, channels, height, width, cell_size):
    images = torch.randn(2, channels, height, width, device=DEV).to(dtype)
    cells = EXT.grid_cell_mask(3, None, 2, (height // cell_size) * (width // cell_size), 2, DEV)
    cells = cells.view(2, height // cell_size, width // cell_size)
    for name, view in _image_layouts(images).items():
        out = EXT.mask_image_grid(view, cells, cell_size, 0.1)
        assert out.dtype == dtype and out.shape == images.shape, name
        assert out.stride() == torch.empty_like(view).stride(), name  # the input's layout where dense
        expected = gm.mask_image_reference(view.cpu(), cells.cpu(), cell_size, 0.1)
        assert torch.equal(_bits(out), _bits(expected)), name


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("channels", "grid", "cell_size", "num_keep"),
    [(3, (7, 7), 4, 24), (2, (16, 16), 2, 179), (1, (17, 16), 1, 100), (4, (2, 3), 8, 1)],
)
def test_mask_image_grid_random_matches_reference(dtype, channels, grid, cell_size, num_keep):
    # the cell mask drawn in the masking launch (up to 256 cells: (16, 16) is the limit) or by the selection kernel
    # first (17 x 16 cells), in every layout, with an int seed and a seed tensor: the reference's cells and pixels
    height, width = grid[0] * cell_size, grid[1] * cell_size
    images = torch.randn(3, channels, height, width, device=DEV).to(dtype)
    expected_mask = gm.cell_mask_reference(2**40 + 9, 3, grid[0] * grid[1], num_keep, CPU).view(3, *grid)
    seeds = (2**40 + 9, torch.tensor([2**40 + 9], dtype=torch.int64, device=DEV))
    for (name, view), seed in zip(_image_layouts(images).items(), seeds + seeds[:1]):
        seed_value, seed_tensor = (seed, None) if isinstance(seed, int) else (0, seed)
        out, mask = EXT.mask_image_grid_random(view, seed_value, seed_tensor, cell_size, num_keep, -0.5)
        assert mask.dtype == torch.bool and torch.equal(mask.cpu(), expected_mask), name
        assert out.stride() == torch.empty_like(view).stride(), name
        expected = gm.mask_image_reference(view.cpu(), expected_mask, cell_size, -0.5)
        assert torch.equal(_bits(out), _bits(expected)), name


@needs_C
def test_mask_image_grid_random_refusals():
    images = torch.zeros(2, 3, 64, 64)
    with refused("images must be a CUDA tensor, got cpu"):
        _C.mask_image_grid_random(images, 1, None, 32, 2, 0.0)
    with refused("images of 64 x 64 are not divisible by cell_size=24"):
        _C.mask_image_grid_random(images, 1, None, 24, 2, 0.0)
    with refused(r"num_keep must be in \[1, num_cells=4\], got 5"):
        _C.mask_image_grid_random(images, 1, None, 32, 5, 0.0)


def _assert_mask_token_grad(grad_mask, grad, cells, cell_size):
    """grad_mask [C] against the fp64 sum of grad [B, H, W, C] over the removed cells' tokens. Summation in fp32
    (fp64 for fp64) over n terms, then one rounding to the dtype: the classic bound |error| <= n u sum|x| + eps |sum|
    (a missed or doubled token is off by |x|, far above it)."""
    removed = gm.pixel_mask_reference(cells.cpu(), cell_size)[..., None]
    removed_grad = torch.where(removed, grad.cpu().double(), 0)
    expected = removed_grad.sum(dim=(0, 1, 2))
    terms = int(removed[..., 0].sum())
    unit = 2.0**-53 if grad.dtype == torch.float64 else 2.0**-24
    bound = terms * unit * removed_grad.abs().sum(dim=(0, 1, 2)) + torch.finfo(grad.dtype).eps * expected.abs()
    error = (grad_mask.cpu().double() - expected).abs()
    assert grad_mask.dtype == grad.dtype and grad_mask.shape == expected.shape
    assert bool((error <= bound + 1e-30).all()), float((error - bound).max())


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("height", "width", "channels", "cell_size"), [(16, 24, 40, 8), (56, 56, 96, 8), (8, 8, 3, 4)])
def test_mask_tokens_grid_matches_reference(dtype, height, width, channels, cell_size):
    device = DEV
    grid_h, grid_w = height // cell_size, width // cell_size
    cells = EXT.grid_cell_mask(4, None, 2, grid_h * grid_w, max(1, grid_h * grid_w // 2), device).view(
        2, grid_h, grid_w
    )
    tokens = torch.randn(2, height, width, channels, device=device).to(dtype)
    token = torch.randn(channels, device=device).to(dtype)
    strided = tokens.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # h and w strides swapped
    for view in (tokens, strided, tokens.transpose(1, 2).contiguous().transpose(1, 2)):
        out = EXT.mask_tokens_grid_forward(view, token, cells, cell_size)
        assert out.is_contiguous()
        expected = tgm.mask_tokens_reference(view.cpu(), token.cpu(), cells.cpu(), cell_size)
        assert torch.equal(_bits(out), _bits(expected))
    grad = torch.randn(2, height, width, channels, device=device).to(dtype)
    expected_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), cells.cpu(), cell_size)
    grad_tokens, grad_mask = EXT.mask_tokens_grid_backward(grad, cells, cell_size, True, True)
    assert torch.equal(_bits(grad_tokens), _bits(expected_tokens))
    _assert_mask_token_grad(grad_mask, grad, cells, cell_size)
    only_mask = EXT.mask_tokens_grid_backward(grad, cells, cell_size, False, True)
    assert only_mask[0].numel() == 0 and torch.equal(_bits(only_mask[1]), _bits(grad_mask))  # same fixed order
    only_tokens = EXT.mask_tokens_grid_backward(grad, cells, cell_size, True, False)
    assert only_tokens[1].numel() == 0 and torch.equal(_bits(only_tokens[0]), _bits(grad_tokens))


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("grid", "cell_size", "channels", "num_keep"), [((7, 7), 2, 40, 24), ((2, 3), 4, 3, 2), ((17, 16), 1, 1, 100)]
)
def test_mask_tokens_grid_random_matches_reference(dtype, grid, cell_size, channels, num_keep):
    # cells drawn in the masking launch (contiguous token rows, up to 256 cells; 3 channels of 2 bytes: 2-byte
    # words; one channel) or by the selection kernel first (hw-swapped rows; 17 x 16 cells), with an int seed and a
    # seed tensor: the reference's cells and tokens
    height, width = grid[0] * cell_size, grid[1] * cell_size
    tokens = torch.randn(2, height, width, channels, device=DEV).to(dtype)
    token = torch.randn(channels, device=DEV).to(dtype)
    expected_mask = gm.cell_mask_reference(77, 2, grid[0] * grid[1], num_keep, CPU).view(2, *grid)
    swapped = tokens.transpose(1, 2).contiguous().transpose(1, 2)
    seed = torch.tensor(77, dtype=torch.int64, device=DEV)
    for view, (seed_value, seed_tensor) in ((tokens, (77, None)), (swapped, (0, seed)), (tokens, (0, seed))):
        out, mask = EXT.mask_tokens_grid_random(view, token, seed_value, seed_tensor, cell_size, num_keep)
        assert mask.dtype == torch.bool and torch.equal(mask.cpu(), expected_mask) and out.is_contiguous()
        expected = tgm.mask_tokens_reference(view.cpu(), token.cpu(), expected_mask, cell_size)
        assert torch.equal(_bits(out), _bits(expected))


@needs_C
def test_mask_tokens_grid_random_refusals():
    tokens, token = torch.zeros(2, 16, 16, 40), torch.zeros(40)
    with refused("tokens must be a CUDA tensor, got cpu"):
        _C.mask_tokens_grid_random(tokens, token, 1, None, 8, 2)
    with refused(r"mask_token must have shape \[C=40\], got shape \[39\]"):
        _C.mask_tokens_grid_random(tokens, torch.zeros(39), 1, None, 8, 2)
    with refused("tokens of 16 x 16 are not divisible by cell_size=5"):
        _C.mask_tokens_grid_random(tokens, token, 1, None, 5, 2)
    with refused(r"num_keep must be in \[1, num_cells=4\], got 0"):
        _C.mask_tokens_grid_random(tokens, token, 1, None, 8, 0)


@kernels
def test_mask_token_grad_adds_every_token_of_a_part():
    # a part = a cell row of 8 x 32 tokens: each thread adds two tokens of each of 8 rows, then the block adds its
    # threads' sums in shared memory (after a barrier); every cell removed, so every token of every part counts
    cells = torch.ones(2, 4, 4, dtype=torch.bool, device=DEV)
    grad = torch.randn(2, 32, 32, 40, generator=torch.Generator().manual_seed(0)).to(DEV)
    _assert_mask_token_grad(EXT.mask_tokens_grid_backward(grad, cells, 8, False, True)[1], grad, cells, 8)


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_token_grad_channel_chunks(dtype):
    # more channel words than a block's threads (1040 fp32 = 260 words of 16 bytes; 2056 bf16 = 257): the channels
    # split over a second grid dimension, each chunk's threads keeping their own words
    channels = 1040 if dtype == torch.float32 else 2056
    generator = torch.Generator().manual_seed(5)
    cells = torch.tensor([[[True, False], [False, True]]], device=DEV)
    grad = torch.randn(1, 4, 4, channels, generator=generator).to(dtype).to(DEV)
    grad_tokens, grad_mask = EXT.mask_tokens_grid_backward(grad, cells, 2, True, True)
    expected_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), cells.cpu(), 2)
    assert torch.equal(_bits(grad_tokens), _bits(expected_tokens))
    _assert_mask_token_grad(grad_mask, grad, cells, 2)


@kernels
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("layout", ["contiguous", "hw-swapped"])
def test_mask_token_grad_narrow_rows(width, layout):
    # Over 1024 cell rows (3 per part, in turn) of narrow rows (W < 8: a block's threads take several token rows at
    # once); S = 2 makes the cell a non-linear function of the token.
    batch, channels, cell = 2, 8, 2
    height = 2 * (9000 // (2 * batch * width) + 1)
    generator = torch.Generator().manual_seed(3)
    cells = (torch.rand(batch, height // cell, width // cell, generator=generator) < 0.5).to(DEV)
    grad = torch.randn(batch, height, width, channels, generator=generator).to(DEV)
    if layout == "hw-swapped":
        grad = grad.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    _assert_mask_token_grad(EXT.mask_tokens_grid_backward(grad, cells, cell, False, True)[1], grad, cells, cell)


# helper-181's mutation audit of csrc/grid_mask.cu: the one-launch draw's tie rule, a size-2 dimension's odd stride


@kernels
def test_grid_random_cells_break_draw_ties_by_position():
    # Kills csrc/grid_mask.cu draw_cell_row `(draws[j] == key && j < cell)` -> `j > cell` (or dropping the tie term):
    # the one-launch draw (<= 256 cells) must rank equal 32-bit draws by cell position, as the selection kernel's
    # stable sort and the reference do. Seed 14395 has two equal draws in sample 12 of a 16 x 16 grid (found by
    # search: ~1 row in 130000); num_keep puts the K boundary between the two tied cells, so the order decides
    # which of them is kept.
    seed, batch, grid, cell = 14395, 13, 16, 2
    draws = philox_uint32(seed, torch.arange(batch * grid * grid).view(batch, grid * grid))[12]
    values, counts = draws.unique(return_counts=True)
    tied_value = int(values[counts > 1][0])
    tied = (draws == tied_value).nonzero().flatten().tolist()
    assert len(tied) == 2
    num_keep = int((draws < tied_value).sum()) + 1  # keeps the lower-position cell of the pair, not the other
    expected_mask = gm.cell_mask_reference(seed, batch, grid * grid, num_keep, CPU).view(batch, grid, grid)
    assert not expected_mask[12].flatten()[tied[0]] and expected_mask[12].flatten()[tied[1]]
    images = torch.randn(batch, 1, grid * cell, grid * cell, generator=torch.Generator().manual_seed(0)).to(DEV)
    out, mask = EXT.mask_image_grid_random(images, seed, None, cell, num_keep, 0.0)
    assert torch.equal(mask.cpu(), expected_mask)
    assert torch.equal(out.cpu(), gm.mask_image_reference(images.cpu(), expected_mask, cell, 0.0))
    tokens, token = images.permute(0, 2, 3, 1).contiguous(), torch.ones(1, device=DEV)
    out, mask = EXT.mask_tokens_grid_random(tokens, token, seed, None, cell, num_keep)
    assert torch.equal(mask.cpu(), expected_mask)
    assert torch.equal(out.cpu(), tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), expected_mask, cell))


@kernels
def test_mask_image_grid_odd_stride_of_a_size_two_dimension():
    # Kills csrc/grid_mask.cu stride_bits `size > 1 ? stride * element : 0` -> `size > 2 ? ...`: the stride of a
    # dimension of size 2 (here the batch) must bound the word size too. Samples 193 elements apart (odd: element
    # words) in rows of 8 fp32 (16-byte words otherwise): with the batch stride left out, sample 1 is read at
    # 193 // 4 words, one element early.
    # (csrc/grid_mask.cu:94)
    generator = torch.Generator().manual_seed(1)
    buffer = torch.randn(2, 3 * 8 * 8 + 1, generator=generator)
    images = buffer.to(DEV)[:, : 3 * 8 * 8].view(2, 3, 8, 8)  # the allocation's start: aligned to 16 bytes
    assert images.stride(0) == 193
    cells = torch.rand(2, 2, 2, generator=generator) < 0.5
    expected = gm.mask_image_reference(images.cpu(), cells, 4, -1.0)
    assert torch.equal(EXT.mask_image_grid(images, cells.to(DEV), 4, -1.0).cpu(), expected)


# helper-215's second-pass mutation audit of csrc/ on the emulator (42 mutants, 14 gaps): the tests below


@kernels
def test_mask_image_grid_odd_plane_stride():
    # Kills csrc/grid_mask.cu launch_image `stride_bits(s.c, planes, e)` left out of the word's bits: the NCHW
    # channel (plane) stride must bound the word size. Planes 8 x 8 + 1 elements apart (odd: 4-byte words) in 4
    # channels, so the batch stride (4 x 65 fp32 = 1040 bytes), the rows (32 bytes), the cells (16) and the address
    # are all multiples of 16 bytes: with the plane stride left out, plane c is read at c x 65 // 4 words, c
    # elements early. (helper-181's test_mask_image_grid_odd_stride_of_a_size_two_dimension does the batch stride.)
    generator = torch.Generator().manual_seed(8)
    buffer = torch.randn(2, 4, 8 * 8 + 1, generator=generator)
    images = buffer.to(DEV)[..., : 8 * 8].view(2, 4, 8, 8)
    assert images.stride()[:2] == (260, 65) and images.data_ptr() % 16 == 0
    cells = torch.rand(2, 2, 2, generator=generator) < 0.5
    expected = gm.mask_image_reference(images.cpu(), cells, 4, -1.0)
    assert torch.equal(EXT.mask_image_grid(images, cells.to(DEV), 4, -1.0).cpu(), expected)
    out, mask = EXT.mask_image_grid_random(images, 3, None, 4, 2, -1.0)  # the one-launch draw, same word
    assert torch.equal(out.cpu(), gm.mask_image_reference(images.cpu(), mask.cpu(), 4, -1.0))


@kernels
def test_random_grid_masks_one_cell_past_the_one_launch_draw():
    # Kills csrc/grid_mask.cu launch_mask_image_grid_random `num_cells > kMaskThreads` -> `num_cells > kMaskThreads
    # + 1` (and the token op's alike): the one-launch draw holds a sample's draws in a block's shared array of 256,
    # one per thread; 257 cells (a 1 x 257 grid) must go to the selection kernel first. The tests had 256 cells
    # (16 x 16) and 272 (17 x 16), nothing between. The mutant writes one draw past the shared array, which the
    # plain emulator does not notice (the cells come out right); the sanitized run (test_cuda_emulator.py's
    # test_kernels_under_address_sanitizer) stops at it: a global-buffer-overflow of `draws` in mask_image_kernel.
    generator = torch.Generator().manual_seed(9)
    seed, num_cells, num_keep = 31, 257, 100
    expected_mask = gm.cell_mask_reference(seed, 3, num_cells, num_keep, CPU).view(3, 1, num_cells)
    images = torch.randn(3, 2, 2, 2 * num_cells, generator=generator).to(DEV)
    out, mask = EXT.mask_image_grid_random(images, seed, None, 2, num_keep, 0.5)
    assert torch.equal(mask.cpu(), expected_mask)
    assert torch.equal(out.cpu(), gm.mask_image_reference(images.cpu(), expected_mask, 2, 0.5))
    tokens, token = images.permute(0, 2, 3, 1).contiguous(), torch.randn(2, generator=generator).to(DEV)
    out, mask = EXT.mask_tokens_grid_random(tokens, token, seed, None, 2, num_keep)
    assert torch.equal(mask.cpu(), expected_mask)
    assert torch.equal(out.cpu(), tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), expected_mask, 2))


@kernels
def test_mask_tokens_grid_random_two_columns_with_their_own_stride():
    # Kills csrc/grid_mask.cu launch_mask_tokens_grid_random `(stride_w != C && W > 1)` -> `W > 2`: token rows
    # whose w stride is not C (an hw-swapped batch) go to the row copy, which reads each token at its strides, for
    # any width above one token; the one-launch image kernel would read the second token of a row C elements after
    # the first. The tests' swapped tokens were 14 wide; here 2.
    generator = torch.Generator().manual_seed(10)
    tokens = torch.randn(2, 4, 2, 3, generator=generator).transpose(1, 2).contiguous().transpose(1, 2).to(DEV)
    assert tokens.stride() == (24, 3, 12, 1)
    token = torch.randn(3, generator=generator).to(DEV)
    expected_mask = gm.cell_mask_reference(5, 2, 8, 3, CPU).view(2, 4, 2)
    out, mask = EXT.mask_tokens_grid_random(tokens, token, 5, None, 1, 3)
    assert torch.equal(mask.cpu(), expected_mask)
    assert torch.equal(out.cpu(), tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), expected_mask, 1))


@kernels
def test_mask_token_with_strides_of_its_own():
    # Kills csrc/bindings_grid_mask.cpp mask_tokens_grid_forward `mask_token.reshape({C}).contiguous()` -> without
    # `.contiguous()` (and mask_tokens_grid_random's alike): the kernels read the mask token as C contiguous
    # elements, so a strided one (a slice of every other element, or [C, 1] viewed from a transpose) must be made
    # contiguous by the binding; read in place, its channel c would be element 2c of the storage. Both the row copy
    # (a given cell mask) and the one-launch image kernel (cells drawn) read it.
    generator = torch.Generator().manual_seed(11)
    tokens = torch.randn(2, 4, 4, 6, generator=generator).to(DEV)
    storage = torch.randn(12, generator=generator).to(DEV)
    token = storage[::2]
    assert token.stride() == (2,)
    cells = torch.tensor([[[True, False], [False, True]], [[False, True], [True, True]]])
    expected = tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), cells, 2)
    assert torch.equal(EXT.mask_tokens_grid_forward(tokens, token, cells.to(DEV), 2).cpu(), expected)
    out, mask = EXT.mask_tokens_grid_random(tokens, token, 7, None, 2, 2)
    assert torch.equal(out.cpu(), tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), mask.cpu(), 2))


@kernels
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0), (2, 0, 8, 8)])
def test_mask_image_grid_empty_images(shape):
    # Kills csrc/grid_mask.cu launch_mask_image_grid `if (B * C * H * W == 0) return cudaSuccess;` removed: an empty
    # batch or map launches no kernel (a grid of 0 blocks is an invalid configuration on a GPU, and a row of 0
    # words gives the kernel 0 lanes to divide by). The random op's empty images were tested, the given-mask op's not.
    images = torch.randn(shape).to(DEV)
    cells = torch.zeros(shape[0], shape[2] // 4, shape[3] // 4, dtype=torch.bool, device=DEV)
    out = EXT.mask_image_grid(images, cells, 4, 1.0)
    assert out.shape == images.shape and out.dtype == images.dtype
