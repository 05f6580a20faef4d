"""The training command's learning-rate schedule (run_setup.setup): timm's create_scheduler_v2 stepped per optimizer
update, its options checked, and the notes on what a run's schedule will do: a step / multistep schedule that never
decays within the run, a global batch other than the one the rates are for (--lr-global-batch)."""

from __future__ import annotations

import sys

from .run_setup import PROG, UsageError


def build_scheduler(args, optimizer, updates_per_epoch: int, rank: int):
    """timm's scheduler for --sched and its options, stepped per update (engine.py: step_update), --warmup-prefix's
    schedule over the epochs after the warm-up; a UsageError for what timm refuses or cannot step per update."""
    from timm.scheduler import create_scheduler_v2

    if args.sched == "plateau":  # timm asserts step_on_epochs, and it needs a metric that no step passes
        raise UsageError(
            "--sched plateau: timm's plateau scheduler steps per epoch on a validation metric; masksub-train steps "
            "its schedule per update: use cosine, tanh, step, multistep or poly"
        )
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=args.sched,
            num_epochs=max(args.epochs - args.warmup_epochs, 1) if args.warmup_prefix else args.epochs,  # >= 1
            warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix, warmup_lr=args.warmup_lr,
            min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch, **_decay_options(args, rank),
        )  # fmt: skip
    except ValueError as exc:  # an unknown name, or a schedule timm refuses for these options (wsd, rsqrt)
        names = " (timm's: cosine, tanh, step, multistep, poly, ...)" if "nknown" in str(exc) else ""
        raise UsageError(f"--sched {args.sched}: {exc}{names}") from exc
    if scheduler is None:  # timm before 1.0.31 for an unknown name (its first step crashed); 'none' for no schedule
        what = (
            "timm builds no schedule for it, and the command needs one" if args.sched == "none" else "Unknown scheduler"
        )
        raise UsageError(f"--sched {args.sched}: {what} (timm's: cosine, tanh, step, multistep, poly, ...)")
    if args.warmup_epochs >= args.epochs and rank == 0:  # (helper-237: accepted silently)
        print(
            f"{PROG}: note: --warmup-epochs {args.warmup_epochs} of --epochs {args.epochs}: the whole run is warm-up, "
            f"from --warmup-lr {args.warmup_lr:g} towards --lr",
            file=sys.stderr,
        )
    return scheduler


def _decay_options(args, rank: int) -> dict:
    """The --decay-* options given (timm's defaults for the others: what a run of before them trained with), and a
    note where a step / multistep schedule would never decay within the run (helper-237: --sched step --epochs 30
    kept --lr throughout, timm's first decay at epoch 90)."""
    given = {name: getattr(args, name) for name in ("decay_epochs", "decay_milestones", "decay_rate")}
    given = {name: value for name, value in given.items() if value is not None}
    milestones = given.get("decay_milestones")
    if milestones is not None and (min(milestones) < 1 or list(milestones) != sorted(set(milestones))):
        raise UsageError(f"--decay-milestones must be ascending epochs >= 1, got {' '.join(map(str, milestones))}")
    first = {"step": given.get("decay_epochs", 90), "multistep": (milestones or [90])[0]}.get(args.sched)
    span = args.epochs - args.warmup_epochs if args.warmup_prefix else args.epochs  # the schedule's epochs
    if first is not None and first >= span and rank == 0:
        option = "--decay-epochs" if args.sched == "step" else "--decay-milestones"
        print(
            f"{PROG}: note: --sched {args.sched} decays first at epoch {first:g} of the schedule's {span}: the rate "
            f"never decays in this run (pass {option})",
            file=sys.stderr,
        )
    return given


def note_global_batch(args, world: int) -> None:
    """A note where this run's global batch is not the --lr-global-batch its rates are for (a recipe's 8 processes
    on another count): the rates the linear scaling rule would give, as DeiT's, MAE's and Swin's code scale theirs.
    The rates stay as given (DeiT-III's --unscale-lr and FT-CLIP's used them unscaled)."""
    batch = args.batch_size * world * args.grad_accum_steps
    if batch == args.lr_global_batch:
        return
    factor = batch / args.lr_global_batch
    scaled = " ".join(f"--{name.replace('_', '-')} {getattr(args, name) * factor:.3g}"
                      for name in ("lr", "warmup_lr", "min_lr"))  # fmt: skip
    print(
        f"{PROG}: note: the learning rates are for a global batch of {args.lr_global_batch} (--lr-global-batch); "
        f"this run's is {batch} (--batch-size {args.batch_size} x {world} process(es) x --grad-accum-steps "
        f"{args.grad_accum_steps}): used as given; the linear scaling rule would give {scaled}",
        file=sys.stderr,
    )
