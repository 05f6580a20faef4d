"""The grid masks' argument checks (grid_mask.py, token_grid_mask.py): cell sizes that tile the map, the extents the
kernels count in int and a GPU grid takes, the internal ops' cell masks, fill values and tensors, and the random
ops' own check of their sizes (MaskSubOp's ``check``, for a direct torch.ops.masksub call). Metadata only: no check
here reads a tensor's values."""

from __future__ import annotations

import math
import numbers

import torch

from .._philox import resolve_seed
from ._common import MAX_TOKENS, check_float_tensor, check_int, check_keep_args


def _check_int(name: str, value, low: int = 1) -> int:
    value = check_int(name, value)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _grid_size(grid_size) -> tuple[int, int]:
    if isinstance(grid_size, numbers.Integral) and not isinstance(grid_size, bool):
        grid_size = (grid_size, grid_size)
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise TypeError(f"grid_size must be an int or a pair (grid_h, grid_w), got {grid_size!r}")
    return _check_int("grid_h", grid_size[0]), _check_int("grid_w", grid_size[1])


def _cell_grid(height: int, width: int, cell_size: int, what: str) -> tuple[int, int, int]:
    """(S, G_h, G_w) for an H x W map of cells of S = ``cell_size``; cells that do not tile it: an error (no crop)."""
    cell_size = _check_int("cell_size", cell_size)
    verb = "are" if what.endswith("s") else "is"  # "images of 64 x 60 are", "the map of ... is"
    if 0 < min(height, width) < cell_size:  # (says more than "16 x 16 is not divisible by cell_size=32")
        raise ValueError(f"{what} of {height} x {width} {verb} smaller than one cell of cell_size={cell_size}")
    if height % cell_size or width % cell_size:
        raise ValueError(
            f"{what} of {height} x {width} {verb} not divisible by cell_size={cell_size}: resize or crop to a "
            "multiple of the cell size (grid masks never crop silently)"
        )
    cells = (height // cell_size) * (width // cell_size)
    if cells > MAX_TOKENS:  # (names a way out, as "num_cells must be in [1, 8192]" does not)
        fits = (s for s in range(cell_size + 1, min(height, width) + 1)
                if height % s == 0 and width % s == 0 and (height // s) * (width // s) <= MAX_TOKENS)  # fmt: skip
        larger = next(fits, None)
        hint = f" (cell_size={larger} gives {(height // larger) * (width // larger)})" if larger else ""
        raise ValueError(
            f"{what} of {height} x {width}: {cells} cells of cell_size={cell_size}, more than the {MAX_TOKENS} a "
            f"mask selects among{hint}"
        )
    return cell_size, height // cell_size, width // cell_size


# B x H rows: the CUDA kernels' int counters (+ 4 x 256); H and W x C: a GPU grid's 65535 blocks on y / z, of rows and
# of <= 256 elements of a row in the Triton launches (the token backward would fail past 65535 x 256 channels)
MAX_GRID_EXTENT, MAX_GRID_HEIGHT, MAX_GRID_LINE = 2**31 - 1025, 65535, 65535 * 256


def _check_extent(batch: int, height: int, width: int, channels: int, what: str) -> None:
    rows, line = batch * height, width * channels
    if rows > MAX_GRID_EXTENT or height > MAX_GRID_HEIGHT or line > MAX_GRID_LINE:
        raise ValueError(
            f"{what} must have at most {MAX_GRID_EXTENT} rows (batch x height), a height of at most {MAX_GRID_HEIGHT} "
            f"and at most {MAX_GRID_LINE} elements per row (width x channels) on every backend (int counters, a GPU "
            f"grid's 65535 blocks): got {rows} rows of {line}, a height of {height}"
        )


def check_cell_mask(cell_mask: torch.Tensor, like: torch.Tensor, height: int, width: int, cell_size: int) -> None:
    """The internal ops' cell mask: bool [B, H / S, W / S] on the device of ``like`` ([B, ...]), as the CUDA binding
    checks (else Triton reads past a smaller mask, torch broadcasts it; the public functions draw their own)."""
    _cell_grid(height, width, cell_size, "the map")
    want = [like.shape[0], height // cell_size, width // cell_size]
    if cell_mask.dtype != torch.bool:
        raise TypeError(f"cell_mask must be bool, got {cell_mask.dtype}")
    if list(cell_mask.shape) != want:
        raise ValueError(f"cell_mask must have shape {want}, got {list(cell_mask.shape)}")
    if cell_mask.device != like.device:
        raise ValueError(f"cell_mask must be on {like.device}, got {cell_mask.device}")


def _check_fill_value(fill_value, dtype: torch.dtype) -> None:
    """A finite number, finite in the images' dtype (fp16's largest: 65504): every backend writes it rounded to it."""
    if isinstance(fill_value, bool) or not isinstance(fill_value, numbers.Real):
        raise TypeError(f"fill_value must be a float, got {type(fill_value).__name__}")
    largest = torch.finfo(dtype).max
    try:
        value = float(fill_value)
    except OverflowError:  # an int beyond the float range (math.isfinite raised it unexplained)
        value = math.inf
    finite = value - value == 0  # math.isfinite(value), traceable where value is a SymFloat (compile, dynamic=True)
    if not finite or abs(value) > largest:
        raise ValueError(f"fill_value must be finite and within ±{largest:g} for {dtype} images, got {fill_value}")


def _random_cell_sizes(batch: int, height: int, width: int, cell_size: int, num_keep: int, seed_tensor, device) -> None:
    """The random grid ops' own check (MaskSubOp's ``check``): cells that tile the map, at most all of them kept,
    the seed tensor one int64 on the op's device (resolve_seed's rules; its value is not read)."""
    _, grid_h, grid_w = _cell_grid(height, width, cell_size, "the map")
    check_keep_args(batch, grid_h * grid_w, num_keep, "num_cells")
    if seed_tensor is not None:
        resolve_seed(seed_tensor, device)


def _image_op_sizes(images, cell_size: int, fill_value, num_keep: int | None = None, seed_tensor=None) -> None:
    """The image ops' own check (MaskSubOp's ``check``, for a direct torch.ops.masksub call): 4-D float images within
    the grid bounds (else the launch fails), a fill value finite in their dtype, and for the random op
    the cells and kept cells."""
    check_float_tensor("images", images, "[B, C, H, W]", 4)
    batch, channels, height, width = images.shape
    _check_extent(batch, height, width, channels, "images")
    _check_fill_value(fill_value, images.dtype)
    if num_keep is not None:
        _random_cell_sizes(batch, height, width, cell_size, num_keep, seed_tensor, images.device)
