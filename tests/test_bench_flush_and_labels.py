"""helper-252's review of the benchmarks, findings 2-5: the L2 flush between timed repeats reads and writes nothing
that L2 would write back inside the next timed region; '% of copy' over 100% is marked and explained; the train
table says that its steps' host time is not measured (or shows it where a run has it); its peak memory is labelled
as the step's peak above its start, not the process's. CPU only."""

import json
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


def test_a_compute_bound_suites_row_without_tflops_shows_no_bandwidth():
    # helper-322's probe: the linear_loss suite's 'recompute mlm15' rows have no TFLOP/s (15% of the work counted),
    # and showed their bytes' 18.5 GB/s / 0.4% of copy: the whole suite is compute-bound, its bytes no roofline
    mlm = {**_ROW, "suite": "linear_loss", "mode": "full", "provider": "masksub[triton] recompute mlm15",
           "median_ms": 10.5, "gbps": 18.5, "fraction_of_copy": 1.2, "fraction_of_copy_design": 1.3}  # fmt: skip
    lines = report.markdown_table(_run([mlm])).splitlines()
    header = next(line for line in lines if line.startswith("| suite |"))
    (row,) = [line for line in lines if line.startswith("| linear_loss |")]
    cells = dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in row.split("|")), strict=True))
    assert (cells["GB/s"], cells["% of copy (minimal)"], cells["% of copy (design)"]) == ("-", "-", "-")
    assert report.COPY_NOTE not in "\n".join(lines)  # nothing over 100% shown: nothing to explain
    loss = report.markdown_table(_run([{**mlm, "suite": "loss", "provider": "p"}]))  # a memory-bound suite: shown
    assert _cells(loss, "p")["GB/s"] == "18.5" and report.COPY_NOTE in loss


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


# an older run as the committed benchmarks/results/GPU-NVIDIA-H200-2026-12-04.json recorded it (a trimmed, frozen
# copy: a regenerated committed file must not change what this test reads): the train suite's steps as mode
# 'forward', no context_lost, no copy_gbps_range
_OLDER_STEP = {"suite": "train", "shape": "ViT-B/16 224px B=64", "dtype": "bf16 autocast", "mode": "forward",
               "bytes": None, "design_bytes": None, "batch_size": 64, "model": "vit_base_patch16_224",
               "ideal_ratio": 1.5, "repeats": 10}  # fmt: skip
_OLDER_OP = {"suite": "loss", "shape": "ImageNet M=1024 C=1000", "dtype": "float32", "provider": "masksub[triton]",
             "bytes": 8192000, "design_bytes": 8192000, "repeats": 30}  # fmt: skip
_OLDER_RUN = {
    "date": "2026-12-04", "copy_gbps": 4225.865945140842, "repeats": 30, "warmup": 5, "full": False, "tiny": False,
    "skipped_suites": {}, "seconds": 104.3, "incomplete_suites": {"train": {"cases_done": 12, "cases": 16}},
    "environment": {"device": "GPU: NVIDIA H200", "python": "3.12.3", "torch": "2.11.0+cu130", "triton": "3.6.0"},
    "model": {"file": "model-sm90.json", "label": "PREDICTIONS of a static model (SASS + roofline), not measurements",
              "card": "H200", "date": "2026-12-02", "triton": "3.8.0"},
    "records": [
        {**_OLDER_OP, "mode": "forward", "median_ms": 0.10622400045394897, "p20_ms": 0.09347199648618698,
         "p80_ms": 0.12588800489902496, "peak_mem_mb": 0.03662109375, "host_ms": 0.15104099998097809,
         "host_bound": True, "gbps": 77.12004787045707, "fraction_of_copy": 0.01824952539233631,
         "fraction_of_copy_design": 0.01824952539233631, "predicted_ms": 0.00797},
        {**_OLDER_OP, "mode": "backward", "bytes": 16384000, "design_bytes": 16384000, "median_ms": 0.4509119987487793,
         "p20_ms": 0.42179200053215027, "p80_ms": 0.5152320265769958, "peak_mem_mb": 8.28173828125,
         "host_ms": 0.5375780000065333, "host_bound": True, "gbps": 36.335249550829026,
         "fraction_of_copy": 0.00859829678047632, "fraction_of_copy_design": 0.00859829678047632,
         "predicted_ms": 0.00632},
        {**_OLDER_STEP, "provider": "plain", "median_ms": 31.507648468017578, "p20_ms": 28.33580780029297,
         "p80_ms": 32.650047302246094, "peak_mem_mb": 4070.642578125, "images_per_s": 2031.2528262769079},
        {**_OLDER_STEP, "provider": "masksub official-style (sequential)", "median_ms": 63.2313117980957,
         "p20_ms": 61.24323272705078, "p80_ms": 64.946044921875, "peak_mem_mb": 4072.35888671875,
         "images_per_s": 1012.1567650590391},
    ],
}  # fmt: skip


def test_report_only_of_an_older_run_labels_its_training_rows_step(tmp_path):
    # the older runs recorded them as mode 'forward': read back (--report-only, --append) they are relabelled, the op
    # suites' forward rows left as they are; --report-only leaves the JSON itself byte for byte (the measured record)
    path = tmp_path / "GPU-NVIDIA-H200-2026-12-04.json"
    path.write_text(json.dumps(_OLDER_RUN, indent=1))
    older = path.read_bytes()
    assert cli.report_only(path, with_plot=False) == 0
    assert path.read_bytes() == older
    run = cli.load_run(path)  # what the .md was written from
    assert {r["mode"] for r in run["records"] if r["suite"] == "train"} == {"step"}
    others = [r["mode"] for r in run["records"] if r["suite"] != "train"]
    assert others == [r["mode"] for r in _OLDER_RUN["records"] if r["suite"] != "train"] == ["forward", "backward"]
    table = path.with_suffix(".md").read_text()
    assert table == report.markdown_table(run)
    assert "End-to-end training steps" in table and "| ViT-B/16 224px B=64 | bf16 autocast | plain | 31.5 " in table
    assert "| loss | ImageNet M=1024 C=1000 | float32 | forward | masksub[triton] | 0.106 " in table
