"""Register spills of the Triton kernels, measured from their cubins and held to a committed baseline.

A Triton kernel makes no ABI calls (no printf, no noinline functions; ptxas's own helpers, such as 64-bit division,
use no stack), so its stack frame is registers spilled to local memory. Where the spill code sits decides its cost:
in an innermost loop (a matmul's or a row's streaming loop) it runs on every trip; in an outer loop (a class tile's
loss code) once per tile; outside loops once per program. Three figures per kernel and arch, from cuobjdump (which
Triton's wheel ships), the counts static (an instruction counted once however often it runs):

    stack_bytes             the stack frame per thread
    spills_in_inner_loops   local loads / stores (LDL, STL) in innermost loops, summed over them
    spills_in_loops         local loads / stores in any loop

tools/spill_baseline.json holds them for the pairs that spill; `python -m tools.compile_kernels` fails where a pair
exceeds its entry (a pair not listed: 0), for the Triton version and arches the baseline was made with (another
version allocates registers differently: reported, not compared). `--update-spill-baseline` rewrites it from a full
run, refusing to raise any figure of the same Triton version unless `--allow-more-spills` is given (as
tools/perf_model/floors.py never lowers a floor unless asked); a baseline for a new Triton version starts afresh.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

BASELINE = Path(__file__).resolve().parent / "spill_baseline.json"
FIELDS = ("stack_bytes", "spills_in_inner_loops", "spills_in_loops")
SPILL_CODE = ("LDL", "STL")


def measure(cubin: bytes, kernel: str) -> dict[str, int]:
    """registers and the three FIELDS of the cubin's entry ``kernel``. Fails (RuntimeError) where the SASS's loops
    cannot be told by their address intervals (tools/perf_model/sass.py, loop_layout_problems): a miscount would
    pass the ratchet silently."""
    from .perf_model.sass import loop_layout_problems, read_cubin, read_resources

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        resources = read_resources(path)
        if kernel not in resources:
            raise RuntimeError(f"cuobjdump -res-usage did not list {kernel} (it listed {sorted(resources)})")
        registers, stack = resources[kernel][:2]
        if not stack:
            return {"registers": registers, **dict.fromkeys(FIELDS, 0)}
        function = next((f for f in read_cubin(path) if f.name == kernel), None)
    if function is None:
        raise RuntimeError(f"cuobjdump -sass did not list {kernel}")
    problems = loop_layout_problems(function)
    if problems:
        raise RuntimeError(f"{kernel}: its loops cannot be told apart by address: {'; '.join(problems)}")
    in_any = {i.address for loop in function.loops for i in loop.instructions if i.family in SPILL_CODE}
    in_inner = sum(i.family in SPILL_CODE for loop in function.loops if loop.innermost for i in loop.instructions)
    spills = {"stack_bytes": stack, "spills_in_inner_loops": in_inner, "spills_in_loops": len(in_any)}
    return {"registers": registers, **spills}


def pair(record: dict) -> str:
    return f"{record['arch']} {record['kernel']}"


def _spilling(results: list[dict]) -> dict[str, dict[str, int]]:
    return {pair(r): {f: r[f] for f in FIELDS} for r in results if r["status"] == "ok" and r["stack_bytes"]}


def update(results: list[dict], arches: list[int], allow_more: bool, path: Path = BASELINE) -> list[str]:
    """Write the baseline from a full run; returns the figures it refused to raise (then it writes nothing)."""
    import triton

    pairs = _spilling(results)
    refused = []
    if path.exists() and not allow_more:
        old = json.loads(path.read_text())
        if old["triton"] == triton.__version__:
            for name, figures in pairs.items():
                allowed = old["pairs"].get(name, dict.fromkeys(FIELDS, 0))
                refused += [f"{name}: {f} {figures[f]} > {allowed[f]}" for f in FIELDS if figures[f] > allowed[f]]
    if refused:
        return refused
    note = (
        "The Triton kernels' register spills (tools/spill_ratchet.py: what each figure counts); every kernel/arch"
        " pair not listed spills nothing. `python -m tools.compile_kernels` fails where a pair exceeds these."
    )
    baseline = {
        "triton": triton.__version__,
        "arches": sorted(arches),
        "note": note,
        "pairs": dict(sorted(pairs.items())),
    }
    path.write_text(json.dumps(baseline, indent=1) + "\n")
    return []


def compare(results: list[dict], complete: bool, path: Path = BASELINE) -> tuple[list[str], list[str]]:
    """(failures, notes): a failure per figure over the baseline; notes for what is not compared (another Triton
    version, an arch the baseline lacks), for pairs now spilling less (the baseline can be tightened) and, after a
    run of every spec (``complete``), for baseline pairs of the arches compiled that no spec compiled any more."""
    import triton

    if not path.exists():
        return [f"no baseline at {path}: run with --update-spill-baseline"], []
    baseline = json.loads(path.read_text())
    if baseline["triton"] != triton.__version__:
        return [], [f"spill baseline made with Triton {baseline['triton']}, this is {triton.__version__}: not compared"]
    arches = {f"sm_{a}" for a in baseline["arches"]}
    compared = [r for r in results if r["status"] == "ok" and r["arch"] in arches]
    failures, better = [], []
    for record in compared:
        allowed = baseline["pairs"].get(pair(record), dict.fromkeys(FIELDS, 0))
        over = [
            f"{pair(record)}: {f} {record[f]} > {allowed[f]} in the baseline" for f in FIELDS if record[f] > allowed[f]
        ]
        failures += over
        if not over and any(record[f] < allowed[f] for f in FIELDS):
            better.append(pair(record))
    notes = [f"{a}: not in the spill baseline (arches {baseline['arches']}), not compared" for a in
             sorted({r["arch"] for r in results} - arches)]  # fmt: skip
    if better:
        notes.append(f"spilling less than the baseline (--update-spill-baseline tightens it): {', '.join(better)}")
    compiled = {r["arch"] for r in results}
    stale = sorted(p for p in set(baseline["pairs"]) - {pair(r) for r in results} if p.split()[0] in compiled)
    if complete and stale:
        notes.append(f"in the baseline but not compiled (--update-spill-baseline drops them): {', '.join(stale)}")
    return failures, notes
