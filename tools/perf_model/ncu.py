"""MEASUREMENTS of Nsight Compute beside the model: the fused-linear op's kernels as benchmarks/gpu_bench.sh's ncu step
profiled them (benchmarks/gpu_ncu.py), one row per kernel, the loss kernels beside the performance model's predicted
time and bytes per chunk (linear_loss._loss_kernels_us: the same launches, 384 rows, C = 30522, bf16).

    python -m tools.perf_model.ncu OUT/bench.log [--card H200]   (default: the card the log's gpu_ncu line names)

The report names the card the log ran on, the run's date where the log has its benchmark header, ncu's version (the
step does not log it: "not in the log"), and the card and date of the model columns (today's model); each block its
ncu exit status (the end marker's rc: a non-zero one is flagged, its kernels or metrics may be missing). Rows are
labelled with the workload's calls ('profiled:' lines) where the log tells them apart: the last rows are the A/B
calls' loss launches (one each, on logits without a class tail), which get no model columns: the model's
prediction is for the op's own launch. --card takes the model's cards only (H200, H100; any case).

The step writes ncu's raw page (--csv --page raw --print-units base) into bench.log between '== ncu_csv begin' and
'== ncu_csv end rc=N': a header row of metric names, a units row, then a row per profiled kernel; ncu's own lines
(==PROF==, ==WARNING==) and the workload's (gpu_ncu: ...) in between are not CSV rows and are skipped. The metric
names are those of ncu's sections (SpeedOfLight, MemoryWorkloadAnalysis, Occupancy, LaunchStats, WarpStateStats,
InstructionStats) as ncu 2025.3 printed them on the 2026-12-04 H200 run (DRAM throughput: gpu__dram_throughput there,
dram__throughput in older releases, both read); a metric this ncu names otherwise shows as '-', and --columns lists
every column the log has.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path

COLUMNS = {  # what the table shows: (heading, metric, or the metric's names, first found wins)
    "duration_us": ("us", "gpu__time_duration.sum"),  # base units: ns
    "dram_read": ("DRAM read MB", "dram__bytes_read.sum"),
    "dram_write": ("DRAM write MB", "dram__bytes_write.sum"),
    # ncu 2025's raw page (the 2026-12-04 H200 run) spells it gpu__dram_throughput; older ones dram__throughput
    # (helper-214: the column was always '-')
    "dram_pct": (
        "DRAM % of peak",
        (
            "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
            "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        ),
    ),
    "l2_hit": ("L2 hit %", "lts__t_sector_hit_rate.pct"),
    "occupancy": ("achieved occupancy %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    "registers": ("registers", "launch__registers_per_thread"),
    "instructions": ("warp instructions", "smsp__inst_executed.sum"),
}
STALL = re.compile(r"issue_stalled_([a-z_]+?)_per_issue_active\.ratio$")  # WarpStateStats: cycles per issue
# the chunk loop's loss kernels: one launch of both (ops/_loss_fwd_bwd.py), or the two where the classes split
LOSS_KERNELS = ("_loss_fwd_bwd_kernel", "_loss_fwd_kernel", "_loss_bwd_kernel")


def tables(text: str) -> list[list[dict[str, str]]]:
    """Each '== ncu_csv begin' .. 'end' block of ``text`` as a list of rows (metric -> value as printed), the units
    row left out."""
    blocks, rows, inside = [], None, False
    for line in text.splitlines():
        if line.startswith("== ncu_csv begin"):
            inside, rows = True, []
        elif line.startswith("== ncu_csv end"):
            if rows is not None:
                blocks.append(rows)
            inside, rows = False, None
        elif inside and line.startswith('"'):
            rows.append(line)
    result = []
    for lines in blocks:
        parsed = list(csv.reader(lines))
        if not parsed:
            result.append([])
            continue
        header, data = parsed[0], parsed[1:]
        if data and not data[0][0]:  # the units row: its ID column is empty
            data = data[1:]
        result.append([dict(zip(header, row)) for row in data if len(row) == len(header)])
    return result


ALONE = "loss launch alone"  # gpu_ncu.py's A/B calls: one loss launch each, on logits without a class tail


def blocks_info(text: str) -> list[dict]:
    """Per '== ncu_csv begin' .. 'end' block (tables' order): {'rc': ncu's exit status from the end marker (None
    where the marker has none), 'profiled': the workload's calls in order (its 'gpu_ncu: ... profiled: NAME'
    lines)}."""
    infos, current = [], None
    for line in text.splitlines():
        if line.startswith("== ncu_csv begin"):
            current = {"rc": None, "profiled": []}
        elif line.startswith("== ncu_csv end"):
            if current is not None:
                rc = re.search(r"rc=(-?\d+)", line)
                current["rc"] = int(rc.group(1)) if rc else None
                infos.append(current)
            current = None
        elif current is not None and (found := re.match(r"gpu_ncu:.*?profiled: (.+)$", line)):
            current["profiled"].append(found.group(1).strip())
    return infos


def call_labels(rows: list[dict], profiled: list[str]) -> list[str]:
    """Which profiled call each row's kernel belongs to, where the log says: gpu_ncu.py's A/B calls (the last
    ones, ALONE in their names) launch one loss kernel each, the last rows of the block; the rows before them belong
    to the other calls ('-' where there are several: their kernels are not told apart), or to the one other call."""
    alone = [name for name in profiled if ALONE in name]
    others = [name for name in profiled if ALONE not in name]
    labels = [others[0] if len(others) == 1 else "-"] * len(rows)
    tail = rows[len(rows) - len(alone) :] if alone and len(alone) <= len(rows) else []
    if tail and all(short(r["kernel"]) in LOSS_KERNELS for r in tail):
        labels[len(rows) - len(alone) :] = alone
    return labels


def why_no_rows(text: str) -> str:
    """What the log says about an ncu step that left no rows (appended to the message), else ''."""
    reasons = [
        ("ERR_NVGPUCTRPERM", "the GPU's performance counters were locked (ERR_NVGPUCTRPERM)"),
        ("LibraryNotLoaded", "ncu could not load its library on this machine (LibraryNotLoaded: a sandboxed runtime?)"),
        ("ncu: not found", "ncu was not on the machine"),
    ]
    found = [reason for marker, reason in reasons if marker in text]
    begins = sum(line.startswith("== ncu_csv begin") for line in text.splitlines())
    ends = sum(line.startswith("== ncu_csv end") for line in text.splitlines())
    if begins > ends:
        found.append("the step was stopped before ncu printed its tables (a begin marker without its end: the cap?)")
    return ": " + "; ".join(found) if found else ""


def number(value: str | None) -> float | None:
    """A raw-page value as a float (thousands separators dropped), None where it is absent or not a number."""
    if value is None:
        return None
    try:
        return float(value.replace(",", ""))
    except ValueError:
        return None


def summary(row: dict[str, str]) -> dict:
    """One kernel's figures: COLUMNS (durations in us, bytes in MB), its name, grid and block, its top 3 stall
    reasons (cycles per issued instruction)."""
    out = {"kernel": row.get("Kernel Name", "?"), "grid": row.get("Grid Size", ""), "block": row.get("Block Size", "")}
    for key, (_, metrics) in COLUMNS.items():
        names = (metrics,) if isinstance(metrics, str) else metrics
        out[key] = next((value for name in names if (value := number(row.get(name))) is not None), None)
    if out["duration_us"] is not None:
        out["duration_us"] /= 1e3
    for key in ("dram_read", "dram_write"):
        if out[key] is not None:
            out[key] /= 1e6
    stalls = {m.group(1): number(v) for k, v in row.items() if (m := STALL.search(k)) and number(v) is not None}
    out["stalls"] = sorted(stalls.items(), key=lambda kv: -kv[1])[:3]
    return out


def short(name: str) -> str:
    """A kernel's name without its parameters and with its first template argument only, shortened (cuBLAS's names
    run to hundreds of characters; the first argument says which GEMM kernel ran: ``cutlass::Kernel2<cutlass_80_
    tensorop_bf16_s16816gemm_...>`` is an sm80 kernel). The Triton kernels' names have neither. An anonymous
    namespace is named {anon} (its parentheses are no parameter list: helper-349)."""
    name = re.sub(r"^void ", "", name).replace("(anonymous namespace)", "{anon}")
    depth, kept = 0, []
    for ch in name:
        depth += ch in "<("
        if depth == 0:
            kept.append(ch)
        depth -= ch in ">)"
    base = "".join(kept)[:60]
    first = re.match(r"[^<(]*<([^,<>()]+)", name)  # the first template argument, where the name has one
    return f"{base}<{first.group(1).strip()[:80]}>" if first else base


def logged_card(text: str) -> str | None:
    """The model's name of the card benchmarks/gpu_ncu.py ran on ('gpu_ncu: ... warmed up on NVIDIA H100 80GB
    HBM3, ...'), or None (no such line, or a card the model does not know: a PCIe / NVL form among them). Until
    2026-12-06 the default was H200's whatever card ran (helper-214)."""
    from .hardware import card_for_device

    found = re.search(r"^gpu_ncu:.*warmed up on ([^,\n]+)", text, re.M)
    card = card_for_device(found.group(1)) if found else None
    return card.name if card else None


def predicted_loss_kernels(card_name: str) -> dict[str, dict]:
    """The model's loss kernels of one chunk at BERT's shape: kernel -> {kernel_us, bytes} (PREDICTIONS); the one
    launch of both (the chunk's at 384 rows) modelled as their sum, as linear_loss.py does."""
    from .hardware import CARDS
    from .linear_loss import _loss_kernels_us

    _, _, kernels = _loss_kernels_us(CARDS[card_name], 384, 30522)
    both = {"kernel": LOSS_KERNELS[0], "kernel_us": sum(k["kernel_us"] for k in kernels)}
    both["bytes"] = sum(k["bytes"] for k in kernels)
    return {k["kernel"]: k for k in (both, *kernels)}


def markdown(rows: list[dict], predicted: dict[str, dict] | None, labels: list[str] | None = None) -> list[str]:
    """The block's table; ``labels``: each row's profiled call (call_labels). A row of an A/B call (ALONE) gets no
    prediction: the model's is for the op's launch with its class tail, another launch."""
    heads = [head for head, _ in COLUMNS.values()]
    labelled = labels is not None and any(ALONE in label for label in labels)  # the column where A/B rows are
    lines = [
        "| kernel | "
        + ("profiled call | " if labelled else "")
        + "grid | block | "
        + " | ".join(heads)
        + " | DRAM GB/s | top stalls (cycles per issue) | model us | model MB |",
        "|" + "---|" * (len(heads) + 7 + labelled),
    ]
    for index, r in enumerate(rows):
        label = labels[index] if labels else "-"
        moved = (r["dram_read"] or 0) + (r["dram_write"] or 0)
        rate = f"{moved / r['duration_us'] * 1e3:.0f}" if r["duration_us"] and moved else "-"
        stalls = ", ".join(f"{name} {value:.1f}" for name, value in r["stalls"]) or "-"
        model = None if ALONE in label else (predicted or {}).get(short(r["kernel"]))
        cells = [short(r["kernel"]), *([label] if labelled else []), r["grid"], r["block"]]
        cells += ["-" if r[key] is None else f"{r[key]:.4g}" for key in COLUMNS]
        cells += [rate, stalls]
        cells += [f"{model['kernel_us']:.1f}", f"{model['bytes'] / 1e6:.1f}"] if model else ["-", "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if labels and predicted and any(ALONE in label for label in labels):
        lines += ["", "The rows of the loss launch alone (benchmarks/gpu_ncu.py's A/B of its block order) have no "
                  "model columns: that launch reads logits without a class tail, and the model's prediction is for the "
                  "op's launch with its class tail."]  # fmt: skip
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf_model.ncu", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="bench.log of benchmarks/gpu_bench.sh")
    from .hardware import CARDS

    parser.add_argument(
        "--card",
        default=None,
        type=str.upper,
        choices=sorted(CARDS),
        help="the model's card for the loss kernels' predictions, any case (default: the card the log's gpu_ncu line "
        "names)",
    )
    parser.add_argument("--columns", action="store_true", help="list the metric columns the log has")
    args = parser.parse_args(argv)
    if not args.log.is_file():
        parser.error(f"{args.log} is not a file (the bench.log of benchmarks/gpu_bench.sh)")
    text = args.log.read_text(errors="replace")
    blocks = tables(text)
    if not blocks or not any(blocks):
        print(f"{args.log}: no ncu CSV rows between '== ncu_csv' markers{why_no_rows(text)}")
        return 1
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):  # the model compiles the kernels
        print(
            "perf_model.ncu: TRITON_INTERPRET is set: the measured table without the model's columns", file=sys.stderr
        )
        predicted = None
    else:
        card = args.card or logged_card(text)
        if card is None:
            print("perf_model.ncu: the log names no card the model knows (--card H100 / H200): no model columns",
                  file=sys.stderr)  # fmt: skip
        predicted = predicted_loss_kernels(card) if card else None
    print("\n".join(header(args.log, text, card if predicted is not None else None)))
    for index, (block, info) in enumerate(zip(blocks, blocks_info(text), strict=True)):
        if args.columns and block:
            print("\n".join(sorted(block[0])))
        rc = info["rc"]
        status = "ncu rc=0" if rc == 0 else f"**ncu rc={rc if rc is not None else '?'}: ncu failed or was stopped, "
        status += "" if rc == 0 else "kernels or metrics may be missing**"
        print(f"\n## ncu block {index + 1}: {len(block)} kernels (MEASURED), {status}; model: PREDICTIONS per chunk\n")
        rows = [summary(row) for row in block]
        print("\n".join(markdown(rows, predicted, call_labels(rows, info["profiled"]))))
    return 0


def header(log: Path, text: str, card: str | None) -> list[str]:
    """What the report is of: the log, the run's device and date where it says, ncu's version (not in gpu_bench's
    log), the model's card and date for the model columns."""
    import datetime

    device = re.search(r"^gpu_ncu:.*warmed up on ([^,\n]+)", text, re.M)
    date = re.search(r"^Device: .*\| date (\d{4}-\d{2}-\d{2})", text, re.M)
    version = re.search(r"NVIDIA \(R\) Nsight Compute Command Line Profiler.*?Version ([\w.() -]+)", text, re.S)
    model = (
        f"PREDICTIONS of today's model ({datetime.date.today().isoformat()}) for the {card}, per chunk (384 rows, "
        "C = 30522, bf16)"
        if card
        else "none"
    )
    return [
        f"# Nsight Compute beside the model: {log}",
        "",
        f"Ran on: {device.group(1).strip() if device else 'not named in the log'}; run date: "
        f"{date.group(1) if date else 'not in the log'}; ncu version: "
        f"{version.group(1).strip() if version else 'not in the log'}. Model columns: {model}.",
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
