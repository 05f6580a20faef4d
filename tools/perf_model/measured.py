"""Measured beside predicted: a GPU run of the benchmarks against the model's predictions (its calibration).

    python -m tools.perf_model.measured [RESULTS.json] [--out FILE.md]

RESULTS.json: a GPU run's benchmark file (benchmarks/results/GPU-<card>-<date>.json, written by
benchmarks/gpu_bench.sh), whose records carry the model's predicted ms beside the measured median; default: the
newest such file. Records without a prediction get one afterwards (a suite stopped by its cap before the benchmark
attached them) from the model file the run names, else its card's, in the results file's folder or
benchmarks/results: the model as it is now, which the report says. For each case with a prediction (this
library's providers, the fused-linear loss's chunk sweep and the composites it is compared with): measured /
predicted, per provider. The model predicts device time only; a case that the benchmark measured host-bound (its
record's host_bound, the host time on a drained GPU at least the median) or whose prediction is under
HOST_BOUND_MS is marked host-bound: there the call's host work (Python, argument checks, the custom op and
autograd layers, launches: ~40-300 µs per call on the H200 machine of 2026-11-30, by torch.profiler) sets the time
and the ratio says nothing about the kernels. The device-bound cases' ratios are the model's calibration: the
factor by which it was optimistic, suite by suite, mode by mode and provider by provider.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
HOST_BOUND_MS = 0.1  # predictions below this are under a call's host cost (see the module docstring)


def newest_gpu_results(folder: Path = RESULTS) -> Path:
    # <card>-<date>.json only: a --tiny smoke run (<card>-<date>-tiny.json) is no measurement
    dated = [p for p in folder.glob("GPU-*.json") if re.fullmatch(r"GPU-.+-\d{4}-\d{2}-\d{2}\.json", p.name)]
    files = sorted(dated, key=lambda p: (p.name.rsplit("-", 3)[-3:], p.name))  # by date, then name (two cards)
    if not files:
        raise SystemExit(f"no GPU-*.json benchmark results in {folder}: run benchmarks/gpu_bench.sh on a GPU first")
    return files[-1]


def attach_missing_predictions(results: dict, *folders: Path) -> int:
    """Predictions for the records that have none (the benchmark attaches them when a suite ends: a suite stopped by
    its cap has none), from the model file the run names (results['model']) or else its card's, found in the first
    of ``folders`` (default: benchmarks/results) that has it; recorded in results['model_attached'] (the file as it
    is now, maybe newer than the run). Returns how many records got one."""
    from masksub_kernels.bench import report as bench_report

    named = results.get("model", {}).get("file")
    for folder in folders or (RESULTS,):
        model = folder / named if named and (folder / named).exists() else None
        model = model or bench_report.model_file(folder, results.get("environment", {}).get("device", ""))
        if model is not None:
            break
    else:
        return 0
    missing = {"records": [r for r in results["records"] if "predicted_ms" not in r]}
    count = bench_report.attach_predictions(missing, model)
    if count:
        results["model_attached"] = {"file": model.name, "records": count}
    return count


def comparisons(results: dict) -> list[dict]:
    """One row per case with both figures: suite, shape, dtype, mode, provider, measured, predicted, ratio, bound."""
    rows = []
    for record in results["records"]:
        measured, predicted = record.get("median_ms"), record.get("predicted_ms")
        if not measured or not predicted:
            continue
        # host-bound: measured so (the call's host time at least its median: the benchmark's host_bound), or
        # predicted under a call's host cost
        bound = "host" if record.get("host_bound") or predicted < HOST_BOUND_MS else "device"
        rows.append({**{k: record[k] for k in ("suite", "shape", "dtype", "mode", "provider")}, "measured": measured,
                     "predicted": predicted, "ratio": measured / predicted, "bound": bound})  # fmt: skip
    return rows


def summary(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(suite, mode, provider) -> min / median / max of measured / predicted over the device-bound cases."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        if row["bound"] == "device":
            groups.setdefault((row["suite"], row["mode"], row["provider"]), []).append(row["ratio"])
    return {key: {"cases": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
            for key, v in sorted(groups.items())}  # fmt: skip


def report(results: dict, source: str) -> str:
    rows = comparisons(results)
    env = results.get("environment", {})
    lines = [
        f"# Measured beside predicted: {source}",
        "",
        f"Device: {env.get('device', '?')}; measured copy {results.get('copy_gbps', 0):.0f} GB/s. Predicted ms are "
        "PREDICTIONS of the static model (tools/perf_model), measured ms the benchmark's medians. Host-bound: "
        f"predicted under {HOST_BOUND_MS} ms, where the call's host cost, not modelled, sets the time.",
    ]
    if results.get("model_attached"):
        attached = results["model_attached"]
        lines.append(f"{attached['records']} predictions attached afterwards from {attached['file']} as it is now "
                     "(the run's own suites were stopped before they attached them).")  # fmt: skip
    lines += [
        "",
        "## Calibration: measured / predicted over the device-bound cases",
        "",
        "| suite | mode | provider | cases | min | median | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for (suite, mode, provider), s in summary(rows).items():
        lines.append(f"| {suite} | {mode} | {provider} | {s['cases']} | {s['min']:.2f} | {s['median']:.2f} | "
                     f"{s['max']:.2f} |")  # fmt: skip
    lines += ["", "## Every case", "",
              "| suite | shape | dtype | mode | provider | measured ms | predicted ms | ratio | bound |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['suite']} | {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['measured']:.3f} | {r['predicted']:.3f} | {r['ratio']:.2f} | {r['bound']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf_model.measured", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, help="a GPU run's benchmark json (default: the newest)")
    parser.add_argument("--out", type=Path, help="write the report (markdown) here")
    args = parser.parse_args(argv)
    path = args.results or newest_gpu_results()
    results = json.loads(path.read_text())
    attached = attach_missing_predictions(results, path.parent, RESULTS)
    if attached:
        print(f"attached {attached} missing predictions from the model file", file=sys.stderr)
    text = report(results, path.name)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
