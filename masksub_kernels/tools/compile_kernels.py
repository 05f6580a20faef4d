"""Compile every Triton kernel of the package for GPUs that are not there (sm_80, sm_90a by default).

The CPU interpreter proves arithmetic and indexing but not that a kernel lowers to PTX: this check catches what only
the real compiler sees (types it refuses, shared memory over the limit, register spills). Each op module lists its
kernels in ``KERNEL_SPECS`` as (name, kernel, signature, constexprs, options); this tool compiles each for each target.

    python -m masksub_kernels.tools.compile_kernels [--arch 80 90] [--json out.json]

Runs in a process without TRITON_INTERPRET (under the interpreter kernels are not compilable objects).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

OP_MODULES = (
    "masksub_kernels.ops.token_select",
    "masksub_kernels.ops.grid_mask",
    "masksub_kernels.ops.token_grid_mask",
    "masksub_kernels.ops.masksub_loss",
    "masksub_kernels.ops.linear_masksub_loss",
)


def kernel_specs():
    for module_name in OP_MODULES:
        module = importlib.import_module(module_name)
        for name, kernel, signature, constexprs, options in module.KERNEL_SPECS:
            yield f"{module_name.rsplit('.', 1)[1]}.{name}", kernel, signature, constexprs, options


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
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "shared_bytes": int(getattr(metadata, "shared", 0)),
        "num_warps": int(getattr(metadata, "num_warps", 0)),
        "ptx_bytes": len(compiled.asm.get("ptx", "")),
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(
            "compile_kernels: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)",
            file=sys.stderr,
        )
        return 2
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
            detail = info.get("error") or f"{info['seconds']:.2f}s shared={info['shared_bytes']}B"
            print(f"{status:6} sm_{arch} {name}: {detail}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print(f"compiled {len(results) - failures} of {len(results)} kernel/arch pairs")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
