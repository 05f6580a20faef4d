"""masksub-train as a new user meets it: every mistake is a one-line error (exit status 2) or a clear exception
from the API, never a traceback or a silently wrong run; --resume with a new schedule. (The README's code blocks run in
tests/test_docs_examples.py.)"""

import argparse
import json
import os

import pytest
import torch

pytest.importorskip("sklearn", reason="the default dataset (digits) comes from scikit-learn")

from _models import tiny_vit

from masksub_kernels.train import main
from masksub_kernels.training import rank_zero
from masksub_kernels.training import resume as resume_mod
from masksub_kernels.training.run_setup import UsageError

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2", "--img-size", "16"]  # fmt: skip
TINY_SWIN = ["--model", "swin_tiny_patch4_window7_224", "--model-kwargs", "img_size=32", "patch_size=4",
             "window_size=4", "embed_dim=16", "depths=(1,1)", "num_heads=(1,2)", "--img-size", "32"]  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 1437 digits / 256 = 5 optimizer updates per epoch: cheap runs
QUICK = ["--batch-size", "256", "--warmup-epochs", "0", "--no-progress"]


def _error(tmp_path, capsys, *args: str) -> str:
    assert main([*args, "--output", str(tmp_path / "err"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("masksub-train: error:") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clip-grad", "-1"], "--clip-grad must be in (0.0, inf), got -1.0"),
        (["--clip-grad", "0"], "--clip-grad must be in (0.0, inf)"),
        (["--lr", "-1"], "--lr must be in (0.0, inf)"),
        (["--lr", "nan"], "--lr must be"),
        (["--smoothing", "1.5"], "--smoothing must be in [0.0, 1.0)"),
        (["--cell-size", "0"], "--cell-size must be in [1, inf)"),
        (["--mask-ratio", "1.0", "--baseline"], "--mask-ratio must be in [0.0, 1.0)"),
        (["--epochs", "0"], "--epochs must be in [1, inf)"),
        (["--batch-size", "0"], "--batch-size must be"),
        (["--grad-accum-steps", "0"], "--grad-accum-steps must be"),
        (["--workers", "-1"], "--workers must be in [0, inf)"),
        (["--weight-decay", "-0.05"], "--weight-decay must be in [0.0, inf)"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be"),
        (["--drop-path", "1.0"], "--drop-path must be in [0.0, 1.0)"),
        (["--img-size", "0"], "--img-size must be in [1, inf), got 0"),  # helper-135: tracebacks before
        (["--seed", "-99999999999999"], "--seed must be in (-8796093022208, 8796093022208), got -99999999999999"),
        (["--seed", "99999999999999"], "--seed must be in (-8796093022208, 8796093022208)"),
        (["--drop-path", "0.1", *TINY_VIT[2:8], "drop_path_rate=0.2"], "--drop-path 0.1 and --model-kwargs drop_path_"),
        ([*TINY_VIT[2:8], "num_classes=5"], "--model-kwargs num_classes=5, but the data has 10 classes"),
        (["--mixup-prob", "2"], "--mixup-prob must be in [0.0, 1.0]"),
        (["--loss", "bce", "--bce-target-thresh", "1.0"], "--bce-target-thresh must be in [0.0, 1.0)"),
        (["--baseline", "--bce-target-thresh", "0.0"], "needs --loss bce"),
        (["--device", "gpu"], "is not a torch device"),
        (["--opt", "adamx"], "--opt adamx: Optimizer adamx not found"),
        # settings the optimizer does not take: timm drops them silently
        (["--opt", "sgd", "--opt-betas", "0.5", "0.6"], "--opt sgd takes no --opt-betas (timm would ignore it)"),
        (["--opt", "sgd", "--opt-eps", "0.1"], "--opt sgd takes no --opt-eps"),
        (["--opt", "adamw", "--momentum", "0.5"], "--opt adamw takes no --momentum"),
        (["--opt", "lookahead_adamw", "--momentum", "0.5"], "--opt lookahead_adamw takes no --momentum"),
        (["--opt", "SGD", "--opt-betas", "0.5", "0.6"], "--opt SGD takes no --opt-betas"),  # timm's names: any case
        (["--sched", "plateau"], "--sched plateau: timm's plateau scheduler steps per epoch"),
        (["--cell-size", "4"], "cell_size is an option of the grid masks (swin, pixel); the vit family drops tokens"),
        # what timm asserts when it builds the model: a usage error, not a traceback
        (["--global-pool", "tokn"], "timm cannot build 'vit_tiny_patch16_224' with"),
        (["--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=30", "depth=1", "num_heads=4"], "timm cannot"),
        (["--initial-checkpoint", "."], "initial checkpoint '.' is a directory, not a file"),
        (["--opt-betas", "nan", "0.9"], "--opt-betas takes finite numbers"),
        (["--opt-betas", "0.9", "1.5"], "--opt-betas are two numbers in [0, 1), got [0.9, 1.5]"),
        (["--mean", "nan", "--std", "1"], "--mean takes finite numbers"),
        (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "GPU"),
    ],
)
def test_option_out_of_range(tmp_path, capsys, args, message):
    assert message in _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1", *args)


def test_cnn_and_swin_at_the_digits_default_size_get_a_hint(tmp_path, capsys):
    # 32 px digits: one 32-pixel cell for a CNN, one 8-token cell for Swin at patch 4; r = 0.5 keeps none of one
    err = _error(tmp_path, capsys, "--model", "test_resnet", "--epochs", "1")
    assert "images of 64 x 64 pixels or more, or cell_size=16 (--img-size, --cell-size)" in err
    err = _error(tmp_path, capsys, *TINY_SWIN, "--epochs", "1")
    assert "mask cell(s) of 8 tokens" in err and "cell_size=4" in err
    # a Swin built for another size: the advice's img_size=32 says at once what the cells then need (helper-231: it
    # was advised alone, and the cells refused it next); a baseline has no cells
    built_for_64 = [*TINY_SWIN[:3], "img_size=64", *TINY_SWIN[4:]]
    err = _error(tmp_path, capsys, *built_for_64, "--epochs", "1")
    assert "built for (64, 64) images but the data is 32 x 32: pass --model-kwargs img_size=32 (or --img-size 64); " \
           "but at 32 px the sub-branch's mask cells do not fit: mask_ratio=0.5 keeps none" in err  # fmt: skip
    assert "or cell_size=4 (--img-size, --cell-size)" in err
    err = _error(tmp_path, capsys, *built_for_64, "--epochs", "1", "--cell-size", "4")
    assert err.rstrip().endswith("pass --model-kwargs img_size=32 (or --img-size 64)")  # cells of 4 fit 32 px
    err = _error(tmp_path, capsys, *built_for_64, "--epochs", "1", "--baseline")
    assert err.rstrip().endswith("pass --model-kwargs img_size=32 (or --img-size 64)")


def test_torchrun_with_more_processes_than_gpus(tmp_path, capsys, monkeypatch):
    # rank 1 of 2 on a one-GPU machine, no --device: it used to ask for cuda:1 and fail inside torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ranks = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "t"}
    for key, value in ranks.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(rank_zero, "OPTION_ERROR_WAIT_S", 0.0, raising=False)
    args = [*TINY_VIT, "--epochs", "1", "--output", str(tmp_path / "err"), "--no-progress"]
    assert main(args) == 2 and capsys.readouterr().err == ""  # the same on every rank: local rank 0 prints it
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1")
    assert "2 processes on this machine but 1 GPU(s)" in err and "--nproc_per_node=1" in err


def test_the_bare_command_trains_on_the_digits(tmp_path, capsys):
    # the default model (vit_tiny_patch16_224, built for 224 px) is built at the digits' 32 px; an explicit size that
    # the model does not fit stays an error
    out = str(tmp_path / "bare")
    assert main(["--epochs", "1", "--limit-batches", "1", "--batch-size", "16", "--no-progress", "--output", out]) == 0
    assert (
        "the digits are 32 px: vit_tiny_patch16_224 built with img_size=32 (a 2x2 patch grid" in capsys.readouterr().err
    )
    assert torch.load(f"{out}/last.pth", weights_only=False)["args"]["model_kwargs"] == {"img_size": 32}
    err = _error(tmp_path, capsys, "--epochs", "1", "--img-size", "48")
    assert "the model is built for (224, 224) images but the data is 48 x 48: pass --model-kwargs img_size=48" in err
    # a size its patches do not tile: the advice names the sizes they do (helper-231: img_size=30 was advised, which
    # the 16-pixel patches then refused)
    err = _error(tmp_path, capsys, "--epochs", "1", "--img-size", "30")
    assert "but the data is 30 x 30: --img-size 16 or 32 (its 16-pixel patches tile it) with that --model-kwargs" in err


def test_an_unusable_backend_is_a_usage_error_and_the_log_names_the_one_used(tmp_path, capsys, monkeypatch):
    from masksub_kernels import _backend

    monkeypatch.setattr(_backend, "_requested", None)  # read MASKSUB_BACKEND again, as a new process does
    monkeypatch.setenv("MASKSUB_BACKEND", "bogus")
    assert "MASKSUB_BACKEND: unknown backend 'bogus'" in _error(tmp_path, capsys, *TINY_VIT, "--device", "cpu")
    monkeypatch.setattr(_backend, "_requested", None)
    monkeypatch.delenv("MASKSUB_BACKEND")
    out = str(tmp_path / "ok")
    argv = [*TINY_VIT, "--epochs", "1", "--limit-batches", "1", "--device", "cpu", *QUICK, "--output", out]
    assert main(argv) == 0
    with open(os.path.join(out, "log.json")) as f:
        assert json.load(f)["meta"]["backend"] == "torch"


def test_a_scheduler_timm_does_not_know_or_refuses_for_the_options_is_named(tmp_path, capsys):
    import inspect

    import timm.scheduler.scheduler_factory as factory

    err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1", "--sched", "cosinus")  # timm 1.0.31 raises, 1.0.29 None
    assert "--sched cosinus: Unknown scheduler" in err and "(timm's: cosine, tanh, step, multistep, poly" in err
    if "'none'" in inspect.getsource(factory.create_scheduler_v2):  # (helper-236: a known name, called unknown)
        err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1", "--sched", "none")
        assert "--sched none: timm builds no schedule for it, and the command needs one" in err
    if "wsd" in inspect.getsource(factory.create_scheduler_v2):  # (timm 1.0.29 has no wsd)
        # a name timm knows but refuses for these options: its own reason (helper-234: it was called unknown)
        err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1", "--sched", "wsd", "--warmup-epochs", "0",
                     "--limit-batches", "2")  # fmt: skip
        assert "--sched wsd: wsd schedule requires" in err


def test_an_unknown_scheduler_that_timm_returns_as_none_is_refused(tmp_path, capsys, monkeypatch):
    # timm before 1.0.31 (the GPU machine's 1.0.29) returned None for an unknown name: an AttributeError at step 1
    import timm.scheduler

    monkeypatch.setattr(timm.scheduler, "create_scheduler_v2", lambda *a, **k: (None, 0))
    assert "--sched cosinus: Unknown scheduler" in _error(tmp_path, capsys, *TINY_VIT, "--sched", "cosinus")


def test_world_size_without_torchrun(tmp_path, capsys, monkeypatch):
    # WORLD_SIZE exported by hand, no rendezvous variables: a usage error, not torch's env:// traceback
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1", "--device", "cpu")
    assert "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set: start the processes with torchrun" in err


def test_bad_checkpoints(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*TINY_VIT, *QUICK, "--epochs", "1", "--output", out]) == 0
    last = os.path.join(out, "last.pth")
    wider = [*TINY_VIT[:6], "embed_dim=32", *TINY_VIT[7:]]
    err = _error(tmp_path, capsys, *wider, "--epochs", "2", "--resume", last)
    assert "does not fit this model" in err and "a resume repeats the run's options" in err
    assert "is a MaskSub run: drop --baseline to resume it" in _error(  # (helper-296: was torch's missing keys)
        tmp_path, capsys, *TINY_VIT, "--baseline", "--epochs", "2", "--resume", last
    )
    assert "nothing to train" in _error(tmp_path, capsys, *TINY_VIT, "--epochs", "1", "--resume", last)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in _error(tmp_path, capsys, *TINY_VIT, "--resume", str(garbage))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(last, "rb").read()[:4000])
    err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "2", "--resume", str(truncated))
    assert f"cannot read checkpoint {str(truncated)!r} (a truncated or corrupt file, or not a torch.save file?)" in err
    err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "2", "--resume", out)  # helper-148: "does not exist"
    assert f"checkpoint {out!r} is a directory, not a file (e.g. {last!r})" in err
    # the EMA refusals come before any note (helper-148: a schedule note, then the error)
    err = _error(tmp_path, capsys, *TINY_VIT, *QUICK, "--epochs", "3", "--model-ema", "--resume", last)
    assert "has no EMA weights: resume it without --model-ema" in err and "note" not in err
    torch.save({"weights": 1}, tmp_path / "other.pth")
    assert "is not a masksub-train checkpoint" in _error(
        tmp_path, capsys, *TINY_VIT, "--resume", str(tmp_path / "other.pth")
    )
    # another optimizer's moments, another set of trained parameters: refused by name
    err = _error(tmp_path, capsys, *TINY_VIT, "--epochs", "2", "--opt", "sgd", "--resume", last)
    assert "was trained with --opt adamw: resume it with the same optimizer (got --opt sgd)" in err
    assert main([*TINY_VIT, "--epochs", "2", "--freeze-patch-embed", "--resume", last, "--output", out]) == 2
    err = capsys.readouterr().err  # after the freeze's own line
    assert "error: checkpoint" in err and "was trained otherwise: --freeze-patch-embed False -> True" in err
    assert "a resume repeats the run's options, log.json's meta.command, with --resume added" in err  # helper-270


def test_resume_takes_the_command_lines_optimizer_settings(tmp_path, capsys):
    # optimizer.load_state_dict restores the checkpoint's weight decay, betas, ...: the command line's go back on
    from masksub_kernels.training.cli import build_parser
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    out = str(tmp_path / "run")
    assert main([*TINY_VIT, *QUICK, "--epochs", "1", "--output", out]) == 0
    argv = [*TINY_VIT, *QUICK, "--epochs", "2", "--output", out, "--resume", f"{out}/last.pth"]
    args = build_parser().parse_args([*argv, "--weight-decay", "0.3", "--opt-betas", "0.8", "0.95"])
    s = setup(args)
    saved = [
        g["exp_avg"].clone() for g in torch.load(f"{out}/last.pth", weights_only=False)["optimizer"]["state"].values()
    ]
    assert resume(args, s)[:2] == (1, 5)
    assert sorted(g["weight_decay"] for g in s.optimizer.param_groups) == [0.0, 0.3]
    assert all(g["betas"] == (0.8, 0.95) for g in s.optimizer.param_groups)
    moments = [state["exp_avg"] for state in s.optimizer.state.values()]
    assert len(moments) == len(saved) and all(torch.equal(a, b) for a, b in zip(moments, saved))  # kept
    err = capsys.readouterr().err
    assert "--weight-decay 0.05 -> 0.3, --opt-betas None -> [0.8, 0.95]: the optimizer takes the new settings from " \
           "epoch 2 on (its moments" in err  # fmt: skip
    # another --layer-decay: lr_scale and the restored lr at the new scale; Lookahead's own step count kept
    layered = str(tmp_path / "layered")
    flags = [*TINY_VIT, *QUICK, "--opt", "lookahead_adamw", "--layer-decay", "0.75", "--output", layered]
    assert main([*flags, "--epochs", "2", "--keep-epoch-checkpoints"]) == 0  # resumed with its schedule
    saved = torch.load(f"{layered}/epoch-1.pth", weights_only=False)["optimizer"]["param_groups"]
    args = build_parser().parse_args(
        [
            *flags,
            "--epochs",
            "2",
            "--resume",
            f"{layered}/epoch-1.pth",
            "--layer-decay",
            "0.5",
            "--output",
            str(tmp_path / "resumed"),
        ]
    )
    s = setup(args)
    resume(args, s)
    assert (
        [g["lookahead_step"] for g in s.optimizer.param_groups]
        == [g["lookahead_step"] for g in saved]
        != [0] * len(saved)
    )
    for group, old in zip(s.optimizer.param_groups, saved):
        assert group["lr"] / group["lr_scale"] == pytest.approx(old["lr"] / old["lr_scale"])  # the same schedule value
    assert sorted({g["lr_scale"] for g in s.optimizer.param_groups}) == [0.25, 0.5, 1.0]  # depth 1: 3 layer ids


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path, capsys):
    from timm.scheduler import create_scheduler_v2

    out = str(tmp_path / "short")
    assert main([*TINY_VIT, *QUICK, "--epochs", "1", "--output", out]) == 0
    longer = str(tmp_path / "longer")
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--output", longer, "--resume", f"{out}/last.pth"]) == 0
    assert "--epochs 1 -> 3: the learning rate follows the new schedule from update 5" in capsys.readouterr().err
    # the 3-epoch cosine's value after epochs 2 and 3 (the old 1-epoch state would have stayed at --min-lr)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=3, warmup_epochs=0, min_lr=1e-5,
                                   step_on_epochs=False, updates_per_epoch=5)  # fmt: skip
    want = []
    for updates in (10, 15):
        sched.step_update(num_updates=updates)
        want.append(optimizer.param_groups[0]["lr"])

    rows = json.load(open(os.path.join(longer, "log.json")))["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows[1:]] == pytest.approx(want) and want[0] > 1e-4


def test_resume_with_other_updates_per_epoch_follows_the_new_schedule(tmp_path, capsys):
    # The schedule counts optimizer updates: resuming with another --limit-batches (or number of processes) gives
    # another schedule under the same options, which the checkpoint's scheduler state would silently keep.
    from timm.scheduler import create_scheduler_v2

    out = str(tmp_path / "limited")
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--limit-batches", "2", "--keep-epoch-checkpoints",
                 "--output", out]) == 0  # fmt: skip
    full = str(tmp_path / "full")
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--output", full, "--resume", f"{out}/epoch-1.pth"]) == 0
    assert "updates per epoch 2 -> 5 (processes, --limit-batches, --aug-repeats): the learning rate follows the new " \
           "schedule from update 5 on (the updates so far followed the old one, epoch 1 x 5 as timm's train.py " \
           "counts; the checkpoint had made 2)" in capsys.readouterr().err  # fmt: skip
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=3, warmup_epochs=0, min_lr=1e-5,
                                   step_on_epochs=False, updates_per_epoch=5)  # fmt: skip
    sched.step_update(num_updates=5 + 5)  # epoch 2's end: epoch 1 x 5 updates, then its own 5 (was 2 + 5)
    rows = json.load(open(os.path.join(full, "log.json")))["epochs"]
    assert rows[1]["epoch"] == 2 and rows[1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    # helper-314: a later --epochs extension of a checkpoint whose count is not epoch x updates (written by the code
    # before this fix after such a resume): the new schedule from epoch x updates too
    ckpt = torch.load(f"{full}/last.pth", weights_only=False)
    ckpt["num_updates"] = 2 + 2 * 5
    torch.save(ckpt, str(tmp_path / "old-count.pth"))
    assert main([*TINY_VIT, *QUICK, "--epochs", "4", "--output", str(tmp_path / "longer"), "--resume",
                 str(tmp_path / "old-count.pth")]) == 0  # fmt: skip
    assert "from update 15 on (the updates so far followed the old one, epoch 3 x 5 as timm's train.py counts; the " \
           "checkpoint had made 12)" in capsys.readouterr().err  # fmt: skip
    # a checkpoint of before the key (2026-12-01): its updates per epoch from its count (2 in 1 epoch), said so
    ckpt = torch.load(f"{out}/epoch-1.pth", weights_only=False)
    del ckpt["updates_per_epoch"]
    torch.save(ckpt, str(tmp_path / "no-key.pth"))
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--output", str(tmp_path / "no-key"), "--resume",
                 str(tmp_path / "no-key.pth")]) == 0  # fmt: skip
    assert "updates per epoch 2 (inferred: 2 updates in 1 epoch) -> 5 (processes" in capsys.readouterr().err
    # the same updates per epoch: the checkpoint's state, no note
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--limit-batches", "2", "--output", str(tmp_path / "same"),
                 "--resume", f"{out}/epoch-1.pth"]) == 0  # fmt: skip
    assert "follows the new schedule" not in capsys.readouterr().err


def test_bce_threshold_with_mixup_smoothing_does_not_binarise_everything(tmp_path, monkeypatch):
    # timm's Mixup with smoothing 0.1 makes every target entry >= 0.01: thresholded at 0.0 that is all ones
    import masksub_kernels.training.wrapper as wrapper

    seen = {}

    class Seen(Exception):
        pass

    def spy(logits, target, **kwargs):
        seen.update(kwargs, target=target)
        raise Seen

    monkeypatch.setattr(wrapper, "supervised_loss", spy)
    with pytest.raises(Seen):
        main([*TINY_VIT, *QUICK, "--epochs", "1", "--loss", "bce", "--bce-target-thresh", "0.0", "--mixup", "0.8",
              "--cutmix", "1.0", "--output", str(tmp_path / "bce")])  # fmt: skip
    positive = (seen["target"] > seen["target_threshold"]).float().sum(dim=1)
    assert positive.max() <= 2  # a mixed pair's two classes, not all ten
    assert seen["label_smoothing"] == pytest.approx(0.1)  # applied by the loss after binarising


def test_optimizer_of_another_model_and_negative_clip_are_refused():
    from masksub_kernels.training import MaskSub
    from masksub_kernels.training.engine import PlainStep
    from masksub_kernels.training.wrapper import supervised_loss

    torch.manual_seed(0)
    ms = MaskSub(tiny_vit()).train()
    images, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    stranger = torch.optim.SGD(tiny_vit().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of this MaskSub's parameters"):
        ms.train_step(images, target, stranger)
    with pytest.raises(ValueError, match="holds none of this VisionTransformer's parameters"):
        PlainStep(ms.model, supervised_loss)(images, target, stranger)
    own = torch.optim.SGD(ms.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="clip_grad must be a max norm > 0"):
        ms.train_step(images, target, own, clip_grad=-1.0)


def test_checkpoints_hold_eager_names_and_load_with_or_without_compile():
    # --compile wraps the model (torch.compile: keys model._orig_mod.*): a checkpoint saved either way must resume
    # the other way (the state was loaded with its own keys: "does not fit this model")
    from masksub_kernels.training import MaskSub
    from masksub_kernels.training.checkpoint import eager_state_dict, load_eager_state_dict

    eager, compiled = MaskSub(tiny_vit()), MaskSub(torch.compile(tiny_vit()))  # compiled lazily: nothing runs
    assert any("_orig_mod" in key for key in compiled.state_dict())
    saved = eager_state_dict(compiled)
    assert saved.keys() == eager.state_dict().keys()
    load_eager_state_dict(eager, saved)
    for source, target in ((eager, compiled), (compiled, eager)):
        load_eager_state_dict(target, source.state_dict())  # an old checkpoint's own keys load too
        for (name, value), other in zip(source.state_dict().items(), target.state_dict().values()):
            assert torch.equal(value, other), name
    with pytest.raises(RuntimeError, match="Unexpected key"):  # still strict
        load_eager_state_dict(eager, {**saved, "model.extra": torch.zeros(1)})


@pytest.mark.parametrize("baseline", [False, True])
def test_a_compiled_run_saves_eager_names_and_resumes_either_way(tmp_path, baseline):
    # the command's own save and resume (no forward pass: torch.compile is lazy, nothing is compiled here)
    from masksub_kernels.training.cli import _save, build_parser
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    flags = [*TINY_VIT, *QUICK, "--epochs", "2", "--output", str(tmp_path), *(["--baseline"] if baseline else [])]
    args = build_parser().parse_args([*flags, "--compile"])
    compiled = setup(args)
    assert any("_orig_mod" in key for key in compiled.trained.state_dict())
    row = {"loss_main": 1.0, "loss_sub": None, "top1": 0.0, "top5": 0.0, "images_per_s": 1.0, "lr": 1e-3}
    _save(args, compiled, 0, 5, [row], {})
    saved = torch.load(tmp_path / "last.pth", weights_only=False)["module"]
    assert not any("_orig_mod" in key for key in saved)
    for compile_flag in ([], ["--compile"]):  # resumed without --compile, and with it
        args = build_parser().parse_args([*flags, *compile_flag, "--resume", str(tmp_path / "last.pth")])
        resumed = setup(args)
        assert resume(args, resumed)[:2] == (1, 5)
        for (name, value), name_saved in zip(resumed.trained.state_dict().items(), saved):
            assert torch.equal(value, saved[name_saved]), name


def test_resume_keeps_a_runs_later_epochs_and_notes_who_draws_the_data(tmp_path, capsys):
    # helper-148: resuming an older epoch-N.pth in its own directory overwrote that run's later epochs silently;
    # another number of processes draws other batches, and went unnoted
    out = str(tmp_path / "run")
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--limit-batches", "2", "--keep-epoch-checkpoints",
                 "--output", out]) == 0  # fmt: skip
    before = {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--limit-batches", "2", "--resume", f"{out}/epoch-1.pth"]) == 2
    err = capsys.readouterr().err
    assert f"error: --output {out!r} holds a run's epochs up to 2 (log.json's rows, epoch-N.pth)" in err
    assert "is after epoch 1: resuming there would overwrite them; pass another --output" in err
    assert {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))} == before
    os.remove(os.path.join(out, "epoch-2.pth"))  # log.json alone still says epoch 2
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--limit-batches", "2", "--resume", f"{out}/epoch-1.pth"]) == 2
    assert "holds a run's epochs up to 2" in capsys.readouterr().err
    # its last epoch: continues in place; elsewhere with another world size: noted and recorded; another worker
    # count is the same run since LOADER_SEEDING 3 (each sample seeded by its position, helper-264): not noted
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--limit-batches", "2", "--resume", f"{out}/last.pth"]) == 0
    assert "other options" not in capsys.readouterr().err  # (--epochs 2 -> 3's schedule note only)
    other = str(tmp_path / "other")
    checkpoint = torch.load(f"{out}/epoch-1.pth", weights_only=False)
    assert (checkpoint["world"], checkpoint["workers"]) == (1, 0)
    checkpoint["world"] = 2
    torch.save(checkpoint, tmp_path / "two.pth")
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--limit-batches", "2", "--workers", "1",
                 "--output", other, "--resume", str(tmp_path / "two.pth")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    changed = ["processes 2 -> 1 (they draw the batches and their augmentations)"]
    assert f"note: resuming with other options than the checkpoint's: {', '.join(changed)}; from epoch 2" in err
    assert json.load(open(os.path.join(other, "log.json")))["meta"]["resumes"][-1]["changed"] == changed

    def resumed(name, *flags):
        torch.save(checkpoint, tmp_path / f"{name}.pth")
        assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--limit-batches", "2", *flags, "--output",
                     str(tmp_path / name), "--resume", str(tmp_path / f"{name}.pth")]) == 0  # fmt: skip
        return capsys.readouterr().err

    # a checkpoint of LOADER_SEEDING 2 (its workers, or with --workers 0 the main process, drew the augmentations):
    # noted, unless with --no-aug (nothing drawn, the same run)
    assert checkpoint["loader_seeding"] == 3
    checkpoint["world"], checkpoint["loader_seeding"] = 1, 2
    assert "loaders' seeding 2 -> 3 (other augmentations, the same batch orders)" in resumed("seeding2")
    checkpoint["args"]["no_aug"] = True
    assert "other options" not in resumed("seeding2-no-aug", "--no-aug")
    # a torchrun checkpoint of before 2026-12-06 (no loader_seeding: 1) had other orders (seed != 0, helper-218):
    # noted even with --no-aug
    checkpoint["world"] = 2
    del checkpoint["loader_seeding"]
    assert "loaders' seeding 1 -> 3 (other batch orders and augmentations)" in resumed("before", "--no-aug")


def test_resume_does_not_load_the_initial_checkpoint(tmp_path, capsys):
    # helper-148: the initial weights were loaded and announced, then overwritten; the file had to exist still
    out = str(tmp_path / "run")
    assert main([*TINY_VIT, *QUICK, "--epochs", "1", "--output", out]) == 0
    missing = str(tmp_path / "gone.pth")
    assert (
        main([*TINY_VIT, *QUICK, "--epochs", "2", "--resume", f"{out}/last.pth", "--initial-checkpoint", missing]) == 0
    )
    err = capsys.readouterr().err
    assert "note: --initial-checkpoint is not loaded on --resume: the weights are the checkpoint's" in err
    assert "loaded" not in err.replace("not loaded", "")
    assert json.load(open(os.path.join(out, "log.json")))["meta"]["initial_checkpoint"] is None


def test_the_checkpoints_own_epoch_file_is_not_a_later_epoch(tmp_path):
    # last.pth after 2 epochs (start_epoch 2) in a --keep-epoch-checkpoints directory: epoch-2.pth is the same epoch
    for n in (1, 2):
        (tmp_path / f"epoch-{n}.pth").write_bytes(b"")
    resume_mod._check_no_later_epochs(str(tmp_path), str(tmp_path / "last.pth"), 2)
    (tmp_path / "epoch-3.pth").write_bytes(b"")
    with pytest.raises(UsageError, match="epochs up to 3"):
        resume_mod._check_no_later_epochs(str(tmp_path), str(tmp_path / "last.pth"), 2)


def test_a_data_dir_spelled_otherwise_is_no_change(tmp_path):
    (tmp_path / "d").mkdir()
    args = argparse.Namespace(data_dir=str(tmp_path / "d") + "/")
    assert resume_mod.other_changes({"data_dir": str(tmp_path / "d")}, args) == []


def test_resume_accepts_the_optimizers_name_in_any_case_and_an_old_checkpoint_without_world(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*TINY_VIT, *QUICK, "--epochs", "1", "--output", out]) == 0  # --opt adamw (the default)
    last = os.path.join(out, "last.pth")
    capsys.readouterr()
    # s122: timm's optimizer names are case-insensitive: the same optimizer
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--opt", "AdamW", "--resume", last,
                 "--output", str(tmp_path / "a")]) == 0  # fmt: skip
    # s208: a checkpoint from before "world"/"workers" were saved: nothing to compare, no note
    state = torch.load(last, weights_only=False)
    del state["world"], state["workers"]
    torch.save(state, tmp_path / "old.pth")
    capsys.readouterr()
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--resume", str(tmp_path / "old.pth"),
                 "--output", str(tmp_path / "b")]) == 0  # fmt: skip
    assert "other options" not in capsys.readouterr().err


# kills resume.py:226 `os.path.abspath(args.resume)` -> `args.resume` (a relative --resume was recorded relative
# to a working directory that log.json does not keep)
def test_a_relative_resume_path_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY_VIT, *QUICK, "--epochs", "1", "--limit-batches", "1", "--output", "run"]) == 0
    again = ["--epochs", "2", "--limit-batches", "1", "--output", "again", "--resume", os.path.join("run", "last.pth")]
    assert main([*TINY_VIT, *QUICK, *again]) == 0
    with open(tmp_path / "again" / "log.json") as f:
        resumes = json.load(f)["meta"]["resumes"]
    assert [r["from"] for r in resumes] == [str(tmp_path / "run" / "last.pth")]


def test_a_baseline_refusal_says_it_is_the_masksub_arms(tmp_path, capsys):
    # --baseline masks nothing: its refusal of a cell that keeps none must not read as if it had masked something
    err = _error(tmp_path, capsys, "--model", "test_resnet", "--epochs", "1", "--baseline")
    assert "--baseline checks what its MaskSub arm would refuse, so the pair match: mask_ratio=0.5 keeps none" in err
    assert err.rstrip().endswith("may pass --cell-size N (unused by it) to pick a grid that fits")
    err = _error(tmp_path, capsys, "--model", "test_resnet", "--epochs", "1")
    assert "--baseline" not in err


# helper-318's mutation audit
# kills M19  training/resume.py:226  `counted = "" if num_updates == ckpt["num_updates"] else (...)`
#   -> always the `, epoch x ... the checkpoint had made N` clause (said where the counts agree)
def test_resume_with_more_epochs_notes_no_other_count_where_the_counts_agree(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the default dataset (digits) comes from scikit-learn")
    out = str(tmp_path / "short")
    flags = [*TINY_VIT, *QUICK, "--limit-batches", "1"]
    assert main([*flags, "--epochs", "1", "--output", out]) == 0
    assert main([*flags, "--epochs", "2", "--output", str(tmp_path / "longer"), "--resume", f"{out}/last.pth"]) == 0
    err = capsys.readouterr().err
    assert "the learning rate follows the new schedule from update 1 on (the updates so far followed the old one)\n" \
        in err  # fmt: skip


# Kills T01 (resume.py: the updates per epoch inferred whatever the count, `% (epoch + 1) == 0` dropped: a count that
# is no whole number per epoch gave a wrong one) and T02 (`num_updates // (epoch + 1)` -> `// max(epoch, 1)`: the
# existing test's checkpoint has one epoch, where both agree); T03 (the plural: `epochs > 2`) too
def test_an_old_checkpoints_updates_per_epoch_are_inferred_over_all_its_epochs(tmp_path, capsys):
    out = str(tmp_path / "limited")
    assert main([*TINY_VIT, *QUICK, "--epochs", "2", "--limit-batches", "2", "--output", out]) == 0
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    assert (ckpt["epoch"], ckpt["num_updates"]) == (1, 4)
    del ckpt["updates_per_epoch"]  # a checkpoint of before 2026-12-01
    torch.save(ckpt, str(tmp_path / "no-key.pth"))
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--output", str(tmp_path / "a"), "--resume",
                 str(tmp_path / "no-key.pth")]) == 0  # fmt: skip
    assert "updates per epoch 2 (inferred: 4 updates in 2 epochs) -> 5 (processes" in capsys.readouterr().err
    ckpt["num_updates"] = 5  # no whole number of updates per epoch: nothing inferred
    torch.save(ckpt, str(tmp_path / "odd.pth"))
    assert main([*TINY_VIT, *QUICK, "--epochs", "3", "--output", str(tmp_path / "b"), "--resume",
                 str(tmp_path / "odd.pth")]) == 0  # fmt: skip
    assert "inferred" not in capsys.readouterr().err
