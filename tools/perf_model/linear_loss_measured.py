"""MEASUREMENTS beside the fused-linear loss's predictions (linear_loss.py): what a committed GPU run of the card
measured at the BERT shape, and the prediction with its loss kernels calibrated by that run, so that the speed goal
(faster than torch.compile of the composite) is read against what torch.compile did, not only what it could do.

Inputs (all committed): the newest benchmark run of the card (card_runs:
benchmarks/results/GPU-NVIDIA-<card>-<yyyy-mm-dd>[-<suffix>].json, or the same under benchmarks/results/gpu-<date>/;
the exact card name: an H200 NVL is another card) that has the fused-linear suite's rows at the shape; and
PROFILE, the one torch.profiler table of the chunk loop's loss kernels.

The loss kernels' calibration is a range, not one factor: the kernels and the model changed since the only run, so
each source says something different, and the report gives the calibrated time for each:
- run: the loss suite's case of the op's class count (LOSS_CASE), measured / the prediction the run carried (the
  model and kernels of that day); the forward ratio for the forward kernel, the backward's for the backward kernel;
- today: the same measurements / today's model of today's kernels for that case (the forward kernel was rewritten
  after the run: realigned rows, per-word softmax states);
- profile: the chunk kernels as profiled that day / today's model of today's kernels at the profiled rows.
The matmuls, launches and the backward's scaling stay as predicted in those rows, and the host side is not in them:
a host-bound op would be slower than any of these (its host time: linear_loss_host.py, a prediction of its own).

The matmuls' own calibration: where a committed log of benchmarks/gemm_probe.py on the card exists
(results/gpu-<date>/*gemm*.log, newest first), each calibrated row also gives the fused time with the chunk's
matmuls as the probe MEASURED them at the default chunk rows (GEMM_ROWS) instead of at the model's assumed cuBLAS
efficiency: the matmuls as the loop runs them per chunk ("loop:" rows: over C's aligned head, views of W, dH added
into an fp32 product; the loss launch takes the tail) where the log has them, else the aligned matmuls of
2026-12-04 (over W padded to C rounded up to 8). A probed chunk is a full one: the shift is scaled by the model's
chunks in full chunks' matmul time (the last chunk is shorter). On the H200 the probe measured the aligned chunk
matmuls at ~340-500 TFLOP/s, against the 692 assumed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .hardware import Card, card_for_device
from .measured import RESULTS, comparisons, gpu_runs

LOSS_CASE = "BERT-like M=16384 C=30522"  # the loss suite's case with the op's C (device-bound on the H200)
LOSS_KEY = ("loss", LOSS_CASE, "bfloat16", "masksub[triton]")  # (suite, shape, dtype, provider) of its rows
# MEASURED: torch.profiler on the H200, 2026-11-30 (benchmarks/results/gpu-2026-11-30/diag-profile.log, the first
# 'linear_masksub_loss full BERT bf16' table, column 'CUDA time avg'): the chunk loop's two loss kernels on fp32
# logits of 256 rows per branch, as they were that day: unpadded rows of 30522 (before aligned_classes), the
# forward's per-element softmax state (before its per-word rewrite); the bias added as they read, as today
PROFILE = {
    "card": "H200",
    "date": "2026-11-30",
    "source": "benchmarks/results/gpu-2026-11-30/diag-profile.log",
    "rows": 256,
    "kernel_us": {"_loss_fwd_kernel": 29.181, "_loss_bwd_kernel": 36.291},
}
KERNELS = ("_loss_fwd_kernel", "_loss_bwd_kernel")  # forward, backward

GEMM_ROWS = 384  # benchmarks/gemm_probe.py's rows per branch (its R = 768 stacked rows)
# the chunk's three matmuls by the probe's row names, each (name, times per chunk): the loop's own where the log has
# them, else the aligned matmuls over a padded W (2026-12-04: dH per branch, twice). Logs before 2026-12-05 named
# other "loop:" rows (head + tail: each with its tail's matmul, which the loop no longer runs): not read
GEMM_PARTS = {
    "logits": (("loop: logits head", 1), ("logits fp32 out, C8", 1)),
    "d_hidden": (("loop: dH both, head, beta 1", 1), ("dH, K=C8", 2)),
    "d_weight": (("loop: dW head", 1), ("dW addmm fp32, M=C8", 1)),
}
_GEMM_ROW = re.compile(r"^(\S.*?)\s{2,}([\d.]+) us\s+[\d.]+ TFLOP/s", re.MULTILINE)


def card_runs(card: Card, folder: Path = RESULTS) -> list[tuple[str, Path]]:
    """(date, path) of the committed GPU runs of exactly this card, oldest first, in measured.gpu_runs's order (the
    run's own date, then its records: a day's full run after a partial rerun such as -matmul-aligned; in ``folder``
    and its gpu-*/ folders): files named after the device (masksub_kernels.bench), the card's name with at most its
    memory size and type after it (GPU-NVIDIA-H200-<date>, GPU-NVIDIA-H100-80GB-HBM3-<date>; not another product of
    the name, e.g. GPU-NVIDIA-H200-NVL-<date>), then a suffix or none (-matmul-aligned; --tiny runs: none)."""
    name = re.escape(card.name)
    pattern = re.compile(rf"GPU-NVIDIA-{name}(?:-\d+GB)?(?:-HBM\w+)?-\d{{4}}-\d{{2}}-\d{{2}}(?:-[\w.-]+)?\.json")
    return [(date, path) for date, path in gpu_runs(folder) if pattern.fullmatch(path.name)]


def gemm_probe(card: Card, folder: Path = RESULTS) -> dict | None:
    """The newest committed gemm_probe log of ``card`` (its first line names the device): {file, date, per_chunk_us,
    loop}: the chunk's three matmuls' measured us at GEMM_ROWS rows (GEMM_PARTS), or None without a log that
    has them all."""
    for path in sorted(folder.glob("gpu-*/*gemm*.log"), key=lambda p: p.parent.name, reverse=True):
        text = path.read_text()
        device = next((line.split(" | ")[0] for line in text.splitlines() if " | torch " in line), "")
        if card_for_device(device) is not card:
            continue
        rows = {m.group(1).strip(): float(m.group(2)) for m in _GEMM_ROW.finditer(text)}
        chosen = [next(((n, k) for n, k in options if n in rows), None) for options in GEMM_PARTS.values()]
        if None in chosen:
            continue
        return {
            "file": f"{path.parent.name}/{path.name}",
            "date": path.parent.name.removeprefix("gpu-"),
            "per_chunk_us": round(sum(rows[n] * k for n, k in chosen), 1),
            "loop": all(n.startswith("loop:") for n, _ in chosen),
        }
    return None


def _composites(run: dict, shape: str) -> dict[str, float]:
    """provider -> measured median ms of the fused-linear suite at ``shape``, bf16, forward + backward."""
    return {
        r["provider"]: round(r["median_ms"], 3)
        for r in run["records"]
        if (r["suite"], r["shape"], r["dtype"], r["mode"]) == ("linear_loss", shape, "bfloat16", "full")
        and r.get("median_ms")
        and not r.get("labels_differ")  # the MLM-like labels' rows: other inputs than the composite's (helper-252)
    }


def _loss_case(run: dict) -> dict[str, dict]:
    """mode -> the loss suite's device-bound LOSS_CASE row of this library's Triton provider, bf16 (comparisons)."""
    return {
        row["mode"]: row
        for row in comparisons(run)
        if (row["suite"], row["shape"], row["dtype"], row["provider"]) == LOSS_KEY
        and row["mode"] in ("forward", "backward")
        and row["bound"] == "device"
    }  # fmt: skip


def calibrations(run: dict, today: dict[str, float], profiled_today: dict[str, float], card: Card) -> list[dict]:
    """The sources of the loss kernels' factors (module docstring): [{source, forward, backward}]. ``today``: mode
    -> today's predicted ms of LOSS_CASE; ``profiled_today``: kernel -> today's predicted us at PROFILE's rows."""
    case, sources = _loss_case(run), []
    if set(case) == {"forward", "backward"}:
        sources.append({"source": "run", **{m: round(case[m]["ratio"], 2) for m in case}})
        if set(today) >= {"forward", "backward"}:
            sources.append({"source": "today", **{m: round(case[m]["measured"] / today[m], 2) for m in case}})
    if card.name == PROFILE["card"] and set(profiled_today) >= set(KERNELS):
        measured = PROFILE["kernel_us"]
        ratios = [round(measured[k] / profiled_today[k], 2) for k in KERNELS]
        sources.append({"source": "profile", "forward": ratios[0], "backward": ratios[1]})
    return sources


def measured_reference(
    card: Card, fused: dict, shape: str, today: dict[str, float], profiled_today: dict[str, float],
    folder: Path = RESULTS,
) -> dict | None:  # fmt: skip
    """The newest run of ``card`` with the fused-linear suite at ``shape`` beside ``fused`` (linear_loss._fused's
    dict), or None without one: its composites' medians and, per calibration source, the fused op's time with the
    loss kernels calibrated and its ratio to the measured torch.compile (composite time / fused time)."""
    found = None
    for date, path in reversed(card_runs(card, folder)):  # the newest run that timed the suite at the shape
        run = json.loads(path.read_text())
        if composites := _composites(run, shape):
            found = date, path, run, composites
            break
    if found is None:
        return None
    date, path, run, composites = found
    by_kernel = fused["breakdown"]["loss_kernels_by_kernel"]  # us over all chunks (the last at its own rows)
    uncalibrated = fused["us"] - fused["breakdown"]["loss_kernels"]
    compiled, eager = composites.get("compile(official)"), composites.get("official")
    probe = gemm_probe(card, folder) if fused.get("chunk_rows") == GEMM_ROWS else None
    probed_shift = None  # the fused time's change with the chunk matmuls as probed
    if probe is not None:
        probed_shift = fused["chunk_equivalents"] * probe["per_chunk_us"] - fused["breakdown"]["matmuls"]
        # the probe's event pairs wrap each call: its times hold cuBLAS's memsets and split-K reductions, which the
        # model charges as launches (helper-158: counted twice)
        probed_shift -= fused.get("cublas_extra_us", 0.0)
    calibrated = []
    for factors in calibrations(run, today, profiled_today, card):
        loss_us = by_kernel[KERNELS[0]] * factors["forward"] + by_kernel[KERNELS[1]] * factors["backward"]
        entry = {**factors, "loss_kernels_us": round(loss_us, 1), "fused_us": round(uncalibrated + loss_us, 1)}
        if compiled:
            entry["compiled_over_fused"] = round(compiled * 1e3 / entry["fused_us"], 2)
        if eager:
            entry["eager_over_fused"] = round(eager * 1e3 / entry["fused_us"], 2)
        if probed_shift is not None:
            entry["fused_us_probed"] = round(entry["fused_us"] + probed_shift, 1)
            if compiled:
                entry["compiled_over_fused_probed"] = round(compiled * 1e3 / entry["fused_us_probed"], 2)
        calibrated.append(entry)
    reference = {"file": path.name, "date": date, "measured_full_ms": composites, "calibrated": calibrated}
    if probe is not None:
        reference["gemm_probe"] = probe
    if compiled:
        reference["compiled_over_fused_uncalibrated"] = round(compiled * 1e3 / fused["us"], 2)
    return reference


SOURCE_TEXT = {
    "run": "the loss suite's {case} over the run's own predictions (that day's kernels and model)",
    "today": "the same measurements over today's model of today's kernels (as if today's kernels ran no faster "
    "than that day's: the range's upper end)",
    "profile": "the chunk kernels as profiled on {date} ({rows} rows) over today's model at those rows",
}


def markdown(reference: dict | None, loss_kernels_us: float) -> list[str]:
    """The section's lines: measurements, then the calibrated predictions (a range), each labelled."""
    if not reference:
        return []
    measured = ", ".join(
        f"{provider} {ms:.2f} ms" + (" (this op as it was then)" if provider.startswith("masksub[") else "")
        for provider, ms in reference["measured_full_ms"].items()
    )
    lines = [
        "",
        f"MEASURED in the GPU run {reference['file']} at this shape, bf16, forward + backward medians (the code of "
        f"that run's date): {measured}.",
    ]
    probe = reference.get("gemm_probe")
    if reference["calibrated"]:
        probed = ""
        if probe:
            kind = "the loop's own, over C's aligned head" if probe["loop"] else "over a padded W"
            probed = (
                f" The last two columns take the chunk's matmuls as benchmarks/gemm_probe.py MEASURED them "
                f"({probe['file']}, {kind}: {probe['per_chunk_us']:.0f} us per chunk) instead of the assumed "
                "efficiency."
            )
        lines += [
            "",
            f"The fused op with its loss kernels ({loss_kernels_us:.0f} us predicted) calibrated by that run, one row "
            "per source of the factors; matmuls, launches and scaling as predicted, host time not modelled."
            f"{probed} PREDICTIONS; x compile = the measured torch.compile time / the fused time:",
            "",
            "| calibration source | forward x | backward x | loss kernels us | fused us | x compile (measured) | "
            "x eager (measured) |" + (" fused us, matmuls probed | x compile, matmuls probed |" if probe else ""),
            "|---|---|---|---|---|---|---|" + ("---|---|" if probe else ""),
        ]
        for c in reference["calibrated"]:
            text = SOURCE_TEXT[c["source"]].format(case=LOSS_CASE, date=PROFILE["date"], rows=PROFILE["rows"])
            row = (
                f"| {text} | {c['forward']:.2f} | {c['backward']:.2f} | {c['loss_kernels_us']:.0f} | "
                f"{c['fused_us']:.0f} | {c.get('compiled_over_fused', float('nan')):.2f} | "
                f"{c.get('eager_over_fused', float('nan')):.2f} |"
            )
            if probe:
                row += f" {c['fused_us_probed']:.0f} | {c.get('compiled_over_fused_probed', float('nan')):.2f} |"
            lines.append(row)
    if "compiled_over_fused_uncalibrated" in reference:
        lines += ["", f"Uncalibrated: {reference['compiled_over_fused_uncalibrated']:.2f}x the measured compile."]
    return lines
