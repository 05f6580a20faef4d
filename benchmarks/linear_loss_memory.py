"""Measured extra memory of the fused-linear MaskSub loss on the CPU path, at issue 13's BERT shape, against the
materialised composite (linear + masksub_loss).

    python benchmarks/linear_loss_memory.py                       # M=16384 D=768 C=30522 fp32, fused; composite at M/4
    python benchmarks/linear_loss_memory.py --rows 2048 --composite-rows 2048

Each provider runs one forward + backward (torch.autograd.grad of .loss with respect to both hidden states, the
weight and the bias) under torch's profiler, whose memory events give the peak of the bytes allocated during the
call (masksub_kernels/bench/timing.cpu_peak_mb, the benchmark's CPU memory figure). Extra memory = that peak minus
the returned gradients (2 M D + C D + C elements), which every implementation must produce. The composite's figure
is measured at --composite-rows (it holds [M, C] tensors: 7.6 GiB of fp32 logits and logit gradients alone at the
full shape) and also given as its lower bound, 4 [M, C] in the inputs' dtype, at the fused run's M. Writes
benchmarks/results/linear-loss-memory-CPU-<date>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import masksub_kernels as mk
from masksub_kernels.bench.timing import cpu_peak_mb

RESULTS = Path(__file__).resolve().parent / "results"


def _inputs(rows: int, depth: int, classes: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(rows, depth, dtype=dtype, generator=generator).requires_grad_(True)
    hs = (h.detach() + 0.1 * torch.randn(rows, depth, dtype=dtype, generator=generator)).requires_grad_(True)
    weight = (torch.randn(classes, depth, generator=generator, dtype=dtype) / depth**0.5).requires_grad_(True)
    bias = torch.zeros(classes, dtype=dtype, requires_grad=True)
    return h, hs, weight, bias, torch.randint(0, classes, (rows,), generator=generator)


def _fused(h, hs, weight, bias, target):
    return mk.linear_masksub_loss(h, hs, weight, bias, target).loss


def _composite(h, hs, weight, bias, target):
    return mk.masksub_loss(F.linear(h, weight, bias), F.linear(hs, weight, bias), target).loss


def measure(provider: str, rows: int, depth: int, classes: int, dtype: torch.dtype) -> dict:
    """One forward + backward under the profiler: peak MiB allocated, returned gradients, extra, seconds."""
    fn = {"fused": _fused, "composite": _composite}[provider]
    h, hs, weight, bias, target = _inputs(rows, depth, classes, dtype)
    leaves = (h, hs, weight, bias)

    def step():
        return torch.autograd.grad(fn(*leaves, target), leaves)

    start = time.perf_counter()
    with mk.use_backend("torch"):
        peak = cpu_peak_mb(step)
    seconds = time.perf_counter() - start
    returned = sum(x.numel() for x in leaves) * torch.empty((), dtype=dtype).element_size() / 2**20
    lower_bound = 4 * rows * classes * torch.empty((), dtype=dtype).element_size() / 2**20
    return {
        "provider": provider,
        "rows": rows,
        "depth": depth,
        "classes": classes,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_mib": round(peak, 1),
        "returned_gradients_mib": round(returned, 1),
        "extra_mib": round(peak - returned, 1),
        "composite_lower_bound_mib": round(lower_bound, 1),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--depth", type=int, default=768)
    parser.add_argument("--classes", type=int, default=30522)
    parser.add_argument("--composite-rows", type=int, default=None, help="default: rows // 4; 0 skips it")
    parser.add_argument("--out", type=Path, default=None, help="the json file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    composite_rows = args.rows // 4 if args.composite_rows is None else args.composite_rows
    records = [measure("fused", args.rows, args.depth, args.classes, torch.float32)]
    if composite_rows:
        records.append(measure("composite", composite_rows, args.depth, args.classes, torch.float32))
        records.append(measure("fused", composite_rows, args.depth, args.classes, torch.float32))
    lines = [
        "| provider | M | D | C | dtype | peak MiB | returned grads MiB | extra MiB | composite lower bound MiB "
        "(4 [M, C]) | extra / lower bound | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ratio = 100 * r["extra_mib"] / r["composite_lower_bound_mib"]
        lines.append(
            f"| {r['provider']} | {r['rows']} | {r['depth']} | {r['classes']} | {r['dtype']} | {r['peak_mib']} | "
            f"{r['returned_gradients_mib']} | {r['extra_mib']} | {r['composite_lower_bound_mib']} | {ratio:.1f}% | "
            f"{r['seconds']} |"
        )
    print("\n".join(lines))
    date = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"linear-loss-memory-CPU-{date}.json"
    meta = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "date": date}
    meta.update(torch=torch.__version__, backend="torch (the CPU path)")
    out.write_text(json.dumps({"meta": meta, "records": records, "table": lines}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
