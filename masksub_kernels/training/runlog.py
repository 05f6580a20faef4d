"""Per-epoch log of the training command: the same rows as CSV (``log.csv``) and JSON (``log.json``).

Columns: epoch, lr (at the end of the epoch), loss (weighted total), loss_main, loss_sub (empty for the baseline),
val_loss, top1, top5 (validation, %), ema_val_loss, ema_top1, ema_top5 (the weight EMA's, with --model-ema;
empty otherwise), images_per_s (training throughput over all processes), epoch_time_s and
wall_time_s (cumulative training + evaluation time, excluding set-up). Both files are rewritten whole every epoch,
so a resumed run continues the same files. log.json holds {'meta': ..., 'epochs': [row, ...]} (the MLM command's
rows are rounds of steps, under the same key). A value that is undefined (a round in which no batch predicted a
token, a diverged run) is NaN, as Python's json writes it (a bare NaN, which json.load and pandas read; a strict
parser needs it allowed), and 'nan' in log.csv; null means not applicable (loss_sub of a baseline).
"""

from __future__ import annotations

import csv
import json
import os
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

__all__ = ["COLUMNS", "write_log"]


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
