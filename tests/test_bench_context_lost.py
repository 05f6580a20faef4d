"""A sticky CUDA error in a benchmark run (helper-252's review, finding 1): an illegal address or a launch failure
leaves the process's CUDA context unusable, every later CUDA call failing with the same error. The case whose call
raised it records it as its failure; the suite stops there, its later cases are recorded as not run ("CUDA context
lost after <case>"), not as their own failures, the later suites are skipped, and the run exits with status 1.

CPU only: a stand-in context (_Context) whose calls fail once it is lost, as a CUDA context's do, and whose probe
(timing.device_usable, on a GPU a synchronize and a one-element op) says so; the runner's and the CLI's own lines
run as they do on a GPU."""

import json
import sys
import types

import pytest
import torch

from masksub_kernels.bench import cli, report, runner, timing
from masksub_kernels.bench.runner import OpCase, run_case, run_group

CPU = torch.device("cpu")
STICKY = "CUDA error: an illegal memory access was encountered"


class _Context:
    """A CUDA context as a sticky error leaves it: once ``lost``, every call fails with that error, and the probe
    (timing.device_usable) fails too; ``calls`` counts the calls that ran."""

    def __init__(self, monkeypatch, error=torch.AcceleratorError):
        self.lost, self.calls, self.error = False, 0, error
        monkeypatch.setattr(timing, "device_usable", lambda device: not self.lost)

    def kernel(self, x):  # any CUDA call
        if self.lost:
            raise self.error(STICKY)
        self.calls += 1
        return x * 2

    def fault(self, x):  # a kernel that faults: the context lost from here on
        self.lost = True
        raise self.error(STICKY)

    def fault_after(self, n: int):
        """A kernel that runs ``n`` times, then faults."""
        count = [0]

        def call(x):
            count[0] += 1
            return self.kernel(x) if count[0] <= n else self.fault(x)

        return call


def _case(name: str, fn, modes=("forward",), suite="a", group=None) -> OpCase:
    return OpCase(suite, "s", "float32", name, lambda: [torch.ones(2, requires_grad=True)], fn, {"forward": 16},
                  modes=modes, group=group)  # fmt: skip


def _suite(monkeypatch, name: str, cases) -> None:
    module = types.ModuleType(f"{name}_context_suite")
    module.cases = cases
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.SUITES, name, module.__name__)


# --- timing.py: what a sticky error is --------------------------------------------------------------------------


def test_a_cuda_error_is_told_by_its_type_or_its_message_and_an_out_of_memory_is_not_one():
    assert timing.is_cuda_error(torch.AcceleratorError("CUDA error: unspecified launch failure"))
    assert timing.is_cuda_error(RuntimeError(STICKY))  # torch before AcceleratorError, this library's extension
    assert timing.is_cuda_error(RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"))
    assert not timing.is_cuda_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not timing.is_cuda_error(ValueError(STICKY)) and not timing.is_cuda_error(RuntimeError("shape mismatch"))


def test_the_probe_synchronizes_the_gpu_and_fails_where_the_context_is_lost(monkeypatch):
    synced = []

    def synchronize(device):
        synced.append(device)
        raise torch.AcceleratorError(STICKY)  # a lost context: the synchronize returns the sticky error

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    assert timing.device_usable(torch.device("cuda:0")) is False and synced == [torch.device("cuda:0")]
    assert timing.device_usable(CPU) is True  # the one-element op runs


def test_a_cuda_error_is_sticky_only_where_the_device_runs_nothing_after_it(monkeypatch):
    context = _Context(monkeypatch)
    assert not timing.context_lost(RuntimeError("CUDA error: invalid configuration argument"), CPU)  # usable
    context.lost = True
    assert timing.context_lost(RuntimeError(STICKY), CPU)
    assert not timing.context_lost(RuntimeError("shape mismatch"), CPU)  # the probe only after a CUDA error
    assert timing.context_lost(timing.ContextLost(0), CPU)


def test_the_extensions_and_the_drivers_messages_are_cuda_errors():
    # helper-258: csrc/bindings.h's launch check (TORCH_CHECK: a RuntimeError "<op>: kernel launch failed: ..."),
    # torch's driver checks and the driver API's names were not told
    for message in ("masksub_loss_forward: kernel launch failed: an illegal memory access was encountered",
                    "CUDA driver error: an illegal memory access was encountered",
                    "cuLaunchKernel failed: CUDA_ERROR_ILLEGAL_ADDRESS"):  # fmt: skip
        assert timing.is_cuda_error(RuntimeError(message)), message


def test_on_a_cuda_device_any_error_but_out_of_memory_is_probed(monkeypatch):
    # helper-258: a sticky error in a message the markers do not know (a wrapper's) lost the context unseen; on a
    # CUDA device every error is probed but the allocator's out of memory and Triton's OutOfResources
    probed = []
    monkeypatch.setattr(timing, "device_usable", lambda device: probed.append(device) or False)
    gpu = torch.device("cuda:0")
    assert timing.context_lost(RuntimeError("some wrapper: an illegal memory access"), gpu) and probed == [gpu]
    out_of_resources = type("OutOfResources", (Exception,), {})
    assert not timing.context_lost(torch.OutOfMemoryError("CUDA out of memory"), gpu)
    assert not timing.context_lost(out_of_resources("out of resource: shared memory"), gpu) and len(probed) == 1
    assert not timing.context_lost(RuntimeError("shape mismatch"), CPU) and len(probed) == 1  # off a GPU: markers


def test_a_probe_that_runs_out_of_memory_is_no_lost_context(monkeypatch):
    # helper-258: after a non-sticky 'CUDA error: out of memory' the device runs, but the probe's own allocation may
    # fail: not a sticky error (the synchronize ran)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)

    def ones(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    monkeypatch.setattr(torch, "ones", ones)
    assert timing.device_usable(torch.device("cuda:0")) is True


def test_measure_each_stops_at_the_call_that_lost_the_context(monkeypatch):
    context = _Context(monkeypatch)
    seen, faulty = [], context.fault_after(2)
    calls = [timing.Call(lambda: seen.append("a"), warmup=1, repeats=3),
             timing.Call(lambda: (seen.append("b"), faulty(1)), warmup=1, repeats=3),
             timing.Call(lambda: seen.append("c"), warmup=1, repeats=3)]  # fmt: skip
    with pytest.raises(timing.ContextLost) as raised:
        timing.measure_each(calls, CPU)
    assert raised.value.index == 1 and str(raised.value.__cause__) == STICKY
    # the warm-ups, round 1, then b's fault in round 2: nothing after it (c's round 2 would fail on a GPU)
    assert seen == ["a", "b", "c", "a", "b", "c", "a", "b"]


# --- runner.py ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [torch.AcceleratorError, RuntimeError])
def test_run_case_records_the_error_once_and_its_later_modes_as_not_run(monkeypatch, error):
    context = _Context(monkeypatch, error)
    records = run_case(_case("p", context.fault, runner.MODES), CPU, repeats=2, warmup=1, copy_gbps=1.0)
    first, *later = records
    assert first["mode"] == "forward" and first["error"] == f"{error.__name__}: {STICKY}" and first["context_lost"]
    assert [r["mode"] for r in later] == ["backward", "full"]
    assert all(r["not_run"] == "CUDA context lost after a s float32 p forward" for r in later)
    assert not any("error" in r or "median_ms" in r or "context_lost" in r for r in later)


def test_run_case_goes_on_after_a_cuda_error_that_is_not_sticky(monkeypatch):
    _Context(monkeypatch)  # usable throughout

    def bad_launch(x):
        raise RuntimeError("CUDA error: invalid configuration argument")

    records = run_case(_case("p", bad_launch, runner.MODES), CPU, repeats=1, warmup=1, copy_gbps=1.0)
    assert all("invalid configuration" in r["error"] for r in records)  # each mode its own failure, as before
    assert not any("context_lost" in r or "not_run" in r for r in records)


def test_run_group_records_the_faulting_case_and_the_others_as_not_run(monkeypatch):
    context = _Context(monkeypatch)
    cases = [_case("plain", context.kernel, group="m"), _case("joint", context.fault_after(2), group="m"),
             _case("other", context.kernel, group="m")]  # fmt: skip
    plain, joint, other = run_group(cases, CPU, repeats=3, warmup=1, copy_gbps=1.0)
    maybe = " (or the call before it, a s float32 plain forward: rerun with CUDA_LAUNCH_BLOCKING=1)"
    assert joint[0]["error"] == f"AcceleratorError: {STICKY}{maybe}" and joint[0]["context_lost"]  # helper-258
    # plain's rounds were cut too: not run, not a time of a measurement stopped midway
    for (record,) in (plain, other):
        assert record["not_run"] == "CUDA context lost after a s float32 joint forward"
        assert "error" not in record and "median_ms" not in record


def test_run_group_a_lost_context_while_making_a_case_stops_the_group(monkeypatch):
    context = _Context(monkeypatch)
    broken = _case("joint", context.kernel, group="m")
    broken.make_inputs = lambda: context.fault(None)
    plain, joint, other = run_group([_case("plain", context.kernel, group="m"), broken,
                                     _case("other", context.kernel, group="m")], CPU, repeats=2, warmup=1,
                                    copy_gbps=1.0)  # fmt: skip
    assert joint[0]["context_lost"] and plain[0]["not_run"] == other[0]["not_run"]
    assert context.calls == 0  # nothing timed


def test_run_group_a_lost_context_at_the_synchronize_after_the_rounds_fails_every_timed_case(monkeypatch):
    context = _Context(monkeypatch)

    def measure_each(calls, device):  # no one call's: the fault surfaced at the synchronize after the rounds
        context.lost = True
        raise torch.AcceleratorError(STICKY)

    monkeypatch.setattr(runner, "measure_each", measure_each)
    plain, joint = run_group([_case("plain", context.kernel, group="m"), _case("joint", context.kernel, group="m")],
                             CPU, repeats=2, warmup=1, copy_gbps=1.0)  # fmt: skip
    assert plain[0]["context_lost"] and joint[0]["context_lost"] and "not_run" not in plain[0]


# --- cli.py and the report ----------------------------------------------------------------------------------------


def test_the_run_stops_at_a_sticky_error_and_reports_the_rest_as_not_run(tmp_path, monkeypatch, capsys):
    context = _Context(monkeypatch)
    later_suite = []
    _suite(
        monkeypatch,
        "a",
        lambda *a, **k: [
            _case("good", context.kernel),
            _case("faulty", context.fault),
            _case("later", context.kernel),
            _case("last", context.kernel),
        ],
    )
    _suite(monkeypatch, "b", lambda *a, **k: later_suite.append(1) or [_case("b", context.kernel, suite="b")])
    argv = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "a", "b", "--no-plot"]
    assert cli.main(argv) == 1  # a failure, as a run that measured nothing is
    assert later_suite == []  # the later suite's cases never built (its CUDA calls would fail)
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    by_provider = {r["provider"]: r for r in run["records"]}
    assert "median_ms" in by_provider["good"] and by_provider["faulty"]["context_lost"]
    after = "CUDA context lost after a s float32 faulty forward"
    assert [by_provider[p].get("not_run") for p in ("later", "last")] == [after, after]
    assert not any("error" in by_provider[p] for p in ("later", "last"))
    assert run["context_lost"] == {
        "a": {"after": "a s float32 faulty forward", "error": f"AcceleratorError: {STICKY}", "not_run": 2}
    }
    assert run["skipped_suites"] == {"b": "not run: " + after} and run["incomplete_suites"] == {}
    err = capsys.readouterr().err
    assert "masksub-bench: FAILED: CUDA context lost in the a suite at a s float32 faulty forward" in err
    assert "2 later records of it not run, nor the suites after it (b)" in err
    table = (tmp_path / path.name.replace(".json", ".md")).read_text()
    assert "**a: CUDA context lost at a s float32 faulty forward** (AcceleratorError: " in table
    assert f"| a | s | float32 | forward | later | not run: {after} |" in table
    assert f"error: AcceleratorError: {STICKY}" in table and "b: skipped (not run: CUDA context lost" in table
    assert cli.load_run(path)["context_lost"] == run["context_lost"]  # --report-only reads it back


def test_a_cuda_error_that_is_not_sticky_fails_only_its_case(tmp_path, monkeypatch):
    context = _Context(monkeypatch)

    def bad_launch(x):
        raise RuntimeError("CUDA error: invalid configuration argument")

    _suite(monkeypatch, "a", lambda *a, **k: [_case("bad", bad_launch), _case("later", context.kernel)])
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "a", "--no-plot"]) == 0
    run = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [("error" in r, "median_ms" in r) for r in run["records"]] == [(True, False), (False, True)]
    assert run["context_lost"] == {} and not any("not_run" in r for r in run["records"])


def test_an_appended_rerun_of_the_suite_drops_its_lost_context_mark(tmp_path, monkeypatch):
    context = _Context(monkeypatch)
    cases = {"fault": True}
    _suite(monkeypatch, "a", lambda *a, **k: [_case("p", context.fault if cases["fault"] else context.kernel)])
    base = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-plot", "--suites", "a"]
    assert cli.main(base) == 1
    context.lost, cases["fault"] = False, False  # a fresh process
    assert cli.main([*base, "--append"]) == 0
    run = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert run["context_lost"] == {} and "median_ms" in run["records"][0]
    assert "CUDA context lost" not in report.markdown_table(run)


def test_the_training_table_shows_a_step_not_run():
    record = {"suite": "train", "shape": "vit", "dtype": "bf16", "mode": "forward", "provider": "masksub (joint)",
              "not_run": "CUDA context lost after train vit bf16 plain forward"}  # fmt: skip
    run = {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "records": [record]}
    table = report.markdown_table(run)
    assert "| vit | bf16 | masksub (joint) | not run: CUDA context lost after train vit bf16 plain forward |" in table


# helper-258's mutation audit of the sticky-error handling


def test_run_group_blames_the_call_that_raised_through_the_timed_index(monkeypatch):
    # kills runner.run_group `records[timed[exc.index]]` -> `records[exc.index]`: with a case before it that could
    # not be made (not timed), ContextLost's index (into the calls) is not the record's index
    context = _Context(monkeypatch)
    unmade = _case("unmade", context.kernel, group="m")
    unmade.make_inputs = lambda: (_ for _ in ()).throw(ValueError("no inputs"))  # its own, non-CUDA failure
    cases = [unmade, _case("plain", context.kernel, group="m"), _case("joint", context.fault_after(2), group="m")]
    unmade_records, plain, joint = run_group(cases, CPU, repeats=3, warmup=1, copy_gbps=1.0)
    assert joint[0].get("context_lost") and joint[0]["error"].startswith(f"AcceleratorError: {STICKY} (or the call")
    assert plain[0]["not_run"] == "CUDA context lost after a s float32 joint forward"
    assert "context_lost" not in plain[0]
    # its own failure kept, not overwritten as not run (_lost_group: helper-258)
    assert unmade_records[0].get("error") == "ValueError: no inputs" and "not_run" not in unmade_records[0]


def test_the_lost_count_includes_the_faulting_cases_own_later_modes(tmp_path, monkeypatch):
    # kills cli counting the later units only: the other CLI test has one-mode cases, where both counts are 2
    context = _Context(monkeypatch)
    _suite(monkeypatch, "a", lambda *a, **k: [_case("faulty", context.fault, runner.MODES),
                                              _case("later", context.kernel, runner.MODES)])  # fmt: skip
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "a", "--no-plot"]) == 1
    run = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert run["context_lost"]["a"]["not_run"] == 5  # faulty's backward and full, later's three modes
    assert sum("not_run" in r for r in run["records"]) == 5
