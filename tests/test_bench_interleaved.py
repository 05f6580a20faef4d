"""A timing group (masksub_kernels/bench: runner.run_group, timing.measure_each, the train suite's providers of one
model): its cases are timed interleaved, the warm-up of each first, then repeat k of every case before repeat k+1
of any, so that a host that drifts during the group slows them alike (the 2026-12-04 H200 run's train rows: 1.13-
1.68x slower than 2026-11-30's, one provider's repeats after another's). The rows come out per case, as run_case
writes them; a failing case is recorded as run_case records it; the kernel suites still time one case at a time.
CPU only, stand-in steps that record the order of their calls."""

import json
import sys
import types

import pytest
import torch

from masksub_kernels.bench import cli, report, runner, train_step
from masksub_kernels.bench.runner import OpCase, run_case, run_group, timing_groups

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def _step_case(provider: str, log: list, *, group: str | None = "m", fails_at: int | None = None) -> OpCase:
    """A train-suite-like case (one whole 'step', no inputs, capped repeats) whose step logs its provider's name
    and raises at its ``fails_at``-th call (1-based) when given."""

    def step():
        log.append(provider)
        if fails_at is not None and log.count(provider) == fails_at:
            raise RuntimeError(f"{provider} step broke\nsecond line")
        return torch.zeros(())

    notes = {"batch_size": 4, "model": "demo", "ideal_ratio": 1.5}
    return OpCase("train", "m B=4", "float32", provider, lambda: [], step, {}, modes=(runner.STEP,), max_repeats=10,
                  notes=notes, group=group)  # fmt: skip


def test_a_group_times_its_cases_round_robin_after_each_ones_warm_up():
    log = []
    cases = [_step_case(name, log) for name in ("plain", "seq", "joint")]
    by_case = run_group(cases, CPU, repeats=3, warmup=2, copy_gbps=1.0)
    # the warm-up of each (2 calls), then 3 rounds of one call each: a drift within the group hits all three alike
    assert log == ["plain"] * 2 + ["seq"] * 2 + ["joint"] * 2 + ["plain", "seq", "joint"] * 3
    assert [[r["provider"] for r in records] for records in by_case] == [["plain"], ["seq"], ["joint"]]
    assert all(records[0]["repeats"] == 3 and records[0]["timing"] == "interleaved" for records in by_case)


def test_a_case_capped_at_fewer_repeats_leaves_the_later_rounds():
    log = []
    capped = _step_case("capped", log)
    capped.max_repeats = 2  # the run asks for 3: this case times 2, the other 3 (each case's own cap, as run_case's)
    uncapped = _step_case("plain", log)
    uncapped.max_repeats = None
    (plain,), (two,) = run_group([uncapped, capped], CPU, repeats=3, warmup=1, copy_gbps=1.0)
    assert log == ["plain", "capped", *["plain", "capped"] * 2, "plain"]
    assert (plain["repeats"], two["repeats"]) == (3, 2)


def test_a_groups_rows_have_the_fields_run_case_gives_and_say_they_were_interleaved():
    # report.py, tools/perf_model and the committed runs' readers read these rows: the same fields as before, one
    # more (timing) that says how they were measured
    alone = run_case(_step_case("plain", [], group=None), CPU, repeats=2, warmup=1, copy_gbps=1.0)
    together = run_group([_step_case("plain", []), _step_case("joint", [])], CPU, repeats=2, warmup=1, copy_gbps=1.0)
    assert alone[0]["mode"] == "step"  # timed as a forward is (one call of the step), recorded as what it is
    for (record,) in together:
        assert set(record) == set(alone[0]) | {"timing"} and record["timing"] == "interleaved"
        assert record["images_per_s"] > 0 and record["model"] == "demo" and record["ideal_ratio"] == 1.5
    assert "timing" not in alone[0]  # a case timed alone is not said to be interleaved


def test_a_failing_step_is_recorded_as_run_case_records_it_and_the_others_are_timed_on():
    log = []
    cases = [_step_case("plain", log), _step_case("seq", log, fails_at=3), _step_case("joint", log)]
    by_case = run_group(cases, CPU, repeats=3, warmup=1, copy_gbps=1.0)
    (plain,), (seq,), (joint,) = by_case
    # seq broke in its second round (warm-up, round 1, then call 3): left out of the later rounds
    assert log == ["plain", "seq", "joint", *["plain", "seq", "joint"] * 2, "plain", "joint"]
    assert plain["repeats"] == joint["repeats"] == 3 and "error" not in plain and "error" not in joint
    (alone,) = run_case(_step_case("seq", [], group=None, fails_at=3), CPU, repeats=3, warmup=1, copy_gbps=1.0)
    assert seq["error"] == alone["error"] == "RuntimeError: seq step broke"  # the first line, as run_case's
    assert "median_ms" not in seq and "images_per_s" not in seq  # no time: the report ranks no failed row
    # a case whose inputs cannot be made: recorded, the group timed without it
    broken = _step_case("built", [])
    broken.make_inputs = lambda: [][1]
    (built,), (other,) = run_group([broken, _step_case("plain", [])], CPU, repeats=2, warmup=1, copy_gbps=1.0)
    assert built["error"].startswith("IndexError") and other["repeats"] == 2


def test_the_train_suite_is_one_group_per_model_and_the_kernel_suites_one_case_at_a_time():
    pytest.importorskip("timm")
    from masksub_kernels.bench import token_select

    cases = train_step.cases(CUDA)  # the models are built lazily, by the first case of each: nothing runs here
    units = timing_groups(cases)
    assert [len(unit) for unit in units] == [len(train_step.PROVIDER_ORDER)] * 4  # whole models, plain first
    # helper-294: a row times a whole training step (forward + backward + optimizer step), was recorded as 'forward'
    assert all(case.modes == ("step",) for case in cases)
    assert all([case.provider for case in unit] == list(train_step.PROVIDER_ORDER) for unit in units)
    assert all(len({case.notes["model"] for case in unit}) == 1 for unit in units)
    kernels = token_select.cases(CUDA)
    assert [len(unit) for unit in timing_groups(kernels)] == [1] * len(kernels)


def test_a_group_is_formed_by_adjacent_cases_of_one_group_only():
    a1, a2, b1, single, a3 = (_step_case(p, [], group=g) for p, g in
                              (("a1", "a"), ("a2", "a"), ("b1", "b"), ("s", None), ("a3", "a")))  # fmt: skip
    assert timing_groups([a1, a2, b1, single, a3]) == [[a1, a2], [b1], [single], [a3]]
    with pytest.raises(ValueError, match="selects no backend"):  # a process-wide choice cannot alternate per call
        OpCase("train", "m", "float32", "p", lambda: [], torch.zeros, {}, setup=lambda: None, group="m")


def test_the_cli_writes_a_groups_rows_in_case_order_once_per_group(tmp_path, monkeypatch, capsys):
    log = []
    cases = [_step_case("plain", log, group="m1"), _step_case("joint", log, group="m1"),
             _step_case("plain", log, group="m2"), _step_case("joint", log, group="m2")]  # fmt: skip
    module = types.ModuleType("grouped_suite")
    module.cases = lambda *a, **k: cases
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.SUITES, "grouped", module.__name__)
    written, real_write = [], report.write  # cases_done of each file written: after each group, never within one

    def write(run, *args, **kwargs):
        written.append(run["incomplete_suites"].get("grouped", {}).get("cases_done"))
        return real_write(run, *args, **kwargs)

    monkeypatch.setattr(report, "write", write)
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "grouped", "--no-plot"]) == 0
    assert log == ["plain", "joint"] * 3 + ["plain", "joint"] * 3  # model after model, each interleaved
    assert written[:3] == [0, 2, 4]  # the suite marked at its start, then the JSON after each model
    run = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [r["provider"] for r in run["records"]] == ["plain", "joint", "plain", "joint"]
    assert all(r["timing"] == "interleaved" and r["repeats"] == 2 for r in run["records"])
    out = capsys.readouterr().out
    assert out.count(" s in]") == 2 and "m B=4 float32 joint step: " in out  # one seconds line per model
    assert "each model's providers timed interleaved" in report.markdown_table(run)


def test_the_gpu_timing_of_a_group_interleaves_the_events_too(monkeypatch):
    # the GPU path of timing.measure_each on a faked torch.cuda (test_bench_harness's _FakeGpu): each call's events
    # around its own step, round by round, one synchronize before reading them; then each call's passes
    from test_bench_harness import _FakeGpu

    from masksub_kernels.bench import timing

    gpu = _FakeGpu(monkeypatch, [0, 0, 2, 5, 4, 7, 0, 0])  # warm-ups, a / b / a / b in the rounds, the traced calls

    def named(name):
        return lambda: (gpu.log.append(name), gpu.call())

    calls = [timing.Call(named("a"), warmup=1, repeats=2, host_pass=False),
             timing.Call(named("b"), warmup=1, repeats=2, host_pass=False)]  # fmt: skip
    a, b = timing.measure_each(calls, CUDA)
    timed = lambda name: ["flush", "record", name, "fn", "record"]
    traced = lambda name: ["sync", "traced", name, "fn"]
    assert gpu.log == [
        "a", "fn", "b", "fn", "sync", *timed("a"), *timed("b"), *timed("a"), *timed("b"), "sync",
        *traced("a"), *traced("b"),
    ]  # fmt: skip
    assert (a.median_ms, b.median_ms) == (pytest.approx(3), pytest.approx(6)) and a.repeats == b.repeats == 2
    assert runner.measure_each is timing.measure_each  # what run_group times with
