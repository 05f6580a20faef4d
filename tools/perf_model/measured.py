"""Measured beside predicted: a GPU run of the benchmarks against the model's predictions (its calibration).

    python -m tools.perf_model.measured [RESULTS.json] [--out FILE.md]

RESULTS.json: a GPU run's benchmark file (written by masksub_kernels.bench; benchmarks/gpu_bench.sh leaves it as
<device>-<date>.json in its output folder, committed as benchmarks/results/gpu-<date>/), whose records carry the
model's predicted ms beside the measured median. Default: the newest committed run (gpu_runs): the GPU-*.json files
in benchmarks/results and in its gpu-*/ folders, a --tiny smoke run's excepted, suffixed ones included (e.g.
GPU-NVIDIA-H200-2026-12-04-matmul-aligned.json, a partial rerun); newest by the run's own date (the JSON's "date",
else the name's), and among runs of one date, which record no time of day, the one with the most records (the
day's full run rather than a partial rerun); the file picked is printed. A file that is no benchmark run (empty,
truncated, another tool's JSON) or that has nothing to compare (a CPU run, a card without a model file, no record
of this library's providers) is refused with the reason, status 2.

Records without a prediction in the run's file (the benchmark attaches them when a suite ends: a suite stopped by
its cap, or a run whose card had no model file then, has none) get one here from the model file the run names, else
its card's, in the results file's folder or benchmarks/results: the model as it is NOW, not the run's. Every row
says where its prediction comes from ("run": the run's own file; "today": attached here), and the header names both
models (file, card, date) and the run (date, device, torch, triton, commit where recorded, the suites cut short).
For each case with a prediction (this library's providers, the fused-linear loss's chunk sweep and the composites
it is compared with): measured / predicted, per provider. The model predicts device time only; a case is marked
host-bound where the benchmark measured it so (its record's host_bound: the call's host time on a drained GPU at
least its median) or where its prediction is under HOST_BOUND_MS: there the call's host work (Python, argument
checks, the custom op and autograd layers, launches: ~40-300 µs per call on the H200 machine of 2026-11-30, by
torch.profiler) sets the time and the ratio says nothing about the kernels. The device-bound cases' ratios are the
model's calibration: the factor by which it was optimistic, suite by suite, mode by mode and provider by provider.
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


RUN_NAME = re.compile(r"GPU-.+?-(\d{4}-\d{2}-\d{2})(-[\w.-]+)?\.json")  # <device>-<date>[-<suffix>].json


def _run_date_and_size(path: Path, name_date: str) -> tuple[str, int]:
    """The run's own date (its JSON's "date", else ``name_date``) and its number of records (0 unreadable)."""
    try:
        run = json.loads(path.read_text())
        date, records = run.get("date"), run.get("records")
    except (OSError, ValueError, AttributeError):
        return name_date, 0
    valid = isinstance(date, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
    return (date if valid else name_date), len(records) if isinstance(records, list) else 0


def gpu_runs(folder: Path = RESULTS) -> list[tuple[str, Path]]:
    """(date, path) of the committed GPU runs, oldest first (module docstring): ``folder``'s GPU-*.json and its
    gpu-*/GPU-*.json (gpu_bench.sh's output folder as committed), a --tiny run's (<device>-<date>-tiny.json) left
    out, a name in both places counted once (the one in ``folder``); by the run's own date, then its records (a
    day's full run after its partial reruns), then the name."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("gpu-*/GPU-*.json")) + sorted(folder.glob("GPU-*.json")):
        found[path.name] = path  # the top-level copy last: it wins
    keyed = []
    for path in found.values():
        match = RUN_NAME.fullmatch(path.name)
        if match is None or match.group(2) == "-tiny":  # a --tiny smoke run is no measurement
            continue
        date, size = _run_date_and_size(path, match.group(1))
        keyed.append(((date, size, path.name), path))
    return [(key[0], path) for key, path in sorted(keyed)]


def newest_gpu_results(folder: Path = RESULTS) -> Path:
    runs = gpu_runs(folder)
    if not runs:
        raise SystemExit(
            f"no GPU-*.json benchmark results in {folder} or its gpu-*/ folders: run benchmarks/gpu_bench.sh on a GPU "
            "first"
        )
    return runs[-1][1]


def attach_missing_predictions(results: dict, *folders: Path) -> int:
    """Predictions for the records that have none (the benchmark attaches them when a suite ends: a suite stopped by
    its cap has none), from the model file the run names (results['model']) or else its card's, found in the first
    of ``folders`` (default: benchmarks/results) that has it; each such record marked prediction_from 'today', and
    the model recorded in results['model_attached'] (its file, card and date: the file as it is now, maybe newer
    than the run). Returns how many records got one."""
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
        for record in missing["records"]:
            if "predicted_ms" in record:
                record["prediction_from"] = "today"
        env = json.loads(model.read_text()).get("environment", {})
        results["model_attached"] = {"file": model.name, "records": count,
                                     **{k: env[k] for k in ("card", "date", "triton") if k in env}}  # fmt: skip
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
                     "predicted": predicted, "ratio": measured / predicted, "bound": bound,
                     "prediction": record.get("prediction_from", "run")})  # fmt: skip
    return rows


def summary(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(suite, mode, provider) -> min / median / max of measured / predicted over the device-bound cases, and
    'predictions': where they come from ('run', 'today', or 'run + today' where the group mixes both)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        if row["bound"] == "device":
            groups.setdefault((row["suite"], row["mode"], row["provider"]), []).append(row)
    out = {}
    for key, group in sorted(groups.items()):
        v = [row["ratio"] for row in group]
        sources = " + ".join(s for s in ("run", "today") if any(row.get("prediction", "run") == s for row in group))
        out[key] = {"cases": len(v), "min": min(v), "median": statistics.median(v), "max": max(v),
                    "predictions": sources}  # fmt: skip
    return out


def _model_words(model: dict) -> str:
    """'model-sm90.json (H200, 2026-12-02, triton 3.8.0)': a model's file and what it recorded of itself."""
    known = [model[k] for k in ("card", "date") if model.get(k)]
    known += [f"triton {model['triton']}"] if model.get("triton") else []
    return f"{model.get('file', '?')} ({', '.join(known) or 'its card and date not recorded in the run'})"


def header(results: dict, rows: list[dict]) -> list[str]:
    """The run's and the models' provenance, the suites cut short, where each row's prediction comes from."""
    from masksub_kernels.bench import report as bench_report

    env = results.get("environment", {})
    copy = results.get("copy_gbps")
    copy_words = f"{copy:.0f} GB/s" if isinstance(copy, (int, float)) and copy > 0 else "not measured"
    lines = [
        f"Run: date {results.get('date', '?')}, device {env.get('device', '?')}, torch {env.get('torch', '?')}, "
        f"triton {env.get('triton', '?')}, commit {env.get('commit') or 'not recorded'}; measured copy {copy_words}.",
    ]
    own = sum(row["prediction"] == "run" for row in rows)
    lines.append(
        f'Predictions "run" ({own} rows): the run\'s own, attached when its suites ended, from '
        f"{_model_words(results['model']) if results.get('model') else 'a model file the run does not name'}."
    )
    if results.get("model_attached"):
        attached = results["model_attached"]
        suites = sorted({row["suite"] for row in rows if row["prediction"] == "today"})
        lines.append(
            f'Predictions "today": {attached["records"]} predictions attached afterwards from '
            f"{_model_words(attached)} as it is now (the model of today's code, not of the run's): the run's file "
            f"had none for them (suites {', '.join(suites) or '-'})."
        )
    cut = [f"{suite} {bench_report.cut_short(results, suite)}" for suite in results.get("incomplete_suites", {})]
    if cut:
        lines.append(f"Suites cut short in the run (their other rows missing): {'; '.join(cut)}.")
    lines.append(
        "Predicted ms are PREDICTIONS of the static model (tools/perf_model), measured ms the benchmark's medians. "
        "Host-bound: the run measured the call so (its host_bound: host time on a drained GPU at least the median) "
        f"or its prediction is under {HOST_BOUND_MS} ms; there the call's host cost, not modelled, sets the time."
    )
    return lines


def report(results: dict, source: str) -> str:
    rows = comparisons(results)
    lines = [f"# Measured beside predicted: {source}", "", *header(results, rows)]
    lines += [
        "",
        "## Calibration: measured / predicted over the device-bound cases",
        "",
        "| suite | mode | provider | cases | min | median | max | predictions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (suite, mode, provider), s in summary(rows).items():
        lines.append(f"| {suite} | {mode} | {provider} | {s['cases']} | {s['min']:.2f} | {s['median']:.2f} | "
                     f"{s['max']:.2f} | {s['predictions']} |")  # fmt: skip
    lines += ["", "## Every case", "",
              "| suite | shape | dtype | mode | provider | measured ms | predicted ms | ratio | bound | prediction |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['suite']} | {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['measured']:.3f} | {r['predicted']:.3f} | {r['ratio']:.2f} | {r['bound']} | "
                     f"{r['prediction']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def nothing_to_compare(results: dict) -> str:
    """Why a run read cleanly has no row to compare: a CPU run, a card without a model, no prediction."""
    device = results["environment"].get("device", "?")
    if device.startswith("CPU"):
        return f"a CPU run ({device}): the model predicts the GPU kernels, and a CPU run's records carry no prediction"
    if not any(r.get("median_ms") for r in results["records"]):
        return "no record has a measured median"
    return (
        f"no record has a prediction, and none could be attached: no model file for {device} (model-sm90.json is "
        "the H200 SXM's, model-sm90-H100.json the H100 SXM's) named by the run or found, or no record of this "
        "library's providers or the fused-linear loss's compared rows"
    )


def load_run(path: Path) -> dict:
    """A benchmark run's JSON with what this report reads (ValueError naming the file and what is wrong otherwise:
    an empty or truncated file, another tool's JSON such as model-sm90.json or linear-loss-memory-*.json): the
    benchmark's own reading (masksub_kernels.bench.report.read_run)."""
    from masksub_kernels.bench import report as bench_report

    return bench_report.read_run(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf_model.measured", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, help="a GPU run's benchmark json (default: the newest)")
    parser.add_argument("--out", type=Path, help="write the report (markdown) here")
    args = parser.parse_args(argv)
    path = args.results
    if path is None:
        path = newest_gpu_results()
        print(f"perf_model.measured: the newest committed GPU run: {path}", file=sys.stderr)
    try:
        results = load_run(path)
    except ValueError as exc:
        print(f"perf_model.measured: {exc}", file=sys.stderr)
        return 2
    attached = attach_missing_predictions(results, path.parent, RESULTS)
    if attached:
        print(f"attached {attached} missing predictions from {results['model_attached']['file']} (today's model)",
              file=sys.stderr)  # fmt: skip
    if not comparisons(results):
        print(f"perf_model.measured: {path}: nothing to compare: {nothing_to_compare(results)}", file=sys.stderr)
        return 2
    text = report(results, path.name)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
