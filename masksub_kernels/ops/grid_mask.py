"""Structured grid masking for Swin (tokens, with a learnable mask token) and CNNs (pixels), with fused kernels.

Maths (SEMANTICS.md, Swin and ResNet sections). An H x W map is cut into cells of S x S (S = ``cell_size``): a
G_h x G_w grid, Lc = G_h * G_w cells numbered row-major (cell (i, j) is number i * G_w + j). Per sample keep
Kc = floor(Lc * (1 - r)) cells; the other Lc - Kc are *removed*:

    kept cells of sample b = random_keep_indices(B, Lc, Kc, seed)[b]     (one definition with the ViT token masks)
    M[b, i, j] = 1 if cell (i, j) of sample b is removed else 0          -> the returned bool mask [B, G_h, G_w]
    M_px[b, h, w] = M[b, h // S, w // S]                                  (never materialised by the kernels)

    images  I[B, C, H, W]:  I_out = I where M_px = 0, fill_value where M_px = 1;   dI = dI_out * (1 - M_px)
    tokens  T[B, H, W, C]:  T_out = T * (1 - M_px) + m * M_px   (m = mask token [C]);  dT = dT_out * (1 - M_px)
                            dm[c] = sum over (b, h, w) with M_px = 1 of dT_out[b, h, w, c]

Every backend computes the outputs as selects (``where``), which equal the arithmetic form for finite values (up
to the sign of a zero); the gradients are selects too (``masked_fill`` semantics), so they are bit-exact.

Difference from the official code (ResNet): it multiplies the images by the *remove* mask, i.e. zeroes the kept
cells; at r = 0.5 on 49 cells that zeroes 24 cells instead of 25, and at other ratios it inverts the ratio. This
library zeroes the removed cells, the intent its comment states. The official Swin loop hard-codes r = 0.5; this
library honours the ratio. At 224 px (S = 32 pixels, or 8 tokens of 56 x 56) and r = 0.5: 24 kept, 25 removed.

Launches on the GPU and bytes moved (N = elements, e = element size, r' = removed fraction):
- cell mask: one program per sample (Philox keys of its Lc cells, one sort, the mask bytes written by rank);
- image / token forward: one pass: reads the cell byte of each element (cached), the input only where kept
  (N * e * (1 - r')), writes the output once (N * e);
- token backward: one pass reads dT_out once, writes dT once and one fp32 partial sum of dm per (program,
  channel); a second launch adds those partials in a fixed order. No atomics: the same bits on every run.
"""

from __future__ import annotations

import inspect

import torch

from .._backend import resolve_backend
from .._philox import load_seed, philox_sort_keys, resolve_seed, seed_value
from .._triton import jit, next_power_of_2, tl
from ._common import FLOAT_DTYPES, cdiv, check_keep_args, cuda_extension, masksub_op, sort_warps
from .token_select import num_kept_tokens, select_reference

_BITS_DTYPE = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> int type of the same width
TILE_ELEMENTS = 2048  # elements per tile of the pixel/token passes (16 per thread at 4 warps)
MAX_PARTIALS = 1024  # programs of the token backward: at most this many partial sums of dm per channel


# ----------------------------------------------------------------------------------------------------------------
# Host-side validation
# ----------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _grid_size(grid_size) -> tuple[int, int]:
    if isinstance(grid_size, int) and not isinstance(grid_size, bool):
        grid_size = (grid_size, grid_size)
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise TypeError(f"grid_size must be an int or a pair (grid_h, grid_w), got {grid_size!r}")
    return _check_int("grid_h", grid_size[0]), _check_int("grid_w", grid_size[1])


def _cell_grid(height: int, width: int, cell_size: int, what: str) -> tuple[int, int]:
    """(G_h, G_w) for an H x W map; a map that the cells do not tile exactly is an error (no silent crop)."""
    _check_int("cell_size", cell_size)
    if height % cell_size or width % cell_size:
        raise ValueError(
            f"{what} of {height} x {width} is not divisible by cell_size={cell_size}: resize or crop to a multiple "
            "of the cell size (grid masks never crop silently)"
        )
    return height // cell_size, width // cell_size


def _check_float_tensor(name: str, x, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be {layout} (4-D), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")


def _check_mask_token(tokens: torch.Tensor, mask_token) -> None:
    channels = tokens.shape[3]
    if not isinstance(mask_token, torch.Tensor):
        raise TypeError(f"mask_token must be a torch.Tensor, got {type(mask_token).__name__}")
    if mask_token.numel() != channels or mask_token.dim() < 1 or mask_token.shape[-1] != channels:
        raise ValueError(
            f"mask_token must have shape [C={channels}] (or [1, ..., 1, C]) to match tokens [B, H, W, C] of shape "
            f"{tuple(tokens.shape)} (timm Swin layout after patch_embed), got {tuple(mask_token.shape)}"
        )
    if mask_token.dtype != tokens.dtype:
        raise TypeError(
            f"mask_token must have the dtype of tokens ({tokens.dtype}), got {mask_token.dtype}: pass "
            "mask_token.to(tokens.dtype) (differentiable)"
        )
    if mask_token.device != tokens.device:
        raise ValueError(f"mask_token must be on the device of tokens ({tokens.device}), got {mask_token.device}")


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


def mask_tokens_reference(
    tokens: torch.Tensor, mask_token: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> torch.Tensor:
    """T_out [B, H, W, C] contiguous: the mask token on removed cells, the tokens elsewhere."""
    removed = pixel_mask_reference(cell_mask, cell_size)[..., None]
    return torch.where(removed, mask_token.reshape(-1), tokens).contiguous()


def mask_tokens_backward_reference(
    grad_out: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dT [B, H, W, C] contiguous, dm [C]): dm summed in float32 (float64 for float64 input)."""
    removed = pixel_mask_reference(cell_mask, cell_size)[..., None]
    grad_tokens = grad_out.masked_fill(removed, 0).contiguous()
    acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    grad_mask = torch.where(removed, grad_out.to(acc), 0).sum(dim=(0, 1, 2)).to(grad_out.dtype)
    return grad_tokens, grad_mask


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@jit
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
    FILL_INT: tl.constexpr,  # the int type of the image dtype's width: tl.int16 / int32 / int64
    RUN: tl.constexpr,  # aligned runs of RUN columns lie in one cell (a power of two dividing CELL, <= BLOCK_K)
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Grid (plane, row block, column block). NCHW: plane = (b, c), columns w; channels_last: plane = b, columns
    # (w, c) flattened, so the inner dimension of the tile is the contiguous one. Removed cells read nothing.
    plane = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    if CHANNELS_LAST:
        b = plane
        w = cols // C
        c = cols - w * C
        col_ok = cols < W * C
        x_col = w.to(tl.int64) * sxw + c * sxc
        y_col = w.to(tl.int64) * syw + c * syc
        x_base, y_base = b.to(tl.int64) * sxb, b.to(tl.int64) * syb
    else:
        b = plane // C
        c = plane - b * C
        w = cols
        col_ok = cols < W
        x_col, y_col = w.to(tl.int64) * sxw, w.to(tl.int64) * syw
        x_base = b.to(tl.int64) * sxb + c.to(tl.int64) * sxc
        y_base = b.to(tl.int64) * syb + c.to(tl.int64) * syc
    ok = (h < H)[:, None] & col_ok[None, :]
    cell = ((b * (H // CELL) + h // CELL) * (W // CELL))[:, None] + (w // CELL)[None, :]
    # the loaded cell bytes are constant over runs of RUN columns: saying so lets the masked loads vectorise
    removed = tl.max_constancy(tl.load(cell_ptr + cell, mask=ok, other=0) != 0, [1, RUN])
    x_offsets = x_base + (h.to(tl.int64) * sxh)[:, None] + x_col[None, :]
    x = tl.load(x_ptr + x_offsets, mask=ok & ~removed, other=0)
    fill = (fill_bits + tl.zeros([1, 1], tl.int64)).to(FILL_INT).to(x.dtype, bitcast=True)  # exact in any dtype
    y_offsets = y_base + (h.to(tl.int64) * syh)[:, None] + y_col[None, :]
    tl.store(y_ptr + y_offsets, tl.where(removed, fill, x), mask=ok)


@jit
def _token_line(line, w, H, W, cell_ptr, w_ok, CELL: tl.constexpr):
    """(b, h, removed [BLOCK_W]) of the tokens w of line (b, h) = (line // H, line % H)."""
    b = line // H
    h = line - b * H
    cell = (b * (H // CELL) + h // CELL) * (W // CELL) + w // CELL
    return b, h, tl.load(cell_ptr + cell, mask=w_ok, other=0) != 0


@jit
def _mask_tokens_kernel(
    x_ptr,  # [B, H, W, C], any strides
    m_ptr,  # [C] mask token
    cell_ptr,  # uint8 [B, G_h, G_w]
    y_ptr,  # [B, H, W, C] out, contiguous
    C,
    H,
    W,
    sxb,
    sxh,
    sxw,
    sxc,
    CELL: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Grid (line (b, h), token block, channel block): one cell byte per token; removed tokens read nothing.
    line = tl.program_id(0)
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    w_ok = w < W
    col_ok = cols < C
    b, h, removed = _token_line(line, w, H, W, cell_ptr, w_ok, CELL)
    x_row = b.to(tl.int64) * sxb + h.to(tl.int64) * sxh
    x_offsets = x_row + (w.to(tl.int64) * sxw)[:, None] + (cols.to(tl.int64) * sxc)[None, :]
    x = tl.load(x_ptr + x_offsets, mask=(w_ok & ~removed)[:, None] & col_ok[None, :], other=0)
    m = tl.load(m_ptr + cols, mask=col_ok, other=0)
    y = tl.where(removed[:, None], m[None, :], x)
    y_offsets = (line.to(tl.int64) * W + w)[:, None] * C + cols[None, :]
    tl.store(y_ptr + y_offsets, y, mask=w_ok[:, None] & col_ok[None, :])


@jit
def _mask_tokens_backward_kernel(
    g_ptr,  # dT_out [B, H, W, C], any strides (an expanded gradient is read in place)
    cell_ptr,  # uint8 [B, G_h, G_w]
    gx_ptr,  # dT [B, H, W, C] out, contiguous (only when WRITE_GRAD_X)
    part_ptr,  # fp32 (fp64) [programs, C] out: this program's sum of dT_out over removed tokens (WRITE_PARTIALS)
    n_lines,  # B * H
    C,
    H,
    W,
    sgb,
    sgh,
    sgw,
    sgc,
    lines_per_program,
    CELL: tl.constexpr,
    WRITE_GRAD_X: tl.constexpr,
    WRITE_PARTIALS: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Grid (line group, channel block): each program walks lines_per_program lines (b, h) of W tokens:
    # dT = dT_out on kept tokens, 0 on removed ones; dm's partial sum accumulates elementwise in fp32 and is
    # reduced once at the end (fixed order).
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros([BLOCK_W, BLOCK_C], part_ptr.dtype.element_ty)
    for i in range(0, lines_per_program):
        line = pid * lines_per_program + i
        for w_start in range(0, W, BLOCK_W):
            w = w_start + tl.arange(0, BLOCK_W)
            w_ok = (w < W) & (line < n_lines)
            b, h, removed = _token_line(line, w, H, W, cell_ptr, w_ok, CELL)
            ok = w_ok[:, None] & col_ok[None, :]
            needed = ok if WRITE_GRAD_X else ok & removed[:, None]  # without dT, only removed tokens are read
            g_row = b.to(tl.int64) * sgb + h.to(tl.int64) * sgh
            g_offsets = g_row + (w.to(tl.int64) * sgw)[:, None] + (cols.to(tl.int64) * sgc)[None, :]
            g = tl.load(g_ptr + g_offsets, mask=needed, other=0)
            if WRITE_GRAD_X:
                gx_offsets = (line.to(tl.int64) * W + w)[:, None] * C + cols[None, :]
                tl.store(gx_ptr + gx_offsets, tl.where(removed[:, None], 0.0, g), mask=ok)
            if WRITE_PARTIALS:
                acc += tl.where(removed[:, None] & ok, g.to(part_ptr.dtype.element_ty), 0.0)
    if WRITE_PARTIALS:
        tl.store(part_ptr + pid.to(tl.int64) * C + cols, tl.sum(acc, axis=0), mask=col_ok)


@jit
def _sum_partials_kernel(
    part_ptr,  # fp32 (fp64) [P, C]
    out_ptr,  # [C] out, the mask token's dtype
    P,
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # dm[c] = sum_p part[p, c]: one program per channel block, partials added in a fixed order.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros([BLOCK_P, BLOCK_C], part_ptr.dtype.element_ty)
    for start in range(0, P, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & col_ok[None, :]
        acc += tl.load(part_ptr + parts.to(tl.int64)[:, None] * C + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + cols, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=col_ok)


# ----------------------------------------------------------------------------------------------------------------
# Launchers. The CUDA extension (masksub_kernels._C, csrc/grid_mask.cu) takes the same arguments:
#   _C.grid_cell_mask(seed, seed_tensor or None, batch_size, num_cells, num_keep, device) -> bool [B, Lc]
#   _C.mask_image_grid(images, cell_mask, cell_size, fill_value) -> [B, C, H, W], images' layout (empty_like)
#   _C.mask_tokens_grid_forward(tokens, mask_token, cell_mask, cell_size) -> contiguous [B, H, W, C]
#   _C.mask_tokens_grid_backward(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad)
#       -> (grad_tokens contiguous [B, H, W, C] or [0], grad_mask_token [C] or [0])
# cell_mask: bool [B, G_h, G_w] contiguous; mask_token: [C] of the tokens' dtype; dm reduced without atomics.
# ----------------------------------------------------------------------------------------------------------------


CUDA_OPS = ("grid_cell_mask", "mask_image_grid", "mask_tokens_grid_forward", "mask_tokens_grid_backward")


def _cuda(name: str):
    """The CUDA extension's ``name``, or a clear error while the extension predates the grid-mask kernels."""
    function = getattr(cuda_extension(), name, None)
    if function is None:
        raise NotImplementedError(
            f"the CUDA extension masksub_kernels._C has no {name} (grid masks) yet: select the 'triton' or 'torch' "
            "backend (mk.set_backend), or rebuild the extension"
        )
    return function


def _tile(n_cols: int, n_rows: int) -> tuple[int, int]:
    """(rows, columns) of a tile: TILE_ELEMENTS per program, inner blocks of up to 256 columns."""
    block_k = min(next_power_of_2(n_cols), 256)
    return max(1, min(next_power_of_2(n_rows), TILE_ELEMENTS // block_k)), block_k


def _fill_bits(fill_value: float, dtype: torch.dtype) -> int:
    """The bit pattern of fill_value rounded to dtype, as a signed int of the dtype's width (host-side, no sync)."""
    return int(torch.tensor(fill_value, dtype=dtype).view(_BITS_DTYPE[dtype.itemsize]).item())


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


def _mask_image_triton(
    images: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, fill_value: float
) -> torch.Tensor:
    out = torch.empty_like(images)  # same layout as the input (contiguous or channels_last)
    batch_size, channels, height, width = images.shape
    channels_last = images.stride(1) == 1 and channels > 1
    planes, n_cols = (batch_size, width * channels) if channels_last else (batch_size * channels, width)
    if images.numel():
        block_h, block_k = _tile(n_cols, height)
        grid = (planes, cdiv(height, block_h), cdiv(n_cols, block_k))
        meta = {"CELL": cell_size, "CHANNELS_LAST": channels_last, "FILL_INT": _int_type(images.dtype)}
        meta["RUN"] = min(cell_size & -cell_size, block_k)
        fill_bits = _fill_bits(fill_value, images.dtype)
        sizes = (channels, height, width, *images.stride(), *out.stride())
        _mask_image_kernel[grid](
            images, cell_mask.view(torch.uint8), out, fill_bits, *sizes, BLOCK_H=block_h, BLOCK_K=block_k, **meta
        )
    return out


def _int_type(dtype: torch.dtype):
    return {2: tl.int16, 4: tl.int32, 8: tl.int64}[dtype.itemsize]


def _tokens_args(x: torch.Tensor) -> tuple[int, ...]:
    """(C, H, W, stride_b, stride_h, stride_w, stride_c) of [B, H, W, C] for the token kernels (any strides: a
    stride of 1 is specialised by Triton, so the usual layout pays nothing for the generality)."""
    return (x.shape[3], x.shape[1], x.shape[2], *x.stride()[:3], x.stride(3))


def _mask_tokens_forward_triton(
    tokens: torch.Tensor, mask_token: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> torch.Tensor:
    sizes = _tokens_args(tokens)
    out = torch.empty(tokens.shape, dtype=tokens.dtype, device=tokens.device)
    batch_size, height, width, channels = tokens.shape
    if out.numel():
        block_w, block_c = _tile(channels, width)
        grid = (batch_size * height, cdiv(width, block_w), cdiv(channels, block_c))
        cells, token = cell_mask.view(torch.uint8), mask_token.contiguous()
        _mask_tokens_kernel[grid](tokens, token, cells, out, *sizes, CELL=cell_size, BLOCK_W=block_w, BLOCK_C=block_c)
    return out


def _mask_tokens_backward_triton(
    grad_out: torch.Tensor,
    cell_mask: torch.Tensor,
    cell_size: int,
    need_tokens_grad: bool,
    need_mask_grad: bool,
    max_partials: int = MAX_PARTIALS,
) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = _tokens_args(grad_out)
    batch_size, height, width, channels = grad_out.shape
    dtype, device = grad_out.dtype, grad_out.device
    grad_tokens = torch.empty(grad_out.shape if need_tokens_grad else (0,), dtype=dtype, device=device)
    grad_mask = torch.empty(channels if need_mask_grad else 0, dtype=dtype, device=device)
    n_lines = batch_size * height
    if grad_out.numel() == 0 or not (need_tokens_grad or need_mask_grad):
        return grad_tokens, grad_mask.zero_()
    block_w, block_c = _tile(channels, width)
    lines_per_program = cdiv(n_lines, max_partials)
    programs = cdiv(n_lines, lines_per_program)  # fixed by the shape: same partials on every run and GPU
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    partials = torch.empty(programs if need_mask_grad else 0, channels, dtype=acc_dtype, device=device)
    meta = {"CELL": cell_size, "WRITE_GRAD_X": need_tokens_grad, "WRITE_PARTIALS": need_mask_grad}
    _mask_tokens_backward_kernel[(programs, cdiv(channels, block_c))](
        grad_out, cell_mask.view(torch.uint8), grad_tokens, partials, n_lines, *sizes, lines_per_program, **meta,
        BLOCK_W=block_w, BLOCK_C=block_c,
    )  # fmt: skip
    if need_mask_grad:
        block_c = min(next_power_of_2(channels), 128)
        grid = (cdiv(channels, block_c),)
        _sum_partials_kernel[grid](partials, grad_mask, programs, channels, BLOCK_P=32, BLOCK_C=block_c)
    return grad_tokens, grad_mask


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, no host syncs) and autograd
# ----------------------------------------------------------------------------------------------------------------


@masksub_op("grid_cell_mask")
def _cell_mask_op(
    seed: int, seed_tensor: torch.Tensor | None, batch_size: int, num_cells: int, num_keep: int, device: torch.device
) -> torch.Tensor:
    backend = resolve_backend(device, "random_grid_mask")
    if backend == "triton":
        return _cell_mask_triton(seed, seed_tensor, batch_size, num_cells, num_keep, device)
    if backend == "cuda":
        return _cuda("grid_cell_mask")(seed, seed_tensor, batch_size, num_cells, num_keep, device)
    return cell_mask_reference(seed_value(seed, seed_tensor), batch_size, num_cells, num_keep, device)


@_cell_mask_op.register_fake
def _(seed, seed_tensor, batch_size, num_cells, num_keep, device):
    return torch.empty(batch_size, num_cells, dtype=torch.bool, device=device)


@masksub_op("mask_image_grid")
def _mask_image_op(images: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, fill_value: float) -> torch.Tensor:
    backend = resolve_backend(images.device, "mask_image_grid")
    if backend == "triton":
        return _mask_image_triton(images, cell_mask, cell_size, fill_value)
    if backend == "cuda":
        return _cuda("mask_image_grid")(images, cell_mask, cell_size, fill_value)
    return mask_image_reference(images, cell_mask, cell_size, fill_value)


@_mask_image_op.register_fake
def _(images, cell_mask, cell_size, fill_value):
    return torch.empty_like(images)


def _mask_image_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.cell_size = inputs[2]


def _mask_image_backward(ctx, grad_out):
    # dI = dI_out with the removed cells zeroed: the same op with fill 0 (so it is differentiable again).
    (cell_mask,) = ctx.saved_tensors
    return _mask_image_op(grad_out, cell_mask, ctx.cell_size, 0.0), None, None, None


_mask_image_op.register_autograd(_mask_image_backward, setup_context=_mask_image_setup_context)


@masksub_op("mask_tokens_grid")
def _mask_tokens_op(
    tokens: torch.Tensor, mask_token: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> torch.Tensor:
    backend = resolve_backend(tokens.device, "mask_tokens_grid")
    if backend == "triton":
        return _mask_tokens_forward_triton(tokens, mask_token, cell_mask, cell_size)
    if backend == "cuda":
        return _cuda("mask_tokens_grid_forward")(tokens, mask_token, cell_mask, cell_size)
    return mask_tokens_reference(tokens, mask_token, cell_mask, cell_size)


@_mask_tokens_op.register_fake
def _(tokens, mask_token, cell_mask, cell_size):
    return tokens.new_empty(tokens.shape)


@masksub_op("mask_tokens_grid_backward")
def _mask_tokens_backward_op(
    grad_out: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, need_tokens_grad: bool, need_mask_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dT [B, H, W, C] or an empty [0], dm [C] or an empty [0]), as asked."""
    backend = resolve_backend(grad_out.device, "mask_tokens_grid_backward")
    if backend == "triton":
        return _mask_tokens_backward_triton(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad)
    if backend == "cuda":
        return _cuda("mask_tokens_grid_backward")(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad)
    grad_tokens, grad_mask = mask_tokens_backward_reference(grad_out, cell_mask, cell_size)
    empty = grad_out.new_empty(0)
    return (grad_tokens if need_tokens_grad else empty), (grad_mask if need_mask_grad else empty)


@_mask_tokens_backward_op.register_fake
def _(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad):
    grad_tokens = grad_out.new_empty(grad_out.shape if need_tokens_grad else (0,))
    return grad_tokens, grad_out.new_empty(grad_out.shape[3] if need_mask_grad else 0)


def _mask_tokens_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.cell_size = inputs[3]


def _mask_tokens_backward(ctx, grad_out):
    (cell_mask,) = ctx.saved_tensors
    need_tokens, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_tokens, grad_mask = _mask_tokens_backward_op(grad_out, cell_mask, ctx.cell_size, need_tokens, need_mask)
    return (grad_tokens if need_tokens else None), (grad_mask if need_mask else None), None, None


_mask_tokens_op.register_autograd(_mask_tokens_backward, setup_context=_mask_tokens_setup_context)


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
    check_keep_args(batch_size, grid_h * grid_w, num_keep)
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.empty(0).device
    device = torch.device(device)
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
    must be multiples of ``cell_size`` (else ValueError: no silent crop). Of the Lc = (H/S)(W/S) cells,
    Kc = floor(Lc * (1 - mask_ratio)) are kept per sample, the rest set to ``fill_value`` (rounded to the dtype;
    0 is the normalised mean colour). Returns (masked [B, C, H, W] of images' dtype and layout, mask bool
    [B, H/S, W/S], True = removed, equal to ``random_grid_mask(B, (H/S, W/S), Kc, seed=seed)``).

    Differentiable in ``images``: d images = d masked with the removed cells zeroed. Note the official code
    zeroes the *kept* cells instead (see the module docstring).
    """
    _check_float_tensor("images", images, "[B, C, H, W]")
    grid_h, grid_w = _cell_grid(images.shape[2], images.shape[3], cell_size, "images")
    if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
        raise TypeError(f"fill_value must be a float, got {type(fill_value).__name__}")
    num_keep = num_kept_tokens(grid_h * grid_w, mask_ratio)
    mask = random_grid_mask(images.shape[0], (grid_h, grid_w), num_keep, seed=seed, device=images.device)
    return _mask_image_op(images, mask, cell_size, float(fill_value)), mask


def mask_tokens_grid(
    tokens: torch.Tensor,
    mask_token: torch.Tensor,
    mask_ratio: float = 0.5,
    *,
    cell_size: int = 8,
    seed: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskSub's Swin sub-branch masking: replace the tokens of removed cells by a learnable mask token.

    tokens: [B, H, W, C] float (timm Swin's layout after patch_embed; any strides, read in place); H and W
    multiples of ``cell_size`` (8 tokens = 32 pixels at patch 4). mask_token: [C] (or [1, ..., 1, C]) with the
    dtype and device of tokens. Returns (out [B, H, W, C] contiguous, out = tokens * (1 - M) + mask_token
    * M; mask bool [B, H/S, W/S], True = removed, equal to ``random_grid_mask(B, (H/S, W/S), Kc, seed=seed)``
    with Kc = floor(Lc * (1 - mask_ratio))). Differentiable in tokens (d tokens = d out * (1 - M)) and in
    mask_token (d mask_token = sum of d out over removed tokens, reduced in fp32 in a fixed order: same bits on
    every run).
    """
    _check_float_tensor("tokens", tokens, "[B, H, W, C] (timm Swin layout after patch_embed)")
    _check_mask_token(tokens, mask_token)
    grid_h, grid_w = _cell_grid(tokens.shape[1], tokens.shape[2], cell_size, "tokens grid")
    num_keep = num_kept_tokens(grid_h * grid_w, mask_ratio)
    mask = random_grid_mask(tokens.shape[0], (grid_h, grid_w), num_keep, seed=seed, device=tokens.device)
    out = _mask_tokens_op(tokens, mask_token.reshape(tokens.shape[3]), mask, cell_size)
    return out, mask


# Compile specs for the sm_80/sm_90 check (masksub_kernels/tools/compile_kernels.py): name, kernel, signature,
# constexprs, options. Arguments not typed here are i64 strides (s...) or i32 sizes; strides of 1 are constexprs,
# as Triton specialises them at launch.
def _spec(name: str, kernel, types: dict[str, str], constexprs: dict, num_warps: int = 4):
    params = inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()
    names = [p.name for p in params if "constexpr" not in str(p.annotation)]
    default = {n: "constexpr" if n in constexprs else "i64" if n.startswith("s") else "i32" for n in names}
    signature = {n: types.get(n, default[n]) for n in names}
    return name, kernel, signature, constexprs, {"num_warps": num_warps}


_CELL_MASK_TYPES = {"mask_ptr": "*u8", "seed_ptr": "*i64"}
KERNEL_SPECS = [
    _spec(
        f"cell_mask[block={b},seed_ptr={p}]",
        _cell_mask_kernel,
        _CELL_MASK_TYPES,
        {"SEED_FROM_PTR": p, "BLOCK_L": b},
        sort_warps(b),
    )
    for b in (64, 1024)
    for p in (False, True)
]
for _t, _int in (("fp32", tl.int32), ("fp16", tl.int16), ("bf16", tl.int16)):
    for _last in (False, True):
        _r, _k = _tile(224 * 3 if _last else 224, 224)
        _unit = {"sxc": 1, "syc": 1} if _last else {"sxw": 1, "syw": 1}
        KERNEL_SPECS.append(_spec(
            f"mask_image[{_t},{'nhwc' if _last else 'nchw'}]", _mask_image_kernel,
            {"x_ptr": f"*{_t}", "cell_ptr": "*u8", "y_ptr": f"*{_t}"},
            {**_unit, "CELL": 32, "CHANNELS_LAST": _last, "FILL_INT": _int, "RUN": 32, "BLOCK_H": _r, "BLOCK_K": _k},
        ))  # fmt: skip
    _w, _c = _tile(96, 56)  # Swin-T stage 1: 56 x 56 tokens of 96 channels
    KERNEL_SPECS.append(_spec(
        f"mask_tokens[{_t}]", _mask_tokens_kernel,
        {"x_ptr": f"*{_t}", "m_ptr": f"*{_t}", "cell_ptr": "*u8", "y_ptr": f"*{_t}"},
        {"sxc": 1, "CELL": 8, "BLOCK_W": _w, "BLOCK_C": _c},
    ))  # fmt: skip
    for _dx, _dm in ((True, True), (True, False), (False, True)):
        KERNEL_SPECS.append(_spec(
            f"mask_tokens_backward[{_t},dT={_dx},dm={_dm}]", _mask_tokens_backward_kernel,
            {"g_ptr": f"*{_t}", "cell_ptr": "*u8", "gx_ptr": f"*{_t}", "part_ptr": "*fp32"},
            {"sgc": 1, "CELL": 8, "WRITE_GRAD_X": _dx, "WRITE_PARTIALS": _dm, "BLOCK_W": _w, "BLOCK_C": _c},
        ))  # fmt: skip
    KERNEL_SPECS.append(_spec(
        f"sum_partials[{_t}]", _sum_partials_kernel, {"part_ptr": "*fp32", "out_ptr": f"*{_t}"},
        {"BLOCK_P": 32, "BLOCK_C": 128},
    ))  # fmt: skip
