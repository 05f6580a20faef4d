"""The prepared GPU run (benchmarks/gpu_check.sh, benchmarks/gpu_bench.sh): each call fits the device's window.

A dry run (DRY_RUN=1) prints every step with its cap and the result files; from it: the caps add up to under 8
minutes, at most 8 files come back, and every path a step names exists. The step machinery itself
(benchmarks/gpu_lib.sh) is run for real on a throwaway script: results on disk as each step ends, a cap that
stops a step, shell functions under a cap.
"""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["benchmarks/gpu_check.sh", "benchmarks/gpu_bench.sh"]
WINDOW_S = 480  # one call: 8 minutes, inside the device's 10-minute command limit and 15-minute session
SESSION_S = 900  # the device's time per session, start-up included
MAX_FILES = 8  # what the device tool brings back per call
REPO_PATH = re.compile(r"^(tests|benchmarks|masksub_kernels|csrc|docs|tools)/[^*<>]*$|^[\w./-]+\.py$")


def dry_run(script: str, tmp_path: Path) -> list[list[str]]:
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    out = subprocess.run(["bash", script, str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines()]


def budget(lines: list[list[str]]) -> int:
    """Seconds of caps: a foreground step adds its cap; background steps until wait_steps add their largest cap,
    less the foreground caps since the first of them started (those ran beside them)."""
    total = background = started = 0
    for kind, *rest in lines:
        if kind == "step":
            total += int(rest[1])
        elif kind == "step_bg":
            started = total if background == 0 else started
            background = max(background, int(rest[1]))
        elif kind == "wait_steps":
            total, background = total + max(0, background - (total - started)), 0
    assert background == 0, "background steps without wait_steps"
    return total


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_filtered_pytest_step_collects_tests(script, tmp_path):
    # helper-251: a -k expression written over two lines in gpu_check.sh collected nothing (pytest's -k refuses a
    # newline): the GPU run's first phase would have run no test. Each pytest step with a -k, collected here with its
    # own files and expression (its workers and plugins left out), must collect some
    steps = [rest[2:] for kind, *rest in dry_run(script, tmp_path) if kind in ("step", "step_bg")]
    checked = 0
    for command in steps:
        if command[1:3] != ["-m", "pytest"] or "-k" not in command:
            continue
        args, skip = [], 0
        for arg in command[3:]:
            if skip:
                skip -= 1
            elif arg in ("-n", "--dist", "-p"):
                skip = 1
            elif not arg.startswith(("-v", "-r", "--durations")):
                args.append(arg)
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0 and " collected" in out.stdout, (command, out.stdout[-2000:], out.stderr[-2000:])
        checked += 1
    assert checked or script.endswith("gpu_bench.sh")  # gpu_check.sh's first phase filters with -k


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_call_fits_the_window(script, tmp_path):
    lines = dry_run(script, tmp_path)
    *_, last = lines
    assert last[0] == "budget"
    assert budget(lines) == int(last[1]) < WINDOW_S
    files = {rest[0] for kind, *rest in lines if kind in ("step", "step_bg", "output")} | {"summary.txt", "env.txt"}
    assert len(files) <= MAX_FILES and f"({len(files)}):" in last


def test_both_calls_fit_the_session(tmp_path):
    # the device's 15 minutes, start-up included: both calls at their caps leave 2.5 minutes for one start-up, the
    # transfers and each call's set-up outside its steps (the benchmarks' call runs first, so the numbers come back
    # even when the tests' call is cut short, e.g. by a second start-up where the machine was given back between)
    total = sum(budget(dry_run(script, tmp_path)) for script in SCRIPTS)
    assert total <= SESSION_S - 150, total


@pytest.mark.parametrize("script", SCRIPTS)
def test_steps_name_existing_paths_and_commands(script, tmp_path):
    lines = dry_run(script, tmp_path)
    source = (ROOT / script).read_text() + (ROOT / "benchmarks/gpu_lib.sh").read_text()
    steps = [rest for kind, *rest in lines if kind in ("step", "step_bg")]
    assert steps
    for _file, _cap, command, *args in steps:
        # a shell function of the script or its library, or the Python given
        assert command == sys.executable or re.search(rf"^{command}\(\) {{", source, re.M), command
        for arg in args:
            path = arg.split("=", 1)[-1] if arg.startswith("--ignore=") else arg
            if REPO_PATH.match(path):
                assert (ROOT / path).exists(), f"{script} names {path}, which does not exist"


@pytest.mark.parametrize(
    "suites", [None, "loss train", "linear_loss", "train linear_loss grid_mask loss", "train", "cuda", "train cuda"]
)
def test_gpu_bench_builds_beside_the_suites_that_do_not_need_the_extension(suites, tmp_path, monkeypatch):
    # the masksub[cuda] provider of the loss, token_select and grid_mask suites needs _C, and so do the cuda
    # backend's tests and the sanitizers (cuda, last by default); the fused-linear suite (first by default), its
    # profile, probe, ncu and numerics, and train do not: the build starts in the background after the fused-linear
    # suite (its host times measured without nvcc beside them: helper-163), or first where another suite comes
    # first, and is waited for just before the first step that needs it
    if suites is not None:
        monkeypatch.setenv("SUITES", suites)
    lines = dry_run(SCRIPTS[1], tmp_path)
    commands = [(kind, " ".join(rest[2:])) for kind, *rest in lines if kind in ("step", "step_bg", "wait_steps")]
    files = [rest[0] if rest else None for kind, *rest in lines if kind in ("step", "step_bg", "wait_steps")]
    builds = [i for i, (kind, c) in enumerate(commands) if c == "build_if_missing"]
    needs = [i for i, (_, c) in enumerate(commands) if re.search(r"--suites (loss|token_select|grid_mask)$", c)]
    needs = sorted(needs + [i for i, (kind, _) in enumerate(commands) if kind == "step" and files[i] == "cuda.log"])
    waits = [i for i, (kind, _) in enumerate(commands) if kind == "wait_steps"]
    assert len(builds) == (1 if needs else 0) and len(waits) == (1 if needs else 0)
    linear = [i for i, (_, c) in enumerate(commands) if c.endswith("--suites linear_loss")]
    first = 1 if not linear or linear[0] > 1 else 2  # right after env, or after the fused-linear suite run first
    if needs:
        assert commands[builds[0]][0] == "step_bg" and builds[0] == first and files[builds[0]] == "cuda.log"
        assert waits[0] == needs[0] - 1  # waited for just before the first suite that needs it
    after = [i + 1 + (builds == [i + 1]) for i in linear]  # the suite's own steps, right after it
    profile = [i for i, (_, c) in enumerate(commands) if "gpu_profile.py --only linear" in c]
    gemm = [i for i, (_, c) in enumerate(commands) if "gemm_probe.py" in c]
    ncu = [i for i, (_, c) in enumerate(commands) if c == "ncu_linear"]
    numerics = [i for i, (_, c) in enumerate(commands) if "linear_loss_numerics.py" in c]
    assert after == profile and [i + 1 for i in after] == gemm and [i + 2 for i in after] == ncu
    assert [i + 3 for i in after] == numerics and all(files[i] == "gemm.log" for i in gemm)


def test_gpu_bench_profiles_the_fused_linear_kernels_by_their_names():
    # ncu_linear's kernel filter names the Triton kernels of the fused-linear op (a rename would profile none of them)
    from triton.runtime.jit import KernelInterface  # JITFunction, or the interpreter's InterpretedFunction

    from masksub_kernels.ops import _linear_loss_grads, _linear_loss_kernels, _loss_fwd_bwd, _masksub_loss_kernels

    source = (ROOT / SCRIPTS[1]).read_text()
    names = re.search(r"regex:\^_\(([a-z_|]+)\)_kernel\|", source).group(1).split("|")
    assert sorted(names) == ["dh", "dh_sum", "dw", "fwd", "loss_bwd", "loss_fwd", "loss_fwd_bwd", "scale"]
    modules = (_masksub_loss_kernels, _loss_fwd_bwd, _linear_loss_kernels, _linear_loss_grads)
    for name in names:
        kernel = next(getattr(m, f"_{name}_kernel") for m in modules if hasattr(m, f"_{name}_kernel"))
        assert isinstance(kernel, KernelInterface) and kernel.fn.__name__ == f"_{name}_kernel", name
    # every kernel the fused-linear op launches is matched (helper-163: the chunk's one-launch loss kernel and the
    # backward's scaling were not, so ncu profiled none of the loss kernels)
    pattern = re.compile(re.search(r"'regex:([^']+)'", source).group(1))
    launched = [v.fn.__name__ for m in modules for v in vars(m).values() if isinstance(v, KernelInterface)]
    launched = [name for name in launched if name.endswith("_kernel")]  # (the others: @jit helpers, inlined)
    assert launched and all(pattern.search(name) for name in launched), launched
    # without ncu (here) the step says so and succeeds: the rest of the call goes on
    if shutil.which("ncu", path="/usr/bin:/bin"):  # a GPU machine's image may have it there (helper-106)
        return
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    command = ["bash", SCRIPTS[1], "__call", "ncu_linear"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "ncu: not found" in out.stdout, out.stderr


NCU_STUB = """#!/usr/bin/env bash
# a stand-in for Nsight Compute's CLI: lists sections, or echoes its options and runs the application it is given
if [[ $1 == --list-sections ]]; then printf '%s\\n' $SECTIONS; exit 0; fi
printf 'ncu-arg %s\\n' "$@"
while [[ $# -gt 0 && $1 != "$PYTHON" ]]; do shift; done
"$@" || exit
echo '"ID","Kernel Name","gpu__time_duration.sum"'
[[ -n ${LOCKED:-} ]] && { echo '==ERROR== ERR_NVGPUCTRPERM - no access'; exit 1; }
exit 0
"""


@pytest.mark.parametrize("case", ["every section", "a section missing", "counters locked"])
def test_gpu_bench_ncu_step_runs_the_workload_under_ncu(case, tmp_path):
    # the ncu_linear step's own lines, with a stand-in ncu on PATH: one run of gpu_ncu.py (here on the CPU) with the
    # sections this ncu lists (else its 'detailed' set), base units, between markers; locked counters said plainly
    stub = tmp_path / "bin" / "ncu"
    stub.parent.mkdir()
    stub.write_text(NCU_STUB)
    stub.chmod(0o755)
    sections = "SpeedOfLight MemoryWorkloadAnalysis MemoryWorkloadAnalysis_Chart Occupancy LaunchStats"
    sections += " WarpStateStats" + ("" if case == "a section missing" else " InstructionStats")
    # CUDA_VISIBLE_DEVICES empty: the workload's tiny CPU shape on a GPU machine too
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "SECTIONS": sections, **({"LOCKED": "1"} if case == "counters locked" else {}),
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    command = ["bash", SCRIPTS[1], "__call", "ncu_linear"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    args = [line.removeprefix("ncu-arg ") for line in lines if line.startswith("ncu-arg ")]
    assert args[:2] == ["--profile-from-start", "off"] and "--print-units" in args and "base" in args
    begin = next(line for line in lines if line.startswith("== ncu_csv begin"))
    if case == "a section missing":
        assert begin == "== ncu_csv begin --set detailed" and args[-4:-2] == ["--set", "detailed"]
    else:
        assert begin.count("--section") == 7 and args.count("--section") == 7
    assert args[-2:] == [sys.executable, "benchmarks/gpu_ncu.py"]
    assert any(line.startswith("gpu_ncu:") and line.endswith("done") for line in lines)  # the workload ran
    assert '"ID","Kernel Name","gpu__time_duration.sum"' in lines
    locked = "ncu: no access to the GPU's performance counters (ERR_NVGPUCTRPERM)" in lines
    assert (out.returncode, lines.index(f"== ncu_csv end rc={out.returncode}") > 0, locked) == (
        (1, True, True) if case == "counters locked" else (0, True, False)
    ), out.stderr


def test_gpu_bench_refuses_an_unknown_suite(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "SUITES": "loss nosuch"}
    out = subprocess.run(["bash", SCRIPTS[1], str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "unknown suite 'nosuch'" in out.stderr and "step" not in out.stdout


def test_the_first_call_runs_the_cuda_tests_and_both_sanitizers_after_the_suites(tmp_path):
    # helper-122's finding 1: the second call is the one a late send or a second start-up cuts, so what the libstdc++
    # fix needs verified on a GPU (the cuda backend's refusals, memcheck, racecheck) runs in the first, after the
    # benchmark suites, with the extension that call built; the second neither builds nor runs them
    steps = [rest for kind, *rest in dry_run(SCRIPTS[1], tmp_path) if kind in ("step", "step_bg")]
    commands = [" ".join(step[2:]) for step in steps]
    kinds = [kind for kind, *rest in dry_run(SCRIPTS[1], tmp_path) if kind in ("step", "step_bg")]
    cuda = [i for i, step in enumerate(steps) if step[0] == "cuda.log" and kinds[i] == "step"]  # (the build's too)
    suites = [i for i, c in enumerate(commands) if "--suites" in c]
    assert len(cuda) == 3 and cuda == list(range(len(steps) - 3, len(steps))) and max(suites) < min(cuda)
    assert "tests/cuda_extension" in commands[cuda[0]] and "pytest" in commands[cuda[0]]
    for tool, i in (("memcheck", cuda[1]), ("racecheck", cuda[2])):
        assert commands[i].startswith(f"sanitize {tool} tests/cuda_extension"), tool
    assert all("--no-plot" in commands[i] for i in suites)  # the .png: drawn on the CPU afterwards (--report-only)
    check = [rest[2:] for kind, *rest in dry_run(SCRIPTS[0], tmp_path) if kind in ("step", "step_bg")]
    assert not any(c[0] in ("build_extension", "sanitize") or "tests/cuda_extension" in c for c in check), check


def test_set_up_commands_outside_the_steps_are_time_capped(tmp_path):
    # helper-122's finding 10: the wheels' pip install and the CUDA and plugin probes run outside any step; a hang
    # there (CUDA's initialisation) would last until the device call's limit, with no summary.txt
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\nsleep 60\n")  # a Python that hangs at everything
    stub.chmod(0o755)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "demo-1.0-py3-none-any.whl").write_text("")
    script = tmp_path / "benchmarks" / "demo.sh"  # setup_run works from the script's parent folder
    script.parent.mkdir()
    script.write_text(f'source {ROOT}/benchmarks/gpu_lib.sh\nsetup_run "$@"\nstep a.log 5 true\nfinish\n')
    env = {**os.environ, "PYTHON": str(stub), "SETUP_S": "1", "CAP_SCALE": "1"}
    result = subprocess.run(["bash", str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                            timeout=40)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip could not install" in result.stdout and (tmp_path / "out" / "summary.txt").is_file()


def test_pytest_gets_a_per_test_timeout_where_pytest_timeout_is_installed(tmp_path):
    # finding 10: a hung test fails after 60 s (x CAP_SCALE) instead of taking its step's cap; where the plugin is
    # missing (this machine), no --timeout, which pytest would refuse. Also in the steps' `SCRIPT __call` shells
    # (the plugin's presence and absence made by stand-ins first on the path, whatever this machine has: the GPU
    # machine has pytest-timeout; and the outer run's CAP_SCALE dropped, which gpu_check.sh exports: helper-147)
    plugin, hidden = tmp_path / "plugin", tmp_path / "hidden"
    for folder, text in ((plugin, ""), (hidden, "raise ImportError('hidden from this test')\n")):
        folder.mkdir()
        (folder / "pytest_timeout.py").write_text(text)
    outer = {name: value for name, value in os.environ.items() if name != "CAP_SCALE"}
    for path, expected in ((str(hidden), []), (str(plugin), ["--timeout", "480"])):
        env = {**outer, "DRY_RUN": "1", "PYTHON": sys.executable, "PYTHONPATH": path}
        out = subprocess.run(["bash", SCRIPTS[0], str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        tests = [shlex.split(line) for line in out.splitlines() if " -m pytest " in line]
        assert len(tests) == 5 and all((("--timeout" in t) == bool(expected)) for t in tests), out
        assert all(t[t.index("--timeout") : t.index("--timeout") + 2] == expected for t in tests if expected)
    env = {**os.environ, "PYTEST_TIMEOUT_S": "7", "PYTHON": sys.executable}
    out = subprocess.run(["bash", SCRIPTS[1], "__call", "declare", "-p", "PYTEST"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert '"--timeout" [' in out and '="7"' in out, out


def test_step_machinery_keeps_results_of_finished_steps(tmp_path):
    script = tmp_path / "demo.sh"
    script.write_text(
        f"source {ROOT}/benchmarks/gpu_lib.sh\n"
        "greet() { echo hello from a function; }\n"
        'setup_run "$@"\n'
        "step a.log 5 greet\n"
        "step b.log 1 bash -c 'echo partial; sleep 30; echo the end'\n"
        "step a.log 5 false\n"
        "finish\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "CAP_SCALE": "1", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1  # the first step that failed on its own (the cap's 124 is not a failure)
    assert sorted(p.name for p in out.iterdir()) == ["a.log", "b.log", "summary.txt"]
    assert "hello from a function" in (out / "a.log").read_text()
    log = (out / "b.log").read_text()
    assert "partial\n" in log and "the end\n" not in log and "stopped by its cap of 1 s" in log
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary[:3]] == [["a.log", "rc=0"], ["b.log", "rc=124"], ["a.log", "rc=1"]]
    assert summary[3].startswith("budget 11 s")
    # only stopped by a cap, in the foreground or the background: exit status 75 (124 would read as the whole call
    # timed out), 0 when every step ran to its end; a command's own 124 before its cap is its failure (1)
    for steps, status in (("step b.log 1 sleep 30\nstep a.log 5 true\n", 75), ("step_bg b.log 1 sleep 30\n", 75),
                          ("step a.log 5 true\n", 0), ("step a.log 5 bash -c 'exit 124'\n", 1),
                          ("step_bg a.log 5 bash -c 'exit 124'\n", 1)):  # fmt: skip
        script.write_text(f'source {ROOT}/benchmarks/gpu_lib.sh\nsetup_run "$@"\n{steps}wait_steps\nfinish\n')
        result = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == status, (steps, result.stdout, result.stderr)


def test_carried_wheels_are_installed_for_the_steps(tmp_path):
    # gpu_lib.sh installs the wheels of .whl/ (the device call's carry: Liger-Kernel) into a folder on PYTHONPATH,
    # which every step then imports from
    package = "masksub_demo_wheel"
    wheel = tmp_path / ".whl" / f"{package}-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    dist = f"{package}-1.0.dist-info"
    files = {
        f"{package}/__init__.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{dist}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"]))
    script = tmp_path / "benchmarks" / "demo.sh"  # setup_run works from the script's parent folder
    script.parent.mkdir()
    script.write_text(
        f"source {ROOT}/benchmarks/gpu_lib.sh\n"
        'setup_run "$@"\n'
        f'step a.log 30 "$PY" -c "import {package}; print({package}.VALUE)"\n'
        "finish\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "CAP_SCALE": "1", "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "42" in (out / "a.log").read_text()


@pytest.mark.parametrize("workers", [0, 2])
def test_failures_are_reported_as_they_happen(tmp_path, workers):
    # benchmarks/failures_now.py: a capped step never reaches pytest's summary, so each failure prints at once
    (tmp_path / "test_demo.py").write_text(
        "def test_passes():\n    pass\n\n\ndef test_fails():\n    assert 1 + 1 == 3, 'the reason'\n\n\n"
        "def test_after():\n    pass\n"
    )
    if workers and importlib.util.find_spec("xdist") is None:
        pytest.skip("pytest-xdist is not installed")
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "benchmarks.failures_now", "-p",
               "no:randomly", str(tmp_path / "test_demo.py"), *(["-n", str(workers)] if workers else [])]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode == 1
    assert out.stderr.count("test_demo.py::test_fails (call), reported as it happened") == 1, log  # once, xdist too
    assert "AssertionError: the reason" in out.stderr and "test_passes" not in out.stderr
    # printed when the test failed: before the next test's outcome (stdout and stderr interleave in the log)
    merged = subprocess.run(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=120).stdout  # fmt: skip
    if not workers:  # in order (xdist's workers run the tests of a file in parallel)
        assert merged.index("reported as it happened") < merged.index("test_after PASSED"), log


def test_gemm_probe_overlap_rows_run_the_loops_calls_on_two_streams():
    # benchmarks/gemm_probe.py's overlap rows (issue 13's second stream) run only where a GPU is; their calls are
    # the loop's helpers and its loss launch, with the device's streams: run here on the test device (torch.cpu's
    # streams on the CPU: the same lines in order), so that a GPU run spends no time on a call that cannot run
    import torch

    from benchmarks import gemm_probe as probe
    from masksub_kernels import triton_interpreted
    from tests.conftest import DEVICE

    if DEVICE.type == "cpu" and not triton_interpreted():
        pytest.skip("the loss launch is a Triton kernel: a GPU or the interpreter")
    torch.manual_seed(0)
    cases = probe.overlap_cases(DEVICE, 8, 16, 42)  # 2 x 4 rows, C with a 2-class tail past the matmuls' head
    assert list(cases) == [probe.LOSS, probe.LOSS_HALF, probe.DH, probe.DH_HALF, probe.DW, probe.LOGITS, probe.NOW,
                           probe.HALVES, probe.HALVES_BESIDE, probe.HALVES_BESIDE_HIGH,
                           probe.HALVES_BESIDE_MATMULS_HIGH, probe.TWO_BUFFERS, probe.TWO_BUFFERS_BESIDE,
                           probe.TWO_BUFFERS_BESIDE_HIGH]  # fmt: skip
    before = torch.get_device_module(DEVICE).current_stream()
    for call in cases.values():
        call()
    assert torch.get_device_module(DEVICE).current_stream() == before  # the side stream left


def test_gemm_probe_overlap_summary_reads_the_rows():
    from benchmarks import gemm_probe as probe

    us = {probe.LOSS: 80.0, probe.NOW: 400.0, probe.HALVES: 410.0, probe.HALVES_BESIDE: 370.0,
          probe.HALVES_BESIDE_MATMULS_HIGH: 360.0, probe.TWO_BUFFERS: 500.0,
          probe.TWO_BUFFERS_BESIDE: 440.0}  # fmt: skip
    assert probe.overlap_summary(us, 43) == [
        f"overlap: {probe.HALVES}: saves -10.0 us a chunk against now, -0.43 ms over 43 chunks",
        f"overlap: {probe.HALVES_BESIDE}: saves +30.0 us a chunk against now, +1.29 ms over 43 chunks",
        f"overlap: {probe.HALVES_BESIDE_MATMULS_HIGH}: saves +40.0 us a chunk against now, +1.72 ms over 43 chunks",
        f"overlap: {probe.HALVES_BESIDE}: +40.0 us a chunk against the halves on one stream",
        f"overlap: {probe.HALVES_BESIDE_MATMULS_HIGH}: +50.0 us a chunk against the halves on one stream",
        f"overlap: {probe.TWO_BUFFERS_BESIDE}: hides 60.0 us of the loss launch's 80.0 us (75%)",
    ]  # a failed row (absent) says nothing
    assert probe.overlap_summary({}, 43) == []


def test_gemm_probe_finds_its_sibling_past_a_regular_benchmarks_package(tmp_path, monkeypatch):
    # `benchmarks` here is a namespace package (no __init__.py): a regular package of that name anywhere on sys.path,
    # even after ours (some wheels ship one into site-packages), wins the import, and the GPU run's overlap rows
    # would all print "failed" (helper-240 L3). The probe loads benchmarks/gpu_ncu.py by its path instead
    import sys

    from benchmarks import gemm_probe as probe

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    for name in [n for n in sys.modules if n.split(".")[0] in ("benchmarks", "_gemm_probe_gpu_ncu")]:
        monkeypatch.delitem(sys.modules, name)
    import benchmarks

    assert benchmarks.__file__ == str(tmp_path / "benchmarks" / "__init__.py")  # the shadow wins the import
    assert callable(probe._sibling("gpu_ncu").chunk_loss_launch)
    from masksub_kernels import triton_interpreted
    from tests.conftest import DEVICE

    if DEVICE.type == "cuda" or triton_interpreted():  # the overlap rows' own import, under the shadow
        assert probe.NOW in probe.overlap_cases(DEVICE, 8, 16, 42)


def test_gemm_probe_halves_plan_one_launch_where_the_rule_would_split():
    # the overlap rows' halves (192 rows per branch at BERT's chunk, a 132-SM GPU) get a class split from the loss
    # forward's rule, so a derived plan is none (two launches, helper-240: 4 per chunk against the chunk's one);
    # chunk_loss_launch(split=False) plans one launch for them, as the chunk's 384 rows have. Both run here: the
    # split's fallback (launch=None) and the one launch write what a launch derived at the call writes
    import torch

    from benchmarks.gpu_ncu import chunk_loss_launch
    from masksub_kernels import triton_interpreted
    from masksub_kernels.ops import _loss_fwd_bwd
    from masksub_kernels.ops import masksub_loss as loss_ops
    from tests.conftest import DEVICE

    if DEVICE.type == "cpu" and not triton_interpreted():
        pytest.skip("the loss launch is a Triton kernel: a GPU or the interpreter")
    buffer = torch.empty(768, 30528, device="meta")  # BERT's halves: [z_a; s_a; z_b; s_b] of 192 rows
    narrow = buffer.view(torch.bfloat16)
    z, s, into = buffer[:192, :30522], buffer[192:384, :30522], (narrow[:192, :30522], narrow[192:384, :30522])
    grads, labels = torch.empty(192, device="meta"), torch.empty(192, dtype=torch.long, device="meta")
    bias = torch.empty(30522, dtype=torch.bfloat16, device="meta")
    assert loss_ops.class_splits(192, 30522, 1024, 132)[0] == 2
    assert _loss_fwd_bwd.one_launch(grads, grads, z, s, labels, False, 0.0, 1.0, None, into, bias, True) is None
    torch.manual_seed(0)
    source = torch.randn(4, 1152, device=DEVICE) * 3  # 2 rows per branch of 1100 classes: split on this device
    split, one, derived = source.clone(), source.clone(), source.clone()
    calls = [
        chunk_loss_launch(split, 2, 1100, derive_each_call=False),
        chunk_loss_launch(one, 2, 1100, derive_each_call=False, split=False),
        chunk_loss_launch(derived, 2, 1100),
    ]
    assert calls[0].launch is None and calls[1].launch is not None  # a split, and one launch
    for call in calls:
        call()
    assert torch.equal(split, derived) and not torch.equal(split, source)
    gradients = [x.view(torch.bfloat16)[:, :1100].float() for x in (one, derived)]
    torch.testing.assert_close(*gradients, rtol=1e-2, atol=1e-6)  # one launch: the same gradients, another order
    assert loss_ops.SPLIT_PROGRAMS_PER_SM == 2  # restored after the planning
