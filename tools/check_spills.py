"""Compile every CUDA source of csrc/ with ``nvcc -Xptxas -v`` and fail on register spills.

A spill moves a kernel's registers to local memory (off-chip): slow, and invisible until profiled. ptxas reports it
per function at compile time, without a GPU:

    ptxas info    : Compiling entry function '_Z...' for 'sm_90a'
    ptxas info    : Function properties for _Z...
        0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 40 registers, used 1 barriers, 5312 bytes smem

This tool compiles each csrc/*.cu on its own, device code only (torch-free sources: 10-50 s each per arch, as many
at once as there are cores), prints one row per function and architecture, and exits 1 if any function spills (2
if nvcc is missing or a compilation fails).

``--built`` reads the extension that setup.py built instead (masksub_kernels._C, or the library named; a second):
each function of each of its cubins (sm_80 and sm_90a by default), as ``cuobjdump -res-usage`` lists it (Triton's
wheel ships cuobjdump: no toolkit needed). A spill is a store to the function's stack frame, so a function without
one (``STACK:0``) spills nothing; one with a frame fails the check unread (spills or a local array, which cuobjdump
does not tell apart: the compiling mode's ptxas account says which). The very binary the package loads, with
setup.py's flags: what CI checks, where the extension is built anyway (the compiling mode took 83 s there).

    python -m tools.check_spills [--arch 90a,80] [--json out.json] [file.cu ...]
    python -m tools.check_spills --built [path/to/_C.so] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cuda_home import find_cuda_home

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# As the extension is built: setup.py's flags, plus those torch's BuildExtension adds (no implicit half conversions).
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(text: str, source: str) -> list[dict]:
    """One record per function of ptxas' verbose output: registers, shared memory, stack, spill stores/loads."""
    records: dict[tuple[str, str], dict] = {}
    current: dict | None = None
    arch = ""
    for line in text.splitlines():
        if match := _ENTRY.search(line):
            arch = match.group(2)
            current = records.setdefault((match.group(1), arch), _record(source, match.group(1), arch, "kernel"))
        elif match := _PROPERTIES.search(line):
            # device functions that were not inlined get their own properties (and can spill too)
            key = (match.group(1), arch)
            current = records.setdefault(key, _record(source, match.group(1), arch, "function"))
        elif (match := _SPILLS.search(line)) and current is not None:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, match.groups())
        elif (match := _USAGE.search(line)) and current is not None:
            current["registers"] = int(match.group(1))
            current["smem"] = int(match.group(2) or 0)
    return list(records.values())


def _record(source: str, symbol: str, arch: str, kind: str) -> dict:
    return {
        "source": source,
        "symbol": symbol,
        "name": symbol,
        "kind": kind,
        "arch": arch,
        "registers": None,
        "smem": 0,
        "stack": 0,
        "spill_stores": 0,
        "spill_loads": 0,
    }


def demangle(records: list[dict], cuda_home: Path | None) -> None:
    """Readable names, shortened: namespaces dropped, parameter lists elided. nvcc mangles as the Itanium C++ ABI,
    so the toolkit's cu++filt or binutils' c++filt both demangle; without either the mangled names stay."""
    candidates = [cuda_home / "bin" / "cu++filt" if cuda_home else None, shutil.which("c++filt")]
    tool = next((Path(c) for c in candidates if c and Path(c).exists()), None)
    symbols = [record["symbol"] for record in records]
    if not symbols or tool is None:
        return
    result = subprocess.run([str(tool)], input="\n".join(symbols), capture_output=True, text=True)
    names = result.stdout.splitlines()
    if result.returncode != 0 or len(names) != len(symbols):
        return
    for record, name in zip(records, names):
        name = re.sub(r"masksub::|\(anonymous namespace\)::|void ", "", name)
        record["name"] = re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", name)  # drop the parameter list


def compile_source(source: Path, arch: str, nvcc: Path, workdir: Path) -> tuple[list[dict], str | None]:
    command = [
        str(nvcc),
        "-cubin",  # the device code only: ptxas reports the same, without the host compilation (~40% of the time)
        f"-arch=sm_{arch}",
        "-Xptxas",
        "-v",
        *NVCC_FLAGS,
        f"-I{CSRC}",
        str(source),
        "-o",
        str(workdir / f"{source.stem}.sm_{arch}.cubin"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return [], f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return parse_ptxas(result.stdout + result.stderr, source.name), None


# cuobjdump -res-usage: a cubin's "arch = sm_80" and "identifier = .../csrc/x.cu", then per function its
# " Function <symbol>:" line and "  REG:40 STACK:0 SHARED:2048 LOCAL:0 ..." below it
_CUBIN = re.compile(
    r"^arch = (sm_\w+)\s*$|^identifier = (.+?)\s*$|^\s*Function (\S+):\s*$"
    r"|^\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)"
)


def parse_resource_usage(text: str) -> list[dict]:
    """One record per function and arch of ``cuobjdump -res-usage``'s listing of a library's cubins: registers,
    static shared memory, stack frame, local memory; spill stores / loads 0 where there is neither stack frame nor
    local memory, else None (not told by cuobjdump). A function listed twice for a source and arch counts once."""
    records: dict[tuple[str, str, str], dict] = {}
    arch, source, symbol = "", "", None
    for line in text.splitlines():
        match = _CUBIN.match(line)
        if match is None:
            continue
        if match[1]:
            arch, source = match[1], ""
        elif match[2]:
            source = Path(match[2]).name
        elif match[3]:
            symbol = match[3]
        elif symbol is not None:
            record = _record(source, symbol, arch, "function")
            record["registers"], record["stack"], record["smem"] = int(match[4]), int(match[5]), int(match[6])
            record["local"] = int(match[7])
            if record["stack"] or record["local"]:
                record["spill_stores"] = record["spill_loads"] = None
            records.setdefault((source, symbol, arch), record)
            symbol = None
    return list(records.values())


def built_extension() -> Path | None:
    """The file of the package's CUDA extension (masksub_kernels._C), or None where it is not built."""
    import importlib.util

    spec = importlib.util.find_spec("masksub_kernels._C")
    return Path(spec.origin) if spec is not None and spec.origin else None


def _package_extension_stale() -> str | None:
    from masksub_kernels import _backend

    return _backend._compiled_extension_missing()  # (why it does not import, or is stale; None: current)


def read_built(library: Path) -> list[dict]:
    from .perf_model.sass import _tool

    return parse_resource_usage(_tool("cuobjdump", "-res-usage", str(library)))


def format_table(records: list[dict]) -> str:
    header = ("source", "arch", "function", "regs", "smem B", "stack B", "spill st B", "spill ld B")
    rows = [
        (
            r["source"],
            r["arch"],
            r["name"],
            "-" if r["registers"] is None else str(r["registers"]),
            str(r["smem"]),
            str(r["stack"]),
            "?" if r["spill_stores"] is None else str(r["spill_stores"]),
            "?" if r["spill_loads"] is None else str(r["spill_loads"]),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="comma-separated targets as in sm_<arch> (default: 90a)")
    parser.add_argument("--json", help="write the per-function records to this file")
    parser.add_argument(
        "--built", nargs="?", const="", metavar="LIBRARY", type=str,
        help="read the built extension's cubins (default: masksub_kernels._C's file) instead of compiling",
    )  # fmt: skip
    parser.add_argument("sources", nargs="*", type=Path, help="the .cu files (default: every csrc/*.cu)")
    args = parser.parse_args(argv)
    if args.built is not None and (args.arch or args.sources):
        parser.error("--built reads the arches and sources the extension was built with: no --arch, no sources")
    cuda_home = find_cuda_home()
    if args.built is not None:
        library = Path(args.built) if args.built else built_extension()
        if library is None or not library.is_file():
            print(f"check_spills: no built extension at {library or 'masksub_kernels._C'}", file=sys.stderr)
            return 2
        stale = None if args.built else _package_extension_stale()
        if stale is not None:  # built from other sources than csrc/'s: its cubins are not theirs
            print(f"check_spills: {stale}", file=sys.stderr)
            return 2
        try:
            records, failures, what = read_built(library), [], library.name
        except subprocess.CalledProcessError as exc:
            print(f"check_spills: cuobjdump cannot read {library}: {exc.stderr.strip()}", file=sys.stderr)
            return 2
        if not records:
            print(f"check_spills: cuobjdump lists no CUDA function in {library}", file=sys.stderr)
            return 2
    else:
        if cuda_home is None:
            print("check_spills: no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
            return 2
        records, failures, what = compiled(args.sources, (args.arch or "90a").split(","), cuda_home)
        if what is None:
            print(f"check_spills: no .cu sources in {CSRC}", file=sys.stderr)
            return 2
    demangle(records, cuda_home)
    records.sort(key=lambda r: (r["source"], r["arch"], r["name"]))
    print(format_table(records))

    spilling = [r for r in records if r["spill_stores"] != 0 or r["spill_loads"] != 0]  # (None: not told)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    for error in failures:
        print(f"check_spills: compilation failed:\n{error}", file=sys.stderr)
    for record in spilling:
        if record["spill_stores"] is None:
            said = (
                f"has a {record['stack']} B stack frame, {record.get('local', 0)} B of local memory (spills or a "
                f"local array: python -m tools.check_spills csrc/{record['source']} gives ptxas' account)"
            )
        else:
            said = f"spills {record['spill_stores']} B stored / {record['spill_loads']} B loaded"
        print(f"check_spills: {record['source']} {record['arch']} {record['name']} {said}", file=sys.stderr)
    print(f"{len(records)} functions from {what}: {len(spilling)} spilling, {len(failures)} failed compilations")
    if failures:
        return 2
    return 1 if spilling else 0


def compiled(sources: list[Path], archs: list[str], cuda_home: Path) -> tuple[list[dict], list[str], str | None]:
    """The records of ``sources`` (default: every csrc/*.cu) compiled for ``archs``, the failed compilations, and
    what was compiled (None: no sources)."""
    archs = [arch.strip() for arch in archs if arch.strip()]
    sources = sources or sorted(CSRC.glob("*.cu"))
    if not sources:
        return [], [], None
    records, failures = [], []
    nvcc = cuda_home / "bin" / "nvcc"
    with tempfile.TemporaryDirectory(prefix="masksub-spills-") as workdir:
        # one nvcc per (source, arch), as many at once as there are cores (each is one process, mostly cicc)
        jobs = [(Path(source), arch) for source in sources for arch in archs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = pool.map(lambda job: compile_source(*job, nvcc, Path(workdir)), jobs)
            for found, error in results:
                if error:
                    failures.append(error)
                records += found
    return records, failures, f"{len(sources)} sources x {len(archs)} arch"


if __name__ == "__main__":
    sys.exit(main())
