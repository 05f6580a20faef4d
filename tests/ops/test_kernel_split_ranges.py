"""The class ranges of the kernels' split programs stay within int32 at the largest sizes the checks admit
(helper-336's review): the jit helpers that compute them, called from probe kernels with the launchers' own
numbers, nothing of that size allocated.

- ops/_masksub_loss_kernels.py ``_split_classes``: ``min(lo + chunk, C)`` wrapped for C within a chunk of 2^31 (a
  row of MAX_CLASSES on 132 SMs: the last split's hi negative, 8M classes left out of the loss and dz unwritten).
- ops/_linear_loss_kernels.py ``_split_program``: ``split * per_split * BLOCK_N`` wrapped for C >= 2^31 / 7 with
  class ids on a full GPU (split 7 began at a negative column: W read and dH's slabs written out of bounds)."""

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE, kernel_backends

from masksub_kernels.ops import _linear_loss_kernels as linear_kernels
from masksub_kernels.ops import _masksub_loss_kernels as loss_kernels
from masksub_kernels.ops import linear_masksub_loss as lm
from masksub_kernels.ops import masksub_loss as ml
from masksub_kernels.ops._common import MAX_CLASSES

pytestmark = pytest.mark.skipif("triton" not in kernel_backends(), reason="the Triton backend cannot run here")


@triton.jit
def _loss_split_probe(out_ptr, C, chunk):
    lo, hi = loss_kernels._split_classes(C, chunk)
    tl.store(out_ptr + 2 * tl.program_id(1), lo.to(tl.int64))
    tl.store(out_ptr + 2 * tl.program_id(1) + 1, hi.to(tl.int64))


@pytest.mark.parametrize(("rows", "classes", "sms"), [
    (1, MAX_CLASSES, 132),  # the wrap (H100): 264 splits of 8134656 classes
    (1, MAX_CLASSES, 1),
    (8, 128256, 132),  # an LLM's vocabulary on a few rows
    (3, 1000, 16),
])  # fmt: skip
def test_the_loss_splits_cover_every_class_once(rows, classes, sms):
    splits, chunk = ml.class_splits(rows, classes, ml._split_max_block(), sms)
    out = torch.zeros(splits, 2, dtype=torch.int64, device=DEVICE)
    _loss_split_probe[(1, splits)](out, classes, chunk)
    lo, hi = out.cpu().unbind(1)
    assert lo[0] == 0 and hi[-1] == classes and bool((hi[:-1] == lo[1:]).all()) and bool((hi > lo).all())


@triton.jit
def _linear_split_probe(count_ptr, out_ptr, C, class_tiles, target, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    _, _, split, splits, c_begin, c_end = linear_kernels._split_program(
        count_ptr, C, class_tiles, target, BLOCK_M, BLOCK_N
    )
    tl.store(out_ptr + 3 * split, c_begin.to(tl.int64))
    tl.store(out_ptr + 3 * split + 1, c_end.to(tl.int64))
    tl.store(out_ptr + 3 * split + 2, splits.to(tl.int64))


@pytest.mark.parametrize("classes", [320_000_000, MAX_CLASSES, 50304])
def test_the_fused_linear_splits_cover_every_class_once(classes):
    # class ids on a full H100 (132 SMs: 264 programs wanted), M = 65536 rows all counted: the launcher's grid of
    # MAX_COUNT_SPLITS splits per row tile (linear_masksub_loss._class_split_grid's rule for class ids)
    rows, block_m, block_n, target = 65536, 64, 128, 2 * 132
    row_tiles, class_tiles = triton.cdiv(rows, block_m), triton.cdiv(classes, block_n)
    max_splits = max(1, min(class_tiles, max(target // row_tiles, lm.MAX_COUNT_SPLITS)))
    out = torch.zeros(max_splits, 3, dtype=torch.int64, device=DEVICE)
    count = torch.tensor([rows], dtype=torch.int32, device=DEVICE)
    _linear_split_probe[(1, max_splits)](count, out, classes, class_tiles, target, BLOCK_M=block_m, BLOCK_N=block_n)
    begin, end, splits = out.cpu().unbind(1)
    used = int(splits[0])
    assert 1 <= used <= max_splits and bool((splits == used).all())
    # the splits used tile [0, C) in order; the grid's others are empty ranges at or past C
    assert begin[0] == 0 and end[used - 1] == classes and bool((end[: used - 1] == begin[1:used]).all())
    assert bool((end[:used] > begin[:used]).all()) and bool((begin[used:] >= classes).all())
    assert bool((end[used:] <= begin[used:]).all()) and bool((begin >= 0).all())
