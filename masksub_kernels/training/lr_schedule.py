"""The training command's learning-rate schedule (run_setup.setup): timm's create_scheduler_v2 stepped per optimizer
update, its options checked, and the notes on what a run's schedule will do (printed after every check: cli.py): a
step / multistep schedule that never decays within the run, a global batch other than the one the rates are for
(--lr-global-batch)."""

from __future__ import annotations

from .run_setup import PROG, UsageError


def build_scheduler(args, optimizer, updates_per_epoch: int):
    """timm's scheduler for --sched and its options, stepped per update (engine.py: step_update), --warmup-prefix's
    schedule over the epochs after the warm-up; a UsageError for what timm refuses or cannot step per update."""
    from timm.scheduler import create_scheduler_v2

    if args.sched == "plateau":  # timm asserts step_on_epochs, and it needs a metric that no step passes
        raise UsageError(
            "--sched plateau: timm's plateau scheduler steps per epoch on a validation metric; masksub-train steps "
            "its schedule per update: use cosine, tanh, step, multistep, poly, wsd or rsqrt"
        )
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=args.sched,
            num_epochs=max(args.epochs - args.warmup_epochs, 1) if args.warmup_prefix else args.epochs,  # >= 1
            warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix, warmup_lr=args.warmup_lr,
            min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch, **_decay_options(args),
        )  # fmt: skip
    except ValueError as exc:  # an unknown name, or a schedule timm refuses for these options (wsd, rsqrt)
        names = " (timm's: cosine, tanh, step, multistep, poly, ...)" if "nknown" in str(exc) else ""
        raise UsageError(f"--sched {args.sched}: {exc}{names}") from exc
    if scheduler is None:  # timm before 1.0.31 for an unknown name (its first step crashed); 'none' for no schedule
        what = (
            "timm builds no schedule for it, and the command needs one" if args.sched == "none" else "Unknown scheduler"
        )
        raise UsageError(f"--sched {args.sched}: {what} (timm's: cosine, tanh, step, multistep, poly, ...)")
    return scheduler


def _decay_options(args) -> dict:
    """The --decay-* options given (timm's defaults for the others: what a run of before them trained with)."""
    given = {name: getattr(args, name) for name in ("decay_epochs", "decay_milestones", "decay_rate")}
    given = {name: value for name, value in given.items() if value is not None}
    milestones = given.get("decay_milestones")
    if milestones is not None and (min(milestones) < 1 or list(milestones) != sorted(set(milestones))):
        raise UsageError(f"--decay-milestones must be ascending epochs >= 1, got {' '.join(map(str, milestones))}")
    return given


def schedule_notes(args, world: int) -> list[str]:
    """The notes on what this run's schedule does, printed by rank 0 after every check (an error comes first):
    a step / multistep schedule that never decays within the run (helper-237: --sched step --epochs 30 kept --lr
    throughout, timm's first decay at epoch 90), a global batch other than --lr-global-batch's."""
    notes = []
    first = {"step": args.decay_epochs or 90, "multistep": (args.decay_milestones or [90])[0]}.get(args.sched)
    span = args.epochs - args.warmup_epochs if args.warmup_prefix else args.epochs  # the schedule's epochs
    if first is not None and first >= span:
        option = "--decay-epochs" if args.sched == "step" else "--decay-milestones"
        notes.append(
            f"{PROG}: note: --sched {args.sched} decays first at epoch {first:g} of the schedule's {span}: the rate "
            f"never decays in this run (pass {option})"
        )
    if args.lr_global_batch is not None:
        notes += _global_batch_note(args, world)
    return notes


def _global_batch_note(args, world: int) -> list[str]:
    """A note where this run's global batch is not the --lr-global-batch its rates are for (a recipe's 8 processes
    on another count): --lr times the ratio, as DeiT's and MAE's code scale the learning rate (theirs only), and
    --warmup-lr and --min-lr times it too, as Swin's code scales all three. The rates stay as given (DeiT-III's
    --unscale-lr, FT-CLIP's and RSB's timm 0.5.4 train.py used them unscaled; the recipes' rates are already scaled
    for their 8 processes where their sources scaled them: mae_finetune's --lr, swin's three)."""
    batch = args.batch_size * world * args.grad_accum_steps
    if batch == args.lr_global_batch:
        return []
    factor = batch / args.lr_global_batch
    lr, warmup_lr, min_lr = (f"{getattr(args, name) * factor:.3g}" for name in ("lr", "warmup_lr", "min_lr"))
    return [
        f"{PROG}: note: the learning rates are for a global batch of {args.lr_global_batch} (--lr-global-batch); "
        f"this run's is {batch} (--batch-size {args.batch_size} x {world} process(es) x --grad-accum-steps "
        f"{args.grad_accum_steps}): used as given; the linear scaling rule would give --lr {lr} (DeiT's and MAE's "
        f"code scale only the learning rate; Swin's also --warmup-lr {warmup_lr} --min-lr {min_lr})"
    ]
