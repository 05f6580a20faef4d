"""setup.py's decisions: where the CUDA toolkit is (wrapper scripts included), when the extension is built."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import check_spills, cuda_emulator
from tools.cuda_home import find_cuda_home

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def load_setup_module():
    spec = importlib.util.spec_from_file_location("masksub_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, runs no setup()
    return module


def fake_toolkit(root: Path) -> Path:
    nvcc = root / "cuda-13.0" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho real nvcc\n")
    nvcc.chmod(0o755)
    return root / "cuda-13.0"


def test_wrapper_script_is_followed_to_the_real_toolkit(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path)
    wrapper = tmp_path / "wrapper" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert find_cuda_home(str(wrapper), fallback="") == toolkit


def test_real_nvcc_gives_its_parent_and_cuda_home_wins(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path)
    (toolkit / "bin" / "nvcc").write_bytes(b"\x7fELF binary")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert find_cuda_home(str(toolkit / "bin" / "nvcc"), fallback="") == toolkit
    other = fake_toolkit(tmp_path / "other")
    monkeypatch.setenv("CUDA_HOME", str(other))
    assert find_cuda_home(str(toolkit / "bin" / "nvcc"), fallback="") == other


def test_no_toolkit_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert find_cuda_home(str(tmp_path / "missing-nvcc"), fallback=str(tmp_path / "nowhere")) is None


def test_build_switch_zero_skips_and_says_why(monkeypatch):
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", "0")
    assert setup.cuda_extension_plan() == (False, "MASKSUB_BUILD_CUDA=0")
    assert setup.extension_modules() == ([], {})


def test_forced_build_without_toolkit_fails_loudly(monkeypatch):
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", "1")
    monkeypatch.setattr(setup, "find_cuda_home", lambda: None)
    with pytest.raises(SystemExit, match="MASKSUB_BUILD_CUDA=1 but the extension cannot be built"):
        setup.extension_modules()


def test_setup_py_skips_the_extension_with_a_message():
    env = {**os.environ, "MASKSUB_BUILD_CUDA": "0"}
    result = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "masksub_kernels"
    assert "skipping the CUDA extension masksub_kernels._C (MASKSUB_BUILD_CUDA=0)" in result.stderr


def test_the_sdist_holds_what_the_extension_build_needs(tmp_path):
    """helper-310: the sdist held no csrc/ (nor tools/cuda_home.py, which setup.py loads by path), so a wheel built
    from it skipped the extension ('no sources in csrc/') even with a CUDA toolkit; nor the licence (MANIFEST.in)."""
    import shutil
    import tarfile

    # from a copy of the tracked files: sdist builds its tree in its working folder (another worker's
    # test_csrc_sources lists the checkout's files)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    source = tmp_path / "source"
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    env = {**os.environ, "MASKSUB_BUILD_CUDA": "0"}
    command = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d", str(tmp_path)]
    result = subprocess.run(command, cwd=source, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    (sdist,) = tmp_path.glob("masksub_kernels-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = {str(p.relative_to(ROOT)) for p in CSRC.rglob("*") if p.is_file() and p.suffix not in (".o", ".so")}
    assert needed and needed <= names, sorted(needed - names)
    assert {"tools/cuda_home.py", "LICENSE", "masksub_kernels/py.typed", "setup.py", "pyproject.toml"} <= names
    assert not any(name.startswith("tests/") for name in names)


# The warning flags of the real build, on the real platform header: the build that must refuse an infinite recursion
# (once shipped as bindings.cpp's current_stream, which no CPU test could run) and accept the fixed header.
STREAM_USER = """#include "masksub_platform.h"
cudaStream_t stream_of(c10::Device device) { return masksub::platform::current_stream(device); }
"""
REAL_STREAM = "return c10::cuda::getCurrentCUDAStream(device.index()).stream();"


def compile_platform_header(folder: Path, header_text: str, user: str | None = None) -> subprocess.CompletedProcess:
    """Compile a use of masksub_platform.h (given as text; ``user``: the source that includes it, default the stream
    helper's caller) with setup.py's host compiler flags."""
    setup = load_setup_module()
    cuda_home = find_cuda_home()
    torch_include = Path(setup.foreign_include_dirs(str(cuda_home))[0]) if cuda_home else None
    if cuda_home is None or not (torch_include / "c10" / "cuda" / "CUDAStream.h").exists():
        pytest.skip("needs the CUDA toolkit's headers and a CUDA build of torch")
    (folder / "masksub_platform.h").write_text(header_text)
    (folder / "user.cpp").write_text(STREAM_USER if user is None else user)
    compiler = os.environ.get("CXX", "c++")
    command = [compiler, *setup.host_compile_flags(str(cuda_home)), f"-I{folder}", "-c", "user.cpp", "-o", "user.o"]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)


def test_the_build_refuses_an_infinite_recursion(tmp_path):
    header = (ROOT / "csrc" / "platform" / "masksub_platform.h").read_text()
    assert REAL_STREAM in header
    result = compile_platform_header(tmp_path, header.replace(REAL_STREAM, "return current_stream(device);"))
    assert result.returncode != 0 and "-Werror=infinite-recursion" in result.stderr, result.stderr[-3000:]


def test_the_real_platform_header_compiles_warning_free(tmp_path):
    result = compile_platform_header(tmp_path, (ROOT / "csrc" / "platform" / "masksub_platform.h").read_text())
    assert result.returncode == 0, result.stderr[-3000:]


def setup_with_cuda_torch(monkeypatch):
    """The setup module with MASKSUB_BUILD_CUDA unset, for a test of the plan past torch; skips with a CPU-only torch
    (the plan stops before the toolkit)."""
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("a CPU-only torch: the plan stops before the toolkit")
    monkeypatch.delenv("MASKSUB_BUILD_CUDA", raising=False)
    return load_setup_module()


def planned_extension(monkeypatch):
    """(setup module, the CUDA extension it would build here with MASKSUB_BUILD_CUDA=1); skips without a toolkit."""
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", "1")
    if find_cuda_home() is None:
        pytest.skip("no CUDA toolkit")
    monkeypatch.setattr(setup, "cuda_extension_plan", lambda: (True, "test"))
    [extension], _ = setup.extension_modules()
    return setup, extension


def test_the_extension_is_built_with_warnings_as_errors(monkeypatch):
    setup, extension = planned_extension(monkeypatch)
    assert set(setup.WARNING_FLAGS) <= set(extension.extra_compile_args["cxx"])
    assert "-Xcompiler=-Wall,-Wextra,-Werror" in extension.extra_compile_args["nvcc"]
    assert str(setup.PLATFORM) in extension.include_dirs and not extension.optional


def test_the_extension_depends_on_the_headers_it_includes(monkeypatch):
    # setuptools' own build (no ninja) compares the sources' and depends' times with the built library's: without
    # the headers in depends, a header-only change (masksub_loss.cuh) left the old _C in place, refused as stale
    _, extension = planned_extension(monkeypatch)
    headers = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*") if p.suffix in (".h", ".cuh"))
    expected = [h for h in headers if "emulator" not in h]  # (csrc/emulator/: the tests' CPU twin, not included)
    assert sorted(extension.depends) == expected and "csrc/platform/masksub_platform.h" in expected
    assert all((ROOT / h).is_file() for h in extension.depends)


def test_the_package_ships_no_developer_tools():
    """tools/ (the emulator, the compile and spill checks) reads the source tree: it is not part of the library."""
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages

    assert not (ROOT / "masksub_kernels" / "tools").exists()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert "masksub_kernels" in packages and "masksub_kernels.ops" in packages
    assert all(name.split(".")[0] == "masksub_kernels" for name in packages), packages


def needed_libraries(shared_object: Path) -> list[str]:
    """The DT_NEEDED entries of a shared object (readelf -d)."""
    out = subprocess.run(["readelf", "-d", str(shared_object)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


OSTREAM_LONG = "_ZNSo9_M_insertIlEERSoT_"  # std::ostream::_M_insert<long>, where the crash of 2026-11-30 was


def defines_symbol(shared_object: Path, symbol: str) -> bool:
    """Whether a shared object defines ``symbol`` itself (readelf -Ws: a section index, not UND)."""
    out = subprocess.run(["readelf", "-Ws", str(shared_object)], capture_output=True, text=True, check=True).stdout
    return any(f[-1].split("@")[0] == symbol and f[6] != "UND" for f in map(str.split, out.splitlines()) if len(f) >= 8)


@pytest.mark.skipif(subprocess.run(["which", "readelf"], capture_output=True).returncode, reason="no readelf")
def test_the_link_shares_the_cxx_runtime_even_with_a_static_libstdcxx_compiler(tmp_path):
    """One GPU machine's g++ linked libstdc++ statically into _C: a second copy whose iostreams torch never set up,
    so every number in an error message printed nothing (here) or crashed (there). The extension's link flags
    must make it use the process's shared libstdc++ whatever the compiler's default, and also where the library
    folder the linker searches first holds only libstdc++.a (there `-lstdc++` still linked the static copy)."""
    import torch  # noqa: F401  (loads the process's libstdc++, as setup.py's build does)

    setup = load_setup_module()
    (tmp_path / "user.cpp").write_text(
        "#include <sstream>\n#include <string>\n"
        'std::string describe(long n) { std::ostringstream s; s << "got " << n; return s.str(); }\n'
    )
    compiler = os.environ.get("CXX", "c++")
    archive = subprocess.run([compiler, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(archive):
        pytest.skip(f"{compiler} has no libstdc++.a")
    (tmp_path / "static_only").mkdir()
    (tmp_path / "static_only" / "libstdc++.a").symlink_to(archive)
    base = [compiler, "-shared", "-fPIC", "-static-libstdc++", f"-L{tmp_path / 'static_only'}", "user.cpp", "-o"]
    builds = {"static.so": [], "minus_l.so": ["-lstdc++"], "shared.so": setup.shared_cxx_runtime()}
    for name, flags in builds.items():
        done = subprocess.run([*base, name, *flags], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    for name in ("static.so", "minus_l.so"):  # the GPU machine's case, reproduced: a copy of its own
        assert not any(lib.startswith("libstdc++") for lib in needed_libraries(tmp_path / name))
        assert defines_symbol(tmp_path / name, OSTREAM_LONG)
    assert "libstdc++.so.6" in needed_libraries(tmp_path / "shared.so")
    assert not defines_symbol(tmp_path / "shared.so", OSTREAM_LONG)


def test_shared_cxx_runtime_is_the_loaded_library_by_path(tmp_path):
    setup = load_setup_module()
    library = tmp_path / "libstdc++.so.6.0.33"
    library.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n7f02-7f03 r-xp 00000000 08:01 43 {library}\n"
    )
    assert setup.shared_cxx_runtime(str(maps)) == [str(library)]
    spaced = tmp_path / "a dir" / "libstdc++.so.6"
    spaced.parent.mkdir()
    spaced.write_bytes(b"")
    maps.write_text(f"7f02-7f03 r-xp 00000000 08:01 43 {spaced}\n")  # a path with a space: the whole path
    assert setup.shared_cxx_runtime(str(maps)) == [str(spaced)]
    maps.write_text(f"7f02-7f03 r-xp 00000000 08:01 43 {spaced} (deleted)\n")  # replaced on disk since loaded
    assert setup.shared_cxx_runtime(str(maps)) == [str(spaced)]
    assert setup.shared_cxx_runtime(str(tmp_path / "absent")) == ["-lstdc++"]  # no /proc: the linker's search
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n")
    assert setup.shared_cxx_runtime(str(maps)) == ["-lstdc++"]


def test_the_extension_links_the_shared_cxx_runtime(monkeypatch):
    setup, extension = planned_extension(monkeypatch)
    assert extension.extra_link_args == setup.shared_cxx_runtime() and extension.extra_link_args[0] != "-lstdc++"
    built = sorted((ROOT / "masksub_kernels").glob("_C*.so"))
    if built and subprocess.run(["which", "readelf"], capture_output=True).returncode == 0:
        assert "libstdc++.so.6" in needed_libraries(built[0])  # the build in this checkout, if any
        assert not defines_symbol(built[0], OSTREAM_LONG)


# helper-217's mutation audit of the emulator's build tool and the real build's configuration (44 mutants)


# -> tests/test_setup.py. Kills S04 (sm_90 instead of sm_90a: no Hopper-only instructions), S05 (the default without
# sm_80), S10 (MASKSUB_CUDA_ARCHS="80,90" read as one arch "80,90"), S11 (no -gencode at all: torch then picks the
# archs itself, from TORCH_CUDA_ARCH_LIST or the visible GPU).
@pytest.mark.parametrize("archs", [None, "80;90", "80,90", " 80 ; 90 ;"])
def test_the_extension_targets_sm_80_and_sm_90a(monkeypatch, archs):
    if archs is None:
        monkeypatch.delenv("MASKSUB_CUDA_ARCHS", raising=False)  # the default
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)  # (read when MASKSUB_CUDA_ARCHS is unset)
    else:
        monkeypatch.setenv("MASKSUB_CUDA_ARCHS", archs)
    _, extension = planned_extension(monkeypatch)
    gencode = [flag for flag in extension.extra_compile_args["nvcc"] if flag.startswith("-gencode")]
    # sm_80's PTX embedded too: a newer GPU JIT-compiles it (helper-246 F3)
    assert gencode == ["-gencode=arch=compute_80,code=[sm_80,compute_80]", "-gencode=arch=compute_90a,code=sm_90a"]


@pytest.mark.parametrize(("archs", "expected"), [
    ("90", ["-gencode=arch=compute_90a,code=sm_90a"]),  # sm_90a's PTX runs on sm_90 only: none
    ("90;86;80", ["-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_86,code=sm_86",
                  "-gencode=arch=compute_80,code=[sm_80,compute_80]"]),  # the lowest arch's, whatever the order
    ("100", ["-gencode=arch=compute_100,code=[sm_100,compute_100]"]),
])  # fmt: skip
def test_the_ptx_is_the_lowest_portable_archs(monkeypatch, archs, expected):
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", archs)
    _, extension = planned_extension(monkeypatch)
    assert [flag for flag in extension.extra_compile_args["nvcc"] if flag.startswith("-gencode")] == expected


# -> tests/test_setup.py. Kills S03 (NVCC_WARNING_FLAGS without "-Werror=all-warnings": nvcc's own warnings, of the
# device code, no longer fail the build; the existing test checks only the host pass's -Xcompiler flags).
def test_the_nvcc_pass_turns_its_own_warnings_into_errors(monkeypatch):
    _, extension = planned_extension(monkeypatch)
    assert "-Werror=all-warnings" in extension.extra_compile_args["nvcc"]


# -> tests/test_setup.py. Kills S06 (the bindings, csrc/*.cpp, left out of the real build), S07 (csrc/*.cu* also
# takes the .cuh headers as translation units), and E10 (the emulator's stage_sources leaves the bindings_*.cpp out
# of its translation units), E13 (stage_sources walks csrc/ recursively: csrc/platform/masksub_platform.h staged beside
# the copies). The emulator is only a stand-in if it compiles the file list the real build compiles.
def test_the_emulator_compiles_the_files_the_real_build_compiles(monkeypatch, tmp_path):
    _, extension = planned_extension(monkeypatch)
    expected = sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cpp"))
    assert extension.sources == [str(path.relative_to(ROOT)) for path in expected]
    assert sorted(unit.stem for unit in cuda_emulator.stage_sources(tmp_path)) == sorted(p.stem for p in expected)
    # and beside them only copies of csrc/'s own files: no masksub_platform.h (the real one, staged from csrc/platform/,
    # would shadow the emulated one for every quoted include: E13, csrc/ searched recursively)
    staged = sorted(path.name for path in (tmp_path / "src").iterdir())
    own = [p for p in CSRC.iterdir() if p.suffix in (".cu", ".cuh", ".h", ".cpp")]
    assert staged == sorted(p.stem + ".cpp" if p.suffix == ".cu" else p.name for p in own)


# -> tests/test_setup.py. Kills S08 (csrc/emulator/ also on the real build's include path, before csrc/platform/: the
# real build would take the emulator's masksub_platform.h) and S09 (PLATFORM = csrc/emulator: the existing test's
# `str(setup.PLATFORM) in include_dirs` then holds for the wrong folder).
def test_the_real_build_includes_the_real_platform_header_only(monkeypatch):
    setup, extension = planned_extension(monkeypatch)
    assert setup.PLATFORM == CSRC / "platform"
    assert extension.include_dirs[:2] == [str(CSRC), str(CSRC / "platform")]  # then torch's own (CUDAExtension)
    assert not any(Path(folder).is_relative_to(CSRC / "emulator") for folder in extension.include_dirs)


# -> tests/test_setup.py. Kills S17 (the extension built under another name: the package imports masksub_kernels._C,
# finds none, and the GPU suite's extension tests skip rather than fail: extension_under_test's needs_C).
def test_the_extension_is_the_module_the_package_imports(monkeypatch):
    _, extension = planned_extension(monkeypatch)
    assert extension.name == "masksub_kernels._C"
    assert '"masksub_kernels._C"' in (ROOT / "masksub_kernels" / "_backend.py").read_text()


# -> tests/test_setup.py. Kills S14 (the plan no longer exports the toolkit it found as CUDA_HOME: torch's
# cpp_extension then guesses it from the nvcc on PATH, a wrapper script's folder, and the link fails on -lcudart).
def test_the_plan_exports_the_real_toolkit_as_cuda_home(monkeypatch, tmp_path):
    setup = setup_with_cuda_torch(monkeypatch)
    monkeypatch.setenv("CUDA_HOME", "/guessed/by/torch")  # restored after the test
    monkeypatch.setattr(setup, "find_cuda_home", lambda: str(tmp_path / "cuda-13.0"))
    build, _ = setup.cuda_extension_plan()
    assert build and os.environ["CUDA_HOME"] == str(tmp_path / "cuda-13.0")


# -> tests/test_setup.py. Kills S16 (the extension's nvcc at -std=c++20), C01 (check_spills without one of torch's
# -D__CUDA_NO_HALF*__ macros: a kernel using __half's operators would pass the only nvcc compilation a machine without
# a GPU runs, test_csrc_kernels_do_not_spill, and fail the real build) and C04 (check_spills without -O3).
# check_spills (and tools/perf_model/csrc.py, which takes its flags) must compile as the extension is built.
def test_check_spills_compiles_as_the_extension_is_built(monkeypatch):
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    setup, extension = planned_extension(monkeypatch)
    ours = [flag for flag in extension.extra_compile_args["nvcc"] if not flag.startswith("-gencode")]
    ours = [flag for flag in ours if flag not in setup.NVCC_WARNING_FLAGS]
    assert sorted(check_spills.NVCC_FLAGS) == sorted([*ours, *COMMON_NVCC_FLAGS])


# -> tests/test_setup.py. Kills R01 (the real header's kernel device CPU: every binding would refuse CUDA tensors)
# and R03 (its DeviceGuard a no-op struct: launches and allocations on the current device instead of the tensors').
# Neither shows without a GPU, and R03 not even on a one-GPU machine; the compiler can tell.
REAL_PLATFORM_CHECKS = """#include "masksub_platform.h"
#include <type_traits>
static_assert(masksub::platform::kKernelDevice == c10::DeviceType::CUDA);
static_assert(std::is_same_v<masksub::platform::DeviceGuard, c10::cuda::CUDAGuard>);
"""


def test_the_real_platform_header_is_the_cuda_one(tmp_path):
    header = (CSRC / "platform" / "masksub_platform.h").read_text()
    result = compile_platform_header(tmp_path, header, user=REAL_PLATFORM_CHECKS)
    assert result.returncode == 0, result.stderr[-3000:]


# -> tests/test_setup.py (tools/cuda_home.py). Kills H01 (CUDA_PATH ignored), H02 (a CUDA_HOME without bin/nvcc, as a
# conda environment's may be, taken anyway), H03 (a wrapper's exec target taken although no nvcc is there), H05 (the
# nvcc on PATH not resolved: a /usr/bin/nvcc symlink to the toolkit's gave /usr).
def test_find_cuda_home_checks_each_candidate_for_nvcc(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path)
    (toolkit / "bin" / "nvcc").write_bytes(b"\x7fELF binary")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("CUDA_PATH", str(toolkit))
    assert find_cuda_home(str(tmp_path / "missing-nvcc"), fallback="") == toolkit  # CUDA_PATH counts
    monkeypatch.delenv("CUDA_PATH")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-nvcc-here"))
    symlink = tmp_path / "usr" / "bin" / "nvcc"
    symlink.parent.mkdir(parents=True)
    symlink.symlink_to(toolkit / "bin" / "nvcc")
    assert find_cuda_home(str(symlink), fallback="") == toolkit  # past the CUDA_HOME without nvcc; resolved
    wrapper = tmp_path / "wrapper" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {tmp_path}/gone/bin/nvcc "$@"\n')
    assert find_cuda_home(str(wrapper), fallback=str(toolkit)) == toolkit.resolve()  # a dead target: the fallback


# Kills the mutant left open on 2026-12-07 (tools/cuda_home.py without `os.environ.get(variable) and`: an empty
# CUDA_HOME, as `export CUDA_HOME=` leaves it, read as "." wherever the build runs from a folder with bin/nvcc)
def test_an_empty_cuda_home_is_unset_not_the_current_folder(tmp_path, monkeypatch):
    fake_toolkit(tmp_path)
    monkeypatch.chdir(tmp_path / "cuda-13.0")  # bin/nvcc here
    monkeypatch.setenv("CUDA_HOME", "")
    monkeypatch.setenv("CUDA_PATH", "")
    assert find_cuda_home(str(tmp_path / "missing-nvcc"), fallback="") is None


# helper-328 (a user's install probes): MASKSUB_BUILD_CUDA=off built the extension, =yes / =true made a forced build
# optional (a failure then installed without it, silently), =2 or a typo meant "when possible". Each is read or refused.
@pytest.mark.parametrize(
    ("value", "forced"), [("yes", True), ("TRUE", True), ("on", True), ("off", False), ("No", False)]
)
def test_the_build_switch_reads_yes_and_no_and_refuses_the_rest(monkeypatch, value, forced):
    setup = load_setup_module()
    monkeypatch.setattr(setup, "find_cuda_home", lambda: None)  # no toolkit: a forced build must fail, loudly
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", value)
    if forced:
        with pytest.raises(SystemExit, match=f"MASKSUB_BUILD_CUDA={value} but the extension cannot be built"):
            setup.extension_modules()
    else:
        assert setup.cuda_extension_plan() == (False, f"MASKSUB_BUILD_CUDA={value}")
    for typo in ("2", "yes please", "-1"):
        monkeypatch.setenv("MASKSUB_BUILD_CUDA", typo)
        with pytest.raises(SystemExit, match=f"MASKSUB_BUILD_CUDA='{typo}' is not understood"):
            setup.extension_modules()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", " ")  # set but empty: unset
    assert setup.build_switch() is None


def gencode_flags(extension) -> list[str]:
    return [flag for flag in extension.extra_compile_args["nvcc"] if flag.startswith("-gencode")]


SM80_PTX, SM90A = "-gencode=arch=compute_80,code=[sm_80,compute_80]", "-gencode=arch=compute_90a,code=sm_90a"


# helper-328: the -gencode flags make torch ignore TORCH_CUDA_ARCH_LIST, so a user's "10.0" silently built sm_80 and
# sm_90a; MASKSUB_CUDA_ARCHS="8.0" or "garbage" reached nvcc as compute_8.0 (an automatic build then failed after
# minutes and installed without the extension), "70" too (CUDA 13's nvcc has no sm_70), and "" built no arch at all.
@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("MASKSUB_CUDA_ARCHS", "8.0", [SM80_PTX]),
    ("MASKSUB_CUDA_ARCHS", "", [SM80_PTX, SM90A]),  # set but empty: the default
    ("MASKSUB_CUDA_ARCHS", "9.0a", [SM90A]),
    ("TORCH_CUDA_ARCH_LIST", "8.0 8.6", [SM80_PTX, "-gencode=arch=compute_86,code=sm_86"]),
    ("TORCH_CUDA_ARCH_LIST", "10.0", ["-gencode=arch=compute_100,code=[sm_100,compute_100]"]),
    ("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX", [SM80_PTX, SM90A, "-gencode=arch=compute_90,code=compute_90"]),
])  # fmt: skip
def test_the_archs_are_read_from_either_variable_in_either_spelling(monkeypatch, variable, value, expected):
    other = "TORCH_CUDA_ARCH_LIST" if variable == "MASKSUB_CUDA_ARCHS" else "MASKSUB_CUDA_ARCHS"
    monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(variable, value)
    assert gencode_flags(planned_extension(monkeypatch)[1]) == expected


@pytest.mark.parametrize(("value", "why"), [
    ("garbage", "'garbage' is not a compute capability"),
    ("80;7.0", "'7.0' is below 8.0"),
    ("8.0;9.0+PTX;sm_100", "'sm_100' is not a compute capability"),
    ("800", "'800' is not a compute capability"),  # (helper-333: compute_800 reached nvcc)
])  # fmt: skip
def test_archs_that_nvcc_cannot_build_are_refused_before_the_build(monkeypatch, value, why):
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", value)
    setup = load_setup_module()
    monkeypatch.setattr(setup, "cuda_extension_plan", lambda: (True, "test"))
    monkeypatch.delenv("MASKSUB_BUILD_CUDA", raising=False)  # even an automatic build: the user asked for these
    with pytest.raises(SystemExit, match=f"MASKSUB_CUDA_ARCHS='{re.escape(value)}': {why}"):
        setup.extension_modules()


# torch's variable is often set for every build of an image: what this build cannot take is left out, saying so
@pytest.mark.parametrize(("value", "expected"), [
    ("7.0 7.5 8.0 8.6 9.0+PTX", [SM80_PTX, "-gencode=arch=compute_86,code=sm_86", SM90A,
                                  "-gencode=arch=compute_90,code=compute_90"]),
    ("Ampere;native", [SM80_PTX, SM90A]),
])  # fmt: skip
def test_torch_arch_list_entries_below_8_0_or_named_are_left_out_saying_so(monkeypatch, capfd, value, expected):
    monkeypatch.delenv("MASKSUB_CUDA_ARCHS", raising=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    assert gencode_flags(planned_extension(monkeypatch)[1]) == expected
    assert f"TORCH_CUDA_ARCH_LIST={value!r}: left out" in capfd.readouterr().err
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "80")  # ours wins over torch's
    assert gencode_flags(planned_extension(monkeypatch)[1]) == [SM80_PTX]


# helper-328: the extension carries the digest of the sources it was built from; the package compares it with csrc/
def test_the_extension_is_stamped_with_the_digest_of_its_sources(monkeypatch):
    from masksub_kernels._sources import sources_digest

    _, extension = planned_extension(monkeypatch)
    assert f"-DMASKSUB_SOURCES_DIGEST={sources_digest(CSRC)}" in extension.extra_compile_args["cxx"]
    assert (
        'm.attr("SOURCES_DIGEST") = MASKSUB_STRINGIFY(MASKSUB_SOURCES_DIGEST);' in (CSRC / "bindings.cpp").read_text()
    )


# helper-328: CUDA_HOME=/nowhere (a typo, a removed toolkit) was passed over in silence: the toolkit on PATH was built
# with, or "no CUDA toolkit found (set CUDA_HOME ...)" told a user who had set it to set it
@pytest.mark.parametrize("variable", ["CUDA_HOME", "CUDA_PATH"])  # (CUDA_PATH: helper-332's S12)
def test_a_cuda_home_without_nvcc_is_named_in_the_plan(monkeypatch, tmp_path, variable):
    setup = setup_with_cuda_torch(monkeypatch)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))
    monkeypatch.setattr(setup, "find_cuda_home", lambda: None)
    assert f"{variable}={tmp_path / 'nowhere'} passed over: no bin/nvcc there" in setup.cuda_extension_plan()[1]
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))  # (the plan exports the toolkit it found)
    monkeypatch.setattr(setup, "find_cuda_home", lambda: str(fake_toolkit(tmp_path)))
    build, reason = setup.cuda_extension_plan()
    assert build and reason.startswith(
        f"CUDA toolkit {tmp_path / 'cuda-13.0'}; {variable}={tmp_path / 'nowhere'} passed"
    )


def test_cuda_path_is_not_named_where_cuda_home_gave_the_toolkit(monkeypatch, tmp_path):
    # CUDA_PATH is read after CUDA_HOME (tools/cuda_home.py): with CUDA_HOME holding nvcc it is not looked at, so a
    # CUDA_PATH without one (another tool's setting) was named "passed over" beside the toolkit actually used
    setup = setup_with_cuda_torch(monkeypatch)
    toolkit = fake_toolkit(tmp_path)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "nowhere"))
    monkeypatch.setattr(setup, "find_cuda_home", lambda: str(toolkit))
    build, reason = setup.cuda_extension_plan()
    assert build and "passed over" not in reason and reason.startswith(f"CUDA toolkit {toolkit}, torch")


# Kills S01 (setup.py:81 SWITCH_OFF without "false": MASKSUB_BUILD_CUDA=false then a SystemExit) and any other value
# dropped from SWITCH_ON / SWITCH_OFF (the existing test samples yes/TRUE/on/off/No only)
@pytest.mark.parametrize("value", ["1", "true", "True", "YES", "on", "0", "false", "FALSE", "no", "Off"])
def test_every_documented_build_switch_value_is_read(monkeypatch, value):
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", f" {value} ")
    assert setup.build_switch() is (value.lower() in ("1", "true", "yes", "on"))


# Kills S04 (_ARCH without re.IGNORECASE: "9.0A" / "+ptx" refused), S07 (no de-duplication: "80" twice),
# S10 (the "a" suffix dropped: 100a built as sm_100), S11 (the suffix not lower-cased: compute_90A) and
# S14 (the source always reported as "the default")
def test_arch_spellings_are_normalised_and_deduplicated(monkeypatch):
    setup = load_setup_module()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "80, 8.0 9.0A;100a 12.0+ptx")
    assert setup.cuda_archs() == (["80", "90a", "100a", "120"], {"120"}, "MASKSUB_CUDA_ARCHS")
    monkeypatch.delenv("MASKSUB_CUDA_ARCHS")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0 8.0+PTX")
    assert setup.cuda_archs() == (["80"], {"80"}, "TORCH_CUDA_ARCH_LIST")


# Kills S08 (a MASKSUB_CUDA_ARCHS of spaces only chosen over TORCH_CUDA_ARCH_LIST: the default built, 10.0 ignored)
def test_a_blank_masksub_cuda_archs_defers_to_torch_cuda_arch_list(monkeypatch):
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "  ")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "10.0")
    assert setup.cuda_archs() == (["100"], set(), "TORCH_CUDA_ARCH_LIST")


# Kills S09 (setup.py "+PTX" branch without `arch != ptx_arch`: "8.0+PTX" added a second compute_80 PTX target)
def test_ptx_asked_for_the_lowest_arch_is_not_compiled_twice(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "8.0+PTX")
    assert gencode_flags(planned_extension(monkeypatch)[1]) == [SM80_PTX]


# Kills S19 (extension_modules' `forced = build_switch() is True` -> `is not False`: an automatic build, the
# switch unset, failed loudly where it cannot build instead of installing without the extension)
@pytest.mark.parametrize("value", [None, "", "0"])
def test_an_unforced_build_without_a_toolkit_installs_without_the_extension(monkeypatch, capfd, value):
    setup = load_setup_module()
    if value is None:
        monkeypatch.delenv("MASKSUB_BUILD_CUDA", raising=False)
    else:
        monkeypatch.setenv("MASKSUB_BUILD_CUDA", value)
    monkeypatch.setattr(setup, "find_cuda_home", lambda: None)
    assert setup.extension_modules() == ([], {})
    assert "skipping the CUDA extension masksub_kernels._C" in capfd.readouterr().err


@pytest.mark.parametrize(("hip", "kind"), [(None, "a CPU-only build"), ("6.4.1", "a ROCm (HIP) build")])
def test_a_torch_without_cuda_is_named_by_its_kind(monkeypatch, hip, kind):
    torch = pytest.importorskip("torch")
    setup = load_setup_module()
    monkeypatch.delenv("MASKSUB_BUILD_CUDA", raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)
    assert setup.cuda_extension_plan() == (False, f"torch {torch.__version__} is {kind}")
