"""masksub_kernels/bench/report.py: helper-349's mutation audit of the result files' table, ratios, copy figures,
missing values and the model's labels. Each test names the mutant (the code change in report.py) it kills; all of
them survived the bench tests before. CPU only, no run: hand-made records."""

import json

import pytest

from masksub_kernels.bench import report

ROW = {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "full", "p20_ms": 1.0, "p80_ms": 1.0}


def _run(records, **extra):
    return {"environment": {"device": "GPU: X", "torch": "-"}, "date": "-", "copy_gbps": 1.0, "repeats": 30,
            "warmup": 5, "records": records, **extra}  # fmt: skip


def _cells(table: str, provider: str, heading: str = "| suite |") -> dict[str, str]:
    """The row of ``provider`` in the table whose header starts with ``heading``, by column name."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        body.append(line)
    (row,) = [line for line in body if f"| {provider} |" in line]
    names = [c.strip() for c in lines[start].split("|")]
    return dict(zip(names, (c.strip() for c in row.split("|")), strict=True))


# kills `"-" if value is None` -> `"-" if not value` in _fmt (and the same in _percent), and the peak MiB at 0
# decimals (`_fmt(r.get('peak_mem_mb'), 1)` -> 0): a measured 0 (no memory above the inputs) showed as '-', not
# measured
def test_a_measured_zero_is_shown_as_zero_not_as_missing():
    record = {**ROW, "provider": "official", "median_ms": 2.0, "gbps": 0.0, "peak_mem_mb": 0.0, "fraction_of_copy": 0.0}
    cells = _cells(report.markdown_table(_run([record])), "official")
    assert (cells["GB/s"], cells["peak MiB"], cells["% of copy (minimal)"]) == ("0.0", "0.0", "0.0")
    assert (cells["predicted ms"], cells["% of copy (design)"]) == ("-", "-")  # not measured


# kills read_run's `not isinstance(record[key], str)` -> `isinstance(record[key], (list,
# dict))` (a number where a name belongs was let through; the plot's label wrap then raised a TypeError)
def test_read_run_refuses_a_number_where_a_record_names_something(tmp_path):
    path = tmp_path / "run.json"
    record = {**ROW, "provider": "official", "median_ms": 1.0, "shape": 1024}
    path.write_text(json.dumps(_run([record])))
    with pytest.raises(ValueError, match="record 0's 'shape' is 1024, not a name"):
        report.read_run(path)


# kills attach_predictions' `r.get("provider", "masksub[triton]")` -> another default: a model file's record without
# a provider (the files before the CUDA backend had its own predictions) is the Triton kernels' prediction
def test_a_model_record_without_a_provider_predicts_the_triton_row(tmp_path):
    key = {"suite": "loss", "shape": "s", "dtype": "bf16", "mode": "full"}
    model = {"environment": {"label": "M"}, "records": [{**key, "variant": "", "predicted_us": 250.0}]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    run = _run([{**ROW, "provider": p, "median_ms": 1.0} for p in ("masksub[triton]", "masksub[cuda]")])
    assert report.attach_predictions(run, tmp_path / "model.json") == 1
    assert run["records"][0]["predicted_ms"] == 0.25 and "predicted_ms" not in run["records"][1]


# kills attach_predictions' run["model"] without "card" (key list ("label", "date", "triton")) and markdown_table's
# model line without "triton" (keys ("card", "date")): the predictions' line names the model's card, date and triton
def test_the_predictions_line_names_the_models_file_card_date_and_triton(tmp_path):
    model = {"environment": {"label": "PREDICTIONS (model)", "card": "H200", "date": "2026-12-04", "triton": "3.6.0"},
             "records": []}  # fmt: skip
    (tmp_path / "model-sm90.json").write_text(json.dumps(model))
    run = _run([{**ROW, "provider": "official", "median_ms": 1.0}])
    assert report.attach_predictions(run, tmp_path / "model-sm90.json") == 0
    assert run["model"] == {"file": "model-sm90.json", "label": "PREDICTIONS (model)", "card": "H200",
                            "date": "2026-12-04", "triton": "3.6.0"}  # fmt: skip
    line = "predicted ms: PREDICTIONS (model) (model-sm90.json: card H200, date 2026-12-04, triton 3.6.0)."
    assert line in report.markdown_table(run).splitlines()


# kills copy_range's bounds swapped (`low_high[1]`-`low_high[0]`): the header's spread reads low to high
def test_the_copy_spread_reads_from_its_low_to_its_high():
    assert report.copy_range([12.4, 70.6]) == "12-71 GB/s"
    table = report.markdown_table(_run([{**ROW, "provider": "official", "median_ms": 1.0}], copy_gbps_range=[10, 16]))
    assert "copy bandwidth 1 GB/s (read + write; p20-p80 10-16 GB/s)" in table
    assert "The copy bandwidth varied 10-16 GB/s between its copies" in table


# kills the training table's images/s at 1 decimal (`_fmt(r.get('images_per_s'), 0)` -> 1): whole images a second
def test_the_training_table_shows_whole_images_per_second_and_the_ideal_at_one_decimal():
    step = {"suite": "train", "shape": "ResNet-50", "dtype": "bf16", "mode": "step", "p20_ms": 60.0, "p80_ms": 66.0}
    records = [{**step, "provider": "plain", "median_ms": 31.6, "images_per_s": 2025.3, "ideal_ratio": 1.0},
               {**step, "provider": "masksub", "median_ms": 63.2, "images_per_s": 1012.7, "ideal_ratio": 1.5,
                "peak_mem_mb": 4072.4}]  # fmt: skip
    cells = _cells(report.markdown_table(_run(records)), "masksub", "| model |")
    assert (cells["images/s"], cells["time / plain"], cells["ideal"], cells["median ms (p20-p80)"]) == (
        "1013", "2.00", "1.5", "63.2 (60.0-66.0)")  # fmt: skip
    assert cells["peak MiB above the step's start"] == "4072"


# kills the context-lost note's count of rows not run taken from the wrong field (`mark['not_run']` -> `mark['after']`)
def test_the_context_lost_note_counts_the_rows_not_run():
    lost = {"after": "loss s bf16 official full", "error": "RuntimeError: an illegal memory access", "not_run": 7}
    record = {**ROW, "provider": "official", "median_ms": 1.0}
    table = report.markdown_table(_run([record], context_lost={"loss": lost}))
    assert "- **loss: CUDA context lost at loss s bf16 official full** (RuntimeError: an illegal memory" in table
    assert "every CUDA call of the process fails; its 7 later rows were not run" in table


# kills the host-time note shown only where every row has a host time (`any(...)` -> `all(...)`): a GPU run's
# kernel rows have one, its training steps none (whole steps get no host-time pass), and the note explains the column
def test_the_host_time_note_is_there_where_any_row_has_a_host_time():
    step = {"suite": "train", "shape": "vit", "dtype": "bf16", "mode": "step", "p20_ms": 9.0, "p80_ms": 11.0}
    records = [{**ROW, "provider": "official", "median_ms": 1.0, "host_ms": 0.5, "host_bound": False},
               {**step, "provider": "plain", "median_ms": 10.0}]  # fmt: skip
    table = report.markdown_table(_run(records))
    assert "host ms (GPU runs): the median CPU time for the call to return" in table
    assert _cells(table, "official")["host ms"] == "0.500" and _cells(table, "plain", "| model |")["host ms"] == "-"


def test_report_only_refuses_a_time_of_zero_in_words(tmp_path, capsys):
    # helper-349's edge case: a hand-edited run with median_ms 0 divided by zero in the table (a traceback from
    # --report-only); refused as the other malformed runs are, nothing written
    from masksub_kernels.bench import cli

    rows = [{**ROW, "provider": provider, "median_ms": 0.0} for provider in ("official", "masksub[triton]")]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_run(rows)))
    assert cli.main(["--report-only", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not a benchmark run's JSON: its records do not make the table (a time of 0: " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_the_header_names_the_commit_of_a_run_without_a_version():
    # helper-349's edge case: a run with a commit but no masksub_kernels version lost its commit from the header
    rows = [{**ROW, "provider": "official", "median_ms": 1.0}]
    for env, cell in (
        ({"commit": "abc1234"}, "masksub_kernels (abc1234) | "),
        ({"masksub_kernels": "0.4.0", "commit": "abc1234"}, "masksub_kernels 0.4.0 (abc1234) | "),
        ({"masksub_kernels": "0.4.0"}, "masksub_kernels 0.4.0 | "),
    ):
        run = _run(rows)
        run["environment"].update(env)
        assert cell in report.markdown_table(run)
    assert "masksub_kernels" not in report.markdown_table(_run(rows))
