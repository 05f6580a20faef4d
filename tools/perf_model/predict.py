"""Recorded launches -> cubins -> SASS -> predictions, per case and card; the tables written from them."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import triton

from .capture import Launch, compile_launch
from .hardware import Card
from .model import KernelPrediction, OpPrediction, predict_kernel
from .sass import Function, read_cubin
from .workloads import Case, kernel_terms

_FUNCTIONS: dict[Path, Function] = {}


def function_of(cubin: Path, name: str) -> Function:
    """The parsed SASS of the kernel ``name`` in ``cubin`` (parsed once per process)."""
    if cubin not in _FUNCTIONS:
        _FUNCTIONS[cubin] = next(f for f in read_cubin(cubin) if f.name == name)
    return _FUNCTIONS[cubin]


def predict_launch(card: Card, launch: Launch, terms: tuple | None = None) -> KernelPrediction:
    """One launch: compiled as the JIT would (cached), its SASS read, the model applied."""
    compiled = compile_launch(launch)
    function = function_of(compiled.cubin, launch.name)
    trips, elements, bytes_read, bytes_written = terms or kernel_terms(launch)
    return predict_kernel(
        card,
        function,
        launch.name,
        launch.grid,
        compiled.num_warps,
        compiled.shared_bytes,
        trips,
        elements,
        bytes_read,
        bytes_written,
    )


def predict_case(card: Card, case: Case) -> OpPrediction:
    kernels = [predict_launch(card, launch) for launch in case.launches]
    design = sum(k.bytes_read + k.bytes_written for k in kernels)
    return OpPrediction(
        case.op,
        case.shape,
        case.dtype,
        case.variant,
        case.mode,
        "triton",
        kernels,
        design,
        case.minimal_bytes,
        card.launch_us,
        f"+{case.torch_launches} torch launch(es) in the launcher" if case.torch_launches else "",
        extra_launches=case.torch_launches,
    )


def record(card: Card, prediction: OpPrediction, headline: bool = False) -> dict:
    """A prediction as a JSON record (the benchmark's keys: suite, shape, dtype, mode, provider)."""
    return {
        "suite": prediction.op,
        "shape": prediction.shape,
        "dtype": prediction.dtype,
        "variant": prediction.variant,
        "mode": prediction.mode,
        "provider": f"masksub[{prediction.backend}]",
        "headline": headline,
        "predicted_us": round(prediction.predicted_us, 2),
        "design_bytes": prediction.design_bytes,
        "minimal_bytes": prediction.minimal_bytes,
        "percent_of_copy_design": round(100 * prediction.fraction_of_copy(card, "design"), 1),
        "percent_of_copy_minimal": round(100 * prediction.fraction_of_copy(card, "minimal"), 1),
        "bound": prediction.bound,
        "launches": len(prediction.kernels),
        "extra_launches": prediction.extra_launches,
        "note": prediction.note,
        "kernels": [
            {
                "kernel": k.kernel,
                "grid": list(k.grid),
                "warps": k.warps,
                "registers": k.registers,
                "shared_bytes": k.shared,
                "resident_blocks": k.occupancy.resident_blocks,
                "occupancy_limiter": k.occupancy.limiter,
                "waves": round(k.occupancy.waves, 2),
                "loop_instructions": k.loop_instructions,
                "instructions_per_element": None
                if k.instructions_per_element is None
                else round(k.instructions_per_element, 2),
                "access_bytes": k.access_widths,
                "loop_mix": k.loop_mix,
                "bytes_read": k.bytes_read,
                "bytes_written": k.bytes_written,
                "memory_us": round(k.t_memory_us, 2),
                "issue_us": round(k.t_issue_us, 2),
                "mufu_us": round(k.t_mufu_us, 2),
                "latency_us": round(k.t_latency_us, 2),
                "overlapped": k.overlapped,
                "kernel_us": round(k.t_kernel_us, 2),
            }
            for k in prediction.kernels
        ],
    }


def environment(card: Card) -> dict:
    return {
        "card": card.name,
        "arch": "sm_90a",
        "label": "PREDICTIONS of a static model (SASS + roofline), not measurements",
        "date": datetime.date.today().isoformat(),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "copy_tbps": card.copy_tbps,
        "issue_rate_warp_instr_per_s": card.issue_rate,
        "dram_latency_ns": card.dram_latency_ns,
        "launch_us": card.launch_us,
    }


def _fmt_kernel(k: dict) -> str:
    per_element = "-" if k["instructions_per_element"] is None else f"{k['instructions_per_element']:.2f}"
    return (
        f"{k['kernel'].strip('_')} {k['grid'][0]}x{k['grid'][1]}x{k['grid'][2]} w{k['warps']} r{k['registers']} "
        f"occ {k['resident_blocks']} ({k['occupancy_limiter']}) {per_element} i/el {k['access_bytes']}B"
    )


def markdown(run: dict) -> str:
    env = run["environment"]
    lines = [
        f"# Performance model: {env['label']}",
        "",
        f"Card {env['card']} ({env['arch']}) | copy {env['copy_tbps']} TB/s | "
        f"issue {env['issue_rate_warp_instr_per_s']:.3g} warp-instr/s | "
        f"DRAM latency {env['dram_latency_ns']:.0f} ns | launch {env['launch_us']} us | "
        f"triton {env['triton']} | torch {env['torch']} | {env['date']}",
        "",
        "% of copy: design = bytes the kernels move / predicted time / copy bandwidth; minimal = each input read "
        "once, each output written once. i/el = warp-instructions per element in the "
        "steady-state loop (memory-bound needs <= 0.24 x bytes per element on an H200). launches: the kernels' and "
        "the torch ops' around them (a zero fill) that launch one too.",
        "",
        "| suite | shape | dtype | variant | provider | mode | predicted us | % copy (design) | % copy (minimal) | "
        "bound | launches | kernels |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run["records"]:
        kernels = "; ".join(_fmt_kernel(k) for k in r["kernels"]) or r["note"]
        lines.append(
            f"| {r['suite']} | {r['shape']} | {r['dtype']} | {r['variant'] or '-'} | {r.get('provider', '-')} | "
            f"{r['mode']} | "
            f"{r['predicted_us']:.1f} | {r['percent_of_copy_design']:.1f} | {r['percent_of_copy_minimal']:.1f} | "
            f"{r['bound']} | {r['launches'] + r.get('extra_launches', 0)} | {kernels} |"
        )
    if isinstance(run.get("cuda_vs_triton"), list):
        from .csrc import markdown as csrc_markdown

        lines += csrc_markdown(run["cuda_vs_triton"])
    if run.get("calibration"):
        lines += ["", "Calibration (the model against figures measured by others):", ""]
        for check in run["calibration"]:
            lines.append(f"- {check['name']}: {check['summary']}")
    if run.get("linear_loss"):
        from .linear_loss import markdown as linear_loss_markdown

        lines += linear_loss_markdown(run["linear_loss"])
    return "\n".join(lines) + "\n"


def write(run: dict, directory: Path, stem: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{stem}.json", "md": directory / f"{stem}.md"}
    paths["json"].write_text(json.dumps(run, indent=1) + "\n")
    paths["md"].write_text(markdown(run))
    return paths
