"""The replication summary (training/replication.py) on synthetic logs of both commands."""

import json

import pytest

from masksub_kernels.training import replication


def _write_runs(root, kind: str, seeds: int = 3) -> None:
    for arm, offset in (("baseline", 0.0), ("masksub", 1.0)):
        for seed in range(seeds):
            if kind == "image":
                rows = [{"epoch": e, "loss_main": 2.0 / e, "top1": 80 + e + offset + seed, "val_loss": 1.0 / e,
                         "images_per_s": 100.0, "wall_time_s": 10.0 * e} for e in (1, 2)]  # fmt: skip
            else:
                rows = [{"round": r, "step": 50 * r, "loss_main": 5.0 / r, "loss_sub": None,
                         "val_acc": 20 + r + offset, "val_loss": 4.0 / r + seed, "tokens_per_s": 1000.0,
                         "wall_time_s": 5.0 * r} for r in (1, 2)]  # fmt: skip
            run = root / f"{arm}-seed{seed}"
            run.mkdir(parents=True)
            (run / "log.json").write_text(json.dumps({"meta": {"command": f"cmd {arm}"}, "epochs": rows}))
            (run / "log.csv").write_text("x\n")


@pytest.mark.parametrize("kind", ["image", "text"])
def test_summary_table_and_plot(tmp_path, kind):
    _write_runs(tmp_path / "runs", kind)
    assert replication.main([str(tmp_path / "runs"), str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    acc = "top1" if kind == "image" else "val_acc"
    assert summary["masksub"][f"final_{acc}_mean"] - summary["baseline"][f"final_{acc}_mean"] == pytest.approx(1.0)
    assert ("top-1" in table) == (kind == "image") and ("MLM accuracy" in table) == (kind == "text")
    if kind == "text":
        assert summary["baseline"]["final_step"] == 100
        assert summary["baseline"]["final_val_loss_std"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    assert len(list((tmp_path / "out" / "logs").iterdir())) == 12


def test_one_seed_has_no_spread(tmp_path, capsys):
    # the sample standard deviation of one value is undefined: the table said "± 0.00"
    _write_runs(tmp_path / "runs", "image", seeds=1)
    assert replication.main([str(tmp_path / "runs"), str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["masksub"]["final_top1_std"] is None and summary["masksub"]["final_val_loss_std"] is None
    assert "± n/a (1 seed)" in (tmp_path / "out" / "table.md").read_text()
    assert "± 0.0" not in (tmp_path / "out" / "table.md").read_text()
    assert replication.main(["--help"]) == 0 and "RUNS_DIR OUT_DIR" in capsys.readouterr().out


def test_summary_numbers_per_seed_in_seed_order(tmp_path, capsys):
    # helper-120: the best accuracy, final loss, wall time, throughput and curve, and seeds 2 < 10 (not "10" < "2")
    for seed, top1 in ((10, (70.0, 90.0, 85.0)), (2, (60.0, 80.0, 75.0))):
        rows = [{"epoch": e + 1, "loss_main": 3.0 - e + seed, "top1": top1[e], "val_loss": 1.0,
                 "images_per_s": 10.0 * e, "wall_time_s": seed + e} for e in range(3)]  # fmt: skip
        run = tmp_path / f"baseline-seed{seed}"
        run.mkdir()
        (run / "log.json").write_text(json.dumps({"meta": {"command": "c"}, "epochs": rows}))
    s = replication.summarise(replication.load_runs(str(tmp_path)))["baseline"]
    assert s["seeds"] == [2, 10] and s["final_top1"] == [75.0, 85.0] and s["final_epoch"] == 3
    assert s["best_top1_mean"] == 85.0 and s["final_loss_main_mean"] == 7.0 and s["wall_time_s_mean"] == 8.0
    assert s["images_per_s_mean"] == 10.0 and s["mean_loss_main_curve"] == [9.0, 8.0, 7.0]
    assert replication.main([str(tmp_path)]) == 2 and "RUNS_DIR OUT_DIR" in capsys.readouterr().err
