"""Build of masksub_kernels, with the optional CUDA extension ``masksub_kernels._C`` (sources in csrc/).

The extension is built when a CUDA build of torch and a CUDA toolkit are present. Switches (environment):

    MASKSUB_BUILD_CUDA=1     build it and fail loudly if that is impossible (also true / yes / on)
    MASKSUB_BUILD_CUDA=0     skip it (pure-Python install: Triton and PyTorch backends) (also false / no / off)
    (unset or empty)         build it when possible; otherwise, or if the build fails, install without it
                             (any other value is refused: a typo must not turn a forced build into an optional one)
    MASKSUB_CUDA_ARCHS       target compute capabilities, default "80;90" (sm_80 and sm_90a); "8.0" and "80"
                             alike, ";", "," or spaces between; 8.0 at least, anything else refused. Unset,
                             TORCH_CUDA_ARCH_LIST is read instead ("+PTX" honoured; what this build cannot take,
                             such as "7.0", "Ampere" or "native", left out, saying so)

The extension's own code compiles with warnings as errors (WARNING_FLAGS: host compiler and nvcc's host pass), so
a build that warns fails; CI sets MASKSUB_BUILD_CUDA=1, so that such a failure fails the run.

Install with ``pip install --no-build-isolation -e .`` so that the build sees the environment's torch.
The nvcc on PATH may be a wrapper script that execs the real toolkit's nvcc; torch guesses CUDA_HOME from the
nvcc it finds and then fails to link (-lcudart). So CUDA_HOME is resolved here, from the wrapper's target.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# The real kernel device (csrc/platform/masksub_platform.h); the CUDA emulator's build puts its twin, csrc/emulator/,
# on its include path instead.
PLATFORM = CSRC / "platform"

# Warnings are errors in the extension's own code, for the host compiler and for nvcc's host pass. GCC 12's -Wall
# has -Winfinite-recursion: a stream getter that called itself once shipped in bindings.cpp, where no CPU test could
# run it. tests/test_setup.py compiles with these very flags.
WARNING_FLAGS = ["-Wall", "-Wextra", "-Werror"]


def shared_cxx_runtime(maps: str = "/proc/self/maps") -> list[str]:
    """The link argument that makes _C use this process's C++ runtime: the path of the shared libstdc++ it has
    loaded (torch imported), linked by path. A compiler set up to link libstdc++ statically (one GPU machine's g++,
    2026-11-30, whose library folder held only libstdc++.a) otherwise puts a second copy in _C whose iostreams torch
    never initialised: every number in an error message printed nothing or crashed. `-lstdc++` alone did not help
    there (2026-12-04: the refusals still crashed): it found that libstdc++.a first. Elsewhere (no /proc, or no
    libstdc++ loaded): -lstdc++."""
    try:
        with open(maps) as lines:  # address perms offset dev inode path (a path may hold spaces)
            fields = [line.rstrip("\n").split(maxsplit=5) for line in lines if "/libstdc++.so" in line]
    except OSError:
        fields = []
    loaded = [f[5].removesuffix(" (deleted)") for f in fields if len(f) == 6]
    if loaded and os.path.isfile(loaded[0]):
        return [loaded[0]]
    if os.path.exists(maps):  # Linux, yet no loaded libstdc++ found: say so (the link may take a static copy)
        log("the process's libstdc++ was not found in /proc/self/maps: linking with -lstdc++")
    return ["-lstdc++"]


NVCC_WARNING_FLAGS = [f"-Xcompiler={','.join(WARNING_FLAGS)}", "-Werror=all-warnings"]


def log(message: str) -> None:
    print(f"masksub_kernels setup: {message}", file=sys.stderr)


def find_cuda_home() -> str | None:
    """The real CUDA toolkit (tools/cuda_home.py, loaded by path: nothing is installed yet)."""
    spec = importlib.util.spec_from_file_location("_masksub_cuda_home", ROOT / "tools" / "cuda_home.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    home = module.find_cuda_home()
    return None if home is None else str(home)


SWITCH_ON = ("1", "true", "yes", "on")
SWITCH_OFF = ("0", "false", "no", "off")


def build_switch() -> bool | None:
    """MASKSUB_BUILD_CUDA: True (build or fail), False (skip) or None (unset or empty: build when possible). Any other
    value is a SystemExit: "2" or a typo once meant "when possible" (helper-328), and "off" even built it."""
    value = os.environ.get("MASKSUB_BUILD_CUDA", "").strip()
    if not value:
        return None
    if value.lower() in SWITCH_ON + SWITCH_OFF:
        return value.lower() in SWITCH_ON
    raise SystemExit(
        f"masksub_kernels setup: MASKSUB_BUILD_CUDA={value!r} is not understood: 1 builds the CUDA extension (or "
        "fails saying why), 0 skips it, unset builds it when possible"
    )


# one compute capability: "80", "8.0", "90a", "9.0a", "100", "12.0", "12.0f" (a family target, CUDA 12.9+: the
# machine code runs on every GPU of its family, sm_120f on 12.x), with an optional "+PTX" (TORCH_CUDA_ARCH_LIST's)
_ARCH = re.compile(r"(\d{1,2})\.?(\d)([af]?)(\+PTX)?", re.IGNORECASE)
MIN_FAMILY_MAJOR = 10  # family targets ("f") begin with Blackwell: nvcc has no compute_90f
MIN_ARCH = 80  # README "Versions": compute capability 8.0 and newer (CUDA 13's nvcc has no sm_70 at all)
MAX_MAJOR = 15  # above any compute capability there is (12.x in CUDA 13): "800" is a typo, not capability 80.0


def cuda_archs() -> tuple[list[str], set[str], str]:
    """(archs, those whose PTX is asked for, where they came from): from MASKSUB_CUDA_ARCHS, else TORCH_CUDA_ARCH_LIST
    (torch's own variable: the -gencode flags below make torch ignore it, so it is read here), else "80;90". An arch
    is "80", "90" (built as sm_90a), "90a", "100", "120f" (a family target)...; in MASKSUB_CUDA_ARCHS a value that
    names none, or one below 8.0, is a SystemExit that says so, rather than an nvcc error that an automatic build
    swallows (installing without the extension). TORCH_CUDA_ARCH_LIST is often set for every build of an image ("7.0
    7.5 8.0 8.6 9.0+PTX", "Ampere", "native"): its entries this build cannot take are left out, saying so, and if
    none is left, the default."""
    variable = next((v for v in ("MASKSUB_CUDA_ARCHS", "TORCH_CUDA_ARCH_LIST") if os.environ.get(v, "").strip()), None)
    value = os.environ[variable] if variable else "80;90"
    archs, ptx, skipped = [], set(), []
    for entry in filter(None, re.split(r"[;,\s]+", value)):
        match = _ARCH.fullmatch(entry)
        if match is not None and int(match[1]) > MAX_MAJOR:  # (helper-333: "800" reached nvcc as compute_800)
            match = None
        family_too_old = match is not None and match[3].lower() == "f" and int(match[1]) < MIN_FAMILY_MAJOR
        if match is None or int(match[1] + match[2]) < MIN_ARCH or family_too_old:
            why = "is not a compute capability" if match is None else f"is below {MIN_ARCH // 10}.{MIN_ARCH % 10}"
            if family_too_old and int(match[1] + match[2]) >= MIN_ARCH:
                why = f"is a family target below {MIN_FAMILY_MAJOR}.0 (nvcc's family targets begin with 10.0f)"
            if variable == "TORCH_CUDA_ARCH_LIST":
                skipped.append(f"{entry!r} {why}")
                continue
            raise SystemExit(
                f"masksub_kernels setup: {variable}={value!r}: {entry!r} {why}; give compute capabilities of "
                f'{MIN_ARCH // 10}.{MIN_ARCH % 10} or newer, e.g. MASKSUB_CUDA_ARCHS="80;90" (sm_80 and sm_90a)'
            )
        arch = match[1] + match[2] + match[3].lower()
        if arch not in archs:
            archs.append(arch)
        if match[4]:
            ptx.add(arch)
    if skipped:
        log(f"TORCH_CUDA_ARCH_LIST={value!r}: left out {', '.join(skipped)} (MASKSUB_CUDA_ARCHS overrides it)")
    if not archs:
        log(f"TORCH_CUDA_ARCH_LIST={value!r} names no arch this build can take: the default, 80;90")
        return ["80", "90"], set(), "the default"
    return archs, ptx, variable or "the default"


FAMILY_NVCC = (12, 9)  # the first nvcc with family targets (compute_100f, compute_120f)


def nvcc_release(cuda_home: str | None) -> tuple[int, int] | None:
    """The toolkit's nvcc release, (13, 0), from ``nvcc --version``; None where it cannot be read."""
    if cuda_home is None:
        return None
    try:
        said = subprocess.run([str(Path(cuda_home, "bin", "nvcc")), "--version"], capture_output=True, text=True,
                              timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", said)
    return (int(match[1]), int(match[2])) if match else None


def family_targets_checked(archs: list[str], ptx: set[str], source: str) -> tuple[list[str], set[str], str]:
    """``archs`` without their family targets ("120f") where the toolkit's nvcc predates them (12.9): asked for by
    MASKSUB_CUDA_ARCHS, a SystemExit that says so (not an nvcc error that an automatic build swallows); from
    TORCH_CUDA_ARCH_LIST, left out with a note (the default where none is left)."""
    family = [arch for arch in archs if arch.endswith("f")]
    release = nvcc_release(find_cuda_home()) if family else None
    if release is None or release >= FAMILY_NVCC:
        return archs, ptx, source
    said = f"family targets ({', '.join(family)}) need nvcc 12.9 or newer; this toolkit's is {release[0]}.{release[1]}"
    if source != "TORCH_CUDA_ARCH_LIST":
        raise SystemExit(f"masksub_kernels setup: {source}: {said}; name plain capabilities (120, not 120f)")
    kept = [arch for arch in archs if arch not in family]
    log(f"TORCH_CUDA_ARCH_LIST: left out: {said}" + ("" if kept else "; the default, 80;90"))
    return (kept, ptx - set(family), source) if kept else (["80", "90"], set(), "the default")


def _sources_module():
    """masksub_kernels/_sources.py, loaded by path (nothing is installed yet)."""
    spec = importlib.util.spec_from_file_location("_masksub_sources", ROOT / "masksub_kernels" / "_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sources_digest() -> str:
    """The digest of csrc/ (masksub_kernels/_sources.py), compiled into _C as SOURCES_DIGEST."""
    return _sources_module().sources_digest(CSRC)


def header_files() -> list[str]:
    """The headers the real build includes (csrc/, csrc/platform/), relative to the checkout: the extension's
    ``depends``, so that a build without ninja (setuptools' own, which compares times) rebuilds after a header-only
    change; ninja follows the compilers' dependency files."""
    return [str(p.relative_to(ROOT)) for p in _sources_module().source_files(CSRC) if p.suffix in (".h", ".cuh")]


def cuda_extension_plan() -> tuple[bool, str]:
    """(build?, reason) from the switches and what this machine has."""
    switch = build_switch()
    if switch is False:
        return False, f"MASKSUB_BUILD_CUDA={os.environ['MASKSUB_BUILD_CUDA'].strip()}"
    sources = sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cpp"))
    if not sources:
        return False, "no sources in csrc/"
    try:
        import torch
    except ImportError:
        return False, "torch is not installed in the build environment (use --no-build-isolation)"
    if torch.version.cuda is None:
        kind = "a ROCm (HIP) build" if getattr(torch.version, "hip", None) else "a CPU-only build"
        return False, f"torch {torch.__version__} is {kind}"
    # a CUDA_HOME without bin/nvcc (a conda environment's may be one) is passed over (tools/cuda_home.py): say so, or
    # a user who named a toolkit there gets another one, or none, without a word (helper-328)
    # (CUDA_PATH only where CUDA_HOME did not give the toolkit: read after it, it is not looked at otherwise)
    passed_over = ""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name) and Path(os.environ[name], "bin", "nvcc").exists():
            break
        if os.environ.get(name):
            passed_over += f"; {name}={os.environ[name]} passed over: no bin/nvcc there"
    cuda_home = find_cuda_home()
    if cuda_home is None:
        return False, f"no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH{passed_over})"
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    return True, f"CUDA toolkit {cuda_home}{passed_over}, torch {torch.__version__} (CUDA {torch.version.cuda})"


def foreign_include_dirs(cuda_home: str) -> list[str]:
    """The include folders of torch, the CUDA toolkit and Python: the headers the bindings use but we do not own."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    return [*include_paths(), str(Path(cuda_home) / "include"), sysconfig.get_paths()["include"]]


def host_compile_flags(cuda_home: str) -> list[str]:
    """The host compiler's flags for the bindings, csrc/bindings*.cpp (tests/test_setup.py compiles with them too).
    Foreign headers are -isystem: GCC then ignores the -I the build also passes for them, and -Werror judges only this
    project's code (torch's headers alone trip -Wextra's unused-parameter)."""
    system = [flag for directory in foreign_include_dirs(cuda_home) for flag in ("-isystem", directory)]
    return ["-O3", "-std=c++20", *WARNING_FLAGS, *system]  # torch 2.14 headers require C++20


def extension_modules():
    build, reason = cuda_extension_plan()
    forced = build_switch() is True
    if not build:
        if forced:
            value = os.environ["MASKSUB_BUILD_CUDA"].strip()
            raise SystemExit(
                f"masksub_kernels setup: MASKSUB_BUILD_CUDA={value} but the extension cannot be built: {reason}"
            )
        log(f"skipping the CUDA extension masksub_kernels._C ({reason}); the Triton and torch backends still work")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs, asked_ptx, source = family_targets_checked(*cuda_archs())
    # PTX beside the machine code of the lowest arch but sm_90a (whose PTX runs on sm_90 only): a newer GPU (10.x,
    # 12.x) JIT-compiles it at the first launch instead of failing with "no kernel image" (helper-246 F3); the PTX
    # is the one that arch's machine code is assembled from, so it costs no second compile
    portable = [arch for arch in archs if arch != "90" and arch.isdigit()]
    ptx_arch = min(portable, key=int) if portable else None
    gencode, targets = [], []
    for arch in archs:
        target = f"{arch}a" if arch == "90" else arch  # sm_90a: Hopper-only instructions allowed
        targets.append(f"sm_{target}" + (" (with PTX)" if arch == ptx_arch or arch in asked_ptx else ""))
        code = f"[sm_{target},compute_{target}]" if arch == ptx_arch else f"sm_{target}"
        gencode += [f"-gencode=arch=compute_{target},code={code}"]
        portable_target = target.rstrip("af")  # +PTX: that arch's portable PTX (compute_90, not 90a's; 120f: 120)
        if arch in asked_ptx and portable_target != ptx_arch:  # (ptx_arch's machine-code flag carries it already)
            gencode += [f"-gencode=arch=compute_{portable_target},code=compute_{portable_target}"]
    gencode = list(dict.fromkeys(gencode))  # one PTX each: "100a+PTX;100f+PTX" both ask for compute_100's
    log(f"building the CUDA extension masksub_kernels._C for {', '.join(targets)} ({source}; {reason})")
    sources = [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cpp"))]
    extension = CUDAExtension(
        name="masksub_kernels._C",
        sources=sources,
        include_dirs=[str(CSRC), str(PLATFORM)],
        depends=header_files(),
        extra_compile_args={
            # the sources' digest: the package refuses an extension built from other sources than its csrc/
            "cxx": [*host_compile_flags(find_cuda_home()), f"-DMASKSUB_SOURCES_DIGEST={sources_digest()}"],
            "nvcc": ["-O3", "-std=c++17", "-lineinfo", *NVCC_WARNING_FLAGS, *gencode],  # .cu files are torch-free
        },
        # the process's C++ runtime, shared (shared_cxx_runtime): it comes before the driver's own libraries, so the
        # shared library provides every symbol even where the compiler links libstdc++ statically by default
        extra_link_args=shared_cxx_runtime(),
        optional=not forced,  # an automatic build that fails leaves a working pure-Python install (CI forces it)
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


if __name__ == "__main__":  # setuptools runs setup.py as __main__; tests import it for its helpers
    ext_modules, cmdclass = extension_modules()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
