"""Run the CUDA extension's own sources (csrc/) on the CPU: the ``cuda`` backend without a GPU.

The kernels of csrc/ are compiled by the host C++ compiler with csrc/emulator/emulator.h force-included (threads
as fibers, ``__syncthreads`` as a barrier, warp shuffles, cub's block sort and scan from their contracts; the
header says what is and is not modelled) and csrc/emulator/ first on the include path (its masksub_platform.h: CPU
tensors stand for CUDA ones), together with the bindings (csrc/bindings*.cpp), into a torch extension that takes CPU
tensors.
:func:`install` makes it the ``cuda`` backend for CPU tensors in this process, so the tests that compare every
backend with the reference run the CUDA sources' arithmetic, indexing, launch configurations, streams and barriers
on a machine without a GPU. It is a test instrument, slow by design (one fiber per CUDA
thread), and never chosen by ``auto``.

    python -m tools.cuda_emulator          # from a checkout: build it (about a minute) and run a smoke check

No file of csrc/ has a branch for the emulator (tests/test_csrc_sources.py says so); the only source changes are
syntactic, in copies of the files under the build folder: ``kernel<<<grid, block, smem, stream>>>(args)`` becomes
``::masksub_emu::launch(kernel, grid, block, smem, stream)(args)``, and a kernel defined with
``__launch_bounds__(n)`` checks its block's size against n first (rewrite_launch_bounds).
Needs the CUDA toolkit's headers (cuda_fp16.h, cuda_bf16.h, cuda_runtime.h for types), not its compiler or runtime.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from masksub_kernels._sources import sources_digest

from . import check_spills
from .cuda_home import find_cuda_home

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
EMULATOR = CSRC / "emulator"
MODULE_NAME = "masksub_kernels_cuda_emulator"
DEFAULT_BUILD_DIR = REPO / "build" / MODULE_NAME

# `name<targs><<<config>>>`: a kernel (optionally with template arguments, which hold no <> or parentheses in
# csrc/) and its launch configuration, up to the first `>>>`.
_LAUNCH = re.compile(r"\b([A-Za-z_]\w*(?:\s*<[^<>;()]*>)?)\s*<<<(.*?)>>>", re.DOTALL)


EMULATED_LAUNCH = "::masksub_emu::launch({kernel}, {config})"


def rewrite_launches(source: str, call: str = EMULATED_LAUNCH) -> str:
    """``k<<<cfg>>>(args)`` -> ``::masksub_emu::launch(k, cfg)(args)``; anything else unchanged. ``call`` is the
    replacement's pattern: tools/perf_model's launch recorder passes the kernel as a template argument instead,
    ``::masksub_record::launch<{kernel}>({config})``, to learn which instantiation each launch runs."""
    return _LAUNCH.sub(lambda m: call.format(kernel=m.group(1), config=m.group(2)), source)


_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\(")
EMULATED_BOUNDS_CHECK = " ::masksub_emu::check_launch_bounds({bounds});"


# comments and string / character literals (escapes included): blanked out before rewrite_launch_bounds searches
_NOT_CODE = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.DOTALL)


def _code_only(source: str) -> str:
    """``source`` with its comments and literals replaced by spaces (newlines kept): the same offsets, no text
    that a search for code could mistake for code."""
    return _NOT_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), source)


def _closing(code: str, opening: int) -> int:
    """The index of the parenthesis that closes the one at ``opening``."""
    depth = 0
    for index in range(opening, len(code)):
        depth += {"(": 1, ")": -1}.get(code[index], 0)
        if depth == 0:
            return index
    raise ValueError(f"unbalanced parentheses from offset {opening}")


def _body_start(code: str, after: int) -> int | None:
    """The offset of the '{' that opens a function's body, from just after its parameter list (skipping qualifiers
    and attributes such as ``__attribute__((noinline))``), or None for a declaration."""
    index = after
    while index < len(code):
        if code[index].isspace():
            index += 1
        elif code[index] == "{":
            return index
        elif code[index] == "(":
            index = _closing(code, index) + 1
        elif code[index].isalnum() or code[index] == "_":
            index += 1
        else:  # ';' (a declaration), '=' ... : no body here
            return None
    return None


def rewrite_launch_bounds(source: str) -> str:
    """Each kernel defined with ``__launch_bounds__(max_threads[, min_blocks[, max_blocks_per_cluster]])`` gets, as
    the first statement of its body, ``::masksub_emu::check_launch_bounds(<the same arguments>);``: a GPU refuses a
    launch of more threads per block than the bound ("too many resources requested for launch"), and the emulator's
    header, where the attribute itself expands to nothing, aborts such a launch. Declarations (no body) are left as
    they are; comments and literals are not searched."""
    code = _code_only(source)
    pieces, position = [], 0
    for match in _LAUNCH_BOUNDS.finditer(code):
        if match.start() < position:  # inside a rewritten kernel's parameter list (none in csrc/)
            continue
        bounds_end = _closing(code, match.end() - 1)
        bounds = source[match.end() : bounds_end]
        parameters = code.index("(", bounds_end + 1)  # after the kernel's name
        body = _body_start(code, _closing(code, parameters) + 1)
        if body is not None:
            pieces += [source[position : body + 1], EMULATED_BOUNDS_CHECK.format(bounds=bounds)]
            position = body + 1
    return "".join(pieces) + source[position:]


def emulated_source(source: str, call: str = EMULATED_LAUNCH) -> str:
    """A CUDA source as the emulator compiles it: its launches (rewrite_launches) and its kernels' launch bounds
    (rewrite_launch_bounds) rewritten; nothing else changes."""
    return rewrite_launch_bounds(rewrite_launches(source, call))


def cuda_include_dir() -> Path | None:
    """The toolkit's include folder with cuda_fp16.h, or None."""
    home = find_cuda_home()
    if home is None or not (home / "include" / "cuda_fp16.h").exists():
        return None
    return home / "include"


def missing() -> str | None:
    """Why the emulator cannot be built here, or None."""
    if sys.platform != "linux":
        return f"the CUDA emulator is built with the Linux host compiler only, this is {sys.platform}"
    if cuda_include_dir() is None:
        return "the CUDA emulator needs the CUDA toolkit's headers (cuda_fp16.h): no CUDA toolkit was found"
    return None


def stage_sources(build_dir: Path, call: str = EMULATED_LAUNCH) -> list[Path]:
    """Copies of csrc/ with the launches rewritten (.cu -> .cpp for the host compiler) under build_dir/src; the
    translation units."""
    staged = build_dir / "src"
    staged.mkdir(parents=True, exist_ok=True)
    units = []
    for path in sorted(CSRC.iterdir()):
        if path.suffix not in (".cu", ".cuh", ".h", ".cpp"):
            continue
        target = staged / (path.stem + ".cpp" if path.suffix == ".cu" else path.name)
        text = emulated_source(path.read_text(), call)
        if not target.exists() or target.read_text() != text:  # unchanged files keep their timestamps (no rebuild)
            target.write_text(text)
        if target.suffix == ".cpp":
            units.append(target)
    return units


SANITIZERS = ("address",)


def sanitizer() -> str | None:
    """The sanitizer the emulator is built with: MASKSUB_CUDA_EMULATOR_SANITIZE (``address`` or unset)."""
    value = os.environ.get("MASKSUB_CUDA_EMULATOR_SANITIZE") or None
    if value is not None and value not in SANITIZERS:
        raise ValueError(f"MASKSUB_CUDA_EMULATOR_SANITIZE must be one of {SANITIZERS} or empty, got {value!r}")
    return value


def sanitizer_link_flags(sanitize: str | None) -> list[str]:
    """-fsanitize flags of a sanitized build (address: AddressSanitizer and UBSan's alignment check), or none."""
    return [f"-fsanitize={sanitize},alignment"] if sanitize else []


def contraction_flags() -> list[str]:
    """nvcc contracts a * b + c into one fma by default (--fmad=true): one rounding where the host compiler's ISO C++
    rounds twice. Where this (x86) CPU lists fma, the emulator is compiled to contract too (-ffp-contract=fast: GCC's
    choice of pairs, not necessarily nvcc's, and only from -O2: the -O0 AddressSanitizer build still rounds twice);
    elsewhere it rounds twice. -mfma enables AVX code too: the build must run on the CPU it targets."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return ["-mfma", "-ffp-contract=fast"] if " fma " in flags.replace("\n", " ") else []


def compile_flags(sanitize: str | None = None) -> list[str]:
    """Host compiler flags that turn a CUDA source (launches rewritten) into CPU code on the emulator.

    ``sanitize="address"`` instruments the kernels with AddressSanitizer: every load and store of a kernel is checked
    against the allocations (torch's CPU tensors get redzones), so an out-of-bounds access, which a GPU reports as an
    illegal address or silently reads, stops the run with a report. With it, UBSan's alignment check stops a load or
    store off its type's alignment (a uint4 16-byte word off its boundary: a GPU's "misaligned address", which x86
    executes silently). The process must preload the runtime (:func:`asan_environment`)."""
    emulator_files = sorted(EMULATOR.rglob("*.h")) + sorted(EMULATOR.rglob("*.cuh"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in emulator_files)).hexdigest()[:12]
    sanitizer_flags = []
    if sanitize:  # an alignment report stops the run, as a GPU's misaligned address would
        sanitizer_flags = [*sanitizer_link_flags(sanitize), "-fno-sanitize-recover=alignment"]
        sanitizer_flags.append("-fno-omit-frame-pointer")
    return [
        # sanitized: -O0, which keeps every access of the source for ASan to check and compiles in a third of -O1's
        # time (masksub_loss.cu's ~200 kernel instances: 57 s against 155 s; the sanitized tests ran as fast)
        "-O0" if sanitize else "-O2",
        *sanitizer_flags,
        *contraction_flags(),
        # the macros torch's nvcc build defines (no __half / __nv_bfloat16 operators or implicit conversions), so
        # that the emulator compiles the API subset nvcc does (helper-217); check_spills' flags, which
        # tests/test_setup.py holds to the extension's and torch's cpp_extension.COMMON_NVCC_FLAGS (importing
        # cpp_extension here would guess CUDA_HOME before build() sets it: helper-219)
        *(flag for flag in check_spills.NVCC_FLAGS if flag.startswith("-D")),
        "-DMASKSUB_MAX_GRID_BLOCKS=3",  # capped grids: the tests run the kernels' grid-stride loops
        f"-DMASKSUB_SOURCES_DIGEST={sources_digest(CSRC)}",  # _C's SOURCES_DIGEST, as setup.py stamps it
        f"-DMASKSUB_EMULATOR_DIGEST={digest}",  # a changed emulator header changes the flags: the build reruns
        "-include",
        str(EMULATOR / "emulator.h"),
        f"-I{EMULATOR}",  # emulator/masksub_platform.h and emulator/cub/... before anything else of those names
        f"-I{cuda_include_dir()}",
        "-Wno-unknown-pragmas",
    ]


def asan_environment() -> dict[str, str]:
    """Environment for a Python process that loads the AddressSanitizer build: the runtime preloaded (it must come
    first), with the C++ runtime beside it (ASan's __cxa_throw interceptor needs it at start-up, or the first C++
    exception in another extension aborts the process), leak detection off (the interpreter's own allocations live
    to exit). Raises RuntimeError when the compiler has no ASan runtime."""
    compiler = os.environ.get("CXX", "c++")
    libraries = []
    for name in ("libasan.so", "libstdc++.so"):
        path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not Path(path).is_absolute() or not Path(path).exists():
            raise RuntimeError(f"{compiler} has no {name}: AddressSanitizer builds need the compiler's runtime")
        libraries.append(path)
    return {
        "LD_PRELOAD": " ".join(libraries),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "MASKSUB_CUDA_EMULATOR_SANITIZE": "address",
    }


def build(build_dir: Path | str | None = None, verbose: bool = False, sanitize: str | None = None):
    """Compile (or reuse) the emulated extension and return the module; raises RuntimeError when it cannot.

    ``sanitize`` defaults to :func:`sanitizer` (the environment); a sanitized build has its own name and folder."""
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    sanitize = sanitize if sanitize is not None else sanitizer()
    name = MODULE_NAME + (f"_{sanitize}" if sanitize else "")
    build_dir = Path(build_dir) if build_dir is not None else DEFAULT_BUILD_DIR.with_name(name)
    # torch.utils.cpp_extension guesses CUDA_HOME on import and warns when it finds no runtime; nothing here links
    # CUDA, but the real toolkit is the right answer to its question (see tools/cuda_home.py).
    os.environ.setdefault("CUDA_HOME", str(find_cuda_home()))
    from torch.utils import cpp_extension

    # Several processes (pytest-xdist's workers) may build at once on a clean checkout: one at a time stages and
    # compiles (a source rewritten while another process compiles it would be read half-written); the others then
    # find the build up to date and load it.
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.with_name(build_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        units = stage_sources(build_dir)
        return cpp_extension.load(
            name=name,
            sources=[str(unit) for unit in units],
            extra_cflags=compile_flags(sanitize),
            extra_ldflags=sanitizer_link_flags(sanitize),
            build_directory=str(build_dir),
            with_cuda=False,
            verbose=verbose,
        )


def install(module=None) -> None:
    """Make the emulated extension the ``cuda`` backend for CPU tensors in this process (built when not given)."""
    from masksub_kernels import _backend

    _backend.register_extension("cpu", module if module is not None else build())


def _smoke_check() -> bool:
    """One selection and one fused loss through the public ops, the emulated ``cuda`` backend against ``torch``."""
    from masksub_kernels import masksub_loss, random_keep_indices, use_backend

    generator = torch.Generator().manual_seed(0)
    main_logits, sub_logits = torch.randn(2, 8, 1000, generator=generator).unbind(0)
    labels = torch.randint(0, 1000, (8,), generator=generator)
    results = {}
    for backend in ("cuda", "torch"):
        with use_backend(backend):
            ids = random_keep_indices(4, 196, 98, seed=7)
            loss = masksub_loss(main_logits, sub_logits, labels, label_smoothing=0.1).loss
        results[backend] = ids, loss
    same_ids = torch.equal(results["cuda"][0], results["torch"][0])
    loss_error = (results["cuda"][1] - results["torch"][1]).abs().item()
    print(f"random_keep_indices 4 x 196 -> 98: {'identical to' if same_ids else 'DIFFERENT from'} the reference")
    print(f"masksub_loss 8 x 1000: {results['cuda'][1].item():.6f} (|cuda - torch| = {loss_error:.2e})")
    return same_ids and loss_error <= 1e-5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=None, help="default: build/<module name>")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    module = build(args.build_dir, verbose=args.verbose)
    print(f"built {module.__file__}")
    install(module)
    return 0 if _smoke_check() else 1


if __name__ == "__main__":
    raise SystemExit(main())
