"""Checkpoints of the training command: everything needed to continue a run exactly, written atomically.

A checkpoint after epoch e holds the trained module's state (the MaskSub wrapper's, so the Swin mask token too,
or the bare model's for ``--baseline``), the optimizer, the timm scheduler, the GradScaler, the number of
optimizer updates, the log rows so far and the arguments. Nothing random needs saving: every epoch reseeds all
generators from (seed, epoch, rank) and the data order comes from (seed, epoch), so epoch e + 1 of a resumed run is
the epoch e + 1 of an uninterrupted one.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import torch
from torch import nn

__all__ = ["eager_state_dict", "fsync", "fsync_directory", "load_checkpoint", "load_eager_state_dict",
           "read_run_checkpoint", "save_checkpoint", "settle_interrupted_save"]  # fmt: skip


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """torch.save to ``path`` through a temporary file, flushed to the disk, and a rename, itself flushed: a crash or
    a full disk never leaves half a checkpoint, and a power loss after the rename not an empty one (without
    the file's fsync a filesystem may commit the rename before the data) nor the previous one (without the
    directory's fsync the rename itself may be lost)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as file:
        torch.save(state, file)
        file.flush()
        fsync(file.fileno())
    os.replace(tmp, path)
    fsync_directory(folder)


def settle_interrupted_save(path: str) -> bool:
    """After an interrupt (Ctrl-C) inside save_checkpoint(``path``): whether ``path`` now holds the new checkpoint
    (renamed, its folder's flush cut). A half-written ``path``.tmp is removed (``path`` then holds the previous one)."""
    if not os.path.exists(f"{path}.tmp"):
        return True
    os.remove(f"{path}.tmp")
    return False


def fsync_directory(folder: str) -> None:
    """Flush ``folder``'s entries (a rename into it) to the disk, where the folder can be opened for it."""
    try:  # a directory opens read-only on POSIX (not on Windows, whose rename is its own), unless unreadable
        descriptor = os.open(folder, os.O_RDONLY) if os.name == "posix" else None
    except OSError:  # (a writable, unreadable folder: the checkpoint is saved, its rename not synced)
        descriptor = None
    if descriptor is not None:
        try:
            fsync(descriptor)
        finally:
            os.close(descriptor)


def fsync(descriptor: int) -> None:
    """os.fsync, where the filesystem has it (some FUSE mounts: EINVAL / ENOTSUP; the rename still protects a
    crash)."""
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def load_checkpoint(path: str) -> dict[str, Any]:
    """The state saved by ``save_checkpoint`` (on the CPU; load_state_dict moves it)."""
    if os.path.isdir(path):
        raise FileNotFoundError(
            f"checkpoint {path!r} is a directory, not a file (e.g. {os.path.join(path, 'last.pth')!r})"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def read_run_checkpoint(path: str, needed: tuple[str, ...], prog: str) -> dict[str, Any]:
    """The checkpoint a command's --resume names, or its usage error (run_setup.UsageError: exit status 2) for a
    missing file, a directory, a file torch cannot read (truncated, not a torch.save file) or one without the keys
    ``needed`` (another command's)."""
    from .run_setup import UsageError

    try:
        state = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    except Exception as exc:  # a truncated file, or not a torch file at all
        first = (str(exc).splitlines() or [""])[0]
        raise UsageError(
            f"cannot read checkpoint {path!r} (a truncated or corrupt file, or not a torch.save file?): {first}"
        ) from exc
    missing = list(needed) if not isinstance(state, dict) else [key for key in needed if key not in state]
    if missing:  # another command's checkpoint, or not one at all
        what = "" if isinstance(state, dict) else f": a {type(state).__name__}, not a dict"
        raise UsageError(f"{path!r} is not a {prog} checkpoint (it lacks {', '.join(missing)}{what})")
    return state


def _eager_name(key: str) -> str:
    """A state-dict key without torch.compile's ``_orig_mod`` segments (``model._orig_mod.head.weight`` ->
    ``model.head.weight``)."""
    return ".".join(part for part in key.split(".") if part != "_orig_mod")


def eager_state_dict(module: nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` under the eager module's names, whether or not it (or a submodule) is compiled: a
    checkpoint then resumes with or without ``--compile``."""
    return {_eager_name(key): value for key, value in module.state_dict().items()}


def load_eager_state_dict(module: nn.Module, state: dict[str, Any]) -> None:
    """``module.load_state_dict(state)`` for a state saved with or without torch.compile's prefixes, into a module
    compiled or not (strict: a missing or unexpected key is still the RuntimeError of ``load_state_dict``)."""
    names = {_eager_name(key): key for key in module.state_dict()}
    module.load_state_dict({names.get(_eager_name(key), key): value for key, value in state.items()})
