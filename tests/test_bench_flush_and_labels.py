"""helper-252's review of the benchmarks, findings 2-5: the L2 flush between timed repeats reads and writes nothing
that L2 would write back inside the next timed region; '% of copy' over 100% is marked and explained; the train
table says that its steps' host time is not measured (or shows it where a run has it); its peak memory is labelled
as the step's peak above its start, not the process's. CPU only."""

import json
import pathlib
import types

import pytest
import torch

from masksub_kernels.bench import cli, report, timing

CPU = torch.device("cpu")
MiB = 2**20


# --- timing.py: the L2 flush (finding 2) --------------------------------------------------------------------------


def test_the_l2_flush_reads_its_whole_buffer_and_writes_none_of_it():
    flush = timing.L2Flush(CPU, nbytes=4096)
    assert flush.buffer.numel() * flush.buffer.element_size() == 4096 and flush.total.numel() == 1
    flush.buffer.fill_(1.0)  # (made as zeros: ones show that every element is read)
    written = flush.buffer._version  # an in-place write (a memset, zero_, fill_) would bump it
    flush()
    flush()
    assert flush.buffer._version == written  # no write into the buffer: L2 holds clean lines of it afterwards
    assert flush.total.item() == 1024  # every one of its 1024 floats read; the one element it writes: the sum


def test_the_l2_flush_reads_several_times_the_l2_of_any_card(monkeypatch):
    assert timing.l2_flush_bytes(CPU) == timing.L2_FLUSH_BYTES == 256 * MiB  # what the memset flushed before
    properties = types.SimpleNamespace(L2_cache_size=50 * MiB)  # an H100 or H200
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    assert timing.l2_flush_bytes(torch.device("cuda")) == 256 * MiB  # > 4x its L2
    properties.L2_cache_size = 96 * MiB  # a card with more L2: 4x it
    assert timing.l2_flush_bytes(torch.device("cuda")) == 384 * MiB
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace())  # older torch
    assert timing.l2_flush_bytes(torch.device("cuda")) == 256 * MiB


def test_the_gpu_timing_flushes_with_the_read_flush_of_the_device(monkeypatch):
    # measure_each makes one timing.L2Flush for the device and calls it before each timed repeat (the order of the
    # calls: test_bench_harness's _FakeGpu); a write flush (torch.empty(...).zero_()) is not what it runs
    from test_bench_harness import _FakeGpu

    gpu = _FakeGpu(monkeypatch, [0, 2, 3, 0])
    made = []
    fake = timing.L2Flush
    monkeypatch.setattr(timing, "L2Flush", lambda device: made.append(device) or fake(device))
    timing.measure(gpu.call, torch.device("cuda:0"), warmup=1, repeats=2, host_pass=False)
    assert made == [torch.device("cuda:0")] and gpu.log.count("flush") == 2


# --- report.py: '% of copy' over 100% (finding 3) -----------------------------------------------------------------

_ROW = {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "forward", "p20_ms": 1.0, "p80_ms": 1.0}


def _run(records):
    return {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "repeats": 30,
            "warmup": 5, "records": records}  # fmt: skip


def _cells(table: str, provider: str) -> dict[str, str]:
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| suite |"))
    (row,) = [line for line in lines if f"| {provider} |" in line and line.startswith("| loss |")]
    return dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in row.split("|")), strict=True))


def test_a_percent_of_copy_over_100_is_marked_and_explained():
    over = {**_ROW, "provider": "masksub[triton]", "median_ms": 1.0, "gbps": 4.5, "fraction_of_copy": 1.07,
            "fraction_of_copy_design": 1.6}  # fmt: skip
    under = {**_ROW, "provider": "official", "median_ms": 2.0, "gbps": 2.0, "fraction_of_copy": 0.5}
    table = report.markdown_table(_run([over, under]))
    cells = _cells(table, "masksub[triton]")
    assert cells["% of copy (minimal)"] == f"107.0{report.OVER_COPY}"
    assert cells["% of copy (design)"] == f"160.0{report.OVER_COPY}"
    assert _cells(table, "official")["% of copy (minimal)"] == "50.0"  # no mark at or under 100
    assert report.COPY_NOTE in table and "read + write roofline" in table  # the column's denominator, named
    assert report.COPY_NOTE.startswith(report.OVER_COPY)  # the note says what the mark means
    table = report.markdown_table(_run([under, {**under, "provider": "p", "fraction_of_copy": 1.0}]))
    assert report.COPY_NOTE not in table and report.OVER_COPY not in table  # exactly 100: not over


def test_a_compute_bound_rows_bytes_do_not_bring_the_note():
    # its GB/s and % of copy are not shown (helper-252: its bytes are no roofline), so there is nothing to explain
    row = {**_ROW, "provider": "masksub[triton]", "median_ms": 1.0, "fraction_of_copy": 3.0, "tflops": 100.0}
    assert report.COPY_NOTE not in report.markdown_table(_run([row]))


# --- report.py: the training table (findings 4 and 5) ------------------------------------------------------------

_STEP = {"suite": "train", "shape": "vit", "dtype": "bf16", "mode": "step", "p20_ms": 10.0, "p80_ms": 10.0,
         "repeats": 10, "peak_mem_mb": 300.0}  # fmt: skip


def _train_cells(table: str, provider: str) -> dict[str, str]:
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    (row,) = [line for line in lines if line.startswith("| vit |") and f"| {provider} |" in line]
    return dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in row.split("|")), strict=True))


def test_the_training_table_says_its_host_time_is_not_measured():
    records = [{**_STEP, "provider": "plain", "median_ms": 10.0}, {**_STEP, "provider": "joint", "median_ms": 15.0}]
    table = report.markdown_table(_run(records))
    assert _train_cells(table, "joint")["host ms"] == "-"
    assert "host ms: not measured (whole steps get no host-time pass" in table
    assert "a host-bound step is not marked" in table
    cpu = report.markdown_table({**_run(records), "environment": {"device": "CPU: X", "torch": "-"}})
    assert "not measured" not in cpu and "host ms: '-' on the CPU, where the median is the host time" in cpu


def test_the_training_table_marks_a_host_bound_step_where_its_host_time_was_measured():
    records = [{**_STEP, "provider": "plain", "median_ms": 10.0, "host_ms": 4.0, "host_bound": False},
               {**_STEP, "provider": "joint", "median_ms": 15.0, "host_ms": 16.0, "host_bound": True}]  # fmt: skip
    table = report.markdown_table(_run(records))
    assert _train_cells(table, "joint")["host ms"] == "16.000 host-bound"
    assert _train_cells(table, "plain")["host ms"] == "4.000"
    assert "not measured" not in table
    assert _train_cells(table, "joint")["time / plain"] == "1.50"  # the other cells under their own headers
    assert _train_cells(table, "joint")["images/s"] == "-"


def test_the_training_peak_is_labelled_as_the_steps_peak_above_its_start():
    table = report.markdown_table(_run([{**_STEP, "provider": "plain", "median_ms": 10.0}]))
    assert _train_cells(table, "plain")["peak MiB above the step's start"] == "300"
    assert "not the process's peak" in table


@pytest.mark.parametrize("suite", ["loss", "train"])
def test_no_training_caption_without_training_rows(suite):
    table = report.markdown_table(_run([{**_STEP, "suite": suite, "provider": "plain", "median_ms": 10.0}]))
    assert ("End-to-end training steps" in table) == (suite == "train")


# helper-258's mutation audit of the labels


def test_a_design_figure_alone_over_100_brings_the_note():
    # kills report's `over` reading fraction_of_copy only (the test above has a row with both over 100)
    row = {**_ROW, "provider": "masksub[triton]", "median_ms": 1.0, "gbps": 0.9, "fraction_of_copy": 0.9,
           "fraction_of_copy_design": 1.35}  # fmt: skip
    table = report.markdown_table(_run([row]))
    assert f"135.0{report.OVER_COPY}" in table and report.COPY_NOTE in table


@pytest.mark.parametrize("what", [{"error": "RuntimeError: x"}, {"not_run": "CUDA context lost after y"}])
def test_error_and_not_run_rows_have_the_headers_number_of_cells(what):
    # kills the error / not-run rows' empty cells one short (the tables' column counts before the host ms column)
    records = [{**_ROW, "provider": "p", **what},
               {**_ROW, "suite": "train", "shape": "vit", "provider": "joint", **what}]  # fmt: skip
    lines = report.markdown_table(_run(records)).splitlines()
    for header_start, row_start in (("| suite |", "| loss |"), ("| model |", "| vit |")):
        header = next(line for line in lines if line.startswith(header_start))
        (row,) = [line for line in lines if line.startswith(row_start)]
        assert row.count("|") == header.count("|"), (header, row)


# helper-294: the train suite's rows say what they time, a whole step (forward + backward + optimizer step)


def test_report_only_of_an_older_run_labels_its_training_rows_step(tmp_path):
    # the committed runs recorded them as mode 'forward': read back (--report-only, --append) they are relabelled,
    # the op suites' forward rows left as they are
    committed = pathlib.Path(__file__).parents[1] / "benchmarks/results/GPU-NVIDIA-H200-2026-12-04.json"
    older = json.loads(committed.read_text())
    modes = {(r["suite"] == "train", r["mode"]) for r in older["records"]}
    assert (True, "forward") in modes and (False, "forward") in modes  # (what this test reads)
    path = tmp_path / committed.name
    path.write_text(committed.read_text())
    assert cli.report_only(path, with_plot=False) == 0
    run = json.loads(path.read_text())
    assert {r["mode"] for r in run["records"] if r["suite"] == "train"} == {"step"}
    others = [r["mode"] for r in run["records"] if r["suite"] != "train"]
    assert others == [r["mode"] for r in older["records"] if r["suite"] != "train"]
    table = (tmp_path / committed.name.replace(".json", ".md")).read_text()
    assert "End-to-end training steps" in table and "| ViT-B/16 224px B=64 |" in table
