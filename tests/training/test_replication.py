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


# helper-174's mutation audit
def _write_log(run, rows):
    run.mkdir()
    (run / "log.json").write_text(json.dumps({"meta": {"command": "c"}, "epochs": rows}))
    (run / "log.csv").write_text("x\n")


def _rows(top1, seed=0):
    return [
        {
            "epoch": 1,
            "loss_main": 1.0 + seed,
            "top1": top1,
            "val_loss": 1.0 + seed,
            "images_per_s": 1.0,
            "wall_time_s": 1.0,
        }
    ]


def test_load_runs_ignores_names_whose_seed_is_not_a_number(tmp_path):
    _write_log(tmp_path / "baseline-seed1", _rows(80.0))
    _write_log(tmp_path / "baseline-seed1-old", _rows(10.0))
    assert [log["seed"] for log in replication.load_runs(str(tmp_path))["baseline"]] == [1]


def test_two_seeds_have_a_sample_std(tmp_path):
    _write_log(tmp_path / "baseline-seed0", _rows(80.0, 0))
    _write_log(tmp_path / "baseline-seed1", _rows(82.0, 1))
    s = replication.summarise(replication.load_runs(str(tmp_path)))["baseline"]
    assert s["final_top1_std"] == pytest.approx(2**0.5) and s["final_val_loss_std"] == pytest.approx(0.5**0.5)


def test_plot_band_of_two_seeds_is_their_std(tmp_path, monkeypatch):
    import matplotlib.axes

    _write_log(tmp_path / "baseline-seed0", _rows(80.0, 0))
    _write_log(tmp_path / "baseline-seed1", _rows(82.0, 1))
    widths = []
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda self, x, lo, hi, **kw: widths.append(hi - lo))
    replication.plot_curves(replication.load_runs(str(tmp_path)), str(tmp_path / "c.png"))
    assert [float(w[0]) for w in widths] == pytest.approx([2 * 0.5**0.5, 2 * 2**0.5])


def test_main_refuses_three_arguments(tmp_path, capsys):
    assert replication.main([str(tmp_path), str(tmp_path / "o"), "extra"]) == 2
    assert "RUNS_DIR OUT_DIR" in capsys.readouterr().err


def test_log_kind_skips_a_log_without_rows():
    runs = {"baseline": [{"epochs": []}, {"epochs": [{"val_acc": 1.0}]}], "masksub": []}
    assert replication.log_kind(runs) is replication.TEXT
    assert replication.log_kind({"baseline": [{"epochs": []}], "masksub": []}) is replication.IMAGE


def test_seeds_of_different_lengths_are_refused(tmp_path, capsys):
    # a mean over other epochs, or a curve past a shorter run's end (helper-174: silently wrong, or an IndexError)
    _write_log(tmp_path / "baseline-seed0", _rows(80.0, 0))
    _write_log(tmp_path / "baseline-seed1", [*_rows(82.0, 1), {**_rows(84.0, 1)[0], "epoch": 2}])
    with pytest.raises(ValueError, match=r"different numbers of epochs per seed \(\{0: 1, 1: 2\}\)"):
        replication.summarise(replication.load_runs(str(tmp_path)))
    assert replication.main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "error: the baseline runs logged different numbers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any file is written


def test_provenance_in_summary_and_table(tmp_path):
    # helper-304: the logs' meta says where the runs ran (runlog.run_provenance); logs without it say so
    _write_runs(tmp_path / "old", "image", seeds=2)
    assert replication.main([str(tmp_path / "old"), str(tmp_path / "out")]) == 0
    assert "provenance" not in json.loads((tmp_path / "out" / "summary.json").read_text())["baseline"]
    assert (tmp_path / "out" / "table.md").read_text().endswith("\nProvenance: not recorded in the logs.\n")
    (tmp_path / "out" / "PROVENANCE.md").write_text("from git log\n")
    assert replication.main([str(tmp_path / "old"), str(tmp_path / "out")]) == 0
    assert "not recorded in the logs (PROVENANCE.md, beside" in (tmp_path / "out" / "table.md").read_text()
    _write_runs(tmp_path / "new", "image", seeds=2)
    for i, path in enumerate(sorted((tmp_path / "new").glob("*/log.json"))):
        log = json.loads(path.read_text())
        log["meta"].update(git_commit="a" * 40, git_dirty=False, started_utc=f"2026-12-07T0{i}:00:00+00:00",
                           cpu="AMD EPYC", torch_threads=1, gpu=None)  # fmt: skip
        if i == 3:
            log["meta"] = {"command": "c"}  # one log from before
        path.write_text(json.dumps(log))
    assert replication.main([str(tmp_path / "new"), str(tmp_path / "out2")]) == 0
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary["baseline"]["provenance"] == {"git_commit": ["a" * 40], "git_dirty": [False], "cpu": ["AMD EPYC"],
        "started_utc": ["2026-12-07T00:00:00+00:00", "2026-12-07T01:00:00+00:00"], "torch_threads": [1],
        "gpu": [None], "runs_without": 0, "runs_partly": 0}  # fmt: skip
    assert summary["masksub"]["provenance"]["runs_without"] == 1
    line = (tmp_path / "out2" / "table.md").read_text().splitlines()[-1]
    assert line == ("Provenance (the logs' meta): commit aaaaaaaaaaaa; started 2026-12-07T00:00:00+00:00 to "
                    "2026-12-07T02:00:00+00:00 (UTC); CPU AMD EPYC; torch threads 1; GPU none; 1 of the logs record "
                    "none of it.")  # fmt: skip
    # a PROVENANCE.md stays while a log records none; once every log records its own, it told of replaced logs
    (tmp_path / "out2" / "PROVENANCE.md").write_text("from git log\n")
    assert replication.main([str(tmp_path / "new"), str(tmp_path / "out2")]) == 0
    assert (tmp_path / "out2" / "PROVENANCE.md").is_file()
    path = sorted((tmp_path / "new").glob("*/log.json"))[3]
    log = json.loads(path.read_text())
    log["meta"].update(git_commit=None, git_dirty=None, started_utc=None, cpu=None, torch_threads=1, gpu=None)
    path.write_text(json.dumps(log))
    assert replication.main([str(tmp_path / "new"), str(tmp_path / "out2")]) == 0
    assert not (tmp_path / "out2" / "PROVENANCE.md").exists()


# helper-309's mutation audit
def _metas(*metas):
    return [{"meta": {"command": "c", **m}} for m in metas]


def test_provenance_line_of_a_dirty_tree_no_checkout_one_start_and_several_values():
    # kills replication.py `dirty = ... if True in p["git_dirty"] else ""` -> `dirty = ""`, `"not a git checkout" if
    # c is None else c[:12]` -> `str(c)[:12]`, `else first if first == last else` -> `else` (one start: "X to X"),
    # words()' `p[key]` -> `p[key][:1]` (a second CPU dropped), and provenance()'s `for m in recorded` -> `recorded[:1]`
    same = dict(started_utc="2026-12-07T05:00:00+00:00", torch_threads=1, gpu=None)
    runs = {
        "baseline": _metas(dict(git_commit="b" * 40, git_dirty=True, cpu="AMD EPYC", **same)),
        "masksub": _metas(dict(git_commit=None, git_dirty=None, cpu="Intel Xeon", **same)),
    }
    line = replication._provenance_line(runs)
    assert line == (
        "Provenance (the logs' meta): commit bbbbbbbbbbbb, not a git checkout (tracked files changed); started "
        "2026-12-07T05:00:00+00:00 (UTC); CPU AMD EPYC, Intel Xeon; torch threads 1; GPU none."
    )


def test_a_log_that_records_part_of_the_provenance_counts_as_recording_it():
    # kills replication.py `any(key in m for key in PROVENANCE)` -> `all(...)` (a log with some fields, e.g. one
    # written by a later run_provenance with a field renamed, counted as "records none")
    p = replication.provenance(_metas(dict(git_commit="c" * 40), {}))
    assert (
        p["git_commit"] == ["c" * 40] and p["cpu"] == [None] and p["runs_without"] == 1 and p["started_utc"] == [None]
    )
    assert "; started unknown (UTC); CPU unknown;" in replication._provenance_line(
        {"baseline": _metas(dict(cpu=None, gpu="H100"))}
    )


# helper-311: a rerun of fewer seeds into a folder of older logs removed PROVENANCE.md though the older seeds' logs,
# which it describes, stayed in logs/; the table points to it while any log there records none
def test_a_partial_rerun_keeps_the_provenance_file_of_the_logs_left(tmp_path):
    _write_runs(tmp_path / "old", "image", seeds=3)
    assert replication.main([str(tmp_path / "old"), str(tmp_path / "out")]) == 0
    (tmp_path / "out" / "PROVENANCE.md").write_text("from git log\n")
    _write_runs(tmp_path / "new", "image", seeds=2)
    for path in (tmp_path / "new").glob("*/log.json"):
        log = json.loads(path.read_text())
        log["meta"].update(git_commit="a" * 40, git_dirty=False, started_utc=None, cpu=None, torch_threads=1, gpu=None)
        path.write_text(json.dumps(log))
    assert replication.main([str(tmp_path / "new"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "PROVENANCE.md").is_file()  # seed 2's older logs are still there
    for name in ("baseline-seed2.json", "masksub-seed2.json"):
        (tmp_path / "out" / "logs" / name).unlink()
    assert replication.main([str(tmp_path / "new"), str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "PROVENANCE.md").exists()
    mixed = tmp_path / "mixed"
    assert replication.main([str(tmp_path / "old"), str(mixed)]) == 0
    (mixed / "PROVENANCE.md").write_text("from git log\n")
    path = tmp_path / "old" / "masksub-seed0" / "log.json"
    log = json.loads(path.read_text())
    log["meta"].update(git_commit="b" * 40)
    path.write_text(json.dumps(log))
    assert replication.main([str(tmp_path / "old"), str(mixed)]) == 0
    assert (
        (mixed / "table.md")
        .read_text()
        .endswith("5 of the logs record none of it (PROVENANCE.md, beside this file, gives it from the git history).\n")
    )


def test_provenance_counts_a_resumed_runs_first_start_and_resumes():
    # helper-321: a run resumed under another commit ran under both (meta.first_start, each meta.resumes entry);
    # older resumes' entries without a commit add none, a first start of null (an older checkpoint's) neither
    first = {"git_commit": "a" * 40, "git_dirty": False, "started_utc": "2026-12-07T00:00:00+00:00", "cpu": "X",
             "torch_threads": 1, "gpu": None}  # fmt: skip
    resumes = [{"epoch": 1, "from": "f", "changed": []},
               {"epoch": 2, "from": "f", "changed": [], "git_commit": "b" * 40, "git_dirty": True,
                "started_utc": "2026-12-07T01:00:00+00:00"}]  # fmt: skip
    latest = {**first, "git_commit": "c" * 40, "started_utc": "2026-12-07T02:00:00+00:00"}
    p = replication.provenance(_metas({**latest, "first_start": first, "resumes": resumes},
                                      {**latest, "first_start": None, "resumes": []}))  # fmt: skip
    assert p["git_commit"] == ["a" * 40, "b" * 40, "c" * 40] and p["git_dirty"] == [False, True]
    assert p["started_utc"] == ["2026-12-07T00:00:00+00:00", "2026-12-07T02:00:00+00:00"]
    assert p["cpu"] == ["X"] and p["torch_threads"] == [1] and p["gpu"] == [None] and p["runs_without"] == 0
    assert p["runs_partly"] == 1  # (the first run's first resume has no commit)
    line = replication._provenance_line({"baseline": _metas({**latest, "first_start": None, "resumes": resumes[1:]})})
    assert line.endswith("; 1 resumed from older checkpoints (where their earlier starts ran not all recorded).")
    # helper-331: a resume on another machine counts its CPU and GPU; an entry with the commit alone (early on
    # 2026-12-07) leaves where it ran unknown: partly recorded
    moved = {**resumes[1], "cpu": "Y", "torch_threads": 8, "gpu": "NVIDIA H100"}
    p = replication.provenance(_metas({**latest, "first_start": first, "resumes": [moved]}))
    assert p["cpu"] == ["X", "Y"] and p["torch_threads"] == [1, 8] and p["gpu"] == ["NVIDIA H100", None]
    assert p["runs_partly"] == 0
    assert replication.provenance(_metas({**latest, "first_start": first, "resumes": resumes[1:]}))["runs_partly"] == 1
    assert "resumed from older" not in replication._provenance_line({"baseline": _metas({**latest, "resumes": []})})


# Kills T05 (replication.provenance's runs_partly without `m.get("first_start") is None or`: a run resumed from a
# checkpoint of before 2026-12-07, whose first start is unknown, counted as fully recorded once its resumes were)
def test_a_resumed_run_without_its_first_start_is_partly_recorded():
    where = {"git_commit": "a" * 40, "git_dirty": False, "started_utc": "2026-12-07T03:00:00+00:00", "cpu": "X",
             "torch_threads": 1, "gpu": None}  # fmt: skip
    resume = {"epoch": 2, "from": "f", "changed": [], **where}  # a full record of the resume
    assert replication.provenance(_metas({**where, "first_start": None, "resumes": [resume]}))["runs_partly"] == 1
    assert replication.provenance(_metas({**where, "first_start": where, "resumes": [resume]}))["runs_partly"] == 0
