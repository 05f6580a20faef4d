"""The benchmark code itself: a tiny run of each entry point completes and writes valid result files.
Speed is never asserted here."""

import json

import torch

from masksub_kernels.bench import cli, report
from masksub_kernels.bench.runner import OpCase, run_case
from masksub_kernels.bench.timing import copy_bandwidth_gbps, measure

REQUIRED = {"suite", "shape", "dtype", "provider", "mode", "bytes", "median_ms", "p20_ms", "p80_ms", "repeats"}


def test_measure_and_copy_bandwidth():
    timing = measure(lambda: torch.ones(10).sum(), torch.device("cpu"), warmup=1, repeats=3)
    assert timing.repeats == 3 and timing.p20_ms <= timing.median_ms <= timing.p80_ms
    assert copy_bandwidth_gbps(torch.device("cpu"), megabytes=8, repeats=2) > 0


def test_failing_provider_is_recorded_not_fatal():
    def broken(x):
        raise RuntimeError("unsupported here")

    case = OpCase("demo", "s", "float32", "broken", lambda: [torch.ones(2, requires_grad=True)], broken, {})
    records = run_case(case, torch.device("cpu"), repeats=1, warmup=0, copy_gbps=1.0)
    assert [r["mode"] for r in records] == ["forward", "backward", "full"]
    assert all("unsupported here" in r["error"] for r in records)


def test_cli_tiny_run_writes_json_markdown_and_plot(tmp_path, capsys):
    assert cli.main(["--tiny", "--device", "cpu", "--suites", "token_select", "--out", str(tmp_path)]) == 0
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md", ".png"]
    run = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert run["environment"]["device"].startswith("CPU") and run["copy_gbps"] > 0
    assert {r["provider"] for r in run["records"]} >= {"masksub[torch]", "official", "timm"}
    for record in run["records"]:
        if "error" not in record:
            assert REQUIRED <= set(record), record
            assert record["gbps"] > 0
    assert "No GPU here" in capsys.readouterr().out
    table = report.markdown_table(run)
    assert "| token_select |" in table and "vs official" in table
