"""A benchmark run's files across invocations (masksub_kernels/bench/cli.py, report.py): a run stopped midway says
so, --append adds only to a run measured alike, --report-only rewrites a run's report without changing what it
measured or predicted (helper-138's audit: findings 2, 3, 8-10, 12)."""

import datetime
import json
import os
import re
import signal
import sys
import time
import types

import pytest
import torch

from masksub_kernels.bench import cli, report
from masksub_kernels.bench.runner import OpCase
from masksub_kernels.bench.timing import environment


def double(x):
    return x * 2


def stop_by_sigterm(x):
    time.sleep(0.2)  # this suite's time: counted in the run's seconds although it was stopped
    os.kill(os.getpid(), signal.SIGTERM)  # what a cap's `timeout` sends (benchmarks/gpu_lib.sh)
    return x * 2


@pytest.fixture
def suites(monkeypatch):
    """A suite 'two' of two cases whose second runs ``second[0]``, and a suite 'one' of one case."""
    second = [double]

    def add(name, cases):
        module = types.ModuleType(f"{name}_suite")
        module.cases = cases
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(cli.SUITES, name, module.__name__)

    def make(suite, provider, fn):
        return OpCase(suite, "s", "float32", provider, lambda: [torch.ones(2, requires_grad=True)], fn, {"full": 8})

    add("two", lambda *a, **k: [make("two", "official", double), make("two", "p", lambda x: second[0](x))])
    add("one", lambda *a, **k: [make("one", "official", double)])
    return second


def run_of(tmp_path) -> tuple[dict, str]:
    (path,) = tmp_path.glob("*.json")
    return json.loads(path.read_text()), path.with_suffix(".md").read_text()


def test_a_stopped_run_marks_not_run_only_the_suites_it_never_started(tmp_path, suites, monkeypatch):
    # helper-294: the mark was inferred from the suites with rows, so a suite that finished with zero cases (an
    # empty case list: nothing of it on this machine) was said to be 'not run: stopped by SIGTERM'
    suites[0] = stop_by_sigterm
    empty = types.ModuleType("empty_suite")
    empty.cases = lambda *a, **k: []
    monkeypatch.setitem(sys.modules, empty.__name__, empty)
    monkeypatch.setitem(cli.SUITES, "empty", empty.__name__)
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "empty", "two", "one"]
    assert cli.main(args) == 143
    run, table = run_of(tmp_path)
    assert run["skipped_suites"] == {"one": "not run: stopped by SIGTERM"}  # 'empty' ran (nothing), 'two' was cut
    assert run["incomplete_suites"] == {"two": {"cases_done": 1, "cases": 2}}
    assert {r["suite"] for r in run["records"]} == {"two"} and "empty" not in table


def test_sigterm_writes_the_marked_files_and_restores_the_handler(tmp_path, suites, capsys, monkeypatch):
    suites[0] = stop_by_sigterm
    before = signal.getsignal(signal.SIGTERM)
    attached = []  # the model's predictions: after 'one', and for the cut suite's rows before the files (helper-142)
    monkeypatch.setattr(cli, "_attach_predictions", lambda run, path: attached.append(len(run["records"])))
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "one", "two"]
    assert cli.main(args) == 143
    assert attached == [3, 6]
    assert signal.getsignal(signal.SIGTERM) is before
    assert "stopped by SIGTERM (two cut short after 1 of 2 cases)" in capsys.readouterr().err
    run, table = run_of(tmp_path)
    assert run["incomplete_suites"] == {"two": {"cases_done": 1, "cases": 2}}  # 'one' ended: not marked
    assert {(r["suite"], r["provider"]) for r in run["records"]} == {("one", "official"), ("two", "official")}
    assert "**two: cut short after 1 of 2 cases**" in table and "one: cut" not in table
    assert not list(tmp_path.glob("*.partial"))  # every file renamed into place
    assert run["seconds"] >= 0.2  # the stopped suite's time counted too


def test_append_clears_the_mark_of_a_suite_measured_again_and_keeps_the_others(tmp_path, suites, monkeypatch):
    suites[0] = stop_by_sigterm
    common = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-plot"]
    assert cli.main([*common, "--suites", "two"]) == 143
    assert cli.main([*common, "--append", "--suites", "one"]) == 0
    run, table = run_of(tmp_path)
    assert run["incomplete_suites"] == {"two": {"cases_done": 1, "cases": 2}} and "two: cut short" in table
    suites[0] = double
    assert cli.main([*common, "--append", "--suites", "two"]) == 0
    run, table = run_of(tmp_path)
    assert run["incomplete_suites"] == {} and "cut short" not in table
    assert sorted((r["suite"], r["provider"], r["mode"]) for r in run["records"] if r["mode"] == "full") == [
        ("one", "official", "full"), ("two", "official", "full"), ("two", "p", "full")
    ]  # fmt: skip
    # a suite named again whose code cannot be imported now: skipped, its earlier records and mark gone
    suites[0] = stop_by_sigterm
    assert cli.main([*common, "--append", "--suites", "two"]) == 143
    monkeypatch.setitem(cli.SUITES, "two", "no_such_module_here")
    assert cli.main([*common, "--append", "--suites", "two"]) == 1  # nothing measured
    run, table = run_of(tmp_path)
    assert run["incomplete_suites"] == {} and "two: skipped (not available: No module named" in table
    assert {r["suite"] for r in run["records"]} == {"one"}


def test_append_refuses_a_run_measured_otherwise_or_not_a_run(tmp_path, suites, capsys):
    common = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-plot"]
    assert cli.main([*common, "--append", "--suites", "one"]) == 0
    assert "--append: no earlier run at" in capsys.readouterr().out  # gpu_bench.sh's first suite: a note
    (path,) = tmp_path.glob("*.json")
    before = path.read_text()
    assert cli.main([*common, "--append", "--suites", "two", "--repeats", "3"]) == 2
    assert "measured otherwise (repeats 2 there, 3 now)" in capsys.readouterr().err
    earlier = json.loads(before)
    earlier["environment"]["torch"] = "2.8.0"
    path.write_text(json.dumps(earlier))
    assert cli.main([*common, "--append", "--suites", "two"]) == 2
    assert f"torch '2.8.0' there, '{torch.__version__}' now" in capsys.readouterr().err
    for text in ("not json", '{"records": []}', json.dumps({**earlier, "records": [{"suite": "one"}]})):
        path.write_text(text)
        assert cli.main([*common, "--append", "--suites", "two"]) == 2  # was a traceback
        assert "is not a benchmark run's JSON" in capsys.readouterr().err and path.read_text() == text
    earlier = json.loads(before)
    earlier["environment"]["driver"] = "580.1"  # nvidia-smi read by one suite's process and not the next's
    path.write_text(json.dumps(earlier))
    assert cli.main([*common, "--append", "--suites", "two"]) == 0
    assert "the earlier run's" in capsys.readouterr().out  # its copy bandwidth: said where it comes from


def test_the_files_say_what_a_cpu_run_is_and_which_code_ran(tmp_path, suites):
    def mine(signum, frame):  # the caller's handler: given back when the run ends
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "one", "--no-plot"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
    run, table = run_of(tmp_path)
    env = run["environment"]
    assert env["masksub_kernels"] and f"masksub_kernels {env['masksub_kernels']}" in table
    if env["commit"]:  # a git checkout (this one's tests, a clean clone's CI)
        assert f"({env['commit']})" in table
    assert "No GPU: CPU times of this library's torch backend" in table
    low, high = run["copy_gbps_range"]
    assert low <= run["copy_gbps"] <= high and f"p20-p80 {report.copy_range((low, high))})" in table
    # a spread of more than 1.5x says so: every '% of copy' is as uncertain (helper-138: 1-70 GB/s on a loaded CPU)
    assert "every '% of copy' below is as uncertain" in report.markdown_table({**run, "copy_gbps_range": [1.0, 70.0]})
    assert "as uncertain" not in report.markdown_table({**run, "copy_gbps_range": [10.0, 12.0]})


def test_a_suite_stopped_before_its_cases_is_marked(tmp_path, suites, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the suite builds its cases (its imports, compiled baselines)

    monkeypatch.setattr(sys.modules["two_suite"], "cases", interrupted)
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "one", "two", "--no-plot"]
    assert cli.main(args) == 130
    run, table = run_of(tmp_path)
    assert run["incomplete_suites"] == {"two": {"cases_done": 0, "cases": None}}
    assert "**two: cut short before its first case**" in table
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
    assert cli.main(["--report-only", str(next(tmp_path.glob("*.json"))), "--no-plot"]) == 0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]  # --no-plot: no .png (helper-142)


def test_report_only_keeps_the_runs_predictions_unless_told(tmp_path, suites, capsys):
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "one", "--no-plot"]) == 0
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    run["environment"]["device"] = "GPU: NVIDIA H200"  # the committed model file of the card
    run["records"][0]["predicted_ms"] = 1.25
    run["model"] = {"file": "model-sm90.json", "label": "PREDICTIONS", "card": "H200", "date": "2020-01-01"}
    path.write_text(json.dumps(run))
    assert cli.main(["--report-only", str(path)]) == 0
    kept = json.loads(path.read_text())
    assert kept["records"][0]["predicted_ms"] == 1.25 and kept["model"] == run["model"]
    assert (
        "predicted ms: PREDICTIONS (model-sm90.json: card H200, date 2020-01-01)."
        in path.with_suffix(".md").read_text()
    )
    assert cli.main(["--report-only", str(path), "--repredict"]) == 0  # today's model: its date in the label
    model = json.loads((cli.default_output_directory() / "model-sm90.json").read_text())["environment"]
    assert json.loads(path.read_text())["model"]["date"] == model["date"]
    assert f"date {model['date']}" in path.with_suffix(".md").read_text()


def test_a_gpu_run_without_a_model_file_says_why_it_has_no_predictions(tmp_path, suites, capsys, monkeypatch):
    # an installed package (no benchmarks/results of the source checkout) or another card: the predictions were
    # left out silently; now a line says why: the card is not the model's, or its file is not where it was looked for
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "one", "--no-plot"]) == 0
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())
    capsys.readouterr()
    # a card the model does not cover, though the files are here (the source checkout): that, not 'are not in'
    # (helper-325: the PCIe / NVL forms were told their files were missing; a GH200 got the H200's model)
    for card in ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 PCIe", "NVIDIA H200 NVL", "NVIDIA GH200 480GB"):
        run["environment"]["device"] = f"GPU: {card}"
        path.write_text(json.dumps(run))
        assert cli.main(["--report-only", str(path), "--no-plot"]) == 0
        said = capsys.readouterr().out
        assert (
            f"performance model: no predictions attached: the model covers the H100 SXM and H200 SXM only; GPU: "
            f"{card} has none" in said
        ) and "are not in" not in said, said
        assert "predicted ms: " not in path.with_suffix(".md").read_text()  # no model named
    for card in ("NVIDIA H200", "NVIDIA H100 80GB HBM3"):  # the cards it covers: their files found, nothing said
        run["environment"]["device"] = f"GPU: {card}"
        path.write_text(json.dumps(run))
        assert cli.main(["--report-only", str(path), "--no-plot"]) == 0
        said = capsys.readouterr().out
        assert "no predictions attached" not in said and "performance model: " in said, said
    run["environment"]["device"] = "GPU: NVIDIA H200"  # its card, run from an installed package
    path.write_text(json.dumps(run))
    monkeypatch.setattr(cli, "default_output_directory", lambda: tmp_path / "elsewhere")
    assert cli.main(["--report-only", str(path), "--no-plot"]) == 0
    assert f"are not in {tmp_path / 'elsewhere'}" in capsys.readouterr().out
    run["environment"]["device"] = "CPU: x86_64"  # a CPU run has none to attach: nothing said
    path.write_text(json.dumps(run))
    assert cli.main(["--report-only", str(path), "--no-plot"]) == 0
    assert "performance model" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "x"], "--out: not with --report-only (it measures nothing, and writes beside RUN.json)"),
        (["--suites", "loss", "--repeats", "3"], "--suites, --repeats: not with --report-only"),
        (["--append"], "--append: not with --report-only"),
    ],
)
def test_report_only_refuses_the_options_of_a_measurement(tmp_path, capsys, args, message):
    path = tmp_path / "run.json"
    path.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--report-only", str(path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_report_only_checks_the_json_before_writing_anything(tmp_path, capsys):
    text = tmp_path / "run.txt"
    text.write_text("{}")
    with pytest.raises(SystemExit):
        cli.parse_args(["--report-only", str(text)])
    assert "takes a run's .json file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--repredict"])
    assert "--repredict goes with --report-only" in capsys.readouterr().err
    path = tmp_path / "run.json"
    for run in (
        {"environment": {"device": "CPU: x"}, "records": [{"suite": "loss"}]},  # was a KeyError after rewriting it
        {"environment": {"device": "CPU: x"}, "records": [], "copy_gbps": 1.0},  # no date, no torch
    ):
        path.write_text(json.dumps(run))
        assert cli.main(["--report-only", str(path)]) == 2
        assert "is not a benchmark run's JSON" in capsys.readouterr().err
        assert json.loads(path.read_text()) == run and sorted(p.name for p in tmp_path.iterdir()) == [
            "run.json", "run.txt"
        ]  # fmt: skip


def test_plot_titles_mark_cut_suites_tiny_runs_and_the_cpu(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    titles = []
    import matplotlib.axes
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **k: titles.append(t))
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **k: titles.append(t))
    record = {"suite": "two", "shape": "s", "dtype": "float32", "mode": "full", "provider": "p", "median_ms": 1.0}
    run = {"environment": {"device": "CPU: x"}, "date": "d", "tiny": True, "records": [record],
           "incomplete_suites": {"two": {"cases_done": 1, "cases": 2}}}  # fmt: skip
    assert report.plot(run, tmp_path / "p.png")
    assert titles == [
        "two (cut short after 1 of 2 cases)",
        "CPU: x - d (lower is better)\nCPU: the torch backend, not the kernels\n"
        "--tiny: a smoke test, not a measurement",
    ]  # (a line each: one ran past the figure's edges, helper-290)


def test_off_a_gpu_the_run_times_the_torch_backend_whatever_the_process_chose(monkeypatch, tmp_path):
    # helper-290: the train suite's library rows ran the process's backend (MASKSUB_BACKEND=triton with the
    # interpreter: 83x plain) where the header says the torch backend's
    import masksub_kernels as mk

    seen = []
    monkeypatch.setattr(cli, "_measure", lambda args, device, on_gpu: seen.append(mk.get_backend()) or 0)
    with mk.use_backend("triton"):
        assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
        assert mk.get_backend() == "triton"  # restored after the run
    assert seen == ["torch"]


def test_an_unknown_masksub_backend_is_refused_before_the_run(monkeypatch, tmp_path, capsys):
    # helper-290: a backend that cannot run crashed the run midway with a traceback, after its header
    from masksub_kernels import _backend

    monkeypatch.setenv("MASKSUB_BACKEND", "bogus")
    monkeypatch.setattr(_backend, "_requested", None)
    monkeypatch.setattr(cli, "_measure", lambda *args: pytest.fail("the run started"))
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("masksub-bench: the process's backend (MASKSUB_BACKEND): ")


def test_a_run_with_nothing_to_draw_removes_an_earlier_png(tmp_path, monkeypatch):
    # helper-290: after an --overwrite with nothing to draw (the train suite alone), the replaced run's .png stayed
    # beside the new .json and .md
    pytest.importorskip("matplotlib")
    (tmp_path / "s.png").write_bytes(b"an earlier run's")
    train = {"suite": "train", "shape": "s", "dtype": "float32", "mode": "forward", "provider": "plain",
             "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "repeats": 10}  # fmt: skip
    run = {"environment": {"device": "CPU: x", "torch": "-"}, "date": "d", "copy_gbps": 1.0, "repeats": 10,
           "warmup": 2, "records": [train]}  # fmt: skip
    assert sorted(report.write(run, tmp_path, "s")) == ["json", "md"]
    assert not (tmp_path / "s.png").exists()
    (tmp_path / "s.png").write_bytes(b"kept")
    report.write(run, tmp_path, "s", with_plot=False)  # --no-plot: an earlier one left as it is (documented)
    assert (tmp_path / "s.png").read_bytes() == b"kept"
    # without matplotlib (an optional extra) nothing is drawn, and a good .png is kept (helper-291: removed)
    drawable = {**train, "suite": "loss", "mode": "full", "provider": "official"}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert sorted(report.write({**run, "records": [drawable]}, tmp_path, "s")) == ["json", "md"]
    assert (tmp_path / "s.png").read_bytes() == b"kept"


def test_a_result_file_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path, suites, capsys, monkeypatch):
    # helper-335: a folder in the JSON's place (or a full disk) was an IsADirectoryError's traceback mid-run
    (tmp_path / f"{_stem()}-tiny.json").mkdir()
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--suites", "one", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / _stem()}-tiny.json: Is a directory" in err and "--out a writable" in err
    assert "Traceback" not in err and not list(tmp_path.glob("*.partial"))
    # --report-only on a fetched run in a read-only folder (the device tool's files_at): a PermissionError
    assert cli.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "run"), "--suites", "one"]) == 0
    (path,) = (tmp_path / "run").glob("*.json")

    def read_only(source, target):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(report.os, "replace", read_only)
    assert cli.main(["--report-only", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"could not write {path.with_suffix('.md')}: Permission denied" in err and "writable folder" in err
    assert not list((tmp_path / "run").glob("*.partial"))


def test_the_default_output_directory_is_checked_before_measuring(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cli, "default_output_directory", lambda: tmp_path / "file" / "results")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--tiny"])
    assert exit_info.value.code == 2
    assert f"the default output directory {tmp_path / 'file' / 'results'} (--out another)" in capsys.readouterr().err


def _stem() -> str:
    """The name cli gives this machine's CPU run of today (without -tiny)."""
    date = os.environ.get("MASKSUB_BENCH_DATE") or datetime.date.today().isoformat()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{environment(torch.device('cpu'))['device']}-{date}").strip("-")


def test_full_and_tiny_are_refused_together(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--full", "--tiny"])
    assert exit_info.value.code == 2 and "--full and --tiny exclude each other" in capsys.readouterr().err


def test_a_folder_that_cannot_be_made_and_a_write_that_gives_up_leave_nothing(tmp_path):
    # helper-341's mutation audit: the output folder itself unmakable (a file in its place) is a NotWritten naming
    # it, not an OSError's traceback; a write that returns False leaves no .partial of what it had written
    (tmp_path / "file").write_text("")
    with pytest.raises(report.NotWritten, match=f"could not write into {re.escape(str(tmp_path / 'file' / 'run'))}"):
        report.write({"records": []}, tmp_path / "file" / "run", "s", json_only=True)

    def gives_up(partial):
        partial.write_text("half")
        return False

    assert report._replace(tmp_path / "s.png", gives_up) is False
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


def test_an_out_directory_that_is_not_writable_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    # helper-341's mutation audit: a folder that exists but cannot be written into (root reads every folder as
    # writable, so os.access stands in for a user's read-only one) is refused before anything is measured
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--tiny", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--out {tmp_path}: the directory is not writable" in capsys.readouterr().err


# a run's JSON that is not one is refused in words, not by the name of the Python exception that found it
@pytest.mark.parametrize(
    "text, said",
    [
        ("", "no JSON (Expecting value at line 1, column 1); empty or cut short?"),
        ("[1]", "no 'environment' object at its top level (not a masksub_kernels.bench run)"),
        ('{"environment": {}, "records": []}', "its 'environment' names no 'device'"),
        ('{"environment": {"device": "CPU: x"}}', "no 'records' list at its top level"),
        ('{"environment": {"device": "CPU: x"}, "records": [3]}', "record 0 has no 'suite', 'shape', 'dtype'"),
        ('{"environment": {"device": "CPU: x"}, "records": [], "copy_gbps": "fast"}', "'copy_gbps' is 'fast', not"),
        ('{"environment": {"device": "CPU: x"}, "records": [], "copy_gbps": true}', "'copy_gbps' is True, not a"),
        ('{"environment": {"device": "CPU: x"}, "records": [], "copy_gbps": 1}', "do not make the table (no field"),
        # helper-347: a missing copy, a NaN one; names that are no strings; marks that are no objects
        ('{"environment": {"device": "CPU: x"}, "records": []}', "it has no 'copy_gbps' (the copy bandwidth)"),
        ('{"environment": {"device": "CPU: x"}, "records": [], "copy_gbps": NaN}', "'copy_gbps' is nan, not a finite"),
        (
            '{"environment": {"device": "CPU: x"}, "records": [{"suite": "loss", "shape": [1], "dtype": "f", "mode": '
            '"m", "provider": "p"}]}',
            "record 0's 'shape' is [1], not a name",
        ),
        ('{"environment": {"device": "CPU: x"}, "records": [], "model": "sm90"}', "its 'model' is str 'sm90', not an"),
    ],
)
def test_a_json_that_is_no_run_is_refused_in_words(tmp_path, capsys, text, said):
    path = tmp_path / "run.json"
    path.write_text(text)
    assert cli.main(["--report-only", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a benchmark run's JSON: {said}"[:60] in err and said in err
    assert "Error:" not in err  # (KeyError:, JSONDecodeError:, TypeError: were the messages before)


# helper-347's audit of report.read_run (each case names the mutant it kills)
@pytest.mark.parametrize(
    "content, said",
    [
        # except (OSError, UnicodeDecodeError) -> except OSError: a traceback
        (b"\xff\xfe{}", "it could not be read ('utf-8' codec can't decode byte 0xff"),
        # getattr(exc, 'strerror', None) or exc -> exc: "[Errno 21] Is a directory: '...'"
        (None, "it could not be read (Is a directory)"),
        # exc.lineno / exc.colno swapped or either left out
        (b"\n\n   {x", "no JSON (Expecting property name enclosed in double quotes at line 3, column 5)"),
        # the ValueError / RecursionError clause left out: Python's own message without the file, or a traceback
        (b'{"copy_gbps": ' + b"9" * 5000 + b"}", "no JSON this reads (Exceeds the limit (4300 digits)"),
        (b"[" * 100000 + b"]" * 100000, "no JSON this reads (maximum recursion depth exceeded"),
    ],
)
def test_a_file_that_is_no_readable_json_is_refused_in_words(tmp_path, capsys, content, said):
    from tools.perf_model import measured

    path = tmp_path / "run.json"
    path.mkdir() if content is None else path.write_bytes(content)
    if content is None:  # --report-only refuses a directory itself
        with pytest.raises(SystemExit):
            cli.main(["--report-only", str(path)])
        assert f"--report-only: {path}: is a directory, not a run's .json file" in capsys.readouterr().err
    else:
        assert cli.main(["--report-only", str(path)]) == 2
        assert f"{path} is not a benchmark run's JSON: {said}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a benchmark run's JSON: {said}")):
        measured.load_run(path)
