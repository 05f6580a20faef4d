"""Datasets and loaders for the training command: an ImageFolder tree, or the embedded digits set.

- Digits (default, no download): scikit-learn's 8 x 8 handwritten digits, 1,797 grey images, 10 classes, values
  0..16. Scaled to [0, 1], upsampled bilinearly to img_size, normalised with the training split's mean / std, one
  channel (repeated when the model wants more). Stratified split, fixed: 1,437 train / 360 val. Training
  augmentation: a random shift of up to img_size / 8 pixels (pad with the background, crop), drawn from the
  generator it is given (torch's default one when indexed directly).
- ImageFolder: ``DIR/train`` and ``DIR/val`` (or ``validation``) with one folder per class, read by timm's
  ``create_dataset`` and transformed by timm's ``create_transform`` (RandomResizedCrop + flip for training, resize
  + centre crop for validation; the model's mean / std).

Loaders: the training order comes from a generator (single process), a ``DistributedSampler`` (DDP) or timm's
``RepeatAugSampler`` (--aug-repeats), all seeded by (seed, epoch). Each training sample's augmentation is seeded by
(seed, epoch, rank, its position in this rank's epoch order) (``SeededOrder`` / ``SeededSamples``, LOADER_SEEDING
3): not by the loader's workers, so ``--workers`` does not change the run, nor by the main process's generators,
which the model draws from too (dropout, drop-path, MaskSub's masks), so a seed's baseline and MaskSub runs see
the same images, augmented alike, at every step; --aug-repeats' copies of an image lie at other positions, so they
differ. The digits draw from a generator of their own; timm's transforms from the global torch / Python / NumPy
generators, seeded per sample (and, in the main process with ``--workers 0``, put back after each batch, so Mixup
and the model draw as without them). With the per-epoch reseeding in engine.py (of the main process's generators),
an epoch is the same whether or not the run was resumed before it. Validation shards the set exactly (rank r takes
items r, r + world, ...), so summed counts are exact.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, Subset, get_worker_info

from .image_files import LoadingNamed, load_item

DIGITS_CLASSES = 10
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# How the training loaders are seeded, recorded in checkpoints (resume notes another): 3 since 2026-12-07, each
# sample's augmentation by (seed, epoch, rank, position) (SeededOrder); 2 (2026-12-06) drew them from the loader's
# workers, seeded by (seed, epoch, rank), or with --workers 0 from the main process's generators, DistributedSampler
# by seed * 1_000_003; 1 before: torchrun's workers by (seed, epoch), DistributedSampler by seed
LOADER_SEEDING = 3

__all__ = [
    "LOADER_SEEDING",
    "DataSpec",
    "DigitsDataset",
    "SeededOrder",
    "SeededSamples",
    "build_datasets",
    "class_names",
    "train_loader",
    "train_sampler",
    "val_loader",
]


@dataclass
class DataSpec:
    """What the model needs to know about the data."""

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    img_size: int
    notes: list[str] = field(default_factory=list)  # for the command to print (rank 0): a val/ without some classes


class DigitsDataset(Dataset):
    """Upsampled, normalised digits: (image float32 [C, S, S], label int64). ``shift`` > 0: random translation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, in_chans: int = 1) -> None:
        self.images, self.labels, self.shift, self.in_chans = images, labels, shift, in_chans
        self.background = float(images.amin())  # the normalised value of an empty (0) pixel

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seeded_item(index)

    def seeded_item(self, index: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index``, its shift drawn from ``generator`` (None: torch's default one)."""
        image = self.images[index]
        if self.shift:
            s = self.shift
            padded = F.pad(image, (s, s, s, s), value=self.background)
            dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=generator).tolist()
            image = padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
        return image.expand(self.in_chans, -1, -1).contiguous(), self.labels[index]


def _digits(img_size: int, in_chans: int, augment: bool) -> DataSpec:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # [1797, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, val_idx = train_test_split(
        list(range(len(labels))),
        test_size=DIGITS_VAL_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    train_idx, val_idx = torch.tensor(sorted(train_idx)), torch.tensor(sorted(val_idx))
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    shift = max(1, img_size // 8) if augment else 0
    train = DigitsDataset(images[train_idx], labels[train_idx], shift=shift, in_chans=in_chans)
    val = DigitsDataset(images[val_idx], labels[val_idx], in_chans=in_chans)
    return DataSpec(train, val, DIGITS_CLASSES, in_chans, img_size)


def _image_folder(root: str, img_size: int, in_chans: int, mean, std, augment: bool, transforms) -> DataSpec:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
    from timm.data.readers.reader_image_folder import find_images_and_targets

    mean, std = mean or IMAGENET_DEFAULT_MEAN, std or IMAGENET_DEFAULT_STD
    if transforms is None:
        transforms = (
            create_transform(img_size, is_training=True, no_aug=not augment, mean=mean, std=std),
            create_transform(img_size, is_training=False, mean=mean, std=std, crop_pct=1.0),
        )

    if not os.path.isdir(root):
        raise FileNotFoundError(f"data directory {root!r} does not exist")
    val_split = next((s for s in ("val", "validation") if os.path.isdir(os.path.join(root, s))), None)
    if not os.path.isdir(os.path.join(root, "train")) or val_split is None:
        raise FileNotFoundError(
            f"data directory {root!r} must hold ImageFolder trees 'train/' and 'val/' (or 'validation/'), one "
            "sub-folder per class"
        )
    train = _split(root, "train", is_training=True)
    _check_layout(os.path.join(root, "train"), [path for path, _ in train.reader.samples])
    classes = getattr(train.reader, "class_to_idx", None)
    empty = [name for name in _class_folders(os.path.join(root, "train")) if name not in (classes or {})]
    if empty:  # timm makes classes of the folders holding images: the model would be built for the others only
        raise FileNotFoundError(
            f"{os.path.join(root, 'train')!r} has class folders that hold no images timm reads: {empty[:8]} (timm "
            "would drop them and build the model for the other classes): add their images, or delete the folders"
        )
    # val's classes as timm finds them (folders holding images: a '.ipynb_checkpoints' is none), one walk of its tree
    val_images, val_classes = find_images_and_targets(os.path.join(root, val_split))
    _check_layout(os.path.join(root, val_split), [path for path, _ in val_images])
    unknown = sorted(
        name or "(images directly in it)" for name in val_classes if classes is not None and name not in classes
    )
    if unknown:  # timm's class_map drops their images without a word: a validation on fewer images than it holds
        raise FileNotFoundError(
            f"{os.path.join(root, val_split)!r} has class folders that 'train/' lacks: {unknown[:8]} (the class "
            "folders of both must match: the model's classes are train's)"
        )
    unseen = sorted(set(classes or {}) - set(val_classes) - {""})
    notes = []
    if unseen:  # (a class folder without images, or none: the metrics are the other classes' images')
        empty = [name for name in unseen if os.path.isdir(os.path.join(root, val_split, name))]
        notes.append(
            f"{os.path.join(root, val_split)!r} holds no images of {len(unseen)} of the {len(classes)} classes: "
            f"{unseen[:8]}{f' (empty folders: {empty[:8]})' if empty else ''}: top-1 / top-5 are over the other "
            "classes' images"
        )
    val = _split(root, val_split, class_map=classes)
    val._max_retries = 1  # an unreadable image stops the run (image_files.py), not its neighbour scored in its place
    train.transform, val.transform = transforms
    num_classes = len(classes or {}) or 1 + max(t for _, t in train.reader.samples)
    if num_classes < 2:
        named = sorted(name for name in classes or {} if name)  # timm's class '': images directly in the split
        shown = named or "none: its images lie directly in it"
        raise FileNotFoundError(
            f"{os.path.join(root, 'train')!r} holds 1 class (class folders: {shown}): a classifier needs at least 2, "
            "one sub-folder of images per class in 'train/' and 'val/'"
        )
    return DataSpec(train, val, num_classes, in_chans, img_size, notes)


def _class_folders(split_root: str) -> list[str]:
    """The class folders of a split: its sub-folders, less hidden ones (which hold no images: _check_layout)."""
    return sorted(e.name for e in os.scandir(split_root) if e.is_dir() and not e.name.startswith("."))


def _check_layout(split_root: str, paths: list[str]) -> None:
    """Every image at split/CLASS/file, CLASS not hidden: timm labels an image by its innermost folder, so images
    directly in the split, in a hidden folder ('.ipynb_checkpoints') or in a sub-folder of a class folder made
    classes of their own (the same sub-folder name in two classes one class of both), silently."""
    prefix = os.path.join(split_root, "")
    for path in paths:
        rest = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, split_root)
        depth = rest.count(os.sep)
        if depth == 1 and not rest.startswith("."):
            continue
        why = (
            "lies directly in it, not in a class folder"
            if depth == 0
            else "is in a hidden folder, which timm would take for a class (delete it or move its images)"
            if rest.startswith(".")
            else "is in a sub-folder of a class folder: timm labels an image by its innermost folder (the same "
            "sub-folder name in two classes would make one class of both); move the images up into their class "
            "folder"
        )
        raise FileNotFoundError(f"{split_root!r}: {rest!r} {why} (one folder of images per class)")


def _split(root: str, split: str, **options):
    """timm's ImageFolder dataset of ``root/split``; no image in it is a FileNotFoundError naming the split."""
    from timm.data import create_dataset

    try:
        return create_dataset("", root=root, split=split, **options)
    except RuntimeError as exc:  # timm: "Found 0 images in subfolders of ..."
        raise FileNotFoundError(f"{os.path.join(root, split)!r} holds no images timm reads: {exc}") from exc


def class_names(dataset: Dataset) -> list[str] | None:
    """An ImageFolder's class names in index order (what the model's outputs mean), None for the digits."""
    mapping = getattr(getattr(dataset, "reader", None), "class_to_idx", None)
    return sorted(mapping, key=mapping.get) if mapping else None


def build_datasets(
    data_dir: str | None,
    img_size: int,
    in_chans: int = 1,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    augment: bool = True,
    transforms: tuple | None = None,
) -> DataSpec:
    """The digits set (``data_dir=None``) or an ImageFolder tree, at ``img_size`` pixels, normalised with
    ``mean`` / ``std`` (ImageNet's when None; the digits set uses its own statistics). ``transforms``: the
    ImageFolder's (train, val) transforms (training/augment.py), else timm's defaults."""
    if data_dir is None:
        return _digits(img_size, in_chans, augment)
    return _image_folder(data_dir, img_size, in_chans, mean, std, augment, transforms)


_MASK64 = 2**64 - 1


def _mix64(*values: int) -> int:
    """A 64-bit hash of integers (SplitMix64's step and finaliser over each in turn; a bijection of the running
    value for the last one, so one key's positions never share a 64-bit seed). Python's generator takes all 64 bits;
    torch's CPU generator (mt19937) keeps the low 32, NumPy's legacy one is given the high 32: two samples of an
    epoch share those streams at the birthday rate, ~n^2 / 2^33 pairs (~190 of ImageNet's 1.28 M: harmless)."""
    h = 0
    for value in values:
        h = (h + (value & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


class SeededOrder(Sampler):
    """An epoch's order (a sampler of indices) as (sample seed, index) pairs, the seed from (seed, epoch, rank,
    position in this order): what ``SeededSamples`` augments each sample with. The position, not the index, so
    --aug-repeats' copies of an image differ; computed here, in the main process, so a worker's items carry it."""

    def __init__(self, order, seed: int, epoch: int, rank: int) -> None:
        self.order, self.key = order, _mix64(seed, epoch, rank)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        key = self.key
        for position, index in enumerate(self.order):
            yield _mix64(key, position), index


@contextlib.contextmanager
def _global_rngs_kept():
    """The main process's torch (CPU), Python and NumPy generators put back on leaving (a worker's are its own)."""
    if get_worker_info() is not None:
        yield
        return
    states = torch.default_generator.get_state(), random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        yield
    finally:
        torch.default_generator.set_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])  # noqa: NPY002


class SeededSamples(Dataset):
    """``dataset`` indexed by ``SeededOrder``'s (sample seed, index) pairs, each sample's augmentation drawn from
    its seed: a dataset with ``seeded_item(index, generator)`` (the digits) from a generator of its own, any other
    (timm's transforms draw from the global torch / Python / NumPy generators) from those, seeded per sample and, in
    the main process, put back after each batch. The one place the training augmentations are seeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._generator = None  # made where it draws (a worker, or the main process)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keyed: tuple[int, int]):
        return self.__getitems__([keyed])[0]

    def __getitems__(self, keyed: list[tuple[int, int]]) -> list:
        item = getattr(self.dataset, "seeded_item", None)
        if item is not None:
            if self._generator is None:
                self._generator = torch.Generator()
            return [item(index, self._generator.manual_seed(seed)) for seed, index in keyed]
        samples = []
        with _global_rngs_kept():
            for seed, index in keyed:
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed >> 32)  # noqa: NPY002 (timm's RandAugment draws from the legacy global generator)
                samples.append(load_item(self.dataset, index))  # (an unreadable image: an error naming it)
        return samples


def train_sampler(dataset: Dataset, epoch: int, seed: int, rank: int, world: int, aug_repeats: int = 0, generator=None):
    """The epoch's sampler: ``RepeatAugSampler`` (timm; DeiT-III's RASampler) with ``aug_repeats`` > 0 -- each image
    ``aug_repeats`` times per epoch, the copies on different processes, ``len(dataset) // 256 * 256 / world``
    samples per process (``ceil(len(dataset) / world)`` below 256 images, as timm >= 1.0.31 does by itself: its
    earlier releases selected none) --, a ``DistributedSampler`` under torchrun, else a shuffle drawn from
    ``generator`` (the loader's); all seeded by (seed, epoch)."""
    if aug_repeats > 0:
        from timm.data.distributed_sampler import RepeatAugSampler

        rounding = 256 if len(dataset) >= 256 else 0  # 0: no rounding down to whole 256s
        sampler = RepeatAugSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, num_repeats=aug_repeats, selected_round=rounding
        )
        sampler.set_epoch(seed * 1_000_003 + epoch)
        return sampler
    if world > 1:  # torch seeds its shuffle with seed + epoch: seed * 1_000_003, else seed s's epoch e + 1 was seed
        # s + 1's epoch e (else runs of consecutive seeds would replay each other's orders an epoch apart)
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed * 1_000_003, drop_last=True
        )
        sampler.set_epoch(epoch)
        return sampler
    return RandomSampler(dataset, generator=generator or torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train_loader(
    dataset: Dataset,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int,
    world: int,
    workers: int,
    pin: bool,
    aug_repeats: int = 0,
) -> DataLoader:
    """The epoch's training loader: shuffled by (seed, epoch), whole batches only (Mixup needs even batches and the
    accumulation windows stay aligned with epochs); each sample augmented from (seed, epoch, rank, its position in
    this rank's order), whichever process loads it (``loader.sampler.order``: the order)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    sampler = train_sampler(dataset, epoch, seed, rank, world, aug_repeats, generator)
    if world > 1:  # the samplers above have generators of their own; this one seeds the loader's workers (their
        # generators no longer draw the augmentations, but the loader draws their base seed from torch's default
        # generator when given none, which the model draws from too)
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + rank) % 2**63)
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=SeededOrder(sampler, seed, epoch, rank),
        drop_last=True,
        num_workers=workers,
        pin_memory=pin,
        generator=generator,
        persistent_workers=False,
    )


def val_loader(dataset: Dataset, batch_size: int, rank: int, world: int, workers: int, pin: bool) -> DataLoader:
    """This rank's exact shard of the validation set (items rank, rank + world, ...), in order."""
    shard = Subset(dataset, list(range(rank, len(dataset), world))) if world > 1 else dataset
    return DataLoader(LoadingNamed(shard), batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
