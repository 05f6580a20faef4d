"""training/data.py's per-sample augmentation seeds (helper-264, LOADER_SEEDING 3): each training sample augmented
from (seed, epoch, rank, its position in the rank's order), whichever process loads it, the main process's
generators left as they were."""

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from masksub_kernels.train import main
from masksub_kernels.training import data as data_mod
from masksub_kernels.training import engine

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2"]  # fmt: skip
QUICK = ["--batch-size", "64", "--warmup-epochs", "0", "--no-progress", "--limit-batches", "3"]


class _GlobalDraws(Dataset):
    """Each item: its index and one draw from each global generator timm's transforms use (torch, Python, NumPy)."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        draws = [float(torch.rand(())), random.random(), float(np.random.rand())]  # noqa: NPY002
        return torch.tensor(draws, dtype=torch.float64), index


def _batches(dataset, workers, count=3, epoch=0, seed=5, rank=0, world=1, repeats=0, between=None):
    loader = data_mod.train_loader(dataset, 8, epoch, seed, rank, world, workers, False, repeats)
    batches = []
    for images, labels in loader:
        batches.append((images, labels))
        if between is not None:
            between(len(batches))
        if len(batches) == count:
            return batches
    return batches


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b))


@pytest.fixture(scope="module")
def digits():
    return data_mod.build_datasets(None, 16).train


# Fails before (LOADER_SEEDING 2): with --workers 0 the shifts came from the main process's torch generator, with
# workers from theirs; --workers 4 and 8 trained differently too.
def test_digits_batches_are_the_same_for_any_worker_count(digits):
    first = _batches(digits, 0)
    assert _equal(first, _batches(digits, 2)) and _equal(first, _batches(digits, 1))
    assert not torch.equal(first[0][0], _batches(digits, 0, epoch=1)[0][0])  # another epoch, other shifts


def test_transforms_on_the_global_generators_draw_the_same_for_any_worker_count():
    first = _batches(_GlobalDraws(), 0)
    assert _equal(first, _batches(_GlobalDraws(), 2))
    draws = torch.cat([images for images, _ in first])
    assert len(set(draws[:, 1].tolist())) == len(draws) and len(set(draws[:, 2].tolist())) == len(draws)


def _states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()  # noqa: NPY002


def _same_states(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))


# Fails before: the digits' shifts drew from the main process's torch generator (timm's transforms, with --workers 0,
# from its torch / Python / NumPy ones: Mixup's stream too), which the model draws from (dropout, MaskSub's masks).
@pytest.mark.parametrize("name", ["digits", "global"])
def test_workers_0_leaves_the_main_process_generators_as_they_were(digits, name):
    dataset = digits if name == "digits" else _GlobalDraws()
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)  # noqa: NPY002
    before = _states()
    batches = _batches(dataset, 0)
    assert _same_states(before, _states())
    # and the samples do not depend on what the main process draws, or reseeds, between batches
    assert _equal(batches, _batches(dataset, 0, between=lambda n: torch.manual_seed(100 + n)))
    assert _equal(batches, _batches(dataset, 0, between=lambda n: (torch.rand(n), random.random(), np.random.rand())))  # noqa: NPY002


class _FailsAt(_GlobalDraws):
    def __getitem__(self, index):
        item = super().__getitem__(index)  # (the sample's draws made: the generators moved)
        if index == 5:
            raise OSError("a corrupt image")
        return item


# kills _global_rngs_kept's restore outside a `finally` (helper-266): a sample that raises in the main process left
# its seeded generators in place of the caller's
def test_workers_0_puts_the_generators_back_when_a_sample_raises():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)  # noqa: NPY002
    before = _states()
    with pytest.raises(OSError, match="a corrupt image"):
        _batches(_FailsAt(), 0, count=3)
    assert _same_states(before, _states())


# A key of the dataset index (not the position) would augment --aug-repeats' copies of an image alike on one rank.
@pytest.mark.parametrize("name", ["digits", "global"])
def test_aug_repeats_copies_on_one_rank_differ(name):
    images = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    shifted = data_mod.DigitsDataset(images, torch.arange(24), shift=8)  # 17 x 17 shifts, labelled by index
    images, index = (
        torch.cat(t) for t in zip(*_batches(shifted if name == "digits" else _GlobalDraws(), 0, repeats=3))
    )
    copies = [(a, b) for a in range(len(index)) for b in range(a + 1, len(index)) if index[a] == index[b]]
    assert len(copies) >= 4
    assert all(not torch.equal(images[a], images[b]) for a, b in copies)


def test_ranks_and_seeds_draw_other_augmentations():
    base = torch.cat([x for x, _ in _batches(_GlobalDraws(), 0, rank=0, world=2, count=1)])
    for kwargs in ({"rank": 1}, {"seed": 6, "rank": 0}, {"epoch": 1, "rank": 0}):
        other = torch.cat([x for x, _ in _batches(_GlobalDraws(), 0, world=2, count=1, **kwargs)])
        assert not set(base[:, 0].tolist()) & set(other[:, 0].tolist()), kwargs


# Fails before: MaskSub drew its mask seed from the torch generator that drew the digits' shifts, so from each
# epoch's second batch on its run saw other shifts than the baseline's of the same seed. Mixup (NumPy, the main
# process) and the batch order were already paired; the step receives the same mixed images and targets.
def test_a_seeds_baseline_and_masksub_runs_train_on_the_same_batches(tmp_path, monkeypatch):
    seen = []
    real = engine.train_one_epoch

    def recording(step, *args, **kwargs):
        def recorded(images, target, *a, **k):
            seen[-1].append((images.clone(), target.clone()))
            return step(images, target, *a, **k)

        return real(recorded, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", recording)
    runs = {}
    for arm in ([], ["--baseline"]):
        seen.append([])
        out = str(tmp_path / f"run{len(seen)}")
        argv = [*TINY_VIT, *QUICK, "--epochs", "1", "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.1"]
        assert main([*argv, *arm, "--output", out]) == 0
        runs[bool(arm)] = seen[-1]
    assert len(runs[True]) == 3 and _equal(runs[True], runs[False])


# Fails before: another --workers was another run (noted on resume). Now a resume with another count continues the
# uninterrupted run bit for bit, without a note.
def test_a_resume_with_another_worker_count_is_the_uninterrupted_run(tmp_path, capsys):
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--keep-epoch-checkpoints", "--output", whole]) == 0
    capsys.readouterr()
    argv = [*TINY_VIT, *QUICK, "--epochs", "2", "--workers", "2", "--output", resumed]
    assert main([*argv, "--resume", os.path.join(whole, "epoch-1.pth")]) == 0
    assert "other options" not in capsys.readouterr().err
    a, b = (torch.load(os.path.join(d, "last.pth"), weights_only=False)["module"] for d in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# timm's transforms (RandomResizedCrop, flip, RandAugment, erasing) draw from no generator but the three seeded ones.
def test_an_image_folders_timm_transforms_draw_the_same_for_any_worker_count(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from masksub_kernels.training.augment import AUG_OPTIONS, build_transforms

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(tmp_path / split / label)
            for i in range(6):
                pixels = (torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / label / f"{i}.png")
    args = SimpleNamespace(**{**AUG_OPTIONS, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.5})
    transforms = build_transforms(args, 16, (0.5,) * 3, (0.5,) * 3)
    train = data_mod.build_datasets(str(tmp_path), 16, 3, transforms=transforms).train
    first = _batches(train, 0, count=1)
    assert _equal(first, _batches(train, 2, count=1))
    assert not _equal(first, _batches(train, 0, count=1, seed=6))
