"""More checks of the prepared GPU run's harness and its consumers (helper-122's review).

The GPU run (benchmarks/gpu_bench.sh, benchmarks/gpu_check.sh) gets one try: these tests build, on the CPU, what a
GPU run would time and write, and hand it to the tools that read it afterwards (tools/perf_model). The tests that
name a finding of the review (its number) failed before its fix (helper-124: findings 1-3, 5, 9-11).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masksub_kernels.bench import grid_mask, linear_loss, loss, report, token_select, train_step

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "benchmarks" / "results" / "model-sm90.json"
CUDA = torch.device("cuda")


@pytest.fixture
def gpu_cases(monkeypatch):
    """The cases a GPU run would time (closures only: nothing runs), with both kernel backends available."""
    monkeypatch.setattr(token_select.mk, "available_backends", lambda: ["torch", "triton", "cuda"])
    monkeypatch.setattr(linear_loss, "liger_provider", lambda: None)  # Liger is not on this machine
    monkeypatch.setattr(loss, "liger_provider", lambda: None)
    return {module.__name__.rsplit(".", 1)[-1]: module.cases(CUDA) for module in (linear_loss, loss, token_select,
                                                                                  grid_mask)}  # fmt: skip


def fake_records(cases) -> list[dict]:
    return [
        {"suite": c.suite, "shape": c.shape, "dtype": c.dtype, "provider": c.provider, "mode": mode,
         "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, **c.notes}
        for c in cases
        for mode in c.modes
    ]  # fmt: skip


def test_every_modelled_gpu_case_gets_its_committed_prediction(gpu_cases):
    # the benchmark's shape labels, dtypes and provider names are the keys of the model file's predictions: a label
    # renamed on either side would leave the GPU run without its model column and tools.perf_model.measured without
    # its calibration, silently
    records = fake_records([case for cases in gpu_cases.values() for case in cases])
    run = {"records": records, "environment": {"device": "GPU: NVIDIA H200"}}
    report.attach_predictions(run, MODEL)
    model = json.loads(MODEL.read_text())
    modelled = {(r["suite"], r["shape"], r["dtype"], r["mode"], r.get("provider", "masksub[triton]"))
                for r in model["records"] if r["variant"] in report.MODEL_VARIANTS}  # fmt: skip
    measured = {(r["suite"], r["shape"], r["dtype"], r["mode"], r["provider"]) for r in records}
    assert modelled <= measured, sorted(modelled - measured)[:5]  # every modelled case is timed by the GPU run
    with_prediction = {(r["suite"], r["provider"], r["mode"]) for r in records if "predicted_ms" in r}
    for suite in ("loss", "token_select", "grid_mask"):
        for provider in ("masksub[triton]", "masksub[cuda]"):
            assert (suite, provider, "full" if suite != "grid_mask" else "forward") in with_prediction
    fused = {r["provider"] for r in records if r["suite"] == "linear_loss" and "predicted_ms" in r}
    assert {"masksub[triton]", "official", "compile(official)", "masksub[triton]:R=192"} <= fused
    assert all(r["mode"] == "full" for r in records if r["suite"] == "linear_loss" and "predicted_ms" in r)


def test_the_consumers_read_a_gpu_runs_file(gpu_cases, tmp_path, capsys):
    # the JSON the benchmark writes (report.write), as tools.perf_model.measured and linear_loss_measured read it
    from tools.perf_model import linear_loss_measured, measured
    from tools.perf_model.hardware import H200

    records = fake_records([case for cases in gpu_cases.values() for case in cases])
    for r in records:
        r["host_ms"], r["host_bound"] = 0.01, False
    run = {"date": "2030-01-02", "environment": {"device": "GPU: NVIDIA H200", "torch": "2.11"}, "copy_gbps": 4224.0,
           "repeats": 30, "warmup": 5, "records": records}  # fmt: skip
    stem = "GPU-NVIDIA-H200-2030-01-02"
    report.write(run, tmp_path, stem, json_only=True)  # the records carry no prediction: a suite cut by its cap
    path = tmp_path / f"{stem}.json"
    assert measured.newest_gpu_results(tmp_path) == path
    assert measured.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "predictions attached afterwards from model-sm90.json" in out
    assert "| linear_loss | full | compile(official) | 1 |" in out
    assert linear_loss_measured.card_runs(H200, tmp_path) == [("2030-01-02", path)]
    composites = linear_loss_measured._composites(json.loads(path.read_text()), "BERT-base MLM M=16384 D=768 C=30522")
    assert composites["compile(official)"] == 1.0 and composites["official"] == 1.0


def test_an_h100_runs_file_is_found_for_the_h100_card(tmp_path):
    from tools.perf_model.hardware import H100, card_for_device
    from tools.perf_model.linear_loss_measured import card_runs

    label = "GPU: NVIDIA H100 80GB HBM3"  # torch.cuda.get_device_name on an H100 SXM, as cli names the files
    assert card_for_device(label) is H100
    # the PCIe and NVL forms have other SM counts and bandwidths: no card, rather than the SXM figures
    assert card_for_device("NVIDIA H100 PCIe") is None and card_for_device("NVIDIA H100 NVL") is None
    assert card_for_device("NVIDIA H200 NVL") is None and card_for_device("NVIDIA H200") is not None
    assert card_for_device("NVIDIA GH200 480GB") is None  # another chip: 'H200' within 'GH200' is not the card
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{label}-2030-01-02").strip("-")  # cli.main's stem
    assert stem == "GPU-NVIDIA-H100-80GB-HBM3-2030-01-02"
    (tmp_path / f"{stem}.json").write_text("{}")
    assert card_runs(H100, tmp_path) == [("2030-01-02", tmp_path / f"{stem}.json")]


def liger_case():
    shape = linear_loss._Shape(torch.device("cpu"), "BERT", 64, 8, 30, torch.bfloat16)
    return shape.case("liger(main CE only)", lambda *a: None, None, shape.notes)


def test_a_one_branch_reference_gets_no_speed_up_against_the_two_branch_composite():
    shape = "BERT-base MLM M=16384 D=768 C=30522"
    common = {"suite": "linear_loss", "shape": shape, "dtype": "bfloat16", "mode": "full", "p20_ms": 1, "p80_ms": 1}
    run = {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "records": [
        {**common, "provider": "official", "median_ms": 37.8},
        {**common, "provider": "liger(main CE only)", "median_ms": 15.0, "forward_computes_gradients": True,
         **liger_case().notes},
    ]}  # fmt: skip
    (row,) = [line for line in report.markdown_table(run).splitlines() if "| liger(main CE only) |" in line]
    assert "2.52x" not in row  # 37.8 / 15.0: the official composite does both branches, Liger's row one


def test_fused_linear_minimal_bytes_count_each_input_once():
    rows, depth, classes = 16384, 768, 30522
    shape = linear_loss._Shape(torch.device("cpu"), "BERT", rows, depth, classes, torch.bfloat16)
    # h, h_s [M, D], W [C, D], b [C] in bf16, class ids [M] in int64
    assert shape.inputs_bytes == (2 * rows * depth + classes * depth + classes) * 2 + rows * 8


def test_hand_counted_bytes_and_flops_of_the_headline_cases():
    # one shape per suite, counted by hand: the GB/s, % of copy and TFLOP/s of the GPU tables rest on these
    (select,) = [
        c for c in token_select.cases(CUDA) if c.shape == "ViT-B B=256 N=1024 D=768" and c.provider == "official"
    ]
    kept, every = 256 * (1 + 512), 256 * (1 + 1024)  # the class token and half the patches; every token
    assert select.bytes == {"forward": 2 * kept * 768 * 2, "backward": (kept + every) * 768 * 2,
                            "full": (3 * kept + every) * 768 * 2}  # fmt: skip
    (ce,) = [c for c in loss.cases(CUDA) if c.shape == "BERT-like M=16384 C=30522" and c.provider == "official"]
    logits = 16384 * 30522 * 2
    assert ce.bytes == {"forward": 2 * logits, "backward": 4 * logits, "full": 4 * logits}
    shape = linear_loss._Shape(torch.device("cpu"), "BERT", 16384, 768, 30522, torch.bfloat16)
    assert shape.flops["full"] == 6 * 2 * 16384 * 768 * 30522 == 4_608_667_680_768
    # 13.134 ms, torch.compile's full median on the H200 (2026-11-30): 351 TFLOP/s of useful flops
    assert shape.flops["full"] / 13.134e-3 / 1e12 == pytest.approx(350.9, abs=0.1)


@pytest.mark.parametrize("suite", ["grid_mask", "token_select", "loss"])
def test_the_capped_suites_time_this_librarys_kernels_first(gpu_cases, suite, monkeypatch):
    # finding 3: each suite runs under a cap (gpu_bench.sh) that ended grid_mask about its fp32 images' rows, so
    # that it timed baselines measured on 2026-11-30 again and never the changed kernels' bf16 and Swin rows. A
    # capped suite keeps the cases it finished: the library's of every shape come first, then official, then
    # compile(official), then the other references; each group in the suite's shape order
    monkeypatch.setattr(loss, "liger_provider", lambda: lambda *a: None)  # a third-party row: after the rest
    cases = {"grid_mask": grid_mask, "token_select": token_select, "loss": loss}[suite].cases(CUDA)
    library = [c.provider for c in cases if c.provider.startswith("masksub[")]
    baselines = ("official", "compile(official)")
    providers = [case.provider for case in cases]
    rank = [0 if p in library else 1 + baselines.index(p) if p in baselines else 9 for p in providers]
    assert rank == sorted(rank) and rank[0] == 0 and 1 in rank, providers
    shapes = list(dict.fromkeys(case.shape for case in cases))
    for group in set(rank):  # each group keeps the shape order (the first shape's rows first)
        order = [shapes.index(c.shape) for c, r in zip(cases, rank, strict=True) if r == group]
        assert order == sorted(order), (group, order)
    assert {"masksub[triton]", "masksub[cuda]"} <= set(providers)
    assert len(set(rank)) >= 3 or suite == "grid_mask"  # compile(official) or the third-party references too


def test_the_capped_train_suite_times_whole_models_plain_step_first():
    # helper-214: the train suite ran every model's library steps before the first plain step, and its 35 s cap
    # (2026-12-04: 12 of 16 cases in 38 s) would have left every row without the plain step its ratio divides by.
    # Model after model instead, plain first; Swin-T (its step gap is open) and ResNet-50 (never timed) lead
    pytest.importorskip("timm")
    cases = train_step.cases(CUDA)  # the models are built lazily, by the first case of each: nothing runs here
    models = list(dict.fromkeys(case.notes["model"] for case in cases))
    assert models[:2] == ["swin_tiny_patch4_window7_224", "resnet50"] and len(models) == 4
    expected = [(m, p) for m in models for p in train_step.PROVIDER_ORDER]
    assert [(case.notes["model"], case.provider) for case in cases] == expected
    assert train_step.PROVIDER_ORDER[0] == "plain"
    assert set(train_step.PROVIDER_ORDER) == set(train_step.LIBRARY + train_step.BASELINES)


def test_the_markdown_table_groups_rows_by_shape_whatever_the_case_order(gpu_cases):
    # the records of a kernels-first suite come shape after shape several times: the table's rows of one shape,
    # dtype and mode stay together, the baseline's speed-up beside each (report.markdown_table groups them)
    records = fake_records(gpu_cases["grid_mask"])
    for record in records:
        record["median_ms"] = record["p20_ms"] = record["p80_ms"] = 2.0 if record["provider"] == "official" else 1.0
    run = {"records": records, "environment": {"device": "GPU: NVIDIA H200", "torch": "-"}, "date": "-",
           "copy_gbps": 1.0}  # fmt: skip
    rows = [line.split(" | ") for line in report.markdown_table(run).splitlines() if line.startswith("| grid_mask |")]
    keys = [tuple(row[1:4]) for row in rows]
    assert len(rows) == len(records) and len(set(keys)) == 5  # images fp32, bf16 (forward); Swin tokens: 3 modes
    assert keys == sorted(keys, key=keys.index)  # each group's rows contiguous
    for row in rows:
        assert row[-2] == ("1.00x" if row[4] == "official" else "2.00x"), row


def test_the_plot_of_a_whole_gpu_run_stays_readable(gpu_cases, tmp_path):
    # finding 5: one axis for every shape and provider made a ~10000 x 495 pixel strip; one panel per suite now
    pytest.importorskip("matplotlib")
    from PIL import Image

    records = fake_records([case for cases in gpu_cases.values() for case in cases])
    run = {"records": records, "environment": {"device": "GPU: NVIDIA H200"}, "date": "2030-01-02"}
    assert report.plot(run, tmp_path / "plot.png")
    width, height = Image.open(tmp_path / "plot.png").size
    assert width <= 2000 and width / height <= 4, (width, height)
    # many more shapes (a --full sweep, say): the width stays bounded, a panel per suite
    many = [{**r, "shape": f"{r['shape']} #{i}"} for i in range(8) for r in records if r["mode"] == "full"]
    assert report.plot({**run, "records": many}, tmp_path / "many.png")
    width, height = Image.open(tmp_path / "many.png").size
    assert width <= report.PLOT_MAX_INCHES * 110 + 10 and height < 2000, (width, height)


def test_the_plot_draws_each_median_as_a_dot_and_names_cut_suites_it_cannot_draw(tmp_path, monkeypatch):
    # helper-138's finding 11: bars on a log axis start where the axis does, so their heights' ratios were not the
    # medians' (2.7x looked 5x); a dot's height is its value
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    records = [
        {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "full", "provider": p, "median_ms": ms}
        for p, ms in (("official", 1.88), ("masksub[triton]", 5.01))
    ]
    run = {"records": records, "environment": {"device": "GPU: NVIDIA H200"}, "date": "2030-01-02"}
    run["incomplete_suites"] = {"train": {"cases_done": 12, "cases": 16}}  # a cut suite without a panel (helper-146)
    assert report.plot(run, tmp_path / "plot.png")
    (axis,) = figures[0].axes
    assert "not drawn: train (cut short after 12 of 16 cases)" in figures[0].get_suptitle()
    assert not axis.patches  # no bars
    assert sorted(float(y) for line in axis.lines for y in line.get_ydata()) == [1.88, 5.01]
    assert axis.get_yscale() == "log"


def test_the_markdown_header_says_which_rows_had_fewer_repeats_and_memory_is_in_mib():
    # finding 11: the header said "30 repeats" of a table whose training rows had 10; peak memory is 2**20 bytes
    common = {"dtype": "bf16", "mode": "full", "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "peak_mem_mb": 2.0}
    records = [{**common, "suite": "loss", "shape": "s", "provider": "official", "repeats": 30},
               {**common, "suite": "train", "shape": "m", "provider": "plain", "repeats": 10}]  # fmt: skip
    run = {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "repeats": 30,
           "warmup": 5, "records": records}  # fmt: skip
    table = report.markdown_table(run)
    assert "| 30 repeats (train: 10), 5 warm-up" in table and "peak MB" not in table
    assert "| peak MiB |" in table and "| peak MiB above the step's start |" in table  # ops, training steps
    run["records"].pop()
    assert "| 30 repeats, 5 warm-up" in report.markdown_table(run)


def test_an_appended_run_keeps_the_model_key_and_writes_no_plot_when_told(tmp_path):
    # finding 9: gpu_bench.sh's suites each append to the run's files (--no-plot: one plot at the end); the model
    # file named by an earlier suite stays named until a later suite attaches its own predictions
    from masksub_kernels.bench import cli

    common = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-plot"]
    assert cli.main([*common, "--suites", "grid_mask"]) == 0
    (path,) = tmp_path.glob("*.json")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "model": {"file": "model-sm90.json", "label": "the model"}}))
    assert cli.main([*common, "--append", "--suites", "token_select"]) == 0
    run = json.loads(path.read_text())
    assert run["model"] == {"file": "model-sm90.json", "label": "the model"}
    assert {r["suite"] for r in run["records"]} == {"grid_mask", "token_select"}
    assert "predicted ms: the model (model-sm90.json)." in path.with_suffix(".md").read_text()


def test_report_only_rewrites_the_markdown_and_plot_of_a_runs_json(gpu_cases, tmp_path, capsys):
    # finding 9: a GPU run whose last suite was stopped by its cap has that suite's rows in its JSON only (no
    # predictions, the .md and .png of the suite before): --report-only rewrites them from the JSON, on the CPU
    from masksub_kernels.bench import cli

    records = fake_records([case for cases in gpu_cases.values() for case in cases])
    run = {"date": "2030-01-02", "environment": {"device": "GPU: NVIDIA H200", "torch": "2.11"}, "copy_gbps": 4224.0,
           "repeats": 30, "warmup": 5, "records": records}  # fmt: skip
    path = tmp_path / "GPU-NVIDIA-H200-2030-01-02.json"
    path.write_text(json.dumps(run))
    measured = path.read_bytes()
    assert cli.main(["--report-only", str(path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{path.stem}{s}" for s in (".json", ".md", ".png")]
    assert path.read_bytes() == measured  # the measured record is left as it is: the .md and .png derive from it
    predicted = json.loads(measured)
    assert report.attach_predictions(predicted, cli.default_output_directory() / "model-sm90.json") > 0
    table = path.with_suffix(".md").read_text()
    assert table == report.markdown_table(predicted) and "| grid_mask | Swin-T tokens" in table
    said = capsys.readouterr().out
    assert "wrote png:" in said and "wrote json:" not in said
    assert cli.main(["--report-only", str(path), "--repredict", "--no-plot"]) == 0  # the JSON too, told so
    rewritten = json.loads(path.read_text())
    assert rewritten["model"]["file"] == "model-sm90.json" and any("predicted_ms" in r for r in rewritten["records"])
    assert "wrote json:" in capsys.readouterr().out
    path.write_text("{}")  # not a run's JSON: said, exit status 2, nothing written
    assert cli.main(["--report-only", str(path)]) == 2 and "not a benchmark run's JSON" in capsys.readouterr().err


def caps(script: str) -> dict[str, int]:
    """step name -> cap of the script's dry run."""
    env = {"DRY_RUN": "1", "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", script, "/tmp/unused"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    named = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("step", "step_bg"):
            command = " ".join(parts[3:])
            name = next((s for s in ("gpu_profile", "gemm_probe", "ncu_linear", "linear_loss_numerics", "write_env",
                                     "build_if_missing", "memcheck", "racecheck") if s in command), None)  # fmt: skip
            suite = re.search(r"--suites (\w+)", command)
            cuda = parts[1] == "cuda.log" and "pytest" in parts[3:6]  # the cuda backend's tests
            name = suite.group(1) if suite else "cuda" if cuda else name
            assert name is not None and name not in named, line  # every step named, once
            named[name] = int(parts[2])
    return named


def test_gpu_bench_documents_the_caps_it_runs():
    source = (ROOT / "benchmarks/gpu_bench.sh").read_text()
    documented = {m.group(1): int(m.group(2)) for m in re.finditer(r"^#   (\w+) +(\d+) ", source, re.M)}
    actual = caps("benchmarks/gpu_bench.sh")
    names = {"env": "write_env", "build": "build_if_missing", "profile": "gpu_profile", "ncu": "ncu_linear",
             "numerics": "linear_loss_numerics", "gemm": "gemm_probe"}  # fmt: skip
    assert {names.get(k, k): v for k, v in documented.items()} == actual


def test_the_sanitizers_selections_match_the_tests_they_name():
    # gpu_lib.sh's -k expressions: a renamed test or parameter id would drop out of memcheck / racecheck silently
    source = (ROOT / "benchmarks/gpu_lib.sh").read_text()

    def expression(name: str) -> str:
        text = re.search(rf"^{name}='(.*?)'", source, re.M | re.S).group(1)
        return " ".join(text.split())

    def collected(*args: str) -> list[str]:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        return [line for line in out.stdout.splitlines() if "::" in line]

    files = re.search(r"^MEMCHECK_FILES=\((.*?)\)", source, re.M | re.S).group(1).split()
    memcheck = collected(*files, "-k", expression("MEMCHECK_K"))
    assert len(memcheck) > 100 and not any("refus" in t or "past_two_to_the_32" in t for t in memcheck)
    assert {t.split("::")[0] for t in memcheck} == set(files)  # every kernel file has cases under memcheck
    racecheck = collected("tests/cuda_extension", "-k", expression("RACECHECK_K"))
    for term in ("4-10-5", "3-257-100", "1-8192-4096", "test_grid_cell_mask_matches_reference",
                 "test_mask_token_grad_adds_every_token", "test_mask_token_grad_narrow_rows", "16-24-40-8", "5-3",
                 "7-1000", "test_masksub_loss_single_terms"):  # fmt: skip
        assert any(term in t for t in racecheck), term


# ncu's raw page as `ncu --csv --page raw --print-units base` prints it: the fixed columns first, a units row whose
# fixed columns are empty, then a row per kernel (ncu's ==PROF== lines and the workload's own lines around them)
NCU_RAW = """== ncu_csv begin --section SpeedOfLight --section WarpStateStats
==PROF== Connected to process 4242 (/usr/bin/python3.12)
gpu_ncu:    9.0 s: warmed up on NVIDIA H200, backend triton
gpu_ncu:   11.0 s: profiled: gradients in the forward, one chunk: M=384 D=768 C=30522
==PROF== Profiling "_loss_fwd_kernel" - 0: 0%....50%....100% - 9 passes
==PROF== Disconnected from process 4242
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC",\
"dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum","launch__registers_per_thread",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"
"","","","","","","","","","","","byte","byte","nsecond","register/thread","ratio"
"0","4242","python3.12","127.0.0.1","_loss_fwd_kernel","1","7","(256, 1, 1)","(768, 1, 1)","0","9.0",\
"93,780,480","1,024","44,160","40","6.52"
"1","4242","python3.12","127.0.0.1","nvjet_sm90_tst_256x128_64x4_2x1_v_bz_coopB_NNT","1","7","(384, 1, 1)",\
"(132, 1, 1)","0","9.0","50,000,000","94,000,000","120,000","168","1.10"
== ncu_csv end rc=0
"""


def test_ncu_raw_page_round_trip(tmp_path, monkeypatch, capsys):
    from tools.perf_model import ncu

    (block,) = ncu.tables(NCU_RAW)
    fwd, gemm = (ncu.summary(row) for row in block)
    assert (fwd["kernel"], fwd["grid"], fwd["block"], fwd["registers"]) == ("_loss_fwd_kernel", "(768, 1, 1)",
                                                                           "(256, 1, 1)", 40)  # fmt: skip
    assert fwd["duration_us"] == pytest.approx(44.16) and fwd["dram_read"] == pytest.approx(93.78048)
    assert fwd["stalls"] == [("long_scoreboard", 6.52)] and ncu.short(gemm["kernel"]).startswith("nvjet_sm90")
    log = tmp_path / "bench.log"
    log.write_text(NCU_RAW)
    predicted = {"_loss_fwd_kernel": {"kernel_us": 21.8, "bytes": 93780480}}
    cards = []  # the model's card: the one the log's gpu_ncu line names
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: cards.append(card) or predicted)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the model's columns (tests/conftest.py sets it on the CPU)
    assert ncu.main([str(log)]) == 0
    table = capsys.readouterr().out
    assert "| _loss_fwd_kernel | (768, 1, 1) | (256, 1, 1) | 44.16 |" in table and "| 21.8 | 93.8 |" in table
    assert cards == ["H200"]


# -> tests/test_bench_more.py (after test_ncu_raw_page_round_trip; uses its NCU_RAW). Kills `card = args.card or
# logged_card(text)` -> `args.card or "H200"` in tools/perf_model/ncu.py main() (survives today: the round trip's log
# names the H200, the default before 2026-12-06, and test_the_model_columns_take_the_card_the_log_names checks
# logged_card alone), and `predicted = ... if card else None` -> a model card whatever the log names.
def test_ncu_main_takes_the_model_card_from_the_log_and_none_for_an_unknown_card(tmp_path, monkeypatch, capsys):
    from tools.perf_model import ncu

    cards = []
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: cards.append(card) or {})
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the model's columns (tests/conftest.py sets it on the CPU)
    log = tmp_path / "bench.log"
    log.write_text(NCU_RAW.replace("on NVIDIA H200,", "on NVIDIA H100 80GB HBM3,"))
    assert ncu.main([str(log)]) == 0 and cards == ["H100"]  # an H100 run: the H100's predictions
    assert ncu.main([str(log), "--card", "H200"]) == 0 and cards == ["H100", "H200"]  # --card still wins
    log.write_text(NCU_RAW.replace("on NVIDIA H200,", "on NVIDIA H100 PCIe,"))
    assert ncu.main([str(log)]) == 0 and cards == ["H100", "H200"]  # a form the model lacks: no model columns
    assert "names no card the model knows" in capsys.readouterr().err


def _trace(*events):
    """Allocator trace entries from (action, addr, size) triples."""
    return [{"action": action, "addr": addr, "size": size} for action, addr, size in events]


def test_the_peak_beyond_returned_leaves_out_what_the_call_returned():
    from masksub_kernels.bench.timing import transient_peak_bytes

    # a temporary of 100 freed, a returned 50 never freed: 100, wherever the returned block was allocated
    assert transient_peak_bytes(_trace(("alloc", 1, 50), ("alloc", 2, 100), ("free_completed", 2, 100))) == 100
    assert transient_peak_bytes(_trace(("alloc", 2, 100), ("free_completed", 2, 100), ("alloc", 1, 50))) == 100
    # temporaries overlapping: the most held at once (A + B), not their sum
    overlapping = [("alloc", 1, 100), ("alloc", 2, 30), ("free_completed", 1, 100), ("alloc", 3, 80)]
    assert transient_peak_bytes(_trace(*overlapping, ("free_completed", 2, 30), ("free_completed", 3, 80))) == 130
    # a block freed before the trace began (an input let go) and the allocator's other actions: ignored
    others = [("segment_alloc", 7, 4096), ("free_completed", 9, 500), ("snapshot", 0, 0)]
    assert transient_peak_bytes(_trace(*others, ("alloc", 1, 10), ("free_completed", 1, 10))) == 10
    # a free requested while another stream used the block completes later: held until then; a request the trace
    # ends before completing still ends it (the tensor is gone, not returned)
    deferred = [("alloc", 1, 100), ("free_requested", 1, 100), ("alloc", 2, 50), ("free_completed", 1, 100)]
    assert transient_peak_bytes(_trace(*deferred, ("free_completed", 2, 50))) == 150
    assert transient_peak_bytes(_trace(("alloc", 1, 100), ("free_requested", 1, 100))) == 100
    # an address reused: the first block freed (counted), the second returned (not)
    assert transient_peak_bytes(_trace(("alloc", 1, 100), ("free_completed", 1, 100), ("alloc", 1, 20))) == 100
    assert transient_peak_bytes([]) == 0


def test_the_compute_bound_table_gives_both_peaks():
    common = {"dtype": "bf16", "mode": "full", "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "repeats": 30}
    records = [
        {**common, "suite": "linear_loss", "shape": "s", "provider": "masksub[triton]", "tflops": 2.0,
         "peak_mem_mb": 232.0, "transient_mem_mb": 184.0},
        {**common, "suite": "linear_loss", "shape": "s", "provider": "official", "tflops": 1.0, "peak_mem_mb": 9.0},
    ]  # fmt: skip
    run = {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "repeats": 30,
           "warmup": 5, "records": records}  # fmt: skip
    table = report.markdown_table(run)
    assert "| peak MiB | peak beyond returned MiB |" in table
    assert "| masksub[triton] | 2.000 | 232.0 | 184.0 |" in table and "| official | 1.000 | 9.0 | - |" in table


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_measure_gives_the_peak_beyond_returned():
    # a call that holds a 64 MiB temporary and returns 16 MiB: 80 MiB of peak, 64 of it beyond what it returned
    from masksub_kernels.bench.timing import measure

    def call():
        temporary = torch.ones(16 * 2**20, device="cuda")
        return temporary[: 4 * 2**20].clone()

    timing = measure(call, CUDA, warmup=1, repeats=2)
    assert timing.peak_mem_mb == pytest.approx(80, abs=1) and timing.transient_mem_mb == pytest.approx(64, abs=1)


class _FakeMemory:
    """torch.cuda.memory's history as the CUDA allocator keeps it, for _traced_call on a machine without one: one
    trace, cleared where recording stops or clear_history asks, each snapshot recording an entry of its own."""

    def __init__(self, fail_snapshot: Exception | None = None, takes_clear_history: bool = True):
        self.trace, self.calls, self.recording = [], [], False
        self.fail_snapshot, self.takes_clear_history = fail_snapshot, takes_clear_history

    def _record_memory_history(self, enabled, **kwargs):
        if "clear_history" in kwargs and not self.takes_clear_history:
            raise TypeError("_record_memory_history() got an unexpected keyword argument 'clear_history'")
        self.calls.append((enabled, kwargs.get("clear_history")))
        self.recording = enabled is not None
        if not self.recording or kwargs.get("clear_history"):
            self.trace = []

    def _snapshot(self, device=None):
        if self.fail_snapshot is not None:
            raise self.fail_snapshot
        traces = [list(self.trace)]
        self.trace.append({"action": "snapshot"})
        return {"device_traces": traces}

    def event(self, action: str, addr: int, mib: int) -> None:
        if self.recording:
            self.trace.append({"action": action, "addr": addr, "size": mib * 2**20})


@pytest.mark.parametrize("failure", [None, "snapshot", "old_torch"])
def test_the_traced_call_keeps_what_it_returned_and_stops_recording(monkeypatch, failure):
    # helper-129's RISK-1: the CUDA allocator's glue, faked: a call holding a 64 MiB temporary and returning 16 MiB
    # (freed when the caller lets it go) reads 64 MiB beyond what it returned; recording stops afterwards, also where
    # the snapshot fails (then no trace: the raw peak alone), and a torch without clear_history records anyway
    from masksub_kernels.bench import timing

    memory = _FakeMemory(KeyError("device_traces") if failure == "snapshot" else None, failure != "old_torch")
    monkeypatch.setattr(torch.cuda, "memory", memory)
    for name, value in (("memory_allocated", 0), ("max_memory_allocated", 80 * 2**20), ("current_device", 0)):
        monkeypatch.setattr(torch.cuda, name, lambda *args, value=value: value)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)

    class Returned:
        def __init__(self):
            memory.event("alloc", 2, 16)

        def __del__(self):
            memory.event("free_completed", 2, 16)

    def call():
        memory.event("alloc", 1, 64)
        returned = Returned()
        memory.event("free_completed", 1, 64)
        return returned

    entries, peak = timing._traced_call(call, torch.device("cuda", 0))
    assert peak == 80 and not memory.recording and memory.calls[-1] == (None, None)
    if failure == "snapshot":
        assert entries is None
    else:
        assert timing.transient_peak_bytes(entries) == 64 * 2**20
        assert memory.calls[0] == ("all", True if failure is None else None)


def test_the_commit_is_named_where_the_copy_has_no_git(tmp_path, monkeypatch):
    # helper-163: the device tool copies the working tree without .git, so the GPU results named no code; the
    # device command sets MASKSUB_COMMIT (benchmarks/gpu_bench.sh's header)
    from masksub_kernels.bench.timing import source_commit

    monkeypatch.delenv("MASKSUB_COMMIT", raising=False)
    assert source_commit(tmp_path) is None
    monkeypatch.setenv("MASKSUB_COMMIT", "abc123def456-dirty")
    assert source_commit(tmp_path) == "abc123def456-dirty"


# kills timing.py's source_commit without `--dirty` (a run of uncommitted code recorded under the clean commit)
def test_the_commit_of_a_checkout_with_uncommitted_changes_says_dirty(tmp_path, monkeypatch):
    # the .json / .md name the code they measured: edits not yet committed must not pass as that commit's figures
    from masksub_kernels.bench.timing import source_commit

    monkeypatch.delenv("MASKSUB_COMMIT", raising=False)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    clean = source_commit(tmp_path)
    assert clean is not None and not clean.endswith("-dirty")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == f"{clean}-dirty"


# kills report.model_card's trailing (?![A-Z0-9]) dropped (helper-327's B5)
def test_the_cards_name_ends_as_a_word():
    assert report.model_card("GPU: NVIDIA H2000") is None and report.model_card("GPU: NVIDIA H100X") is None
    assert report.model_card("GPU: NVIDIA H100 80GB HBM3") == "H100" and report.model_card("NVIDIA H200") == "H200"
