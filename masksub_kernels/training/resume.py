"""``--resume``: a masksub-train checkpoint loaded into the set-up run (run_setup.Setup), what changed since it was
saved checked (the schedule, the optimizer's settings, the options that build the model and its parameter groups)."""

from __future__ import annotations

import json
import os
import re
import sys

from .data import LOADER_SEEDING
from .optim import LAYER_DECAY_GROUPING
from .run_setup import PROG, Setup, UsageError

__all__ = ["resume"]


# The options that shape the learning-rate schedule: a resumed run with other values gets a new schedule.
_SCHEDULE_OPTIONS = (
    *("epochs", "sched", "lr", "warmup_epochs", "warmup_prefix", "warmup_lr", "min_lr", "batch_size"),
    *("grad_accum_steps", "decay_epochs", "decay_milestones", "decay_rate"),
)
# The optimizer's settings: optimizer.load_state_dict restores the checkpoint's into the parameter groups, so the
# command line's are put back after it (the moments stay the checkpoint's) and a note names the changed ones. Only
# the group keys these options set: others are the optimizer's own state (timm's Lookahead counts its steps in
# its groups' lookahead_step).
_OPTIMIZER_OPTIONS = ("weight_decay", "opt_eps", "opt_betas", "momentum", "layer_decay")
_GROUP_SETTINGS = ("weight_decay", "eps", "betas", "momentum", "lr_scale")
# Options that say where and how a run executes, not what it trains (or are checked above, or derived from others):
# any other option that differs from the checkpoint's gets a note, and the log's meta keeps the changes
_UNCHECKED = (
    *("config", "workers", "device", "compile", "output", "resume", "keep_epoch_checkpoints", "no_progress"),
    *("log_interval", "channels_last", "initial_checkpoint", "limit_batches", "fc_norm", "freeze_patch_embed"),
    *("opt", "model_ema", "loss_smoothing", "mixup_smoothing", *_SCHEDULE_OPTIONS, *_OPTIMIZER_OPTIONS),
    # img_size: resolved into model_kwargs (compared there); head_init_scale: only with --initial-checkpoint
    *("img_size", "head_init_scale"),
    *("deterministic", "rates_passed_at_zero"),  # the bits of a GPU run, not its training; a checkpoint's mark
    "lr_global_batch",  # a note's reference, not what trains
    "require_initial_checkpoint",  # a check before the start (--resume satisfies it)
)


# Options added since checkpoints were first written, with the behaviour a checkpoint without them trained with: a
# resumed run that sets another value gets a note (e.g. the DeiT-III recipe's uniform drop-path, not silently)
_ADDED = {"drop_path_schedule": "linear"}


def _plain(value):
    """A value as compared across a checkpoint: tuples as lists (YAML gives lists, the command line tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def other_changes(old: dict, args) -> list[str]:
    """'--NAME old -> new' for each option of the command line that differs from the checkpoint's and is not
    handled elsewhere (_UNCHECKED): the seed, the loss, the mask ratio, augmentation, regularisation, ..."""

    def same(name: str) -> bool:
        a, b = _plain(old.get(name, _ADDED.get(name))), _plain(getattr(args, name))
        if name in ("drop", "drop_path") and a == 0.0 and not old.get("rates_passed_at_zero"):
            a = None  # an older checkpoint's 0, its default then, was never passed to timm: the model's own rate
        if name == "data_dir" and a is not None and b is not None:
            a, b = os.path.realpath(a), os.path.realpath(b)
        return a == b

    names = [n for n in vars(args) if (n in old or n in _ADDED) and n not in _UNCHECKED and not same(n)]
    return [f"--{n.replace('_', '-')} {old.get(n, _ADDED.get(n))!r} -> {getattr(args, n)!r}" for n in names]


def _first_lines(message: str, count: int = 2, limit: int = 400) -> str:
    """The first ``count`` non-empty lines of an error message, on one line, at most ``limit`` characters (torch's
    load_state_dict error: a header, then the missing and unexpected keys)."""
    text = " ".join([line.strip() for line in message.splitlines() if line.strip()][:count])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_no_later_epochs(output: str, checkpoint: str, start_epoch: int) -> None:
    """Rank 0: --output holds no epoch after the checkpoint's (log.json's rows, epoch-N.pth), which this run would
    overwrite: the checkpoint's own directory (an older epoch-N.pth resumed there), or another holding such files."""
    later = [
        int(m.group(1)) for m in map(_EPOCH_FILE.fullmatch, _listdir(output)) if m and int(m.group(1)) > start_epoch
    ]
    try:
        with open(os.path.join(output, "log.json")) as f:
            later += [int(row["epoch"]) for row in json.load(f)["epochs"] if int(row["epoch"]) > start_epoch]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or not this command's log: nothing to lose there
        pass
    if later:
        raise UsageError(
            f"--output {output!r} holds a run's epochs up to {max(later)} (log.json's rows, epoch-N.pth), and "
            f"{checkpoint!r} is after epoch {start_epoch}: resuming there would overwrite them; pass another --output "
            "(or delete the later epochs' files)"
        )


_EPOCH_FILE = re.compile(r"epoch-(\d+)\.pth")


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def resume(args, s: Setup, provenance: dict | None = None) -> tuple[int, int, list, list, dict | None]:
    """Load --resume into the set-up run; returns (first epoch to train, optimizer updates so far, log rows, the
    run's resumes: {'epoch', 'from', 'changed'} for each, this one last, with this start's commit, dirty flag, start
    time, CPU, threads and GPU from ``provenance`` (runlog.resume_provenance), kept in log.json's meta and the
    checkpoints; the first start's provenance, meta.first_start: None from a checkpoint of before 2026-12-07).

    Same schedule options and updates per epoch as the checkpoint's run: the scheduler's state is restored and the
    run continues exactly (the checkpoint's update count). Other ones (e.g. a larger --epochs to extend a run, another
    number of processes): the new schedule is followed from the next epoch's start in it, epoch x this run's updates
    per epoch (returned as the updates so far), as timm's train.py counts, and a note says so -- restoring the old
    state would silently keep the old schedule (timm schedulers save their length in their state)."""
    from .checkpoint import load_eager_state_dict, read_run_checkpoint
    from .data import class_names
    from .rank_zero import rank_zero_check
    from .runlog import resume_provenance

    ckpt = read_run_checkpoint(args.resume, ("module", "optimizer", "scheduler", "epoch", "num_updates", "log"), PROG)
    old = ckpt.get("args", {})
    # fc_norm None is the model's default, the same model as one of the two: the module's load decides then
    built = [n for n in ("fc_norm", "freeze_patch_embed") if old.get(n) is not None and getattr(args, n) is not None]
    built = [n for n in built if old[n] != getattr(args, n)]
    if built:
        diffs = ", ".join(f"--{n.replace('_', '-')} {old[n]} -> {getattr(args, n)}" for n in built)
        raise UsageError(
            f"checkpoint {args.resume!r} was trained otherwise: {diffs}; resume it with its options (a resume repeats "
            "the run's options, log.json's meta.command, with --resume added)"
        )
    if "baseline" in old and bool(old["baseline"]) != args.baseline:  # the module's keys are another arm's
        arm, fix = ("a --baseline run", "add --baseline") if old["baseline"] else ("a MaskSub run", "drop --baseline")
        raise UsageError(
            f"checkpoint {args.resume!r} is {arm}: {fix} to resume it (or start a run of the other arm from its "
            "weights with --initial-checkpoint)"
        )
    if "opt" in old and str(old["opt"]).lower() != args.opt.lower():  # its moments are another optimizer's
        raise UsageError(
            f"checkpoint {args.resume!r} was trained with --opt {old['opt']}: resume it with the same optimizer "
            f"(got --opt {args.opt}), or start a new run from its weights with --initial-checkpoint"
        )
    saved_classes, classes = ckpt.get("classes"), class_names(s.data.train)
    if saved_classes is not None and classes is not None and saved_classes != classes:  # the head's rows, renamed
        first = next(
            (i for i, (a, b) in enumerate(zip(saved_classes, classes)) if a != b),
            min(map(len, (saved_classes, classes))),
        )
        raise UsageError(
            f"checkpoint {args.resume!r} was trained on other classes than --data-dir's: class {first} was "
            f"{saved_classes[first] if first < len(saved_classes) else None!r}, is now "
            f"{classes[first] if first < len(classes) else None!r} ({len(saved_classes)} -> {len(classes)} classes)"
        )
    if s.ema is None and ckpt.get("ema") is not None:  # its EMA would be dropped from the next checkpoint on
        raise UsageError(
            f"checkpoint {args.resume!r} has EMA weights: resume it with --model-ema (and its --model-ema-decay)"
        )
    if s.ema is not None and ckpt.get("ema") is None:
        raise UsageError(f"checkpoint {args.resume!r} has no EMA weights: resume it without --model-ema")
    # the command line's settings of each parameter group (the learning rate is the scheduler's, below)
    settings = [{k: g[k] for k in _GROUP_SETTINGS if k in g} for g in s.optimizer.param_groups]
    try:
        load_eager_state_dict(s.trained, ckpt["module"])  # saved with or without --compile
    except (RuntimeError, ValueError, KeyError) as exc:
        what = "--baseline " if args.baseline else ""
        raise UsageError(
            f"checkpoint {args.resume!r} does not fit this {what}model ({args.model} {args.model_kwargs}): resume "
            "with the options it was trained with (--model, --model-kwargs, --fc-norm, ...: a resume repeats the run's "
            f"options, log.json's meta.command, with --resume added). {_first_lines(str(exc))}"
        ) from exc
    try:
        s.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:  # the groups are made by the options below
        if args.layer_decay is not None and ckpt.get("layer_decay_grouping", 1) != LAYER_DECAY_GROUPING:
            raise UsageError(
                f"checkpoint {args.resume!r} was written before --layer-decay put the final norm with the head "
                "(2026-12-06; timm's matcher had it with the last block): its optimizer's parameter groups are not "
                f"this version's. Resume it with the version that wrote it (or, where the run's options differ, with "
                f"its --weight-decay (0 or not) and --freeze-patch-embed). {_first_lines(str(exc))}"
            ) from exc
        raise UsageError(
            f"checkpoint {args.resume!r}: its optimizer's parameter groups are not this run's: resume with its "
            f"--layer-decay (or none), --weight-decay (0 or not) and --freeze-patch-embed. {_first_lines(str(exc))}"
        ) from exc
    for group, own in zip(s.optimizer.param_groups, settings):
        old_scale = group.get("lr_scale", 1.0)
        group.update(own)
        if old_scale:  # another --layer-decay: the restored lr (schedule x the old scale) at the new scale now
            group["lr"] *= group.get("lr_scale", 1.0) / old_scale
    changed = [name for name in _OPTIMIZER_OPTIONS if name in old and old[name] != getattr(args, name)]
    recorded = [f"--{n.replace('_', '-')} {old[n]} -> {getattr(args, n)}" for n in changed]
    if changed and s.rank == 0:
        diffs = ", ".join(f"--{n.replace('_', '-')} {old[n]} -> {getattr(args, n)}" for n in changed)
        print(
            f"{PROG}: note: resuming with {diffs}: the optimizer takes the new settings from epoch "
            f"{ckpt['epoch'] + 2} on (its moments are the checkpoint's)",
            file=sys.stderr,
        )
    start_epoch, num_updates = ckpt["epoch"] + 1, ckpt["num_updates"]
    if start_epoch >= args.epochs:
        raise UsageError(
            f"checkpoint {args.resume!r} is after epoch {start_epoch} and --epochs is {args.epochs}: nothing to "
            "train (pass a larger --epochs to extend the run)"
        )
    rank_zero_check(lambda: _check_no_later_epochs(args.output, args.resume, start_epoch), s.rank, s.world)
    # a checkpoint of before 2026-12-06: the warm-up inside the schedule, timm's decay defaults (None: not passed)
    old = {"warmup_prefix": False, "decay_epochs": None, "decay_milestones": None, "decay_rate": None, **old}
    changed_schedule = [name for name in _SCHEDULE_OPTIONS if name in old and old[name] != getattr(args, name)]
    diffs = [f"--{n.replace('_', '-')} {old[n]} -> {getattr(args, n)}" for n in changed_schedule]
    # The schedule is counted in optimizer updates: other updates per epoch (another number of processes,
    # --limit-batches, --aug-repeats) make another schedule even with the same options.
    updates_per_epoch = s.batches // args.grad_accum_steps
    old_updates, inferred = ckpt.get("updates_per_epoch"), ""
    if old_updates is None and ckpt["num_updates"] % (ckpt["epoch"] + 1) == 0:
        # a checkpoint of before 2026-12-01 (no such key): its count over the epochs it finished, said so
        old_updates = ckpt["num_updates"] // (ckpt["epoch"] + 1)
        epochs = ckpt["epoch"] + 1
        inferred = f" (inferred: {ckpt['num_updates']} updates in {epochs} epoch{'s' if epochs > 1 else ''})"
    if old_updates is not None and old_updates != updates_per_epoch:
        diffs.append(
            f"updates per epoch {old_updates}{inferred} -> {updates_per_epoch} (processes, --limit-batches, "
            "--aug-repeats)"
        )
    schedule_diffs = list(diffs)  # recorded below (updates per epoch among them)
    if not diffs:
        s.scheduler.load_state_dict(ckpt["scheduler"])
    else:
        # timm's train.py counts epoch x this run's updates per epoch: the new schedule at the epoch's start (the
        # checkpoint's own count, from a run of fewer processes, was past its end: the rest at --min-lr; helper-313)
        num_updates = start_epoch * updates_per_epoch
        counted = "" if num_updates == ckpt["num_updates"] else (
            f", epoch {start_epoch} x {updates_per_epoch} as timm's train.py counts; the checkpoint had made "
            f"{ckpt['num_updates']}"
        )  # fmt: skip
        s.scheduler.step_update(num_updates=num_updates)  # the new schedule's value at this update
        if s.rank == 0:
            diffs = ", ".join(diffs)
            print(
                f"{PROG}: note: resuming with {diffs}: the learning rate follows the new schedule from update "
                f"{num_updates} on (the updates so far followed the old one{counted})",
                file=sys.stderr,
            )
    others = other_changes(old, args)
    if s.device.type != "cuda":  # AMP runs on CUDA only: this run trains in float32 whatever --amp / --amp-dtype say
        inert = [note for note in others if note.startswith(("--amp ", "--amp-dtype "))]
        others = [note for note in others if note not in inert]
        recorded += [f"{note} (no effect: {s.device.type} trains in float32)" for note in inert]
    # Who draws the batches and their augmentations: the processes (a rank's share of the order, and its samples'
    # seeds), and how the loaders seed them (data.LOADER_SEEDING). Not the loader workers: since seeding 3 a sample's
    # augmentation comes from (seed, epoch, rank, position) whichever process loads it. Before 3 the workers (or the
    # main process) drew them: another seeding, not another --workers, is noted then, for a run that augments; a
    # torchrun checkpoint of before 2026-12-06 (no record: 1) had other orders (seed != 0) too
    seeding = ckpt.get("loader_seeding", 1)
    drawers = {"processes": (ckpt.get("world"), s.world, "they draw the batches and their augmentations")}
    orders = seeding < 2 and max(ckpt.get("world") or 1, s.world) > 1  # torchrun's orders of before 2026-12-06
    if (seeding < LOADER_SEEDING and not args.no_aug) or orders:
        what = "other batch orders and augmentations" if orders else "other augmentations, the same batch orders"
        drawers["loaders' seeding"] = (seeding, LOADER_SEEDING, what)
    for what, (saved, now, why) in drawers.items():
        if saved is not None and saved != now:
            others.append(f"{what} {saved} -> {now} ({why})")
    recorded += schedule_diffs + others
    if others and s.rank == 0:
        print(
            f"{PROG}: note: resuming with other options than the checkpoint's: {', '.join(others)}; from epoch "
            f"{start_epoch + 1} on the run is not the one it continues (log.json's meta records the changes)",
            file=sys.stderr,
        )
    if s.scaler is not None and ckpt.get("scaler"):
        s.scaler.load_state_dict(ckpt["scaler"])
    if s.ema is not None:
        s.ema.module.load_state_dict(ckpt["ema"])
    if args.initial_checkpoint is not None and s.rank == 0:  # not loaded (run_setup): the recipes' commands pass it
        print(
            f"{PROG}: note: --initial-checkpoint is not loaded on --resume: the weights are the checkpoint's",
            file=sys.stderr,
        )
    resume_from = os.path.abspath(args.resume)
    entry = {"epoch": start_epoch, "from": resume_from, "changed": recorded}
    if provenance is not None:  # this start's commit, dirty flag, start time and machine (runlog.PROVENANCE)
        entry.update(resume_provenance(provenance))
    return start_epoch, num_updates, ckpt["log"], [*ckpt.get("resumes", []), entry], ckpt.get("first_start")
