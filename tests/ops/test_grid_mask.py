"""random_grid_mask, mask_image_grid (and both with mask_tokens_grid): every backend against the reference, bit for bit.

The shared helpers here are imported by test_token_grid_mask.py; the backend fixtures come from conftest.py."""

import math

import pytest
import torch
from _guards import guard
from conftest import DEVICE, kernel_backends

import masksub_kernels as mk
from masksub_kernels.ops import grid_mask as gm
from masksub_kernels.ops import token_grid_mask as tgm

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor on the CPU: equality of these is bit-exactness (NaNs and -0.0 included)."""
    return x.detach().cpu().view(INT_OF_WIDTH[x.element_size()])


def randn(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).to(DEVICE)


def removed_from_keep_indices(batch_size, grid_h, grid_w, num_keep, seed):
    """The contract: the removed cells are all but random_keep_indices' kept ones (row-major numbering)."""
    ids = mk.random_keep_indices(batch_size, grid_h * grid_w, num_keep, seed=seed, device=DEVICE)
    removed = torch.ones(batch_size, grid_h * grid_w, dtype=torch.bool, device=DEVICE)
    return removed.scatter_(1, ids, False).view(batch_size, grid_h, grid_w)


# ---------------------------------------------------------------------------------------------------------------
# random_grid_mask
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid_size", "num_keep"), [((7, 7), 24), ((4, 6), 12), (5, 1), ((1, 1), 1), ((3, 5), 15), ((2, 40), 17)]
)
def test_grid_mask_is_random_keep_indices(backend, grid_size, num_keep):
    mask = mk.random_grid_mask(3, grid_size, num_keep, seed=1234, device=DEVICE)
    grid_h, grid_w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    assert mask.dtype == torch.bool and mask.shape == (3, grid_h, grid_w) and mask.device.type == DEVICE.type
    assert torch.equal(mask, removed_from_keep_indices(3, grid_h, grid_w, num_keep, 1234))
    reference = gm.cell_mask_reference(1234, 3, grid_h * grid_w, num_keep, torch.device("cpu"))
    assert torch.equal(mask.cpu().view(3, -1), reference)
    assert mask.view(3, -1).sum(dim=1).tolist() == [grid_h * grid_w - num_keep] * 3


def test_grid_mask_large_grid(kernel_backend):
    mask = mk.random_grid_mask(2, (12, 20), 100, seed=8, device=DEVICE)
    assert torch.equal(mask, removed_from_keep_indices(2, 12, 20, 100, 8))


def test_grid_mask_empty_batch(backend):
    assert mk.random_grid_mask(0, 7, 24, seed=0, device=DEVICE).shape == (0, 7, 7)


def test_seed_none_follows_torch_manual_seed(backend):
    torch.manual_seed(0)
    first = mk.random_grid_mask(2, 7, 24, device=DEVICE)
    torch.manual_seed(0)
    assert torch.equal(first, mk.random_grid_mask(2, 7, 24, device=DEVICE))
    assert not torch.equal(first, mk.random_grid_mask(2, 7, 24, device=DEVICE))


def test_removed_cells_uniform_chi_square():
    # 4000 samples of a 4 x 4 grid keeping 8: each cell removed 2000 times in expectation. chi-square with 15
    # degrees of freedom; 37.7 is its 0.999 quantile (fixed seed: deterministic).
    mask = mk.random_grid_mask(4000, 4, 8, seed=2024)
    counts = mask.view(4000, 16).sum(dim=0).double()
    chi_square = float(((counts - 2000) ** 2 / 2000).sum())
    assert chi_square < 37.7, counts


def test_removed_cells_uniform_over_seeds():
    # the published 7 x 7 grid at r = 0.5: every cell is removed with frequency close to 25/49 over seeds
    hits = torch.zeros(7, 7)
    for seed in range(200):
        hits += mk.random_grid_mask(4, 7, 24, seed=seed).sum(dim=0)
    frequency = hits / 800
    assert float((frequency - 25 / 49).abs().max()) < 0.1
    assert not torch.equal(mk.random_grid_mask(1, 7, 24, seed=1), mk.random_grid_mask(1, 7, 24, seed=2))


@pytest.mark.parametrize(
    ("grid_size", "num_keep", "error", "match"),
    [
        ((7, 0), 1, ValueError, "grid_w"),
        ((7, 7, 7), 1, TypeError, "grid_size"),
        ((7.0, 7), 1, TypeError, "grid_h"),
        ((7, 7), 0, ValueError, "num_keep"),
        ((7, 7), 50, ValueError, "num_keep"),
        ((100, 100), 5, ValueError, r"num_cells must be in \[1, 8192\], got 10000"),
    ],
)
def test_grid_mask_bad_input(grid_size, num_keep, error, match):
    with pytest.raises(error, match=match):
        mk.random_grid_mask(2, grid_size, num_keep, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# mask_image_grid
# ---------------------------------------------------------------------------------------------------------------


def image_layouts(x):
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
def test_mask_image_matches_reference(backend, dtype, layout):
    images = image_layouts(randn(2, 3, 64, 96, dtype=dtype))[layout].requires_grad_(True)
    masked, mask = mk.mask_image_grid(images, 0.5, cell_size=32, seed=7, fill_value=0.1)
    assert mask.shape == (2, 2, 3) and torch.equal(mask, mk.random_grid_mask(2, (2, 3), 3, seed=7, device=DEVICE))
    assert masked.dtype == dtype and masked.stride() == images.stride()  # output layout = input layout
    expected = gm.mask_image_reference(images.detach().cpu(), mask.cpu(), 32, 0.1)
    assert torch.equal(bits(masked), bits(expected))
    grad = image_layouts(randn(*masked.shape, dtype=dtype, seed=1))[layout]
    masked.backward(grad)
    pixels = gm.pixel_mask_reference(mask.cpu(), 32)[:, None]
    assert torch.equal(bits(images.grad), bits(grad.cpu().masked_fill(pixels, 0)))


def test_mask_image_semantics(backend):
    images = randn(3, 2, 96, 64)
    images[0, 0, :4, :4] = float("nan")  # kept pixels are copied bit for bit, whatever they hold
    images[0, 1, :4, :4] = -0.0
    masked, mask = mk.mask_image_grid(images, 0.5, cell_size=32, seed=3, fill_value=-1.5)
    assert mask.view(3, -1).sum(dim=1).tolist() == [6 - 3] * 3
    cells = masked.view(3, 2, 3, 32, 2, 32).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, 32, 32]
    originals = images.view(3, 2, 3, 32, 2, 32).permute(0, 2, 4, 1, 3, 5)
    assert bool((cells[mask] == -1.5).all())  # removed cells: constant fill
    assert torch.equal(bits(cells[~mask]), bits(originals[~mask]))  # kept cells: untouched


def test_mask_image_identity_at_ratio_zero(backend):
    images = randn(2, 3, 64, 64, dtype=torch.bfloat16)
    masked, mask = mk.mask_image_grid(images, 0.0, seed=1)
    assert not bool(mask.any()) and torch.equal(bits(masked), bits(images))
    assert masked.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_mask_image_non_square(backend, layout):
    images = image_layouts(randn(1, 3, 224, 160))[layout]
    masked, mask = mk.mask_image_grid(images, 0.5, seed=11)
    assert mask.shape == (1, 7, 5) and int(mask.sum()) == 35 - 17
    assert torch.equal(bits(masked), bits(gm.mask_image_reference(images.cpu(), mask.cpu(), 32, 0.0)))
    assert masked.stride() == images.stride()


def test_cell_sizes_not_powers_of_two(backend):
    images = image_layouts(randn(2, 3, 48, 72))["channels_last"]
    masked, mask = mk.mask_image_grid(images, 0.5, cell_size=24, seed=4)
    assert mask.shape == (2, 2, 3)
    assert torch.equal(bits(masked), bits(gm.mask_image_reference(images.cpu(), mask.cpu(), 24, 0.0)))
    tokens, mask_token = randn(2, 12, 18, 5), randn(5, seed=1)
    out, mask = mk.mask_tokens_grid(tokens, mask_token, 0.5, cell_size=6, seed=4)
    expected = tgm.mask_tokens_reference(tokens.cpu(), mask_token.cpu(), mask.cpu(), 6)
    assert mask.shape == (2, 2, 3) and torch.equal(bits(out), bits(expected))


def test_mask_image_strided_views(backend):
    base = randn(4, 5, 64, 64)
    last = base.contiguous(memory_format=torch.channels_last)  # channel slices: rows (w, c) strided, or not
    views = (base[::2, 1:4], base.permute(0, 1, 3, 2), base[:, :, :, :32], last[:, 1:4], last[:, :, :, 32:])
    for view in views:
        view = view.detach().requires_grad_(True)
        masked, mask = mk.mask_image_grid(view, 0.5, seed=2)
        assert torch.equal(bits(masked), bits(gm.mask_image_reference(view.detach().cpu(), mask.cpu(), 32, 0.0)))
        masked.sum().backward()  # an expanded (stride 0) gradient, read in place
        expected = (~gm.pixel_mask_reference(mask.cpu(), 32))[:, None].float().expand(view.shape)
        assert torch.equal(view.grad.cpu(), expected)


def test_mask_image_wide_grids_seed_tensors_and_empty_images(backend):
    # the one-launch Triton path ranks a cell row's cells among the sample's keys: at its limit (16 x 16 cells:
    # 16 x 256 comparisons), and beyond it (18 x 20 cells: the two-launch path)
    seed = torch.tensor([123456789], dtype=torch.int64, device=DEVICE)
    for (grid_h, grid_w), keep in (((16, 16), 179), ((18, 20), 251)):
        images = image_layouts(randn(3, 2, 4 * grid_h, 4 * grid_w))["channels_last"]
        masked, mask = mk.mask_image_grid(images, 0.3, cell_size=4, seed=seed)
        assert torch.equal(mask, mk.random_grid_mask(3, (grid_h, grid_w), keep, seed=seed))
        assert torch.equal(bits(masked), bits(gm.mask_image_reference(images.cpu(), mask.cpu(), 4, 0.0)))
    for shape in ((2, 0, 64, 64), (0, 3, 64, 64)):  # no pixels: the mask alone (and nothing for no samples)
        masked, mask = mk.mask_image_grid(randn(*shape), 0.5, seed=5)
        assert masked.shape == shape and torch.equal(mask, mk.random_grid_mask(shape[0], 2, 2, seed=5, device=DEVICE))


def test_mask_image_published_cell_counts():
    # 224 px, 32-pixel cells, r = 0.5: 49 cells, 24 kept, 25 removed (reference backend: cheap at this size)
    with mk.use_backend("torch"):
        _, mask = mk.mask_image_grid(torch.zeros(8, 3, 224, 224), 0.5, seed=0)
    assert mask.shape == (8, 7, 7) and mask.view(8, -1).sum(dim=1).tolist() == [25] * 8


@pytest.mark.parametrize(
    ("shape", "kwargs", "error", "match"),
    [
        ((2, 3, 64, 64), {"mask_ratio": 1.0}, ValueError, r"\[0, 1\)"),
        ((2, 3, 64, 64), {"mask_ratio": -0.1}, ValueError, r"\[0, 1\)"),
        ((2, 3, 64, 64), {"mask_ratio": 0.9}, ValueError, "= 0 of 4 grid cells: at least one"),
        ((2, 3, 64, 80), {}, ValueError, "not divisible by cell_size=32"),
        # more cells than a mask selects among: the cell size that fits named (helper-246)
        (
            (1, 1, 4096, 4096),
            {},
            ValueError,
            r"16384 cells of cell_size=32, more .* 8192 .* \(cell_size=64 gives 4096\)",
        ),
        ((2, 3, 64, 64), {"cell_size": 0}, ValueError, "cell_size"),
        ((3, 64, 64), {}, ValueError, "4-D"),
        ((2, 3, 64, 64), {"fill_value": True}, TypeError, "fill_value"),
        ((2, 3, 64, 64), {"seed": 2**63}, ValueError, "seed must be an int64 value"),
    ],
)
def test_mask_image_bad_input(shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        mk.mask_image_grid(torch.zeros(shape), **kwargs)


@pytest.mark.parametrize(
    ("shape", "got"),
    [
        ((1, 2**16, 32, 2**15 + 32), f"32 rows of {2**31 + 2**21}, a height of 32"),
        ((2**26, 1, 32, 32), f"{2**31} rows of 32, a height of 32"),
        ((1, 1, 65536 + 32, 32), "65568 rows of 32, a height of 65568"),  # a GPU grid's 65535 blocks of rows
        ((1, 2**16, 32, 256), f"32 rows of {2**24}, a height of 32"),  # and of 256 elements of a row
    ],
)
def test_mask_image_refuses_rows_past_int_on_every_backend(backend, shape, got):
    # a zero-stride view: the shape without its memory (the check comes before any allocation or launch)
    with mk.use_backend(backend), pytest.raises(ValueError, match=f"at most 2147482623 rows .* got {got}"):
        mk.mask_image_grid(torch.zeros(1, device=DEVICE).expand(shape))


@pytest.mark.parametrize(
    ("cell_mask", "error", "match"),
    [
        (torch.zeros(2, 1, 1, dtype=torch.bool), ValueError, r"cell_mask must have shape \[2, 2, 2\]"),
        (torch.zeros(2, 2, 2, dtype=torch.uint8), TypeError, "cell_mask must be bool, got"),
        (
            torch.zeros(2, 4, dtype=torch.bool),
            ValueError,
            r"cell_mask must (have shape|be \[batch, gr)",
        ),
    ],
)
def test_the_internal_ops_refuse_a_bad_cell_mask_on_every_backend(backend, cell_mask, error, match):
    # helper-149: through torch.ops.masksub.*, the cuda binding refused these, Triton read past a [2, 1, 1] mask and
    # the torch backend broadcast it into the tokens (the public functions draw their own masks); of one kind on every
    # backend since helper-205 (the binding's were RuntimeErrors)
    images, tokens, cell_mask = randn(2, 3, 64, 64), randn(2, 16, 16, 4), cell_mask.to(DEVICE)
    with pytest.raises(error, match=match):
        torch.ops.masksub.mask_image_grid(images, cell_mask, 32, 0.0)
    with pytest.raises(error, match=match):
        torch.ops.masksub.mask_tokens_grid(tokens, torch.zeros(4, device=DEVICE), cell_mask, 8)
    with pytest.raises(error, match=match):  # helper-150: the backward op too
        torch.ops.masksub.mask_tokens_grid_backward(tokens, cell_mask, 8, True, True)


def test_an_image_smaller_than_a_cell_is_named_so():
    with pytest.raises(ValueError, match="images of 16 x 16 are smaller than one cell of cell_size=32"):
        mk.mask_image_grid(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="images of 64 x 60 are not divisible by cell_size=32"):  # helper-270: "is"
        mk.mask_image_grid(torch.zeros(2, 3, 64, 60))
    with pytest.raises(ValueError, match="tokens grid of 16 x 12 is not divisible by cell_size=8"):
        mk.mask_tokens_grid(torch.zeros(2, 16, 12, 4), torch.zeros(4))


def test_grid_extent_bound_is_exact():
    assert (gm.MAX_GRID_HEIGHT, gm.MAX_GRID_LINE) == (65535, 65535 * 256)  # a CUDA grid's y / z axes: 65535 blocks
    gm._check_extent(1, 1, gm.MAX_GRID_LINE, 1, "images")
    gm._check_extent(1, 1, 1, gm.MAX_GRID_LINE, "images")
    gm._check_extent(gm.MAX_GRID_EXTENT, 1, 1, 1, "images")
    gm._check_extent(1, gm.MAX_GRID_HEIGHT, 1, 1, "images")
    gm._check_extent(gm.MAX_GRID_EXTENT // gm.MAX_GRID_HEIGHT, gm.MAX_GRID_HEIGHT, 1, 1, "images")
    too_many = [(1, 1, gm.MAX_GRID_LINE + 1, 1), (1, 1, 1, gm.MAX_GRID_LINE + 1), (gm.MAX_GRID_EXTENT + 1, 1, 1, 1)]
    for shape in [*too_many, (1, gm.MAX_GRID_HEIGHT + 1, 1, 1)]:
        with pytest.raises(ValueError, match="images must have at most"):
            gm._check_extent(*shape, "images")


def test_random_grid_mask_counts_cells():
    # the grid masks name their positions cells, as the CUDA extension's check does (they said tokens)
    with pytest.raises(ValueError, match=r"num_keep must be in \[1, num_cells=4\], got 0"):
        mk.random_grid_mask(2, (2, 2), 0)
    with pytest.raises(ValueError, match=r"= 0 of 4 grid cells"):
        mk.mask_tokens_grid(torch.zeros(2, 16, 16, 3), torch.zeros(3), 0.9)


def test_mask_image_bad_dtype():
    with pytest.raises(TypeError, match="float32"):
        mk.mask_image_grid(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------------------------
# Across backends and under torch.compile
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_same_mask_on_every_backend():
    images, tokens = randn(2, 3, 64, 96), randn(2, 16, 24, 4)
    results = {}
    for name in mk.available_backends():
        with mk.use_backend(name):
            try:
                results[name] = (
                    mk.random_grid_mask(2, (2, 3), 3, seed=21, device=DEVICE),
                    mk.mask_image_grid(images, seed=21)[1],
                    mk.mask_tokens_grid(tokens, torch.zeros(4, device=DEVICE), seed=21)[1],
                )
            except RuntimeError:  # a backend that runs on another device only (cuda on a CPU tensor)
                continue
    expected = removed_from_keep_indices(2, 2, 3, 3, 21)
    assert results and all(torch.equal(mask, expected) for masks in results.values() for mask in masks)


def test_backend_is_reported():
    with mk.use_backend("torch"):
        mk.mask_image_grid(torch.zeros(1, 1, 32, 64), seed=0)
        mk.mask_tokens_grid(torch.zeros(1, 8, 16, 2), torch.zeros(2), seed=0)
    assert mk.last_backend("mask_image_grid") == mk.last_backend("mask_tokens_grid") == "torch"
    assert mk.last_backend("random_grid_mask") == "torch"


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    # the ops are opaque custom ops: no graph break, same values and gradients as eager; with dynamic=True the fill
    # value is a SymFloat, which the fill check tests without math.isfinite (helper-211: that was a graph break)
    def step(images, tokens, mask_token, fill):
        masked, _ = mk.mask_image_grid(images, 0.5, seed=3, fill_value=fill)
        out, _ = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=3)
        return (masked * 2).sum() + (out * out).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for batch, fill in ((2, 0.5), (3, -1.0)):
        inputs = [torch.randn(batch, 3, 64, 64), torch.randn(batch, 16, 16, 4), torch.randn(4)]
        eager = [x.clone().requires_grad_(True) for x in inputs]
        compiled_inputs = [x.clone().requires_grad_(True) for x in inputs]
        step(*eager, fill).backward()
        compiled(*compiled_inputs, fill).backward()
        for a, b in zip(eager, compiled_inputs):
            assert torch.equal(a.grad, b.grad)


def test_mask_ratio_rounding_matches_official_formula():
    # Kc = floor(Lc * (1 - r)), as int(L * (1 - r)) in the official code
    for ratio in (0.25, 0.5, 0.6, 0.75):
        _, mask = mk.mask_image_grid(torch.zeros(1, 1, 224, 224), ratio, seed=0)
        assert int((~mask).sum()) == math.floor(49 * (1 - ratio))


def test_seed_tensor_gives_the_int_seeds_mask(backend):
    # the int seed's masks on DEVICE, by the same backend: compiled Triton (and the cuda backend) take CUDA tensors
    # only, so a device="cpu" call under them is refused on a GPU machine (only the interpreter takes CPU tensors)
    seed = torch.tensor(2**40 + 7, dtype=torch.int64, device=DEVICE)
    mask = mk.random_grid_mask(3, (7, 7), 24, seed=seed)
    assert torch.equal(mask, mk.random_grid_mask(3, (7, 7), 24, seed=2**40 + 7, device=DEVICE))
    images = torch.randn(2, 3, 64, 96, device=DEVICE)
    masked, cells = mk.mask_image_grid(images, 0.5, seed=seed)
    assert torch.equal(cells, mk.random_grid_mask(2, (2, 3), 3, seed=2**40 + 7, device=DEVICE))
    assert torch.equal(masked, mk.mask_image_grid(images, 0.5, seed=2**40 + 7)[0])


def test_device_defaults_to_the_seed_tensors_not_the_default_device():  # helper-164's mutant C4
    seed = torch.tensor([3], dtype=torch.int64)  # a CPU seed tensor
    with torch.device("meta"):  # torch's default device is meta now
        mask = mk.random_grid_mask(2, 4, 5, seed=seed)
    assert mask.device == seed.device
    assert torch.equal(mask, mk.random_grid_mask(2, 4, 5, seed=3, device="cpu"))


def test_an_image_of_no_rows_is_an_empty_grid_not_a_too_small_one():  # helper-164: G3
    with pytest.raises(ValueError, match="an empty grid"):
        mk.mask_image_grid(torch.zeros(2, 3, 0, 64), 0.5, cell_size=32, seed=0)


def test_fill_value_may_be_the_dtypes_largest(backend):  # helper-164: G6, inclusive
    images = torch.ones(1, 1, 8, 8, dtype=torch.float16, device=DEVICE)
    masked, mask = mk.mask_image_grid(images, 0.5, cell_size=4, seed=0, fill_value=-65504.0)
    assert mask.any() and torch.equal(
        masked[0, 0][mask[0].repeat_interleave(4, 0).repeat_interleave(4, 1)],
        torch.full((32,), -65504.0, dtype=torch.float16, device=DEVICE),
    )


# helper-175's mutation audit of grid_mask.py: grid_size=True refused by name, the cell mask's device, the image
# kernel's row bound


def test_grid_mask_grid_size_true_is_refused_as_a_grid_size():
    # kills grid_mask.py:63 `... and not isinstance(grid_size, bool)` dropped: True became (True, True) and the
    # error named grid_h ("grid_h must be an int, got bool") instead of the grid_size argument the caller passed
    with pytest.raises(TypeError, match=r"grid_size must be an int or a pair \(grid_h, grid_w\), got True"):
        mk.random_grid_mask(2, True, 1, seed=0)


def test_grid_mask_check_cell_mask_refuses_a_mask_on_another_device():
    # kills grid_mask.py:105 `cell_mask.device != like.device` -> False (the device check dropped: a CUDA kernel
    # would read a host pointer, the torch backend fail later with torch's own message)
    images = torch.zeros(2, 3, 64, 64, device=DEVICE)
    cell_mask = torch.zeros(2, 2, 2, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match=r"cell_mask must be on .*, got meta"):
        gm.check_cell_mask(cell_mask, images, 64, 64, 32)


@pytest.mark.triton
@pytest.mark.skipif("triton" not in mk.available_backends(), reason="no Triton backend")
def test_grid_mask_image_kernel_writes_no_row_past_the_image(monkeypatch):
    # kills grid_mask.py:258 `ok = (h < H)` -> `(h <= H)`: the tail row block (H = 24, BLOCK_H = 32) wrote row H,
    # one past the output (the next plane's first row, or past the tensor for the last plane); the interpreter does
    # not bound-check, so the output is a view of a larger buffer whose extra row must stay untouched
    images_buffer = torch.full((2, 1, 25, 16), 5.0, device=DEVICE)
    out_buffer = torch.full((2, 1, 25, 16), -3.0, device=DEVICE)
    images, out = images_buffer[:, :, :24], out_buffer[:, :, :24]
    assert 24 % gm._tile(16, 24)[0]  # a tail row block, so a lane with h = H exists
    cell_mask = torch.zeros(2, 3, 2, dtype=torch.bool, device=DEVICE)
    cell_mask[:, 1, 0] = True
    guarded = guard(monkeypatch, gm, [out])
    result = gm._mask_image_triton(images, cell_mask, 8, 0.0)
    assert result is out
    expected = torch.full((2, 1, 24, 16), 5.0, device=DEVICE)
    expected[:, :, 8:16, :8] = 0.0
    assert torch.equal(out, expected)
    assert torch.equal(out_buffer[:, :, 24], torch.full((2, 1, 16), -3.0, device=DEVICE))
    assert not guarded.unused()  # every guarded view was the launcher's


@pytest.mark.triton
@pytest.mark.skipif("triton" not in mk.available_backends(), reason="no Triton backend")
def test_grid_mask_fused_kernel_writes_no_row_and_no_cell_past_its_outputs(monkeypatch):
    # kills grid_mask.py:328 `(rows < CELL)` -> `(rows <= CELL)` (12-row cells, BLOCK_H = 16: each plane's last
    # cell row writes row H, one past the image) and :321 `mask=(g < grid_w) & writer` -> `(g <= grid_w) & writer`
    # (the last cell row's writer stores one cell byte past the cell mask)
    B, C, H, W, cell, num_keep = 2, 2, 24, 24, 12, 2
    assert gm._tile(W, cell)[0] > cell  # rows r >= CELL exist in the row loop
    images = randn(B, C, H + 1, W)[:, :, :H]
    out_buffer = torch.full((B, C, H + 1, W), -3.0, device=DEVICE)
    out = out_buffer[:, :, :H]
    raw = torch.full((B * 2 * 2 + 16,), 7, dtype=torch.uint8, device=DEVICE)
    mask = raw[: B * 2 * 2].view(torch.bool).view(B, 2, 2)
    guarded = guard(monkeypatch, gm, [out, mask])  # helper-180: the outputs, views of sentinel-filled buffers
    result, cells = gm._mask_image_random_triton(images, 11, None, cell, num_keep, 0.5)
    assert result is out and cells is mask
    expected_cells = gm.cell_mask_reference(11, B, 4, num_keep, torch.device("cpu")).view(B, 2, 2)
    assert torch.equal(cells.cpu(), expected_cells)
    assert torch.equal(out.cpu(), gm.mask_image_reference(images.cpu(), expected_cells, cell, 0.5))
    assert torch.equal(out_buffer[:, :, H].cpu(), torch.full((B, C, W), -3.0))
    assert torch.equal(raw[B * 2 * 2 :].cpu(), torch.full((16,), 7, dtype=torch.uint8))
    assert not guarded.unused()  # every guarded view was the launcher's


@pytest.mark.parametrize("backend", kernel_backends())
def test_random_cells_break_equal_draws_by_position(backend):
    # Equal 32-bit draws rank by cell position on every backend (the reference's stable order): seed 14395 has two
    # equal draws in sample 12 of a 16 x 16 grid (helper-181 searched them out: ~1 row in 130000), and the kept
    # count puts the cut between them, so the rule decides which of the two is removed
    from masksub_kernels._philox import philox_uint32

    seed, batch, grid, cell = 14395, 13, 16, 2
    draws = philox_uint32(seed, torch.arange(batch * grid * grid).view(batch, grid * grid))[12]
    values, counts = draws.unique(return_counts=True)
    tied = int(values[counts > 1][0])
    num_keep = int((draws < tied).sum()) + 1
    ratio = 1 - num_keep / grid**2
    assert mk.num_kept_tokens(grid**2, ratio, unit="grid cells") == num_keep
    images = randn(batch, 1, grid * cell, grid * cell)
    with mk.use_backend("torch"):
        expected_out, expected_mask = mk.mask_image_grid(images.cpu(), ratio, cell_size=cell, seed=seed)
    first, second = (draws == tied).nonzero().flatten().tolist()
    assert not expected_mask[12].flatten()[first] and expected_mask[12].flatten()[second]
    with mk.use_backend(backend):
        out, mask = mk.mask_image_grid(images, ratio, cell_size=cell, seed=seed)
    assert torch.equal(mask.cpu(), expected_mask) and torch.equal(out.cpu(), expected_out)


@pytest.mark.parametrize("height", [80, 64 + 8])
def test_a_height_off_the_cells_is_refused_on_every_backend(backend, height):
    # helper-209: every not-divisible case had its width off the cells (64 x 80, tokens 16 x 12); a height off them
    # alone was let through by a check of the width only, and the backends then masked a floored grid (the torch
    # reference failed with a shape mismatch, Triton left the last rows unmasked)
    images = torch.zeros(2, 3, height, 64, device=DEVICE)
    with pytest.raises(ValueError, match="not divisible by cell_size=32"):
        mk.mask_image_grid(images)
    with pytest.raises(ValueError, match="not divisible by cell_size=32"):  # the op's own check too
        torch.ops.masksub.mask_image_grid_random(images, 3, None, 32, 1, 0.0)
    cells = torch.zeros(2, height // 32, 2, dtype=torch.bool, device=DEVICE)  # the floored grid's mask
    with pytest.raises(ValueError, match="not divisible by cell_size=32"):  # the cell mask's check (check_cell_mask)
        torch.ops.masksub.mask_image_grid(images, cells, 32, 0.0)
    tokens = torch.zeros(2, height // 4, 16, 8, device=DEVICE)
    with pytest.raises(ValueError, match="not divisible by cell_size=8"):
        mk.mask_tokens_grid(tokens, torch.zeros(8, device=DEVICE))


def test_the_internal_ops_refuse_a_cell_mask_of_another_batch_on_every_backend(backend):
    # a [1, G_h, G_w] mask for 2 images: the torch backend broadcast it over the batch, Triton read past it for image 1
    images, tokens = (
        torch.randn(2, 3, 64, 64, device=DEVICE),
        torch.randn(2, 16, 16, 4, device=DEVICE),
    )
    one = torch.zeros(1, 2, 2, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match=r"cell_mask must have shape \[2, 2, 2\], got \[1, 2, 2\]"):
        torch.ops.masksub.mask_image_grid(images, one, 32, 0.0)
    with pytest.raises(ValueError, match=r"cell_mask must have shape \[2, 2, 2\], got \[1, 2, 2\]"):
        torch.ops.masksub.mask_tokens_grid(tokens, torch.zeros(4, device=DEVICE), one, 8)
    with pytest.raises(ValueError, match=r"cell_mask must have shape \[2, 2, 2\], got \[1, 2, 2\]"):
        torch.ops.masksub.mask_tokens_grid_backward(tokens, one, 8, True, True)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_images_and_tokens_are_refused_as_a_type_error(dtype):
    # floating point, but none of the four dtypes the kernels take: a TypeError naming them, not a failure inside a
    # backend (the fill value's bit pattern has no 8-bit integer type)
    images, tokens = (
        torch.zeros(2, 3, 64, 64, dtype=dtype),
        torch.zeros(2, 16, 16, 4, dtype=dtype),
    )
    with pytest.raises(TypeError, match="images must be float32, float16, bfloat16 or float64"):
        mk.mask_image_grid(images.to(DEVICE))
    with pytest.raises(TypeError, match="tokens must be float32, float16, bfloat16 or float64"):
        mk.mask_tokens_grid(tokens.to(DEVICE), torch.zeros(4, dtype=dtype, device=DEVICE))


# helper-250's mutation audit (the mutant named in the comment)
# kills _grid_checks.py `cells > MAX_TOKENS` -> `>=` (M30: a grid of exactly 8192 cells refused), the hint's
# `<= MAX_TOKENS` -> `<` (M31: 8192 cells fit, a larger size was named), its range's `min(height, width) + 1` ->
# `min(height, width)` (M33: a cell as large as the shorter side was never named), `if larger else ""` dropped
# (M32: no size fits, and the message raised a TypeError instead)
def test_the_cell_count_limit_and_its_hint_at_their_edges():
    from masksub_kernels.ops._grid_checks import _cell_grid

    assert _cell_grid(64, 128, 1, "images") == (1, 64, 128)  # 8192 cells: the limit itself
    with mk.use_backend("torch"):
        _, mask = mk.mask_image_grid(torch.zeros(1, 1, 64, 128), 0.5, cell_size=1, seed=0)
    assert mask.shape == (1, 64, 128) and int(mask.sum()) == 4096
    cases = (((4096, 8192, 32), r" \(cell_size=64 gives 8192\)"), ((97, 9700, 1), r" \(cell_size=97 gives 100\)"),
             ((1, 8193, 1), ""))  # fmt: skip
    for (height, width, size), hint in cases:
        with pytest.raises(ValueError, match=rf"cell_size={size}, more than the 8192 a mask selects among{hint}$"):
            _cell_grid(height, width, size, "images")
