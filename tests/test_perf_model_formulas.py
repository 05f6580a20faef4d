"""The performance model's fused-linear, host, measured and calibration formulas, worked by hand (helper-188's
mutation audit of tools/perf_model/{linear_loss, linear_loss_host, linear_loss_measured, measured, calibration}.py:
28 mutants the suite let live). Each test checks a formula against figures worked by hand (the arithmetic in the
comments), on a made-up card with round rates so that the sums are exact. No kernel is compiled: the loss kernels'
SASS prediction and the recorded launches are stubbed where a formula around them is checked."""

import contextlib
import json
from types import SimpleNamespace
from unittest import mock

import pytest

from tools.perf_model import linear_loss as ll
from tools.perf_model import linear_loss_host as host
from tools.perf_model import linear_loss_measured as lm
from tools.perf_model import measured
from tools.perf_model.hardware import H100, H200, Card


def _card(flops_per_s: float, bytes_per_s: float, launch_us: float = 1.0) -> Card:
    """A card whose matmul rate is ``flops_per_s`` (efficiency 1 x a peak of flops / 1e12 TFLOP/s) and whose copy
    rate is ``bytes_per_s``."""
    return Card("T", sms=132, clock_ghz=1.98, copy_tbps=bytes_per_s / 1e12, launch_us=launch_us,
                bf16_dense_tflops=flops_per_s / 1e12, matmul_efficiency=1.0)  # fmt: skip


ROUND = _card(1e15, 1e12)  # 1 PFLOP/s, 1 TB/s: 1e9 flops or 1e6 bytes per us
FLOPS_BOUND = _card(1e15, 1e18)  # bytes take no time
BYTES_BOUND = _card(1e21, 1e12)  # flops take no time


# ---------------------------------------------------------------------------------------------------------------
# linear_loss.py
# ---------------------------------------------------------------------------------------------------------------


def test_a_matmul_takes_the_slower_of_its_flops_and_its_bytes():
    # kills L01 (max -> min) and L02 (x 1e6 -> x 1e3: us, not ms)
    # 2e9 flops at 1e15/s = 2 us; 1e6 bytes at 1e12/s = 1 us: 2 us. 1e9 flops = 1 us; 3e6 bytes = 3 us: 3 us
    assert ll._matmul_us(ROUND, 2e9, 1e6) == pytest.approx(2.0)
    assert ll._matmul_us(ROUND, 1e9, 3e6) == pytest.approx(3.0)


def _chunk(card: Card, rows: int, splits: bool) -> float:
    with mock.patch.object(ll, "_loss_kernels_us", return_value=(0.0, 0, [])):
        matmuls, _, _ = ll._chunk_us(card, rows, 768, 30522, splits)
    return matmuls


def test_a_chunks_matmul_flops_by_hand():
    # kills L03 (chunk_unit = R D C: 2 flops per multiply-add dropped) and L06 (dW's flops halved)
    # R = 384, D = 768, C = 30522, dW over D + pad = 776 (padded_depth):
    # logits 2 x (2 R D C) = 4 R D C = 36,005,216,256; dH the same; dW 2 x 2R x 776 x C = 36,380,270,592
    # total 108,390,703,104 flops at 1e15/s (1e9 flops per us) = 108.390703104 us
    assert _chunk(FLOPS_BOUND, 384, False) == pytest.approx(108.390703104, rel=1e-9)


def test_a_chunks_matmul_bytes_by_hand():
    # kills L04 (the logits' fp32 output counted as bf16), L05 (dH's fp32 product read + written vs written only),
    # L07 (dW's fp32 accumulator read but not written)
    # R = 384, D = 768, C = 30522, wide = 776, bytes at 1e12/s (1e6 bytes per us):
    #   logits: [2R, C] fp32 out 8 R C + W 2 C D + [2R, D] bf16 in 4 R D           = 141,825,024
    #   dH: dz, ds bf16 4 R C + W 2 C D + [2R, D] fp32 written 8 R D, and read (x 2) where the forward does not
    #       split                                                                 = 98,482,176 (96,122,880 if it splits)
    #   dW: [2R, C] bf16 4 R C + [2R, wide] bf16 4 R wide + [C, wide] fp32 read + written 8 C wide = 237,554,304
    assert _chunk(BYTES_BOUND, 384, False) == pytest.approx(477.861504, rel=1e-9)
    assert _chunk(BYTES_BOUND, 384, True) == pytest.approx(475.502208, rel=1e-9)  # 8 R D = 2,359,296 bytes less


def _fused_stubbed(card: Card = ROUND) -> dict:
    """_fused at BERT's shape with every chunk's matmuls 1 us and loss kernels 0.01 us per row (forward 0.004,
    backward 0.006), and a forward of 6 torch + 1 Triton launches per chunk plus 20 + 1 once."""

    def chunk_us(card, rows, d, c, splits):
        kernels = [{"kernel": "_loss_fwd_kernel", "kernel_us": 0.004 * rows},
                   {"kernel": "_loss_bwd_kernel", "kernel_us": 0.006 * rows}]  # fmt: skip
        return 1.0 * rows, 0.01 * rows, kernels

    def forward(shape, rows):
        chunks = -(-shape[1] // rows)
        return {"torch": 6 * chunks + 20, "triton": chunks + 1}

    with mock.patch.object(ll, "_chunk_us", chunk_us), mock.patch.object(ll, "recorded_forward", forward):
        return ll._fused(card)


def test_the_fused_ops_chunks_by_hand():
    # kills L08 (chunks = M // R: the last, shorter chunk lost), L09 (the last chunk charged at R rows), L10 and L11
    # (the last chunk counted twice), L12 (cuBLAS's own launches dropped), L13 (dH + dHs scaled: 2 bytes per element
    # read and written each, not 1), L14 (chunk_equivalents = chunks)
    f = _fused_stubbed()
    # M = 16384 rows in chunks of 384: ceil(16384 / 384) = 43, the last 16384 - 42 x 384 = 256 rows
    assert (f["chunk_rows"], f["chunks"], f["last_chunk_rows"]) == (384, 43, 256)
    b = f["breakdown"]
    # matmuls 1 us per row: 42 x 384 + 256 = 16384 us; loss kernels 0.01 us per row: 163.84 us
    assert b["matmuls"] == 16384.0 and b["loss_kernels"] == 163.8
    # per kernel: 0.004 x 16384 = 65.536, 0.006 x 16384 = 98.304
    assert b["loss_kernels_by_kernel"] == {"_loss_fwd_kernel": 65.54, "_loss_bwd_kernel": 98.3}
    # the matmuls in full chunks: 16384 / 384 = 42.667 (42 full + 256 / 384)
    assert f["chunk_equivalents"] == pytest.approx(16384 / 384)
    # launches: the forward's (6 x 43 + 20) + (43 + 1) = 322, cuBLAS's 3 per chunk 129, the backward's 8: 459 at 1 us
    assert f["launches_per_chunk"] == {"torch": 6, "triton": 1}
    assert f["device_launches"] == 459 and b["launches"] == 459.0 and f["cublas_extra_us"] == 129.0
    # the backward's scaling: dH, dHs bf16 in place 2 x M D x 4 = 100,663,296; dW fp32 -> bf16 C D x 6 =
    # 140,645,376; db C x 6 = 183,132: 241,491,804 bytes at 1e12/s = 241.491804 us
    assert b["backward_scaling"] == 241.5
    # the forward's copies: dW's fp32 accumulator [30522, 776] zeroed 94,740,288; the rows stacked 8 M D =
    # 100,663,296; dH's rows from the fp32 product 12 M D = 150,994,944: 346,398,528 bytes = 346.398528 us
    assert b["forward_copies"] == 346.4
    assert f["us"] == pytest.approx(16384 + 163.84 + 459 + 241.491804 + 346.398528)


def _fused_calls(budget_mib: float | None = None) -> tuple[dict, list]:
    """_fused at BERT's shape (under the benchmark's chunking(budget_mib) where given) with every chunk's matmuls
    1 us per row and no loss kernels; also the (rows, splits) of each _chunk_us call."""
    from masksub_kernels.bench.linear_loss import chunking

    calls = []

    def chunk_us(card, rows, d, c, splits):
        calls.append((rows, splits))
        return 1.0 * rows, 0.0, []

    def forward(shape, rows):
        return {"torch": 6 * -(-shape[1] // rows) + 20, "triton": -(-shape[1] // rows) + 1}

    with mock.patch.object(ll, "_chunk_us", chunk_us), mock.patch.object(ll, "recorded_forward", forward):
        with chunking(budget_mib) if budget_mib is not None else contextlib.nullcontext():
            return ll._fused(ROUND), calls


def test_chunk_rows_that_divide_m_leave_no_empty_last_chunk():
    # (helper-210) kills chunks = M // R + 1: right at BERT's 16384 / 384, one chunk too many, of 0 rows, where R
    # divides M. The benchmark's 128 MiB budget: 2^27 // (2 x 30528 x 4) = 549 -> 512 rows; 16384 / 512 = 32 chunks,
    # the last a full 512 (the mutant: 33 chunks, the last of 0 rows, a 0-row chunk's launches charged)
    f, _ = _fused_calls(budget_mib=128)
    assert (f["chunk_rows"], f["chunks"], f["last_chunk_rows"]) == (512, 32, 512)
    assert f["breakdown"]["matmuls"] == 16384.0 and f["chunk_equivalents"] == 32.0
    assert f["device_launches"] == (6 * 32 + 20) + (32 + 1) + 3 * 32 + 8


def test_each_chunk_is_charged_the_class_split_of_its_own_rows():
    # (helper-210) kills the full chunks charged the last chunk's split: at BERT's shape the 384-row chunks keep
    # one program per row (384 >= 2 programs x 132 SMs) and the 256-row last one splits its classes (256 < 264),
    # which decides whether dH's fp32 product is read before it is added to (_chunk_us's 2 - splits)
    _, calls = _fused_calls()
    assert calls == [(384, False), (256, True)]


def test_the_fused_ops_extra_memory_at_berts_shape_by_hand():
    # (helper-210) kills the inputs' element size 4, not bf16's 2. modelled_extra_mb(16384, 768, 30522, 2): the
    # chunk's logits 2 x 384 x 30528 x 4 = 93,782,016; the stacked rows 2 x 384 x 776 x 2 = 1,191,936; the stats
    # 16384 x 9 x 4 = 589,824; dW's fp32 accumulator 30522 x 776 x 4 = 94,740,288; dH's fp32 temporary
    # 2 x 384 x 768 x 4 = 2,359,296; the row ids 16384 x 8 = 131,072; the tail's kept columns 2 x 16384 x 8 x 2 =
    # 524,288: 193,318,720 bytes = 184.363 MiB (the mutant: 95.6 MiB, no accumulator)
    f, _ = _fused_calls()
    assert f["extra_mib"] == pytest.approx(193_318_720 / 2**20)


def _predict_stubbed(card: Card = ROUND) -> tuple[dict, dict]:
    """predict() with the fused op at 100,000 us whatever its chunks, nothing measured, the host prediction's
    arguments captured."""
    fused = {"us": 100000.0, "chunk_rows": 384, "chunks": 43, "dw_matmuls": 43, "extra_mib": 90.0,
             "launches_per_chunk": {"torch": 6, "triton": 1}, "breakdown": {"loss_kernels": 0.0}}  # fmt: skip
    captured = {}

    def predict_host(launches, rows, launches_by_rows=None):
        captured["launches_by_rows"] = launches_by_rows
        return None

    def fused_at(card, shape=ll.SHAPE):  # the chunk rows in force (the sweep's chunking changes them)
        return {**fused, "chunk_rows": ll.chunk_loop.grads_chunk_rows(shape[3], shape[1])}

    with (
        mock.patch.object(ll, "_fused", fused_at),
        mock.patch.object(ll, "_loss_kernels_us", return_value=(0.0, 0, [])),
        mock.patch.object(ll.measured, "measured_reference", return_value=None),
        mock.patch.object(ll.linear_loss_host, "predict_host", predict_host),
    ):
        return ll.predict(card), captured


def test_the_composites_and_ratios_by_hand():
    # kills L15 (the composite's 6 matmul units), L16 (compile's passes in bf16 bytes), L17 (the eager composite's
    # 34 launches dropped), L18 (TFLOP/s off by 10), L19 and L20 (ratio = composite / fused, not fused / composite),
    # L22 (the eager composite's 59 [M, C] passes)
    result, _ = _predict_stubbed()
    # one unit 2 M D C = 2 x 16384 x 768 x 30522 = 768,111,280,128 flops; 6 units at 1e15/s = 4608.668 us
    # L = one bf16 [M, C] = 16384 x 30522 x 2 = 1,000,144,896 bytes = 1000.145 us at 1e12/s
    # eager: 4608.668 + 59 L 59008.549 + 34 launches 34 = 63651.217 us
    # compiled: 4608.668 + 6 L 6000.869 + 8 launches 8 = 10617.537 us
    times = {p["provider"]: p for p in result["providers"]}
    assert times["official (eager)"]["predicted_us"] == 63651.2
    assert times["compile(official) (assumed fused)"]["predicted_us"] == 10617.5
    # the fused op's TFLOP/s: 6 units / 100,000 us = 4.608668e18 / 1e5 / 1e-6 / 1e12 = 46.09 TFLOP/s, 4.6% of 1000
    fused = times["masksub[triton] (grads in forward)"]
    assert (fused["tflops"], fused["percent_of_bf16_peak"]) == (46.1, 4.6)
    # composite time / fused time: 63651.2 / 100000 = 0.64, 10617.5 / 100000 = 0.11
    assert (result["ratio_vs_eager"], result["ratio_vs_compiled"]) == (0.64, 0.11)
    assert all(p["ratio_vs_compiled"] == 0.11 for p in result["chunk_sweep"])
    # dW's ridge: 4 R D C flops / 1e15 = C D 8 bytes / 1e12 at R = 2 x 1e15 / 1e12 = 2000 rows
    assert result["assumptions"]["dw_ridge_rows"] == 2000


def test_the_host_gets_the_launches_of_the_default_programs_chunk_sizes():
    # kills L21 (programs != SPLIT_PROGRAMS_PER_SM): the sweep's rows at the default programs per SM carry their
    # launches to the host prediction: budgets of 48, 128 and 192 MiB over 2 x 30528 x 4 bytes per row give
    # 206 -> 192, 549 -> 512 and 824 -> 768 rows (multiples of 64); the P=5 entry's chunks are the default's 384
    _, captured = _predict_stubbed()
    assert sorted(captured["launches_by_rows"]) == [192, 384, 512, 768]


# ---------------------------------------------------------------------------------------------------------------
# linear_loss_host.py
# ---------------------------------------------------------------------------------------------------------------


def test_the_runs_python_not_todays_is_taken_from_the_runs_per_chunk_time(tmp_path):
    # kills H03 (share = per_chunk_us - python_today). The run: 1 ms + 400 us per chunk, 150 us of it Python;
    # today 50 us of Python and the run's own launches (7 + 2): per chunk 50 + (400 - 150) x 1 = 300 us
    # (the mutant: 50 + (400 - 50) = 400 us); at 384 rows, 43 chunks: 1 + 43 x 0.3 = 13.9 ms
    records = [{"suite": "linear_loss", "shape": host.SHAPE_PREFIX, "mode": "full", "chunk_rows": rows,
                "host_ms": 1 + 0.4 * -(-16384 // (rows or 384)),
                "provider": "masksub[triton]" if rows is None else f"masksub[triton]:R={rows}"}
               for rows in (None, 192, 768)]  # fmt: skip
    (tmp_path / host.RUN["file"]).write_text(json.dumps({"records": records}))
    for name, us in (("run", 150.0), ("today", 50.0)):
        (tmp_path / host.HARNESS_FILES[name]).write_text(json.dumps({"meta": {}, "records": [{"us_per_chunk": us}]}))
    result = host.predict_host({"torch": 7, "triton": 2}, [384], tmp_path)
    assert result["today_per_chunk_us"] == [pytest.approx(300.0, abs=0.1)] * 2
    assert result["rows"][0]["host_ms"] == [pytest.approx(13.9, abs=0.051)] * 2


# ---------------------------------------------------------------------------------------------------------------
# linear_loss_measured.py
# ---------------------------------------------------------------------------------------------------------------


def test_the_uncalibrated_ratio_to_the_measured_compile_keeps_two_decimals(tmp_path):
    # kills M12 (rounded to 1 decimal; the suite's 12 ms / 10,000 us = 1.2 cannot tell): 12 ms / 11,000 us = 1.0909
    shape = "BERT-base MLM M=16384 D=768 C=30522"
    record = {"suite": "linear_loss", "shape": shape, "dtype": "bfloat16", "mode": "full"}
    run = {"records": [{**record, "provider": "compile(official)", "median_ms": 12.0}]}
    (tmp_path / "GPU-NVIDIA-H200-2026-01-02.json").write_text(json.dumps(run))
    fused = {"us": 11000.0, "breakdown": {"loss_kernels": 0.0, "loss_kernels_by_kernel": {}}}
    ref = lm.measured_reference(H200, fused, shape, {}, {}, tmp_path)
    assert ref["compiled_over_fused_uncalibrated"] == 1.09


# ---------------------------------------------------------------------------------------------------------------
# measured.py
# ---------------------------------------------------------------------------------------------------------------


def _row(**fields) -> dict:
    return {"suite": "loss", "shape": "s", "dtype": "bfloat16", "mode": "forward", "provider": "masksub[triton]",
            **fields}  # fmt: skip


def test_a_prediction_at_the_host_bound_threshold_is_device_bound():
    # kills X01 (predicted <= HOST_BOUND_MS): only predictions BELOW 0.1 ms are under a call's host cost
    rows = measured.comparisons({"records": [_row(median_ms=0.2, predicted_ms=measured.HOST_BOUND_MS)]})
    assert [r["bound"] for r in rows] == ["device"]


def test_the_calibration_summary_takes_the_median():
    # kills X04 (mean): ratios 1, 2 and 6 over three device-bound cases: median 2 (mean 3)
    records = [_row(shape=f"s{i}", median_ms=m, predicted_ms=1.0) for i, m in enumerate((1.0, 2.0, 6.0))]
    summary = {"cases": 3, "min": 1.0, "median": 2.0, "max": 6.0, "predictions": "run"}
    assert measured.summary(measured.comparisons({"records": records})) == {
        ("loss", "forward", "masksub[triton]"): summary
    }


def test_the_newest_run_is_the_newest_date_whatever_the_card(tmp_path):
    # kills X05 (sorted by file name: an H200's older run sorts after an H100's newer one)
    for name in ("GPU-NVIDIA-H200-2026-01-01.json", "GPU-NVIDIA-H100-80GB-HBM3-2026-02-01.json"):
        (tmp_path / name).write_text("{}")
    assert measured.newest_gpu_results(tmp_path).name == "GPU-NVIDIA-H100-80GB-HBM3-2026-02-01.json"


def test_a_tiny_smoke_run_is_no_measurement(tmp_path):
    # kills X06 (the dated-name pattern let a suffix through): a --tiny run's file alone is no GPU run
    (tmp_path / "GPU-NVIDIA-H200-2026-01-01-tiny.json").write_text("{}")
    with pytest.raises(SystemExit):
        measured.newest_gpu_results(tmp_path)


def _run_file(path, date, records=0, device="GPU: NVIDIA H200", **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    run = {"date": date, "environment": {"device": device}, "records": [_row(median_ms=1.0)] * records, **extra}
    path.write_text(json.dumps(run))
    return path


def test_runs_committed_in_gpu_bench_output_folders_and_suffixed_runs_are_found(tmp_path):
    # helper-322: gpu_bench.sh's output committed as benchmarks/results/gpu-<date>/ (as documented) was ignored, and
    # card_runs skipped suffixed runs (-matmul-aligned); newest = the run's own date (its JSON), then the fuller run
    old = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-11-30.json", "2026-11-30", 5)
    assert measured.newest_gpu_results(tmp_path) == old
    full = _run_file(tmp_path / "gpu-2026-12-04" / "GPU-NVIDIA-H200-2026-12-04.json", "2026-12-04", 9)
    assert measured.newest_gpu_results(tmp_path) == full  # fails before: the gpu-*/ folder was not searched
    rerun = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-04-matmul-aligned.json", "2026-12-04", 2)
    _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-05-tiny.json", "2026-12-05", 1)  # a smoke run: no measurement
    assert measured.newest_gpu_results(tmp_path) == full  # one date: the day's full run, not its partial rerun
    assert lm.card_runs(H200, tmp_path) == [("2026-11-30", old), ("2026-12-04", rerun), ("2026-12-04", full)]
    assert lm.card_runs(H100, tmp_path) == []
    # the run's own date, not its name's (a file renamed by hand)
    renamed = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-01-01.json", "2026-12-06", 1)
    assert measured.newest_gpu_results(tmp_path) == renamed


def test_measured_refuses_a_file_it_cannot_compare_with_status_2(tmp_path, capsys):
    # helper-322: an empty or truncated JSON was a JSONDecodeError traceback; a CPU run, another tool's JSON or a card
    # without a model printed empty tables with status 0
    empty = tmp_path / "GPU-NVIDIA-H200-2026-12-04.json"
    empty.write_text("")
    assert measured.main([str(empty)]) == 2
    assert "is not a benchmark run's JSON" in capsys.readouterr().err
    truncated = _run_file(tmp_path / "t.json", "2026-12-04", 3)
    truncated.write_text(truncated.read_text()[:40])
    assert measured.main([str(truncated)]) == 2
    model = tmp_path / "model-sm90.json"
    model.write_text(json.dumps({"environment": {"card": "H200"}, "records": []}))
    assert measured.main([str(model)]) == 2
    assert "not a masksub_kernels.bench run" in capsys.readouterr().err
    cpu = _run_file(tmp_path / "cpu" / "CPU-x-2026-12-01.json", "2026-12-01", 3, device="CPU: x")
    assert measured.main([str(cpu)]) == 2
    assert "a CPU run" in capsys.readouterr().err
    a100 = _run_file(tmp_path / "a100" / "GPU-NVIDIA-A100-2026-12-01.json", "2026-12-01", 3, device="GPU: NVIDIA A100")
    assert measured.main([str(a100)]) == 2
    assert "no model file for GPU: NVIDIA A100" in capsys.readouterr().err


def test_measured_marks_each_prediction_by_its_model_and_names_the_run(tmp_path, monkeypatch, capsys):
    # helper-322: the run's own predictions and those attached afterwards from today's model were mixed in one table
    # unmarked; no header named the run (date, versions, commit) or the models; copy 0 GB/s where not measured
    model = {"environment": {"card": "H200", "date": "2026-12-07", "triton": "3.8.0"},
             "records": [{"suite": "loss", "shape": "t", "dtype": "bfloat16", "mode": "forward",
                          "provider": "masksub[triton]", "variant": "", "predicted_us": 500.0}]}  # fmt: skip
    (tmp_path / "model-sm90.json").write_text(json.dumps(model))
    records = [_row(median_ms=2.0, predicted_ms=1.0), _row(shape="t", median_ms=1.5)]  # the second: none in the run
    path = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-04.json", "2026-12-04", 0,
                     environment={"device": "GPU: NVIDIA H200", "torch": "2.11", "triton": "3.6.0",
                                  "commit": "abc1234"},
                     model={"file": "model-sm90.json", "card": "H200", "date": "2026-12-02"},
                     incomplete_suites={"loss": {"cases_done": 2, "cases": 5}})  # fmt: skip
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "records": records}))
    monkeypatch.setattr(measured, "newest_gpu_results", lambda: path)
    assert measured.main([]) == 0
    captured = capsys.readouterr()
    assert f"the newest committed GPU run: {path}" in captured.err
    text = captured.out
    assert "Run: date 2026-12-04, device GPU: NVIDIA H200, torch 2.11, triton 3.6.0, commit abc1234" in text
    assert "measured copy not measured" in text
    assert 'Predictions "run" (1 rows): the run\'s own, attached when its suites ended, from model-sm90.json ' \
        "(H200, 2026-12-02)" in text  # fmt: skip
    assert "1 predictions attached afterwards from model-sm90.json (H200, 2026-12-07, triton 3.8.0)" in text
    assert "loss cut short after 2 of 5 cases" in text
    assert "| loss | s | bfloat16 | forward | masksub[triton] | 2.000 | 1.000 | 2.00 | device | run |" in text
    assert "| loss | t | bfloat16 | forward | masksub[triton] | 1.500 | 0.500 | 3.00 | device | today |" in text
    assert "| loss | forward | masksub[triton] | 2 | 2.00 | 2.50 | 3.00 | run + today |" in text
    assert "the run measured the call so (its host_bound" in text  # the definition the code applies


# ---------------------------------------------------------------------------------------------------------------
# calibration.py: the checks' arithmetic around the kernel's predicted time (the recording and the SASS prediction
# stubbed: under the interpreter that conftest.py switches on nothing would be recorded)
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _calibration_stubbed(kernel_us: float, launch: object = None):
    """calibration's checks with one recorded launch (``launch``) whose kernel is predicted at ``kernel_us``."""
    from tools.perf_model import calibration

    @contextlib.contextmanager
    def recording(*modules):
        yield [launch or SimpleNamespace(name="_copy_kernel")]

    occupancy = SimpleNamespace(resident_blocks=1)
    kernel = SimpleNamespace(
        t_kernel_us=kernel_us, warps=32, registers=32, occupancy=occupancy, t_memory_us=1.0, t_issue_us=1.0
    )
    with (
        mock.patch.object(calibration, "recording", recording),
        mock.patch.object(calibration, "predict_launch", return_value=kernel),
        mock.patch.object(calibration, "copy", lambda src: None),
    ):
        yield calibration


def _copy_check(kernel_us: float):
    with _calibration_stubbed(kernel_us) as calibration:
        return calibration.copy_check(H200)


def test_the_copy_check_counts_its_launch_and_its_band():
    # kills C01 (the launch left out of the copy's time) and C02 (the band's floor 85% -> 50%)
    # 1 GiB of bf16 read and written: 2^31 bytes. Kernel 497.5 us + the launch 2.5 us = 500 us:
    # 2^31 / 500e-6 / 1e12 = 4.295 TB/s = 99.9% of the H200's 4.3 (without the launch: 4.3166, 100.4%: outside)
    check = _copy_check(497.5)
    assert (check.predicted, check.passed) == (4.295, True)
    # 621.77 + 2.5 = 624.27 us: 3.44 TB/s = 80% of 4.3: below the band's 85%
    check = _copy_check(621.77)
    assert (check.predicted, check.passed) == (3.44, False)


def _liger_check(kernel_us: float):
    pytest.importorskip("liger_kernel")
    launch = SimpleNamespace(name="liger_cross_entropy_kernel", bound={"BLOCK_SIZE": 32768})
    with _calibration_stubbed(kernel_us, launch) as calibration:
        with mock.patch("liger_kernel.ops.cross_entropy.cross_entropy_forward"):
            return calibration.liger_check(H100)


def test_the_liger_check_by_hand():
    # kills C03 (.grad's accumulation: 2 passes, not 3), C05 (the host syncs' idle time doubled), C04 (only a
    # prediction above the published time could fail: abs dropped)
    # logits 8192 x 32000 bf16 = 524,288,000 bytes; .grad accumulated: 3 x that at the H100's 3.0 TB/s = 524.288 us;
    # 8 launches x 2.5 us = 20 us; 4 host syncs x 10 us = 40 us. Kernel 213.712 us: 798.0 us = 0.798 ms,
    # +0.06% of Liger's 0.7975 ms: within 20%
    check = _liger_check(213.712)
    assert (check.predicted, check.passed) == (0.798, True)
    # kernel 0 us: 584.288 us = 0.5843 ms, -26.7%: outside the 20% band (below it)
    check = _liger_check(0.0)
    assert (check.predicted, check.passed) == (0.5843, False)


def test_the_liger_check_reads_the_logits_and_the_targets():
    # (helper-210) kills the int64 targets left out of the kernel's bytes read: Liger's kernel reads the logits
    # 8192 x 32000 x 2 = 524,288,000 bytes and the 8192 targets x 8 = 65,536, writes the gradient over the logits
    pytest.importorskip("liger_kernel")
    launch = SimpleNamespace(name="liger_cross_entropy_kernel", bound={"BLOCK_SIZE": 32768})
    with _calibration_stubbed(213.712, launch) as calibration:
        with mock.patch("liger_kernel.ops.cross_entropy.cross_entropy_forward"):
            calibration.liger_check(H100)
            predict = calibration.predict_launch
    assert predict.call_args.args[2] == ([1], 32768, 524_288_000 + 65_536, 524_288_000)


# helper-327's mutation audit of measured.py (gpu_runs, load_run, header)
def test_a_run_in_both_places_is_the_top_level_copy(tmp_path):
    # kills M2 (the globs' order swapped: the gpu-*/ copy won over the top-level one of the same name)
    inner = _run_file(tmp_path / "gpu-2026-12-04" / "GPU-NVIDIA-H200-2026-12-04.json", "2026-12-04", 3)
    top = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-04.json", "2026-12-04", 3)
    assert measured.gpu_runs(tmp_path) == [("2026-12-04", top)] and inner.exists()


def test_a_json_date_that_is_no_date_falls_back_to_the_names(tmp_path):
    # kills M3 (any string in the JSON's "date" taken: 'yesterday' sorted after every real date)
    odd = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-01-01.json", "yesterday", 3)
    newer = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-04.json", "2026-12-04", 3)
    assert measured.gpu_runs(tmp_path) == [("2026-01-01", odd), ("2026-12-04", newer)]


def test_a_record_without_the_rows_keys_is_no_benchmark_run(tmp_path):
    # kills M5 (load_run's check of each record's suite / shape / dtype / mode / provider dropped)
    path = tmp_path / "GPU-NVIDIA-H200-2026-12-04.json"
    path.write_text(json.dumps({"environment": {"device": "GPU: NVIDIA H200"}, "records": [{"suite": "copy"}]}))
    with pytest.raises(ValueError, match=r"is not a benchmark run's JSON: record 0 has no 'shape', 'dtype'"):
        measured.load_run(path)


@pytest.mark.parametrize("copy", [0, -1.0, None, "n/a"])
def test_a_copy_bandwidth_of_zero_is_not_measured(copy):
    # kills M6 (copy > 0 dropped: a run's 0 GB/s copy, the benchmark's 'not measured', shown as '0 GB/s')
    results = {"copy_gbps": copy, "environment": {"device": "GPU: NVIDIA H200"}, "records": []}
    assert "measured copy not measured." in measured.header(results, [])[0]


def test_of_one_dates_runs_the_fuller_wins_whatever_the_names(tmp_path):
    # kills M4 (the records' count left out of the key: the last name won, here a partial rerun)
    full = _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-04-a.json", "2026-12-04", 9)
    _run_file(tmp_path / "GPU-NVIDIA-H200-2026-12-04-b.json", "2026-12-04", 2)
    assert measured.newest_gpu_results(tmp_path) == full
