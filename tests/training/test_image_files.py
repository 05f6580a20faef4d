"""Unreadable image files in an ImageFolder are the command's usage error naming them (helper-295: timm's
`RuntimeError: Failed to load N consecutive samples` traceback, exit status 1, after a whole training epoch and with
nothing saved); validation's headers are checked before the first epoch."""

import os
from types import SimpleNamespace

import pytest
from PIL import Image
from test_cli_more import TINY_VIT

from masksub_kernels.train import main
from masksub_kernels.training import cli, engine
from masksub_kernels.training.image_files import UnreadableImages

RUN = [*TINY_VIT, "--epochs", "1", "--batch-size", "2", "--warmup-epochs", "0"]


def _folder(root, per_class: int = 4) -> str:
    for split in ("train", "val"):
        for label, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
            os.makedirs(root / split / label)
            for i in range(per_class):
                Image.new("RGB", (20, 20), colour).save(root / split / label / f"{i}.png")
    return str(root)


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_file_in_val_that_is_no_image_stops_the_run_before_an_epoch(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path / "data")
    bad = os.path.join(data, "val", "b", "2.png")
    with open(bad, "wb") as f:
        f.write(b"<html>not found</html>")
    epochs = []
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: epochs.append(1))
    err = _error([*RUN, "--data-dir", data, "--workers", "0", "--output", str(tmp_path / "o")], capsys)
    assert err == (
        f"masksub-train: error: an image file in {os.path.join(data, 'val')!r} that Pillow cannot open (checked "
        f"before training): {bad!r} (UnidentifiedImageError: cannot identify image file): replace or delete it"
    )
    assert epochs == []


def test_an_image_cut_short_in_val_names_it_and_the_checkpoint_to_resume(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path / "data")
    bad = os.path.join(data, "val", "a", "1.png")
    real_save = cli._save

    def save_then_truncate(*a):  # the file breaks after epoch 1 (its header stays readable)
        real_save(*a)
        with open(bad, "rb") as f:
            head = f.read()
        with open(bad, "wb") as f:
            f.write(head[: len(head) // 2])

    monkeypatch.setattr(cli, "_save", save_then_truncate)
    out = tmp_path / "o"
    argv = [*RUN, "--epochs", "2", "--data-dir", data, "--workers", "0", "--output", str(out)]
    last = out / "last.pth"
    assert _error(argv, capsys) == (
        f"masksub-train: error: unreadable image file: {bad!r} (OSError: image file is truncated): replace or delete "
        f"it; {last} holds epoch 1: to continue, rerun the command with --resume {last}"
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_of_unreadable_training_images_names_them(tmp_path, capsys, workers):
    data = _folder(tmp_path / "data", per_class=6)
    for label in ("a", "b"):
        for i in range(6):
            with open(os.path.join(data, "train", label, f"{i}.png"), "wb") as f:
                f.write(b"")
    err = _error([*RUN, "--data-dir", data, "--workers", str(workers), "--output", str(tmp_path / "o")], capsys)
    assert err.startswith(
        "masksub-train: error: unreadable image files, 10 in a row (timm skips an unreadable training image, up to 9 "
        f"in a row): '{data}{os.sep}train{os.sep}"
    ), err
    assert err.count("(UnidentifiedImageError: cannot identify image file)") == 5
    assert err.endswith("; and 5 more: replace or delete them")
    assert not os.path.exists(tmp_path / "o" / "last.pth")


def test_the_message_survives_a_loader_workers_reraise():
    inner = "unreadable image file: '/d/val/a/1.png' (OSError: image file is truncated): replace or delete it"
    wrapped = (
        "Caught UnreadableImages in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File "
        f'"x.py", line 1, in f\nmasksub_kernels.training.image_files.UnreadableImages: {inner}\n'
    )
    assert str(UnreadableImages(wrapped)) == inner
    assert str(UnreadableImages(inner)) == inner


def test_a_train_class_folder_without_images_is_refused(tmp_path, capsys):
    # helper-295: timm made classes of the folders holding images only: the model was built for the others, silently
    data = _folder(tmp_path / "data")
    os.makedirs(os.path.join(data, "train", "c"))
    with open(os.path.join(data, "train", "c", "notes.txt"), "w") as f:
        f.write("not an image")
    os.makedirs(os.path.join(data, "train", ".cache"))  # hidden, empty: no class
    assert _error([*RUN, "--data-dir", data, "--output", str(tmp_path / "o")], capsys) == (
        f"masksub-train: error: {os.path.join(data, 'train')!r} has class folders that hold no images timm reads: "
        "['c'] (timm would drop them and build the model for the other classes): add their images, or delete the "
        "folders"
    )


def test_a_val_without_a_class_s_images_gets_a_note(tmp_path, capsys):
    from masksub_kernels.training.data import build_datasets

    data = _folder(tmp_path / "data")
    for label in ("c", "d"):
        os.makedirs(os.path.join(data, "train", label))
        Image.new("RGB", (20, 20)).save(os.path.join(data, "train", label, "0.png"))
    os.makedirs(os.path.join(data, "val", "c"))  # empty; d: no folder
    val = os.path.join(data, "val")
    note = (
        f"{val!r} holds no images of 2 of the 4 classes: ['c', 'd'] (empty folders: ['c']): top-1 / top-5 are over "
        "the other classes' images"
    )
    assert build_datasets(data, 16, 3).notes == [note]
    assert build_datasets(_folder(tmp_path / "full"), 16, 3).notes == []
    assert main([*RUN, "--limit-batches", "1", "--data-dir", data, "--output", str(tmp_path / "o")]) == 0
    assert f"masksub-train: note: {note}\n" in capsys.readouterr().err


def test_val_headers_are_opened_on_workers_threads_and_failures_sorted_by_path(tmp_path, monkeypatch):
    # ~150 us an image on one thread: --workers threads open them; the message is the same whichever finishes first
    from types import SimpleNamespace

    from masksub_kernels.training import image_files

    sizes = []

    class Pool(image_files.ThreadPoolExecutor):
        def __init__(self, max_workers):
            sizes.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(image_files, "ThreadPoolExecutor", Pool)
    paths = []
    for name in ("c", "a", "b"):
        path = tmp_path / "val" / "k" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"no image")
        paths.append((str(path), 0))
    dataset = SimpleNamespace(reader=SimpleNamespace(samples=paths))
    with pytest.raises(UnreadableImages) as info:
        image_files.check_image_headers(dataset, workers=3)
    named = [str(tmp_path / "val" / "k" / f"{n}.png") for n in "abc"]
    message = str(info.value)
    assert [message.index(repr(p)) for p in named] == sorted(message.index(repr(p)) for p in named)
    image_files.check_image_headers(SimpleNamespace(reader=SimpleNamespace(samples=[])), workers=0)
    assert sizes == [3]
    sizes.clear()
    with pytest.raises(UnreadableImages):
        image_files.check_image_headers(dataset, workers=0)
    assert sizes == [1]


# kills if1: image_files._message `if total > SHOWN` -> `if total >= SHOWN + 2` (6 files: the sixth not counted)
def test_a_message_of_one_file_more_than_shown_counts_it():
    from masksub_kernels.training.image_files import SHOWN, _message

    failed = [(f"/d/{i}.png", "OSError: x") for i in range(SHOWN + 1)]
    message = _message(failed, len(failed), "unreadable image files")
    assert message.count("OSError: x") == SHOWN
    assert message.endswith("; and 1 more: replace or delete them")
    assert not _message(failed[:SHOWN], SHOWN, "w").endswith("more: replace or delete them")


# kills if3: check_image_headers `(samples or [])[rank::world]` -> `[rank:]` (each rank opens every file after its
# first: the same bad file reported by several ranks, world x the work)
def test_each_rank_opens_the_headers_of_its_own_share_only(tmp_path):
    from masksub_kernels.training.image_files import UnreadableImages, check_image_headers

    paths = []
    for i in range(4):
        path = str(tmp_path / "val" / "a" / f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)
        paths.append(path)
    with open(paths[2], "wb") as f:  # item 2: rank 0's of 2
        f.write(b"not an image")
    dataset = SimpleNamespace(reader=SimpleNamespace(samples=[(p, 0) for p in paths]))
    check_image_headers(dataset, rank=1, world=2)  # items 1, 3: readable
    with pytest.raises(UnreadableImages, match="an image file in"):
        check_image_headers(dataset, rank=0, world=2)


# kills if6: load_item `index, dataset = dataset.indices[index], dataset.dataset` -> `dataset = dataset.dataset`
# (a Subset's item -- val_loader's shard of a rank when world > 1 -- named the file at the shard's position in the
# whole set: another, readable, file)
def test_an_unreadable_image_of_a_subset_is_named_by_its_own_path(tmp_path):
    from timm.data import ImageDataset
    from torch.utils.data import Subset

    from masksub_kernels.training.image_files import UnreadableImages, load_item

    for i in range(4):
        os.makedirs(tmp_path / "a", exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "a" / f"{i}.png")
    bad = str(tmp_path / "a" / "3.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    dataset = ImageDataset(str(tmp_path))
    dataset._max_retries = 1  # as data.py's val
    shard = Subset(dataset, [1, 3])  # rank 1 of 2
    load_item(shard, 0)
    with pytest.raises(UnreadableImages) as info:
        load_item(shard, 1)
    assert str(info.value) == (
        f"unreadable image file: {bad!r} (UnidentifiedImageError: cannot identify image file): replace or delete it"
    )


# helper-343's mutation audit of image_files.py
def _image_dataset(root, bad: tuple[int, ...], count: int = 4):
    """timm's ImageDataset of ``count`` images in root/a, those at ``bad`` no images; one try (as data.py's val)."""
    from timm.data import ImageDataset

    os.makedirs(root / "a", exist_ok=True)
    for i in range(count):
        Image.new("RGB", (4, 4)).save(root / "a" / f"{i}.png")
        if i in bad:
            (root / "a" / f"{i}.png").write_bytes(b"not an image")
    dataset = ImageDataset(str(root))
    dataset._max_retries = 1
    return dataset


# kills load_item's `if not str(exc).startswith("Failed to load "): raise` left out (a transform's RuntimeError
# reported as unreadable image files: readable files named, "read on a retry", the real error hidden) and its
# `if not samples: raise` left out (a dataset without timm's file list: a TypeError in place of its own error)
def test_load_item_converts_timms_retries_only_and_reraises_any_other_error(tmp_path):
    from torch.utils.data import Dataset

    from masksub_kernels.training.image_files import load_item

    dataset = _image_dataset(tmp_path, bad=())

    def broken(image):
        raise RuntimeError("a transform's own error")

    dataset.transform = broken
    with pytest.raises(RuntimeError, match=r"^a transform's own error$"):
        load_item(dataset, 0)

    class NoFiles(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise RuntimeError("Failed to load 10 consecutive samples")

    with pytest.raises(RuntimeError, match=r"^Failed to load 10 consecutive samples$"):
        load_item(NoFiles(), 0)


# kills load_item's `while isinstance(dataset, Subset)` -> `if` (a Subset of a Subset: the file at the outer
# Subset's index named, a readable one) and _samples' `while` -> `if` (no file list found: timm's RuntimeError)
def test_an_unreadable_image_under_nested_subsets_is_named_by_its_own_path(tmp_path):
    from torch.utils.data import Subset

    from masksub_kernels.training.image_files import load_item

    dataset = _image_dataset(tmp_path, bad=(3,))
    nested = Subset(Subset(dataset, [1, 2, 3]), [2])  # item 0: the inner Subset's 2, the dataset's 3
    with pytest.raises(UnreadableImages) as info:
        load_item(nested, 0)
    bad = str(tmp_path / "a" / "3.png")
    assert str(info.value) == (
        f"unreadable image file: {bad!r} (UnidentifiedImageError: cannot identify image file): replace or delete it"
    )


# kills check_image_headers' `"an image file" if len(failed) == 1` -> `<= 2` (two files called "an image file")
def test_two_unreadable_val_headers_are_counted(tmp_path):
    from masksub_kernels.training.image_files import check_image_headers

    dataset = _image_dataset(tmp_path / "val", bad=(0, 2))
    with pytest.raises(UnreadableImages, match=r"^2 image files in .* replace or delete them$"):
        check_image_headers(dataset)
