"""masksub-train's data wiring: what setup builds from the options (Mixup / CutMix and the label smoothing, --no-aug,
the loader processes, the normalisation) reaches every epoch's loader and step (helper-218's mutation audit of the
data and augmentation pipeline: each test names the mutant it kills)."""

import os

import pytest
from test_cli_more import TINY_VIT

from masksub_kernels.train import build_parser


# Kills run_setup.py `args.mixup_smoothing = 0.0 if binarised else args.smoothing` -> `args.smoothing`: with BCE's
# --bce-target-thresh, a target Mixup smoothed has every entry >= eps / C > 0.0, so the threshold would make every
# class positive (an all-ones target); the loss smooths after binarising instead. And -> `0.0` (never smoothed in
# Mixup): CE with Mixup gets its --smoothing from Mixup's soft targets alone (the loss's is 0 then).
@pytest.mark.parametrize(
    ("flags", "in_mixup", "in_loss"),
    [(["--loss", "bce", "--bce-target-thresh", "0.0"], 0.0, 0.1), (["--loss", "ce"], 0.1, 0.0)],
)
def test_mixups_label_smoothing_is_off_where_bce_binarises(tmp_path, flags, in_mixup, in_loss):
    from masksub_kernels.training.run_setup import setup

    argv = [*TINY_VIT, "--mixup", "0.8", "--cutmix", "1.0", "--smoothing", "0.1", *flags, "--output", str(tmp_path)]
    s = setup(build_parser().parse_args(argv))
    assert s.mixup.label_smoothing == in_mixup and s.ms.label_smoothing == in_loss


# Kills run_setup.py setup's `mixing = args.mixup > 0 or args.cutmix > 0` -> `args.mixup > 0`: CutMix alone (the
# ResNet RSB recipe before 2026-12-06: --mixup 0.0 --cutmix 1.0) is a Mixup object too, and takes the smoothing off
# the loss.
def test_cutmix_alone_builds_timms_mixup(tmp_path):
    from masksub_kernels.training.run_setup import setup

    argv = [*TINY_VIT, "--mixup", "0.0", "--cutmix", "1.0", "--smoothing", "0.1", "--output", str(tmp_path)]
    s = setup(build_parser().parse_args(argv))
    assert s.mixing and (s.mixup.mixup_alpha, s.mixup.cutmix_alpha, s.mixup.label_smoothing) == (0.0, 1.0, 0.1)
    assert s.ms.label_smoothing == 0.0


# Kills run_setup.py setup's `augment=not args.no_aug` -> True, in build_transforms' call (an ImageFolder run's
# --no-aug trained with random crops, flips and erasing) and in build_datasets' (the digits still shifted).
def test_no_aug_reaches_the_transforms_and_the_digits(tmp_path, monkeypatch):
    from masksub_kernels.training import augment
    from masksub_kernels.training.run_setup import setup

    augments = []
    real = augment.build_transforms
    monkeypatch.setattr(augment, "build_transforms", lambda *a, **k: augments.append(k["augment"]) or real(*a, **k))
    s = setup(build_parser().parse_args([*TINY_VIT, "--no-aug", "--output", str(tmp_path)]))
    assert augments == [False] and s.data.train.shift == 0


# Kills run_setup.py `(0 if args.data_dir is None else 4)` -> `else 0`: an image folder's default is 4 loader
# processes on every machine (the count decides who draws each batch's augmentations: helper-118), the digits none.
def test_an_image_folder_loads_with_four_workers_by_default(tmp_path):
    from PIL import Image

    from masksub_kernels.training.run_setup import setup

    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / label)
            Image.new("RGB", (20, 20), (40, 80, 120)).save(tmp_path / "data" / split / label / "0.png")
    argv = [*TINY_VIT, "--data-dir", str(tmp_path / "data"), "--batch-size", "2", "--output", str(tmp_path / "o")]
    assert setup(build_parser().parse_args(argv)).workers == 4
    assert setup(build_parser().parse_args([*TINY_VIT, "--output", str(tmp_path / "d")])).workers == 0


# Kills cli.py _epoch's `args.aug_repeats` dropped from train_loader's call: setup counted the RepeatAugSampler's
# batches (20 of 64 from 1,437 digits) but the epochs drew a plain shuffle, no image repeated.
def test_aug_repeats_reaches_each_epochs_loader(tmp_path, monkeypatch):
    from masksub_kernels.train import main
    from masksub_kernels.training import data as data_mod

    samplers = []
    real = data_mod.train_loader
    monkeypatch.setattr(data_mod, "train_loader", lambda *a: samplers.append(real(*a).sampler.order) or real(*a))
    argv = [*TINY_VIT, "--aug-repeats", "3", "--epochs", "1", "--limit-batches", "1", "--output", str(tmp_path)]
    assert main(argv) == 0
    assert [type(s).__name__ for s in samplers] == ["RepeatAugSampler"] and samplers[0].num_repeats == 3


# Kills cli.py _epoch's `mixup=s.mixup` -> None: setup built timm's Mixup (and took the smoothing off the loss) but
# the epochs trained on unmixed, unsmoothed targets; every check still passed.
def test_each_epoch_mixes_with_setups_mixup(tmp_path, monkeypatch):
    from timm.data import Mixup

    from masksub_kernels.train import main
    from masksub_kernels.training import engine

    mixups = []
    real = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: mixups.append(k["mixup"]) or real(*a, **k))
    argv = [*TINY_VIT, "--mixup", "0.8", "--cutmix", "1.0", "--epochs", "1", "--limit-batches", "1",
            "--output", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert len(mixups) == 1 and isinstance(mixups[0], Mixup) and mixups[0].cutmix_alpha == 1.0
