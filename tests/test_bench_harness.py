"""The benchmark harness's own rules (masksub_kernels/bench: timing.py, cli.py, runner.py) from helper-203's
second-pass mutation audit: the GPU timing's order of prepare, flush, events and synchronize (on a faked torch.cuda:
its events, synchronize, the L2 flush), the traced call's memory, each mode's own work, failed cases, a GPU
run's defaults, --report-only, the run's date and seconds, and a suite killed in its first case. Each test's header
names the mutants it kills (file:line and the change). CPU only, each test well under a second or two."""

import json
import sys
import types

import pytest
import torch

import masksub_kernels as mk
from masksub_kernels.bench import cli, runner, timing
from masksub_kernels.bench.runner import OpCase, run_case

CPU = torch.device("cpu")


def _suite(monkeypatch, name: str, cases=None) -> None:
    """A benchmark suite ``name`` for cli.main: ``cases`` (a function of cli's arguments), by default one forward
    case of torch.neg on two elements."""
    module = types.ModuleType(f"{name}_suite")
    one = OpCase(
        name, "s", "float32", "official", lambda: [torch.ones(2)], torch.neg, {"forward": 16}, modes=("forward",)
    )
    module.cases = cases or (lambda *a, **k: [one])
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.SUITES, name, module.__name__)


# ---------------------------------------------------------------------------------------------------------------
# Kills T3 (timing.py:160, no synchronize after prepare()),
# T4 (timing.py:175-176, the L2 flush after start.record(): timed), T5 (timing.py:179, no synchronize before
# elapsed_time: a real GPU refuses unfinished events), T7 (timing.py:183, host_pass ignored), T8 (timing.py:189,
# the host pass's mean for its median), T9 (timing.py:190, no prepare() before the traced call: the backward mode's
# graph is gone), T10 (timing.py:174, prepare() inside the timed region), T11 (timing.py:175, no flush).


class _FakeGpu:
    """torch.cuda's events, synchronize and timing's L2 flush, and timing's clock, for measure() on a machine without
    a GPU: a log of what ran in order, a clock that the calls (and the flush) advance, events that read it and that
    refuse elapsed_time before a synchronize completed them (as CUDA's do)."""

    def __init__(self, monkeypatch, costs_ms):
        self.log, self.now, self.costs, self.synced_at = [], 0.0, list(costs_ms), -1
        gpu = self

        class Event:
            def __init__(self, enable_timing=False):
                self.at = self.logged = None

            def record(self):
                self.at, self.logged = gpu.now, len(gpu.log)
                gpu.log.append("record")

            def elapsed_time(self, end):
                if end.logged is None or gpu.synced_at < end.logged:
                    raise RuntimeError("event not completed: no synchronize after its record")
                return (end.at - self.at) * 1e3

        class Flush:  # timing.L2Flush's stand-in (its reads and writes: test_bench_flush.py)
            def __init__(self, device):
                assert str(device).startswith("cuda")

            def __call__(self):
                gpu.log.append("flush")
                gpu.now += 0.1  # a 100 ms flush: timed only where it sits inside the events

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: self._sync())
        monkeypatch.setattr(timing, "L2Flush", Flush)
        monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: self.now))
        monkeypatch.setattr(
            timing, "_traced_call", lambda fn, device: (self.log.append("traced"), fn(), (None, 1.0))[2]
        )

    def _sync(self):
        self.synced_at = len(self.log)
        self.log.append("sync")

    def call(self):
        self.log.append("fn")
        self.now += self.costs.pop(0) * 1e-3

    def prepare(self):
        self.log.append("prepare")
        self.now += 0.05  # the backward mode's untimed forward: 50 ms


def test_gpu_timing_keeps_prepare_and_flush_outside_the_events_and_syncs_around_them(monkeypatch):
    # 1 warm-up, 3 timed calls of 2, 4, 3 ms, 5 host-pass calls of 1, 1, 1, 1, 10 ms (median 1, mean 2.8), the traced
    # call: each after prepare(), the untimed ones after a synchronize too; a timed call's prepared forward is queued
    # before the flush and the events, not drained (helper-252: drained, the GPU idled inside the events while
    # autograd reached the backward's first launch)
    gpu = _FakeGpu(monkeypatch, [0, 2, 4, 3, 1, 1, 1, 1, 10, 0])
    result = timing.measure(gpu.call, torch.device("cuda"), warmup=1, repeats=3, prepare=gpu.prepare)
    assert gpu.costs == []  # warm-up, repeats, HOST_REPEATS, the traced call: no call more or fewer
    assert (result.median_ms, result.p20_ms, result.p80_ms) == (pytest.approx(3), pytest.approx(2), pytest.approx(4))
    assert result.host_ms == pytest.approx(1.0) and result.peak_mem_mb == 1.0
    ready = ["prepare", "sync"]  # prepare() and its work finished
    warm, timed = [*ready, "fn", "sync"], ["prepare", "flush", "record", "fn", "record"]
    host, traced = [*ready, "sync", "fn"], [*ready, "sync", "traced", "fn"]
    assert gpu.log == [*warm, *timed * 3, "sync", *host * 5, *traced]


def test_gpu_timing_host_pass_drains_the_gpu_before_each_call_and_only_when_asked(monkeypatch):
    # kills T6 (timing.py:185, no synchronize before a host-pass call: it would wait for the previous call's
    # kernels, the fused-linear loss's count on the host) and T7 (timing.py:183: host_pass=False still timed)
    gpu = _FakeGpu(monkeypatch, [0, 2, 1, 1, 1, 1, 1, 0])
    result = timing.measure(gpu.call, torch.device("cuda"), warmup=1, repeats=1)
    timed = ["fn", "sync", "flush", "record", "fn", "record", "sync"]
    assert gpu.log == [*timed, *["sync", "fn"] * 5, "sync", "traced", "fn"] and result.host_ms == pytest.approx(1.0)
    gpu = _FakeGpu(monkeypatch, [0, 2, 0])
    result = timing.measure(gpu.call, torch.device("cuda"), warmup=1, repeats=1, host_pass=False)
    assert result.host_ms is None and gpu.costs == [] and gpu.log.count("fn") == 3  # warm-up, timed, traced


# ---------------------------------------------------------------------------------------------------------------
# Kills T15 (timing.py:133, the raw peak without `- before`: the inputs counted),
# T16 (timing.py:115, no reset_peak_memory_stats: an earlier case's peak) and T17 (timing.py:134, the trace from
# index 0: an earlier recording's entries, kept by a torch without clear_history, counted as this call's).


def test_the_traced_call_counts_only_its_own_allocations(monkeypatch):
    mib = 2**20
    state = {"allocated": 10 * mib, "peak": 500 * mib, "recording": False}  # 10 MiB of inputs; a stale 500 MiB peak
    # an earlier case's recording: a 200 MiB temporary, still in the history (this torch takes no clear_history)
    trace = [
        {"action": "alloc", "addr": 9, "size": 200 * mib},
        {"action": "free_completed", "addr": 9, "size": 200 * mib},
    ]

    def record_history(enabled, **kwargs):
        if "clear_history" in kwargs:
            raise TypeError("unexpected keyword argument 'clear_history'")
        state["recording"] = enabled is not None

    def event(action, addr, size):
        state["allocated"] += size if action == "alloc" else -size
        state["peak"] = max(state["peak"], state["allocated"])
        if state["recording"]:
            trace.append({"action": action, "addr": addr, "size": size})

    memory = types.SimpleNamespace(
        _record_memory_history=record_history, _snapshot=lambda device=None: {"device_traces": [list(trace)]}
    )
    monkeypatch.setattr(torch.cuda, "memory", memory)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *args: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: state["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *args: state.update(peak=state["allocated"]))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)

    def call():  # a 64 MiB temporary held while the 16 MiB it returns is written
        event("alloc", 1, 64 * mib)
        event("alloc", 2, 16 * mib)
        event("free_completed", 1, 64 * mib)
        return "returned"

    entries, peak = timing._traced_call(call, torch.device("cuda", 0))
    assert peak == 80  # above the 10 MiB before the call, from a peak reset at its start
    assert timing.transient_peak_bytes(entries) == 64 * mib  # not the earlier recording's 200 MiB


# ---------------------------------------------------------------------------------------------------------------
# Kills R1 (runner.py:97-98, full mode without its backward),
# R5 (runner.py:94, the backward mode's forward inside the timed call) and T2 (timing.py:196-197, prepare() inside
# the CPU's timed region): each mode times what it names, on a clock only the op's own work advances.


_NOW = [0.0]  # seconds: the clock of test_runner_each_mode_times_its_own_work


class _Costly(torch.autograd.Function):
    """x * 2 whose forward takes 5 ms and backward 1 ms of the clock ``_NOW``."""

    @staticmethod
    def forward(ctx, x):
        _NOW[0] += 5e-3
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        _NOW[0] += 1e-3
        return grad * 2


def test_runner_each_mode_times_its_own_work(monkeypatch):
    _NOW[0] = 0.0
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: _NOW[0]))
    case = OpCase("demo", "s", "float32", "p", lambda: [torch.ones(3, requires_grad=True)], _Costly.apply, {})
    records = run_case(case, CPU, repeats=3, warmup=1, copy_gbps=1.0)
    medians = {r["mode"]: r["median_ms"] for r in records}
    assert medians == {"forward": pytest.approx(5.0), "backward": pytest.approx(1.0), "full": pytest.approx(6.0)}


# ---------------------------------------------------------------------------------------------------------------
# Kills R2 (runner.py:149-150, a
# failed case recorded with a time: the report would rank it, or take it as the baseline of its ratios), R4
# (runner.py:151, the backend restored only when the case succeeded) and C8 (cli.py:305, `all` -> `any`: one
# failed provider among measured ones failed the whole run).


def test_a_failed_case_has_no_time_leaks_no_backend_and_does_not_fail_the_run(tmp_path, monkeypatch):
    def broken(x):
        raise RuntimeError("unsupported here")

    make = lambda: [torch.ones(2, requires_grad=True)]
    failing = OpCase(
        "mixed", "s", "float32", "broken", make, broken, {"full": 16}, setup=lambda: mk.set_backend("torch")
    )
    previous = mk.get_backend()
    mk.set_backend("triton")  # not the case's: a leak would show
    try:
        records = run_case(failing, CPU, repeats=1, warmup=1, copy_gbps=1.0)
        assert mk.get_backend() == "triton"
    finally:
        mk.set_backend(previous)
    assert all("error" in r and "median_ms" not in r and "gbps" not in r for r in records)
    good = OpCase("mixed", "s", "float32", "official", make, lambda x: x * 2, {"full": 16})
    _suite(monkeypatch, "mixed", lambda *a, **k: [good, failing])
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "mixed", "--no-plot"]) == 0
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    assert sum("error" in r for r in run["records"]) == 3 and sum("median_ms" in r for r in run["records"]) == 3


# ---------------------------------------------------------------------------------------------------------------
# Kills C1
# (cli.py:225, a GPU run's default of 30 repeats: 10) and C2 (cli.py:226, its 5 warm-up calls: 2): the defaults the
# README and docs/performance.md quote for every GPU table ("Median ms, 30 repeats").


def test_cli_default_repeats_and_warmup_of_a_gpu_run(tmp_path, monkeypatch):
    _suite(monkeypatch, "demo")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto picks the (faked) GPU
    monkeypatch.setattr(cli, "environment", lambda device: {"device": f"GPU: Fake ({device.type})", "torch": "-"})
    monkeypatch.setattr(cli, "copy_bandwidth_gbps", lambda device, megabytes: (1.0, 1.0, 1.0))
    asked = []

    def fake_run_case(case, device, *, repeats, warmup, copy_gbps):
        asked.append((device.type, repeats, warmup))
        return [{"suite": case.suite, "shape": case.shape, "dtype": case.dtype, "provider": case.provider,
                 "mode": "forward", "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "repeats": repeats}]  # fmt: skip

    monkeypatch.setattr(cli, "run_case", fake_run_case)
    assert cli.main(["--suites", "demo", "--no-plot", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    assert asked == [("cuda", 30, 5)] and (run["repeats"], run["warmup"]) == (30, 5)


# ---------------------------------------------------------------------------------------------------------------
# Kills C3 (cli.py:120, --warmup accepted with --report-only), C4 (cli.py:119, --full) and C5
# (cli.py:119, --device): each would be silently ignored, a report the user thinks was re-measured.


@pytest.mark.parametrize(
    "args", [["--warmup", "2"], ["--full"], ["--device", "cpu"], ["--tiny"], ["--overwrite"], ["--repeats", "3"]]
)
def test_report_only_refuses_every_option_of_a_measurement(tmp_path, capsys, args):
    path = tmp_path / "run.json"
    path.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--report-only", str(path), *args])
    assert exit_info.value.code == 2 and f"{args[0]}: not with --report-only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Kills C6 (cli.py:207, --report-only measuring the copy bandwidth again: the
# GPU run's '% of copy' recomputed against the CPU it is reported on) and any re-timing in report_only: nothing is
# measured, and the JSON's measured values come back as they were.


def test_report_only_measures_nothing_and_keeps_the_measured_values(tmp_path, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("--report-only measured")

    for module, name in ((cli, "copy_bandwidth_gbps"), (cli, "run_case"), (runner, "measure"), (timing, "measure")):
        monkeypatch.setattr(module, name, no_measuring)
    record = {
        "suite": "loss",
        "shape": "s",
        "dtype": "bf16",
        "mode": "full",
        "provider": "official",
        "median_ms": 2.5,
        "p20_ms": 2.0,
        "p80_ms": 3.0,
        "repeats": 30,
        "gbps": 800.0,
        "fraction_of_copy": 0.2,
    }
    run = {"date": "2030-01-02", "environment": {"device": "GPU: Fake", "torch": "2.11"}, "copy_gbps": 4000.0,
           "copy_gbps_range": [3900.0, 4100.0], "repeats": 30, "warmup": 5, "records": [record]}  # fmt: skip
    path = tmp_path / "GPU-Fake-2030-01-02.json"
    path.write_text(json.dumps(run))
    assert cli.main(["--report-only", str(path), "--no-plot"]) == 0
    kept = json.loads(path.read_text())
    assert kept["copy_gbps"] == 4000.0 and kept["copy_gbps_range"] == [3900.0, 4100.0]
    assert kept["records"] == [record]
    assert "copy bandwidth 4000 GB/s" in path.with_suffix(".md").read_text()


# ---------------------------------------------------------------------------------------------------------------
# Kills C9 (cli.py:235, MASKSUB_BENCH_DATE ignored: gpu_bench.sh's suites of a
# run crossing midnight would write two days' files) and C10 (cli.py:276, an appended run's seconds restarted: the
# JSON's `seconds`, docs/performance.md's "29 s of suites", would count the last suite only).


def test_the_runs_date_comes_from_the_environment_and_appended_seconds_add_up(tmp_path, monkeypatch):
    _suite(monkeypatch, "dated")
    monkeypatch.setenv("MASKSUB_BENCH_DATE", "2031-02-03")
    common = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "dated", "--no-plot"]
    assert cli.main(common) == 0
    (path,) = tmp_path.glob("*.json")
    assert path.name.endswith("-2031-02-03-tiny.json") and json.loads(path.read_text())["date"] == "2031-02-03"
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "seconds": 100.0}))  # the earlier suites' time
    assert cli.main([*common, "--append"]) == 0
    assert json.loads(path.read_text())["seconds"] >= 100.0
    # not a date: refused before anything runs (helper-290: it named the files and the header)
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad in ("../x date", "20310203"):  # (the second, a date to fromisoformat, not YYYY-MM-DD)
        monkeypatch.setenv("MASKSUB_BENCH_DATE", bad)
        assert cli.main([*common, "--append"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------------------------------------
# Kills C11 (cli.py:159, `>=` -> `>`: cuda:1 on a one-GPU machine accepted,
# every record then an error).


def test_a_cuda_index_past_the_last_device_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.parse_args(["--device", "cuda:0"]).device == "cuda:0"
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--device", "cuda:1"])
    assert exit_info.value.code == 2 and "this machine has 1 CUDA device(s)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Kills C12
# (cli.py:366, the commit among the facts whose absence is "unknown": a run of an installed wheel, no commit,
# appended to by a checkout's): only the driver's version may be unread on one side.


def test_append_refuses_a_run_whose_code_is_not_named(tmp_path, monkeypatch, capsys):
    _suite(monkeypatch, "code")
    monkeypatch.setattr(cli, "environment", lambda device: {**timing.environment(device), "commit": "abc123"})
    common = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "code", "--no-plot"]
    assert cli.main(common) == 0
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "environment": {**run["environment"], "commit": None}}))
    assert cli.main([*common, "--append"]) == 2
    assert "commit None there, 'abc123' now" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Kills C13 (cli.py:171, `max` -> `min`: dynamo's default limit of 8 kept, and
# compile(official) from the ninth shape on timed as eager code under the compile label).


def test_the_recompile_limit_is_raised_never_lowered():
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    # dynamo's own patch, which restores the entry: monkeypatch's undo left torch 2.14's recompile_limit hidden ("does
    # not exist"), and every later torch.compile in the worker failed (tests/training/test_wrapper_use.py's)
    unpatched = getattr(config, name)
    for before, after in ((8, 64), (256, 256)):
        with config.patch({name: before}):
            cli._allow_recompiles()
            assert getattr(config, name) == after
    assert getattr(config, name) == unpatched  # restored, and still there


# ---------------------------------------------------------------------------------------------------------------
# helper-203's bug: a suite whose process died before its first case ended (a segfault, a sticky CUDA error,
# `timeout -k`'s SIGKILL: gpu_bench.sh runs each suite in a process of its own) left no trace in the JSON, and a
# suite whose cases() raised ended the run. Now the JSON marks the suite at once, and such a suite is skipped, said.
_KILLED_IN_FIRST_CASE = r"""
import os, signal, sys, types, torch
from masksub_kernels.bench import cli
from masksub_kernels.bench.runner import OpCase
def die(x):
    os.kill(os.getpid(), signal.SIGKILL)
def module(name, fn):
    m = types.ModuleType(name)
    m.cases = lambda *a, **k: [OpCase(name, "s", "float32", "p", lambda: [torch.ones(2)], fn, {}, modes=("forward",))]
    cli.SUITES[name] = name
    sys.modules[name] = m
module("fine", torch.neg)
module("dies", die)
cli.main(["--tiny", "--device", "cpu", "--out", sys.argv[1], "--suites", "fine", "dies", "--no-plot"])
"""


def test_a_suite_killed_in_its_first_case_is_marked_in_the_json(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0", "MASKSUB_CUDA_EMULATOR": "0"}
    result = subprocess.run([sys.executable, "-c", _KILLED_IN_FIRST_CASE, str(tmp_path)], env=env, timeout=300,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == -9, result.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    assert run["incomplete_suites"] == {"dies": {"cases_done": 0, "cases": 1}}
    assert {r["suite"] for r in run["records"]} == {"fine"}


def test_a_suite_whose_cases_fail_is_skipped_and_said(tmp_path, monkeypatch, capsys):
    def cases(*args, **kwargs):
        raise RuntimeError("no such model")

    _suite(monkeypatch, "broken", cases)
    _suite(monkeypatch, "fine")
    assert (
        cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "broken", "fine", "--no-plot"]) == 0
    )
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    assert run["skipped_suites"] == {"broken": "its cases failed: RuntimeError: no such model"}
    assert run["incomplete_suites"] == {} and {r["suite"] for r in run["records"]} == {"fine"}
    assert "broken: skipped (its cases failed: RuntimeError: no such model)." in path.with_suffix(".md").read_text()
    assert "[broken] skipped: its cases failed: RuntimeError: no such model" in capsys.readouterr().err


# helper-203's open gaps T18 / T22 (triton's or python's version dropped from the facts), T20 (a GPU's facts: the
# driver, memory, SMs, capability) and T14 (the copy bandwidth timed without a warm-up: the first copy's allocation)
def test_every_result_file_names_its_versions_and_its_gpus_facts(monkeypatch):
    import platform

    triton = pytest.importorskip("triton")
    cpu = timing.environment(CPU)
    assert cpu["python"] == platform.python_version() and cpu["torch"] == torch.__version__
    assert cpu["triton"] == triton.__version__ and cpu["masksub_kernels"] == mk.__version__
    assert {"device", "commit", "cuda", "platform", "timm", "liger_kernel"} <= set(cpu)
    assert not {"driver", "gpu_memory_gb", "sm_count", "capability"} & set(cpu)
    props = types.SimpleNamespace(
        name="Fake H100", total_memory=80 * 2**30, multi_processor_count=132, major=9, minor=0
    )
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(timing, "device_label", lambda device: "GPU: Fake H100")
    monkeypatch.setattr(timing, "_driver_version", lambda: "580.65")
    gpu = timing.environment(torch.device("cuda"))
    assert (gpu["gpu_memory_gb"], gpu["sm_count"], gpu["capability"], gpu["driver"]) == (80.0, 132, "9.0", "580.65")


def test_the_copy_bandwidth_is_timed_after_a_warm_up_and_counts_read_and_write(monkeypatch):
    asked = []

    def fake_measure(fn, device, *, warmup, repeats, **kwargs):
        asked.append((warmup, repeats))
        return types.SimpleNamespace(median_ms=1.0, p80_ms=2.0, p20_ms=0.5)

    monkeypatch.setattr(timing, "measure", fake_measure)
    median, low, high = timing.copy_bandwidth_gbps(CPU, megabytes=8, repeats=5)
    assert asked == [(3, 5)] and asked[0][0] >= 1
    gigabytes = 2 * (8 * 2**20 // 4 // 8) * 4 / 1e9  # a CPU copy: an eighth, read and written
    assert (median, low, high) == pytest.approx((gigabytes / 1e-3, gigabytes / 2e-3, gigabytes / 0.5e-3))
