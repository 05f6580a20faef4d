"""Per-epoch log of the training command: the same rows as CSV (``log.csv``) and JSON (``log.json``).

Columns: epoch, lr (at the end of the epoch), loss (weighted total), loss_main, loss_sub (empty for the baseline),
val_loss, top1, top5 (validation, %), ema_val_loss, ema_top1, ema_top5 (the weight EMA's, with --model-ema;
empty otherwise), images_per_s (training throughput over all processes), epoch_time_s and
wall_time_s (cumulative training + evaluation time, excluding set-up). Both files are rewritten whole every epoch,
so a resumed run continues the same files. log.json holds {'meta': ..., 'epochs': [row, ...]} (the MLM command's
rows are rounds of steps, under the same key). A value that is undefined (a round in which no batch predicted a
token, a diverged run) is NaN, as Python's json writes it (a bare NaN, which json.load and pandas read; a strict
parser needs it allowed), and 'nan' in log.csv; null means not applicable (loss_sub of a baseline).

``run_provenance`` gives what meta records of where a run ran (the latest start's, for a resumed run): the package's
git commit (null outside a git checkout), whether tracked files differed from it, the UTC start time, the CPU model,
torch's thread count and the GPU's name (null off CUDA). meta.first_start keeps the first start's (saved in every
checkpoint: null for a run resumed from a checkpoint of before 2026-12-07, which has none), and each entry of
meta.resumes its resume's, the same fields (``resume_provenance``: a run resumed on another machine or card says so;
entries of before 2026-12-07 lack them, the first ones of that day have the commit, dirty flag and start time alone).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from typing import Any

COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "loss_main",
    "loss_sub",
    "val_loss",
    "top1",
    "top5",
    "ema_val_loss",
    "ema_top1",
    "ema_top5",
    "images_per_s",
    "epoch_time_s",
    "wall_time_s",
)

__all__ = ["COLUMNS", "PROVENANCE", "first_start", "resume_provenance", "run_provenance", "write_log"]

# what meta records of a start (run_provenance), the first's (meta.first_start) and each resume's (meta.resumes: a run
# resumed under another commit, or on another machine or card, keeps each one)
PROVENANCE = ("git_commit", "git_dirty", "started_utc", "cpu", "torch_threads", "gpu")


def write_log(
    output_dir: str, rows: list[dict[str, Any]], meta: dict[str, Any], columns: tuple[str, ...] = COLUMNS
) -> None:
    """Write ``log.csv`` (the rows, ``columns``) and ``log.json`` ({'meta': ..., 'epochs': rows}) in
    ``output_dir`` (the MLM command logs rounds of steps with its own columns)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "log.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    with open(os.path.join(output_dir, "log.json"), "w") as f:
        json.dump({"meta": meta, "epochs": rows}, f, indent=1)


def _git(root: str, *args: str) -> subprocess.CompletedProcess | None:
    """git's answer, its stdout as bytes (a path in it may be in any encoding: os.fsdecode reads it back)."""
    try:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError, ValueError):  # no git, a hung one: not recorded, never a failed run
        return None


def _git_commit() -> tuple[str | None, bool | None]:
    """The commit of the checkout the package runs from and whether its tracked files differ from it; (None, None)
    outside a checkout (an installed wheel; a checkout that holds the package elsewhere than at its top)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    top = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = [] if top is None or top.returncode != 0 else os.fsdecode(top.stdout).rstrip("\n").split("\n")
    if len(lines) != 2:  # one line each: the top folder (spaces and all) and the commit
        return None, None
    toplevel, commit = lines
    if os.path.realpath(toplevel) != os.path.realpath(root):
        return None, None
    tracked = _git(root, "ls-files", "--error-unmatch", "masksub_kernels/__init__.py")  # not a repository the
    if tracked is None or tracked.returncode != 0:  # package was installed into (pip --target a checkout's folder)
        return None, None
    diff = _git(root, "diff", "--quiet", "HEAD", "--")
    return commit, (None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def run_provenance(device: Any) -> dict[str, Any]:
    """Where and from what code a run runs: git_commit, git_dirty, started_utc, cpu, torch_threads, gpu."""
    import torch

    device = torch.device(device)
    commit, dirty = _git_commit()
    gpu = None
    if device.type == "cuda":
        try:
            gpu = torch.cuda.get_device_name(device)
        except Exception:  # a name is provenance, not a reason to stop
            gpu = None
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def resume_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """A resume's record of its start (its entry in meta.resumes): the ``PROVENANCE`` fields of ``provenance``."""
    return {key: provenance.get(key) for key in PROVENANCE}


def first_start(checkpoint: dict[str, Any] | None, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """meta.first_start: this start's provenance for a fresh run (``checkpoint`` None), the checkpoint's record for a
    resume (None where a checkpoint of before 2026-12-07 has none)."""
    return dict(provenance) if checkpoint is None else checkpoint.get("first_start")
