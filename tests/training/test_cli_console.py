"""What masksub-train says on the console (helper-295): the first line names the MaskSub family and what its
sub-branch does (or --baseline's plain training), the backend and the device -- before, only log.json's
meta.family / meta.backend did."""

import json
import os
import warnings
from types import SimpleNamespace

import pytest
from _models import tiny_resnet, tiny_swin, tiny_vit
from test_cli_more import TINY_VIT

from masksub_kernels.train import main
from masksub_kernels.training import MaskSub
from masksub_kernels.training.families import describe_sub_branch

ONE_STEP = ["--epochs", "1", "--limit-batches", "1", "--warmup-epochs", "0"]


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ([], "masksub-train: MaskSub family vit (token drop: keep 8 of 16 tokens), backend torch on cpu"),
        (["--mask-ratio", "0.75"], "masksub-train: MaskSub family vit (token drop: keep 4 of 16 tokens), backend"),
        (
            ["--variant", "path", "--mask-ratio", "0.2"],
            "masksub-train: MaskSub family vit (PathSub: drop-path at rate 0.2 in",
        ),
        (["--baseline"], "masksub-train: --baseline (plain training, no MaskSub sub-branch), backend torch on cpu"),
    ],
)
def test_the_first_line_names_the_family_sub_branch_and_backend(tmp_path, capsys, extra, line):
    assert main([*TINY_VIT, *ONE_STEP, *extra, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(line), out
    assert out[1].startswith("epoch 1/1:")
    with open(tmp_path / "log.json") as f:
        meta = json.load(f)["meta"]
    assert meta["backend"] == "torch" and meta["family"] == (None if "--baseline" in extra else "vit")


def test_the_grid_families_and_the_fallback_in_words():
    from timm.models.mlp_mixer import MlpMixer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixer = MaskSub(MlpMixer(num_classes=3, img_size=64, patch_size=16, num_blocks=1, embed_dim=8), mask_ratio=0.5)
    assert describe_sub_branch(MaskSub(tiny_swin(), mask_ratio=0.5), 64) == (
        "swin (mask token on 2 of 4 stage-1 cells of 8 x 8 tokens)"
    )
    assert describe_sub_branch(MaskSub(tiny_resnet(), mask_ratio=0.75, cell_size=16), 64) == (
        "pixel (grid cells: 12 of 16 cells of 16 x 16 pixels set to 0)"
    )
    assert describe_sub_branch(mixer, 64) == (
        "pixel (grid cells: 2 of 4 cells of 32 x 32 pixels set to 0; the fallback for a model that is not a CNN)"
    )
    # a ViT's patch dropout runs before the selection: the sub-branch keeps a share of what it left
    assert describe_sub_branch(MaskSub(tiny_vit(patch_drop_rate=0.25), mask_ratio=0.5), 32) == (
        "vit (token drop: keep 6 of 12 tokens that its patch dropout keeps of 16)"
    )


def _interrupt_on_call(monkeypatch, module, name: str, call: int, before=None) -> None:
    """``module.name`` raises KeyboardInterrupt (a Ctrl-C) on its ``call``-th call (from 1), after ``before(*a)``."""
    real, calls = getattr(module, name), []

    def patched(*a, **k):
        calls.append(1)
        if len(calls) == call:
            if before is not None:
                before(*a)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, patched)


def _stopped(argv, capsys) -> str:
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_ctrl_c_says_which_epoch_stopped_and_which_checkpoint_to_resume(tmp_path, monkeypatch, capsys):
    from masksub_kernels.training import engine, run_setup

    out, argv = tmp_path / "run", [*TINY_VIT, "--epochs", "3", "--limit-batches", "1", "--warmup-epochs", "0"]
    last = out / "last.pth"
    _interrupt_on_call(monkeypatch, engine, "train_one_epoch", 3)
    assert _stopped([*argv, "--output", str(out)], capsys) == (
        f"masksub-train: interrupted in epoch 3; {last} holds epoch 2: to continue, rerun the command with --resume "
        f"{last}"
    )
    # the resumed run, stopped before it read the checkpoint, then in its first epoch: the checkpoint holds epoch 2
    monkeypatch.undo()
    _interrupt_on_call(monkeypatch, run_setup, "_create_model", 1)
    assert _stopped([*argv, "--resume", str(last)], capsys) == (
        f"masksub-train: interrupted before training; {last} is unchanged: to continue, rerun the command"
    )
    monkeypatch.undo()
    _interrupt_on_call(monkeypatch, engine, "train_one_epoch", 1)
    assert _stopped([*argv, "--resume", str(last)], capsys) == (
        f"masksub-train: interrupted in epoch 3; {last} holds epoch 2: to continue, rerun the command with --resume "
        f"{last}"
    )


def test_a_ctrl_c_before_any_checkpoint_or_while_one_is_written(tmp_path, monkeypatch, capsys):
    from masksub_kernels.training import checkpoint, engine, run_setup

    argv = [*TINY_VIT, "--epochs", "3", "--limit-batches", "1", "--warmup-epochs", "0"]
    _interrupt_on_call(monkeypatch, engine, "train_one_epoch", 1)
    assert _stopped([*argv, "--output", str(tmp_path / "a")], capsys) == (
        "masksub-train: interrupted in epoch 1; no checkpoint written yet"
    )
    _interrupt_on_call(monkeypatch, run_setup, "_create_model", 1)
    assert _stopped([*argv, "--output", str(tmp_path / "b")], capsys) == (
        "masksub-train: interrupted before training; no checkpoint written yet"
    )
    monkeypatch.undo()
    # stopped while epoch 2's last.pth is written (half a .tmp file, removed): last.pth holds epoch 1
    last = tmp_path / "c" / "last.pth"
    _interrupt_on_call(monkeypatch, checkpoint, "save_checkpoint", 2, lambda path, state: open(f"{path}.tmp", "wb"))
    assert _stopped([*argv, "--output", str(tmp_path / "c")], capsys) == (
        f"masksub-train: interrupted while saving epoch 2; {last} holds epoch 1: to continue, rerun the command with "
        f"--resume {last}"
    )
    assert sorted(os.listdir(tmp_path / "c")) == ["last.pth", "log.csv", "log.json"]
    monkeypatch.undo()
    # stopped while --keep-epoch-checkpoints' epoch-1.pth is written: its .tmp removed, last.pth holds epoch 1
    last = tmp_path / "d" / "last.pth"
    _interrupt_on_call(monkeypatch, checkpoint, "save_checkpoint", 2, lambda path, state: open(f"{path}.tmp", "wb"))
    assert _stopped([*argv, "--output", str(tmp_path / "d"), "--keep-epoch-checkpoints"], capsys) == (
        f"masksub-train: interrupted while saving epoch-1.pth (epoch 1's copy); {last} holds epoch 1: to continue, "
        f"rerun the command with --resume {last}"
    )
    assert sorted(os.listdir(tmp_path / "d")) == ["last.pth"]


def test_a_ctrl_c_shows_its_traceback_under_masksub_traceback(tmp_path, monkeypatch, capsys):
    # a user presses Ctrl-C on a hung run to see where it was: MASKSUB_TRACEBACK=1 prints the traceback too
    from masksub_kernels.training import engine

    argv = [*TINY_VIT, "--epochs", "1", "--limit-batches", "1", "--output", str(tmp_path / "o")]
    _interrupt_on_call(monkeypatch, engine, "train_one_epoch", 1)
    monkeypatch.setenv("MASKSUB_TRACEBACK", "1")
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback (most recent call last)" in err and "in patched" in err and "KeyboardInterrupt" in err
    assert err.splitlines()[-1] == "masksub-train: interrupted in epoch 1; no checkpoint written yet"


# kills cl5: _what_runs' `if s.world > 1 else ""` dropped (' x 1 processes' on every single-process run); the
# DDP case is otherwise only run by the slow torchrun tests
def test_the_first_line_counts_the_processes_of_a_distributed_run():
    import torch

    from masksub_kernels.training.cli import _what_runs

    def line(world):
        return _what_runs(SimpleNamespace(ms=None, world=world, backend="triton", device=torch.device("cuda", 0)))

    assert line(1) == "--baseline (plain training, no MaskSub sub-branch), backend triton on cuda"
    assert line(4) == "--baseline (plain training, no MaskSub sub-branch), backend triton on cuda x 4 processes"


# kills fa8: describe_sub_branch's Swin grid `size[1] // patch[1]` -> `size[0] // patch[1]` (a non-square image's
# cells counted from its height twice); the pixel family's non-square count too
def test_the_sub_branch_in_words_for_non_square_images():
    from _models import tiny_resnet, tiny_swin

    from masksub_kernels.training import MaskSub
    from masksub_kernels.training.families import describe_sub_branch

    swin = MaskSub(tiny_swin(img_size=(64, 32)), mask_ratio=0.5)
    assert describe_sub_branch(swin, (64, 32)) == "swin (mask token on 1 of 2 stage-1 cells of 8 x 8 tokens)"
    cnn = MaskSub(tiny_resnet(), mask_ratio=0.5, cell_size=16)
    assert describe_sub_branch(cnn, (64, 32)) == "pixel (grid cells: 4 of 8 cells of 16 x 16 pixels set to 0)"
