"""The benchmark harness's rules (masksub_kernels/bench: runner, timing, report, cli, the suites): repeats and caps,
units and statistics, which prediction a row shows, the report's baselines and labels, the CLI's defaults. From
helper-178's mutation audit (45 mutants, 23 gaps); each test names the mutant it kills. CPU only, each a second or
two."""

import contextlib
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import masksub_kernels as mk
from masksub_kernels.bench import grid_mask, linear_loss, loss, report, runner, token_select
from masksub_kernels.bench.runner import OpCase, run_case
from masksub_kernels.bench.timing import Timing

CPU = torch.device("cpu")


def _fixed_timing(monkeypatch, **fields):
    """runner.measure replaced by one that records its keyword arguments and returns a fixed Timing."""
    calls = []
    values = {"median_ms": 2.0, "p20_ms": 1.0, "p80_ms": 3.0, "repeats": 4, "peak_mem_mb": None, **fields}

    def fake_measure(fn, device, **kwargs):
        calls.append(kwargs)
        fn()
        return Timing(**values)

    monkeypatch.setattr(runner, "measure", fake_measure)
    return calls


def _case(**kwargs):
    return OpCase("demo", "s", "float32", "p", lambda: [torch.ones(4, requires_grad=True)], lambda x: x * 2,
                  {"forward": 8, "backward": 16, "full": 16}, modes=("forward",), **kwargs)  # fmt: skip


# --- bench/runner.py ---------------------------------------------------------------------------------------------


def test_runner_a_capped_case_times_at_most_its_cap_and_never_more_than_asked():
    # kills runner.py:122 `min(repeats, case.max_repeats)` -> `case.max_repeats` (a --tiny run of 2 repeats timed
    # the training steps and the CPU fused-linear rows 10 / 3 times) and `min(warmup, 3)` -> e.g. `warmup`
    calls = []
    case = _case(max_repeats=3)
    case.fn = lambda x: calls.append(1) or x * 2
    (record,) = run_case(case, CPU, repeats=2, warmup=1, copy_gbps=1.0)
    assert record["repeats"] == 2 and len(calls) == 1 + 2
    calls.clear()
    (record,) = run_case(case, CPU, repeats=30, warmup=5, copy_gbps=1.0)
    assert record["repeats"] == 3 and len(calls) == 3 + 3  # warm-up capped at 3 too


def test_runner_host_pass_only_for_uncapped_cases(monkeypatch):
    # kills runner.py:126 `host_pass=case.max_repeats is None` -> `is not None` (GPU-only effect, checked here by
    # the arguments the runner hands to measure)
    calls = _fixed_timing(monkeypatch)
    run_case(_case(), CPU, repeats=4, warmup=1, copy_gbps=1.0)
    run_case(_case(max_repeats=10), CPU, repeats=4, warmup=1, copy_gbps=1.0)
    assert [c["host_pass"] for c in calls] == [True, False]


def test_runner_host_time_equal_to_the_median_is_host_bound(monkeypatch):
    # kills runner.py:138 `timing.host_ms >= timing.median_ms` -> `>` (report.py and timing.py's docstring: >=)
    _fixed_timing(monkeypatch, median_ms=2.0, host_ms=2.0)
    (record,) = run_case(_case(), CPU, repeats=4, warmup=1, copy_gbps=1.0)
    assert record["host_ms"] == 2.0 and record["host_bound"] is True


def test_runner_rates_are_per_second_in_their_units(monkeypatch):
    # kills runner.py:140 (images/s without the ms -> s factor), runner.py:142 (GB/s in GiB: / 2**30),
    # runner.py:146 (design % of copy on the minimal GB/s) and runner.py:148 (TFLOP/s / 1e9): 2 ms medians
    _fixed_timing(monkeypatch, median_ms=2.0)
    case = _case(design_bytes={"forward": 12e9}, notes={"batch_size": 64}, flops={"forward": 8e12})
    case.bytes = {"forward": 4e9}
    (record,) = run_case(case, CPU, repeats=4, warmup=1, copy_gbps=1000.0)
    assert record["images_per_s"] == pytest.approx(32_000)
    assert record["gbps"] == pytest.approx(2000) and record["fraction_of_copy"] == pytest.approx(2.0)
    assert record["fraction_of_copy_design"] == pytest.approx(6.0)
    assert record["tflops"] == pytest.approx(4000)


# --- bench/timing.py ---------------------------------------------------------------------------------------------


class _Clock:
    """timing.time replaced: perf_counter reads a clock that only the timed call advances (by ``steps`` seconds)."""

    def __init__(self, steps):
        self.now, self.steps = 0.0, list(steps)

    def perf_counter(self):
        return self.now

    def call(self):
        self.now += self.steps.pop(0)


def test_timing_median_and_quantiles_of_the_repeats_in_ms(monkeypatch):
    # kills timing.py:319 (one warm-up call fewer: `range(warmup - 1)`), timing.py:355 (ms as * 1e6),
    # timing.py:360 (the mean for the median) and timing.py:211 (`round` -> `int`: p20 of 5 repeats)
    from masksub_kernels.bench import timing

    # 2 warm-up calls (0 s each, popped first), then 5 timed ones: 1, 2, 9, 3, 4 ms
    clock = _Clock([0.0, 0.0, 0.001, 0.002, 0.009, 0.003, 0.004])
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    result = timing.measure(clock.call, CPU, warmup=2, repeats=5)
    assert clock.steps == []  # exactly warmup + repeats calls
    assert result.median_ms == pytest.approx(3.0)  # the mean would be 3.8
    # sorted 1, 2, 3, 4, 9: p20 at round(0.8) = 1 -> 2 ms (int: 0 -> 1 ms); p80 at round(3.2) = 3 -> 4 ms
    assert (result.p20_ms, result.p80_ms) == (pytest.approx(2.0), pytest.approx(4.0))
    assert timing._quantile(list(range(10)), 0.2) == 2 and timing._quantile(list(range(10)), 0.8) == 7


def test_timing_copy_bandwidth_counts_read_and_write_in_decimal_gb(monkeypatch):
    # kills timing.py:373 (`2 * source.numel()` -> `source.numel()`: the read alone) and timing.py:374 (p20 and
    # p80 swapped: the 'low' figure above the median), and the CPU copy's size (timing.py:369, numel //= 8)
    from masksub_kernels.bench import timing

    sizes = []

    def fake_measure(fn, device, **kwargs):
        sizes.append(fn().numel())
        return Timing(median_ms=2.0, p20_ms=1.0, p80_ms=4.0, repeats=3, peak_mem_mb=None)

    monkeypatch.setattr(timing, "measure", fake_measure)
    median, low, high = timing.copy_bandwidth_gbps(CPU, megabytes=64, repeats=3)
    numel = 64 * 2**20 // 4 // 8
    assert sizes == [numel]
    gigabytes = 2 * numel * 4 / 1e9
    assert (median, low, high) == (pytest.approx(gigabytes / 2e-3), pytest.approx(gigabytes / 4e-3),
                                   pytest.approx(gigabytes / 1e-3))  # fmt: skip


def test_timing_cpu_peak_is_in_mib():
    # kills timing.py:230 (`peak / 2**20` -> `peak / 1e6`): one 64 MiB allocation, freed inside the call
    from masksub_kernels.bench.timing import cpu_peak_mb

    peak = cpu_peak_mb(lambda: torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1))
    if peak is None:
        pytest.skip("this torch's profiler does not expose its memory events")
    assert 64 <= peak < 65


# --- bench/report.py ---------------------------------------------------------------------------------------------


def _run(records, **extra):
    return {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "repeats": 30,
            "warmup": 5, "records": records, **extra}  # fmt: skip


_ROW = {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "full", "p20_ms": 1.0, "p80_ms": 1.0, "repeats": 30}


def test_report_a_copy_spread_just_over_1_5x_is_noted():
    # kills report.py:96 (`spread[1] > 1.5 * spread[0]` -> `> 2 *`): 1.6x is noted, 1.5x is not
    record = {**_ROW, "provider": "official", "median_ms": 1.0}
    assert "as uncertain" in report.markdown_table(_run([record], copy_gbps_range=[10.0, 16.0]))
    assert "as uncertain" not in report.markdown_table(_run([record], copy_gbps_range=[10.0, 15.0]))


def test_report_an_error_row_is_not_a_row_of_fewer_repeats():
    # kills report.py:122 (the `r.get("repeats") is not None` guard dropped: an error row, which has no repeats,
    # put "(loss: None)" into the header)
    records = [
        {**_ROW, "provider": "official", "median_ms": 1.0},
        {k: v for k, v in _ROW.items() if k != "repeats"} | {"provider": "p", "error": "RuntimeError: x"},
    ]
    table = report.markdown_table(_run(records))
    assert "| 30 repeats, 5 warm-up" in table and "(loss: None)" not in table


def test_report_speed_up_is_baseline_over_provider_and_kept_for_a_full_row():
    # kills report.py:184 (the ratio inverted) and report.py:185 (the `mode == "forward"` condition dropped: a
    # fused op's full row, which also carries forward_computes_gradients, lost its speed-up)
    records = [{**_ROW, "provider": "official", "median_ms": 4.0},
               {**_ROW, "provider": "masksub[triton]", "median_ms": 2.0, "forward_computes_gradients": True},
               {**_ROW, "mode": "forward", "provider": "official", "median_ms": 4.0},
               {**_ROW, "mode": "forward", "provider": "masksub[triton]", "median_ms": 2.0,
                "forward_computes_gradients": True}]  # fmt: skip
    rows = [line for line in report.markdown_table(_run(records)).splitlines() if "| masksub[triton] |" in line]
    full, forward = (next(r for r in rows if f"| {mode} |" in r) for mode in ("full", "forward"))
    vs_official = lambda row: row.split("|")[12].strip()  # the 'vs official' column
    assert vs_official(full) == "2.00x" and vs_official(forward) == "-"  # forward: not comparable


def test_report_a_failed_baseline_gives_no_ratio_and_no_crash():
    # kills report.py:167 and report.py:179 (the `"median_ms" in r` guard of the baseline dropped: a baseline that
    # failed, e.g. compile unsupported or a capped suite's error row, raised KeyError and no .md was written)
    error = {"error": "RuntimeError: unsupported"}
    op = [{**_ROW, "provider": "official", **error}, {**_ROW, "provider": "masksub[triton]", "median_ms": 2.0}]
    train = {**_ROW, "suite": "train", "shape": "m", "mode": "forward", "repeats": 10}
    steps = [{**train, "provider": "plain", **error}, {**train, "provider": "masksub (joint)", "median_ms": 9.0}]
    table = report.markdown_table(_run(op + steps))
    (row,) = [line for line in table.splitlines() if "| masksub[triton] |" in line]
    assert row.split("|")[12].strip() == "-" and "| masksub (joint) | 9.0 " in table


def test_report_predictions_are_the_benchmarked_variants_only(tmp_path):
    # kills report.py:47 (the `r["variant"] in MODEL_VARIANTS` filter dropped: the model file lists each loss case
    # in 4 variants, and the last, 'BCE, probabilities', overwrote the benchmarked 'CE, class ids' prediction)
    key = {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "full", "provider": "masksub[triton]"}
    model = {"environment": {"label": "M"}, "records": [{**key, "variant": v, "predicted_us": us} for v, us in (
        ("CE, class ids", 100.0), ("CE, probabilities", 150.0), ("BCE, probabilities", 200.0))]}  # fmt: skip
    (tmp_path / "model-sm90.json").write_text(json.dumps(model))
    run = _run([{**_ROW, **key, "median_ms": 1.0}])
    assert report.attach_predictions(run, tmp_path / "model-sm90.json") == 1
    assert run["records"][0]["predicted_ms"] == pytest.approx(0.1)


# --- bench/cli.py ------------------------------------------------------------------------------------------------


@pytest.fixture
def one_suite(monkeypatch):
    """A suite 'demo' of one case, and the copy bandwidth stubbed (its megabytes recorded)."""
    from masksub_kernels.bench import cli

    module = types.ModuleType("demo_suite_h178")
    module.cases = lambda *a, **k: [OpCase("demo", "s", "float32", "official", lambda: [torch.ones(2)], torch.neg,
                                           {"forward": 16}, modes=("forward",))]  # fmt: skip
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.SUITES, "demo", module.__name__)
    copies = []
    monkeypatch.setattr(cli, "copy_bandwidth_gbps", lambda device, megabytes: copies.append(megabytes) or (1, 1, 1))
    return copies


def test_cli_default_repeats_and_warmup_of_a_cpu_and_a_tiny_run(tmp_path, one_suite):
    # kills cli.py:225 (the CPU's default of 10 repeats), cli.py:226 (--tiny's 1 warm-up: 0 timed the compile of
    # compile(official)) and cli.py:261 (--tiny's 64 MB copy: 1024 MB would take the smoke test's time)
    from masksub_kernels.bench import cli

    common = ["--device", "cpu", "--suites", "demo", "--no-plot"]
    assert cli.main([*common, "--out", str(tmp_path / "a")]) == 0
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "a").glob("*.json")]
    assert (run["repeats"], run["warmup"]) == (10, 2) and run["records"][0]["repeats"] == 10
    assert cli.main([*common, "--tiny", "--out", str(tmp_path / "b")]) == 0
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "b").glob("*.json")]
    assert (run["repeats"], run["warmup"]) == (2, 1) and one_suite == [1024, 64]


# --- the suites' cases: bench/loss.py, grid_mask.py, token_select.py, linear_loss.py, train_step.py --------------

CUDA = torch.device("cuda")  # the cases a GPU run would time, built as closures only (nothing runs)


@pytest.fixture
def gpu_backends(monkeypatch):
    from masksub_kernels.bench import linear_loss, loss, token_select

    monkeypatch.setattr(token_select.mk, "available_backends", lambda: ["torch", "triton", "cuda"])
    monkeypatch.setattr(linear_loss, "liger_provider", lambda: None)
    monkeypatch.setattr(loss, "liger_provider", lambda: None)


def test_loss_design_bytes_and_the_compiled_baseline_per_shape(gpu_backends):
    # kills loss.py:88 (the design's 6 passes in full -> 4: '% of copy (design)' equal to the minimal one) and
    # loss.py:117 (compile(official) dropped at ImageNet, the headline shape, unless --full)
    from masksub_kernels.bench import loss

    cases = loss.cases(CUDA)
    (kernel,) = [c for c in cases if c.shape == "ImageNet M=1024 C=1000" and c.dtype == "float32"
                 and c.provider == "masksub[triton]"]  # fmt: skip
    assert kernel.design_bytes["full"] == 6 * 1024 * 1000 * 4 == 1.5 * kernel.bytes["full"]
    compiled = {(c.shape, c.dtype) for c in cases if c.provider == "compile(official)"}
    assert compiled == {("ImageNet M=1024 C=1000", "float32"), ("ImageNet M=1024 C=1000", "bfloat16")}


def test_grid_mask_bytes_of_the_headline_cases(gpu_backends):
    # kills grid_mask.py:74 (the images' forward counted once, not read + write) and grid_mask.py:100 (the
    # tokens' full pass: 4 tensors, not 3)
    from masksub_kernels.bench import grid_mask

    cases = grid_mask.cases(CUDA)
    (images,) = [c for c in cases if c.provider == "official" and c.dtype == "float32"]
    assert images.bytes == {"forward": 2 * 256 * 3 * 224 * 224 * 4}
    (tokens,) = [c for c in cases if c.provider == "official" and c.shape.startswith("Swin")]
    token_bytes = 256 * 56 * 56 * 96 * 2
    assert tokens.bytes == {"forward": 2 * token_bytes, "backward": 2 * token_bytes, "full": 4 * token_bytes}


def test_grid_mask_official_tokens_put_the_mask_token_on_half_the_cells():
    # kills grid_mask.py:50 (the mask token put on the kept cells, the masked ones zeroed): a baseline that does
    # other work than the official Swin code
    from masksub_kernels.bench.grid_mask import official_tokens

    out = official_tokens(torch.full((2, 16, 16, 4), 2.0), torch.full((4,), 5.0), cell=8)
    assert sorted(out.unique().tolist()) == [2.0, 5.0] and (out == 5.0).float().mean().item() == 0.5


def test_token_select_baselines_keep_the_class_token_and_half_the_patches():
    # kills token_select.py:31 (the class token dropped from the official style's output: a baseline that writes
    # fewer rows than its bytes count)
    from masksub_kernels.bench.token_select import official_style, timm_style

    x = torch.randn(2, 17, 8)
    for style in (official_style, timm_style):
        out = style(x)
        assert out.shape == (2, 9, 8) and torch.equal(out[:, 0], x[:, 0])


def test_linear_loss_bytes_flops_modes_and_caps_of_its_cases():
    # kills linear_loss.py:265 (full bytes: 2 passes over the inputs), linear_loss.py:292 / 294 (Liger's one
    # branch: no hs bytes, half the flops), linear_loss.py:296 (the recompute op's forward marked as computing the
    # gradients: 'forward' and 'backward' modes lost) and linear_loss.py:290 (the CPU's cap of 3 repeats)
    from masksub_kernels.bench import linear_loss

    shape = linear_loss._Shape(CPU, "BERT", 64, 8, 30, torch.bfloat16)
    assert shape.nbytes == {"forward": shape.inputs_bytes, "backward": 2 * shape.inputs_bytes,
                            "full": 2 * shape.inputs_bytes}  # fmt: skip
    liger = shape.case("liger(main CE only)", lambda *a: None, None, shape.notes)
    one_branch = shape.inputs_bytes - 64 * 8 * 2
    assert liger.bytes == {"forward": one_branch, "backward": 2 * one_branch, "full": 2 * one_branch}
    assert liger.flops == {"forward": shape.flops["full"] // 2, "full": shape.flops["full"] // 2}
    recompute = shape.case("masksub[triton] recompute", linear_loss.fused_recompute, "triton", shape.notes)
    assert recompute.modes == ("forward", "backward", "full") and "forward_computes_gradients" not in recompute.notes
    assert recompute.flops == shape.flops and recompute.max_repeats == 3
    assert {c.max_repeats for c in linear_loss.cases(CPU, tiny=True)} == {3}


def test_train_step_ideal_ratios_and_repeat_cap():
    # kills train_step.py:120 (the ideal ratio of Swin / CNNs: 2, the full-length sub-branch) and train_step.py:140
    # (the cap of 10 repeats of a whole step, which the report's header names)
    pytest.importorskip("timm")
    from masksub_kernels.bench import train_step

    cases = train_step.cases(CPU)  # the models are built lazily, by each model's first call: nothing runs here
    ideal = {c.notes["model"]: c.notes["ideal_ratio"] for c in cases}
    assert ideal == {"vit_tiny_patch16_224": 1.5, "swin_tiny_patch4_window7_224": 2.0, "resnet18": 2.0}
    assert {c.max_repeats for c in cases} == {10}


# The suites' cases (helper-182's mutation audit: 39 mutants, 18 gaps): the baselines compute what the op computes,
# the modelled memory the docs quote, which rows a run includes


# --- bench/grid_mask.py ------------------------------------------------------------------------------------------


def test_grid_mask_official_images_zero_whole_cells_half_of_them():
    # kills grid_mask.py:41 (unpatchify `permute(0, 5, 1, 3, 2, 4)` -> `(0, 5, 1, 4, 2, 3)`: each kept 32x32 cell
    # transposed) and grid_mask.py:30 (`mask[:, :num_keep] = 0` -> `:num_keep + 1`: 7 of 16 cells removed, not 8)
    x = torch.randn(2, 3, 128, 128) + 10.0  # no zero pixel
    out = grid_mask.official_images(x, cell=32)
    cells = lambda t: t.reshape(2, 3, 4, 32, 4, 32).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, -1)
    got, want = cells(out), cells(x)
    removed = (got == 0).all(-1)
    assert torch.equal(got[~removed], want[~removed])  # a kept cell is the input's, pixel for pixel
    assert removed.sum(1).tolist() == [8, 8]  # MASK_RATIO of the cells, per image


# --- bench/token_select.py ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", [token_select.official_style, token_select.timm_style])
def test_token_select_baselines_keep_distinct_patches_of_their_own_sample(style):
    # kills token_select.py:29 (`argsort(noise, dim=1)` -> `dim=0`: the 'kept' indices are batch positions, so
    # every sample keeps patches 0 and 1 only, repeated): a baseline that gathers other rows than the official code
    x = torch.arange(2 * 17, dtype=torch.float32).reshape(2, 17, 1).expand(2, 17, 4).contiguous()
    out = style(x)
    assert out.shape == (2, 9, 4)
    for b in range(2):
        kept = out[b, 1:, 0].tolist()
        assert len(set(kept)) == 8 and set(kept) <= set(x[b, 1:, 0].tolist())


def test_token_select_full_times_every_half_and_single_dtype():
    # kills token_select.py:55 (--full's dtypes (bf16, fp16, fp32) -> (bf16, fp32): fp16 silently not timed)
    dtypes = {c.dtype for c in token_select.cases(CPU, full=True)}
    assert dtypes == {"bfloat16", "float16", "float32"}
    assert {c.dtype for c in token_select.cases(CPU)} == {"float32"}


# --- bench/loss.py -----------------------------------------------------------------------------------------------


def test_loss_baselines_compute_the_masksub_loss():
    # kills loss.py:41 (official_style's `0.5 * loss_main` -> `loss_main`) and loss.py:46 (eager_int_labels'
    # teacher softmax over dim 0, the rows): the baselines the speed-ups are taken against must compute the op's
    # loss, ½·CE(main, y) + ½·CE(sub, softmax(main))
    generator = torch.Generator().manual_seed(0)
    main, sub = torch.randn(6, 10, generator=generator), torch.randn(6, 10, generator=generator)
    labels = torch.randint(0, 10, (6,), generator=generator)
    with mk.use_backend("torch"):
        expected = mk.masksub_loss(main, sub, labels).loss
    torch.testing.assert_close(loss.official_style(main, sub, F.one_hot(labels, 10).float()), expected)
    torch.testing.assert_close(loss.eager_int_labels(main, sub, labels), expected)


def test_loss_design_bytes_of_every_mode():
    # kills loss.py:88 (design forward `2 * logits_bytes` -> `3 *`): the design moves the minimal bytes in the
    # forward and backward (read both logits; read them again and write both gradients) and 6 passes in full
    (kernel,) = [c for c in loss.cases(CPU) if c.provider == "masksub[torch]"]
    logits = 256 * 1000 * 4
    assert kernel.bytes == {"forward": 2 * logits, "backward": 4 * logits, "full": 4 * logits}
    assert kernel.design_bytes == {"forward": 2 * logits, "backward": 4 * logits, "full": 6 * logits}


# --- bench/linear_loss.py ----------------------------------------------------------------------------------------


def _linear_inputs(rows=12, depth=8, classes=20):
    generator = torch.Generator().manual_seed(0)
    h, hs = torch.randn(rows, depth, generator=generator), torch.randn(rows, depth, generator=generator)
    weight, bias = torch.randn(classes, depth, generator=generator) / 3, torch.randn(classes, generator=generator)
    return h, hs, weight, bias, torch.randint(0, classes, (rows,), generator=generator)


def test_linear_loss_providers_compute_the_same_loss():
    # kills linear_loss.py:129 (fused_recompute's `.loss.mean()` -> `.loss.sum()`): every provider of the suite is
    # the same ½·CE + ½·soft-CE on a linear head (the recompute row's per-row losses, then their mean)
    inputs = _linear_inputs()
    expected = linear_loss.official_composite(*inputs)
    with mk.use_backend("torch"):
        for provider in (linear_loss.fused, linear_loss.fused_recompute, linear_loss.linear_then_masksub_loss):
            torch.testing.assert_close(provider(*inputs), expected, rtol=1e-5, atol=1e-5)


def test_linear_loss_modelled_memory_of_the_docs_headline_and_the_cpu_shape():
    # kills linear_loss.py:186 (dH's fp32 temporary `2 * chunk * depth * 4` -> `chunk * depth * 4`),
    # linear_loss.py:181 (`element < 4` -> `<= 4`: fp32 weights given an fp32 accumulator they do not have) and
    # linear_loss.py:270 (returned_grads_mb with one [M, D] gradient, not dH and dHs)
    bert = linear_loss.modelled_extra_mb(16384, 768, 30522, 2)
    # docs/fused_linear.md: 184 MiB modelled, 4.8% of the composite's 3815 MiB
    assert bert["fused"] == pytest.approx(184.363, abs=1e-3) and bert["composite"] == pytest.approx(3815.25)
    # fp32, M=1024 D=128 C=8192 (the CPU shape): one 1024-row chunk (the budget gives 1536), C aligned already:
    # 2 R C fp32 logits + the [2R, D] cat of the rows + 9 fp32 stats per row + dH's [2R, D] fp32 + the int64 ids
    chunk = 1024
    by_hand = 2 * chunk * 8192 * 4 + 2 * chunk * 128 * 4 + 1024 * 9 * 4 + 2 * chunk * 128 * 4 + 1024 * 8
    assert linear_loss.modelled_extra_mb(1024, 128, 8192, 4)["fused"] == pytest.approx(by_hand / 2**20)
    shape = linear_loss._Shape(CPU, "BERT", 16384, 768, 30522, torch.bfloat16)
    dh_dhs = 2 * 16384 * 768 * 2 / 2**20
    assert dh_dhs == 48  # the docs' "48 MiB are the returned dH and dHs"
    assert shape.notes["returned_grads_mb"] == pytest.approx(dh_dhs + (30522 * 768 + 30522) * 2 / 2**20)


def test_linear_loss_compiled_composite_only_on_a_gpu_or_with_full():
    # kills linear_loss.py:208 (`if on_gpu or full` -> `if on_gpu`: --full on a CPU silently without
    # compile(official))
    assert "compile(official)" in {c.provider for c in linear_loss.cases(CPU, full=True)}
    assert "compile(official)" not in {c.provider for c in linear_loss.cases(CPU)}


# --- bench/train_step.py -----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_vit_masksub():
    timm = pytest.importorskip("timm")
    from masksub_kernels.training import MaskSub

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    return MaskSub(model, mask_ratio=0.5)


def test_train_step_official_step_halves_each_branchs_loss(tiny_vit_masksub, monkeypatch):
    # kills train_step.py:82 (the official-style step's `(loss_main / 2).backward()` -> `loss_main.backward()`: a
    # baseline whose main branch costs the same but whose gradients are not MaskSub's ½·CE). The sub-branch is
    # replaced by a leaf unconnected to the model, so the model's gradients are the main term's alone: half the
    # plain step's
    from masksub_kernels.bench import train_step

    ms = tiny_vit_masksub
    params = [p for p in ms.model.parameters() if p.requires_grad]
    seen = []

    class Recorder:  # the optimizer: records the gradients, changes nothing
        def zero_grad(self, set_to_none=True):
            for p in params:
                p.grad = None

        def step(self):
            seen.append([p.grad.clone() for p in params])

    monkeypatch.setattr(train_step, "official_sub_logits", lambda ms, images: torch.zeros(2, 10, requires_grad=True))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    steps = train_step._step_functions(ms, Recorder(), images, F.one_hot(labels, 10).float(), labels,
                                       contextlib.nullcontext)  # fmt: skip
    steps["plain"]()
    steps["masksub official-style (sequential)"]()
    for plain, official in zip(*seen, strict=True):
        torch.testing.assert_close(official, plain / 2)


def test_train_step_cpu_models_have_ten_classes(monkeypatch):
    # kills train_step.py:125 (`num_classes=1000 if on_gpu else 10` -> 1000: a CPU run's heads 100x wider)
    timm = pytest.importorskip("timm")
    from masksub_kernels.bench import train_step

    created, create = [], timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: created.append(k["num_classes"]) or create(*a, **k))
    train_step.cases(CPU, tiny=True)[0].make_inputs()  # builds the model (lazily, at its first case)
    assert created == [10]


def test_linear_loss_times_no_cuda_backend_row(monkeypatch):
    # kills linear_loss.py:201 (the `b != "cuda"` filter dropped: 'masksub[cuda]' and 'masksub[cuda] recompute' rows,
    # which the 'cuda' backend refuses (ops/linear_masksub_loss.py), spend a GPU run's time on error rows)
    monkeypatch.setattr(token_select.mk, "available_backends", lambda: ["torch", "triton", "cuda"])
    monkeypatch.setattr(linear_loss, "liger_provider", lambda: None)
    providers = {c.provider for c in linear_loss.cases(torch.device("cuda"))}
    assert "masksub[triton]" in providers and not any("cuda" in p for p in providers)


# kills report.py:172 (the training table's ratio inverted: `plain["median_ms"] / r["median_ms"]`)
def test_report_training_step_ratio_is_time_over_plain_time():
    # the column is 'time / plain' beside the ideal ratio (>= 1: MaskSub runs a second branch); inverted, a step
    # 1.5x as slow as plain training read 0.67, i.e. faster than plain training
    train = {**_ROW, "suite": "train", "shape": "vit", "repeats": 10}
    records = [{**train, "provider": "plain", "median_ms": 10.0},
               {**train, "provider": "masksub (joint)", "median_ms": 15.0, "ideal_ratio": 1.5}]  # fmt: skip
    table = report.markdown_table(_run(records))
    rows = {line.split("|")[3].strip(): line.split("|") for line in table.splitlines() if line.startswith("| vit |")}
    assert rows["masksub (joint)"][7].strip() == "1.50" and rows["plain"][7].strip() == "1.00"
    assert rows["masksub (joint)"][8].strip() == "1.5"  # the ideal beside it


# kills report.py:194 (the minimal '% of copy' printed as the fraction: `_fmt(fraction, 1)`, a unit off by 100)
def test_report_percent_of_copy_columns_are_percentages():
    # the records hold fractions of the copy bandwidth (0.5 = half of it); the table says '% of copy'
    record = {**_ROW, "provider": "masksub[triton]", "median_ms": 1.0, "gbps": 10.0,
              "fraction_of_copy": 0.5, "fraction_of_copy_design": 0.75}  # fmt: skip
    (row,) = [line for line in report.markdown_table(_run([record])).splitlines() if "| masksub[triton] |" in line]
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[9:12] == [
        "10.0",
        "50.0",
        "75.0",
    ]  # GB/s, % of copy (minimal), % of copy (design)


# kills report.py:193 (the 'host ms' and 'predicted ms' cells swapped: `| {_fmt(predicted)} | {host_cell(r)} |`)
def test_report_host_and_predicted_times_sit_under_their_own_headers():
    # a model's prediction read as a measured host time (or the reverse) misleads the calibration and the
    # host-bound reading alike: each cell under its header, by name rather than by position
    record = {**_ROW, "provider": "masksub[triton]", "median_ms": 1.0, "host_ms": 2.0, "host_bound": True,
              "predicted_ms": 0.5}  # fmt: skip
    lines = report.markdown_table(_run([record])).splitlines()
    header = next(line for line in lines if line.startswith("| suite |"))
    (row,) = [line for line in lines if "| masksub[triton] |" in line]
    cells = dict(
        zip(
            (c.strip() for c in header.split("|")),
            (c.strip() for c in row.split("|")),
            strict=True,
        )
    )
    assert cells["host ms"] == "2.000 host-bound" and cells["predicted ms"] == "0.500"
    assert cells["median ms (p20-p80)"] == "1.000 (1.000-1.000)"


# helper-226 (the benchmark harness's mutation audit: 41 mutants, 2 gaps and a bug)


# kills runner.py:138 `timing.host_ms >= timing.median_ms` -> `<=` (the comparison inverted: the existing test's
# equal times are host-bound either way)
def test_runner_a_host_time_below_the_median_is_not_host_bound(monkeypatch):
    # host-bound means the host alone takes as long as the timed call (timing.py's docstring): a call whose host
    # work is shorter than its GPU time is kernel-bound, and the report must not mark it (report.host_cell)
    _fixed_timing(monkeypatch, median_ms=2.0, host_ms=0.5)
    (fast_host,) = run_case(_case(), CPU, repeats=4, warmup=1, copy_gbps=1.0)
    _fixed_timing(monkeypatch, median_ms=2.0, host_ms=3.0)
    (slow_host,) = run_case(_case(), CPU, repeats=4, warmup=1, copy_gbps=1.0)
    assert fast_host["host_bound"] is False and slow_host["host_bound"] is True


# a real bug (helper-226): attach_predictions only sets predicted_ms, never clears it, so --report-only --repredict
# (and a run re-labelled after each suite) kept an older model's prediction on rows the new model has none for,
# under the new model's label; it drops predicted_ms where the model has none now.
def test_report_new_predictions_leave_no_older_models_figure_behind(tmp_path):
    # a prediction is shown as the labelled model's: a row that model does not predict shows '-', not an older one
    key = {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "full", "provider": "masksub[triton]"}
    model = {"environment": {"label": "TODAY"}, "records": [{**key, "variant": "", "predicted_us": 100.0}]}
    (tmp_path / "model-sm90.json").write_text(json.dumps(model))
    predicted = {**_ROW, **key, "median_ms": 1.0, "predicted_ms": 9.0}
    dropped = {**predicted, "shape": "gone from the model", "predicted_ms": 7.0}
    run = _run([predicted, dropped], model={"file": "model-sm90.json", "label": "OLDER"})
    assert report.attach_predictions(run, tmp_path / "model-sm90.json") == 1
    assert run["model"]["label"] == "TODAY" and run["records"][0]["predicted_ms"] == pytest.approx(0.1)
    assert "predicted_ms" not in run["records"][1]
    (row,) = [line for line in report.markdown_table(run).splitlines() if "| gone from the model |" in line]
    assert row.split("|")[8].strip() == "-"
