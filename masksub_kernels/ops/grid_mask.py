"""Structured grid masks: the removed cells of a grid, and CNN image masking by cells, with fused kernels.

Maths (docs/semantics.md, §5 and §9). An H x W map is cut into cells of S x S (S = ``cell_size``): a
G_h x G_w grid, Lc = G_h * G_w cells numbered row-major (cell (i, j) is number i * G_w + j). Per sample keep
Kc = floor(Lc * (1 - r)) cells; the other Lc - Kc are *removed*:

    kept cells of sample b = random_keep_indices(B, Lc, Kc, seed)[b]     (one definition with the ViT token masks)
    M[b, i, j] = 1 if cell (i, j) of sample b is removed else 0          -> the returned bool mask [B, G_h, G_w]
    M_px[b, h, w] = M[b, h // S, w // S]                                  (never materialised by the kernels)

    images  I[B, C, H, W]:  I_out = I where M_px = 0, fill_value where M_px = 1;   dI = dI_out * (1 - M_px)

The same cells and mask M serve the Swin token masks with a learnable mask token (token_grid_mask.py). Every backend
computes the output as a select (``where``), which equals the arithmetic form for finite values (up to the sign of a
zero); the gradient is a select too (``masked_fill`` semantics), so both are bit-exact.

Difference from the official code (ResNet): it multiplies the images by the *remove* mask, i.e. zeroes the kept
cells; at r = 0.5 on 49 cells that zeroes 24 cells instead of 25, and at other ratios it inverts the ratio. This
library zeroes the removed cells, the intent its comment states. The official Swin loop hard-codes r = 0.5; this
library honours the ratio. At 224 px (S = 32 pixels, or 8 tokens of 56 x 56) and r = 0.5: 24 kept, 25 removed.

Launches on the GPU and bytes moved (N = elements, e = element size, r' = removed fraction):
- cell mask alone (random_grid_mask): one program per sample (Philox keys of its Lc cells, one sort, the mask
  bytes written by rank);
- mask_image_grid forward: one launch for the cell mask and the masking (a program per plane and cell row ranks its
  row's cells among the sample's keys, writes those cells' mask bytes once, then masks its CELL rows): reads the
  input only where kept (N * e * (1 - r')), writes the output once (N * e) and the mask (B * Lc bytes);
- image backward: the masking pass with the returned mask and fill 0: reads the cell byte of each element (cached), the
  gradient only where kept, writes d images once.
"""

from __future__ import annotations

import torch

from .._philox import load_seed, philox_sort_keys, resolve_seed, seed_value
from .._triton import jit, next_power_of_2, tl
from ._common import cdiv, check_float_tensor, check_keep_args, masksub_op, resolve_device, sort_warps
from ._grid_checks import (  # noqa: F401 (MAX_GRID_*: the ops' public bounds, read from here)
    MAX_GRID_EXTENT,
    MAX_GRID_HEIGHT,
    MAX_GRID_LINE,
    _cell_grid,
    _check_extent,
    _check_fill_value,
    _check_int,
    _grid_size,
    _image_op_sizes,
    _random_cell_sizes,
    check_cell_mask,
)
from ._token_select_reference import select_reference
from .token_select import num_kept_tokens

_BITS_DTYPE = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> int type of the same width
TILE_ELEMENTS = 2048  # elements per tile of the pixel/token passes (16 per thread at 4 warps)


# ----------------------------------------------------------------------------------------------------------------
# Reference (PyTorch): the oracle and the CPU fallback
# ----------------------------------------------------------------------------------------------------------------


def cell_mask_reference(
    seed: int, batch_size: int, num_cells: int, num_keep: int, device: torch.device
) -> torch.Tensor:
    """bool [B, Lc], True where removed: everything but ``select_reference``'s kept ids (the token definition)."""
    ids = select_reference(seed, batch_size, num_cells, num_keep, device, False)
    removed = torch.ones(batch_size, num_cells, dtype=torch.bool, device=device)
    return removed.scatter_(1, ids, False)


def pixel_mask_reference(cell_mask: torch.Tensor, cell_size: int) -> torch.Tensor:
    """bool [B, G_h*S, G_w*S] from [B, G_h, G_w] (the reference materialises it; the kernels never do)."""
    return cell_mask.repeat_interleave(cell_size, dim=1).repeat_interleave(cell_size, dim=2)


def mask_image_reference(
    images: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, fill_value: float
) -> torch.Tensor:
    """Removed cells of images [B, C, H, W] set to fill_value; the output keeps the input's layout."""
    out = images.clone()  # preserve_format: channels_last stays channels_last
    return out.masked_fill_(pixel_mask_reference(cell_mask, cell_size)[:, None], fill_value)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@jit(do_not_specialize=("seed",))
def _cell_mask_kernel(
    mask_ptr,  # uint8 [B, Lc] out (the bool mask's bytes)
    seed,
    seed_ptr,  # int64 [1]: the seed when SEED_FROM_PTR (a seed tensor), else unused
    L,
    K,
    SEED_FROM_PTR: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # One program per sample: the Philox keys of its Lc cells (token_select's definition), one sort; the cells of
    # rank < K are kept (0), the others removed (1). Each cell is written once, at its position.
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_L)
    keys = philox_sort_keys(load_seed(seed, seed_ptr, SEED_FROM_PTR), row, lanes, L)
    keys = tl.sort(tl.where(lanes < L, keys, 9223372036854775807))  # padding lanes sort last
    positions = keys - ((keys >> 32) << 32)  # low 32 bits: the cell, in ascending-draw order
    tl.store(mask_ptr + row * L + positions, (lanes >= K).to(tl.uint8), mask=lanes < L)


@jit
def _image_columns(plane, cols, C, W, sxb, sxc, sxw, syb, syc, syw, CELL, CHANNELS_LAST, ROW_CONTIGUOUS):
    """(sample, column ok, x / y plane bases, cell column, x / y column offsets) of a tile's columns. NCHW: plane
    = (b, c), columns w; channels_last: plane = b, columns (w, c) flattened, the contiguous dimension."""
    if CHANNELS_LAST:
        b = plane
        col_ok = cols < W * C
        x_base, y_base = b.to(tl.int64) * sxb, b.to(tl.int64) * syb
        if ROW_CONTIGUOUS:
            # column (w, c) = w C + c is the offset within the row: contiguous addresses the compiler can prove,
            # so 16-byte accesses; its cell column is (w C + c) // (C CELL) = w // CELL (c < C)
            cell_col = cols // (C * CELL)
            x_col = cols.to(tl.int64)
            y_col = x_col
        else:
            w = cols // C
            c = cols - w * C
            cell_col = w // CELL
            x_col = w.to(tl.int64) * sxw + c.to(tl.int64) * sxc  # int64: c * syc may pass 2^31
            y_col = w.to(tl.int64) * syw + c.to(tl.int64) * syc
    else:
        b = plane // C
        c = plane - b * C
        cell_col = cols // CELL
        col_ok = cols < W
        x_col, y_col = cols.to(tl.int64) * sxw, cols.to(tl.int64) * syw
        x_base = b.to(tl.int64) * sxb + c.to(tl.int64) * sxc
        y_base = b.to(tl.int64) * syb + c.to(tl.int64) * syc
    return b, col_ok, x_base, y_base, cell_col, x_col, y_col


@jit
def _mask_rows(x_ptr, y_ptr, h, ok, removed, x_base, y_base, x_col, y_col, sxh, syh, fill_bits, FILL_INT):
    """y = fill where removed, else x, on a tile of rows h x columns; removed elements read nothing."""
    x_offsets = x_base + (h.to(tl.int64) * sxh)[:, None] + x_col[None, :]
    x = tl.load(x_ptr + x_offsets, mask=ok & ~removed, other=0)
    fill = (fill_bits + tl.zeros([1, 1], tl.int64)).to(FILL_INT).to(x.dtype, bitcast=True)  # exact in any dtype
    y_offsets = y_base + (h.to(tl.int64) * syh)[:, None] + y_col[None, :]
    tl.store(y_ptr + y_offsets, tl.where(removed, fill, x), mask=ok)


@jit
def _mask_image_kernel(
    x_ptr,  # [B, C, H, W], any strides
    cell_ptr,  # uint8 [B, G_h, G_w]
    y_ptr,  # [B, C, H, W] out, any strides
    fill_bits,  # the fill value's bit pattern in the image dtype, as a signed int
    C,
    H,
    W,
    sxb,
    sxc,
    sxh,
    sxw,
    syb,
    syc,
    syh,
    syw,
    CELL: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ROW_CONTIGUOUS: tl.constexpr,  # channels_last with x and y rows of W C contiguous elements (sxw = syw = C)
    FILL_INT: tl.constexpr,  # the int type of the image dtype's width: tl.int16 / int32 / int64
    RUN: tl.constexpr,  # aligned runs of RUN columns lie in one cell (a power of two dividing CELL, <= BLOCK_K)
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Grid (plane, row block, column block), a given cell mask. Removed cells read nothing.
    plane = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    b, col_ok, x_base, y_base, cell_col, x_col, y_col = _image_columns(
        plane, cols, C, W, sxb, sxc, sxw, syb, syc, syw, CELL, CHANNELS_LAST, ROW_CONTIGUOUS
    )
    ok = (h < H)[:, None] & col_ok[None, :]
    cell = ((b.to(tl.int64) * (H // CELL) + h // CELL) * (W // CELL))[:, None] + cell_col[None, :]  # B Lc >= 2^31
    # the loaded cell bytes are constant over runs of RUN columns: saying so lets the masked loads vectorise
    removed = tl.max_constancy(tl.load(cell_ptr + cell, mask=ok, other=0) != 0, [1, RUN])
    _mask_rows(x_ptr, y_ptr, h, ok, removed, x_base, y_base, x_col, y_col, sxh, syh, fill_bits, FILL_INT)


@jit(do_not_specialize=("seed",))
def _mask_image_random_kernel(
    x_ptr,  # [B, C, H, W], any strides
    y_ptr,  # [B, C, H, W] out, any strides
    mask_ptr,  # uint8 [B, G_h * G_w] out: the cell mask (1 = removed)
    seed,
    seed_ptr,  # int64 [1]: the seed when SEED_FROM_PTR (a seed tensor), else unused
    num_keep,
    fill_bits,
    C,
    H,
    W,
    sxb,
    sxc,
    sxh,
    sxw,
    syb,
    syc,
    syh,
    syw,
    CELL: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ROW_CONTIGUOUS: tl.constexpr,
    FILL_INT: tl.constexpr,
    RUN: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    BLOCK_L: tl.constexpr,  # a power of two >= the cells per sample, G_h G_w
    BLOCK_G: tl.constexpr,  # a power of two >= the cells per row, G_w
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Grid (plane, cell row, column block): the cell mask and the masking in one launch. Each program ranks the
    # cells of its cell row among its sample's Lc Philox keys (the cell mask kernel's draws: a cell is removed when
    # rank >= K, the same cells as the sort by rank there; keys are distinct, their low bits being the cell), then
    # masks the CELL rows of its columns. Ranking G_w cells costs BLOCK_G x BLOCK_L comparisons per program,
    # amortised over CELL x BLOCK_K elements; no second launch, no mask round trip through memory.
    plane, cell_row = tl.program_id(0), tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    b, col_ok, x_base, y_base, cell_col, x_col, y_col = _image_columns(
        plane, cols, C, W, sxb, sxc, sxw, syb, syc, syw, CELL, CHANNELS_LAST, ROW_CONTIGUOUS
    )
    grid_w = W // CELL
    num_cells = (H // CELL) * grid_w
    key = load_seed(seed, seed_ptr, SEED_FROM_PTR)
    lanes = tl.arange(0, BLOCK_L)
    keys = philox_sort_keys(key, b, lanes, num_cells)
    keys = tl.where(lanes < num_cells, keys, 9223372036854775807)  # padding lanes rank last
    g = tl.arange(0, BLOCK_G)
    cells = cell_row * grid_w + g
    rank = tl.sum((keys[None, :] < philox_sort_keys(key, b, cells, num_cells)[:, None]).to(tl.int32), axis=1)
    removed_cell = rank >= num_keep  # [BLOCK_G]
    # one writer per (sample, cell row): channel 0's program (NCHW) of the first column block
    if CHANNELS_LAST:
        writer = tl.program_id(2) == 0
    else:
        writer = (tl.program_id(2) == 0) & (plane == b * C)
    tl.store(mask_ptr + b.to(tl.int64) * num_cells + cells, removed_cell.to(tl.uint8), mask=(g < grid_w) & writer)
    # each column's cell flag, by selecting among the row's G_w flags; constant over runs of RUN columns
    hit = (cell_col[:, None] == g[None, :]) & removed_cell[None, :]
    removed = tl.max_constancy(tl.max(hit.to(tl.int32), axis=1) != 0, [RUN])[None, :]
    for r in range(0, CELL, BLOCK_H):
        rows = r + tl.arange(0, BLOCK_H)
        h = cell_row * CELL + rows
        ok = (rows < CELL)[:, None] & col_ok[None, :]
        _mask_rows(x_ptr, y_ptr, h, ok, removed, x_base, y_base, x_col, y_col, sxh, syh, fill_bits, FILL_INT)


# ----------------------------------------------------------------------------------------------------------------
# Launchers. The CUDA extension (masksub_kernels._C, csrc/grid_mask.cu) takes the same arguments:
#   _C.grid_cell_mask(seed, seed_tensor or None, batch_size, num_cells, num_keep, device) -> bool [B, Lc]
#   _C.mask_image_grid(images, cell_mask, cell_size, fill_value) -> [B, C, H, W], images' layout (empty_like)
#   _C.mask_image_grid_random(images, seed, seed_tensor or None, cell_size, num_keep, fill_value) -> (masked, cell
#       mask [B, G_h, G_w]): the two above in one launch where a block can draw a sample's cells (Lc <= 256)
# cell_mask: bool [B, G_h, G_w] contiguous. The token ops of csrc/grid_mask.cu are launched in token_grid_mask.py.
# ----------------------------------------------------------------------------------------------------------------


def _tile(n_cols: int, n_rows: int) -> tuple[int, int]:
    """(rows, columns) of a tile: TILE_ELEMENTS per program, inner blocks of up to 256 columns."""
    block_k = min(next_power_of_2(n_cols), 256)
    return max(1, min(next_power_of_2(n_rows), TILE_ELEMENTS // block_k)), block_k


def _fill_bits(fill_value: float, dtype: torch.dtype) -> int:
    """The bit pattern of fill_value rounded to dtype, as a signed int of the dtype's width. Computed with a CPU
    tensor (torch's own rounding to fp16/bf16), so it never touches the device."""
    return torch.tensor([fill_value], dtype=dtype, device="cpu").view(_BITS_DTYPE[dtype.itemsize]).tolist()[0]


def _cell_mask_triton(
    seed: int, seed_tensor: torch.Tensor | None, batch_size: int, num_cells: int, num_keep: int, device: torch.device
):
    mask = torch.empty(batch_size, num_cells, dtype=torch.bool, device=device)
    if batch_size > 0:
        block = max(16, next_power_of_2(num_cells))
        seed_ptr = seed_tensor if seed_tensor is not None else mask.view(torch.uint8)
        _cell_mask_kernel[(batch_size,)](
            mask.view(torch.uint8), seed, seed_ptr, num_cells, num_keep, SEED_FROM_PTR=seed_tensor is not None,
            BLOCK_L=block, num_warps=sort_warps(block),
        )  # fmt: skip
    return mask


def _image_launch(images: torch.Tensor, out: torch.Tensor, cell_size: int, fill_value: float):
    """(planes, columns per plane, meta-parameters, scalars) shared by the two image kernels' launches."""
    batch_size, channels, height, width = images.shape
    channels_last = images.stride(1) == 1 and channels > 1
    planes, n_cols = (batch_size, width * channels) if channels_last else (batch_size * channels, width)
    meta = {"CELL": cell_size, "CHANNELS_LAST": channels_last, "FILL_INT": _int_type(images.dtype)}
    rows = (images.stride(3), out.stride(3))
    meta["ROW_CONTIGUOUS"] = channels_last and rows == (channels, channels) and out.stride(1) == 1
    scalars = (_fill_bits(fill_value, images.dtype), channels, height, width, *images.stride(), *out.stride())
    return planes, n_cols, meta, scalars


def _mask_image_triton(
    images: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, fill_value: float
) -> torch.Tensor:
    out = torch.empty_like(images)  # same layout as the input (contiguous or channels_last)
    if images.numel():
        planes, n_cols, meta, scalars = _image_launch(images, out, cell_size, fill_value)
        block_h, block_k = _tile(n_cols, images.shape[2])
        meta["RUN"] = min(cell_size & -cell_size, block_k)
        grid = (planes, cdiv(images.shape[2], block_h), cdiv(n_cols, block_k))
        _mask_image_kernel[grid](
            images, cell_mask.view(torch.uint8), out, *scalars, BLOCK_H=block_h, BLOCK_K=block_k, **meta
        )
    return out


# The one-launch path ranks a cell row's cells among all the sample's keys: a [BLOCK_G, BLOCK_L] comparison per program.
# Up to this many elements (16 x 256: a 16 x 16 grid, 512 px images in 32-pixel cells) it stays in registers; larger
# grids take the two launches (the cell mask kernel sorts, then the masking pass).
FUSED_RANK_ELEMENTS = 4096


def _mask_image_random_triton(
    images: torch.Tensor, seed: int, seed_tensor: torch.Tensor | None, cell_size: int, num_keep: int, fill_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell mask and the masked images: one launch (_mask_image_random_kernel) up to FUSED_RANK_ELEMENTS."""
    batch_size, _, height, width = images.shape
    grid_h, grid_w = height // cell_size, width // cell_size
    block_l, block_g = max(16, next_power_of_2(grid_h * grid_w)), max(16, next_power_of_2(grid_w))
    if block_l * block_g > FUSED_RANK_ELEMENTS:
        cells = _cell_mask_triton(seed, seed_tensor, batch_size, grid_h * grid_w, num_keep, images.device)
        mask = cells.view(batch_size, grid_h, grid_w)
        return _mask_image_triton(images, mask, cell_size, fill_value), mask
    out = torch.empty_like(images)
    mask = torch.empty(batch_size, grid_h, grid_w, dtype=torch.bool, device=images.device)
    if images.numel():
        planes, n_cols, meta, scalars = _image_launch(images, out, cell_size, fill_value)
        block_h, block_k = _tile(n_cols, cell_size)
        meta["RUN"] = min(cell_size & -cell_size, block_k)
        seed_ptr = seed_tensor if seed_tensor is not None else mask.view(torch.uint8)
        _mask_image_random_kernel[(planes, grid_h, cdiv(n_cols, block_k))](
            images, out, mask.view(torch.uint8), seed, seed_ptr, num_keep, *scalars, SEED_FROM_PTR=seed_tensor
            is not None, BLOCK_L=block_l, BLOCK_G=block_g, BLOCK_H=block_h, BLOCK_K=block_k, **meta,
        )  # fmt: skip
    elif mask.numel():  # no pixels (C = 0) but cells: the mask alone
        mask.copy_(
            _cell_mask_triton(seed, seed_tensor, batch_size, grid_h * grid_w, num_keep, mask.device).view_as(mask)
        )
    return out, mask


def _int_type(dtype: torch.dtype):
    return {2: tl.int16, 4: tl.int32, 8: tl.int64}[dtype.itemsize]


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, no host syncs) and autograd
# ----------------------------------------------------------------------------------------------------------------


@masksub_op(
    "grid_cell_mask",
    device="device",
    check=lambda seed, seed_tensor, batch, cells, keep, device: _random_cell_sizes(
        batch, 1, cells, 1, keep, seed_tensor, device
    ),  # a 1 x cells map of cells of 1
    torch=lambda seed, seed_tensor, *sizes: cell_mask_reference(seed_value(seed, seed_tensor), *sizes),
    triton=_cell_mask_triton,
    cuda=lambda extension, *args: extension.grid_cell_mask(*args),
    records=("random_grid_mask",),
)
def _cell_mask_op(
    seed: int, seed_tensor: torch.Tensor | None, batch_size: int, num_cells: int, num_keep: int, device: torch.device
) -> torch.Tensor:
    """bool [B, L] cell mask, True on the masked cells."""


@_cell_mask_op.register_fake
def _(seed, seed_tensor, batch_size, num_cells, num_keep, device):
    return torch.empty(batch_size, num_cells, dtype=torch.bool, device=device)


def _mask_image_sizes(images, cell_mask, cell_size, fill_value) -> None:
    """mask_image_grid's own check: the images and the fill value, then the given cell mask against them (before
    any backend and in the meta device's fake)."""
    _image_op_sizes(images, cell_size, fill_value)
    check_cell_mask(cell_mask, images, images.shape[2], images.shape[3], cell_size)


@masksub_op(
    "mask_image_grid",
    device="images",
    check=_mask_image_sizes,
    torch=mask_image_reference,
    triton=_mask_image_triton,
    cuda=lambda extension, *args: extension.mask_image_grid(*args),
)
def _mask_image_op(images: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, fill_value: float) -> torch.Tensor:
    """[B, C, H, W] images with the masked cells filled, in the images' layout."""


@_mask_image_op.register_fake
def _(images, cell_mask, cell_size, fill_value):
    return torch.empty_like(images)


def _mask_image_random_reference(images, seed, seed_tensor, cell_size, num_keep, fill_value):
    batch_size, _, height, width = images.shape
    grid = (batch_size, height // cell_size, width // cell_size)
    mask = cell_mask_reference(seed_value(seed, seed_tensor), batch_size, grid[1] * grid[2], num_keep, images.device)
    return mask_image_reference(images, mask.view(grid), cell_size, fill_value), mask.view(grid)


def _mask_image_random_cuda(extension, images, seed, seed_tensor, cell_size, num_keep, fill_value):
    return tuple(extension.mask_image_grid_random(images, seed, seed_tensor, cell_size, num_keep, fill_value))


@masksub_op(
    "mask_image_grid_random",
    device="images",
    check=lambda images, seed, seed_tensor, cell_size, num_keep, fill: _image_op_sizes(
        images, cell_size, fill, num_keep, seed_tensor
    ),
    torch=_mask_image_random_reference,
    triton=_mask_image_random_triton,  # one launch: the cell mask and the masking
    cuda=_mask_image_random_cuda,  # one launch too, up to 256 cells (csrc/grid_mask.cu)
    records=("mask_image_grid", "random_grid_mask"),
)
def _mask_image_random_op(
    images: torch.Tensor,
    seed: int,
    seed_tensor: torch.Tensor | None,
    cell_size: int,
    num_keep: int,
    fill_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked [B, C, H, W] in the images' layout, bool cell mask [B, G_h, G_w], True on the removed cells)."""


@_mask_image_random_op.register_fake
def _(images, seed, seed_tensor, cell_size, num_keep, fill_value):
    grid = (images.shape[0], images.shape[2] // cell_size, images.shape[3] // cell_size)
    return torch.empty_like(images), torch.empty(grid, dtype=torch.bool, device=images.device)


def _mask_image_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.cell_size = inputs[2]


def _mask_image_backward(ctx, grad_out):
    # dI = dI_out with the removed cells zeroed: the same op with fill 0 (so it is differentiable again).
    (cell_mask,) = ctx.saved_tensors
    return _mask_image_op(grad_out, cell_mask, ctx.cell_size, 0.0), None, None, None


_mask_image_op.register_autograd(_mask_image_backward, setup_context=_mask_image_setup_context, differentiable=True)


def _mask_image_random_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.cell_size = inputs[3]


def _mask_image_random_backward(ctx, grad_out, _):
    (cell_mask,) = ctx.saved_tensors
    grad = None if grad_out is None else _mask_image_op(grad_out, cell_mask, ctx.cell_size, 0.0)
    return grad, None, None, None, None, None


_mask_image_random_op.register_autograd(
    _mask_image_random_backward, setup_context=_mask_image_random_setup_context, differentiable=True
)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def random_grid_mask(
    batch_size: int,
    grid_size: int | tuple[int, int],
    num_keep: int,
    *,
    seed: int | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per sample, which cells of a G_h x G_w grid are removed: bool [batch_size, G_h, G_w], True = removed.

    ``grid_size`` is (G_h, G_w) or an int for a square grid. Contract: the kept cells of sample b are exactly
    ``random_keep_indices(batch_size, G_h * G_w, num_keep, seed=seed)[b]`` in row-major cell numbering, so token
    and grid masks share one definition; ``num_keep`` cells are kept and G_h * G_w - num_keep removed per sample.
    The same ``seed`` gives the same mask on every backend and device; ``seed=None`` draws one from torch's
    default generator; an int64 tensor of one element is read on the device (see ``random_keep_indices``).
    ``device`` defaults to the seed tensor's device, else torch's default device.
    """
    grid_h, grid_w = _grid_size(grid_size)
    batch_size, _, num_keep = check_keep_args(batch_size, grid_h * grid_w, num_keep, "num_cells")
    device = resolve_device(device, seed)
    seed, seed_tensor = resolve_seed(seed, device)
    mask = _cell_mask_op(seed, seed_tensor, batch_size, grid_h * grid_w, num_keep, device)
    return mask.view(batch_size, grid_h, grid_w)


def mask_image_grid(
    images: torch.Tensor,
    mask_ratio: float = 0.5,
    *,
    cell_size: int = 32,
    seed: int | torch.Tensor | None = None,
    fill_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskSub's CNN sub-branch masking: set the removed cells of the images to ``fill_value``, in one pass.

    images: [B, C, H, W] float (fp32/fp16/bf16/fp64), contiguous or channels_last (any strides work); H and W
    must be multiples of ``cell_size`` (else ValueError: no silent crop); B x H at most 2**31 - 1025, H at most
    65535 and W x C at most 65535 x 256 (``MAX_GRID_*``, every backend), and at most 8192 cells (the selection's
    limit: 4096 x 4096 images need ``cell_size`` >= 64). Of the Lc = (H/S)(W/S) cells, Kc = floor(Lc * (1 -
    mask_ratio)) are kept per sample, the rest set to ``fill_value`` (rounded to the dtype;
    0 is the normalised mean colour). Returns (masked [B, C, H, W] of images' dtype and layout, mask bool
    [B, H/S, W/S], True = removed, equal to ``random_grid_mask(B, (H/S, W/S), Kc, seed=seed)``).

    Differentiable in ``images``: d images = d masked with the removed cells zeroed. Note the official code
    zeroes the *kept* cells instead (see the module docstring).
    """
    check_float_tensor("images", images, "[B, C, H, W]", 4)
    cell_size, grid_h, grid_w = _cell_grid(images.shape[2], images.shape[3], cell_size, "images")
    batch, channels, height, width = images.shape
    _check_extent(batch, height, width, channels, "images")
    _check_fill_value(fill_value, images.dtype)
    num_keep = num_kept_tokens(grid_h * grid_w, mask_ratio, unit="grid cells")
    check_keep_args(images.shape[0], grid_h * grid_w, num_keep, "num_cells")
    seed, seed_tensor = resolve_seed(seed, images.device)
    return tuple(_mask_image_random_op(images, seed, seed_tensor, cell_size, num_keep, float(fill_value)))
