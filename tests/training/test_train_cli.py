"""masksub-train on the digits set: logs, checkpoints, exact resume, the options, clear errors, torchrun."""

import csv
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

pytest.importorskip("sklearn", reason="the default dataset (digits) comes from scikit-learn")

from masksub_kernels.train import main, parse_kwargs
from masksub_kernels.training.run_setup import UsageError
from masksub_kernels.training.runlog import COLUMNS

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2"]  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "64", "--no-progress", "--img-size", "16"]


def _run(tmp_path, name: str, *extra: str) -> str:
    out = str(tmp_path / name)
    assert main([*TINY_VIT, *FAST, "--output", out, *extra]) == 0
    return out


def _log(out: str) -> list[dict]:
    with open(os.path.join(out, "log.json")) as f:
        return json.load(f)["epochs"]


def test_masksub_run_writes_logs_and_checkpoints(tmp_path):
    out = _run(tmp_path, "ms", "--keep-epoch-checkpoints")
    rows = _log(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["loss_main"] > 0 and row["loss_sub"] > 0 and 0 <= row["top1"] <= 100 and row["images_per_s"] > 0
        assert row["loss"] == pytest.approx(0.5 * row["loss_main"] + 0.5 * row["loss_sub"])
    with open(os.path.join(out, "log.csv")) as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == 2
    for name in ("last.pth", "epoch-1.pth", "epoch-2.pth"):
        assert os.path.isfile(os.path.join(out, name))
    meta = json.load(open(os.path.join(out, "log.json")))["meta"]
    assert meta["family"] == "vit" and meta["train_images"] == 1437 and meta["val_images"] == 360
    assert (meta["batches_per_epoch"], meta["images_per_epoch"]) == (22, 1408)  # whole batches of 64: 29 dropped
    # where it ran (helper-304): the checkout's commit, the start, the CPU, torch's threads; no GPU on CPU
    assert meta["git_commit"] == subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                                text=True).stdout.strip() or None  # fmt: skip
    assert meta["started_utc"].endswith("+00:00") and meta["cpu"] and meta["torch_threads"] == torch.get_num_threads()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--"], capture_output=True).returncode
    assert meta["gpu"] is None and meta["git_dirty"] == (None if meta["git_commit"] is None else dirty == 1)


def test_notes_a_warmup_that_outlasts_the_run(tmp_path, capsys):
    _run(tmp_path, "short", "--limit-batches", "1")  # FAST: 1 warm-up epoch of 2
    assert "warmup" not in capsys.readouterr().err
    _run(tmp_path, "warm", "--limit-batches", "1", "--warmup-epochs", "2")
    err = capsys.readouterr().err
    assert "masksub-train: note: --warmup-epochs 2 >= --epochs 2: the learning rate is still warming up" in err


def test_resume_continues_exactly(tmp_path):
    # bitwise on the CPU (on an H200 the resumed weights differed from the uninterrupted run's, 2026-12-04: open)
    full = _run(tmp_path, "full", "--keep-epoch-checkpoints", "--drop-path", "0.1", "--device", "cpu")
    resumed = _run(
        tmp_path, "resumed", "--drop-path", "0.1", "--resume", os.path.join(full, "epoch-1.pth"), "--device", "cpu"
    )
    want = torch.load(os.path.join(full, "last.pth"), weights_only=False)
    got = torch.load(os.path.join(resumed, "last.pth"), weights_only=False)
    assert got["epoch"] == want["epoch"] == 1 and got["num_updates"] == want["num_updates"]
    for name, tensor in want["module"].items():
        assert torch.equal(got["module"][name], tensor), name
    drop_time = lambda rows: [{k: v for k, v in r.items() if "time" not in k and k != "images_per_s"} for r in rows]
    assert drop_time(_log(resumed)) == drop_time(_log(full))
    meta = json.load(open(os.path.join(resumed, "log.json")))["meta"]
    (entry,) = meta["resumes"]  # (and the resume's commit, dirty flag and start: runlog.resume_provenance)
    recorded = {"epoch": 1, "from": os.path.join(full, "epoch-1.pth"), "changed": []}
    assert {k: entry[k] for k in recorded} == recorded
    assert {"git_commit", "git_dirty", "started_utc", "cpu", "torch_threads", "gpu"} <= set(entry)
    # timm's own loader takes the bare model's weights out of last.pth (a digits model has one input channel)
    import timm
    from timm.models import load_checkpoint

    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                              in_chans=1, num_classes=10)  # fmt: skip
    load_checkpoint(model, os.path.join(full, "last.pth"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, want["module"]["model." + name]), name


def test_resume_notes_and_records_other_options_and_keeps_the_ema(tmp_path, capsys):
    one = ["--limit-batches", "1", "--model-ema"]
    first = _run(tmp_path, "first", *one, "--epochs", "1")
    last = os.path.join(first, "last.pth")
    out = str(tmp_path / "err")
    assert main([*TINY_VIT, *FAST, *one[:2], "--resume", last, "--output", out]) == 2  # no --model-ema
    assert "has EMA weights: resume it with --model-ema" in capsys.readouterr().err
    resumed = _run(tmp_path, "resumed", *one, "--resume", last, "--smoothing", "0.2", "--seed", "5")
    err = capsys.readouterr().err
    assert "note: resuming with other options than the checkpoint's: --smoothing 0.1 -> 0.2, --seed 0 -> 5" in err
    meta = json.load(open(os.path.join(resumed, "log.json")))["meta"]
    changes = ["--epochs 1 -> 2", "--smoothing 0.1 -> 0.2", "--seed 0 -> 5"]
    assert meta["resumes"][-1]["changed"] == changes
    saved = torch.load(os.path.join(resumed, "last.pth"), weights_only=False)
    assert saved["resumes"] == meta["resumes"] and saved["state_dict_ema"] is saved["ema"] is not None
    # again, without --output: into the checkpoint's own directory; the resumes chain, a new schedule recorded
    again = [*TINY_VIT, *FAST, "--model-ema", "--limit-batches", "2", "--epochs", "3", "--seed", "5"]
    assert main([*again, "--smoothing", "0.2", "--resume", os.path.join(resumed, "last.pth")]) == 0
    meta = json.load(open(os.path.join(resumed, "log.json")))["meta"]
    assert [r["epoch"] for r in meta["resumes"]] == [1, 2] and meta["resumes"][0]["changed"][1:] == changes[1:]
    assert meta["resumes"][1]["changed"] == ["--epochs 2 -> 3", "updates per epoch 1 -> 2 (processes, "
                                             "--limit-batches, --aug-repeats)"]  # fmt: skip


def test_output_is_checked_before_training(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main([*TINY_VIT, *FAST, "--output", str(a_file)]) == 2
    assert f"--output '{a_file}' is a file, not a directory" in capsys.readouterr().err
    assert main([*TINY_VIT, *FAST, "--output", ""]) == 2
    assert "--output is empty" in capsys.readouterr().err
    assert main([*TINY_VIT, *FAST, "--output", str(a_file / "run")]) == 2
    assert f"cannot be made: '{a_file}' is not a writable directory" in capsys.readouterr().err
    done = _run(tmp_path, "done", "--limit-batches", "1", "--epochs", "1")
    assert main([*TINY_VIT, *FAST, "--output", done]) == 2  # a new run over another's last.pth
    assert "holds another run (last.pth): continue it with --resume" in capsys.readouterr().err
    other = _run(tmp_path, "other", "--limit-batches", "1", "--epochs", "1")
    assert main([*TINY_VIT, *FAST, "--output", other, "--resume", os.path.join(done, "last.pth")]) == 2
    assert "holds another run (last.pth) than --resume's checkpoint" in capsys.readouterr().err


def test_baseline_with_mixup_and_accumulation(tmp_path):
    out = _run(tmp_path, "base", "--baseline", "--mixup", "0.8", "--cutmix", "1.0", "--grad-accum-steps", "2")
    rows = _log(out)
    assert all(r["loss_sub"] is None and r["loss"] == r["loss_main"] for r in rows)
    ckpt = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    assert ckpt["num_updates"] == 2 * (1437 // 64 // 2)
    assert not any(k.startswith("model.") for k in ckpt["module"])  # the bare model's state


def test_joint_schedule_bce_and_clipping(tmp_path):
    out = _run(tmp_path, "joint", "--schedule", "joint", "--loss", "bce", "--bce-target-thresh", "0.0",
               "--clip-grad", "1.0", "--epochs", "1", "--sched", "step")  # fmt: skip
    assert len(_log(out)) == 1


@pytest.mark.parametrize("variant", ["drop", "path"])
def test_variants(tmp_path, variant):
    out = _run(tmp_path, variant, "--variant", variant, "--epochs", "1")
    assert _log(out)[0]["loss_sub"] > 0


def test_cnn_and_swin(tmp_path):
    out = str(tmp_path / "cnn")
    assert main(["--model", "test_resnet", "--img-size", "32", "--cell-size", "16", "--epochs", "1", "--batch-size",
                 "128", "--no-progress", "--output", out]) == 0  # fmt: skip
    assert json.load(open(os.path.join(out, "log.json")))["meta"]["family"] == "pixel"
    out = str(tmp_path / "swin")
    swin = ["--model", "swin_tiny_patch4_window7_224", "--model-kwargs", "img_size=32", "patch_size=2",
            "window_size=4", "embed_dim=16", "depths=(1,1)", "num_heads=(1,2)"]  # fmt: skip
    assert main([*swin, "--img-size", "32", "--epochs", "1", "--batch-size", "128", "--no-progress", "--output",
                 out]) == 0  # fmt: skip
    ckpt = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    assert "mask_token" in ckpt["module"]


def _image_folder(root) -> str:
    """DIR/train and DIR/val of 2 classes x 4 random 20 x 20 RGB images."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(root / "data" / split / label)
            for i in range(4):
                pixels = (torch.rand(20, 20, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / "data" / split / label / f"{i}.png")
    return str(root / "data")


def test_image_folder(tmp_path, capsys):
    _image_folder(tmp_path)
    out = str(tmp_path / "folder")
    args = [*TINY_VIT, "--data-dir", str(tmp_path / "data"), "--img-size", "16", "--epochs", "1", "--batch-size",
            "4", "--workers", "0", "--no-progress", "--output", out]  # fmt: skip
    assert main(args) == 0
    meta = json.load(open(os.path.join(out, "log.json")))["meta"]
    assert meta["train_images"] == 8 and meta["val_images"] == 8 and meta["classes"] == ["a", "b"]
    assert (meta["batches_per_epoch"], meta["images_per_epoch"]) == (2, 8)
    assert torch.load(os.path.join(out, "last.pth"), weights_only=False)["classes"] == ["a", "b"]
    # helper-151: a resume on renamed class folders swapped the head's classes without a word
    for split in ("train", "val"):
        os.rename(tmp_path / "data" / split / "b", tmp_path / "data" / split / "0b")
    assert main([*args[:-1], out + "-renamed", "--epochs", "2", "--resume", os.path.join(out, "last.pth")]) == 2
    err = capsys.readouterr().err
    assert "was trained on other classes than --data-dir's: class 0 was 'a', is now '0b' (2 -> 2 classes)" in err
    grey = [*TINY_VIT, "in_chans=1", *args[len(TINY_VIT) : -1], out + "-grey"]  # helper-135: was a traceback
    assert main(grey) == 2
    assert "--model-kwargs in_chans=1, but an image folder's images are read as RGB (3)" in capsys.readouterr().err


def test_default_loader_workers_do_not_follow_the_machine(tmp_path, monkeypatch):
    # until 2026-12-07 the worker count decided which process drew each batch's augmentations: a default that
    # followed the CPUs trained differently on another machine (helper-118); the defaults stay fixed
    from masksub_kernels.training import run_setup
    from masksub_kernels.training.cli import build_parser

    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    flags = [*TINY_VIT, "--img-size", "16", "--batch-size", "4"]
    folder = ["--data-dir", _image_folder(tmp_path)]
    for extra, expected in (([], 0), (folder, 4), ([*folder, "--workers", "3"], 3)):
        args = build_parser().parse_args([*flags, *extra, "--output", str(tmp_path / f"out{len(extra)}")])
        run_setup.check_args(args)
        assert run_setup.setup(args).workers == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "/no/such/dir"], "data directory '/no/such/dir' does not exist"),
        (["--model", "vit_nonexistent_model"], "unknown timm model 'vit_nonexistent_model'"),
        (["--model", "vit_small_patch16_244"], "similar names: vit_small_patch16_224, "),  # the closest first
        (["--model", "resnet-18"], "similar names: resnet18, "),
        (["--model", "resnet10t", "--img-size", "48"], "not divisible by the mask cell of 32 pixels"),
        (["--model", "vit_tiny_patch16_224", "--img-size", "32"], "--model-kwargs img_size=32"),
        ([*TINY_VIT, "--img-size", "16", "--mixup", "0.8", "--batch-size", "7"], "even --batch-size"),
        ([*TINY_VIT, "--img-size", "16", "--resume", "/no/ckpt.pth"], "checkpoint '/no/ckpt.pth' does not exist"),
        (["--model-kwargs", "img_size"], "key=value"),
    ],
)
def test_clear_errors(tmp_path, capsys, args, message):
    assert main([*args, "--output", str(tmp_path / "err"), "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("masksub-train: error:") and message in err


def test_help_states_the_defaults():
    from masksub_kernels.training import cli, mlm_cli

    text = " ".join(cli.build_parser().format_help().split())  # one line: argparse wraps the help text
    expected = [
        "--epochs EPOCHS (default: 30)",
        "--lr LR (default: 0.001)",
        "(default: output/masksub-train, or the --resume checkpoint's directory)",
        "--warmup-epochs WARMUP_EPOCHS (default: 5)",
        "--drop DROP model dropout rate (timm's drop_rate; default: the model's own)",
        "--drop-path DROP_PATH model drop-path rate (timm's drop_path_rate; default: the model's own, e.g. 0.1 for a "
        "Swin)",
    ]
    for line in expected:
        assert line in text, line
    assert "(default: None)" not in text and "(default: False)" not in text and "default: digits) (default" not in text
    text = " ".join(mlm_cli.build_parser().format_help().split())
    assert "--layers LAYERS (default: 4)" in text and "--width WIDTH hidden size (default: 128)" in text


def test_parse_kwargs():
    assert parse_kwargs(["img_size=32", "depths=(1,1)", "global_pool=avg", "class_token=False"]) == {
        "img_size": 32, "depths": (1, 1), "global_pool": "avg", "class_token": False,
    }  # fmt: skip
    # a key's last value counts; `key=` removes the key (a config's: the model's default, where None may differ)
    assert parse_kwargs(["a=1", "b=2", "a=", "c=", "b=None"]) == {"b": None}
    assert parse_kwargs(["a=", "a=3"]) == {"a": 3}
    # helper-331: a literal log.json cannot hold (json.dump raised after the first epoch's checkpoint) is refused
    for item, kind in (("s={1, 2}", "set"), ("b=b'x'", "bytes"), ("c=1j", "complex"), ("e=...", "ellipsis"),
                       ("d={(1, 2): 3}", "dict"), ("t=(1, {2})", "tuple")):  # fmt: skip
        with pytest.raises(UsageError, match=rf"--model-kwargs {re.escape(repr(item))}: a {kind} value; expected"):
            parse_kwargs([item])
    assert parse_kwargs(["n=nan", "x=[1, (2, None)]", "m={'a': 1}"])["x"] == [1, (2, None)]


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL on one process per GPU: 2 GPUs"),
        ),
    ],
)
def test_torchrun_two_processes(tmp_path, device):
    # --device is explicit: by default rank r takes cuda:r, which a one-GPU machine does not have.
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "masksub_kernels.train", *TINY_VIT, *FAST, "--epochs", "1", "--device", device, "--output", out]  # fmt: skip
    result = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.load(open(os.path.join(out, "log.json")))["meta"]
    assert meta["world_size"] == 2
    # 11 batches of 64 on each rank: the meta's images per epoch count both ranks' (helper-194)
    assert (meta["batches_per_epoch"], meta["images_per_epoch"]) == (11, 1408)
    ckpt = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    assert ckpt["num_updates"] == 1437 // 2 // 64


def test_torchrun_ranks_stop_together_on_rank_zeros_refusal(tmp_path):
    # helper-148: --output is rank 0's check; rank 1 went on into DDP's first collective, and its gloo traceback
    # ("Connection closed by peer") followed the error. Now every rank stops, rank 0 alone prints.
    afile = tmp_path / "afile"
    afile.write_text("")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "masksub_kernels.train", *TINY_VIT, *FAST, "--device", "cpu", "--output", str(afile)]  # fmt: skip
    result = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert result.stderr.count(f"masksub-train: error: --output {str(afile)!r} is a file, not a directory") == 1
    assert "gloo" not in result.stderr and "[rank1]" not in result.stderr, result.stderr[-3000:]


def test_rank_zero_check_shares_its_outcome(monkeypatch, capsys):
    import torch.distributed as dist

    from masksub_kernels.training.determinism import run_command
    from masksub_kernels.training.rank_zero import ReportedOnRankZero, rank_zero_check
    from masksub_kernels.training.run_setup import UsageError

    def refuse():
        raise UsageError("no")

    shared = []
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: shared.append((list(objects), src)))
    with pytest.raises(UsageError, match="no") as raised:
        rank_zero_check(refuse, 0, 2)
    assert type(raised.value) is UsageError and shared == [(["no"], 0)]
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: objects.__setitem__(0, "rank 0's"))
    with pytest.raises(ReportedOnRankZero, match="rank 0's"):
        rank_zero_check(refuse, 1, 2)  # the check runs on rank 0 only: rank 1 raises what it was sent
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: None)
    rank_zero_check(refuse, 1, 2)  # rank 0 passed: nothing
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: pytest.fail("a collective"))
    with pytest.raises(UsageError, match="no"):
        rank_zero_check(refuse, 0, 1)  # one process: no collective

    def refused_on_rank_zero(_args):
        raise ReportedOnRankZero("rank 0's")

    assert run_command("prog", refused_on_rank_zero, types.SimpleNamespace(deterministic=False)) == 2
    assert capsys.readouterr().err == ""  # rank 0 printed it


def test_torchrun_validates_the_saved_model_with_batchnorm(tmp_path):
    # Each rank's BatchNorm statistics follow its own last batches: they are averaged before validation, so the
    # logged metrics (summed over the ranks' shards) are those of the saved model evaluated in one process. The
    # weight EMA's too: its statistics follow each rank's model (decay 0.5: far from the first weights)
    from masksub_kernels.training.checkpoint import load_eager_state_dict
    from masksub_kernels.training.cli import build_parser
    from masksub_kernels.training.data import val_loader
    from masksub_kernels.training.engine import evaluate
    from masksub_kernels.training.families import unwrap_model
    from masksub_kernels.training.run_setup import check_args, setup

    out = str(tmp_path / "bn")
    flags = ["--model", "resnet10t", "--img-size", "32", "--cell-size", "16", "--epochs", "1", "--warmup-epochs",
             "0", "--batch-size", "32", "--limit-batches", "3", "--no-progress", "--device", "cpu",
             "--model-ema", "--model-ema-decay", "0.5", "--output", out]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "masksub_kernels.train", *flags]  # fmt: skip
    result = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = json.load(open(os.path.join(out, "log.json")))["epochs"][-1]
    saved = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    args = build_parser().parse_args(flags)
    args.output = str(tmp_path / "rebuilt")  # the run's model built again (its --output holds the run: refused)
    check_args(args)
    s = setup(args)
    # the checkpoint's "module" is the MaskSub wrapper's state, "ema" the network's (the one that is evaluated)
    for into, weights, logged_loss in (
        (s.trained, saved["module"], logged["val_loss"]),
        (unwrap_model(s.model), saved["ema"], logged["ema_val_loss"]),
    ):
        load_eager_state_dict(into, weights)
        metrics = evaluate(s.model, val_loader(s.data.val, 32, 0, 1, 0, False), device=torch.device("cpu"))
        assert metrics["val_loss"] == pytest.approx(logged_loss, rel=2e-6)  # the sums' order only


def _console_script(name: str) -> list[str]:
    """The installed console script, or, where the package is only on PYTHONPATH (the GPU run), what pip's
    wrapper would run: pyproject.toml's entry point for it, imported and called."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(script):
        return [script]
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        module, function = tomllib.load(f)["project"]["scripts"][name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def test_console_script_and_module_entry_points():
    for cmd in (
        [*_console_script("masksub-train"), "--help"],
        [sys.executable, "-m", "masksub_kernels.train", "--help"],
    ):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--mask-ratio" in result.stdout, result.stderr[-2000:]


def test_help_formatter_states_a_flag_on_and_not_a_flag_off():
    # the same text on every Python: 3.10's BooleanOptionalAction appends "(default: ...)" to its help itself
    import argparse

    from masksub_kernels.training.help_format import HelpWithDefaults

    parser = argparse.ArgumentParser(formatter_class=HelpWithDefaults)
    parser.add_argument("--on", action=argparse.BooleanOptionalAction, default=True, help="on flag")
    parser.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--off", action=argparse.BooleanOptionalAction, default=False, help="off flag")
    text = " ".join(parser.format_help().split())
    assert "--on, --no-on on flag (default: True) --bare, --no-bare (default: True) --off, --no-off off flag" in text
    assert text.endswith("off flag")


# kills resume.py:131 `min(map(len, (saved_classes, classes)))` -> `0` (a class folder added at the end: the message
# named class 0, the same on both sides, instead of the first class that differs)
def test_a_resume_on_an_added_class_folder_names_the_new_class(tmp_path, capsys):
    import shutil

    data = _image_folder(tmp_path)
    out = str(tmp_path / "run")
    base = [*TINY_VIT, "--img-size", "16", "--data-dir", data, "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert main([*base, "--epochs", "1", "--output", out]) == 0
    for split in ("train", "val"):
        shutil.copytree(os.path.join(data, split, "b"), os.path.join(data, split, "c"))
    assert main([*base, "--epochs", "2", "--output", out + "-more", "--resume", os.path.join(out, "last.pth")]) == 2
    err = capsys.readouterr().err
    assert "other classes than --data-dir's: class 2 was None, is now 'c' (2 -> 3 classes)" in err, err


# kills cli.py:131 `--mask-ratio` default 0.5 -> 0.25: the help test checks that defaults are shown, the recipes
# set their own ratio, so no test pinned the command's MaskSub defaults (the paper's: half the patches, the
# sequential schedule, the masking variant)
def test_the_commands_masksub_defaults_are_the_papers():
    from masksub_kernels.training.cli import build_parser

    args = build_parser().parse_args([])
    assert (args.mask_ratio, args.variant, args.schedule, args.loss, args.baseline) == (
        0.5,
        "mask",
        "sequential",
        "ce",
        False,
    )


# --mean / --std of a length that is neither 1 nor the images' channels (3 for an image folder): a usage error (was,
# helper-194: accepted, then a traceback from the loader's Normalize, "The size of tensor a (3) must match ... (2)")
def test_mean_and_std_of_another_channel_count_are_refused(tmp_path, capsys):
    data = _image_folder(tmp_path)
    two = ["--mean", "0.5", "0.5", "--std", "0.5", "0.5"]  # two channels' numbers for RGB images
    argv = [*TINY_VIT, "--img-size", "16", "--data-dir", data, "--batch-size", "4", "--workers", "0", "--epochs", "1"]
    argv += ["--no-progress", *two, "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "masksub-train: error:" in err and "--mean" in err and "3" in err, err


def test_each_resume_records_its_commit_and_the_first_start_survives(tmp_path, monkeypatch):
    # helper-321: meta held the latest start's provenance only; a run resumed under another commit kept no record of
    # the first one. Now each resume's entry has its commit, dirty flag, start time and machine, meta.first_start (saved
    # in the checkpoints) the first start's
    from masksub_kernels.training import runlog

    def under(commit: str, dirty: bool) -> None:
        monkeypatch.setattr(runlog, "_git_commit", lambda: (commit, dirty))

    one = ["--limit-batches", "1", "--device", "cpu"]
    under("a" * 40, False)
    out = _run(tmp_path, "run", *one, "--epochs", "1")
    meta = json.load(open(os.path.join(out, "log.json")))["meta"]
    assert meta["first_start"] == {k: meta[k] for k in ("git_commit", "git_dirty", "started_utc", "cpu",
                                                         "torch_threads", "gpu")}  # fmt: skip
    last = os.path.join(out, "last.pth")
    assert torch.load(last, weights_only=False)["first_start"]["git_commit"] == "a" * 40
    under("b" * 40, True)
    _run(tmp_path, "run", *one, "--epochs", "2", "--resume", last)
    under("c" * 40, False)
    _run(tmp_path, "run", *one, "--epochs", "3", "--resume", last)
    meta = json.load(open(os.path.join(out, "log.json")))["meta"]
    assert meta["git_commit"] == "c" * 40 and meta["first_start"]["git_commit"] == "a" * 40
    assert [(r["epoch"], r["git_commit"], r["git_dirty"]) for r in meta["resumes"]] == [
        (1, "b" * 40, True),
        (2, "c" * 40, False),
    ]
    assert meta["resumes"][-1]["started_utc"] == meta["started_utc"]
    # where each resume ran too (a run resumed on another machine or card says so): this start's, as meta's
    assert {k: meta["resumes"][-1][k] for k in ("cpu", "torch_threads", "gpu")} == {
        k: meta[k] for k in ("cpu", "torch_threads", "gpu")
    }
    saved = torch.load(last, weights_only=False)
    assert saved["resumes"] == meta["resumes"] and saved["first_start"] == meta["first_start"]
    # a checkpoint of before 2026-12-07: no first start, resumes without commits; it resumes, its record as it was
    for entry in saved["resumes"]:
        for key in ("git_commit", "git_dirty", "started_utc", "cpu", "torch_threads", "gpu"):
            del entry[key]
    del saved["first_start"]
    old = str(tmp_path / "old.pth")
    torch.save(saved, old)
    out = _run(tmp_path, "from-old", *one, "--epochs", "4", "--resume", old)
    meta = json.load(open(os.path.join(out, "log.json")))["meta"]
    assert meta["first_start"] is None and [set(r) for r in meta["resumes"][:2]] == [{"epoch", "from", "changed"}] * 2
    assert meta["resumes"][-1]["git_commit"] == "c" * 40 and meta["resumes"][-1]["epoch"] == 3
