"""The fused-linear loop's matmuls (ops/_linear_loss_chunks.py): cuBLAS with fp32 outputs into views, over C's
aligned head and its short tail.

Every matmul of the kernels' path runs in the inputs' fp16 / bf16 with fp32 accumulation and an fp32 output that is
never rounded to the inputs' dtype (mm / addmm with ``out_dtype``; torch >= 2.8), written in place into views of the
loop's buffers (no proxy copy):

    logits  [2R, C] fp32 = [h_c; hs_c] W^T                  fp32_logits (the loss kernels add the bias)
    dH rows [2R, D] fp32 = [dz; ds] W                       times_weight, or add_matmul after the loss launch's tail
    dW      [C, D]  fp32 += [dz; ds]^T [h_c; hs_c]          add_matmul (beta = 1: no [C, D] temporary)

Each runs over class_parts(C): the head, C rounded down to MATMUL_ALIGN classes (16-byte-aligned extents: cuBLAS's
fast kernels), and a tail of < 8 classes (the loss launch's ClassTail, or small matmuls of its own). On CPU tensors
(the interpreter's runs) the same arithmetic in fp32 operands; meta tensors take the GPU lines (the tests check their
registrations on them).
"""

from __future__ import annotations

import torch

MATMUL_ALIGN = 8  # the kernels' matmuls' class extents: multiples of 16 bytes of fp16 / bf16 (class_parts)


def cublas_lines(t: torch.Tensor) -> bool:
    """Whether the matmul helpers take their GPU lines (cuBLAS with out_dtype / out= views) for ``t``: CUDA tensors,
    and meta ones (the tests check those lines' registrations on them, and their values on CPU tensors by standing
    in for this and for torch.mm / torch.addmm)."""
    return t.device.type in ("cuda", "meta")


_addmm_into_fp32: bool | None = None  # whether this torch's CUDA addmm accumulates bf16 / fp16 products into fp32


def add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc fp32 (or fp64) and a, b possibly in a lower precision, accumulated in acc's dtype."""
    global _addmm_into_fp32
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif not cublas_lines(acc):
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))  # the interpreter's CPU tensors: fp32 operands, exact
    else:
        # cuBLAS: low-precision operands, fp32 accumulation and output, beta = 1 into acc (no [C, D] temporary).
        # Some torch releases' addmm(out_dtype=...) want `self` in the operands' dtype (a host-side check): then an
        # fp32 product and an add. The first CUDA call tells which (a meta or stand-in call decides nothing).
        if _addmm_into_fp32 is not False:
            try:
                torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
                _addmm_into_fp32 = True if acc.is_cuda else _addmm_into_fp32
                return
            except (RuntimeError, TypeError) as exc:  # TypeError: a torch without out_dtype (before 2.8)
                if _addmm_into_fp32 or "dtype" not in str(exc):
                    raise  # not the dtype check of a first call
                _addmm_into_fp32 = False if acc.is_cuda else None
        acc.add_(mm_fp32(a, b))


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32 from fp16 / bf16 CUDA operands: cuBLAS with an fp32 output (tensor cores, fp32 accumulation,
    never rounded to the inputs' dtype); fp32 copies of the operands on a torch without out_dtype (before 2.8)."""
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except TypeError:
        return a.float() @ b.float()


def times_weight(d: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """d @ w in fp32 [R, D] for the kernels' path, d [R, C] (a row-strided view of the chunk's gradients, fp16 / bf16
    / fp32) and w [C, D] in d's dtype: one matmul per class part (class_parts: views of W), accumulated in fp32 (in
    cuBLAS's epilogue), so that the caller rounds once. ``out``: a contiguous fp32 [R, D] to write it into (the
    chunk loop's product buffer: no [R, D] allocated per chunk)."""
    product, on_gpu = None, cublas_lines(d)
    for part in class_parts(w.shape[0]):
        a, b = d[:, part], w[part]
        if not on_gpu:
            # the CPU's bf16 mm (torch 2.14, oneDNN) reads past the last column of row-strided rows (the chunk's
            # gradients, over the logits' padded rows): NaN there came out in the product. A GPU's cuBLAS does not.
            a = a.contiguous()
        if product is not None:
            add_matmul(product, a, b)  # the tail's < 8 classes
        elif out is not None:
            product = out
            try:
                if not on_gpu or a.dtype == torch.float32:
                    raise TypeError  # fp32 operands: a plain mm
                torch.mm(a, b, out_dtype=torch.float32, out=out)
            except TypeError:  # (also a torch without out_dtype, as mm_fp32)
                torch.mm(a.float(), b.float(), out=out)
        elif a.dtype == torch.float32:
            product = a @ b
        else:
            product = mm_fp32(a, b) if on_gpu else a.float() @ b.float()
    return product


def fp32_logits(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, parts: tuple | None = None) -> torch.Tensor:
    """out = x W^T in fp32 [R, C] from operands in their own dtype (fp32 accumulation, never rounded to bf16; the
    loss kernels add the bias). ``out``: a view with unit last stride and padded rows, written in place, one matmul
    per class part (class_parts, or ``parts``: the head alone where the loss launch takes the tail) into its
    columns, by cuBLAS on a GPU (mm's out_dtype overload keeps out's row stride: no proxy copy). Returns out."""
    # meta tensors take the CUDA line too (its registration checks out's shape, dtype and strides): the tests run it
    on_gpu = cublas_lines(x) and x.dtype == w.dtype
    on_gpu = on_gpu and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
    for part in class_parts(w.shape[0]) if parts is None else parts:
        into = out[:, part]
        try:
            if on_gpu:
                torch.mm(x, w[part].T, out_dtype=torch.float32, out=into)
                continue
        except TypeError:  # a torch without out_dtype (before 2.8)
            on_gpu = False
        into.copy_(x.float() @ w[part].float().T)  # fp64 inputs (computed in fp32 on this path), CPU tensors
    return out


def add_tail_dw(dw, tail: slice, depth: int, kept, terms, inputs, ids, ones_column: bool, acc) -> None:
    """dW's tail once per call: dW[tail] += the counted rows' kept tail gradients (kept [2, K, 8], in the order the
    chunks took the rows) times the rows, one matmul per branch (``terms``: the branches whose were kept; ``ids``:
    the counted rows, gathered, or None: every row), and with ``ones_column`` (dW's accumulator [dW | db | 0...])
    db[tail] += their sums (elsewhere the chunks added db)."""
    width = tail.stop - tail.start
    for branch, rows in enumerate(inputs):
        if terms[branch]:
            rows = rows if ids is None else rows.index_select(0, ids)
            add_matmul(dw[tail, :depth], kept[branch, :, :width].T, rows)
    if ones_column:
        dw[tail, depth] += kept[:, :, :width].to(acc).sum((0, 1))


def class_parts(classes: int) -> tuple[slice, ...]:
    """The class ranges of the kernels' matmuls: the head, C rounded down to MATMUL_ALIGN, and the tail of the last
    < 8 classes (none where C is a multiple of 8; the tail alone where C < 8). A contiguous extent of C = 30522 is
    not 16-byte aligned however the rows are: cuBLAS then ran sm_80 kernels with 2-element loads on an H200
    (2026-12-04: ~200-230 against ~370-500 TFLOP/s aligned). The head's matmuls take views of W (no copy); the tail
    goes to the loss launch (ClassTail) or, where that falls back, to small matmuls of its own."""
    head = classes // MATMUL_ALIGN * MATMUL_ALIGN
    return tuple(part for part in (slice(0, head), slice(head, classes)) if part.stop > part.start)
