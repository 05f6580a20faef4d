"""Compile every Triton kernel of the package for GPUs that are not there (sm_80, sm_90a by default).

The CPU interpreter proves arithmetic and indexing but not that a kernel lowers to PTX: this check catches what only
the real compiler sees (types it refuses, PTX that ptxas rejects, shared memory over the card's limit: Triton compiles
such a kernel and refuses it only at its first launch, as OutOfResources). It also reports each kernel's registers
and register spills (where the spill code sits: tools/spill_ratchet.py), lists the kernels that spill, and fails
where a kernel spills more than tools/spill_baseline.json allows (a ratchet, as tools/perf_floors.json is for the
performance model). tools/kernel_specs.py lists the kernels of each op as (name, kernel, signature, constexprs,
options); this tool compiles each for each target.

    python -m tools.compile_kernels [--arch 80 90] [--json out.json] [--only TEXT]   # from a checkout
    python -m tools.compile_kernels --update-spill-baseline [--allow-more-spills]   # a full run rewrites it

Runs in a process without TRITON_INTERPRET (under the interpreter kernels are not compilable objects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import spill_ratchet

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
    return {
        "seconds": round(seconds, 3),
        "shared_bytes": shared,
        **spill_ratchet.measure(compiled.asm["cubin"], compiled.metadata.name),
        "num_warps": int(getattr(metadata, "num_warps", 0)),
        "ptx_bytes": len(compiled.asm.get("ptx", "")),
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
    }


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
        help="write this run's spills to tools/spill_baseline.json instead of comparing with it (a full run)",
    )  # fmt: skip
    parser.add_argument("--allow-more-spills", action="store_true", help="let the update raise a pair's figures")
    args = parser.parse_args(argv)
    if args.update_spill_baseline and (args.only or sorted(args.arch) != [80, 90]):
        parser.error("--update-spill-baseline needs every spec compiled for the default arches (no --only, --arch)")
    if args.allow_more_spills and not args.update_spill_baseline:
        parser.error("--allow-more-spills goes with --update-spill-baseline")
    from masksub_kernels._backend import triton_interpreted  # (the package imported: its kernels compile below)

    if triton_interpreted():  # Triton's own reading of it (false / off / 2: off)
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
                + "".join(f" {f}={info[f]}" for f in spill_ratchet.FIELDS)
            )
            print(f"{status:6} sm_{arch} {name}: {detail}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print(f"compiled {len(results) - failures} of {len(results)} kernel/arch pairs")
    spilling = [r for r in results if r.get("stack_bytes")]
    if spilling:
        print(f"{len(spilling)} kernel/arch pairs spill registers to the stack ({', '.join(spill_ratchet.FIELDS)}):")
        print("  " + "\n  ".join(f"{spill_ratchet.pair(r)} {[r[f] for f in spill_ratchet.FIELDS]}" for r in spilling))
    if args.update_spill_baseline:
        refused = ["some kernels failed to compile"] if failures else []
        refused = refused or spill_ratchet.update(results, args.arch, args.allow_more_spills)
        for message in refused:
            print(f"spill baseline not written: {message}", file=sys.stderr)
        if not refused:
            print(f"wrote {spill_ratchet.BASELINE}")
        return 1 if refused else 0
    regressions, notes = spill_ratchet.compare(results, complete=not args.only)
    for message in notes:
        print(f"note: {message}")
    for message in regressions:
        print(f"SPILLS {message}")
    return 1 if failures or regressions else 0


if __name__ == "__main__":
    raise SystemExit(main())
