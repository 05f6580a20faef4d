"""docs/replication/run.sh and docs/replication/mlm/run.sh, run with a stand-in $PYTHON that logs its arguments (no
training; < 0.5 s): the import check before anything is removed, the smoke-run overrides (helper-309's audit)."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = {"image": os.path.join(REPO, "docs", "replication", "run.sh"),
           "text": os.path.join(REPO, "docs", "replication", "mlm", "run.sh")}  # fmt: skip


def _run_script(kind, tmp_path, import_fails=False, **env):
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\n" + ('[ "$1" = -c ] && exit 1\n' if import_fails else "") + 'echo "$*" >> "$CALLS"\n')
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    (runs / "baseline-seed0").mkdir(parents=True)  # an earlier run, which the script removes before it starts
    full = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "RUNS": str(runs), **env}
    ran = subprocess.run(["bash", SCRIPTS[kind]], capture_output=True, text=True, env=full, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return ran, calls, runs


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("kind", ["image", "text"])
def test_run_sh_refuses_a_python_without_the_package_before_removing_anything(kind, tmp_path):
    # kills, in either run.sh, dropping the check's `exit 2` and moving the check below the `rm -rf` of the runs
    ran, calls, runs = _run_script(kind, tmp_path, import_fails=True)
    assert ran.returncode == 2 and f"run.sh: {tmp_path / 'fake-python'} cannot import masksub_kernels." in ran.stderr
    assert "make install" in ran.stderr and calls == [] and (runs / "baseline-seed0").is_dir()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_sh_takes_seeds_epochs_and_out(tmp_path):
    # kills docs/replication/run.sh `for seed in $SEEDS` -> `for seed in 0 1 2 3 4 5 6 7 8 9`, `--epochs "$EPOCHS"`
    # -> `--epochs 40`, and the last line's `"$OUT"` -> `docs/replication` (a smoke run overwrote the table)
    ran, calls, runs = _run_script("image", tmp_path, SEEDS="3 5", EPOCHS="2", OUT=str(tmp_path / "out"))
    assert ran.returncode == 0, ran.stderr
    assert (
        calls[0] == "-c import masksub_kernels.train, timm, torchvision, matplotlib"
        and not (runs / "baseline-seed0").exists()
    )
    trains = [c for c in calls[1:] if c.startswith("-m masksub_kernels.train ")]
    assert len(trains) == 4 and all(" --epochs 2 " in c for c in trains)
    outputs = sorted(c.split("--output ")[1] for c in trains)
    assert outputs == [f"{runs}/{arm}-seed{s}" for arm in ("baseline", "masksub") for s in (3, 5)]
    assert calls[-1] == f"-m masksub_kernels.training.replication {runs} {tmp_path / 'out'}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_mlm_run_sh_takes_seeds_steps_eval_every_and_out(tmp_path):
    # kills docs/replication/mlm/run.sh `for seed in $SEEDS` -> `for seed in 0 1 2`, `--steps "$STEPS"` -> `--steps
    # 800`, `--eval-every "$EVAL_EVERY"` -> `--eval-every 100`, the last line's `"$OUT"` -> `docs/replication/mlm`,
    # and the import check without `tokenizers`
    ran, calls, runs = _run_script("text", tmp_path, SEEDS="0", STEPS="20", EVAL_EVERY="10", OUT=str(tmp_path / "o"))
    assert ran.returncode == 0, ran.stderr
    assert calls[0] == "-c import masksub_kernels.training.mlm_cli, transformers, tokenizers, matplotlib"
    trains = [c for c in calls[1:] if c.startswith("-m masksub_kernels.training.mlm_cli ")]
    assert len(trains) == 2 and all(" --steps 20 " in c and " --eval-every 10 " in c for c in trains)
    assert sorted(c.split("--output ")[1] for c in trains) == [f"{runs}/baseline-seed0", f"{runs}/masksub-seed0"]
    assert calls[-1] == f"-m masksub_kernels.training.replication {runs} {tmp_path / 'o'}"
