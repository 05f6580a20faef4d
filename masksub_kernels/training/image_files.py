"""An ImageFolder's image files as the training command meets them: unreadable ones are the command's usage error,
naming them, not timm's ``RuntimeError: Failed to load N consecutive samples`` (which names no file).

timm's ``ImageDataset`` skips an image that Pillow cannot read (a warning) and loads the next in its place, up to
``_max_retries`` in a row (``TIMM_DATASET_MAX_RETRIES``, 10): the training set keeps that (one bad file in
ImageNet's 1.28 M does not stop a run), the validation set is given 1 (data.py: a neighbour scored in an
image's place would change the metrics). When the retries run out, ``load_item`` raises ``UnreadableImages``
naming the files and Pillow's reasons. ``check_image_headers`` opens every validation image's header before the
first epoch (Pillow's ``Image.open``, which reads the header, not the pixels: about 150 us an image from the page
cache, measured; on ``--workers`` threads), so a file that is no image stops the run before an epoch is trained, not
after it; a file whose pixels are cut short passes it and stops the run at its evaluation. The training images
are not checked up front (1.28 M opens on every start): a run of unreadable ones stops it in the first epoch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from torch.utils.data import Dataset, Subset

from .run_setup import UsageError

__all__ = ["LoadingNamed", "UnreadableImages", "check_image_headers", "load_item"]

SHOWN = 5  # files named in a message (then a count)


class UnreadableImages(UsageError):
    """Image files that Pillow cannot read: the command's usage error. Its message survives a DataLoader worker's
    re-raise (torch's ExceptionWrapper passes the worker's whole traceback as the message: its last line is ours)."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _samples(dataset) -> tuple[object, list | None]:
    """(the timm dataset under ``dataset``'s Subsets, its reader's (path, target) list or None)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset, getattr(getattr(dataset, "reader", None), "samples", None)


def _reason(path: str) -> str | None:
    """Why Pillow cannot read ``path`` as timm does (open, convert to RGB: decodes the pixels); None if it can."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except Exception as exc:  # (any of Pillow's: OSError, SyntaxError, ValueError, DecompressionBombError, ...)
        return _why(exc, path)
    return None


def _why(exc: BaseException, path: str) -> str:
    """Pillow's error, less the path it repeats ("cannot identify image file '...'")."""
    return f"{type(exc).__name__}: {str(exc).replace(f' {path!r}', '')}"


def _message(failed: list[tuple[str, str]], total: int, where: str) -> str:
    shown = "; ".join(f"{path!r} ({why})" for path, why in failed[:SHOWN])
    more = f"; and {total - SHOWN} more" if total > SHOWN else ""
    return f"{where}: {shown}{more}: replace or delete {'it' if total == 1 else 'them'}"


def load_item(dataset, index: int):
    """``dataset[index]``; timm's error for unreadable images (its retries run out) as ``UnreadableImages`` naming
    the files it tried (``index`` and the ones after it, as timm steps on)."""
    try:
        return dataset[index]
    except RuntimeError as exc:
        if not str(exc).startswith("Failed to load "):
            raise
        base, samples = _samples(dataset)
        if not samples:
            raise
        while isinstance(dataset, Subset):
            index, dataset = dataset.indices[index], dataset.dataset
        tries = max(1, int(getattr(base, "_max_retries", 1)))
        paths = [samples[(index + k) % len(samples)][0] for k in range(tries)]
        failed = [(path, _reason(path) or "read on a retry") for path in paths]
        skipped = f"{tries} in a row (timm skips an unreadable training image, up to {tries - 1} in a row)"
        where = "unreadable image file" + (f"s, {skipped}" if tries > 1 else "")
        raise UnreadableImages(_message(failed, len(failed), where)) from None


class LoadingNamed(Dataset):
    """``dataset``'s items through ``load_item`` (the validation loader's)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return load_item(self.dataset, index)


def _header_reason(path: str) -> str | None:
    """Why Pillow cannot open ``path``'s header; None if it can."""
    from PIL import Image

    try:
        with Image.open(path):
            pass
    except Exception as exc:  # (Pillow's UnidentifiedImageError, an OSError, a SyntaxError, ...)
        return _why(exc, path)
    return None


def check_image_headers(dataset, rank: int = 0, world: int = 1, workers: int = 1) -> None:
    """Open the header of each of this rank's share (items rank, rank + world, ...) of an ImageFolder's images, on
    ``max(1, workers)`` threads; ``UnreadableImages`` naming those Pillow cannot open, all of them collected and
    sorted by path (the same message whichever thread finished first). Nothing for a dataset without files."""
    _, samples = _samples(dataset)
    paths = [path for path, _ in (samples or [])[rank::world]]
    if not paths:
        return
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(_header_reason, paths))
    failed = sorted((path, why) for path, why in zip(paths, reasons) if why is not None)
    if failed:
        folder = os.path.dirname(os.path.dirname(failed[0][0]))
        count = "an image file" if len(failed) == 1 else f"{len(failed)} image files"
        where = f"{count} in {folder!r} that Pillow cannot open (checked before training)"
        raise UnreadableImages(_message(failed, len(failed), where))
