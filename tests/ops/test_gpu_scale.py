"""Checks that only a GPU answers at full size (a GPU run selects them: -k gpu_scale, benchmarks/gpu_check.sh), run
here at a size the CPU interpreter takes so that their code is exercised by CI too (helper-164, helper-165):

- the chunks' one loss launch against the two launches where the fused launch's warps are not the forward's own
  (CE at C = 3000: the forward's 8 warps in the backward's 16; BCE: its 1024-class block widened to 2048): on a GPU
  the forward's cross-warp sums add in another order, so the stats agree to fp32 rounding, not bit for bit;
- the gradients written over the fp32 logits' rows behind a barrier (OVER_ROWS) equal, bit for bit, the same
  gradients written into buffers of their own, at a BERT chunk's shape over many seeds: a missing or misplaced
  barrier shows as mismatched blocks on a GPU only (the interpreter runs a program's block as one numpy step);
- the image grid mask at a cell size that is no power of two (24: the row tile of 32 holds rows past the cell, held
  back by `rows < CELL`), many times against the reference: a row written by the wrong cell row's program is a race
  on a GPU, invisible to the interpreter's programs run one after another (helper-164's G9).
"""

import pytest
import torch
from conftest import DEVICE, kernel_backends

import masksub_kernels as mk
from masksub_kernels.ops import _loss_fwd_bwd as fused
from masksub_kernels.ops import grid_mask as gm
from masksub_kernels.ops import masksub_loss as ml

ON_GPU = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning"),
    pytest.mark.triton,
]


@pytest.fixture(autouse=True)
def _triton_only():
    if "triton" not in kernel_backends():
        pytest.skip("needs the Triton backend")


def _chunk(rows: int, classes: int, seed: int):
    """A chunk's fp32 logits (main rows, then sub rows) in a buffer of 16-byte rows, class ids with ignored rows and
    the row gradients: what the fused-linear op's chunk loop hands the loss kernels."""
    gen = torch.Generator().manual_seed(seed)
    padded = -(-classes // 4) * 4
    buffer = torch.zeros(2 * rows, padded)
    buffer[:, :classes] = torch.randn(2 * rows, classes, generator=gen) * 3
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[::7] = -100
    grads = tuple(torch.randn(rows, generator=gen) for _ in range(2))
    return buffer.to(DEVICE), target.to(DEVICE), tuple(g.to(DEVICE) for g in grads)


def _loss(buffer, rows, classes, target, grads, options, one_launch, over_rows, monkeypatch):
    """(stats, dz, ds) of the loss forward and backward on a copy of the chunk (the gradients overwrite it)."""
    monkeypatch.setattr(fused, "ONE_LAUNCH", one_launch)
    buffer = buffer.clone()
    z, s = buffer[:rows, :classes], buffer[rows:, :classes]
    if over_rows:  # bf16 gradients over the logits' rows
        narrow = buffer.view(torch.bfloat16)[:, :classes]
        into = (narrow[:rows], narrow[rows:])
    else:
        into = tuple(torch.empty(rows, classes, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    stats = torch.empty(ml.NUM_OUT, rows, device=DEVICE)
    tickets = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    out, (dz, ds) = fused.forward_backward_triton(
        *grads, z, s, target, *options, out=stats, tickets=tickets, into=into, over_rows=over_rows
    )
    return [t.float().cpu().clone() for t in (out, dz, ds)]


@pytest.mark.parametrize("bce", [False, True])
def test_one_launch_agrees_with_the_two_at_gpu_scale(monkeypatch, bce):
    rows, classes = (300, 3000) if ON_GPU else (4, 3000)  # 300 rows: no class split on 132 SMs
    if not ON_GPU:
        monkeypatch.setattr(ml, "_device_sms", lambda device: 1)
    options = (bce, 0.0, -100, 1.0, None)
    buffer, target, grads = _chunk(rows, classes, seed=3)
    z = buffer[:rows, :classes]
    launch = fused.one_launch(*grads, z, buffer[rows:, :classes], target, bce, 0.0, 1.0, None,
                              (z, z), None, False)  # fmt: skip
    assert launch is not None and launch[2]["num_warps"] == 16
    assert launch[2]["F_BLOCK_C"] == 2048  # CE's own block; BCE's 1024 widened
    one = _loss(buffer, rows, classes, target, grads, options, True, True, monkeypatch)
    two = _loss(buffer, rows, classes, target, grads, options, False, True, monkeypatch)
    torch.testing.assert_close(one[0], two[0], rtol=2e-6, atol=1e-6)
    for got, want in zip(one[1:], two[1:]):  # bf16 gradients from stats that differ in the last fp32 bits
        torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-6)


def test_the_gradients_over_the_rows_equal_their_own_buffers_at_gpu_scale(monkeypatch):
    rows, classes, seeds = (384, 30522, 20) if ON_GPU else (3, 600, 2)  # a BERT chunk on a GPU
    if not ON_GPU:
        monkeypatch.setattr(ml, "MAX_BLOCK_C", 128)  # several blocks per row
    options = (False, 0.0, -100, 1.0, None)
    for seed in range(seeds):
        buffer, target, grads = _chunk(rows, classes, seed)
        z, s = buffer[:rows, :classes], buffer[rows:, :classes]
        stats = ml._forward_triton(z, s, target, *options)  # once: both backwards read the same stats
        results = []
        for over_rows in (True, False):
            copy = buffer.clone()
            cz, cs = copy[:rows, :classes], copy[rows:, :classes]
            if over_rows:
                narrow = copy.view(torch.bfloat16)[:, :classes]
                into = (narrow[:rows], narrow[rows:])
            else:
                into = tuple(torch.empty(rows, classes, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
            dz, ds = ml._backward_triton(*grads, stats, cz, cs, target, *options, into=into, over_rows=over_rows)
            results.append((dz.float().cpu(), ds.float().cpu()))
        for got, want in zip(*results):
            assert torch.equal(got, want), f"seed {seed}: {(got != want).sum()} gradients differ"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_grid_mask_at_a_cell_of_24_matches_the_reference_at_gpu_scale(layout):
    batch, size, repeats = (64, 240, 20) if ON_GPU else (2, 48, 2)
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(batch, 3, size, size, generator=gen).to(DEVICE)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    with mk.use_backend("triton"):
        for seed in range(repeats):
            masked, mask = mk.mask_image_grid(images, 0.5, cell_size=24, seed=seed)
            expected = gm.mask_image_reference(images, mask, 24, 0.0)
            assert torch.equal(masked, expected), f"seed {seed}: {(masked != expected).sum()} pixels differ"
