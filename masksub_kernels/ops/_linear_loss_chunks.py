"""Gradients in the forward: the fused-linear MaskSub loss in chunks of rows, 6 matmul units instead of 10.

When the loss is reduced to scalars (reduction 'mean' or 'sum') and a gradient will be needed, the gradient that
the backward receives for each per-row loss is one number, the same for every row. So the forward computes the
gradients of the *reduced combined loss* L = a main + b sub (a, b: main_weight, sub_weight) itself, chunk by chunk
of rows, and the backward of L only scales them (Liger's fused linear cross-entropy and Apple's Cut Cross-Entropy
do the same for one term):

    for each chunk of R counted rows (ignore_index rows are skipped: they cost nothing):
        [z; s] = [h_c; hs_c] W^T (+ b)                      [2R, C] fp32, this chunk only, one matmul
        losses and stats of z, s/T, z/T; dz, ds for the row grads a/count, b/count (mean) or a, b (sum),
                                         stored times a power of two (below)
        [dh_c; dhs_c] = [dz; ds] W                          rows of dH, dHs [M, D], one matmul
        dW += [dz; ds]^T [h_c; hs_c],  db += sum_rows [dz; ds]          one fp32 accumulator, one matmul
                                         (db in it: a ones column in [h_c; hs_c], the kernels' fp16 / bf16 path)
    backward(g_L):  dh = g_L dH,  dhs = g_L dHs,  dW = g_L dW,  db = g_L db   (scaled in place: see below)

(For a mean, the row grads are 2^k / count with 2^k the power of two <= count, and the backward multiplies by
2^-k: each row's dz, ds, dH are of an unreduced loss's size, within fp16's range; powers of two scale exactly. One
weighted term's stored gradients are unweighted, two terms' carry their weights over a power of two, _common_scale.)

That is 2 units of 2 M D C flops for the logits and 4 for the gradients: the composite's 6, against the recompute
design's 10 (ops/linear_masksub_loss.py). The .main and .sub outputs stay differentiable on their own: their
gradients come from the recompute op's backward on the saved per-row stats (3 more units per term; any scalars).
The backward of L scales the stored gradients in place, in fp32 (_linear_loss_grads._scaled), and returns them; a
second backward through the same graph (retain_graph) recomputes; double backward is refused.

The loop's custom op, its fake and its autograd: _linear_loss_grads.py. Two flavours, chosen by the op's backend:
- reference (the 'torch' backend, the CPU path): logits in fp32 (fp64 for fp64 inputs), the loss and its logit
  gradients by ops/masksub_loss.py's reference functions, chunks of reference_chunk_rows(C) rows (CHUNK_ELEMENTS);
- kernels (the 'triton' backend): logits in fp32 from the inputs' dtype (cuBLAS, fp32 output: never rounded to
  bf16) without the bias, the loss forward and backward in one launch (ops/_loss_fwd_bwd.py: the bias added as
  the kernels read; two launches where the classes split), dz and ds written over the fp32 logits, or in the
  inputs' fp16 / bf16 over the first half of each logits row's bytes (over_rows); the stats into their columns of
  [9, M]; dH and dHs from one matmul into an fp32 [2R, D] temporary, copied (rounded once) into their rows by one
  launch; dW accumulated in fp32. The matmuls (_linear_loss_matmuls.py) run over C's aligned head (views of W, no
  copy); the loss launch takes the tail of < 8 classes (ClassTail: its logits, dH's share, its gradient columns kept
  for dW's tail, one matmul per branch after the loop): 7 launches per chunk (2 copies of the rows into the stacked
  buffer).

Extra memory (beyond the inputs and the returned gradients): the chunk's [2R, C] fp32 logits (384 rows at C =
30522, 89 MiB: GRADS_CHUNK_BYTES, GRADS_CHUNK_MIN_ROWS), the stacked rows [2R, D], the stats [9, M] fp32, dH's fp32
temporary [2R, D], one fp32 dW [C, D] (+ db [C]) for the two terms, the kept tail columns [2, M, 8]. Never [M, C],
no copy of W. On the kernels' fp16 / bf16 path with a bias, dW's accumulator is [dW | db | 0...] [C, D + pad] and
the stacked rows [h_c; hs_c | 1 | 0...] [2R, D + pad] (padded_depth): db comes out of dW's matmul; dW is returned
as the [C, D] view of that accumulator (row stride D + pad: the fake says so), db as a copy of its column.

In eager mode which rows count is read on the host (one sync on CUDA tensors: the number of counted rows), so that
the matmuls run on the counted rows only; when every row counts the chunks are slices, with no gathers. Under
torch.compile and CUDA graph capture probability targets (every row counts) run with gather=False: slices of every
row, the count, the mean's divisor and the stored gradients' unit as device tensors, no host sync (class ids run
the recompute op there: _grads_wanted).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch

from . import _linear_loss_matmuls as matmuls
from . import masksub_loss as loss_ops
from ._loss_fwd_bwd import ClassTail, forward_backward_triton, one_launch, prepare_tail
from ._loss_layout import _layout
from .masksub_loss import MAIN, NUM_OUT, SUB

# The kernels' path: the chunk's [2R, C] fp32 logits (fp16 / bf16 gradients over their rows), 384 rows at BERT's
# shape; the longer the chunks, the fewer passes of dW's matmul over its fp32 [C, D + pad] (94 MB), launches, host.
GRADS_CHUNK_BYTES = 96 * 2**20
# ... but at least GRADS_CHUNK_MIN_ROWS rows where M has 32 times as many (GRADS_CHUNK_MIN_SHARE; M / 32 rows, in
# multiples of 64, below that): per chunk dW's matmul moves C D 8 bytes for its 4 R D C flops, so below R ~ 2 F / BW
# (~320 rows on an H200, ~460 on an H100 at the perf model's assumed rates) those passes outlast the matmul, and the
# budget alone gives large vocabularies few rows (64 at C = 128256: predicted 2.5x slower at M = 16384, D = 4096;
# 1.31x at RoBERTa's 50265). 384: the H200's knee, within issue 13's 5% memory goal at RoBERTa's shape (512 rows:
# 5.6%); the buffer is then ~3 KiB per class, at most 1 / 32 of the composite's least memory.
GRADS_CHUNK_MIN_ROWS = 384
GRADS_CHUNK_MIN_SHARE = 32
ALIGN_CLASSES = 64  # the kernels' chunk buffers' rows, in elements: 128-byte rows in bf16 (aligned_classes)

# loss, main, sub (fp32 0-d); dH, dHs [M, D]; dW [C, D] and db [C] in fp32, fp64 for fp64 inputs (or [0]); the
# per-row stats [9, M]
GradsOut = tuple[torch.Tensor, ...]


def counted_rows(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """int64 ids of the rows that count (class id != ignore_index; every row for probabilities), in order."""
    if target.is_floating_point():
        return torch.arange(target.shape[0], device=target.device)
    return torch.nonzero(target != ignore_index).squeeze(1)  # a host sync on CUDA tensors: the count


def _device_count(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """fp64 0-d on target's device: the rows that count (class id != ignore_index; every row for probabilities)."""
    if target.is_floating_point():
        return torch.full((), float(target.shape[0]), dtype=torch.float64, device=target.device)
    return (target != ignore_index).sum().to(torch.float64)


# Two weighted terms share one scale for their stored gradients (one dW matmul over both): the heavier term's weight
# is kept at most about STORED_WEIGHT_MAX in them, at least about 1 (_common_scale)
STORED_WEIGHT_MAX = 2.0**8


def _common_scale(heavier: float) -> float:
    """The power of two that two weighted terms' stored gradients are divided by, the heavier weight > 0 given: 1
    for weights in [1, 2 STORED_WEIGHT_MAX), the weight's power of two below 1 (1e-5 lost precision to fp16's
    subnormals), above the power of two that brings it into [STORED_WEIGHT_MAX, 2 STORED_WEIGHT_MAX) (1e5
    overflowed fp16). The lighter term loses fp16 precision where its stored weight falls below ~2^-10."""
    exponent = math.frexp(heavier)[1] - 1  # heavier = m 2^exponent, m in [1, 2): no overflow up to fp32's max
    ceiling = math.frexp(STORED_WEIGHT_MAX)[1] - 1
    return 2.0 ** (exponent - min(max(exponent, 0), ceiling))


def _row_grad(grad: float | torch.Tensor, term_weight: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1] in ``dtype`` (the accumulation's: fp64 for the reference's fp64): a term's gradient of the reduced loss
    with respect to each of its row losses (expanded per chunk)."""
    if isinstance(grad, torch.Tensor):
        return (grad * term_weight).to(dtype).reshape(1)
    return torch.full((1,), grad * term_weight, dtype=dtype, device=device)


def _chunk_rows(chunks: list[slice], step: int):
    """For chunks that are slices of every row: x -> each chunk's rows of x along dim, views from one split (one
    host call for all chunks, where a slice per chunk costs ~2 us each); an empty x (a gradient not stored) for
    every chunk."""

    def rows(x: torch.Tensor, dim: int = 0):
        return x.split(step, dim) if x.numel() else [x] * len(chunks)

    return rows


class _ChunkViews(NamedTuple):
    """The views of the loop's buffers that a chunk of n rows uses: the same for every full chunk, so made once
    (grads_in_forward's host time)."""

    width: int  # the chunk's stacked rows, [h_c; hs_c]: 2n (n without a sub-branch)
    gm: torch.Tensor | None  # the two terms' row grads [n] (expanded: no memory)
    gs: torch.Tensor | None
    x_wide: torch.Tensor | None = None  # the stacked rows [2n, D + pad] (where the loop stacks them), their parts:
    x_rows: tuple = ()  # where h_c and hs_c go, [n, D] each
    x: torch.Tensor | None = None  # the logits' operand [2n, D]
    dw_rows: tuple = (None, None)  # dW's operands when the terms' gradients are not one matmul: [n, D + pad] each
    # the kernels' buffers' views (rows padded to aligned_classes)
    logits: torch.Tensor | None = None  # fp32 [2n, C]: the logits' matmul output
    z: torch.Tensor | None = None  # its [n, C] halves: the loss kernels' input
    s: torch.Tensor | None = None
    grads: torch.Tensor | None = None  # [2n, C]: dz over ds (the logits, or over them): dH's and dW's operand
    into: tuple = ()  # its [n, C] halves: what the backward kernel writes
    product: torch.Tensor | None = None  # fp32 [2n, D]: dH's rows of both terms (the loss launch takes C's tail)

    @classmethod
    def of(cls, n, has_sub, depth, classes, stacked, logits_buffer, narrow, g_main, g_sub, product_buffer):
        width = (2 if has_sub else 1) * n
        gm, gs = (None if g is None else g.expand(n) for g in (g_main, g_sub))
        parts = {}
        if stacked is not None:
            x_wide = stacked[:width]
            x_rows = tuple(x_wide[i * n : (i + 1) * n, :depth] for i in range(2 if has_sub else 1))
            dw_rows = (x_wide[:n], x_wide[n:] if has_sub else None)
            parts.update(x_wide=x_wide, x_rows=x_rows, x=x_wide[:, :depth], dw_rows=dw_rows)
        if logits_buffer is not None:
            logits = logits_buffer[:width, :classes]
            grads = logits if narrow is None else narrow[:width, :classes]  # narrow: [2R, 2 C_pad] over the logits
            z, s = (logits[:n, :classes], logits[n:, :classes]) if has_sub else (logits[:, :classes], None)
            into = (grads[:n, :classes], grads[n:, :classes])
            if narrow is not None:  # the backward's over_rows: each gradient row starts on its logits row, narrower
                for x, v in zip(into, (z, s)):
                    assert v is None or x.stride(0) * x.element_size() == v.stride(0) * v.element_size()
                    assert v is None or x.is_meta or (x.data_ptr() == v.data_ptr() and x.dtype != v.dtype)
            parts.update(logits=logits, z=z, s=s, grads=grads, into=into)
        if product_buffer is not None:
            parts["product"] = product_buffer[:width]
        return cls(width, gm, gs, **parts)


def _store_rows(chunk: slice | torch.Tensor, into: list, rows: list[torch.Tensor]) -> None:
    """dx[chunk] = r for each (dx, dx_c) of ``into`` and r of ``rows`` ([R, D], fp32 or fp64, rounded once to dx's
    dtype). dx_c: dx[chunk], a view, where the chunk is a slice (None for row ids): then one multi-tensor copy for
    them all (dH's and dHs's rows: one launch on CUDA, where a copy each took two)."""
    if all(dx_c is not None for _, dx_c in into):
        torch._foreach_copy_([dx_c for _, dx_c in into], rows)
        return
    for (dx, _), r in zip(into, rows):
        dx[chunk] = r.to(dx.dtype)


def padded_dw(want_weight: bool, want_bias: bool, dtype: torch.dtype) -> bool:
    """Whether dW is returned as the [C, D] view of a [C, padded_depth(D)] fp32 buffer: fp16 / bf16 inputs whose
    weight and bias both store a gradient, on every backend (the fake cannot know which ran). The kernels' path
    fills it as [dW | db | 0...] (db out of dW's matmul through a ones column); the reference leaves the padding
    unused. dW alone: a plain [C, D] (no ones column); db alone: no dW at all."""
    return want_weight and want_bias and dtype in (torch.float16, torch.bfloat16)


def padded_depth(depth: int) -> int:
    """The row length of the stacked rows with their ones column, [h; hs | 1 | 0...], and of dW's accumulator
    [dW | db | 0...]: D + 1 rounded up to 16 bytes of fp16 / bf16 (8 elements), so that the matmuls' rows stay
    16-byte aligned (D = 768: 776)."""
    return -(-(depth + 1) // 8) * 8


def aligned_classes(classes: int) -> int:
    """The row length of the kernels' [2R, C] chunk buffers: C rounded up to ALIGN_CLASSES elements (16-byte-aligned
    rows for cuBLAS; C = 30522 has none). The matmuls and the loss kernels use the first C columns of each row."""
    return -(-classes // ALIGN_CLASSES) * ALIGN_CLASSES


def _chunk_tail(v: _ChunkViews, n: int, terms: set, tail_grads, grads: tuple, tail: slice, w, x, stats) -> tuple:
    """A chunk plan's class tail (ClassTail, prepared): (the kept tail columns per branch, the PreparedTail) for a
    chunk of n rows x ([h_c; hs_c], or h_c alone), the terms whose dH rows it stores, the row grads (gm, gs) given
    and the call's tail gradient buffer [2, K, 8] (or None)."""
    products = tuple(v.product[t * n : (t + 1) * n] if t in terms else None for t in (0, 1))
    kept = (None, None) if tail_grads is None else (tail_grads[0], tail_grads[1])
    kept = tuple(None if g is None else k for k, g in zip(kept, grads))
    prepared = ClassTail(tail.start, w[tail], x[:n], x[n:] if v.s is not None else None, products, kept)
    return kept, prepare_tail(prepared, v.z, v.s, *grads, v.into, stats)


def _tail_layout(prepared) -> tuple:
    """What a prepared class tail hands the kernel, tensors by address and layout (the tests' check of a reuse)."""
    arguments = tuple(
        (a.data_ptr(), a.dtype, tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a
        for a in prepared.arguments
    )
    return arguments, prepared.flags, prepared.kept_rows


def grads_in_forward(
    hidden: torch.Tensor,
    sub_hidden: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    mean: bool,
    main_weight: float,
    sub_weight: float,
    need_hidden: bool,
    need_sub_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    options: tuple,
    *,
    rows_per_chunk: int,
    kernels: bool,
    gather: bool = True,
    row_grads: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> GradsOut:
    """The reduced losses and the stored gradients of L = main_weight main + sub_weight sub (module docstring).

    hidden, sub_hidden [M, D], weight [C, D], bias [C] or None; target [M] ids or [M, C] probabilities. mean:
    reduction 'mean' (else 'sum'). need_*: which gradients to store (the others come back as empty [0] tensors;
    need_bias without need_weight: db's column sums only, no dW matmul and no fp32 [C, D]; need_weight without
    need_bias, or no bias: no db).
    options: (bce, label_smoothing, ignore_index, temperature, target_threshold). kernels: the Triton flavour (else
    the reference). gather: chunks of the counted rows, their number read on the host (one sync on CUDA); else
    chunks of every row, ignored ones included (their loss and gradients are zeros), and the count, the mean's
    divisor and the stored gradients' unit kept on the device: no host sync (torch.compile, CUDA graphs).
    Returns (loss, main, sub, dH, dHs, dW, db, stats, scale): loss, main, sub fp32 0-d; dH, dHs in hidden's dtype;
    dW, db in fp32 (fp64 for fp64 inputs; padded_dw: dW a view); stats fp32 [9, M], the per-row losses and softmax stats
    (ops/masksub_loss.py's layout; ignored rows: zero losses) that the per-term backward needs; scale 0-d (fp64 for
    fp64 inputs, else fp32), the stored gradients' factor to the true ones.

    row_grads: the recompute op's backward (backward_in_chunks): each row's own grads of its main and sub losses ([M]
    each, or None: that term has none; mean False and weights 1 or 0 then, the scale 1)."""
    (rows, depth), classes = hidden.shape, weight.shape[0]
    device, has_sub = hidden.device, sub_hidden is not None
    acc = torch.float64 if hidden.dtype == torch.float64 and not kernels else torch.float32
    # the matmuls of the gradients: the inputs' dtype on the kernels' path (fp16 / bf16 tensor cores, fp32
    # accumulation; dz and ds rounded once, as the composite's), the accumulation dtype on the reference
    operand = hidden.dtype if kernels and hidden.dtype in (torch.float16, torch.bfloat16) else acc
    # L reaches h, W, b through z when main_weight != 0, and hs, W, b through s when sub_weight != 0 (the teacher
    # softmax(z / T) is detached)
    need_bias = need_bias and bias is not None
    want_main = main_weight != 0 and (need_hidden or need_weight or need_bias)
    want_sub = has_sub and sub_weight != 0 and (need_sub_hidden or need_weight or need_bias)
    # d(reduced loss) / d(row loss) is 1/count (mean) or 1 (sum). The stored gradients are kept `unit` times larger,
    # a power of two near count (exact), so that each row's dz, ds, dH are of the size of an unreduced loss's:
    # 1/count-sized values would underflow in fp16 (GradScaler scales only in the backward); the backward divides.
    if gather:
        ids = counted_rows(target, options[2])
        count = ids.numel()
        unit = float(1 << (max(count, 1).bit_length() - 1)) if mean else 1.0
        grad = unit / max(count, 1) if mean else 1.0
        every_row = count == rows  # chunks are slices: no gathers, and every row of dH is written
    else:  # the same numbers as device tensors (fp64: exact for counts below 2^53)
        ids, every_row = None, True  # every row in slices (an ignored row's dz, ds are zeros)
        count = _device_count(target, options[2])
        unit = torch.exp2(torch.floor(torch.log2(count.clamp_min(1)))) if mean else torch.ones_like(count)
        grad = unit / count.clamp_min(1) if mean else torch.ones_like(count)

    def zeros(shape, dtype, wanted):
        if not wanted:
            return hidden.new_empty(0)
        return (torch.empty if every_row else torch.zeros)(shape, dtype=dtype, device=device)

    dh = zeros((rows, depth), hidden.dtype, need_hidden and want_main)
    dhs = zeros((rows, depth), hidden.dtype, need_sub_hidden and want_sub)
    want_weight = need_weight and (want_main or want_sub)
    want_bias = need_bias and (want_main or want_sub)  # db alone (a frozen W): column sums of dz, ds, no dW matmul
    # db in dW's matmul (the kernels' path, fp16 / bf16 operands, where dW is an fp32 accumulator of its own): the
    # stacked rows get a column of ones, [h_c; hs_c | 1 | 0...] (rows of 16-byte multiples), so that column D of
    # [dz; ds]^T [h_c; hs_c | 1] is db's sum over the chunk's rows: no pass of its own over the [2R, C] gradients.
    # dW is then that [dW | db | 0...] accumulator until the chunks are done.
    padded = padded_dw(want_weight, want_bias, hidden.dtype)
    with_ones = kernels and padded  # the kernels' operand is then fp16 / bf16
    dw_width = padded_depth(depth) if padded else depth
    dw = torch.zeros(classes, dw_width, dtype=acc, device=device) if want_weight else None
    if padded and not with_ones:  # the reference: dW the [C, D] view from the start (the padding unused)
        dw = dw[:, :depth]
    db = torch.zeros(classes, dtype=acc, device=device) if want_bias and not with_ones else None
    stats = zeros((loss_ops.NUM_OUT, rows), torch.float32, True)  # every chunk writes its columns; ignored rows 0
    w = weight.to(operand)  # the reference's (and fp64 inputs') one copy of W; the inputs' own W otherwise
    # the kernels' matmuls run over these class ranges of W and of the chunk's buffers (views): an aligned head
    # (dW over it: 108 against 129 us per chunk on an H200, 2026-12-04) and a tail of < 8 classes
    parts = matmuls.class_parts(classes) if kernels else (slice(None),)
    b_acc = None if bias is None or kernels else bias.to(acc)
    bias_c = None if bias is None else bias.contiguous()  # the kernels' bias: read in its own dtype
    # the row grads of the two terms, one number each (expanded per chunk: no launch). With one term of nonzero
    # weight w, the stored gradients are that term's unweighted and w goes into `scale` (applied in fp32 by the
    # backward): w times them in fp16 would overflow or lose precision for w far from 1 (2^20: inf; 1e-5: 1e-2 error)
    # where the composite's gradient of that term does not depend on w. With both, the weights are kept within fp16's
    # comfortable range by a power of two that goes there too (_common_scale)
    weights = (main_weight, sub_weight if has_sub else 0.0)
    single = weights[0] if weights[1] == 0 else weights[1] if weights[0] == 0 else 0.0
    term_scale = single if single != 0 else _common_scale(max(weights)) if max(weights) > 0 else 1.0
    g_main = _row_grad(grad, main_weight / term_scale, acc, device) if want_main else None
    g_sub = _row_grad(grad, sub_weight / term_scale, acc, device) if want_sub else None
    row_g = None
    if row_grads is not None:  # each row's own grads instead (the recompute op's backward)
        row_g = tuple(None if g is None or not want else g.to(acc) for g, want in zip(row_grads, (want_main, want_sub)))
        g_main = g_sub = None

    step = max(1, rows_per_chunk)
    chunks = [slice(a, min(a + step, rows)) for a in range(0, rows, step)] if every_row else ids.split(step)
    logits_buffer = narrow = tickets = None  # the reference's chunks have none
    if kernels:  # the chunk's buffer, made once, rows padded for aligned matmuls; each chunk uses [:2n, :C]
        buffer_shape = ((2 if has_sub else 1) * min(step, rows), aligned_classes(classes))
        logits_buffer = torch.empty(buffer_shape, dtype=torch.float32, device=device)
        # fp16 / bf16: dz and ds written over their own logits rows, [2R, C] in the inputs' dtype with the fp32
        # rows' stride (the backward kernel's over_rows): no second buffer, so chunks twice as long in the memory
        narrow = logits_buffer.view(operand) if operand != torch.float32 else None
        # the loss forward's tickets for rows split over programs: zeroed once, left zero by each launch
        tickets = torch.zeros(min(step, rows), dtype=torch.int32, device=device)
    # dH's rows of a chunk where the loss launch takes C's tail (ClassTail): one fp32 [2R, D] buffer, made once
    product_buffer = None
    if kernels and len(parts) == 2 and (dh.numel() or dhs.numel()):
        product_buffer = torch.empty(buffer_shape[0], depth, dtype=torch.float32, device=device)
    # dW's tail once per call: the chunks' tail gradient columns kept in row order, [2, K, 8] (matmuls.add_tail_dw)
    tail_grads, kept_terms = None, [False, False]
    if kernels and len(parts) == 2 and dw is not None and hidden.dtype == operand:  # (the gradients' dtype: operand)
        tail_grads = torch.zeros(2, rows if every_row else ids.numel(), 8, dtype=operand, device=device)
    loss_options = options[:2] + options[3:]  # the loss launch's: bce, label_smoothing, temperature, threshold
    stacked = None
    if with_ones:  # the stacked rows with their ones column, made once; each chunk fills its [2n, :D]
        stacked = torch.zeros(buffer_shape[0], dw.shape[1], dtype=operand, device=device)
        stacked[:, depth] = 1
    # host time: views of a chunk of n rows made once; slices' chunk rows from one split per operand
    views: dict[int, _ChunkViews] = {}
    plans: dict[tuple, tuple] = {}  # per chunk size (and targets' layout): the loss launch's configuration, its tail
    sliced = _chunk_rows(chunks, step) if every_row else None
    h_rows, y_rows, stats_cols, dh_rows, dhs_rows = (
        (None,) * 5 if sliced is None else (sliced(hidden), sliced(target), sliced(stats, 1), sliced(dh), sliced(dhs))
    )
    hs_rows = sliced(sub_hidden) if sliced is not None and has_sub else None
    g_rows = (None, None) if row_g is None or sliced is None else tuple(None if g is None else sliced(g) for g in row_g)
    for index, chunk in enumerate(chunks):
        if sliced is not None:
            h_c, y = h_rows[index], y_rows[index]
            hs_c = hs_rows[index] if has_sub else None
        else:
            h_c, y = hidden.index_select(0, chunk), target.index_select(0, chunk)
            hs_c = sub_hidden.index_select(0, chunk) if has_sub else None
        n = h_c.shape[0]
        v = views.get(n)
        if v is None:
            v = views[n] = _ChunkViews.of(
                n, has_sub, depth, classes, stacked, logits_buffer, narrow, g_main, g_sub, product_buffer
            )
        gm, gs = v.gm, v.gs  # the row grads of the chunk's rows
        if row_g is not None:
            gm, gs = (
                None if g is None else g.index_select(0, chunk) if sliced is None else g_parts[index]
                for g, g_parts in zip(row_g, g_rows)
            )
        if v.x_wide is not None:  # [2R, D + pad]: the rows, their ones column
            for rows_c, into in zip((h_c, hs_c), v.x_rows):
                into.copy_(rows_c)
            x, (h_c, hs_c) = v.x, v.dw_rows  # dW's operands: db from the ones column
        else:
            x = torch.cat((h_c, hs_c)) if has_sub else h_c  # [2R, D]: both branches' logits from one matmul
        grads = tail = None  # the kernels' [2R, C] gradients, dz over ds; the class tail handed to the loss launch
        # the terms whose rows of dH / dHs this chunk stores: (term, dx, dx's chunk rows or None)
        stored = [
            (term, dx, None if dx_rows is None else dx_rows[index])
            for term, (g, dx, dx_rows) in enumerate(zip((gm, gs), (dh, dhs), (dh_rows, dhs_rows)))
            if g is not None and dx.numel()
        ]
        if kernels:
            # fp32 logits without the bias (never rounded to bf16), the loss forward and backward in one launch
            # (ops/_loss_fwd_bwd.py; two where the classes split) writing dz, ds over them (or their rows), which also
            # takes C's tail of < 8 classes: its logits, and dH's share into the fp32 products (ClassTail)
            z, s = v.z, v.s
            over_rows = narrow is not None
            # the loss launch's configuration and class tail, the same for every chunk of n rows whose targets' slice
            # is laid out alike (probabilities' rows may start off 16 bytes in some chunks: ALIGNED): made once (host
            # time), each chunk's row_base; the tail's rows are the stacked buffer's, else each chunk's own cat (then
            # the tail is made per chunk)
            key, static_rows = (n, _layout(y)), v.x_wide is not None
            plan = plans.get(key)
            if plan is None or loss_ops._CHECK_CONFIGS or not static_rows:  # what the class tail's plan is made of
                tail_args = (v, n, {term for term, _, _ in stored}, tail_grads, (gm, gs), parts[-1], w, x, stats)
            if plan is not None and loss_ops._CHECK_CONFIGS:  # the tests: a reuse where another plan is derived
                fresh = one_launch(gm, gs, z, s, y, *loss_options, v.into, bias_c, over_rows)
                assert fresh == plan[0], f"a stale chunk plan: {plan[0]} reused where {fresh} is derived"
                if plan[1] is not None and static_rows:
                    assert _tail_layout(_chunk_tail(*tail_args)[1]) == _tail_layout(plan[1]), "a stale chunk tail"
            if plan is None:
                launch, prepared = one_launch(gm, gs, z, s, y, *loss_options, v.into, bias_c, over_rows), None
                if launch is not None and len(parts) == 2 and w.stride(-1) == 1 and x.stride(-1) == 1:
                    kept, prepared = _chunk_tail(*tail_args)
                    kept_terms = [was or k is not None for was, k in zip(kept_terms, kept)]
                plan = plans[key] = (launch, prepared)
            elif plan[1] is not None and not static_rows:
                plan = (plan[0], _chunk_tail(*tail_args)[1])  # this chunk's own rows
            launch, prepared = plan
            tail = None if prepared is None else prepared._replace(row_base=index * step)
            logits = matmuls.fp32_logits(x, w, v.logits, parts[:1] if tail is not None else None)  # [2n, C]
            # the stats straight into their columns of [9, M] where the chunk is a slice (else copied below)
            into_stats = stats_cols[index] if sliced is not None else stats.new_empty(NUM_OUT, n)
            grads = v.grads
            out, (dz, ds) = forward_backward_triton(
                gm, gs, z, s, y, *options, out=into_stats, tickets=tickets, into=v.into, bias=bias_c,
                over_rows=over_rows, launch=launch, tail=tail,
            )  # fmt: skip
        else:
            logits = x.to(acc) @ w.T if b_acc is None else torch.addmm(b_acc, x.to(acc), w.T)
            z, s = (logits[:n], logits[n:]) if has_sub else (logits, None)
            out = loss_ops.loss_forward_reference(z, s, y, *options)
            dz, ds = loss_ops.loss_backward_reference(gm, gs, out, z, s, y, *options)
        if not kernels or sliced is None:
            stats[:, chunk] = out  # fp32 [9, R]
        # [R, D] rows of dH and dHs: the kernels' from one matmul over the rows of both terms' gradients in grads
        # (dz over ds), into an fp32 temporary (the head's, added to the tail's share that the loss launch wrote);
        # the reference's from a matmul each
        if stored and kernels:
            first, last = stored[0][0] * n, (stored[-1][0] + 1) * n
            if tail is not None:
                product = v.product[first:last]
                matmuls.add_matmul(product, grads[first:last, parts[0]], w[parts[0]])  # [n or 2n, D] fp32
            else:
                product_rows = None if v.product is None else v.product[first:last]  # (a chunk whose forward splits)
                product = matmuls.times_weight(grads[first:last], w, product_rows)
            rows_of = [product[term * n - first : (term + 1) * n - first] for term, _, _ in stored]
            _store_rows(chunk, [(dx, dx_c) for _, dx, dx_c in stored], rows_of)
        elif stored:
            _store_rows(chunk, [(dx, dx_c) for _, dx, dx_c in stored], [(dz, ds)[term] @ w for term, _, _ in stored])
        # dW += [dz; ds]^T [h_c; hs_c]: one matmul over both terms when they are the halves of one buffer. It runs
        # before the next chunk's logits overwrite these gradients (one stream).
        both = grads is not None and dz.numel() and ds.numel()
        terms = [(grads, v.x_wide if with_ones else x)] if both else [(d, xc) for d, xc in zip((dz, ds), (h_c, hs_c))]
        for d, xc in terms:
            if not d.numel():
                continue
            # [C, D] += [C, R] @ [R, D] ([C, D + pad] with db's column); the tail after the loop where it was kept
            for part in (parts[:1] if tail is not None and tail_grads is not None else parts) if dw is not None else ():
                matmuls.add_matmul(dw[part], d[:, part].T, xc.to(operand))
            if db is not None:
                db += d.sum(0, dtype=acc)
        del logits, z, s, dz, ds, grads, out, terms, stored  # the chunk's views and temporaries (buffers reused)
    if tail_grads is not None and any(kept_terms):  # the chunks' buffers let go first: memory for the counted rows
        views, v, logits_buffer, narrow, stacked, product_buffer, x, h_c, hs_c = (None,) * 9
        plans, plan, prepared, tail = (None,) * 4  # (the prepared tails hold views of those buffers)
        d = xc = into = product = product_rows = rows_of = tail_args = None  # (the loop's last views of them)
        counted = None if every_row else ids  # the rows the chunks took: every one, or these (gathered)
        matmuls.add_tail_dw(dw, parts[1], depth, tail_grads, kept_terms, (hidden, sub_hidden), counted, with_ones, acc)
    if with_ones:  # [dW | db | 0...]: dW its [C, D] view (no copy, no second [C, D]), db a copy of its column
        dw, db = dw[:classes, :depth], dw[:classes, depth].clone()
    if kernels and hidden.dtype == torch.float64:  # fp64 inputs: fp32 arithmetic, but the reference's fp64 outputs
        dw, db = (None if t is None else t.double() for t in (dw, db))  # (the op's contract)

    main, sub = stats[MAIN].sum(), stats[SUB].sum()
    if mean:  # the public functions' mean: the sum over counted rows / max(count, 1)
        divisor = max(count, 1) if gather else count.clamp_min(1).float()
        main, sub = main / divisor, sub / divisor
    # the fake's dtype of dW, db and scale: fp64 for fp64 inputs (on every backend), else fp32
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    # unwanted: a [0], each its own (a custom op's outputs may not alias one another under torch.compile)
    dw, db = (hidden.new_empty(0, dtype=out_dtype) if t is None else t for t in (dw, db))
    # stored gradients x scale = the true ones
    scale = torch.full((), term_scale / unit, dtype=out_dtype, device=device) if gather else term_scale / unit
    scale = scale.to(out_dtype)
    return main_weight * main + sub_weight * sub, main, sub, dh, dhs, dw, db, stats, scale


# ----------------------------------------------------------------------------------------------------------------
# The chunk sizes (the custom op of the loop and its autograd: _linear_loss_grads.py)
# ----------------------------------------------------------------------------------------------------------------


def grads_chunk_rows(classes: int, rows: int) -> int:
    """Rows per chunk of the kernels' path for M = ``rows`` rows: the chunk's buffer, 2 R C fp32 logits (fp16 / bf16
    gradients are written over their rows), within GRADS_CHUNK_BYTES, a multiple of 64 rows (fewer only below 64);
    and at least min(GRADS_CHUNK_MIN_ROWS, M / GRADS_CHUNK_MIN_SHARE rounded down to 64) rows (R = 384 at C = 30522:
    2 x 384 x 30528 x 4 bytes, 89 MiB; at M >= 12288 from C = 32769 up the floor decides and the buffer outgrows the
    budget). The loop's chunks have min(R, M) rows."""
    budget = max(1, GRADS_CHUNK_BYTES // (2 * aligned_classes(classes) * 4))
    floor = min(GRADS_CHUNK_MIN_ROWS, rows // GRADS_CHUNK_MIN_SHARE // 64 * 64)
    return max(floor, budget // 64 * 64 if budget >= 64 else budget)


# ----------------------------------------------------------------------------------------------------------------
# The recompute op's backward on this loop (ops/linear_masksub_loss.py's Triton flavour)
# ----------------------------------------------------------------------------------------------------------------


_capture_safe_depth = 0  # open mk.capture_safe() blocks


@contextlib.contextmanager
def capture_safe():
    """``with mk.capture_safe():`` the fused-linear losses take the path that never synchronises with the device in
    eager mode too: the one CUDA graph capture takes. It launches other kernels than an eager call (class ids: the
    recompute op's; probabilities: the count on the device), and a kernel loads at its first
    launch, which global-mode capture forbids: run the warm-up iterations before ``torch.cuda.graph`` (forward and
    backward) inside this block, whatever the target, as ``torch.optim``'s ``capturable=True`` prepares an
    optimizer. torch.compile's ``mode="reduce-overhead"`` needs none (its warm-up runs the compiled path)."""
    global _capture_safe_depth
    _capture_safe_depth += 1
    try:
        yield
    finally:
        _capture_safe_depth -= 1


def sync_free(hidden: torch.Tensor) -> bool:
    """Whether a call must not synchronise with the device: under torch.compile's tracing, inside capture_safe() or
    CUDA graph capture. is_compiling first: dynamo would guard on the block's depth (a recompile on entering it),
    and cannot trace the capture query (a bool from a torch function)."""
    return (
        torch.compiler.is_compiling()
        or _capture_safe_depth > 0
        or (hidden.is_cuda and torch.cuda.is_current_stream_capturing())
    )


def backward_in_chunks(
    grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, need_hidden, need_weight, need_bias, gather,
    options,
):  # fmt: skip
    """The recompute op's (d hidden, d sub_hidden, d weight, d bias) from per-row grads [M] (or None), by this
    loop: per chunk the logits (cuBLAS), the loss kernels (the stats recomputed from these logits, not read from
    the forward's ``out``: consistent where cuBLAS's fp32 logits differ from the Triton forward's, e.g. TF32 where
    allowed; ~28 us per chunk at BERT's shape), the backward with each row's grads, dH's and dW's matmuls
    (cuBLAS): 6 matmul units, where the recompute op's Triton kernels
    recompute the logits twice (8 units, measured ~4x slower than cuBLAS on an H200: 63.6 ms at BERT's shape,
    2026-12-04). ``gather``: the counted rows only (one host sync on CUDA class ids); else every row (ignored ones
    give zeros). Each gradient in its input's dtype, or an empty [0] (the op's fake)."""
    rows, classes = hidden.shape[0], weight.shape[0]
    dh, dhs, dw, db = grads_in_forward(
        hidden, sub_hidden, weight, bias, target, False, float(grad_main is not None), float(grad_sub is not None),
        need_hidden and grad_main is not None, need_hidden and grad_sub is not None, need_weight, need_bias, options,
        rows_per_chunk=grads_chunk_rows(classes, rows), kernels=True, gather=gather, row_grads=(grad_main, grad_sub),
    )[3:7]  # fmt: skip
    return dh, dhs, dw.to(weight.dtype), db.to(weight.dtype)
