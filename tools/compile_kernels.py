"""Compile every Triton kernel of the package for GPUs that are not there (sm_80, sm_90a by default).

The CPU interpreter proves arithmetic and indexing but not that a kernel lowers to PTX: this check catches what only
the real compiler sees (types it refuses, PTX that ptxas rejects, shared memory over the card's limit: Triton compiles
such a kernel and refuses it only at its first launch, as OutOfResources). It also reports each kernel's registers
and stack frame (spilled registers), and lists the kernels that spill. tools/kernel_specs.py lists the kernels of
each op as (name, kernel, signature, constexprs, options); this tool compiles each for each target.

    python -m tools.compile_kernels [--arch 80 90] [--json out.json]     # from a checkout

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
    source = triton.compiler.ASTSource(fn=kernel, signature=full_signature, constexprs=constexprs)
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
    registers, stack = _registers_and_stack(compiled.asm["cubin"], compiled.metadata.name)
    return {
        "seconds": round(seconds, 3),
        "shared_bytes": shared,
        "registers": registers,
        "stack_bytes": stack,
        "num_warps": int(getattr(metadata, "num_warps", 0)),
        "ptx_bytes": len(compiled.asm.get("ptx", "")),
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
    }


def _registers_and_stack(cubin: bytes, kernel: str) -> tuple[int, int]:
    """(registers per thread, stack frame bytes per thread) of the cubin's entry ``kernel``, as cuobjdump reads them
    (Triton's wheel ships it). These kernels make no ABI calls (no printf, no noinline functions; ptxas's own
    helpers, such as 64-bit division, use no stack), so a stack frame is registers spilled to local memory: a
    speed cost, reported, not failed (tools/check_spills.py fails csrc's spills; some Triton kernels spill today)."""
    from .perf_model.sass import read_resources

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        resources = read_resources(path)
    if kernel not in resources:
        raise RuntimeError(f"cuobjdump -res-usage did not list {kernel} (it listed {sorted(resources)})")
    registers, stack, _, _ = resources[kernel]
    return registers, stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT),
        help="compute capabilities (default 80 90)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(
            "compile_kernels: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)",
            file=sys.stderr,
        )
        return 2
    from .kernel_specs import kernel_specs  # imports the ops: only once TRITON_INTERPRET is known to be unset

    results, failures = [], 0
    for name, kernel, signature, constexprs, options in kernel_specs():
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
                f" stack={info['stack_bytes']}B"
            )
            print(f"{status:6} sm_{arch} {name}: {detail}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print(f"compiled {len(results) - failures} of {len(results)} kernel/arch pairs")
    spilling = [f"{r['arch']} {r['kernel']} ({r['stack_bytes']} B)" for r in results if r.get("stack_bytes")]
    if spilling:
        print(f"{len(spilling)} kernel/arch pairs spill registers to the stack (bytes per thread):")
        print("  " + "\n  ".join(spilling))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
