"""masksub_kernels.training.lr_schedule: the training command's schedule per update (timm's, its --decay-* options),
what a resume does with them, and the notes on a schedule that never decays and on the global batch."""

import pytest

pytest.importorskip("sklearn", reason="the default dataset (digits) comes from scikit-learn")

import torch
from test_run_setup import TINY_VIT

from masksub_kernels.train import build_parser, main
from masksub_kernels.training.lr_schedule import schedule_notes
from masksub_kernels.training.run_setup import UsageError, check_args, setup


def test_step_and_multistep_decay_where_their_options_say(tmp_path, capsys):
    # helper-237: --sched step / multistep took timm's defaults (a decay every 90 epochs; at 90, 180, 270) with no
    # option to change them: a 30-epoch run never decayed. --decay-epochs / --decay-milestones / --decay-rate
    base = ["--epochs", "4", "--warmup-epochs", "0", "--lr", "1e-3"]
    s = setup(build_parser().parse_args([*TINY_VIT, "--limit-batches", "2", "--output", str(tmp_path), *base,
                                         "--sched", "step", "--decay-epochs", "1", "--decay-rate", "0.5"]))  # fmt: skip
    rates = []
    for update in range(8):  # 2 updates an epoch: halved at every epoch
        s.scheduler.step_update(num_updates=update)
        rates.append(s.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4])
    s = setup(build_parser().parse_args([*TINY_VIT, "--limit-batches", "2", "--output", str(tmp_path), *base,
                                         "--sched", "multistep", "--decay-milestones", "1", "3"]))  # fmt: skip
    rates = []
    for update in range(8):
        s.scheduler.step_update(num_updates=update)
        rates.append(s.optimizer.param_groups[0]["lr"])
    # timm's rate 0.1, one update ahead of each milestone (its MultiStepLRScheduler bisects t + 1)
    assert rates == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5])
    assert "never decays" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, note",
    [
        (["--sched", "step"], "--sched step decays first at epoch 90 of the schedule's 4: the rate never decays in "
                              "this run (pass --decay-epochs)"),
        (["--sched", "multistep", "--decay-milestones", "4", "6"], "--sched multistep decays first at epoch 4 of the "
                                                                   "schedule's 4"),
        (["--sched", "step", "--decay-epochs", "3", "--warmup-epochs", "1", "--warmup-prefix"], "decays first at "
                                                                  "epoch 3 of the schedule's 3"),
        (["--sched", "step", "--decay-epochs", "3", "--warmup-epochs", "1"], None),  # timm counts the warm-up in
        (["--sched", "cosine", "--decay-epochs", "1"], None),
    ],
)  # fmt: skip
def test_a_schedule_that_never_decays_gets_a_note(tmp_path, options, note):
    notes = "\n".join(schedule_notes(build_parser().parse_args([*TINY_VIT, "--epochs", "4", *options]), 1))
    assert (note in notes) if note else "never decays" not in notes


def test_the_schedule_notes_come_after_every_check(tmp_path, capsys):
    # printed by the command after the resume's checks: an error is the first line of what it says (as the warm-up's
    # note, helper-148); a run prints them
    assert main([*TINY_VIT, "--sched", "step", "--epochs", "2", "--resume", str(tmp_path / "none.pth"),
                 "--output", str(tmp_path / "a"), "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("masksub-train: error: checkpoint") and "never decays" not in err
    assert main([*TINY_VIT, "--sched", "step", "--epochs", "1", "--warmup-epochs", "0", "--limit-batches", "1",
                 "--lr-global-batch", "128", "--output", str(tmp_path / "b"), "--no-progress"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "--sched step decays first at epoch 90 of the schedule's 1" in err and "global batch of 128" in err


def test_decay_options_out_of_range_are_usage_errors(tmp_path):
    for options, message in [
        (["--decay-milestones", "3", "2"], "--decay-milestones must be ascending epochs >= 1, got 3 2"),
        (["--decay-milestones", "0", "2"], "--decay-milestones must be ascending epochs >= 1, got 0 2"),
        (["--decay-milestones", "2", "2"], "--decay-milestones must be ascending epochs >= 1, got 2 2"),
        (["--decay-epochs", "0"], r"--decay-epochs must be in \(0\.0, inf\), got 0\.0"),
        (["--decay-rate", "-1"], r"--decay-rate must be in \(0\.0, inf\), got -1\.0"),
    ]:
        args = build_parser().parse_args([*TINY_VIT, "--sched", "multistep", "--output", str(tmp_path), *options])
        with pytest.raises(UsageError, match=message):
            setup(args)


def test_a_decay_option_changed_on_resume_makes_a_new_schedule(tmp_path, capsys):
    # the --decay-* options shape the schedule (resume.py's _SCHEDULE_OPTIONS); a checkpoint of before them (no
    # record) trained with timm's defaults: the same options (none) resume its schedule state quietly
    out = str(tmp_path / "run")
    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "0", "--sched", "step", "--no-progress"]
    assert main([*quick, "--epochs", "2", "--keep-epoch-checkpoints", "--output", out]) == 0
    ckpt = torch.load(f"{out}/epoch-1.pth", weights_only=False)
    for name in ("decay_epochs", "decay_milestones", "decay_rate"):
        del ckpt["args"][name]  # as a checkpoint of before the options
    torch.save(ckpt, f"{out}/old.pth")
    capsys.readouterr()
    assert main([*quick, "--epochs", "2", "--resume", f"{out}/old.pth", "--output", str(tmp_path / "a")]) == 0
    assert "follows the new schedule" not in capsys.readouterr().err
    assert main([*quick, "--epochs", "2", "--resume", f"{out}/old.pth", "--output", str(tmp_path / "b"),
                 "--decay-rate", "0.5"]) == 0  # fmt: skip
    assert "--decay-rate None -> 0.5" in capsys.readouterr().err


def test_a_global_batch_other_than_the_rates_one_gets_a_note(tmp_path):
    # --lr-global-batch (the recipes': their sources' 8 processes): a run of another global batch is told the rates
    # the linear rule would give, which it does not apply; the same batch, or no --lr-global-batch, says nothing
    def note(*options: str, world: int = 1) -> str:
        args = build_parser().parse_args([*TINY_VIT, "--batch-size", "16", *options])
        return "".join(line for line in schedule_notes(args, world) if "global batch" in line)

    assert note("--lr-global-batch", "128", "--grad-accum-steps", "2", "--lr", "1e-3", "--min-lr", "1e-6") == (
        "masksub-train: note: the learning rates are for a global batch of 128 (--lr-global-batch); this run's is 32 "
        "(--batch-size 16 x 1 process(es) x --grad-accum-steps 2): used as given; the linear scaling rule would give "
        "--lr 0.00025 (DeiT's and MAE's code scale only the learning rate; Swin's also --warmup-lr 2.5e-06 --min-lr "
        "2.5e-07)"
    )
    assert note("--lr-global-batch", "32", "--grad-accum-steps", "2") == note() == ""
    assert "this run's is 64 (--batch-size 16 x 4 process(es) x" in note("--lr-global-batch", "128", world=4)
    with pytest.raises(UsageError, match=r"--lr-global-batch must be in \[1, inf\), got 0"):
        check_args(build_parser().parse_args(["--lr-global-batch", "0", "--output", str(tmp_path)]))
