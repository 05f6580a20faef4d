"""Swin token masking by grid cells with a learnable mask token, with fused kernels and a deterministic backward.

Maths (docs/semantics.md, §6). The tokens T[B, H, W, C] (timm Swin's layout after patch_embed) are cut into
cells of S x S tokens (S = ``cell_size``; 8 tokens = 32 pixels at patch 4); the removed-cell mask M [B, G_h, G_w]
and its per-token expansion M_px[b, h, w] = M[b, h // S, w // S] are those of grid_mask.py (``random_grid_mask``,
one definition with the ViT token masks). With m the mask token [C]:

    T_out = T * (1 - M_px) + m * M_px
    dT    = dT_out * (1 - M_px)
    dm[c] = sum over (b, h, w) with M_px = 1 of dT_out[b, h, w, c]

Every backend computes T_out and dT as selects (``where`` / ``masked_fill``), which equal the arithmetic form for
finite values (up to the sign of a zero), so they are bit-exact; dm is accumulated in fp32 (fp64 for fp64 tokens)
and rounded once to the mask token's dtype. The official Swin loop hard-codes r = 0.5; this library honours the
ratio (grid_mask.py gives the cell counts at 224 px).

Fixed-order two-pass reduction of dm (no atomics: the same bits on every run): the backward kernel's programs each
walk a fixed group of lines (b, h) (at most MAX_PARTIALS programs, a count fixed by the shape) and write one fp32
partial sum per (program, channel); a second kernel adds those partials per channel in a fixed order, all of a
channel block's partials in one tile (many programs, one memory round trip each: not a loop in one program).

Launches on the GPU and bytes moved (N = elements, e = element size, r' = removed fraction):
- forward: one pass: reads the cell byte of each token (cached), the tokens only where kept (N * e * (1 - r')),
  writes the output once (N * e);
- backward: one pass reads dT_out once (only the removed tokens when dT is not asked for), writes dT once and one
  fp32 partial sum of dm per (program, channel); a second launch adds those partials in a fixed order.
"""

from __future__ import annotations

import torch

from .._philox import resolve_seed, seed_value
from .._triton import jit, next_power_of_2, tl
from ._common import cdiv, check_float_tensor, check_keep_args, masksub_op, resolve_device
from ._grid_checks import _cell_grid, _check_extent, _random_cell_sizes, check_cell_mask
from .grid_mask import _cell_mask_triton, _tile, cell_mask_reference
from .token_select import num_kept_tokens

MAX_PARTIALS = 1024  # programs of the token backward: at most this many partial sums of dm per channel


# ----------------------------------------------------------------------------------------------------------------
# Host-side validation (the tensor and cell checks shared with the image op are grid_mask's)
# ----------------------------------------------------------------------------------------------------------------


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


def _token_op_sizes(tokens, mask_token=None, cell_size=None, num_keep=None, seed_tensor=None, name="tokens") -> None:
    """The token ops' own check (MaskSubOp's ``check``, for a direct torch.ops.masksub call): 4-D float tokens
    within the grid bounds (else the launch fails), their mask token, and for the random op the cells
    and kept cells."""
    check_float_tensor(name, tokens, "[B, H, W, C]", 4)
    _check_extent(*tokens.shape, name)
    if mask_token is not None:
        _check_mask_token(tokens, mask_token)
        if mask_token.dim() != 1:  # the public functions reshape [1, ..., 1, C]; the ops' backward returns [C]
            raise ValueError(f"the op's mask_token must be [C={tokens.shape[3]}], got {tuple(mask_token.shape)}")
    if num_keep is not None:
        _random_cell_sizes(*tokens.shape[:3], cell_size, num_keep, seed_tensor, tokens.device)


# ----------------------------------------------------------------------------------------------------------------
# Reference (PyTorch): the oracle and the CPU fallback
# ----------------------------------------------------------------------------------------------------------------


def _by_cells(x: torch.Tensor, cell_size: int) -> torch.Tensor:
    """[B, H, W, C] viewed as [B, G_h, S, G_w, S, C] (a view for any strides: splitting a dimension never copies)."""
    return x.unflatten(1, (-1, cell_size)).unflatten(3, (-1, cell_size))


def _removed(cell_mask: torch.Tensor) -> torch.Tensor:
    """bool [B, G_h, 1, G_w, 1, 1]: the cell mask, broadcast over the tokens of each cell and the channels."""
    return cell_mask[:, :, None, :, None, None]


def mask_tokens_reference(
    tokens: torch.Tensor, mask_token: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> torch.Tensor:
    """T_out [B, H, W, C] contiguous: the mask token on removed cells, the tokens elsewhere (a select, so NaN or inf
    in a removed token never leaks; one pass, the per-token mask never materialised)."""
    out = torch.where(_removed(cell_mask), mask_token.reshape(-1), _by_cells(tokens, cell_size))
    return out.reshape(tokens.shape)


def mask_tokens_backward_reference(
    grad_out: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dT [B, H, W, C] contiguous, dm [C]): dm summed in float32 (float64 for float64 input).

    dT: a select against the cell mask expanded to every token and channel (a [B, H, W, 1] mask expanded over C;
    on a CPU several times faster than the same select broadcast over the [B, G_h, S, G_w, S, C] cell view).
    dm: each cell's gradient summed first ([B, G_h, G_w, C]), then the removed cells' sums (a select: a NaN in a
    kept cell does not reach dm)."""
    batch, height, width, _ = grad_out.shape
    grid_h, grid_w = height // cell_size, width // cell_size
    removed = cell_mask[:, :, None, :, None].expand(batch, grid_h, cell_size, grid_w, cell_size)
    removed = removed.reshape(batch, height, width, 1).expand(grad_out.shape)  # copies B H W bools, not B H W C
    grad_tokens = torch.where(removed, grad_out.new_zeros(()), grad_out).contiguous()
    acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    cell_sums = _by_cells(grad_out, cell_size).sum(dim=(2, 4), dtype=acc)
    grad_mask = torch.where(cell_mask[..., None], cell_sums, 0.0).sum(dim=(0, 1, 2)).to(grad_out.dtype)
    return grad_tokens, grad_mask


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@jit
def _token_line(line, w, H, W, cell_ptr, w_ok, CELL: tl.constexpr):
    """(b, h, removed [BLOCK_W]) of the tokens w of line (b, h) = (line // H, line % H)."""
    b = line // H
    h = line - b * H
    cell = (b.to(tl.int64) * (H // CELL) + h // CELL) * (W // CELL) + w // CELL  # int64: B Lc may pass 2^31
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
    BLOCK_P: tl.constexpr,  # >= P: every partial of a channel in one tile
    BLOCK_C: tl.constexpr,
):
    # dm[c] = sum_p part[p, c]: one program per channel block loads all P partials of its channels at once (one
    # memory round trip, not one per slice of partials) and adds them with tl.sum, whose tree has a fixed order.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    parts = tl.arange(0, BLOCK_P)
    mask = (parts < P)[:, None] & (cols < C)[None, :]
    values = tl.load(part_ptr + parts.to(tl.int64)[:, None] * C + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + cols, tl.sum(values, axis=0).to(out_ptr.dtype.element_ty), mask=cols < C)


# ----------------------------------------------------------------------------------------------------------------
# Launchers. The CUDA extension (masksub_kernels._C, csrc/grid_mask.cu) takes the same arguments:
#   _C.mask_tokens_grid_forward(tokens, mask_token, cell_mask, cell_size) -> contiguous [B, H, W, C]
#   _C.mask_tokens_grid_backward(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad)
#       -> (grad_tokens contiguous [B, H, W, C] or [0], grad_mask_token [C] or [0])
# cell_mask: bool [B, G_h, G_w] contiguous; mask_token: [C] of the tokens' dtype; dm reduced without atomics.
# ----------------------------------------------------------------------------------------------------------------


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
        # the second level: channel blocks of <= 32 KB of partials each (12 programs for C = 96 at 1024 partials)
        block_p = next_power_of_2(programs)
        block_c = max(1, min(next_power_of_2(channels), (32768 // partials.element_size()) // block_p))
        grid = (cdiv(channels, block_c),)
        _sum_partials_kernel[grid](partials, grad_mask, programs, channels, BLOCK_P=block_p, BLOCK_C=block_c)
    return grad_tokens, grad_mask


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, no host syncs) and autograd
# ----------------------------------------------------------------------------------------------------------------


def _removed_rows(cell_mask: torch.Tensor, cell_size: int) -> torch.Tensor:
    """int64 [R]: the rows of a [B * H * W, C] view of the tokens that lie in removed cells, ascending."""
    batch, grid_h, grid_w = cell_mask.shape
    removed = cell_mask[:, :, None, :, None].expand(batch, grid_h, cell_size, grid_w, cell_size)
    return removed.flatten().nonzero().flatten()


def _mask_tokens_forward_torch(tokens, mask_token, cell_mask, cell_size):
    """The torch backend's forward. On CPU tensors: a copy of the tokens with the rows of removed cells of its
    [B * H * W, C] view overwritten by the mask token (index_put_: the reference's select, bit for bit, a removed
    token's NaN never read, in two thirds of its time; nonzero finds the rows without a sync there). Other devices:
    the reference."""
    if tokens.device.type != "cpu":
        return mask_tokens_reference(tokens, mask_token, cell_mask, cell_size)
    out = torch.empty(tokens.shape, dtype=tokens.dtype, device=tokens.device)
    out.copy_(tokens)
    rows = out.view(out.shape[:3].numel(), out.shape[3])  # sizes, not -1: C may be 0
    rows.index_put_((_removed_rows(cell_mask, cell_size),), mask_token.reshape(-1))
    return out


def _mask_tokens_sizes(tokens, mask_token, cell_mask, cell_size) -> None:
    """mask_tokens_grid's own check: the tokens and the mask token, then the given cell mask against them (before
    any backend and in the meta device's fake)."""
    _token_op_sizes(tokens, mask_token)
    check_cell_mask(cell_mask, tokens, tokens.shape[1], tokens.shape[2], cell_size)


def _mask_tokens_backward_sizes(grad_out, cell_mask, cell_size, *_) -> None:
    """The token backward's own check: the incoming gradient, then the cell mask against it."""
    _token_op_sizes(grad_out, name="grad_out")
    check_cell_mask(cell_mask, grad_out, grad_out.shape[1], grad_out.shape[2], cell_size)


@masksub_op(
    "mask_tokens_grid",
    device="tokens",
    check=_mask_tokens_sizes,
    torch=_mask_tokens_forward_torch,
    triton=_mask_tokens_forward_triton,
    cuda=lambda extension, *args: extension.mask_tokens_grid_forward(*args),
)
def _mask_tokens_op(
    tokens: torch.Tensor, mask_token: torch.Tensor, cell_mask: torch.Tensor, cell_size: int
) -> torch.Tensor:
    """[B, H, W, C] tokens with the masked cells replaced by the mask token."""


@_mask_tokens_op.register_fake
def _(tokens, mask_token, cell_mask, cell_size):
    return tokens.new_empty(tokens.shape)


def _mask_tokens_backward_torch(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad):
    """The torch backend's backward, only the gradients asked for. On CPU tensors by whole [C] rows of the
    [B * H * W, C] view, found once from the cell mask (nonzero: free of syncs there): dT = a copy with the removed
    rows filled with +0.0 (index_fill: the reference's select, bit for bit, in a third of its time), dm = the sum
    of the removed rows (_removed_rows_sum: rows of kept cells, NaN or not, are never read; the order of the
    additions differs from the reference's, fixed all the same). Other devices: the reference."""
    if grad_out.device.type != "cpu":
        grads = mask_tokens_backward_reference(grad_out, cell_mask, cell_size)
        needs = (need_tokens_grad, need_mask_grad)
        return tuple(g if need else grad_out.new_empty(0) for g, need in zip(grads, needs))
    rows = _removed_rows(cell_mask, cell_size)
    flat = grad_out.reshape(grad_out.shape[:3].numel(), grad_out.shape[3])  # a view unless strides forbid it
    grad_tokens, grad_mask = grad_out.new_empty(0), grad_out.new_empty(0)  # each its own: outputs may not alias
    if need_tokens_grad:
        grad_tokens = flat.index_fill(0, rows, 0).view(grad_out.shape)
    if need_mask_grad:
        grad_mask = _removed_rows_sum(flat, rows).to(grad_out.dtype)
    return grad_tokens, grad_mask


ROWS_PER_PARTIAL = 64  # the CPU dm: rows added sequentially into one fp32 partial sum, the partials then by torch


def _removed_rows_sum(flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """sum_r flat[rows[r]] in fp32 (fp64 for fp64). fp32 / fp64: embedding_bag adds each group of ROWS_PER_PARTIAL
    rows in place (no [R, C] copy of the rows), then the partial sums are added (~64 eps of error, not R eps);
    fp16 / bf16 (whose embedding_bag sums would be rounded to the dtype): the rows copied, then one fp32 sum."""
    if flat.dtype not in (torch.float32, torch.float64) or not rows.numel() or not flat.shape[1]:
        acc = torch.float64 if flat.dtype == torch.float64 else torch.float32
        return flat.index_select(0, rows).sum(0, dtype=acc)
    offsets = torch.arange(0, rows.numel(), ROWS_PER_PARTIAL, device=rows.device)
    return torch.nn.functional.embedding_bag(rows, flat, offsets, mode="sum").sum(0)


@masksub_op(
    "mask_tokens_grid_backward",
    device="grad_out",
    check=_mask_tokens_backward_sizes,
    torch=_mask_tokens_backward_torch,
    triton=_mask_tokens_backward_triton,
    cuda=lambda extension, *args: extension.mask_tokens_grid_backward(*args),
)
def _mask_tokens_backward_op(
    grad_out: torch.Tensor, cell_mask: torch.Tensor, cell_size: int, need_tokens_grad: bool, need_mask_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dT [B, H, W, C] or an empty [0], dm [C] or an empty [0]), as asked."""


@_mask_tokens_backward_op.register_fake
def _(grad_out, cell_mask, cell_size, need_tokens_grad, need_mask_grad):
    grad_tokens = grad_out.new_empty(grad_out.shape if need_tokens_grad else (0,))
    return grad_tokens, grad_out.new_empty(grad_out.shape[3] if need_mask_grad else 0)


def _mask_tokens_backward_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.cell_size, ctx.shape = inputs[2], inputs[0].shape


def _mask_tokens_backward_backward(ctx, grad_grad_tokens, grad_grad_mask):
    # The backward is linear in dOut: dT = dOut on the kept cells (0 on the removed ones), dm = the sum of dOut over
    # the removed cells. Its adjoint is the forward itself: d(dOut) = mask_tokens(ddT, ddm) (ddT on the kept cells,
    # ddm on every removed one). So the gradients of mask_tokens_grid are differentiable again.
    (cell_mask,) = ctx.saved_tensors
    if grad_grad_tokens is None or not grad_grad_tokens.numel():  # dT not asked for (an empty [0]) or not used
        grad_grad_tokens = None
    if grad_grad_mask is None or not grad_grad_mask.numel():
        grad_grad_mask = None
    if grad_grad_tokens is None and grad_grad_mask is None:
        return None, None, None, None, None
    like = grad_grad_tokens if grad_grad_tokens is not None else grad_grad_mask
    if grad_grad_tokens is None:
        grad_grad_tokens = like.new_zeros(ctx.shape)
    if grad_grad_mask is None:
        grad_grad_mask = like.new_zeros(like.shape[-1])
    grad = _mask_tokens_op(grad_grad_tokens, grad_grad_mask.to(grad_grad_tokens.dtype), cell_mask, ctx.cell_size)
    return grad, None, None, None, None


_mask_tokens_backward_op.register_autograd(
    _mask_tokens_backward_backward, setup_context=_mask_tokens_backward_setup_context, differentiable=True
)


def _mask_tokens_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.cell_size = inputs[3]


def _mask_tokens_backward(ctx, grad_out):
    (cell_mask,) = ctx.saved_tensors
    need_tokens, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_tokens, grad_mask = _mask_tokens_backward_op(grad_out, cell_mask, ctx.cell_size, need_tokens, need_mask)
    return (grad_tokens if need_tokens else None), (grad_mask if need_mask else None), None, None


_mask_tokens_op.register_autograd(_mask_tokens_backward, setup_context=_mask_tokens_setup_context, differentiable=True)


# The cell mask and the masked tokens in one op (what mask_tokens_grid calls): the CUDA extension draws the cells in
# the masking launch (csrc/grid_mask.cu, up to 256 cells); Triton and torch run the cell mask, then the masking.


def _mask_tokens_random_torch(tokens, mask_token, seed, seed_tensor, cell_size, num_keep):
    batch, height, width, _ = tokens.shape
    grid = (batch, height // cell_size, width // cell_size)
    cells = cell_mask_reference(seed_value(seed, seed_tensor), batch, grid[1] * grid[2], num_keep, tokens.device)
    return _mask_tokens_forward_torch(tokens, mask_token, cells.view(grid), cell_size), cells.view(grid)


def _mask_tokens_random_triton(tokens, mask_token, seed, seed_tensor, cell_size, num_keep):
    batch, height, width, _ = tokens.shape
    grid = (batch, height // cell_size, width // cell_size)
    cells = _cell_mask_triton(seed, seed_tensor, batch, grid[1] * grid[2], num_keep, tokens.device).view(grid)
    return _mask_tokens_forward_triton(tokens, mask_token, cells, cell_size), cells


@masksub_op(
    "mask_tokens_grid_random",
    device="tokens",
    check=lambda tokens, mask_token, seed, seed_tensor, cell_size, num_keep: _token_op_sizes(
        tokens, mask_token, cell_size, num_keep, seed_tensor
    ),
    torch=_mask_tokens_random_torch,
    triton=_mask_tokens_random_triton,
    cuda=lambda extension, *args: tuple(extension.mask_tokens_grid_random(*args)),
    records=("mask_tokens_grid", "random_grid_mask"),
)
def _mask_tokens_random_op(
    tokens: torch.Tensor,
    mask_token: torch.Tensor,
    seed: int,
    seed_tensor: torch.Tensor | None,
    cell_size: int,
    num_keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, W, C] contiguous, bool cell mask [B, G_h, G_w], True on the removed cells)."""


@_mask_tokens_random_op.register_fake
def _(tokens, mask_token, seed, seed_tensor, cell_size, num_keep):
    grid = (tokens.shape[0], tokens.shape[1] // cell_size, tokens.shape[2] // cell_size)
    return tokens.new_empty(tokens.shape), torch.empty(grid, dtype=torch.bool, device=tokens.device)


def _mask_tokens_random_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.cell_size = inputs[4]


def _mask_tokens_random_backward(ctx, grad_out, _):
    (cell_mask,) = ctx.saved_tensors
    need_tokens, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_out is None:
        return None, None, None, None, None, None
    grad_tokens, grad_mask = _mask_tokens_backward_op(grad_out, cell_mask, ctx.cell_size, need_tokens, need_mask)
    return (grad_tokens if need_tokens else None), (grad_mask if need_mask else None), None, None, None, None


_mask_tokens_random_op.register_autograd(
    _mask_tokens_random_backward, setup_context=_mask_tokens_random_setup_context, differentiable=True
)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


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
    multiples of ``cell_size`` (8 tokens = 32 pixels at patch 4); B x H at most 2**31 - 1025, H at most 65535, W x C
    at most 65535 x 256 (as ``mask_image_grid``). mask_token: [C] (or [1, ..., 1, C]) with the
    dtype and device of tokens. Returns (out [B, H, W, C] contiguous, out = tokens * (1 - M) + mask_token
    * M; mask bool [B, H/S, W/S], True = removed, equal to ``random_grid_mask(B, (H/S, W/S), Kc, seed=seed)``
    with Kc = floor(Lc * (1 - mask_ratio))). Differentiable in tokens (d tokens = d out * (1 - M)) and in
    mask_token (d mask_token = sum of d out over removed tokens, reduced in fp32 in a fixed order: same bits on
    every run).
    """
    check_float_tensor("tokens", tokens, "[B, H, W, C] (timm Swin layout after patch_embed)", 4)
    _check_mask_token(tokens, mask_token)
    cell_size, grid_h, grid_w = _cell_grid(tokens.shape[1], tokens.shape[2], cell_size, "tokens grid")
    _check_extent(*tokens.shape, "tokens")
    num_keep = num_kept_tokens(grid_h * grid_w, mask_ratio, unit="grid cells")
    check_keep_args(tokens.shape[0], grid_h * grid_w, num_keep, "num_cells")  # random_grid_mask's checks, in its order
    seed, seed_tensor = resolve_seed(seed, resolve_device(tokens.device, seed))
    out, mask = _mask_tokens_random_op(
        tokens, mask_token.reshape(tokens.shape[3]), seed, seed_tensor, cell_size, num_keep
    )
    return out, mask
