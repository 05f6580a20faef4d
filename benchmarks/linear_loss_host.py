"""Host time per chunk of the fused-linear MaskSub loss's Triton path, measured on the CPU: is the op at risk of
being host-bound on a GPU?

    python benchmarks/linear_loss_host.py            # 43 chunks of 384 rows (the BERT step's) and of 8, D=8, C=64

The op's gradients-in-forward loop (ops/_linear_loss_chunks.py) runs a few torch ops and one Triton launch per
chunk of R rows from Python. On a GPU its device time per chunk is ~0.24 ms (the performance model's prediction at
BERT's shape on the H200: fused time / chunks, read from benchmarks/results/model-sm90.json); if the host needs
longer per chunk, the GPU waits for it. This script times the loop's host side without a GPU: the Triton kernels'
launches are replaced by no-ops (the interpreter's launch entry point, so the launchers' Python, their argument
checks and launch configuration, all run), and the torch ops run on tiny CPU tensors (D = 8, C = 64: slices,
copies, the matmuls' small CPU compute and torch's dispatch). What it leaves out: a GPU's launch cost per kernel
(cudaLaunchKernel, Triton's binding of arguments to its compiled launcher), which adds to the host side; what it
adds: the CPU compute of the tiny matmuls (bf16 matmuls are slow on a CPU: ~27 us for [192, 64] x [64, 8] here), and
the CPU path's extra torch ops before the logits' and dW's matmuls (fp32 copies of the operands; one op on CUDA)
and before dH's and dHs's (contiguous copies of the gradients: the CPU's bf16 mm misreads their strided rows).
So it times 384-row chunks (the BERT step's) and 8-row chunks, where that compute is negligible: the second is the
closer figure for the host side alone. It reports the median and the minimum of the repeats, and the Python calls
per chunk (a count: steady where times on a shared VM are not). Writes
benchmarks/results/linear-loss-host-CPU-<date>.json and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: its interpreter's launch entry point

import argparse
import contextlib
import cProfile
import datetime
import json
import platform
import pstats
import statistics
import time
from pathlib import Path

import torch

import masksub_kernels as mk
from masksub_kernels.ops import _linear_loss_chunks as chunk_loop

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def stubbed_launches(counter: list[int]):
    """Triton launches (kernel[grid](...)) do nothing but count, under the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    def launcher(self, grid):
        def launch(*args, **kwargs):
            counter[0] += 1

        return launch

    saved = InterpretedFunction.__getitem__
    InterpretedFunction.__getitem__ = launcher
    try:
        yield
    finally:
        InterpretedFunction.__getitem__ = saved


@contextlib.contextmanager
def filled_allocations():
    """torch.empty and the like fill floats with NaN (torch's deterministic mode): the stubbed kernels leave their
    outputs unwritten, and the torch ops that read them computed on whatever memory held, whose subnormal floats take
    the CPU's slow path (an fp32 multiply ~30x slower): one run in three took 100x longer. NaN costs nothing extra."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    filled = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = filled


@contextlib.contextmanager
def subnormals_flushed():
    """One torch thread with the CPU's flush-to-zero and denormals-are-zero modes on (both per thread): the stubbed
    backward leaves its fp16 / bf16 gradients unwritten, and those are views over the chunk's fp32 logits, whose low
    16 bits read as bf16 are often subnormal; dW's matmul on them took the slow path (~60 ms per 384-row chunk, 100x
    its time). One thread: the host side of a GPU run launches the ops, it does not compute them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


@contextlib.contextmanager
def rows_per_chunk(rows: int):
    """The kernels' path in chunks of ``rows`` rows (grads_chunk_rows, read at call time)."""
    saved = chunk_loop.grads_chunk_rows
    chunk_loop.grads_chunk_rows = lambda *args, **kwargs: rows
    try:
        yield
    finally:
        chunk_loop.grads_chunk_rows = saved


def predicted_device_us_per_chunk() -> float | None:
    """The model's predicted device time per chunk at BERT's shape (H200), or None without a model file."""
    path = RESULTS / "model-sm90.json"
    if not path.exists():
        return None
    linear = json.loads(path.read_text()).get("linear_loss")
    if not linear:
        return None
    return linear["providers"][0]["predicted_us"] / linear["assumptions"]["chunks"]


def measure(chunks: int, rows: int, depth: int, classes: int, repeats: int) -> dict:
    """Median host time of one forward + backward of .loss (bf16, class ids, a bias, both branches) in ``chunks``
    chunks of ``rows`` rows, launches stubbed; per chunk; and the top functions by own time."""
    generator = torch.Generator().manual_seed(0)
    m = chunks * rows
    h = torch.randn(m, depth, generator=generator).bfloat16().requires_grad_(True)
    hs = torch.randn(m, depth, generator=generator).bfloat16().requires_grad_(True)
    weight = torch.randn(classes, depth, generator=generator).bfloat16().requires_grad_(True)
    bias = torch.zeros(classes, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, classes, (m,), generator=generator)
    launches = [0]

    def step():
        out = mk.linear_masksub_loss(h, hs, weight, bias, target)
        out.loss.backward()

    times = []
    with mk.use_backend("triton"), stubbed_launches(launches), rows_per_chunk(rows), filled_allocations(), \
            subnormals_flushed():  # fmt: skip
        step()  # warm-up: imports, caches
        launches[0] = 0
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        counted = launches[0]  # the timed calls' launches (not the profiled call's)
        profile = cProfile.Profile()
        profile.enable()
        step()
        profile.disable()
    stats = pstats.Stats(profile)
    top = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:8]  # by own time
    median_us, min_us = statistics.median(times) * 1e6, min(times) * 1e6
    return {
        "chunks": chunks,
        "rows_per_chunk": rows,
        "depth": depth,
        "classes": classes,
        "repeats": repeats,
        "median_ms": round(median_us / 1e3, 2),
        "us_per_chunk": round(median_us / chunks, 1),
        "min_us_per_chunk": round(min_us / chunks, 1),
        "triton_launches_per_chunk": round(counted / repeats / chunks, 2),
        # Python and builtin function calls per chunk (the profiled call): a count, steady where the times are not
        "python_calls_per_chunk": round(sum(entry[0] for entry in stats.stats.values()) / chunks, 1),
        "top_own_time_us_per_chunk": {
            f"{Path(file).name}:{line}({name})": round(entry[2] / chunks * 1e6, 1) for (file, line, name), entry in top
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=43)
    parser.add_argument("--rows", default="384,8", help="rows per chunk, comma-separated (the BERT step's: 384)")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--classes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="the json file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if not mk.triton_interpreted():  # a CPU tool: its stubs replace the interpreter's launches
        print("linear_loss_host.py runs on the Triton interpreter (TRITON_INTERPRET=1, set before importing Triton)")
        return 2
    rows = [int(r) for r in args.rows.split(",")]
    records = [measure(args.chunks, r, args.depth, args.classes, args.repeats) for r in rows]
    device_us = predicted_device_us_per_chunk()
    lines = [
        "| chunks x rows | D | C | host ms (median) | host us per chunk (median / min) | Python calls per chunk | "
        "Triton launches per chunk | predicted device us per chunk (H200, BERT shape: a PREDICTION) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        lines.append(
            f"| {record['chunks']} x {record['rows_per_chunk']} | {record['depth']} | {record['classes']} | "
            f"{record['median_ms']} | {record['us_per_chunk']} / {record['min_us_per_chunk']} | "
            f"{record['python_calls_per_chunk']} | {record['triton_launches_per_chunk']} | "
            f"{'-' if device_us is None else round(device_us, 1)} |"
        )
    print("\n".join(lines))
    for record in records:
        print(f"own time per chunk at {record['rows_per_chunk']} rows (us, one profiled call):")
        print(json.dumps(record["top_own_time_us_per_chunk"], indent=1))
    date = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"linear-loss-host-CPU-{date}.json"
    meta = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "date": date}
    meta.update(torch=torch.__version__, launches="stubbed (Triton interpreter's entry point)")
    meta["predicted_device_us_per_chunk"] = None if device_us is None else round(device_us, 1)
    out.write_text(json.dumps({"meta": meta, "records": records, "table": lines}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
