"""The fused-linear MaskSub loss: the classifier head and the loss in one op, the [M, C] logits never materialised.

Maths (docs/semantics.md, §7, applied to linear logits). Hidden states h (main) and h_s (sub), [M, D], rows
aligned; a head W [C, D] (a tied embedding works) and bias b [C] or None:

    z = h W^T + b,   s = h_s W^T + b,   (value, gradients) = masksub_loss(z, s, target, ...)

so with dz, ds the gradients of the loss with respect to the logits (ops/masksub_loss.py: dz = g_main (S
softmax(z) - w), ds = g_sub T (softmax(s/T) - softmax(z/T)), BCE likewise):

    dh = dz W,   dh_s = ds W,   dW = dz^T h + ds^T h_s,   db = sum_rows (dz + ds)

The teacher softmax(z/T) is detached: the sub term reaches W and b through s only, never through z.

Two paths: with a scalar reduction and a gradient to compute, the grads-in-forward op of ops/_linear_loss_chunks.py
(6 matmul units; the backward scales stored gradients); otherwise (reduction 'none', or no gradient) this file's:

Design. The forward keeps, per row, the online softmax states of z, s/T and z/T across class tiles (Triton: tiles
of rows x classes from tl.dot, each weight tile read once for both branches; the classes are split across programs
when the row tiles that hold counted rows are too few to fill the GPU, a choice the kernels make on the device
from the count, and the partial states combined by a few torch ops on [M] vectors) and saves 9 fp32 per row
(ops/masksub_loss.py's layout). The backward recomputes the logit tiles from the saved stats (correct for any
grad_output, scalar or per row; flash-attention's choice): 2 units of 2 M D C flops forward, 2 + 2 (dH, recomputing z
and s) + 2 + 2 (dW and db, recomputing again) backward, every gradient element owned by one program and summed in a
fixed order (deterministic, no atomics). Rows whose class id is ``ignore_index`` are moved behind the counted ones (a
device argsort, no host sync) and no tile of theirs does any work; as the host does not know how many count, the
forward's and dH's grids have room for the splits of any count (up to MAX_COUNT_SPLITS per row tile, or those that
fill the GPU when every row counts) and their kernels choose them from the count (_linear_loss_kernels._class_splits).
Those backward kernels (63.6 ms at BERT's shape, H200) run only for class ids under torch.compile / CUDA graphs:
elsewhere the chunk loop with each row's grads does (backward_in_chunks, cuBLAS). docs/fused_linear.md has the rest.

Extra memory (beyond inputs and the returned gradients): Triton O(M) for the stats and row order (the forward's
partial states: 44 bytes per row and split of the grid), plus fp32 accumulators: dH's slabs [P BLOCK_M, D] per branch
(P <= max(row tiles, 2 programs per SM): at most max(M, 128 x SMs) rows, M rounded up to 64; summed in order by
_dh_sum_kernel) and dW [splits, C, D] (splits > 1 only when classes are few). The PyTorch reference (the oracle, and
the path on CPU tensors) works on chunks of reference_chunk_rows(C) rows, so its extra memory is a few [chunk, C] fp32
buffers (chunk * C <= CHUNK_ELEMENTS, i.e. 4 MiB each) plus fp32 copies of W, dW and dH: never [M, C]. The eager
Triton backward holds the chunk loop's ([2R, C] fp32 logits, fp32 dW [C, D]) instead. No CUDA extension implementation
(the 'cuda' backend refuses the op).
"""

from __future__ import annotations

import functools

import torch

from .. import _backend
from .._triton import next_power_of_2
from . import _linear_loss_kernels as kernels
from ._common import cdiv, check_real, masksub_op
from ._linear_loss_checks import (
    _check_all,
    autocast_operands,
    check_chunk_rows,
    check_linear_backward_op,
    check_linear_loss_op,
)
from ._linear_loss_chunks import backward_in_chunks, sync_free
from ._linear_loss_grads import _grads_wanted, _linear_loss_grads_op, called_linear_loss
from .losses import MaskSubLoss, _reduce, _row_count
from .masksub_loss import MAIN, NUM_OUT, SUB, loss_backward_reference, loss_forward_reference

CHUNK_ELEMENTS = 2**20  # logits per chunk of the reference: rows per chunk = max(1, CHUNK_ELEMENTS // C)
MAX_BLOCK_M, MAX_BLOCK_N, MAX_BLOCK_K = 64, 128, 64  # Triton tiles (the tests lower them under the interpreter)
# fp32 operands: tiles of 64 classes, depth 16 (their ieee tl.dot spilled in the dH / dW loops at 64 x 128 x 32, 85-143
# local accesses per trip; depth 64 passed sm_86 / sm_89's 99 KiB of shared memory per block: OutOfResources; these
# take 24-36 KiB). bf16 / fp16 (tensor-core dots) keep 64 x 128 x 64 (tools/spill_baseline.json).
MAX_BLOCK_N_FP32, MAX_BLOCK_K_FP32 = 64, 16
MAX_DW_SPLITS = 8  # row splits of the dW kernel: each costs an fp32 [C, D] accumulator
# Class splits of the forward and dH for labels where few rows count (MLM: chosen on the device, up to this many or
# those that fill the GPU when all count): partial states of 44 bytes per row and split; unchosen ones do no tile
MAX_COUNT_SPLITS = 8
DH_SUM_BLOCKS = (32, 128)  # rows x depth of a _dh_sum_kernel program (4 warps: 32 fp32 sums per thread)
# Offsets into W are int64 in the kernels where the tiles' would reach this (WIDE_W: about C D >= 2^31, e.g. a
# 256000 x 18432 head, whose int32 offsets would wrap and read wrong rows); below, int32, as their register budget
# was tuned for
WIDE_OFFSETS = 2**31


# ----------------------------------------------------------------------------------------------------------------
# Rows that count, and the NaN rows (shared by the reference and the launchers)
# ----------------------------------------------------------------------------------------------------------------


def _row_masks(target: torch.Tensor, ignore_index: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid, bad) [M] bool: rows that count (class id != ignore_index; every row for probabilities), and those of
    them whose id is outside [0, C): NaN in both terms and every gradient, found without a host sync."""
    if target.is_floating_point():
        valid = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
        return valid, ~valid
    valid = target != ignore_index
    return valid, valid & ((target < 0) | (target >= classes))


def _mask_rows(values: torch.Tensor, valid: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """values where the row counts, 0 where it is ignored, NaN where its id is out of range (rows on dim 0)."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    return torch.where(bad.view(shape), torch.nan, torch.where(valid.view(shape), values, 0.0))


# ----------------------------------------------------------------------------------------------------------------
# Reference (PyTorch): the oracle and the CPU path, in chunks of rows; fp32 (fp64 for fp64 inputs)
# ----------------------------------------------------------------------------------------------------------------


def reference_chunk_rows(classes: int) -> int:
    """Rows per chunk of the reference: at most CHUNK_ELEMENTS logits per [chunk, C] buffer."""
    return max(1, CHUNK_ELEMENTS // classes)


def _counted_row_chunks(target: torch.Tensor, ignore_index: int, classes: int) -> tuple[torch.Tensor, ...]:
    """Row ids in chunks of reference_chunk_rows(C). Ignored rows are skipped on CPU tensors (they cost nothing);
    on other devices every row is processed (counting them would synchronise) and the ignored ones are masked."""
    rows = torch.arange(target.shape[0], device=target.device)
    if target.device.type == "cpu" and not target.is_floating_point():
        rows = rows[target != ignore_index]
    return rows.split(reference_chunk_rows(classes))


def _chunk_logits(hidden: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """hidden[rows] W^T + b in W's dtype (the accumulation dtype): [len(rows), C]."""
    x = hidden[rows].to(weight.dtype)
    return x @ weight.T if bias is None else torch.addmm(bias, x, weight.T)


def _accumulation(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return acc, weight.to(acc), None if bias is None else bias.to(acc)


def linear_loss_forward_reference(hidden, sub_hidden, weight, bias, target, bce, eps, ignore, temperature, thr):
    """fp32 [9, M], ops/masksub_loss.py's layout: per-row main and sub losses, then the stats of z, s/T, z/T."""
    _, w, b = _accumulation(hidden, weight, bias)
    out = torch.zeros(NUM_OUT, hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for rows in _counted_row_chunks(target, ignore, weight.shape[0]):
        z = _chunk_logits(hidden, rows, w, b)
        s = None if sub_hidden is None else _chunk_logits(sub_hidden, rows, w, b)
        out[:, rows] = loss_forward_reference(z, s, target[rows], bce, eps, ignore, temperature, thr)
    valid, bad = _row_masks(target, ignore, weight.shape[0])
    out[MAIN], out[SUB] = _mask_rows(out[MAIN], valid, bad), _mask_rows(out[SUB], valid, bad)
    return out


def linear_loss_backward_reference(
    grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, need_hidden, need_weight, need_bias, gather,
    *options,
):  # fmt: skip
    """(d hidden, d sub_hidden, d weight, d bias), each in its input's dtype, or an empty [0] when not asked for
    (need_hidden / need_weight / need_bias: dW and db apart, so that a bias-only gradient costs no dW matmul and no
    fp32 [C, D]) or when its term has no grad (grad_main / grad_sub None). gather: whether a host
    sync may read the count (the Triton flavour's choice; the reference computes counted rows either way).
    options: (bce, label_smoothing, ignore_index, temperature, target_threshold)."""
    acc, w, b = _accumulation(hidden, weight, bias)
    ignore = options[2]
    valid, bad = _row_masks(target, ignore, weight.shape[0])
    want_dh, want_dhs = need_hidden and grad_main is not None, need_hidden and grad_sub is not None
    dh = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if want_dh else None
    dhs = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if want_dhs else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
    db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_bias and bias is not None else None
    for rows in _counted_row_chunks(target, ignore, weight.shape[0]):
        z = _chunk_logits(hidden, rows, w, b)
        s = None if sub_hidden is None else _chunk_logits(sub_hidden, rows, w, b)
        gm, gs = (None if g is None else g[rows] for g in (grad_main, grad_sub))
        dz, ds = loss_backward_reference(gm, gs, out[:, rows], z, s, target[rows], *options)
        for d, g, x, dx in ((dz, gm, hidden, dh), (ds, gs, sub_hidden, dhs)):
            if g is None:  # the term's gradient was not asked for: d is an empty [0]
                continue
            d = _mask_rows(d, valid[rows], bad[rows])  # NaN rows for out-of-range ids (ignored ones are 0)
            if dx is not None:
                dx[rows] = d @ w
            if dw is not None:
                # an ignored row's hidden state zeroed where every row is processed (CUDA tensors): a NaN there
                # reaches no gradient, as where those rows are skipped (CPU tensors, the kernels)
                dw += d.T @ torch.where(valid[rows, None], x[rows].to(acc), 0.0)
            if db is not None:
                db += d.sum(0)
    dtypes = (hidden.dtype, hidden.dtype, weight.dtype, weight.dtype)
    # an absent gradient: a [0] of its own (a custom op's outputs may not alias one another under torch.compile)
    return tuple(hidden.new_empty(0) if g is None else g.to(dtype) for g, dtype in zip((dh, dhs, dw, db), dtypes))


# ----------------------------------------------------------------------------------------------------------------
# Launchers of the Triton kernels (ops/_linear_loss_kernels.py)
# ----------------------------------------------------------------------------------------------------------------

INTERPRETER_PROGRAMS = 4  # "enough programs" under the CPU interpreter, so that the tests exercise the splits


@functools.cache
def _target_programs(device: torch.device) -> int:
    """Programs that fill the device: two per SM (splits are added until a grid has this many)."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def _row_splits(class_tiles: int, row_tiles: int, device: torch.device) -> int:
    """Row splits of dW: while the class tiles cannot fill the GPU, the row tiles are dealt out to up to
    MAX_DW_SPLITS splits (each costs an fp32 [C, D] accumulator), in turn, so that the counted ones, whose number
    the kernel reads on the device, are shared evenly; at least 1 (an empty batch still gets its zero outputs)."""
    return max(1, min(row_tiles, _target_programs(device) // max(class_tiles, 1), MAX_DW_SPLITS))


def _class_split_grid(row_tiles: int, class_tiles: int, every_row_counts: bool, device: torch.device):
    """(grid, slabs) of a forward / dH launch: the grid (row tiles, max_splits), whose kernels choose their class
    splits E <= max_splits on the device from the count (_linear_loss_kernels._class_splits: the A row tiles that
    hold counted rows get E splits each, A E <= max(A, target) programs); slabs: the most programs that work, for
    any count (dH's fp32 slabs of BLOCK_M rows). max_splits: those that fill the GPU when every row counts, and up to
    MAX_COUNT_SPLITS for fewer unless every row is known to count (probabilities)."""
    target = _target_programs(device)
    fill = target // max(row_tiles, 1)
    max_splits = max(1, min(class_tiles, fill if every_row_counts else max(fill, MAX_COUNT_SPLITS)))
    return (row_tiles, max_splits), max(1, min(row_tiles * max_splits, max(row_tiles, target)))


def _kernel_inputs(hidden, sub_hidden, weight, bias, target, ignore_index, bce, threshold):
    """(tensors, strides, constexprs, blocks): operands with unit last stride (fp64 ones in fp32; absent ones stand
    in as another pointer), the row order and count, and the flags common to the three kernels."""
    compute = torch.float32 if hidden.dtype == torch.float64 else hidden.dtype

    def operand(x):
        return None if x is None else (x if x.stride(-1) == 1 else x.contiguous()).to(compute)

    h, hs, w, b = (operand(x) for x in (hidden, sub_hidden, weight, bias))
    y = target if target.stride(-1) == 1 else target.contiguous()
    order, count = kernels.row_order(target, ignore_index)
    (rows, depth), classes = h.shape, w.shape[0]
    tops = _max_blocks(compute)
    blocks = tuple(min(top, max(16, next_power_of_2(n))) for top, n in zip(tops, (rows, classes, depth)))
    # the largest offset into W that the tiles compute, their masked lanes past C and D included (an int32 wrap there
    # was harmless, but an overflow: helper-348)
    last_offset = (-(-classes // blocks[1]) * blocks[1] - 1) * w.stride(0) + -(-depth // blocks[2]) * blocks[2] - 1
    flags = {
        "HAS_SUB": hs is not None,
        "HAS_BIAS": b is not None,
        "BCE": bool(bce),
        "DENSE": y.is_floating_point(),
        "BINARISE": threshold is not None,
        "UPCAST": _backend.triton_interpreted(),  # the interpreter's bf16 tl.dot is wrong: fp32 operands there
        "PRECISION": "ieee" if compute == torch.float32 else "tf32",  # fp32 inputs: true fp32 products, no TF32
        "BLOCK_M": blocks[0],
        "BLOCK_N": blocks[1],
        "BLOCK_K": blocks[2],
        "WIDE_W": last_offset >= WIDE_OFFSETS,  # W's offsets in int64 (else int32: fewer registers)
    }
    tensors = (h, h if hs is None else hs, w, w if b is None else b, y, order, count)
    strides = (h.stride(0), 0 if hs is None else hs.stride(0), w.stride(0), y.stride(0) if flags["DENSE"] else 1)
    return tensors, strides, flags, blocks


def _max_blocks(compute: torch.dtype) -> tuple[int, int, int]:
    """The largest (BLOCK_M, BLOCK_N, BLOCK_K) tiles for operands of dtype ``compute``."""
    if compute == torch.float32:
        return MAX_BLOCK_M, min(MAX_BLOCK_N, MAX_BLOCK_N_FP32), min(MAX_BLOCK_K, MAX_BLOCK_K_FP32)
    return MAX_BLOCK_M, MAX_BLOCK_N, MAX_BLOCK_K


def _num_warps(blocks) -> int:
    # 8 warps from 64 x 64 tiles up: on 4 warps a 64 x 64 or 64 x 128 tile's loss code spills (sm_80 and sm_90)
    return 8 if blocks[0] * blocks[1] >= 64 * 64 else 4


def _forward_triton(hidden, sub_hidden, weight, bias, target, bce, eps, ignore, temperature, threshold):
    tensors, strides, flags, blocks = _kernel_inputs(hidden, sub_hidden, weight, bias, target, ignore, bce, threshold)
    flags["UNIT_T"] = temperature == 1.0  # the teacher softmax(z / T) is the main term's: shared
    (rows, depth), classes = hidden.shape, weight.shape[0]
    row_tiles, class_tiles = cdiv(rows, blocks[0]), cdiv(classes, blocks[1])
    grid, _ = _class_split_grid(row_tiles, class_tiles, flags["DENSE"], hidden.device)
    part = torch.zeros(kernels.NUM_PART, grid[1], rows, dtype=torch.float32, device=hidden.device)
    if rows:
        splitting = (class_tiles, _target_programs(hidden.device))
        args = (*tensors, part, rows, classes, depth, *strides, *splitting, eps, temperature, threshold or 0.0)
        kernels._fwd_kernel[grid](*args, **flags, num_warps=_num_warps(blocks))
    out = kernels.combine_states(part, bce, sub_hidden is not None, temperature, classes)
    valid, bad = _row_masks(target, ignore, classes)
    out[MAIN], out[SUB] = _mask_rows(out[MAIN], valid, bad), _mask_rows(out[SUB], valid, bad)
    return out


def _sum_splits(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The splits' fp32 partial sums added in a fixed order, rounded once to ``dtype``."""
    return (part[0] if part.shape[0] == 1 else part.sum(0)).to(dtype)


def _sum_slabs(slabs, order, count, hidden, splitting, block_m) -> torch.Tensor:
    """dH [M, D] in the hidden states' dtype from _dh_kernel's fp32 slabs: each counted row's splits added in a
    fixed order (_dh_sum_kernel, the same choice of splits on the device), 0 in the ignored rows."""
    rows, depth = hidden.shape
    dh = torch.empty(rows, depth, dtype=hidden.dtype, device=hidden.device)
    if rows and depth:
        block_r, block_d = DH_SUM_BLOCKS
        grid = (cdiv(rows, block_r), cdiv(depth, block_d))
        kernels._dh_sum_kernel[grid](
            slabs, order, count, dh, rows, depth, dh.stride(0), *splitting, BLOCK_M=block_m, BLOCK_R=block_r,
            BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return dh


def _backward_triton(
    grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, need_hidden, need_weight, need_bias, gather,
    *options,
):  # fmt: skip
    # the chunk loop's cuBLAS matmuls where it may read the count (eager) or needs none (probabilities: every row
    # counts); else (class ids under torch.compile, CUDA graphs) the kernels below, which skip ignored rows
    if gather or target.is_floating_point():
        return backward_in_chunks(grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, need_hidden,
                                  need_weight, need_bias, gather, options)  # fmt: skip
    bce, eps, ignore, temperature, threshold = options
    tensors, strides, flags, blocks = _kernel_inputs(hidden, sub_hidden, weight, bias, target, ignore, bce, threshold)
    flags.update(MAIN_GRAD=grad_main is not None, SUB_GRAD=grad_sub is not None, UNIT_T=temperature == 1.0)
    (rows, depth), classes = hidden.shape, weight.shape[0]
    row_tiles, class_tiles = cdiv(rows, blocks[0]), cdiv(classes, blocks[1])
    gm, gs = (out[0] if g is None else g for g in (grad_main, grad_sub))
    inputs = (*tensors, out, gm, gs)
    scalars = (rows, classes, depth, *strides, gm.stride(0), gs.stride(0))
    options = (eps, temperature, threshold or 0.0)
    launch = rows and (grad_main is not None or grad_sub is not None)

    def fp32_zeros(*shape):
        return torch.zeros(shape, dtype=torch.float32, device=hidden.device)

    def absent():  # a gradient not asked for: a [0] of its own (a custom op's outputs may not alias one another)
        return hidden.new_empty(0)

    dh, dhs, dw, db = absent(), absent(), absent(), absent()
    if need_hidden:
        grid, slabs = _class_split_grid(row_tiles, class_tiles, flags["DENSE"], hidden.device)
        splitting = (class_tiles, _target_programs(hidden.device))
        # each branch's slabs, or a placeholder pointer where its term has no gradient
        parts = [fp32_zeros(slabs * blocks[0], depth) if g is not None else out for g in (grad_main, grad_sub)]
        if launch:
            args = (*inputs, *parts, *scalars, *splitting, *options)
            kernels._dh_kernel[grid](*args, **flags, num_warps=_num_warps(blocks))
        _, _, _, _, _, order, count = tensors
        dh, dhs = (
            _sum_slabs(part, order, count, hidden, (*splitting, grid[1]), blocks[0]) if g is not None else absent()
            for part, g in zip(parts, (grad_main, grad_sub))
        )
    need_bias = need_bias and bias is not None
    if need_weight or need_bias:  # dW's programs; a bias alone: db's column sums, no dW product, no fp32 [C, D]
        splits = _row_splits(class_tiles, row_tiles, hidden.device)
        # the partial sums asked for, else a placeholder pointer (the kernel's STORE_DW / STORE_DB leave it unread)
        dw_part = fp32_zeros(splits, classes, depth) if need_weight else out
        db_part = fp32_zeros(splits, classes) if need_bias else out
        if launch:
            args = (*inputs, dw_part, db_part, *scalars, splits * blocks[0], *options)
            kernels._dw_kernel[(class_tiles, splits)](
                *args, **flags, STORE_DW=need_weight, STORE_DB=need_bias, num_warps=_num_warps(blocks)
            )
        dw = _sum_splits(dw_part, weight.dtype) if need_weight else absent()
        db = _sum_splits(db_part, weight.dtype) if need_bias else absent()
    return dh, dhs, dw, db


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, no host syncs on CUDA tensors) and autograd
# ----------------------------------------------------------------------------------------------------------------


@masksub_op(
    "linear_masksub_loss_forward",
    device="hidden",
    torch=linear_loss_forward_reference,
    triton=_forward_triton,
    cuda=None,  # no CUDA-extension (csrc/) implementation yet: auto takes triton or torch
    records=("linear_masksub_loss",),
    check=check_linear_loss_op,
)
def _linear_loss_op(
    hidden: torch.Tensor,
    sub_hidden: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
) -> torch.Tensor:
    """fp32 [NUM_OUT, M]: the per-row losses and the saved softmax stats (ops/masksub_loss.py's layout)."""


@_linear_loss_op.register_fake
def _(hidden, *options):
    return hidden.new_empty(NUM_OUT, hidden.shape[0], dtype=torch.float32)


@masksub_op(
    "linear_masksub_loss_backward",
    device="hidden",
    torch=linear_loss_backward_reference,
    triton=_backward_triton,
    cuda=None,  # no CUDA-extension (csrc/) implementation yet: auto takes triton or torch
    check=check_linear_backward_op,
)
def _linear_loss_backward_op(
    grad_main: torch.Tensor | None,
    grad_sub: torch.Tensor | None,
    out: torch.Tensor,
    hidden: torch.Tensor,
    sub_hidden: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    gather: bool,
    bce: bool,
    label_smoothing: float,
    ignore_index: int,
    temperature: float,
    target_threshold: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d hidden, d sub_hidden, d weight, d bias), each [0] when not asked for (need_weight and need_bias apart: dW's
    matmul runs only for need_weight) or its term has no grad. gather: a
    host sync may read the count of counted rows (eager; not under torch.compile or CUDA graphs)."""


@_linear_loss_backward_op.register_fake
def _(grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, need_hidden, need_weight, need_bias, *_):
    def grad(x, shape, wanted):
        return x.new_empty(shape if wanted else (0,))

    return (
        grad(hidden, hidden.shape, need_hidden and grad_main is not None),
        grad(hidden, hidden.shape, need_hidden and grad_sub is not None),
        grad(weight, weight.shape, need_weight),
        grad(weight, weight.shape[:1], need_bias and bias is not None),
    )


def _setup_context(ctx, inputs, output):
    hidden, sub_hidden, weight, bias, target, *options = inputs
    ctx.save_for_backward(hidden, sub_hidden, weight, bias, target, output)
    ctx.options = options  # bce, label_smoothing, ignore_index, temperature, target_threshold
    ctx.operands = (sub_hidden is not None, True, options[0])  # for called_linear_loss


def _backward(ctx, grad_out):
    hidden, sub_hidden, weight, bias, target, out = ctx.saved_tensors
    need_h, need_hs, need_w, need_b = ctx.needs_input_grad[:4]
    need_params = need_w or need_b
    # the main term reaches h, W and b through z; the sub term reaches h_s, W and b through s (its teacher is detached)
    need_main = grad_out is not None and (need_h or need_params)
    need_sub = grad_out is not None and sub_hidden is not None and (need_hs or need_params)
    if not (need_main or need_sub):
        return (None,) * 10
    grad_main, grad_sub = grad_out[MAIN] if need_main else None, grad_out[SUB] if need_sub else None
    args = (grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, need_h or need_hs, need_w, need_b)
    dh, dhs, dw, db = _linear_loss_backward_op.from_backward(*args, not sync_free(hidden), *ctx.options)
    return (
        dh if need_h else None,
        dhs if need_hs and need_sub else None,
        dw if need_w else None,
        db if need_b else None,
        *(None,) * 6,
    )


_linear_loss_op.register_autograd(_backward, setup_context=_setup_context, called=called_linear_loss)


# ----------------------------------------------------------------------------------------------------------------
# Public API: the op, the reductions (the host-side checks, ops/losses.py's rules: _linear_loss_checks.py)
# ----------------------------------------------------------------------------------------------------------------


# The single-branch function shares linear_masksub_loss's ops: it reports its own calls (MaskSubOp.report_as)
_backend.register_op_names(("linear_soft_target_cross_entropy",), _linear_loss_op.implemented)


def linear_masksub_loss(
    main_hidden: torch.Tensor,
    sub_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    *,
    mode: str = "ce",
    main_weight: float = 0.5,
    sub_weight: float = 0.5,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    temperature: float = 1.0,
    target_threshold: float | None = None,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> MaskSubLoss:
    """``masksub_loss(main_hidden @ weight.T + bias, sub_hidden @ weight.T + bias, target, ...)`` without the logits.

    main_hidden, sub_hidden: [M, D] fp32/fp16/bf16/fp64, rows aligned (row i of both is the same sample or
    position). weight: [C, D] (a tied embedding works), bias: [C] or None; all of one dtype and device (under
    torch.autocast for their device, cast to its dtype as F.linear's operands would be, fp64 left as is). target:
    class ids [M] (int64/int32; ``ignore_index`` rows count in neither term and cost no work) or probabilities
    [M, C]. The options, the checks and their errors, and the values are masksub_loss's (docs/semantics.md §7):
    returns MaskSubLoss(loss, main, sub), fp32 scalars ([M] with reduction='none'). Gradients reach both hidden
    states, the weight and the bias (fp32 accumulation, one rounding to the inputs' dtype), each computed only where
    its input requires grad (a frozen weight beside a trained bias: no dW matmul, no fp32 [C, D]); the sub term's
    teacher softmax(z / T) is detached. With a scalar reduction and an input requiring grad, the gradients are
    computed in the forward in chunks of rows and stored (dH, dHs [M, D]; one dW, db in fp32 for the combined loss),
    so the first backward of ``.loss`` only scales them (a second one through a retained graph recomputes);
    ``.main`` and ``.sub`` on their own backpropagate through a recompute of their logits. Never [M, C] (unless
    chunk_rows >= M). No CUDA extension.

    chunk_rows (an int in [1, 2^31)): that path's rows per chunk, about 2 min(chunk_rows, M) C fp32 of logits (the
    triton backend writes their fp16 / bf16 gradients over them) beside one fp32 dW [C, D]. None: the triton
    backend's rule (ops/_linear_loss_chunks.grads_chunk_rows: 96 MiB, at least 384 rows where M >= 12288), 2^20 / C
    rows on the torch backend. Fewer rows cost speed (each chunk's dW matmul reads and writes the fp32 accumulator;
    predicted 1.6x the time at 128 rows for BERT's head, H200): prefer a few hundred, in multiples of 64. Values are
    the same up to fp32 rounding. The other path (reduction='none', no gradient, class ids under torch.compile /
    CUDA graphs) does not use it (triton: its forward and compiled backward hold no [rows, C] logits, its eager
    backward the rule's chunks; torch: chunks of 2^20 / C rows).
    """
    if sub_hidden is None:
        raise TypeError(
            "sub_hidden must be a torch.Tensor, got NoneType (one branch: linear_soft_target_cross_entropy)"
        )
    main_hidden, sub_hidden, weight, bias = autocast_operands(main_hidden, sub_hidden, weight, bias)
    target, options = _check_all(
        main_hidden, sub_hidden, weight, bias, target, mode, reduction, label_smoothing, ignore_index, temperature,
        target_threshold,
    )  # fmt: skip
    main_weight = check_real("main_weight", main_weight, 0.0, expected=">= 0 (at most fp32's max)")
    sub_weight = check_real("sub_weight", sub_weight, 0.0, expected=">= 0 (at most fp32's max)")
    chunk = check_chunk_rows(chunk_rows)
    wanted = _grads_wanted(main_hidden, sub_hidden, weight, bias, target, reduction)
    if wanted is not None:  # the gradients in the forward: 6 matmul units, the backward of .loss only scales them
        return MaskSubLoss(
            *_linear_loss_grads_op(
                main_hidden, sub_hidden, weight, bias, target, reduction == "mean", main_weight, sub_weight,
                *wanted, True, chunk, *options,
            )[:3]
        )  # fmt: skip
    out = _linear_loss_op(main_hidden, sub_hidden, weight, bias, target, *options)
    count = _row_count(target, options.ignore_index)
    main, sub = _reduce(out[MAIN], count, reduction), _reduce(out[SUB], count, reduction)
    return MaskSubLoss(main_weight * main + sub_weight * sub, main, sub)


def linear_soft_target_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``soft_target_cross_entropy(hidden @ weight.T + bias, target, ...)`` without the logits (one branch).

    hidden: [M, D] fp32/fp16/bf16/fp64; weight [C, D] and bias [C] or None of the same dtype and device (under
    torch.autocast: cast as in linear_masksub_loss); target:
    class ids [M] or probabilities [M, C], as in soft_target_cross_entropy. Returns fp32 [M] for reduction='none',
    else a scalar; gradients reach hidden, weight and bias. chunk_rows: as in linear_masksub_loss (one branch's
    logits: about min(chunk_rows, M) C fp32).
    """
    hidden, _, weight, bias = autocast_operands(hidden, None, weight, bias)
    target, options = _check_all(
        hidden, None, weight, bias, target, "ce", reduction, label_smoothing, ignore_index, 1.0, None, "hidden"
    )
    chunk = check_chunk_rows(chunk_rows)
    _linear_loss_op.report_as("linear_soft_target_cross_entropy", hidden)  # the ops report linear_masksub_loss
    wanted = _grads_wanted(hidden, None, weight, bias, target, reduction)
    if wanted is not None:
        args = (hidden, None, weight, bias, target, reduction == "mean", 1.0, 0.0, *wanted, True, chunk, *options)
        return _linear_loss_grads_op(*args)[0]
    out = _linear_loss_op(hidden, None, weight, bias, target, *options)
    return _reduce(out[MAIN], _row_count(target, options.ignore_index), reduction)
