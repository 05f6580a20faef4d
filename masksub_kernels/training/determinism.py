"""``--deterministic`` of the training commands: the same bits from the same seed on a GPU too.

On the CPU a run is reproducible as it is (tests/training: a resumed run's weights are the uninterrupted run's bit
for bit). On a GPU some of torch's kernels sum in an order that changes run to run (atomic adds: attention's
backward, index_add / scatter_add, some cuBLAS split-K and cuDNN algorithms), so two runs of one command drift
apart after the first update, and a resumed run cannot match an uninterrupted one bit for bit either (the 2026-12-04
H200 run: a tiny ViT's resumed weights differed). This library's own Triton and CUDA kernels are deterministic on
every backend (their sums run in a fixed order: a row's split states merged by its last program in a fixed tree, no
atomic adds of values); the fused-linear loss's matmuls are cuBLAS's, covered below.

``deterministic_algorithms(True)`` asks torch for the rest, for the duration of the command (restored after it, as
the tests call the commands in their own process):
- ``torch.use_deterministic_algorithms(True)``, strict: deterministic implementations where torch has them, and an
  error naming the op where it has none (``refused_by_determinism`` turns that error into the command's usage
  error). Not ``warn_only``: with it torch keeps the fast nondeterministic algorithm of some ops and only warns --
  attention's backward among them (flash and memory-efficient SDPA: "To explicitly enable determinism call
  torch.use_deterministic_algorithms(True, warn_only=False)"), which is what a ViT's bits depend on;
- cuDNN's deterministic algorithms, without benchmarking (which picks algorithms by timing: run to run);
- cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, NVIDIA's setting for bitwise reproducible cuBLAS
  across streams, which torch's deterministic mode required before torch 2.10; harmless where not needed): cuBLAS
  reads it when the process makes its first handle, so it is set here, before the command's first GPU matmul,
  unless the environment already sets it.
Torch also fills the memory of ``torch.empty`` with NaN in this mode (its outputs cannot depend on what was there),
on the CPU too: a kernel that read memory it never wrote would show. Deterministic kernels can be slower
(attention's backward most), and torch has none for a few ops on a GPU (by torch's documentation and sources: the
backward of bilinear / bicubic interpolation, e.g. a timm ViT with ``dynamic_img_size`` resizing its position
embedding to another image size; adaptive pooling to more than 1 x 1; ``grid_sample``; 4-D ``cross_entropy``; none on
the library's own paths; a CNN's global pool to 1 x 1 is a mean, deterministic): it is off by default.
Off, the context turns cuDNN's benchmarking on instead, as timm's train.py does (the fastest convolution algorithms
for the run's shapes, chosen by timing at the first call of each; a ResNet's steps run on cuDNN's defaults
otherwise), and puts it back after.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch

# the commands' --help for --deterministic
DETERMINISTIC_HELP = (
    "deterministic kernels on a GPU (torch.use_deterministic_algorithms; cuDNN; CUBLAS_WORKSPACE_CONFIG): the same "
    "bits from the same seed, and a resumed run bit-identical to an uninterrupted one, or an error naming an op that "
    "has no deterministic kernel; can be slower. The CPU needs none. Off: cuDNN's benchmarking on (timm's setting)"
)
CUBLAS_WORKSPACE = ":4096:8"  # one of the two settings torch documents for deterministic cuBLAS (16 MiB a stream)


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """While the context is open: torch's, cuDNN's and cuBLAS's deterministic settings when ``on`` (the module
    docstring); cuDNN's benchmarking otherwise. Every setting is put back as it was when the context closes."""
    if not on:
        benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = benchmark
        return
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        enabled, warn_only, cudnn_deterministic, cudnn_benchmark, workspace = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, cudnn_benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


# how torch's error for an op without a deterministic implementation reads (torch/csrc: alertNotDeterministic)
_NOT_DETERMINISTIC = "does not have a deterministic implementation"


def refused_by_determinism(exc: BaseException) -> str | None:
    """The command's message for torch's error that an op has no deterministic implementation (raised under
    ``--deterministic``), naming the op; None for any other exception."""
    text = str(exc)
    if not isinstance(exc, RuntimeError) or _NOT_DETERMINISTIC not in text:
        return None
    op = text.split(_NOT_DETERMINISTIC)[0].strip()
    return (
        f"--deterministic: torch has no deterministic implementation of {op} on this device (an op of the model or "
        "its loss); run without --deterministic (then runs and resumes may differ in their last bits)"
    )


def run_command(prog: str, run: Callable[..., None], args) -> int:
    """A training command's body ``run(args)`` under its ``--deterministic``; the exit status: 0, or 2 with
    ``prog: error: ...`` on stderr for a UsageError or, under --deterministic, an op without a deterministic kernel.
    Under torchrun (rank_zero): a UsageError raised before the process group (the options' checks: the same on every
    rank) is printed by each machine's local rank 0 alone; a collective that failed because another rank died prints
    one line (``prog: rank N: stopped by a failed collective (...): most likely another rank failed; ...``), status 1,
    not gloo's / NCCL's traceback."""
    import torch.distributed as dist

    from .rank_zero import ReportedOnRankZero, option_error, peer_failure
    from .run_setup import UsageError

    try:
        with deterministic_algorithms(args.deterministic):
            run(args)
        return 0
    except ReportedOnRankZero:  # rank 0 printed it
        return 2
    except UsageError as exc:
        if not (dist.is_available() and dist.is_initialized()):  # before the process group: every rank's
            return option_error(prog, str(exc))
        message = str(exc)
    except RuntimeError as exc:
        if (stopped := peer_failure(exc)) is not None:
            print(f"{prog}: {stopped}", file=sys.stderr, flush=True)
            return 1
        message = refused_by_determinism(exc) if args.deterministic else None
        if message is None:
            raise
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def interrupt_traceback() -> None:
    """Under ``MASKSUB_TRACEBACK=1``, a Ctrl-C's traceback on stderr (every process's: where a hung run was), before the
    commands' one-line message; nothing otherwise. Called in an ``except KeyboardInterrupt`` block."""
    if os.environ.get("MASKSUB_TRACEBACK") == "1":
        import traceback

        traceback.print_exc(file=sys.stderr)
