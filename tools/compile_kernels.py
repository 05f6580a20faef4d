"""Compile every Triton kernel of the package for GPUs that are not there (sm_80, sm_90a by default).

The CPU interpreter proves arithmetic and indexing but not that a kernel lowers to PTX: this check catches what only
the real compiler sees (types it refuses, PTX that ptxas rejects, shared memory over the card's limit: Triton compiles
such a kernel and refuses it only at its first launch, as OutOfResources). It also reports each kernel's registers,
stack frame (spilled registers) and the spill code in its innermost loops, lists the kernels that spill, and fails
where a kernel spills more than tools/spill_baseline.json allows (a ratchet, as tools/perf_floors.json is for the
performance model). tools/kernel_specs.py lists the kernels of each op as (name, kernel, signature, constexprs,
options); this tool compiles each for each target.

    python -m tools.compile_kernels [--arch 80 90] [--json out.json] [--only TEXT]   # from a checkout
    python -m tools.compile_kernels --update-spill-baseline     # after a change whose spills are worth it

Runs in a process without TRITON_INTERPRET (under the interpreter kernels are not compilable objects).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The most shared memory one block may opt into, in bytes, by compute capability (CUDA C Programming Guide,
# "Technical Specifications per Compute Capability"): what Triton compares a kernel's with before its first launch.
# sm_80 is held to the least limit of the 8.x family, sm_86 / sm_89's 99 KiB (RTX 30x0 / 40x0, A10, L4, L40): the JIT
# compiles the same kernels there, and Triton lowers 8.x alike (the largest kernels' shared memory was the same for
# sm_80, sm_86 and sm_89 on 2026-12-02), so one sm_80 compile stands for the family.
SHARED_LIMIT = {80: 101376, 86: 101376, 89: 101376, 90: 232448}


def compile_one(kernel, signature: dict, constexprs: dict, options: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    full_signature = dict(signature)
    for name in constexprs:
        full_signature[name] = "constexpr"
    options = dict(options)
    hinted = options.pop("divisible_by_16", ())  # the JIT's hints for pointers / integers divisible by 16
    index = {name: i for i, name in enumerate(kernel.arg_names)}
    attrs = {(index[name],): [["tt.divisibility", 16]] for name in hinted}
    source = triton.compiler.ASTSource(fn=kernel, signature=full_signature, constexprs=constexprs, attrs=attrs)
    start = time.perf_counter()
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    metadata = compiled.metadata
    shared = int(getattr(metadata, "shared", 0))
    if shared > SHARED_LIMIT[arch]:
        held = " (sm_86 / sm_89's limit; sm_80 itself allows 166912)" if arch == 80 else ""
        raise ValueError(
            f"needs {shared} bytes of shared memory; the sm_{arch} compile allows {SHARED_LIMIT[arch]}{held}"
        )
    seconds = time.perf_counter() - start
    registers, stack, in_loops = _registers_and_spills(compiled.asm["cubin"], compiled.metadata.name)
    return {
        "seconds": round(seconds, 3),
        "shared_bytes": shared,
        "registers": registers,
        "stack_bytes": stack,
        "spills_in_inner_loops": in_loops,
        "num_warps": int(getattr(metadata, "num_warps", 0)),
        "ptx_bytes": len(compiled.asm.get("ptx", "")),
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
    }


def _registers_and_spills(cubin: bytes, kernel: str) -> tuple[int, int, int]:
    """(registers per thread, stack frame bytes per thread, local loads / stores in innermost loops) of the cubin's
    entry ``kernel``, as cuobjdump reads them (Triton's wheel ships it). These kernels make no ABI calls (no printf,
    no noinline functions; ptxas's own helpers, such as 64-bit division, use no stack), so a stack frame is registers
    spilled to local memory. Where the spill code sits decides its cost: in an innermost loop (a matmul's or a row's
    streaming loop) it runs on every trip; elsewhere (set-up, a tile's epilogue, the stores) once per tile or per
    program. Reported and compared with tools/spill_baseline.json by main()."""
    from .perf_model.sass import read_cubin, read_resources

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        resources = read_resources(path)
        if kernel not in resources:
            raise RuntimeError(f"cuobjdump -res-usage did not list {kernel} (it listed {sorted(resources)})")
        registers, stack, _, _ = resources[kernel]
        if not stack:
            return registers, 0, 0
        function = next(f for f in read_cubin(path) if f.name == kernel)
    innermost = [loop for loop in function.loops if len(loop.own) == len(loop.instructions)]
    in_loops = sum(i.family in ("LDL", "STL") for loop in innermost for i in loop.instructions)
    return registers, stack, in_loops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT),
        help="compute capabilities (default 80 90)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--only", help="compile the specs whose name contains this text (e.g. linear_masksub_loss)")
    parser.add_argument(
        "--update-spill-baseline", action="store_true",
        help=f"write this run's spills to {SPILL_BASELINE.relative_to(SPILL_BASELINE.parents[1])} (Triton's version"
        " with them) instead of comparing with it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.only and args.update_spill_baseline:
        parser.error("--update-spill-baseline needs every spec compiled (not --only)")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(
            "compile_kernels: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)",
            file=sys.stderr,
        )
        return 2
    from .kernel_specs import kernel_specs  # imports the ops: only once TRITON_INTERPRET is known to be unset

    results, failures = [], 0
    for name, kernel, signature, constexprs, options in kernel_specs():
        if args.only and args.only not in name:
            continue
        for arch in args.arch:
            try:
                info = compile_one(kernel, signature, constexprs, options, arch)
                status = "ok"
            except Exception as exc:  # report every failing kernel, not just the first
                info, status = {"error": f"{type(exc).__name__}: {exc}"}, "FAILED"
                failures += 1
            results.append({"kernel": name, "arch": f"sm_{arch}", "status": status, **info})
            detail = info.get("error") or (
                f"{info['seconds']:.2f}s shared={info['shared_bytes']}B registers={info['registers']}"
                f" stack={info['stack_bytes']}B spills_in_inner_loops={info['spills_in_inner_loops']}"
            )
            print(f"{status:6} sm_{arch} {name}: {detail}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print(f"compiled {len(results) - failures} of {len(results)} kernel/arch pairs")
    spilling = [r for r in results if r.get("stack_bytes")]
    if spilling:
        print(
            f"{len(spilling)} kernel/arch pairs spill registers to the stack (bytes per thread; local loads and stores"
            " in innermost loops):"
        )
        print("  " + "\n  ".join(f"{_pair(r)} ({r['stack_bytes']} B; {r['spills_in_inner_loops']})" for r in spilling))
    if args.update_spill_baseline:
        if failures:
            print("spill baseline not written: some kernels failed to compile", file=sys.stderr)
            return 1
        write_spill_baseline(results)
        print(f"wrote {SPILL_BASELINE}")
        return 0
    regressions = compare_spills(results)
    for message in regressions:
        print(f"SPILLS {message}")
    return 1 if failures or regressions else 0


# ----------------------------------------------------------------------------------------------------------------
# The spill ratchet: each kernel/arch pair's stack frame and innermost-loop spill code may not grow past the
# committed baseline (a pair absent from it: past 0). A baseline holds for the Triton version that made it: another
# version allocates registers differently, so its spills are reported, not compared.
# ----------------------------------------------------------------------------------------------------------------

SPILL_BASELINE = Path(__file__).resolve().parent / "spill_baseline.json"


def _pair(record: dict) -> str:
    return f"{record['arch']} {record['kernel']}"


def write_spill_baseline(results: list[dict], path: Path = SPILL_BASELINE) -> None:
    import triton

    pairs = {
        _pair(r): {"stack_bytes": r["stack_bytes"], "spills_in_inner_loops": r["spills_in_inner_loops"]}
        for r in results
        if r.get("stack_bytes")
    }
    note = (
        "Register spills of the Triton kernels that spill (every other kernel/arch pair: none), as"
        " `python -m tools.compile_kernels` measured them; it fails where a pair's stack frame or its local loads /"
        " stores in innermost loops exceed these. Rewrite with --update-spill-baseline after a change that is worth it."
    )
    text = json.dumps({"triton": triton.__version__, "note": note, "pairs": dict(sorted(pairs.items()))}, indent=1)
    path.write_text(text + "\n")


def compare_spills(results: list[dict], path: Path = SPILL_BASELINE) -> list[str]:
    """One message per compiled pair whose spills exceed the baseline's (none where the baseline is of another
    Triton version: then a note says so)."""
    import triton

    if not path.exists():
        return [f"no baseline at {path}: run with --update-spill-baseline"]
    baseline = json.loads(path.read_text())
    if baseline["triton"] != triton.__version__:
        print(f"spill baseline made with Triton {baseline['triton']}, this is {triton.__version__}: not compared")
        return []
    messages = []
    for record in results:
        if record["status"] != "ok":
            continue
        allowed = baseline["pairs"].get(_pair(record), {"stack_bytes": 0, "spills_in_inner_loops": 0})
        for field in ("stack_bytes", "spills_in_inner_loops"):
            if record[field] > allowed[field]:
                messages.append(f"{_pair(record)}: {field} {record[field]} > {allowed[field]} in the baseline")
    return messages


if __name__ == "__main__":
    raise SystemExit(main())
