"""The fused-linear loss's host time, PREDICTED from one GPU run's host times: is today's chunk loop host-bound?

The device model (linear_loss.py) counts the GPU's gaps between launches, not the host's time to issue them. The
2026-12-04 H200 run found the op as host-bound as device-bound (host 17.23 ms beside 17.53 ms on the GPU at 384
rows per chunk), so the chunk count the memory budget sets also sets a host floor. This module carries that run's
host times to today's code:

    host(R) = fixed + chunks(R) x per_chunk,       per_chunk = python + launches' share

- fixed, per_chunk of the run's code: least squares over the run's `host_ms` of the op at BERT's shape against its
  chunk count (the chunk sweep's rows, R = 192 to 768, and the default's), in the committed run RUN names (host
  time is the host's: the same prediction for every card's model);
- python: the loop's Python per chunk, measured on this CPU with the Triton launches stubbed
  (benchmarks/linear_loss_host.py) for the run's code and for today's, interleaved (HARNESS_FILES); the GPU
  machine's host is assumed as fast as this CPU (a faster host shrinks this share);
- the launches' share: the run's per-chunk time less its Python, carried to today's launches in proportion: the
  run's split of that share between torch launches and Triton ones is not known, so the prediction is a range, from
  all of it in Triton launches to all of it in torch ones (launch counts per chunk: RUN_LAUNCHES, and today's from
  linear_loss._fused).
PREDICTIONS, with their assumptions; the next GPU run's `host ms` column measures them.
"""

from __future__ import annotations

import json
from pathlib import Path

from .measured import RESULTS

# The run whose host times calibrate, and its code's launches per chunk at C = 30522: the 2026-12-04 H200 run's
# third call, on 50d7bf7: 2 copies of the rows into the stacked buffer, the logits' mm, the zero fill of the
# gradients' pad columns, dH's and dHs's mm, dW's addmm (7 torch launches), the loss forward and backward (2 Triton
# launches). A new run of new code replaces all three together.
RUN = {"file": "GPU-NVIDIA-H200-2026-12-04-matmul-aligned.json", "commit": "50d7bf7", "torch": 7, "triton": 2}
HARNESS_FILES = {
    "run": "linear-loss-host-CPU-2026-12-05-50d7bf7.json",
    "today": "linear-loss-host-CPU-2026-12-05-plans.json",
}
SHAPE_PREFIX = "BERT-base MLM M=16384 D=768 C=30522"
ROWS = 16384


def _python_us(name: str, folder: Path) -> float:
    """The harness's Python per chunk (us): the mean of its runs' medians."""
    meta = json.loads((folder / HARNESS_FILES[name]).read_text())
    runs = meta["meta"].get("us_per_chunk_runs") or [r["us_per_chunk"] for r in meta["records"]]
    return sum(runs) / len(runs)


def run_points(folder: Path = RESULTS) -> list[tuple[int, float]]:
    """[(chunks, host ms)] of the RUN's op at BERT's shape: its default's and chunk sweep's rows (the sweep's
    programs-per-SM row left out: the default's chunks)."""
    points = []
    for r in json.loads((folder / RUN["file"]).read_text())["records"]:
        provider = r["provider"]
        swept = provider.startswith("masksub[triton]:R=") and ",P=" not in provider
        if (
            r.get("suite") == "linear_loss" and r.get("mode") == "full" and r.get("host_ms") is not None
            and r["shape"] == SHAPE_PREFIX and (provider == "masksub[triton]" or swept)
        ):  # fmt: skip
            rows = r.get("chunk_rows") or 384  # the default's rows (the run's rule at this shape)
            points.append((-(-ROWS // rows), r["host_ms"]))
    return sorted(points)


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares host ms = fixed + per_chunk x chunks: (fixed ms, per_chunk us)."""
    n = len(points)
    mean_c = sum(c for c, _ in points) / n
    mean_h = sum(h for _, h in points) / n
    slope = sum((c - mean_c) * (h - mean_h) for c, h in points) / sum((c - mean_c) ** 2 for c, _ in points)
    return mean_h - slope * mean_c, slope * 1e3


def predict_host(
    today_launches: dict[str, int],
    chunk_rows: list[int],
    folder: Path = RESULTS,
    launches_by_rows: dict[int, dict[str, int]] | None = None,
) -> dict | None:
    """Today's host time per chunk (a range, us) and for each of ``chunk_rows`` rows per chunk (ms), or None where
    the RUN's file has fewer than two chunk counts. ``launches_by_rows``: the launches per chunk of the chunk sizes
    whose own differ from ``today_launches`` (chunks whose loss forward splits: 2 Triton launches and the class
    tail's matmuls; helper-152); their fallback's own Python is not in the measured Python (its chunks do not
    split)."""
    points = run_points(folder)
    if len({c for c, _ in points}) < 2:
        return None
    fixed_ms, per_chunk_us = fit(points)
    python_run, python_today = _python_us("run", folder), _python_us("today", folder)
    share = per_chunk_us - python_run  # the run's launches' host time per chunk
    run_total = RUN["torch"] + RUN["triton"]

    def per_chunk(launches: dict[str, int]) -> tuple[float, float]:
        ratios = [
            launches["triton"] / RUN["triton"],  # all of it in Triton launches
            launches["torch"] / RUN["torch"],  # all of it in torch launches
            (launches["torch"] + launches["triton"]) / run_total,  # alike per launch
        ]
        return python_today + share * min(ratios), python_today + share * max(ratios)

    low, high = per_chunk(today_launches)
    rows = []
    for r in chunk_rows:
        chunks, launches = -(-ROWS // r), (launches_by_rows or {}).get(r, today_launches)
        rows.append(
            {
                "chunk_rows": r,
                "chunks": chunks,
                "launches": launches,
                "host_ms": [round(fixed_ms + chunks * us / 1e3, 1) for us in per_chunk(launches)],
            }
        )
    return {
        "label": "PREDICTIONS (one GPU run's host times carried to today's launches; assumptions in the docstring)",
        "run": f"{RUN['file']} ({RUN['commit']})",
        "run_points": [{"chunks": c, "host_ms": round(h, 2)} for c, h in points],
        "run_fixed_ms": round(fixed_ms, 2),
        "run_per_chunk_us": round(per_chunk_us, 1),
        "python_us": {"run": round(python_run, 1), "today": round(python_today, 1)},
        "launches": {"run": {"torch": RUN["torch"], "triton": RUN["triton"]}, "today": today_launches},
        "today_per_chunk_us": [round(low, 1), round(high, 1)],
        "rows": rows,
    }


def markdown(
    result: dict | None, device_ms: dict[int, float], calibrated: tuple[int, list[float]] | None = None
) -> list[str]:
    """The section's lines: the host prediction per rows per chunk beside the device model's (``device_ms``) and,
    where given, the calibrated device times of one chunk size (``calibrated``: rows, [ms, ...])."""
    if not result:
        return []
    low, high = result["today_per_chunk_us"]
    points = ", ".join(f"{p['chunks']} chunks {p['host_ms']:.2f} ms" for p in result["run_points"])
    lines = [
        "",
        f"Host time, {result['label']}: the run {result['run']} measured the op's host time at {points} "
        f"(least squares: {result['run_fixed_ms']:.2f} ms + {result['run_per_chunk_us']:.0f} us per chunk, with "
        f"{result['launches']['run']['torch']} torch and {result['launches']['run']['triton']} Triton launches per "
        f"chunk, {result['python_us']['run']:.0f} us of Python on the CPU machine); today "
        f"{result['launches']['today']['torch']} torch and {result['launches']['today']['triton']} Triton launches, "
        f"{result['python_us']['today']:.0f} us of Python: {low:.0f}-{high:.0f} us per chunk predicted (the run's "
        "launch time all in Triton launches or all in torch ones). The op is host-bound where the host's figure "
        "passes the device's"
        + (
            f" (device time calibrated by the run at {calibrated[0]} rows, matmuls probed: "
            f"{min(calibrated[1]):.1f}-{max(calibrated[1]):.1f} ms, above):"
            if calibrated and calibrated[1]
            else ":"
        ),
        "",
        "| rows per chunk | chunks | launches per chunk (torch + Triton) | predicted host ms | predicted device ms "
        "(the model above, uncalibrated) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        device, launches = device_ms.get(r["chunk_rows"]), r.get("launches", result["launches"]["today"])
        lines.append(
            f"| {r['chunk_rows']} | {r['chunks']} | {launches['torch']} + {launches['triton']} | "
            f"{r['host_ms'][0]:.1f}-{r['host_ms'][1]:.1f} | {'-' if device is None else f'{device:.1f}'} |"
        )
    return lines
