"""Checkpoints and resume of masksub-train (masksub_kernels/training/checkpoint.py, resume.py, cli.py's _save)
beyond test_cli_more.py's: the EMA saved and restored as the average it is, a failed write that keeps the previous
checkpoint, only rank 0 writing, each schedule option of a resume building the new schedule, an exact resume noting
nothing, the log's wall time going on (helper-223's mutation audit: 34 mutants, 7 real gaps, no bug)."""

import os

import pytest
import torch
from test_cli_more import TINY_VIT

from masksub_kernels.train import build_parser, main


# kills resume.py:302 `s.ema.module.load_state_dict(ckpt["ema"])` -> `pass`: a --model-ema resume went on from the
# freshly built EMA (a copy of the checkpoint's weights, not their average), and the tests only asked that an EMA
# was saved, never that it was the checkpoint's
def test_resume_restores_the_checkpoints_ema_weights(tmp_path):
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    out = str(tmp_path / "run")
    quick = [*TINY_VIT, "--batch-size", "64", "--warmup-epochs", "0", "--no-progress", "--model-ema"]
    # a small decay: after 2 updates the EMA is far from both the initial and the trained weights
    quick += ["--model-ema-decay", "0.5", "--limit-batches", "2"]
    assert main([*quick, "--epochs", "1", "--output", out]) == 0
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    args = build_parser().parse_args([*quick, "--epochs", "2", "--resume", f"{out}/last.pth"])
    s = setup(args)
    resume(args, s)
    ema = s.ema.module.state_dict()
    assert ema.keys() == ckpt["ema"].keys()
    for name, tensor in ckpt["ema"].items():
        assert torch.equal(ema[name], tensor), name
    # and the EMA is not the trained weights: the test tells the two apart
    model = {k.removeprefix("model."): v for k, v in ckpt["module"].items() if k.startswith("model.")}
    assert any(not torch.equal(model[k], v) for k, v in ckpt["ema"].items() if v.is_floating_point())


# kills checkpoint.py:25-26 `torch.save(state, tmp); os.replace(tmp, path)` -> `torch.save(state, path)`: a crash
# while writing the next checkpoint (a full disk, a killed job) must leave the previous last.pth whole and loadable
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from masksub_kernels.training import checkpoint

    path = str(tmp_path / "last.pth")
    checkpoint.save_checkpoint(path, {"epoch": 0})
    real_save = torch.save

    def crash_halfway(state, file, *a, **k):  # writes some bytes, then fails as a full disk does
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_checkpoint(path, {"epoch": 1})
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load_checkpoint(path) == {"epoch": 0}


# kills cli.py:381 `if s.rank == 0: _save(...)` -> `if True:`: under torchrun every rank wrote last.pth (through the
# same last.pth.tmp: a rank's os.replace could fail on the other's renamed file, or publish a half-written one) and
# the logs; the torchrun tests passed either way. A process that is not rank 0 (its setup says rank 1, alone) trains
# and evaluates but writes nothing.
def test_only_rank_zero_writes_checkpoints_and_logs(tmp_path, monkeypatch):
    from masksub_kernels.training import cli

    real_setup = cli.setup

    def as_rank_one(args):
        s = real_setup(args)
        s.rank = 1  # world stays 1: no process group, the same loaders
        return s

    monkeypatch.setattr(cli, "setup", as_rank_one)
    out = tmp_path / "run"
    quick = ["--batch-size", "64", "--warmup-epochs", "0", "--no-progress", "--limit-batches", "1"]
    args = [*TINY_VIT, *quick, "--epochs", "1", "--keep-epoch-checkpoints", "--output", str(out)]
    assert main(args) == 0
    assert not out.exists() or os.listdir(out) == []


# kills resume.py:96 _SCHEDULE_OPTIONS without "min_lr": a resume with another --min-lr only got the "other
# options" note, and restored the checkpoint's scheduler -- its old floor, silently kept. Each option that
# create_scheduler_v2 takes must make a new schedule.
@pytest.mark.parametrize(
    ("option", "value"),
    [("--min-lr", ["1e-4"]), ("--warmup-lr", ["1e-4"]), ("--lr", ["2e-3"]), ("--warmup-prefix", [])],
)
def test_resume_with_another_schedule_option_builds_the_new_schedule(tmp_path, capsys, option, value):
    # --warmup-prefix: resumed from a checkpoint of before the option (no record: the warm-up inside the schedule)
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    out = str(tmp_path / "run")
    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "1", "--epochs", "3", "--no-progress"]
    assert main([*quick, "--epochs", "1", "--output", out]) == 0  # --epochs 1: ends at update 5 of 15
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    ckpt["args"]["epochs"] = 3  # as if the run had been started for 3 epochs: only ``option`` differs
    if option == "--warmup-prefix":
        del ckpt["args"]["warmup_prefix"]
    ckpt["scheduler"] = None  # built below for 3 epochs with the old options
    args = build_parser().parse_args([*quick, "--resume", f"{out}/last.pth"])
    old = setup(args)
    ckpt["scheduler"] = old.scheduler.state_dict()
    torch.save(ckpt, f"{out}/three.pth")
    capsys.readouterr()
    args = build_parser().parse_args([*quick, option, *value, "--resume", f"{out}/three.pth"])
    s = setup(args)
    resume(args, s)
    fresh = setup(build_parser().parse_args([*quick, option, *value]))  # the new options' schedule
    assert s.scheduler.state_dict() == fresh.scheduler.state_dict()
    fresh.scheduler.step_update(num_updates=5)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(fresh.optimizer.param_groups[0]["lr"])
    assert f"{option} " in capsys.readouterr().err.split("the learning rate follows the new schedule")[0]


# kills cli.py:338 `wall = rows[-1]["wall_time_s"] if rows else 0.0` -> `wall = 0.0`: after a resume the log's
# wall_time_s restarted at the resumed epoch's own time (the exact-resume tests drop the time columns)
def test_a_resumed_runs_wall_time_goes_on_from_the_checkpoints(tmp_path):
    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "0", "--no-progress", "--limit-batches", "1"]
    out = str(tmp_path / "run")
    assert main([*quick, "--epochs", "1", "--output", out]) == 0
    assert main([*quick, "--epochs", "2", "--resume", f"{out}/last.pth"]) == 0
    first, second = torch.load(f"{out}/last.pth", weights_only=False)["log"]
    assert second["wall_time_s"] >= first["wall_time_s"] + second["epoch_time_s"]


# kills resume.py:272 `if not diffs:` -> `if False:`: a resume with the checkpoint's own schedule options took the
# "new schedule" branch and printed "note: resuming with : the learning rate follows the new schedule" (an empty
# list of changes); the exact-resume tests never read stderr. Its scheduler is the checkpoint's, and nothing is noted.
def test_an_exact_resume_restores_the_scheduler_and_notes_nothing(tmp_path, capsys):
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    out = str(tmp_path / "run")
    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "1", "--no-progress"]
    assert main([*quick, "--epochs", "1", "--output", out]) == 0
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    ckpt["args"]["epochs"] = 2  # as if stopped after epoch 1 of 2: the same options as the resume's below
    ckpt["scheduler"] = setup(build_parser().parse_args([*quick, "--epochs", "2"])).scheduler.state_dict()
    torch.save(ckpt, f"{out}/of-two.pth")
    capsys.readouterr()
    args = build_parser().parse_args([*quick, "--epochs", "2", "--resume", f"{out}/of-two.pth"])
    s = setup(args)
    assert resume(args, s)[3][-1]["changed"] == []
    assert s.scheduler.state_dict() == ckpt["scheduler"]
    assert "note" not in capsys.readouterr().err


def test_a_layer_decay_checkpoint_of_the_old_grouping_is_refused_naming_why(tmp_path, monkeypatch, capsys):
    # helper-225's fix moved the final norm from the last block's layer-decay group to the head's: a checkpoint of
    # before has other groups, which the optimizer cannot load; the refusal names the change, not the options
    # (the same --layer-decay). Such a checkpoint is made here with timm's grouping and without the record.
    from masksub_kernels.training import optim

    quick = [*TINY_VIT, "--batch-size", "64", "--warmup-epochs", "0", "--no-progress", "--limit-batches", "1"]
    quick += ["--layer-decay", "0.5"]
    out = str(tmp_path / "run")
    with monkeypatch.context() as patched:
        patched.setattr(optim, "_FinalNormAtHead", lambda model: model)  # timm's matcher: the norm with the last block
        assert main([*quick, "--epochs", "1", "--output", out]) == 0
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    assert ckpt.pop("layer_decay_grouping") == 2
    torch.save(ckpt, f"{out}/old.pth")
    capsys.readouterr()
    assert main([*quick, "--epochs", "2", "--resume", f"{out}/old.pth"]) == 2
    assert "was written before --layer-decay put the final norm with the head" in capsys.readouterr().err
    assert (
        main([*quick, "--epochs", "2", "--resume", f"{out}/last.pth"]) == 2
    )  # with the record: the refusal of other options


def test_a_checkpoint_is_synced_to_the_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    # helper-228: without the fsync a filesystem may commit the rename before the data (a power loss then leaves an
    # empty last.pth); a filesystem that has no fsync (EINVAL) still gets its checkpoint
    import errno

    from masksub_kernels.training import checkpoint

    calls, real_replace = [], os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", a)) or real_replace(a, b))
    path = str(tmp_path / "last.pth")
    checkpoint.save_checkpoint(path, {"epoch": 1})
    # the directory's too, after the rename (helper-228: else a power loss may lose the rename)
    assert calls == [("fsync", f"{path}.tmp"), ("replace", f"{path}.tmp"), ("fsync", str(tmp_path))]

    def no_fsync(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", no_fsync)
    checkpoint.save_checkpoint(path, {"epoch": 2})
    assert checkpoint.load_checkpoint(path) == {"epoch": 2}


def test_a_folder_that_cannot_be_opened_for_its_fsync_does_not_fail_the_save(tmp_path, monkeypatch):
    # helper-234 / helper-236: a writable folder that cannot be read (os.open refuses it; the tests' root ignores mode
    # bits, so os.open is made to refuse) failed the save after the rename; its checkpoint is whole, the fsync skipped
    import errno

    from masksub_kernels.training import checkpoint

    real_open = os.open

    def refuse_folders(name, flags, *args, **kwargs):
        if os.path.isdir(name):
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(checkpoint.os, "open", refuse_folders)
    path = str(tmp_path / "last.pth")
    checkpoint.save_checkpoint(path, {"x": torch.ones(2)})
    assert torch.equal(checkpoint.load_checkpoint(path)["x"], torch.ones(2)) and not os.path.exists(path + ".tmp")


# kills resume.py `old = {"warmup_prefix": False, **old}` -> `{**old, "warmup_prefix": False}` (helper-237 S19): the
# default is for a checkpoint of before the option (no record); over a recorded True it made a --warmup-prefix run
# (the MAE and CLIP recipes), resumed with its own options, a "--warmup-prefix False -> True" change: a note, a rebuilt
# schedule in place of the checkpoint's state, and the change in log.json's meta (the schedule test above covers the
# missing record)
def test_a_warmup_prefix_run_resumes_its_own_schedule_state(tmp_path, capsys):
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    out = str(tmp_path / "run")
    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "1", "--warmup-prefix", "--epochs", "3"]
    assert main([*quick, "--no-progress", "--epochs", "1", "--output", out]) == 0
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    ckpt["args"]["epochs"] = 3  # as if the run had been started for 3 epochs (only --epochs' record changed)
    ckpt["scheduler"] = None
    args = build_parser().parse_args([*quick, "--resume", f"{out}/last.pth"])
    ckpt["scheduler"] = setup(args).scheduler.state_dict()  # the 3-epoch run's schedule state
    torch.save(ckpt, f"{out}/three.pth")
    capsys.readouterr()
    args = build_parser().parse_args([*quick, "--resume", f"{out}/three.pth"])
    s = setup(args)
    resumes = resume(args, s)[3]
    assert resumes[-1]["changed"] == []
    assert "the learning rate follows the new schedule" not in capsys.readouterr().err
    assert s.scheduler.state_dict() == ckpt["scheduler"]


def test_a_resume_names_the_other_arm_and_an_amp_change_on_the_cpu_is_no_other_run(tmp_path, capsys):
    # helper-296's probe: resuming a MaskSub checkpoint with --baseline (or the reverse) said "does not fit this
    # --baseline model ... Missing key(s)"; an --amp change on the CPU, where AMP does nothing, was noted as "the run
    # is not the one it continues"
    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "0", "--limit-batches", "1", "--device", "cpu"]
    for arm, extra in (("ms", []), ("bl", ["--baseline"])):
        assert main([*quick, *extra, "--epochs", "1", "--output", str(tmp_path / arm)]) == 0
    ms, bl = (str(tmp_path / arm / "last.pth") for arm in ("ms", "bl"))
    capsys.readouterr()
    assert main([*quick, "--baseline", "--epochs", "2", "--resume", ms]) == 2
    assert f"checkpoint {ms!r} is a MaskSub run: drop --baseline to resume it" in capsys.readouterr().err
    assert main([*quick, "--epochs", "2", "--resume", bl]) == 2
    assert f"checkpoint {bl!r} is a --baseline run: add --baseline to resume it" in capsys.readouterr().err
    args = build_parser().parse_args([*quick, "--amp", "--epochs", "2", "--resume", ms])
    changed = resume(args, setup(args))[3][-1]["changed"]
    assert changed == ["--amp False -> True (no effect: cpu trains in float32)", "--epochs 1 -> 2"]
    assert "is not the one it continues" not in capsys.readouterr().err
