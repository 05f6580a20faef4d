"""The model held to figures that others measured, before it is trusted on this library's kernels.

1. A plain Triton copy (ours, below), 1 GiB of bf16: should come out near the card's measured copy bandwidth
   (4.3 TB/s on an H200): the roofline the model is built on, so this checks that the issue, latency and launch
   terms do not slow a plain copy down.
2. Liger-Kernel's Triton cross-entropy at 8192 x 32000 bf16, forward + backward, on an H100 80GB HBM3: 0.7975 ms
   as measured in Liger-Kernel pull request 1290. Liger is not part of this project (its code is never copied here):
   the check imports ``liger_kernel`` when it is installed and records its own launcher on lazily allocated CPU
   tensors (torch.empty touches no page), so the launch is Liger's, not a copy of it; without it the check skips.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

import torch

from masksub_kernels._triton import jit, tl

from .capture import recording
from .hardware import H100, H200, Card
from .predict import predict_launch

COPY_BAND = (0.85, 1.0)  # the copy must come out at 85-100% of the measured copy bandwidth
LIGER_MEASURED_MS = 0.7975  # Liger-Kernel PR 1290: Triton CE, H100, bf16, 8192 x 32000, forward + backward
LIGER_BAND = 0.20  # the bar: within 20% of the published time
HOST_SYNC_US = 10.0  # GPU idle after a host sync while Python issues the next launch


@jit
def _copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask), mask=mask)


def copy(src: torch.Tensor, block: int = 4096, num_warps: int = 4) -> torch.Tensor:
    """A plain copy: 4096 elements (8 KB of bf16) per program, 16-byte accesses."""
    dst = torch.empty_like(src)
    _copy_kernel[(-(-src.numel() // block),)](src, dst, src.numel(), BLOCK=block, num_warps=num_warps)
    return dst


@dataclass
class Check:
    name: str
    card: str
    predicted: float
    reference: float
    unit: str
    passed: bool | None  # None: skipped
    summary: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def copy_check(card: Card = H200, gib: float = 1.0) -> Check:
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="meta")
    with recording(sys.modules[__name__]) as launches:
        copy(src)
    (launch,) = launches
    nbytes = 2 * src.numel() * src.element_size()
    kernel = predict_launch(card, launch, ([], 4096, nbytes // 2, nbytes // 2))
    tbps = nbytes / ((kernel.t_kernel_us + card.launch_us) * 1e-6) / 1e12
    ratio = tbps / card.copy_tbps
    passed = COPY_BAND[0] <= ratio <= COPY_BAND[1]
    summary = (
        f"Triton copy of {gib:g} GiB bf16 on {card.name}: predicted {tbps:.2f} TB/s = {100 * ratio:.1f}% of "
        f"the measured {card.copy_tbps} TB/s (band {100 * COPY_BAND[0]:.0f}-{100 * COPY_BAND[1]:.0f}%)"
    )
    return Check("copy", card.name, round(tbps, 3), card.copy_tbps, "TB/s", passed, summary)


def liger_check(card: Card = H100, rows: int = 8192, classes: int = 32000) -> Check:
    """Liger's CE forward (one program per row: an online-softmax pass, then a pass that writes the gradient into
    the logits) + backward (nothing to do when grad_output is 1.0, as in their benchmark's loss.backward()).
    Bytes: the first pass reads the row from HBM; the second re-reads it from L2 (132 rows of 64 KB in flight
    fit in the 50 MB L2 many times over), so HBM sees one read and one write of the logits."""
    if importlib.util.find_spec("liger_kernel") is None:
        return Check("liger", card.name, 0.0, LIGER_MEASURED_MS, "ms", None, "skipped: liger_kernel not installed")
    from liger_kernel.ops import cross_entropy as liger

    logits = torch.empty(rows, classes, dtype=torch.bfloat16).requires_grad_(True)  # never touched: no memory
    target = torch.zeros(rows, dtype=torch.int64)
    with recording(liger) as launches:
        liger.cross_entropy_forward(logits, target, None, -100, 0.0, 0.0, "mean", None, False)
    (launch,) = [launch for launch in launches if launch.name == "liger_cross_entropy_kernel"]
    block = launch.bound["BLOCK_SIZE"]
    logits_bytes = rows * classes * 2
    kernel = predict_launch(card, launch, ([1], block, logits_bytes + rows * 8, logits_bytes))
    # Their benchmark's full mode (benchmark/scripts/benchmark_cross_entropy.py) calls backward again and again
    # without grad_to_none: from the second call autograd adds the returned gradient into .grad (read .grad, read
    # the gradient, write .grad): an elementwise pass at the copy rate.
    accumulate_us = 3 * logits_bytes / card.copy_bytes_per_s * 1e6
    # torch ops around the kernel: target != ignore, its sum, two bounds checks, the loss sum, the backward's
    # torch.equal and the accumulation: one launch each; four host syncs (.item(), two asserts on device values,
    # torch.equal) each leave the GPU idle while the host issues the next launch
    launches_count, syncs = 8, 4
    total_us = kernel.t_kernel_us + accumulate_us + launches_count * card.launch_us + syncs * HOST_SYNC_US
    predicted_ms = total_us / 1000
    error = predicted_ms / LIGER_MEASURED_MS - 1
    passed = abs(error) <= LIGER_BAND
    summary = (
        f"Liger-Kernel Triton CE 8192x32000 bf16 fwd+bwd on {card.name}: predicted {predicted_ms:.3f} ms vs "
        f"measured {LIGER_MEASURED_MS} ms (Liger PR 1290): {100 * error:+.1f}% (kernel {kernel.t_kernel_us:.0f}"
        f" us: {kernel.warps} warps, {kernel.registers} registers, {kernel.occupancy.resident_blocks} block/SM, "
        f"memory {kernel.t_memory_us:.0f} us, issue {kernel.t_issue_us:.0f} us; .grad accumulation "
        f"{accumulate_us:.0f} us; {launches_count} launches, {syncs} host syncs)"
    )
    return Check("liger", card.name, round(predicted_ms, 4), LIGER_MEASURED_MS, "ms", passed, summary)


def checks() -> list[Check]:
    return [copy_check(H200), copy_check(H100), liger_check(H100)]
