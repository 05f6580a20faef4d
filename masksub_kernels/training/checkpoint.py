"""Checkpoints of the training command: everything needed to continue a run exactly, written atomically.

A checkpoint after epoch e holds the trained module's state (the MaskSub wrapper's, so the Swin mask token too,
or the bare model's for ``--baseline``), the optimizer, the timm scheduler, the GradScaler, the number of
optimizer updates, the log rows so far and the arguments. Nothing random needs saving: every epoch reseeds all
generators from (seed, epoch, rank) and the data order comes from (seed, epoch), so epoch e + 1 of a resumed run is
the epoch e + 1 of an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """torch.save to ``path`` through a temporary file and a rename: a crash never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    """The state saved by ``save_checkpoint`` (on the CPU; load_state_dict moves it)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)
