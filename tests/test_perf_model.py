"""The performance model (tools/perf_model) in CI: it runs, its calibration holds, no prediction falls below the
committed floor (tools/perf_floors.json), and the floor check can fail.

The model compiles kernels, which the Triton interpreter that conftest.py switches on cannot: it runs in a
subprocess without TRITON_INTERPRET. Cubins are cached under build/perf_model/ (keyed by source and specialisation),
so a warm run compiles nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.perf_model import floors

# The model's run (~1.5 min) is one fixture: the Makefile's --dist loadfile keeps this module on one pytest-xdist
# worker (under --dist loadgroup, whose xdist_group marks pytest 9.2 ignores, two workers each ran it).
pytestmark = pytest.mark.slow

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("perf_model") / "model.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "tools.perf_model", "--no-write", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_every_case_is_predicted(model_run):
    _, run = model_run
    assert run["environment"]["label"].startswith("PREDICTIONS")
    suites = {record["suite"] for record in run["records"]}
    assert suites == {"token_select", "loss", "grid_mask"}
    for record in run["records"]:
        assert record["predicted_us"] > 0 and record["launches"] >= 1, record
        assert 0 < record["percent_of_copy_design"] <= 100.5, record  # a prediction never beats the roofline


def test_calibration_checks(model_run):
    _, run = model_run
    checks = {(c["name"], c["card"]): c for c in run["calibration"]}
    for card in ("H200", "H100"):
        copy = checks[("copy", card)]
        assert copy["passed"], copy["summary"]  # within the stated band of the measured copy bandwidth
    liger = checks[("liger", "H100")]
    if liger["passed"] is None:
        pytest.skip(liger["summary"])
    assert liger["passed"], liger["summary"]  # within 20% of Liger-Kernel's published 0.80 ms


def test_predictions_at_or_above_committed_floors(model_run):
    result, run = model_run
    committed = floors.load(ROOT / "tools" / "perf_floors.json")
    missing = [floors.key(r) for r in floors.floored(run["records"]) if floors.key(r) not in committed]
    assert not missing, f"cases without a floor (run python -m tools.perf_model.floors --update): {missing}"
    assert floors.check(run, committed) == []
    assert result.returncode == 0, result.stderr[-3000:]


def test_floor_check_fails_below_a_floor():
    record = {"suite": "loss", "shape": "s", "dtype": "bfloat16", "variant": "CE", "mode": "full"}
    committed = {floors.key(record): 50.0}
    below = {"records": [{**record, "percent_of_copy_design": 49.9}]}
    at = {"records": [{**record, "percent_of_copy_design": 50.0}]}
    assert len(floors.check(below, committed)) == 1
    assert floors.check(at, committed) == []
    # floors ratchet: an update never lowers a floor unless asked
    assert floors.updated(below, committed)[floors.key(record)] == 50.0
    assert floors.updated(below, committed, allow_lower=True)[floors.key(record)] == round(0.9 * 49.9, 1)


def test_fused_linear_loss_is_predicted(model_run):
    # compute-bound: predicted from an assumed matmul efficiency (hardware.py) + the loss kernels' SASS model
    _, run = model_run
    linear = run["linear_loss"]
    assert linear["label"].startswith("PREDICTIONS")
    times = {p["provider"].split(" ")[0]: p["predicted_us"] for p in linear["providers"]}
    assert set(times) == {"masksub[triton]", "official", "compile(official)"}
    assert all(t > 0 for t in times.values())
    assert linear["ratio_vs_eager"] == round(times["official"] / times["masksub[triton]"], 2)
    assert all(
        0 < p["percent_of_bf16_peak"] <= linear["assumptions"]["matmul_efficiency"] * 100 for p in linear["providers"]
    )
    assert linear["fused_breakdown_us"]["backward_scaling"] > 0  # the stored gradients scaled in fp32
    # the benchmark's chunk sweep, each predicted under the provider name the benchmark gives it

    from masksub_kernels.bench.linear_loss import CHUNK_SWEEP, sweep_provider

    # beside them, the H200 run committed in benchmarks/results, calibrated by each source
    from tools.perf_model.hardware import H200
    from tools.perf_model.linear_loss_measured import LOSS_CASE, card_runs

    reference = linear["measured_reference"]
    assert reference["file"] in {path.name for _, path in card_runs(H200)}
    assert [c["source"] for c in reference["calibrated"]] == ["run", "today", "profile"]
    # 'today': the run's measurements of the loss case over this model run's prediction of the same case, the
    # benchmark's variant (CE, class ids), not another variant of that shape
    measured = json.loads((ROOT / "benchmarks" / "results" / reference["file"]).read_text())["records"]
    case = ("loss", LOSS_CASE, "bfloat16", "masksub[triton]")
    median = {
        r["mode"]: r["median_ms"] for r in measured if (r["suite"], r["shape"], r["dtype"], r["provider"]) == case
    }
    predicted = {
        r["mode"]: r["predicted_us"] / 1e3
        for r in run["records"]
        if (r["suite"], r["shape"], r["dtype"], r["provider"]) == case and r["variant"] == "CE, class ids"
    }
    today = next(c for c in reference["calibrated"] if c["source"] == "today")
    assert (today["forward"], today["backward"]) == tuple(
        round(median[m] / predicted[m], 2) for m in ("forward", "backward")
    )
    assert all(c["fused_us"] > times["masksub[triton]"] for c in reference["calibrated"])  # the model was optimistic
    names = [sweep_provider(*entry, 30522) for entry in CHUNK_SWEEP]
    assert [p["provider"] for p in linear["chunk_sweep"]] == names and all(p["predicted_us"] > 0 for p in
                                                                           linear["chunk_sweep"])  # fmt: skip
    # other heads: the op's floor of rows per chunk against the budget alone, predicted faster where it applies
    vocabularies = linear["vocabularies"]
    assert [(v["rule_rows"], v["budget_rows"]) for v in vocabularies] == [(384, 192), (384, 64)]
    assert all(v["rule_us"] < v["budget_us"] and v["rule_extra_mib"] > v["budget_extra_mib"] for v in vocabularies)
    assert linear["assumptions"]["dw_ridge_rows"] == 322  # H200: 2 x 692 TFLOP/s / 4.3 TB/s
    # the host's launches per chunk size: 192-row chunks split the loss forward (fewer rows than 2 per SM), so each
    # runs the loss's 2 launches and C's tail's 3 matmuls (helper-152: the default's 6 + 1 were applied to them)
    launches = {row["chunk_rows"]: row["launches"] for row in linear["host"]["rows"]}
    assert launches[192] == {"torch": 9, "triton": 2} and launches[384] == launches[768] == {"torch": 6, "triton": 1}


def test_measured_beside_predicted_calibrates_on_device_bound_cases(tmp_path):
    from tools.perf_model import measured

    record = {"suite": "loss", "shape": "s", "dtype": "bfloat16", "mode": "forward", "provider": "masksub[triton]"}
    results = {"records": [
        {**record, "median_ms": 2.0, "predicted_ms": 1.0},
        {**record, "shape": "tiny", "median_ms": 0.3, "predicted_ms": 0.01},  # host-bound: not in the calibration
        {**record, "shape": "busy host", "median_ms": 1.4, "predicted_ms": 0.3, "host_bound": True},  # measured so
        {**record, "provider": "official", "median_ms": 5.0, "predicted_ms": None},
        # the fused-linear loss's composites and chunk sweep have predictions too: compared per provider
        {**record, "suite": "linear_loss", "mode": "full", "provider": "compile(official)", "median_ms": 13.0,
         "predicted_ms": 8.0},
        {**record, "suite": "linear_loss", "mode": "full", "provider": "masksub[triton]:R=768", "median_ms": 12.0,
         "predicted_ms": 10.0},
    ]}  # fmt: skip
    rows = measured.comparisons(results)
    assert [(r["shape"], r["bound"]) for r in rows] == [("s", "device"), ("tiny", "host"), ("busy host", "host"),
                                                        ("s", "device"), ("s", "device")]  # fmt: skip
    assert [r["ratio"] for r in rows] == pytest.approx([2.0, 30.0, 1.4 / 0.3, 13.0 / 8.0, 1.2])
    run = {"predictions": "run"}  # the run's own predictions (none attached afterwards)
    assert measured.summary(rows) == {
        ("linear_loss", "full", "compile(official)"): {"cases": 1, "min": 1.625, "median": 1.625, "max": 1.625, **run},
        ("linear_loss", "full", "masksub[triton]:R=768"): {"cases": 1, "min": 1.2, "median": 1.2, "max": 1.2, **run},
        ("loss", "forward", "masksub[triton]"): {"cases": 1, "min": 2.0, "median": 2.0, "max": 2.0, **run},
    }
    path = tmp_path / "GPU-X-2026-11-30.json"  # main reads it as a benchmark run's JSON: a device named
    path.write_text(__import__("json").dumps({**results, "environment": {"device": "GPU: X"}}))
    assert measured.main([str(path), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "| loss | forward | masksub[triton] | 1 | 2.00 | 2.00 | 2.00 | run |" in text
    assert "| linear_loss | s | bfloat16 | full | compile(official) | 13.000 | 8.000 | 1.62 | device | run |" in text


def test_measured_attaches_the_predictions_a_capped_suite_lacks(tmp_path):
    # the benchmark attaches predictions when a suite ends: a suite stopped by its cap has none; measured.py takes
    # them from the model file of the run's card
    import json

    from tools.perf_model import measured

    model = {"environment": {"label": "PREDICTIONS"}, "records": [], "linear_loss": {
        "shape": "BERT", "dtype": "bfloat16", "mode": "full",
        "providers": [{"provider": "masksub[triton] (grads in forward)", "predicted_us": 11000.0}]}}  # fmt: skip
    (tmp_path / "model-sm90.json").write_text(json.dumps(model))
    record = {"suite": "linear_loss", "shape": "BERT", "dtype": "bfloat16", "mode": "full", "median_ms": 12.0}
    results = {"environment": {"device": "GPU: NVIDIA H200"}, "records": [{**record, "provider": "masksub[triton]"}]}
    assert measured.attach_missing_predictions(results, tmp_path) == 1
    assert results["records"][0]["predicted_ms"] == pytest.approx(11.0)
    assert results["model_attached"] == {"file": "model-sm90.json", "records": 1}
    assert "1 predictions attached afterwards from model-sm90.json" in measured.report(results, "run.json")
    assert measured.attach_missing_predictions(results, tmp_path) == 0  # nothing missing any more


def _calibration_rows(lm):
    """(the fused-linear suite's shape, the loss suite's row keys, the fused-linear suite's row keys, the loss
    case's calibration rows: measured 2x / 1.5x their forward / backward predictions)."""
    shape = "BERT-base MLM M=16384 D=768 C=30522"
    loss = {"suite": "loss", "shape": lm.LOSS_CASE, "dtype": "bfloat16", "provider": "masksub[triton]"}
    full = {"suite": "linear_loss", "shape": shape, "dtype": "bfloat16", "mode": "full"}
    rows = [
        {**loss, "mode": "forward", "median_ms": 2.0, "predicted_ms": 1.0},
        {**loss, "mode": "backward", "median_ms": 1.5, "predicted_ms": 1.0},
    ]
    return shape, loss, full, rows


def test_fused_linear_prediction_beside_the_cards_measured_run(tmp_path):
    # the speed goal read against what torch.compile measured: the newest committed run of exactly this card that
    # timed the fused-linear suite at the shape, its composites' medians, and the fused prediction with the loss
    # kernels calibrated per source (the run's own predictions, today's, the profiled chunk kernels)
    import json

    from tools.perf_model import linear_loss_measured as lm
    from tools.perf_model.hardware import H100, H200

    shape, loss, full, calibration = _calibration_rows(lm)
    records = [
        *calibration,
        # not the calibration case: another shape, dtype, provider or mode, each with a prediction
        {**loss, "mode": "forward", "shape": "ImageNet-21k M=4096 C=21841", "median_ms": 9.0, "predicted_ms": 1.0},
        {**loss, "mode": "forward", "dtype": "float32", "median_ms": 9.0, "predicted_ms": 1.0},
        {**loss, "mode": "forward", "provider": "masksub[cuda]", "median_ms": 9.0, "predicted_ms": 1.0},
        {**loss, "mode": "full", "median_ms": 9.0, "predicted_ms": 1.0},
        {**loss, "mode": "backward", "median_ms": 9.0, "predicted_ms": 1.0, "host_bound": True},  # host-bound
        {**full, "provider": "compile(official)", "median_ms": 12.0},
        {**full, "provider": "official", "median_ms": 30.0},
        {**full, "provider": "official", "dtype": "float32", "median_ms": 99.0},  # another dtype: not this one's
        {**full, "provider": "official", "shape": "other", "median_ms": 99.0},  # another shape
    ]
    runs = {
        "GPU-NVIDIA-H200-2026-01-02.json": records,
        "GPU-NVIDIA-H200-2026-01-03.json": records[:2],  # newer, without the fused-linear suite: passed over
        "GPU-NVIDIA-H200-2025-12-31.json": [{**r, "median_ms": 2 * r["median_ms"]} for r in records],  # older
        "GPU-NVIDIA-H200-NVL-2026-02-01.json": [{**r, "median_ms": 3 * r["median_ms"]} for r in records],  # a card
    }  # fmt: skip
    for name, rows in runs.items():
        (tmp_path / name).write_text(json.dumps({"records": rows}))
    kernels = [{"kernel": "_loss_fwd_kernel", "kernel_us": 10.0}, {"kernel": "_loss_bwd_kernel", "kernel_us": 20.0}]
    by_kernel = {k["kernel"]: 50 * k["kernel_us"] for k in kernels}
    fused = {"us": 10000.0, "chunks": 50, "breakdown": {"loss_kernels": 1500.0, "loss_kernels_by_kernel": by_kernel}}
    today = {"forward": 0.5, "backward": 1.0}  # ms: today's model of the loss case
    profiled_today = {"_loss_fwd_kernel": lm.PROFILE["kernel_us"]["_loss_fwd_kernel"] / 4, "_loss_bwd_kernel":
                      lm.PROFILE["kernel_us"]["_loss_bwd_kernel"] / 5}  # fmt: skip
    ref = lm.measured_reference(H200, fused, shape, today, profiled_today, tmp_path)
    assert (ref["file"], ref["date"]) == ("GPU-NVIDIA-H200-2026-01-02.json", "2026-01-02")
    assert ref["measured_full_ms"] == {"compile(official)": 12.0, "official": 30.0}
    factors = {c["source"]: (c["forward"], c["backward"]) for c in ref["calibrated"]}
    assert factors == {"run": (2.0, 1.5), "today": (4.0, 1.5), "profile": (4.0, 5.0)}
    for c in ref["calibrated"]:
        fused_us = 10000.0 - 1500.0 + 50 * (10.0 * c["forward"] + 20.0 * c["backward"])
        assert c["fused_us"] == fused_us
        assert (c["compiled_over_fused"], c["eager_over_fused"]) == (
            round(12e3 / fused_us, 2),
            round(3e4 / fused_us, 2),
        )
    assert ref["compiled_over_fused_uncalibrated"] == 1.2
    # without today's predictions, only the run's; no profile off its card; no run of the card at all: None
    assert [c["source"] for c in lm.measured_reference(H200, fused, shape, {}, {}, tmp_path)["calibrated"]] == ["run"]
    (tmp_path / "GPU-NVIDIA-H100-2026-01-02.json").write_text(json.dumps({"records": records}))
    h100 = lm.measured_reference(H100, fused, shape, today, profiled_today, tmp_path)
    assert [c["source"] for c in h100["calibrated"]] == ["run", "today"]
    assert lm.measured_reference(H100, fused, "no such shape", today, profiled_today, tmp_path) is None
    text = "\n".join(lm.markdown(ref, 1500.0))
    assert "MEASURED in the GPU run GPU-NVIDIA-H200-2026-01-02.json" in text
    assert "| 2.00 | 1.50 | 2500 | 11000 | 1.09 | 2.73 |" in text
    assert lm.markdown(None, 1500.0) == []


def test_gemm_probe_calibrates_the_fused_matmuls(tmp_path):
    # the chunk's matmuls as benchmarks/gemm_probe.py measured them (the newest committed log of the card): the
    # loop's own where the log has them, else the padded matmuls (dH per branch: twice); the fused time shifts by
    # the chunks in full chunks' matmul time x probed - the model's matmuls
    import json

    from tools.perf_model import linear_loss_measured as lm
    from tools.perf_model.hardware import H100, H200

    def log(folder, device, rows):
        (tmp_path / folder).mkdir()
        lines = [f"{device} | torch 2.11.0+cu130", "warning: Profiler clears events"]
        lines += [f"{name:24s} {us:8.1f} us   500.0 TFLOP/s  nvjet_sm90_x; Memset (Device)" for name, us in rows]
        (tmp_path / folder / "after-gemm.log").write_text("\n".join(lines) + "\n")

    padded = [("logits fp32 out, C", 186.0), ("logits fp32 out, C8", 70.0), ("dH, K=C8", 50.0),
              ("dH both branches, K=C8", 90.0), ("dW addmm fp32, M=C8", 100.0)]  # fmt: skip
    log("gpu-2026-01-01", "NVIDIA H200", padded)
    assert lm.gemm_probe(H200, tmp_path) == {
        "file": "gpu-2026-01-01/after-gemm.log", "date": "2026-01-01", "per_chunk_us": 270.0, "loop": False
    }  # fmt: skip
    assert lm.gemm_probe(H100, tmp_path) is None  # another card's log
    log("gpu-2026-01-03", "NVIDIA H100 80GB HBM3", padded)
    assert lm.gemm_probe(H100, tmp_path)["date"] == "2026-01-03"
    loop = [("loop: logits head", 60.0), ("loop: dH both, head, beta 1", 80.0), ("loop: dW head", 90.0)]
    stale = [("loop: logits head+tail", 1.0), ("loop: dH both, head+tail", 1.0), ("loop: dW head+tail", 1.0)]
    log("gpu-2026-01-02", "NVIDIA H200", padded + loop + stale)  # newer for the H200: the loop's own chosen
    probe = lm.gemm_probe(H200, tmp_path)
    assert (probe["per_chunk_us"], probe["loop"]) == (230.0, True)
    log("gpu-2026-01-05", "NVIDIA H100 80GB HBM3", padded + stale)  # the older loop rows (with tails): not read
    assert (lm.gemm_probe(H100, tmp_path)["per_chunk_us"], lm.gemm_probe(H100, tmp_path)["loop"]) == (270.0, False)
    log("gpu-2026-01-04", "NVIDIA H200", [("logits fp32 out, C8", 70.0)])  # newest but incomplete: passed over
    assert lm.gemm_probe(H200, tmp_path)["date"] == "2026-01-02"

    shape, _, full, calibration = _calibration_rows(lm)
    records = [*calibration, {**full, "provider": "compile(official)", "median_ms": 12.0}]
    (tmp_path / "GPU-NVIDIA-H200-2026-01-02.json").write_text(json.dumps({"records": records}))
    kernels = [{"kernel": "_loss_fwd_kernel", "kernel_us": 10.0}, {"kernel": "_loss_bwd_kernel", "kernel_us": 20.0}]
    by_kernel = {k["kernel"]: 50 * k["kernel_us"] for k in kernels}
    fused = {"us": 10000.0, "chunks": 50, "chunk_rows": lm.GEMM_ROWS, "chunk_equivalents": 49.5,
             "cublas_extra_us": 375.0,
             "breakdown": {"loss_kernels": 1500.0, "matmuls": 6000.0, "loss_kernels_by_kernel": by_kernel}}  # fmt: skip
    ref = lm.measured_reference(H200, fused, shape, {}, {}, tmp_path)
    (run,) = ref["calibrated"]
    shift = 49.5 * 230.0 - 6000.0 - 375.0  # the last chunk half a full one's matmuls; cuBLAS's own in the probe's
    assert run["fused_us_probed"] == round(run["fused_us"] + shift, 1)
    assert run["compiled_over_fused_probed"] == round(12e3 / run["fused_us_probed"], 2)
    assert ref["gemm_probe"]["file"] == "gpu-2026-01-02/after-gemm.log"
    text = "\n".join(lm.markdown(ref, 1500.0))
    assert "fused us, matmuls probed" in text and f"| {run['fused_us_probed']:.0f} |" in text
    # other chunk rows than the probe's: no probed column
    other = lm.measured_reference(H200, {**fused, "chunk_rows": 512}, shape, {}, {}, tmp_path)
    assert "gemm_probe" not in other and "fused_us_probed" not in other["calibrated"][0]


def test_profile_constants_match_the_committed_profile():
    # PROFILE's kernel times are the first fused-linear table's 'CUDA time avg' in the committed profiler log
    from tools.perf_model import linear_loss_measured as lm

    text = (ROOT / lm.PROFILE["source"]).read_text()
    table = text[text.index("##### linear_masksub_loss full BERT bf16") :]
    header = next(line for line in table.splitlines() if line.strip().startswith("Name"))
    column = [c.strip() for c in header.split("  ") if c.strip()].index("CUDA time avg")
    for kernel, us in lm.PROFILE["kernel_us"].items():
        row = next(line for line in table.splitlines() if line.strip().startswith(kernel))
        cells = [c.strip() for c in row.split("  ") if c.strip()]
        assert cells[column] == f"{us:.3f}us", (kernel, cells)


needs_csrc_tools = pytest.mark.skipif(
    __import__("tools.perf_model.csrc", fromlist=["missing"]).missing() is not None,
    reason="no nvcc / host compiler / CUDA headers: the csrc rows are not predicted",
)


@needs_csrc_tools
def test_cuda_rows_beside_every_triton_row(model_run):
    _, run = model_run
    triton = [r for r in run["records"] if r["provider"] == "masksub[triton]"]
    cuda = {floors.key(r): r for r in run["records"] if r["provider"] == "masksub[cuda]"}
    assert set(cuda) == {floors.key(r) for r in triton}
    assert len(run["cuda_vs_triton"]) == len(triton)
    for row in run["cuda_vs_triton"]:
        assert row["ratio"] == round(row["cuda_us"] / row["triton_us"], 2) and row["ratio"] > 0, row
    # the kernels come from csrc's launchers: the fused select + gather (16-byte rows); the channels_last image kernel
    forward = cuda["token_select | ViT-B B=256 N=196 D=768 | bfloat16 | forward"]["kernels"]
    assert [k["kernel"] for k in forward] == ["select_gather_kernel<256,1,false,uint4>"]
    assert forward[0]["access_bytes"] == [16] and forward[0]["grid"] == [256, 1, 1]
    image = cuda["grid_mask | images B=256 3x224x224 cell 32 channels_last | bfloat16 [channels_last] | forward"]
    assert [k["kernel"] for k in image["kernels"]] == ["mask_image_kernel<uint4,true>"]  # cells drawn in the launch
    assert image["kernels"][0]["access_bytes"] == [16]
    loss = cuda["loss | BERT-like M=16384 C=30522 | bfloat16 [CE, class ids] | forward"]
    # the reduced loss: one kernel (it fills its output and reduces it), one fill (the tickets), split rows or not
    assert loss["kernels"][0]["grid"] == [16384, 1, 1] and loss["extra_launches"] == 1
    few = cuda["loss | LLM-like M=8 C=128256 | bfloat16 [CE, class ids] | forward"]
    assert few["kernels"][0]["grid"] == [8, 32, 1] and few["extra_launches"] == 1


@needs_csrc_tools
def test_launch_recorder_runs_csrc_launch_code():
    # the launch configurations come from the C++ launchers: their rules, checked here on shapes that reach
    # different branches (sort block shapes by N; row-copy word size by alignment; image layout by strides)
    import torch

    from tools.perf_model import csrc_launches as cl

    meta = {"device": "meta", "dtype": torch.bfloat16}
    x = torch.empty(4, 1 + 196, 768, **meta)
    odd = torch.empty(4, 1 + 196, 7, **meta)  # 14-byte rows: 2-byte words
    images = torch.empty(2, 3, 64, 64, **meta)
    calls = [
        cl.select_tokens(4, 196, 98, True),
        cl.select_tokens(4, 1024, 512, True),
        cl.gather_tokens(x, 98, 1),
        cl.gather_tokens(odd, 98, 1),
        cl.mask_image_grid(images, 32),
        cl.mask_image_grid(images.to(memory_format=torch.channels_last), 32),
        cl.mask_image_grid_random(images, 4, 100),  # 256 cells: drawn in the masking launch
        cl.mask_image_grid_random(images[:, :, :, :34], 2, 100),  # 544 cells: the selection, then the masking
        cl.masksub_loss_forward(*(torch.empty(10, 1000, **meta),) * 2, torch.empty(10, dtype=torch.int64), False),
        cl.masksub_loss_backward(*(torch.empty(10, 30000, **meta),) * 3, True),  # probabilities in the logits' dtype
        cl.masksub_loss_forward(*(torch.empty(8, 128256, **meta),) * 2, torch.empty(8, dtype=torch.int64), False),
    ]
    launches = cl.record(calls)
    names = [[cl.normalise(launch.kernel) for launch in recorded] for recorded in launches]
    assert names[0] == ["select_tokens_kernel<128,2,false>"] and launches[0][0].block == (128, 1, 1)
    assert names[1] == ["select_tokens_kernel<256,4,false>"] and launches[1][0].grid == (4, 1, 1)
    gather = launches[2][0]  # 96 words of 16 B per row, 32 lanes a row, 8 rows a block
    assert names[2] == ["copy_rows_kernel<uint4,GatherRows<long>>"] and gather.args[1:4] == [4 * 99, 96, 5]
    assert gather.grid == (-(-4 * 99 // 8), 1, 1)
    assert names[3] == ["copy_rows_kernel<unsignedshort,GatherRows<long>>"]
    # image rows: NCHW rows of 64 elements in 3 planes, channels_last rows of 64 x 3 (16-byte words: 8 and 24),
    # a unit (sample, cell row) per block; args[10:15] = planes, S, row words, cell words, lanes
    assert names[4] == names[5] == ["mask_image_kernel<uint4,false>"] and launches[4][0].grid == (4, 1, 1)
    assert launches[4][0].args[10:15] == [3, 32, 8, 4, 8] and launches[5][0].args[10:15] == [1, 32, 24, 12, 24]
    assert names[6] == ["mask_image_kernel<uint2,true>"] and launches[6][0].grid == (2 * 16, 1, 1)  # 8-byte cells
    assert names[7] == ["select_tokens_kernel<256,4,false>", "mask_image_kernel<unsignedint,false>"]  # 68-byte rows
    # the loss: one instance per variant (CE, class ids, sub, T = 1, no label smoothing here: kSmoothed false);
    # threads per row from the row's vectors
    assert names[8] == ["loss_forward_kernel<__nv_bfloat16,LossVariant<false,1,true,true,float,false>,false>"]
    assert launches[8][0].grid == (10, 1, 1) and launches[8][0].block == (64, 1, 1)  # 125 vectors of 8 classes
    assert calls[8].launches_around(launches[8]) == 0  # one block per row: no workspace, no fill
    assert names[9] == ["loss_backward_kernel<__nv_bfloat16,LossVariant<true,2,true,false,__nv_bfloat16,true>>"]
    assert launches[9][0].block == (256, 1, 1)
    # few rows: each row split over 32 blocks of 128 threads (2 iterations of 256 vectors each, 16032 vectors), the
    # split instance; the binding's zeroed tickets are one more launch
    assert names[10] == ["loss_forward_kernel<__nv_bfloat16,LossVariant<false,1,true,true,float,false>,true>"]
    assert launches[10][0].grid == (8, 32, 1) and launches[10][0].block == (128, 1, 1)
    # split_vectors, then the reduction (a struct, not recorded as an integer; null for the per-row binding)
    assert launches[10][0].args[-2] == 512 and calls[10].launches_around(launches[10]) == 1


def test_kernel_names_normalise_alike():
    from tools.perf_model.csrc_launches import normalise

    gcc = "masksub::detail::copy_rows_kernel<short unsigned int, masksub::{anonymous}::GatherRows<long int> >"
    demangled = (
        "void masksub::detail::copy_rows_kernel<unsigned short, masksub::(anonymous namespace)::GatherRows<long> >"
        "(unsigned short*, long, long, int, masksub::(anonymous namespace)::GatherRows<long>)"
    )
    assert normalise(gcc) == normalise(demangled) == "copy_rows_kernel<unsignedshort,GatherRows<long>>"


@needs_csrc_tools
def test_launch_recorder_select_gather_branches():
    # csrc's select + gather launcher: one launch up to N = 1024 (256 threads, 1-4 keys each), column splits for few
    # samples, select then gather above
    import torch

    from tools.perf_model import csrc_launches as cl

    meta = {"device": "meta", "dtype": torch.bfloat16}
    calls = [
        cl.select_gather_tokens(torch.empty(4, 1 + 196, 768, **meta), 98, 1),
        cl.select_gather_tokens(torch.empty(256, 1 + 1024, 768, **meta), 512, 1),
        cl.select_gather_tokens(torch.empty(4, 1 + 2048, 768, **meta), 1024, 1),
    ]
    launches = cl.record(calls)
    names = [[cl.normalise(launch.kernel) for launch in recorded] for recorded in launches]
    # 4 samples: 96 words a row in 3 column splits of 32 (256 / 4 blocks wanted, at least 32 words a split), 8 lanes
    # a row; args[-4:] = prefix, words per row, words per split, log2(lanes)
    fused = launches[0][0]
    assert names[0] == ["select_gather_kernel<256,1,false,uint4>"] and fused.grid == (4, 3, 1)
    assert fused.block == (256, 1, 1) and fused.args[-4:] == [1, 96, 32, 3]
    assert names[1] == ["select_gather_kernel<256,4,false,uint4>"] and launches[1][0].grid == (256, 1, 1)
    assert launches[1][0].args[-4:] == [1, 96, 96, 5]  # 256 samples: one split, whole rows, a warp a row
    assert names[2] == ["select_tokens_kernel<256,8,false>", "copy_rows_kernel<uint4,GatherRows<long>>"]


def test_special_function_pipe_binds_a_kernel_of_exponentials():
    # A loop of 2 FFMA + 2 MUFU per iteration: 4 issue slots, but the two MUFU hold the quarter-rate pipe for
    # 2 x 8 = 16 cycles: the MUFU time is 4x the issue time and decides the kernel. Without them, issue decides.
    from tools.perf_model.hardware import H200
    from tools.perf_model.model import predict_kernel
    from tools.perf_model.sass import Function, Instruction, Loop

    def kernel(loop_opcodes):
        body = [Instruction(16 * (i + 1), op, "") for i, op in enumerate([*loop_opcodes, "LDG.E.128", "BRA"])]
        loop = Loop(start=body[0].address, end=body[-1].address, instructions=body, own=body)
        return Function("k", [Instruction(0, "S2R", ""), *body], 32, 0, 0, 0, [loop])

    def predict(function):
        return predict_kernel(H200, function, "k", (132 * 8, 1, 1), 8, 0, [10_000], 8 * 32 * 8, 1 << 20, 0)

    mufu = predict(kernel(["FFMA", "FFMA", "MUFU.EX2", "MUFU.EX2"]))
    trips = 10_000  # each issues 6 instructions (+ 1 outside the loop) and holds the MUFU pipe 16 cycles
    assert mufu.t_mufu_us == pytest.approx(mufu.t_issue_us * 16 * trips / (6 * trips + 1), rel=1e-9)
    assert mufu.t_kernel_us == pytest.approx(mufu.t_mufu_us, rel=1e-6)
    plain = predict(kernel(["FFMA", "FFMA", "FFMA", "FFMA"]))
    assert plain.t_mufu_us == 0 and plain.t_kernel_us == pytest.approx(plain.t_issue_us, rel=1e-6)


def test_recording_counts_the_torch_ops_that_launch_a_kernel():
    # A launcher's zero fill or conversion launches a kernel on a GPU; allocations, views and empty outputs do not.
    import types

    import torch

    from tools.perf_model.capture import recording

    meta = torch.device("meta")
    with recording(types.ModuleType("no_kernels")) as log:
        buffer = torch.zeros(10, device=meta)
        out = buffer[:8].view(2, 4)
        torch.empty(3, device=meta).zero_()[1:].fill_(1.0)
        out.to(torch.float16)
        torch.zeros(0, device=meta)
        torch._foreach_copy_([buffer[:2], buffer[2:4]], [buffer[4:6], buffer[6:8]])  # in place, returns none
        torch._foreach_copy_([buffer[:0]], [buffer[:0]])  # nothing to copy
    assert list(log) == [] and log.torch_ops == ["zeros", "zero_", "fill_", "_to_copy", "_foreach_copy_"]


def test_fused_linear_launches_are_recorded_from_the_code():
    # the model's launch count of the fused op's forward is the code's, recorded on meta tensors (helper-152 found
    # the hand count short): at BERT's shape, 43 chunks of 384 rows, the last of 256, whose loss forward alone
    # splits the classes (two Triton launches and C's tail's three matmuls of its own). Compiled kernels are
    # recorded: a subprocess without the interpreter, as the model runs
    script = (
        "import json; from tools.perf_model import linear_loss as ll; name, m, d, c = ll.SHAPE; "
        "print(json.dumps([ll.recorded_forward(ll.SHAPE, 384), ll.recorded_forward((name, m + 384, d, c), 384), "
        "ll.recorded_forward(ll.SHAPE, 192)]))"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    forward, one_more, split = json.loads(result.stdout.splitlines()[-1])
    assert forward["triton"] == 42 + 2
    # per chunk: the two row copies into the stacked buffer, the three matmuls over C's head, dH's rows stored
    assert {k: one_more[k] - forward[k] for k in forward} == {"torch": 6, "triton": 1}
    assert forward["torch"] > 6 * 42 + 6 + 3 + 12  # the fallback chunk's tail matmuls, dW's tail, the buffers
    assert split["triton"] == 2 * 86  # 192-row chunks all split (fewer rows than 2 per SM)


def test_floors_help_names_the_command_that_runs_it(capsys):
    # helper-322: `python -m tools.perf_model.floors --help` said "usage: floors.py"
    with pytest.raises(SystemExit):
        floors.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m tools.perf_model.floors")


def test_the_model_table_names_each_rows_provider():
    # helper-322: model-sm90.md's main table had no provider column: a Triton row and its cuda twin looked alike
    from tools.perf_model import predict

    run = json.loads((ROOT / "benchmarks" / "results" / "model-sm90.json").read_text())
    lines = predict.markdown(run).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| suite | shape | dtype | variant | provider |"))
    table = lines[head + 2 : lines.index("", head)]  # the main table (the cuda-vs-Triton one follows)
    providers = {line.split(" | ")[4] for line in table if line.startswith("| token_select | ViT-S B=256 N=196")}
    assert providers == {"masksub[triton]", "masksub[cuda]"}  # the committed tables hold the cuda rows too
