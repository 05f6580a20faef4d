"""The fused-linear loss's host-time prediction (tools/perf_model/linear_loss_host.py): its arithmetic on a made-up
run, and the committed run it reads."""

import json

import pytest

from tools.perf_model import linear_loss_host as host

SHAPE = host.SHAPE_PREFIX


def _write_run(folder, points: dict[int | None, float]) -> None:
    """A GPU run's JSON with the op's full-mode host times: {rows per chunk (None: the default's 384): host ms}."""
    records = [
        {"suite": "linear_loss", "shape": SHAPE, "mode": "full", "host_ms": ms,
         "provider": "masksub[triton]" if rows is None else f"masksub[triton]:R={rows}", "chunk_rows": rows}
        for rows, ms in points.items()
    ]  # fmt: skip
    # rows the fit leaves out: another mode, the programs-per-SM row (the default's chunks), another provider
    other = {"suite": "linear_loss", "shape": SHAPE, "host_ms": 99.0}
    records += [
        {**other, "mode": "forward", "provider": "masksub[triton]"},
        {**other, "mode": "full", "provider": "masksub[triton]:R=384,P=5"},
        {**other, "mode": "full", "provider": "official"},
    ]
    (folder / host.RUN["file"]).write_text(json.dumps({"records": records}))


def _write_harness(folder, run_us: list[float], today_us: float) -> None:
    for name, runs in (("run", run_us), ("today", None)):
        meta = {"meta": {} if runs is None else {"us_per_chunk_runs": runs}, "records": [{"us_per_chunk": today_us}]}
        (folder / host.HARNESS_FILES[name]).write_text(json.dumps(meta))


def test_a_line_is_fitted_exactly():
    fixed, per_chunk = host.fit([(22, 1 + 0.4 * 22), (43, 1 + 0.4 * 43), (86, 1 + 0.4 * 86)])
    assert fixed == pytest.approx(1.0) and per_chunk == pytest.approx(400.0)


def test_the_runs_launch_time_is_carried_to_todays_launches(tmp_path):
    # the run: 1 ms + 400 us per chunk at 7 torch + 2 Triton launches, 100 us of it Python; today 6 + 1 launches and
    # 100 us of Python: the 300 us of launches scale by 1/2 (all Triton), 6/7 (all torch) or 7/9 (alike)
    _write_run(tmp_path, {rows: 1 + 0.4 * -(-16384 // (rows or 384)) for rows in (None, 192, 768)})
    _write_harness(tmp_path, [90.0, 110.0], 100.0)
    result = host.predict_host({"torch": 6, "triton": 1}, [384, 768], tmp_path)
    assert result["label"].startswith("PREDICTIONS")
    assert [p["chunks"] for p in result["run_points"]] == [22, 43, 86]
    assert result["run_fixed_ms"] == pytest.approx(1.0) and result["run_per_chunk_us"] == pytest.approx(400.0)
    assert result["python_us"] == {"run": 100.0, "today": 100.0}
    low, high = 100 + 300 / 2, 100 + 300 * 6 / 7
    assert result["today_per_chunk_us"] == [pytest.approx(low, abs=0.1), pytest.approx(high, abs=0.1)]
    row = result["rows"][0]
    assert (row["chunk_rows"], row["chunks"]) == (384, 43)
    assert row["host_ms"] == [
        pytest.approx(1 + 43 * low / 1e3, abs=0.051),
        pytest.approx(1 + 43 * high / 1e3, abs=0.051),
    ]
    lines = "\n".join(host.markdown(result, {384: 10.1}))
    assert "| 384 | 43 | 6 + 1 | 11.7-16.4 | 10.1 |" in lines and "| 768 | 22 | 6 + 1 | 6.5-8.9 | - |" in lines
    # a chunk size whose chunks split the loss forward: its own launches (helper-152: the default's were applied)
    split = {"torch": 9, "triton": 2}
    result = host.predict_host({"torch": 6, "triton": 1}, [192, 384], tmp_path, launches_by_rows={192: split})
    low, high = 100 + 300 * 1, 100 + 300 * 9 / 7  # 2/2 (all Triton), 9/7 (all torch); 11/9 (alike) between
    assert result["rows"][0]["launches"] == split and result["rows"][1]["launches"] == {"torch": 6, "triton": 1}
    assert result["rows"][0]["host_ms"] == [
        pytest.approx(1 + 86 * low / 1e3, abs=0.051),
        pytest.approx(1 + 86 * high / 1e3, abs=0.051),
    ]
    assert "| 192 | 86 | 9 + 2 |" in "\n".join(host.markdown(result, {}))


def test_one_chunk_count_predicts_nothing(tmp_path):
    _write_run(tmp_path, {None: 17.0})
    _write_harness(tmp_path, [100.0], 100.0)
    assert host.predict_host({"torch": 6, "triton": 1}, [384], tmp_path) is None
    assert host.markdown(None, {}) == []


def test_the_committed_run_predicts_a_range():
    result = host.predict_host({"torch": 6, "triton": 1}, [192, 384, 768])
    low, high = result["today_per_chunk_us"]
    assert 0 < low < high < result["run_per_chunk_us"]  # fewer launches than the run's code, the same Python
    hosts = [r["host_ms"] for r in result["rows"]]
    assert all(a[0] <= a[1] for a in hosts) and hosts[0][0] > hosts[1][0] > hosts[2][0]  # fewer chunks, less host
