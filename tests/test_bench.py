"""The benchmark code itself: a tiny run of each entry point completes and writes valid result files.
Speed is never asserted here."""

import collections
import functools
import json
import re
import sys
import types

import pytest
import torch
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels.bench import cli, report
from masksub_kernels.bench.runner import OpCase, run_case
from masksub_kernels.bench.timing import copy_bandwidth_gbps, measure
from masksub_kernels.bench.token_select import official_style

REQUIRED = {"suite", "shape", "dtype", "provider", "mode", "bytes", "median_ms", "p20_ms", "p80_ms", "repeats"}


def test_measure_and_copy_bandwidth():
    timing = measure(lambda: torch.ones(10).sum(), torch.device("cpu"), warmup=1, repeats=3)
    assert timing.repeats == 3 and timing.p20_ms <= timing.median_ms <= timing.p80_ms
    median, low, high = copy_bandwidth_gbps(torch.device("cpu"), megabytes=8, repeats=3)
    assert 0 < low <= median <= high  # the p80 copy's GB/s, the median's, the p20 copy's


def test_failing_provider_is_recorded_not_fatal():
    def broken(x):
        raise RuntimeError("unsupported here")

    case = OpCase("demo", "s", "float32", "broken", lambda: [torch.ones(2, requires_grad=True)], broken, {})
    records = run_case(case, torch.device("cpu"), repeats=1, warmup=0, copy_gbps=1.0)
    assert [r["mode"] for r in records] == ["forward", "backward", "full"]
    assert all("unsupported here" in r["error"] for r in records)


def test_cli_tiny_run_of_every_suite_writes_json_markdown_and_plot(tmp_path, capsys):
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md", ".png"]
    run = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert run["environment"]["device"].startswith("CPU") and run["copy_gbps"] > 0
    assert run["skipped_suites"] == {}
    records = run["records"]
    assert {r["suite"] for r in records} == set(cli.SUITES)
    assert [r for r in records if "error" in r] == []
    by_suite = {suite: {r["provider"] for r in records if r["suite"] == suite} for suite in cli.SUITES}
    assert by_suite["token_select"] >= {"masksub[torch]", "official", "timm", "compile(official)"}
    assert by_suite["loss"] >= {"masksub[torch]", "official", "eager(int labels)"}
    assert by_suite["grid_mask"] >= {"masksub[torch]", "official", "compile(official)"}
    # the fused-linear op computes its gradients in the forward: that row counts their flops, and has no speed-up
    fused_forward = next(r for r in records if r["suite"] == "linear_loss" and r["provider"] == "masksub[torch]")
    assert fused_forward["mode"] == "forward" and fused_forward["forward_computes_gradients"]
    full = next(
        r for r in records if r["suite"] == "linear_loss" and r["provider"] == "official" and r["mode"] == "full"
    )
    assert fused_forward["tflops"] == pytest.approx(full["tflops"] * full["median_ms"] / fused_forward["median_ms"])
    assert by_suite["train"] == {
        "plain", "masksub official-style (sequential)", "masksub (sequential)", "masksub (joint)"
    }  # fmt: skip
    for record in records:
        assert REQUIRED <= set(record), record
        if record["suite"] == "train":
            assert record["images_per_s"] > 0 and record["ideal_ratio"] == 1.5 and record["mode"] == "step"
            assert record["timing"] == "interleaved"  # a model's providers round by round (bench/train_step.py)
        else:
            assert record["gbps"] > 0 and record["fraction_of_copy"] > 0
    assert "No GPU here" in capsys.readouterr().out
    table = report.markdown_table(run)
    assert "| token_select |" in table and "vs official" in table and "time / plain" in table
    # a row on other inputs than the baseline's (the recompute op on MLM-like labels) gets no speed-up
    full_fused = next(r for r in records if r["suite"] == "linear_loss" and r["mode"] == "full"
                      and r["provider"] == "masksub[torch]")  # fmt: skip
    line = next(x for x in table.splitlines() if "| masksub[torch] |" in x and "| full |" in x and "linear" in x)
    full_fused["labels_differ"] = True
    other = next(x for x in report.markdown_table(run).splitlines() if x.startswith(line.split(" | masksub")[0])
                 and "| masksub[torch] |" in x and "| full |" in x)  # fmt: skip
    speedup = re.compile(r"\| \d+\.\d+x \|")  # the 'vs official' cell: e.g. '| 1.39x |'
    assert speedup.search(line) and not speedup.search(other)


def test_loss_reports_design_bytes_beside_minimal_and_predictions_beside_measured(tmp_path):
    """The loss moves 6 passes over the logits in full where the minimal count is 4: both fractions are reported;
    a model file of the card puts the predicted time beside the measured one."""
    case = OpCase(
        "loss", "s", "float32", "masksub[triton]", lambda: [torch.ones(4, requires_grad=True)], lambda x: x * 2,
        {"forward": 2, "backward": 4, "full": 4}, design_bytes={"forward": 2, "backward": 4, "full": 6},
    )  # fmt: skip
    records = run_case(case, torch.device("cpu"), repeats=1, warmup=0, copy_gbps=1.0)
    full = next(r for r in records if r["mode"] == "full")
    assert full["fraction_of_copy_design"] == pytest.approx(1.5 * full["fraction_of_copy"])
    # one prediction per provider: the cuda record must not take the triton one's (or overwrite it)
    model = {"environment": {"label": "PREDICTIONS"}, "records": [
        {"suite": "loss", "shape": "s", "dtype": "float32", "variant": "CE, class ids", "mode": "full",
         "provider": "masksub[triton]", "predicted_us": 123.0},
        {"suite": "loss", "shape": "s", "dtype": "float32", "variant": "CE, class ids", "mode": "full",
         "provider": "masksub[cuda]", "predicted_us": 456.0},
    ]}  # fmt: skip
    records += [{**full, "provider": "masksub[cuda]"}, {**full, "provider": "official"}]
    # the fused-linear loss's predictions (their own section of the model file), by provider
    model["linear_loss"] = {"shape": "BERT", "dtype": "bfloat16", "mode": "full", "providers": [
        {"provider": "masksub[triton] (grads in forward)", "predicted_us": 11000.0},
        {"provider": "compile(official) (assumed fused)", "predicted_us": 8000.0}],
        "chunk_sweep": [{"provider": "masksub[triton]:R=768", "predicted_us": 9000.0}],
        "vocabularies": [{"shape": "RoBERTa", "rule_us": 16000.0, "budget_rows": 192,
                          "budget_us": 20000.0}]}  # fmt: skip
    linear = {
        "suite": "linear_loss",
        "shape": "BERT",
        "dtype": "bfloat16",
        "mode": "full",
        "median_ms": 12.0,
        "p20_ms": 11.9,
        "p80_ms": 12.1,
    }
    records += [{**linear, "provider": "masksub[triton]"}, {**linear, "provider": "compile(official)"},
                {**linear, "mode": "forward", "provider": "masksub[triton]"},
                {**linear, "provider": "masksub[triton]:R=768"}]  # fmt: skip
    # the chunk floor's pair at RoBERTa's head (FLOOR_SHAPES), beside the model's 'other heads' predictions
    floor = [{**linear, "shape": "RoBERTa", "provider": p} for p in ("masksub[triton]", "masksub[triton]:R=192")]
    (tmp_path / "model-sm90.json").write_text(json.dumps(model))
    assert report.model_file(tmp_path, "GPU: NVIDIA H100 80GB HBM3") is None  # the H100 has its own file
    assert report.model_file(tmp_path, "GPU: NVIDIA H200 NVL") is None  # another form: not the SXM's model
    assert report.model_file(tmp_path, "GPU: NVIDIA GH200 480GB") is None  # Grace Hopper: no H200 (a word match)
    assert report.model_file(tmp_path, "GPU: NVIDIA GH200 144G HBM3e") is None
    path = report.model_file(tmp_path, "GPU: NVIDIA H200")
    run = {"environment": {"device": "GPU: NVIDIA H200", "torch": "-"}, "date": "-", "copy_gbps": 1.0,
           "records": records + floor}  # fmt: skip
    assert report.attach_predictions(run, path) == 7 and full["predicted_ms"] == pytest.approx(0.123)
    assert [r["predicted_ms"] for r in floor] == [pytest.approx(16.0), pytest.approx(20.0)]
    cuda, official, fused, compiled, forward, swept = records[-6:]
    assert swept["predicted_ms"] == pytest.approx(9.0)  # the chunk sweep's rows, by their provider names
    assert cuda["predicted_ms"] == pytest.approx(0.456) and "predicted_ms" not in official
    assert (fused["predicted_ms"], compiled["predicted_ms"]) == (pytest.approx(11.0), pytest.approx(8.0))
    assert "predicted_ms" not in forward
    records[-1].update(tflops=300.0, gbps=5.0, fraction_of_copy=0.002)  # a compute-bound row: no bytes' roofline
    table = report.markdown_table(run)
    assert "% of copy (design)" in table and "predicted ms" in table and "| 0.123 |" in table
    row = next(line for line in table.splitlines() if "| masksub[triton]:R=768 |" in line and "| full |" in line)
    assert "| 5.0 |" not in row and "| 0.2 |" not in row  # GB/s and % of copy: '-' (helper-252)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats: must be an int >= 1, got 0"),  # was the default, silently
        (["--repeats", "-1"], "--repeats: must be an int >= 1"),  # was every record an error, and exit status 0
        (["--warmup", "-3"], "--warmup: must be an int >= 1"),
        (["--warmup", "0"], "--warmup: must be an int >= 1"),  # compile(official) timed its compilation
        (["--suites", "loss", "loss"], "--suites names loss more than once"),  # every row twice in the .md
        (["--suites", "loss", "--suites", "grid_mask", "loss"], "--suites names loss more than once"),
        (["--append", "--overwrite"], "--append and --overwrite exclude each other"),
        (["--device", "cpu:3"], "the CPU takes no index"),
        (["--out", __file__], "not a directory that can be made"),  # before measuring, not at the first write
        (["--out", f"{__file__}/below"], "not a directory that can be made"),
        (["--device", "foo"], "--device must be auto, cpu, cuda or cuda:N, got 'foo'"),
        (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N, got 'meta'"),  # every record an error
        *([] if torch.cuda.is_available() else [(["--device", "cuda:1"], "no CUDA device is available here")]),
    ],
)
def test_bad_arguments_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_repeated_suites_options_add_up():
    assert cli.parse_args(["--suites", "loss", "--suites", "grid_mask"]).suites == ["loss", "grid_mask"]
    assert cli.parse_args([]).suites == list(cli.SUITES)


def test_a_measured_run_does_not_replace_the_days_files_unless_told(tmp_path, monkeypatch, capsys):
    suite = types.ModuleType("tiny_suite")
    suite.cases = lambda *args, **kwargs: [OpCase("tiny", "s", "float32", "p", lambda: [torch.ones(2)], torch.neg, {})]
    monkeypatch.setitem(sys.modules, "tiny_suite", suite)
    monkeypatch.setitem(cli.SUITES, "tiny", "tiny_suite")
    common = ["--device", "cpu", "--out", str(tmp_path), "--repeats", "1", "--warmup", "1", "--no-plot"]
    assert cli.main([*common, "--suites", "tiny"]) == 0
    (path,) = tmp_path.glob("*.json")
    before = path.read_bytes()
    assert cli.main([*common, "--suites", "tiny"]) == 2
    assert "exists (a run of this device and date): --append" in capsys.readouterr().err
    assert path.read_bytes() == before  # refused before anything was measured or written
    assert cli.main([*common, "--suites", "tiny", "--overwrite"]) == 0 and path.read_bytes() != before
    assert cli.main([*common, "--suites", "tiny", "--append"]) == 0


def test_a_tiny_run_is_named_and_labelled_apart_and_a_run_of_errors_fails(tmp_path, monkeypatch):
    def broken(x):
        raise RuntimeError("no kernel")

    suite = types.ModuleType("failing_suite")
    suite.cases = lambda *args, **kwargs: [OpCase("failing", "s", "float32", "p", lambda: [torch.ones(2)], broken, {})]
    monkeypatch.setitem(sys.modules, "failing_suite", suite)
    monkeypatch.setitem(cli.SUITES, "failing", "failing_suite")
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "failing"]) == 1
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "loss"]) == 0
    # appended to a measured run, a suite that measures nothing still fails (the earlier records are not its own)
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--append", "--suites", "failing"]) == 1
    (path,) = tmp_path.glob("*.md")
    assert path.stem.endswith("-tiny")  # never the day's measured files (benchmarks/results/<device>-<date>.*)
    assert "--tiny: a smoke test of the code, not a measurement" in path.read_text()


def test_a_suite_stopped_midway_keeps_its_finished_cases(tmp_path, monkeypatch):
    # the JSON is written after each case: a crash or a cap within a suite (its first GPU run: a segfault, a sticky
    # CUDA error) keeps the cases that finished
    def interrupted(x):
        raise KeyboardInterrupt

    good = OpCase("half", "s", "float32", "p", lambda: [torch.ones(2, requires_grad=True)], lambda x: x * 2, {})
    stop = OpCase("half", "s", "float32", "q", lambda: [torch.ones(2)], interrupted, {})
    half = types.ModuleType("half_suite")
    half.cases = lambda *args, **kwargs: [good, stop]
    monkeypatch.setitem(sys.modules, "half_suite", half)
    monkeypatch.setitem(cli.SUITES, "half", "half_suite")
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "half"]) == 130  # Ctrl-C
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    records = run["records"]
    assert {(r["suite"], r["provider"]) for r in records} == {("half", "p")} and len(records) == 3  # its 3 modes
    # marked as a part of its suite, in the JSON and the .md (helper-138: the .md showed a cut suite as whole)
    assert run["incomplete_suites"] == {"half": {"cases_done": 1, "cases": 2}}
    assert "**half: cut short after 1 of 2 cases**" in path.with_suffix(".md").read_text()


def test_files_are_written_after_each_suite_and_append_merges_runs(tmp_path, monkeypatch, capsys):
    # A run stopped during its second suite (here an exception, on a GPU the step's timeout) keeps the first.
    broken = types.ModuleType("broken_suite")
    broken.cases = lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt)
    monkeypatch.setitem(sys.modules, "broken_suite", broken)
    monkeypatch.setitem(cli.SUITES, "broken", "broken_suite")
    assert (
        cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "loss", "broken", "grid_mask"])
        == 130
    )
    (path,) = tmp_path.glob("*.json")
    assert {r["suite"] for r in json.loads(path.read_text())["records"]} == {"loss"}
    # the suite asked for after the stop is named in the files (helper-290: it appeared nowhere)
    assert json.loads(path.read_text())["skipped_suites"] == {"grid_mask": "not run: stopped by SIGINT (Ctrl-C)"}
    # --append: another process adds its suite to the same files; a suite measured again replaces its records
    for suites in (["grid_mask"], ["loss"]):
        capsys.readouterr()
        assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--append", "--suites", *suites]) == 0
        replacing = "--append: replacing the " in capsys.readouterr().out  # said (helper-290: it was silent)
        assert replacing == (suites == ["loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{path.stem}{s}" for s in (".json", ".md", ".png"))
    run = json.loads(path.read_text())
    count = collections.Counter(
        tuple(r[k] for k in ("suite", "shape", "dtype", "provider", "mode")) for r in run["records"]
    )
    assert {key[0] for key in count} == {"loss", "grid_mask"} and set(count.values()) == {1}


def test_linear_loss_memory_script_measures_both_providers(tmp_path, capsys):
    # benchmarks/linear_loss_memory.py (issue 13's measured CPU memory), tiny: the fused op holds no [M, C]
    from benchmarks import linear_loss_memory

    out = tmp_path / "memory.json"
    argv = ["--rows", "1024", "--depth", "16", "--classes", "8192", "--composite-rows", "1024", "--out", str(out)]
    assert linear_loss_memory.main(argv) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["provider"] for r in records] == ["fused", "composite", "fused"]
    fused, composite = records[0], records[1]
    assert fused["returned_gradients_mib"] == composite["returned_gradients_mib"] > 0
    assert 0 <= fused["extra_mib"] < composite["extra_mib"]
    assert composite["extra_mib"] >= composite["composite_lower_bound_mib"]  # 4 [M, C] fp32, at least
    assert "| fused | 1024 | 16 | 8192 | float32 |" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")  # interpreter
def test_linear_loss_numerics_script_separates_fp32_from_bf16_logits(tmp_path, capsys):
    # benchmarks/linear_loss_numerics.py (issue 13's numerics, measured), small: where the branches nearly agree, the
    # sub-branch gradient of the composites (bf16 logits) is far from float64, the fused op's (fp32 logits) is not
    from benchmarks import linear_loss_numerics

    out = tmp_path / "numerics.json"
    argv = ["--rows", "16", "--depth", "64", "--classes", "4096", "--no-compile", "--out", str(out)]
    assert linear_loss_numerics.main(argv) == 0
    run = json.loads(out.read_text())
    assert 0.95 < run["meta"]["softmax_similarity"] < 0.99
    errors = {r["provider"]: r["relative_error"]["d sub_hidden"] for r in run["records"]}
    assert set(errors) == {"masksub[triton]", "masksub[torch]", "linear+masksub_loss", "official"}
    assert max(errors["masksub[triton]"], errors["masksub[torch]"]) < 0.01  # the issue's 1%
    assert min(errors["linear+masksub_loss"], errors["official"]) > 0.03
    assert "| masksub[torch] |" in capsys.readouterr().out
    assert run["complete"]


def test_linear_loss_numerics_script_keeps_what_it_measured_when_stopped(tmp_path, monkeypatch):
    # the GPU scripts cap the script's time: the file is written after every provider, marked incomplete
    from benchmarks import linear_loss_numerics

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # what a cap's signal would interrupt

    monkeypatch.setattr(linear_loss_numerics, "official_composite", stopped)
    out = tmp_path / "numerics.json"
    argv = ["--rows", "8", "--depth", "32", "--classes", "512", "--no-compile", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        linear_loss_numerics.main(argv)
    run = json.loads(out.read_text())
    assert not run["complete"]
    assert [r["provider"] for r in run["records"]] == ["masksub[triton]", "masksub[torch]", "linear+masksub_loss"]


def test_gpu_ncu_script_runs_both_paths_of_the_fused_linear_op(monkeypatch, capsys):
    # benchmarks/gpu_ncu.py, what gpu_bench.sh profiles with Nsight Compute: on the CPU its calls at a tiny shape,
    # the gradients-in-forward op first (reduction 'mean'), then the recompute op, each once to warm up, once profiled
    from benchmarks import gpu_ncu
    from masksub_kernels.ops import linear_masksub_loss as lm
    from masksub_kernels.ops._linear_loss_chunks import grads_chunk_rows

    used = []
    for name in ("_linear_loss_grads_op", "_linear_loss_op"):
        op = getattr(lm, name)
        spy = functools.partial(lambda op, name, *args: used.append(name) or op(*args), op, name)
        if hasattr(op, "report_as"):
            spy.report_as = op.report_as
        monkeypatch.setattr(lm, name, spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU's tiny shape on a GPU machine too
    # then the chunk's loss launch alone, descending and ascending (the interpreter's, where it runs: one launch, as
    # on a GPU, with no class split of its 8 rows)
    from masksub_kernels.ops import _loss_fwd_bwd
    from masksub_kernels.ops import masksub_loss as ml

    orders, kernel = [], _loss_fwd_bwd._loss_fwd_bwd_kernel

    class Recorded:
        def __getitem__(self, grid):
            return lambda *args, **constants: orders.append(constants["DESCENDING"]) or kernel[grid](*args, **constants)

    monkeypatch.setattr(_loss_fwd_bwd, "_loss_fwd_bwd_kernel", Recorded())
    monkeypatch.setattr(ml, "SPLIT_PROGRAMS_PER_SM", 0)
    assert gpu_ncu.main([]) == 0
    assert used == ["_linear_loss_grads_op", "_linear_loss_op"] * 2
    out = capsys.readouterr().out
    assert "backend torch" in out and "profiled: gradients in the forward, one chunk: M=8 D=16 C=40" in out
    interpreted = mk.triton_interpreted()
    assert orders == ([True, False] * 2 if interpreted else []) and _loss_fwd_bwd.FORWARD_DESCENDING
    assert ("profiled: the chunk's loss launch alone, blocks ascending: M=8 C=40" in out) == interpreted
    # on a GPU: one chunk of BERT's step (its 43 chunks' kernels and launch configurations), the recompute op on all
    assert gpu_ncu.SHAPE == (16384, 768, 30522) and grads_chunk_rows(*gpu_ncu.SHAPE[2::-2]) == 384


class _Once(torch.autograd.Function):
    """x * 2 whose graph refuses a second backward, as torch.compile's does when it donates its saved buffers."""

    @staticmethod
    def forward(ctx, x):
        ctx.walked = False
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        if ctx.walked:
            raise RuntimeError("this graph was walked already")
        ctx.walked = True
        return grad * 2


def test_backward_mode_walks_a_fresh_graph_per_call_and_restores_the_backend():
    forwards = []

    def once(x):
        forwards.append(1)
        return _Once.apply(x)

    previous = mk.get_backend()
    case = OpCase("demo", "s", "float32", "once", lambda: [torch.ones(3, requires_grad=True)], once, {},
                  setup=lambda: mk.set_backend("torch"))  # fmt: skip
    records = run_case(case, torch.device("cpu"), repeats=4, warmup=1, copy_gbps=1.0)
    assert [r.get("error") for r in records] == [None, None, None]
    assert mk.get_backend() == previous  # the case's backend does not leak into later callers
    backward = next(r for r in records if r["mode"] == "backward")
    assert backward["repeats"] == 4 and backward.get("host_ms") is None  # host time: GPU runs only


def test_compiled_backward_with_donated_buffers_is_timed():
    # The H200 run (2026-11-30): torch.compile's backward after a dynamic-shape recompile donates its buffers and
    # refuses a retained graph; every compile(official) backward from the second shape on was an error.
    compiled = torch.compile(official_style)
    for shape in ((2, 17, 8), (2, 17, 16)):
        make = lambda shape=shape: [torch.randn(*shape, requires_grad=True)]
        case = OpCase("token_select", str(shape), "float32", "compile(official)", make, compiled, {},
                      modes=("backward",))  # fmt: skip
        (record,) = run_case(case, torch.device("cpu"), repeats=2, warmup=1, copy_gbps=1.0)
        assert "error" not in record, record["error"]


def test_a_provider_differentiates_only_the_inputs_it_uses():
    make = lambda: [torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)]
    main_only = lambda h, hs: (h * 2).sum()  # as Liger's main-branch CE: hs is not in its graph
    unused = OpCase("demo", "s", "float32", "main only", make, main_only, {})
    assert all("not have been used" in r["error"] for r in run_case(unused, torch.device("cpu"), repeats=1, warmup=0,
                                                                     copy_gbps=1.0)[1:])  # fmt: skip
    used = OpCase("demo", "s", "float32", "main only", make, main_only, {}, grad_inputs=(0,))
    assert [r.get("error") for r in run_case(used, torch.device("cpu"), repeats=1, warmup=0, copy_gbps=1.0)] == [
        None
    ] * 3


def test_host_time_beside_the_gpu_time_marks_host_bound_records():
    base = {"suite": "loss", "shape": "s", "dtype": "bfloat16", "mode": "forward", "p20_ms": 0.2, "p80_ms": 0.3}
    records = [
        {**base, "provider": "official", "median_ms": 0.05, "host_ms": 0.02, "host_bound": False},
        {**base, "provider": "masksub[triton]", "median_ms": 0.26, "host_ms": 0.34, "host_bound": True},
    ]
    run = {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "records": records}
    table = report.markdown_table(run)
    assert "| host ms |" in table and "host-bound: host ms >= median ms" in table
    assert "| 0.020 |" in table and "| 0.340 host-bound |" in table


def test_the_two_launches_row_runs_the_chunks_loss_as_before_and_restores_the_one(monkeypatch):
    # the GPU run's A/B of the chunks' one launch of the loss (ops/_loss_fwd_bwd.py): masksub[triton]:2 launches runs
    # masksub_loss's two launchers and the class tail by matmuls, with the same loss, and sets ONE_LAUNCH back
    from masksub_kernels.bench import linear_loss
    from masksub_kernels.ops import _loss_fwd_bwd
    from masksub_kernels.ops import masksub_loss as ml

    every = linear_loss.cases(torch.device("cuda"))
    names = [case.provider for case in every if case.shape.startswith("BERT")]
    assert names.index("masksub[triton]:2 launches") == names.index("masksub[triton]:R=192") - 2  # before the sweep
    assert names.index("masksub[triton]:ascending") == names.index("masksub[triton]:R=192") - 1
    launched = []
    for name in ("_forward_triton", "_backward_triton"):
        launcher = getattr(ml, name)
        monkeypatch.setattr(ml, name, lambda *a, _f=launcher, _n=name, **k: launched.append(_n) or _f(*a, **k))
    generator = torch.Generator().manual_seed(2)
    # C = 30: a class tail of 6; leaves that require grad: the gradients-in-forward path (the chunk loop)
    # on DEVICE: a GPU machine's Triton takes CUDA tensors only (helper-147)
    h, hs, w = (torch.randn(n, 8, generator=generator).to(DEVICE).requires_grad_(True) for n in (20, 20, 30))
    labels = torch.randint(0, 30, (20,), generator=generator).to(DEVICE)
    with mk.use_backend("triton"):
        one = linear_loss.fused(h, hs, w, None, labels)
        assert not launched
        two = linear_loss.fused_two_launches(h, hs, w, None, labels)
    assert launched == ["_forward_triton", "_backward_triton"] and _loss_fwd_bwd.ONE_LAUNCH
    torch.testing.assert_close(two, one, rtol=1e-6, atol=1e-6)


def test_the_ascending_row_runs_the_forward_from_the_first_class_up_and_restores_the_order(monkeypatch):
    # the GPU run's A/B of the loss forward's descending blocks (ops/_loss_fwd_bwd.py's FORWARD_DESCENDING): the
    # ascending row's one launch gets DESCENDING False, the default's True, the same loss; the default comes back
    from masksub_kernels.bench import linear_loss
    from masksub_kernels.ops import _loss_fwd_bwd
    from masksub_kernels.ops import masksub_loss as ml

    class Recorded:  # the one launch, its DESCENDING recorded
        def __getitem__(self, grid):
            def launch(*args, **constants):
                orders.append(constants["DESCENDING"])
                return kernel[grid](*args, **constants)

            return launch

    orders, kernel = [], _loss_fwd_bwd._loss_fwd_bwd_kernel
    monkeypatch.setattr(_loss_fwd_bwd, "_loss_fwd_bwd_kernel", Recorded())
    generator = torch.Generator().manual_seed(3)
    # the forward's blocks of 16 classes (its least), C = 70: 4 whole blocks, so the orders differ; no class split
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 32)
    monkeypatch.setattr(ml, "SPLIT_PROGRAMS_PER_SM", 0)
    h, hs, w = (torch.randn(n, 8, generator=generator).to(DEVICE).requires_grad_(True) for n in (20, 20, 70))
    labels = torch.randint(0, 70, (20,), generator=generator).to(DEVICE)
    with mk.use_backend("triton"):
        descending = linear_loss.fused(h, hs, w, None, labels)
        ascending = linear_loss.fused_ascending(h, hs, w, None, labels)
        again = linear_loss.fused(h, hs, w, None, labels)
    assert orders == [True, False, True] and _loss_fwd_bwd.FORWARD_DESCENDING
    torch.testing.assert_close(ascending, descending, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again, descending, rtol=0, atol=0)


def test_the_ab_rows_time_their_own_arms():
    # each A/B row of the GPU suite (BERT's shape) runs its arm, not the default op under another name (helper-195:
    # a row timing the default op under the A/B's name passed every other test, and the GPU run's A/B would read 0)
    from masksub_kernels.bench import linear_loss

    arms = {
        "masksub[triton]": linear_loss.fused,
        "masksub[triton]:2 launches": linear_loss.fused_two_launches,
        "masksub[triton]:ascending": linear_loss.fused_ascending,
    }
    every = [case for case in linear_loss.cases(torch.device("cuda")) if case.shape.startswith("BERT")]
    for provider, arm in arms.items():
        (case,) = [case for case in every if case.provider == provider]
        assert case.fn is arm, provider


def test_the_chunk_sweep_runs_the_op_with_its_chunks_and_restores_them(monkeypatch):
    # the GPU run's sweep of the fused-linear op's chunk budget (bench/linear_loss.py, CHUNK_SWEEP)
    from masksub_kernels.bench import linear_loss
    from masksub_kernels.ops import _linear_loss_chunks as chunks
    from masksub_kernels.ops import masksub_loss

    def settings():
        return chunks.grads_chunk_rows(30522, 16384), masksub_loss.SPLIT_PROGRAMS_PER_SM

    default = settings()
    with linear_loss.chunking(192):
        assert settings() == (768, 2)
        with linear_loss.chunking(96, 5):
            assert settings() == (384, 5)
            assert masksub_loss.class_splits(384, 30522, 1024, 132) == (2, 15360)  # the forward's rows split in 2
        assert settings() == (768, 2)
    assert settings() == default == (384, 2)
    assert masksub_loss.class_splits(384, 30522, 1024, 132) == (1, 30720)
    with linear_loss.chunking(48):  # the budget alone decides: 192 rows, under the op's floor of 384
        assert settings() == (192, 2)
    assert (chunks.GRADS_CHUNK_BYTES, chunks.GRADS_CHUNK_MIN_ROWS) == (96 * 2**20, 384)
    names = [linear_loss.sweep_provider(*entry, 30522) for entry in linear_loss.CHUNK_SWEEP]
    assert names == ["masksub[triton]:R=192", "masksub[triton]:R=512", "masksub[triton]:R=768",
                     "masksub[triton]:R=384,P=5"]  # fmt: skip
    # the cases a GPU run would time (built here without running): the sweep last, 'full' only, its own memory
    every = linear_loss.cases(torch.device("cuda"))
    cases = {case.provider: case for case in every if case.shape.startswith("BERT")}
    assert list(cases)[-6:-2] == names and all(cases[name].modes == ("full",) for name in names)
    # after the sweep the recompute op on MLM-like labels (15% counted), eager (its backward on the chunk loop) and
    # compiled (class ids: its own kernels): 'full' only, no TFLOP/s; the same loss as the op's mean over the
    # counted rows
    mlm_names = ["masksub[triton] recompute mlm15", "masksub[triton] recompute mlm15 compiled"]
    assert list(cases)[-2:] == mlm_names
    for mlm in (cases[name] for name in mlm_names):
        assert mlm.modes == ("full",) and mlm.flops is None and mlm.notes["counted_rows"] == 0.15
    generator = torch.Generator().manual_seed(1)
    h, hs, w = (torch.randn(n, 8, generator=generator).to(DEVICE) for n in (40, 40, 24))
    labels = torch.randint(0, 24, (40,), generator=generator).to(DEVICE)
    kept = torch.where(torch.arange(40, device=DEVICE) % 20 < 3, labels, -100)
    expected = mk.linear_masksub_loss(h, hs, w, None, kept).loss
    torch.testing.assert_close(linear_loss.fused_recompute_mlm(h, hs, w, None, labels), expected)
    # then the chunk floor's pair at RoBERTa's head: the default chunks (the floor, 384 rows) and the 96 MiB budget
    # alone (192 rows), 'full' only, each with its modelled memory; last of all the compiled MLM row (an Inductor
    # compile that a capped suite may not finish: helper-214)
    assert every[-1].provider == mlm_names[1] and every[-1].shape.startswith("BERT")
    floor = every[-3:-1]
    assert [(c.shape, c.provider, c.modes, c.notes["chunk_rows"]) for c in floor] == [
        ("RoBERTa-base MLM M=16384 D=768 C=50265", "masksub[triton]", ("full",), 384),
        ("RoBERTa-base MLM M=16384 D=768 C=50265", "masksub[triton]:R=192", ("full",), 192),
    ]
    assert floor[0].notes["modelled_extra_mb_fused"] > floor[1].notes["modelled_extra_mb_fused"]
    assert all(c.shape.startswith("BERT") for c in every[:-3]) and list(floor[0].flops) == ["full"]
    memory = {name: case.notes["modelled_extra_mb_fused"] for name, case in cases.items()}
    assert memory[names[0]] < memory["masksub[triton]"] < memory[names[1]] < memory[names[2]]
    assert memory[names[3]] == memory["masksub[triton]"]
    # the swept op is the op: same loss and gradients with 2-row chunks (the interpreter, tiny)
    generator = torch.Generator().manual_seed(0)
    h, hs = torch.randn(2, 9, 16, generator=generator, dtype=torch.bfloat16).to(DEVICE)
    weight = torch.randn(40, 16, generator=generator, dtype=torch.bfloat16).to(DEVICE) / 4
    bias = torch.zeros(40, dtype=torch.bfloat16, device=DEVICE)
    labels = torch.randint(0, 40, (9,), generator=generator).to(DEVICE)
    results, rows, programs = [], [], []
    chunk_rows, splits = chunks.grads_chunk_rows, masksub_loss.class_splits
    monkeypatch.setattr(chunks, "grads_chunk_rows", lambda *args: rows.append(chunk_rows(*args)) or rows[-1])

    def spy(*args):  # the loss kernels' programs per SM in force when their launchers split the rows
        programs.append(masksub_loss.SPLIT_PROGRAMS_PER_SM)
        return splits(*args)

    monkeypatch.setattr(masksub_loss, "class_splits", spy)
    two_rows = 2 * 2 * chunks.aligned_classes(40) * 4 / 2**20  # MiB: 2 rows of C = 40 (fp32 logits, padded rows)
    used = []
    for call in (linear_loss.fused, lambda *args: linear_loss.fused_chunked(two_rows, 5, *args)):
        inputs = [t.clone().requires_grad_(True) for t in (h, hs, weight, bias)]
        with mk.use_backend("triton"):
            loss = call(*inputs, labels)
        loss.backward()
        results.append([loss.detach(), *(t.grad for t in inputs)])
        used.append(set(programs))
        programs.clear()
    assert rows[-1] == 2 and rows[0] > 9  # the swept call ran 5 chunks, the default one
    assert used == [{2}, {5}]  # the swept call's loss kernels split with its programs per SM
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)


@pytest.mark.skipif(not mk.triton_interpreted(), reason="a CPU tool: it stubs the Triton interpreter's launches")
def test_linear_loss_host_script_times_the_loop_with_stubbed_launches(tmp_path, capsys):
    # benchmarks/linear_loss_host.py: the fused-linear loop's host time per chunk, Triton launches stubbed (counted)
    from benchmarks import linear_loss_host

    out = tmp_path / "host.json"
    argv = ["--chunks", "3", "--rows", "4,2", "--repeats", "2", "--out", str(out)]
    assert linear_loss_host.main(argv) == 0
    records = json.loads(out.read_text())["records"]
    assert [record["rows_per_chunk"] for record in records] == [4, 2]
    for record in records:
        assert record["chunks"] == 3 and record["us_per_chunk"] >= record["min_us_per_chunk"] > 0
        # the loss forward and backward of every chunk in one, and the backward's 4 scalings (dH, dHs, dW, db), stubbed
        assert record["triton_launches_per_chunk"] == round((3 + 4) / 3, 2)
    printed = capsys.readouterr().out
    assert "| 3 x 4 | 8 | 64 |" in printed and "| 3 x 2 | 8 | 64 |" in printed
