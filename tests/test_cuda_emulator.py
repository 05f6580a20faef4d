"""The CUDA emulator (tools/cuda_emulator.py, csrc/emulator/): the launch rewrite, the execution model
on probe kernels (barriers, races made visible, deadlocks, shuffles, launch limits, cub's sort and scan), and its
place as the ``cuda`` backend for CPU tensors. The ops' own tests run the ``cuda`` backend on it (tests/ops)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ASAN_TEST, CUDA_EMULATED

import masksub_kernels as mk
from masksub_kernels import _backend
from tools import cuda_emulator
from tools.cuda_home import find_cuda_home

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_rewrite_launches():
    source = (
        "k<<<blocks, 256, 0, stream>>>(x, y);\n"
        "select_kernel<THREADS, ITEMS><<<static_cast<unsigned int>(n), THREADS, 0, stream>>>(a);\n"
        "partials<T><<<blocks, dim3(32, 8), 0, stream>>>(\n    b);\n"
        "int shifted = a >> 3 << 2;  // not a launch\n"
    )
    assert cuda_emulator.rewrite_launches(source) == (
        "::masksub_emu::launch(k, blocks, 256, 0, stream)(x, y);\n"
        "::masksub_emu::launch(select_kernel<THREADS, ITEMS>, static_cast<unsigned int>(n), THREADS, 0, stream)(a);\n"
        "::masksub_emu::launch(partials<T>, blocks, dim3(32, 8), 0, stream)(\n    b);\n"
        "int shifted = a >> 3 << 2;  // not a launch\n"
    )


def test_every_csrc_launch_is_rewritten():
    for path in cuda_emulator.CSRC.glob("*.cu*"):
        assert "<<<" not in cuda_emulator.rewrite_launches(path.read_text()), path.name


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    compiler = os.environ.get("CXX", "c++")
    if cuda_emulator.missing() is not None or shutil.which(compiler) is None:
        pytest.skip(cuda_emulator.missing() or f"no host C++ compiler ({compiler})")
    folder = tmp_path_factory.mktemp("probe")
    source = folder / "probe.cpp"
    source.write_text(cuda_emulator.emulated_source((Path(__file__).parent / "cuda_emulator_probe.cu").read_text()))
    binary = folder / "probe"
    command = [compiler, "-std=c++17", *cuda_emulator.compile_flags(), str(source), "-o", str(binary)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return binary


# helper-191's mutation audit of the emulator: the probe's further checks and the emulator mutants each kills
# (emulator.h unless named)
MORE_CHECKS = {
    # Barrier::arrive_and_wait: `while (generation_ == generation) yield();` -> `yield();` (waits one round only)
    "barrier_holds_early_warp",
    # Barrier::drop: `--expected_` removed (exited threads still awaited: a deadlock), and the release in drop()
    # removed (the last thread to exit leaves the others waiting: a deadlock)
    "exited_threads_leave_barrier",
    # shfl_xor_sync: partner `lane ^ lane_mask` -> `lane + lane_mask` (a rotation: the butterfly sum of warp_sum is
    # the same) or -> `lane_mask`; the lane from threadIdx.x instead of the linear index (2-D blocks); every warp on
    # warps[0] (warp_sum's warps hold the same values)
    "shuffle_partner_lanes",
    # run_block: threadIdx.y without `% blockDim.y`, threadIdx.z = 0; Launch: blockIdx.z = 0; gridDim.z = 1
    "indices_3d",
    # valid_configuration: block.z <= 64, grid.y <= 65535, grid.z <= 65535, threads >= 1, grid.x >= 1 dropped, the
    # 1024 limit moved either way; Launch: an invalid configuration reported but run anyway (`return` dropped)
    "launch_limits",
    # atomicAdd returning the new value (the kernels' "last block" tickets compare the old one)
    "atomic_add_returns_old",
    # kFiberStack cut to 16 KiB (a kernel's 128 KiB of locals overflows the fiber's stack)
    "deep_stack",
    # Launch: `stream == nullptr ||` dropped (a launch on the default stream runs on a thread that never handed one out)
    "default_stream_refused_on_a_fresh_thread",
}


def test_probe_kernels(probe):
    result = subprocess.run([str(probe)], capture_output=True, text=True, timeout=60, check=True)
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert set(lines) == {
        "barrier",
        "missing_barrier_visible",
        "warp_sum",
        "indices",
        "block_order",
        "invalid_configuration",
        "error_cleared",
        "stream_checked",
        "radix_sort_stable_striped",
        "exclusive_sum",
        "ex2_within_1ulp_of_rounded_and_perturbed",
        "fdividef_within_2ulp_one_error_per_divisor",
        "fast_math_exact_at_knots",
        "fast_math_flushes",
        *MORE_CHECKS,
    }
    assert all(status == "ok" for status in lines.values()), lines


@pytest.mark.parametrize(
    "case, message",
    [
        # shfl_xor_sync: the `mask != 0xFFFFFFFFu` refusal dropped
        ("shuffle_mask", "only full-warp shuffles"),
        # shfl_xor_sync: the `width != kWarpSize` refusal dropped
        ("shuffle_width", "only full-warp shuffles"),
        # shfl_xor_sync: the exited-lanes check dropped (the shuffle reads an exited lane's stale slot); fiber_main:
        # the warp barrier's drop() removed (the check no longer sees exits: a deadlock instead of this message)
        ("shuffle_exited_lane", "exited lanes"),
        # Block: a partial last warp sized as a full one (live() == 32: a deadlock instead of this message)
        ("shuffle_partial_warp", "exited lanes"),
        # launch: the dynamic shared memory refusal dropped
        ("dynamic_shared", "dynamic shared memory"),
        # lanes that exit after the others entered the shuffle were accepted (helper-191: Barrier::drop released the
        # waiting lanes), where lanes exited before it are refused; fiber_main now refuses an exit while lanes wait
        # (the emulator's rule, stricter than a GPU's: csrc/emulator/emulator.h's model)
        ("shuffle_lane_exits_later", "exited lanes"),
    ],
)
def test_probe_refuses_what_the_emulator_does_not_run(probe, case, message):
    result = subprocess.run([str(probe), "refuse", case], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "not refused" not in result.stdout, result.stdout
    assert "masksub CUDA emulator: " in result.stderr and message in result.stderr, result.stderr[-2000:]


def test_rewrite_launch_bounds():
    source = (
        "__global__ void __launch_bounds__(kThreads) k(int* a, Row<T> (b)) {\n  body(a);\n}\n"
        "template <int N>\n__global__ void __launch_bounds__(N, 1024 / N) t(\n    int x)\n{ y(); }\n"
        "__global__ void __launch_bounds__(64) declared(int a);\n"
        "__global__ void plain(int a) { z(); }\n"
        "// __launch_bounds__(kThreads): a comment\nint helper(int a) { return a; }\n"
        'const char* note = "__launch_bounds__(n) in a string";\n'
        "__global__ void __launch_bounds__(128, 2, 4) c(int a /* (unbalanced */) __attribute__((noinline)) { w(); }\n"
    )
    assert cuda_emulator.rewrite_launch_bounds(source) == (
        "__global__ void __launch_bounds__(kThreads) k(int* a, Row<T> (b)) {"
        " ::masksub_emu::check_launch_bounds(kThreads);\n  body(a);\n}\n"
        "template <int N>\n__global__ void __launch_bounds__(N, 1024 / N) t(\n    int x)\n{"
        " ::masksub_emu::check_launch_bounds(N, 1024 / N); y(); }\n"
        "__global__ void __launch_bounds__(64) declared(int a);\n"  # a declaration: no body
        "__global__ void plain(int a) { z(); }\n"
        "// __launch_bounds__(kThreads): a comment\nint helper(int a) { return a; }\n"  # comments and strings: code
        'const char* note = "__launch_bounds__(n) in a string";\n'  # only is searched
        "__global__ void __launch_bounds__(128, 2, 4) c(int a /* (unbalanced */) __attribute__((noinline)) {"
        " ::masksub_emu::check_launch_bounds(128, 2, 4); w(); }\n"
    )


def test_every_bounded_csrc_kernel_checks_its_bounds():
    # every file stage_sources stages; csrc/ mentions the attribute only where it bounds a kernel
    for path in (p for p in cuda_emulator.CSRC.iterdir() if p.suffix in (".cu", ".cuh", ".h", ".cpp")):
        text = path.read_text()
        bounded = text.count("__launch_bounds__(")
        assert cuda_emulator.emulated_source(text).count("::masksub_emu::check_launch_bounds(") == bounded, path.name


def test_probe_launch_beyond_its_bounds_aborts(probe):
    result = subprocess.run([str(probe), "launch_bounds"], capture_output=True, text=True, timeout=60)
    assert "within bounds ok" in result.stdout and "not checked" not in result.stdout, result.stdout
    assert result.returncode != 0 and "__launch_bounds__" in result.stderr, result.stderr[-2000:]


def test_probe_deadlock_aborts_with_a_message(probe):
    result = subprocess.run([str(probe), "deadlock"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "masksub CUDA emulator: deadlock" in result.stderr
    assert "not detected" not in result.stdout


def test_sanitized_probe_stops_a_misaligned_vector_load(tmp_path):
    # the sanitized build (the ASan run below) also checks alignment: a uint4 load 4 bytes off its 16-byte boundary,
    # which x86 executes silently and a GPU refuses ("misaligned address"), stops the run with a report
    compiler = os.environ.get("CXX", "c++")
    if cuda_emulator.missing() is not None or shutil.which(compiler) is None:
        pytest.skip(cuda_emulator.missing() or f"no host C++ compiler ({compiler})")
    try:
        cuda_emulator.asan_environment()  # the compiler has the sanitizers' runtimes
    except RuntimeError as exc:
        pytest.skip(str(exc))
    source, binary = tmp_path / "probe.cpp", tmp_path / "probe"
    source.write_text(cuda_emulator.emulated_source((Path(__file__).parent / "cuda_emulator_probe.cu").read_text()))
    flags = cuda_emulator.compile_flags("address")
    subprocess.run([compiler, "-std=c++17", *flags, str(source), "-o", str(binary)], check=True, capture_output=True)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    result = subprocess.run([str(binary), "misaligned"], capture_output=True, text=True, timeout=60, env=env)
    assert "aligned load ok" in result.stdout and "not detected" not in result.stdout, result.stdout
    assert result.returncode != 0 and "misaligned address" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not CUDA_EMULATED, reason="the CUDA emulator is not installed in this run")
def test_kernels_under_address_sanitizer():
    """The extension's kernel tests and the public ops on the cuda backend (marked emulated_cuda by conftest.py:
    a session with this test runs them here only), with every load and store of the kernels checked by
    AddressSanitizer and their alignment by UBSan (an unmasked load past a tensor, a 16-byte access off its
    boundary, aborts with a report): ~5 minutes in CI (the build at -O0 about 2, the tests 3)."""
    try:
        asan = cuda_emulator.asan_environment()
    except RuntimeError as exc:
        if os.environ.get("MASKSUB_CUDA_EMULATOR") == "1":
            raise
        pytest.skip(str(exc))
    env = {**os.environ, **asan, "MASKSUB_CUDA_EMULATOR": "1", "PYTHONUNBUFFERED": "1"}
    tests = Path(__file__).parent
    # the tests marked emulated_cuda (tests/conftest.py), which a session with this test runs here only; every
    # failure reported (up to 20), as the session would have
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--maxfail=20"]
    command += [str(tests / "cuda_extension"), str(tests / "ops"), "-m", "emulated_cuda"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500, cwd=tests.parent)
    report = result.stdout[-6000:] + result.stderr[-6000:]
    assert result.returncode == 0, report
    assert "AddressSanitizer" not in report and " passed" in result.stdout, report


@pytest.mark.skipif(not CUDA_EMULATED, reason="the CUDA emulator is not installed in this run")
class TestAsBackend:
    def test_cuda_backend_runs_on_cpu_tensors(self):
        assert "cuda" in mk.available_backends()
        with mk.use_backend("cuda"):
            ids = mk.random_keep_indices(2, 16, 4, seed=3)
        assert mk.last_backend("random_keep_indices") == "cuda"
        with mk.use_backend("torch"):
            assert torch.equal(ids, mk.random_keep_indices(2, 16, 4, seed=3))

    def test_auto_never_picks_it(self):
        with mk.use_backend("auto"):
            assert _backend.resolve_backend("cpu") == "torch"

    def test_bindings_name_the_emulator_in_device_errors(self):
        module = _backend._extensions["cpu"]
        with pytest.raises(RuntimeError, match="device must be a CPU device, got meta"):
            module.select_tokens(0, None, 1, 4, 2, False, False, torch.device("meta"))
        with pytest.raises(RuntimeError, match=r"x must be a CPU tensor \(this is the CUDA emulator\), got meta"):
            module.gather_tokens(torch.empty(1, 4, 2, device="meta"), torch.zeros(1, 2, dtype=torch.long), 0)


# helper-217's mutation audit of the emulator's build tool and the real build's configuration (44 mutants)


def _captured_build(monkeypatch, tmp_path, sanitize=None) -> dict:
    """cuda_emulator.build's call of torch's cpp_extension.load, captured instead of compiled."""
    if cuda_emulator.missing() is not None:
        pytest.skip(cuda_emulator.missing())
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setenv("CUDA_HOME", str(find_cuda_home()))  # build() sets it when unset: restored afterwards
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs))
    cuda_emulator.build(tmp_path / "build", sanitize=sanitize)
    return calls[0]


# -> tests/test_cuda_emulator.py. Kills E09 (stage_sources copies the sources with their launches rewritten but not
# their __launch_bounds__: test_every_bounded_csrc_kernel_checks_its_bounds checks emulated_source, not what is
# staged, and no kernel test launches beyond a bound), E10 (the bindings_*.cpp not compiled) and E02
# (-DMASKSUB_MAX_GRID_BLOCKS=3 dropped: the kernels' grid-stride loops then never run a second round in the tests).
def test_the_emulator_compiles_every_source_as_emulated_source_rewrites_it(monkeypatch, tmp_path):
    call = _captured_build(monkeypatch, tmp_path)
    units = {Path(source).stem: Path(source) for source in call["sources"]}
    originals = {p.stem: p for p in CSRC.iterdir() if p.suffix in (".cu", ".cpp")}
    assert sorted(units) == sorted(originals)
    for stem, unit in units.items():
        assert unit.read_text() == cuda_emulator.emulated_source(originals[stem].read_text()), unit.name
    assert call["extra_cflags"] == cuda_emulator.compile_flags(None) and not call["with_cuda"]
    assert "-DMASKSUB_MAX_GRID_BLOCKS=3" in call["extra_cflags"]
    # torch's nvcc macros (no __half / __nv_bfloat16 operators or conversions): the API subset the real build has
    # (helper-217: the emulator accepted __half arithmetic that nvcc rejects)
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    macros = [flag for flag in COMMON_NVCC_FLAGS if flag.startswith("-D")]
    assert len(macros) >= 4 and set(macros) <= set(call["extra_cflags"])
    assert "-include" in call["extra_cflags"] and f"-I{cuda_emulator.EMULATOR}" in call["extra_cflags"]


# -> tests/test_cuda_emulator.py. Kills E05 (MASKSUB_CUDA_EMULATOR_SANITIZE ignored) and E06 (asan_environment
# without it): either way test_kernels_under_address_sanitizer preloads ASan but loads the unsanitized build, finds
# no report, and passes having checked nothing.
def test_the_address_sanitizer_environment_selects_the_sanitized_build(monkeypatch, tmp_path):
    try:
        environment = cuda_emulator.asan_environment()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("MASKSUB_CUDA_EMULATOR_SANITIZE", environment["MASKSUB_CUDA_EMULATOR_SANITIZE"])
    call = _captured_build(monkeypatch, tmp_path)  # sanitize from the environment, as the ASan run's pytest does
    assert call["name"] == cuda_emulator.MODULE_NAME + "_address"
    assert "-fsanitize=address,alignment" in call["extra_cflags"] and "-O0" in call["extra_cflags"]
    assert call["extra_ldflags"] == ["-fsanitize=address,alignment"]
    monkeypatch.setenv("MASKSUB_CUDA_EMULATOR_SANITIZE", "thread")
    with pytest.raises(ValueError, match="MASKSUB_CUDA_EMULATOR_SANITIZE must be one of"):
        cuda_emulator.sanitizer()


# -> tests/test_cuda_emulator.py. Kills E07 (contraction_flags always empty: the emulator rounds a * b + c twice where
# nvcc's default --fmad=true rounds once, on a CPU that could contract).
def test_the_emulator_contracts_as_nvcc_where_the_cpu_has_fma():
    try:
        cpu_flags = Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if " fma " not in cpu_flags:
        pytest.skip("this CPU has no fma")
    assert "-ffp-contract=fast" in cuda_emulator.compile_flags() and "-mfma" in cuda_emulator.compile_flags()


def _collected(*args: str, **env: str) -> tuple[set[str], int]:
    """The node ids a pytest session of ``args`` would run here (--collect-only), and how many it deselected."""
    environment = {**os.environ, "MASKSUB_CUDA_EMULATOR": "1", **env}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=CSRC.parent, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    deselected = re.search(r"(\d+) deselected", result.stdout)
    return {line for line in result.stdout.splitlines() if "::" in line}, int(deselected[1]) if deselected else 0


@pytest.mark.skipif(not CUDA_EMULATED, reason="the CUDA emulator is not installed in this run")
def test_a_session_with_the_sanitized_run_leaves_the_emulated_cuda_tests_to_it():
    ops, asan = "tests/ops/test_token_grid_mask.py", f"tests/{ASAN_TEST}"
    alone, deselected = _collected(ops)  # a session without the sanitized run runs every test itself
    assert deselected == 0
    emulated = {test for test in alone if "cuda" in test.split("::", 1)[1].lower()}
    assert emulated and all("[cuda" in test for test in emulated)  # (this file's: the backend parameter)
    marked, _ = _collected(ops, "-m", "emulated_cuda")
    assert marked == emulated  # what the sanitized run selects: the cuda tests, no other
    with_it, deselected = _collected(ops, asan)
    assert with_it == (alone - emulated) | {asan} and deselected == len(emulated)
    # a filter that leaves the sanitized run out (a quick run: -m "not slow") leaves them in (helper-350: the
    # deselection ran before pytest's -m and dropped them from both); a loss file's stay in either (fma: -O0 has none)
    quick, deselected = _collected(ops, asan, "-m", "not slow")
    assert quick == alone and deselected == 1
    loss = "tests/cuda_extension/test_cuda_loss_split.py"
    loss_alone, _ = _collected(loss)
    loss_with_it, deselected = _collected(loss, asan)
    assert loss_alone and loss_with_it == loss_alone | {asan} and deselected == 0


def test_a_session_whose_sanitized_run_would_skip_leaves_nothing_to_it(monkeypatch):
    # a compiler without ASan's runtime: test_kernels_under_address_sanitizer skips, so nothing is deselected for it
    import conftest

    class Item:
        def __init__(self, nodeid, marked):
            self.nodeid, self.marked, self.path = nodeid, marked, Path(nodeid.split("::")[0])

        def get_closest_marker(self, name):
            return (name == "emulated_cuda" and self.marked) or None

    class Config:
        class hook:
            @staticmethod
            def pytest_deselected(items):
                deselected.extend(items)

    def no_runtime():
        raise RuntimeError("c++ has no libasan.so")

    items = [Item(f"tests/{ASAN_TEST}", False), Item("tests/ops/test_x.py::test_y[cuda]", True)]
    monkeypatch.setattr(conftest, "CUDA_EMULATED", True)
    for runtime, kept in ((no_runtime, items), (lambda: {}, items[:1])):
        deselected = []
        monkeypatch.setattr(cuda_emulator, "asan_environment", runtime)
        session = list(items)
        conftest._leave_emulated_cuda_to_the_sanitized_run(Config, session)
        assert session == kept and deselected == items[len(kept) :]
