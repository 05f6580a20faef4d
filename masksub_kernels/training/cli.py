"""``masksub-train``: train any timm image model with MaskSub (or plainly, ``--baseline``), built on timm's pieces.

    masksub-train --model vit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=4 --epochs 30
    torchrun --nproc_per_node=8 -m masksub_kernels.train --data-dir /data/imagenet --model deit3_small_patch16_224 \
        --loss bce --bce-target-thresh 0.0 --mixup 0.8 --cutmix 1.0 --smoothing 0.0 --amp

timm provides the model (``create_model`` with any kwargs), the data transforms and ImageFolder reader, Mixup /
CutMix, the optimizer (``create_optimizer_v2``: weight decay off for 1-D parameters and ``no_weight_decay()``
names, the Swin mask token included) and the LR schedule (``create_scheduler_v2``, stepped per update). This file
wires them to ``MaskSub.train_step`` (schedules.py) and the epoch loop (engine.py); run_setup.py builds the
run and checks the options.

``--config FILE`` reads option values from a YAML file (config.py; the paper's recipes are in ``recipes/``), the
command line overriding it. Fine-tuning: ``--initial-checkpoint`` (pretrained.py), ``--layer-decay`` and
``--model-ema`` (optim.py); the ImageFolder augmentations: augment.py.

Without ``--data-dir`` the embedded digits set is used (training/data.py). Every epoch writes ``log.csv`` /
``log.json`` and ``last.pth`` in ``--output``; ``--resume PATH`` continues a run exactly (same weights as an
uninterrupted run, on the same machine and software).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch

from .data import LOADER_SEEDING
from .determinism import DETERMINISTIC_HELP, interrupt_traceback, run_command
from .help_format import FullNamesParser, HelpWithDefaults
from .lr_schedule import schedule_notes
from .optim import LAYER_DECAY_GROUPING
from .resume import resume
from .run_setup import PROG, Setup, UsageError, parse_kwargs, setup

__all__ = ["PROG", "UsageError", "build_parser", "main", "parse_kwargs"]


def build_parser() -> argparse.ArgumentParser:
    p = FullNamesParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpWithDefaults)
    p.add_argument("--config", default=None, metavar="FILE", help="YAML file of option values (recipes/*.yaml); "
                   "options on the command line override it")  # fmt: skip
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="vit_tiny_patch16_224", help="any timm model name")
    g.add_argument(
        "--model-kwargs", nargs="*", action="extend", default=None, metavar="K=V",
        help="extra create_model kwargs (several flags add up; a key given again, or a --config file's, takes the "
        "last value; K= removes K: the model's default)",
    )  # fmt: skip
    g.add_argument("--data-dir", default=None, help="ImageFolder root with train/ and val/ (default: digits)")
    g.add_argument("--img-size", type=int, default=None, help="input size (default: model img_size, 32 for digits)")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation")
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader processes (default 0 for digits, else 4; the count does not change the run: each sample's "
        "augmentation is seeded by (seed, epoch, rank, position))",
    )
    g.add_argument(
        "--drop", type=float, default=None, help="model dropout rate (timm's drop_rate; default: the model's own)"
    )
    g.add_argument(
        "--drop-path", type=float, default=None,
        help="model drop-path rate (timm's drop_path_rate; default: the model's own, e.g. 0.1 for a Swin)",
    )  # fmt: skip
    g.add_argument(
        "--drop-path-schedule", choices=("linear", "uniform"), default="linear",
        help="drop-path over the blocks: linear (timm's: 0 at the first block up to --drop-path at the last) or "
        "uniform (--drop-path in every block: the official DeiT-III models'; ViTs)",
    )  # fmt: skip
    # a checkpoint's mark that its --drop / --drop-path were passed to timm when given, 0 included (resume.py: a
    # checkpoint without the mark, written before 2026-12-05, did not pass a 0, their default then)
    p.set_defaults(rates_passed_at_zero=True)
    g.add_argument(
        "--global-pool",
        default=None,
        help="timm global_pool (ViT: token, avg; CNN: avg, max, ...; default: the model's)",
    )
    g.add_argument(
        "--fc-norm",
        choices=("pooled", "per-token"),
        default=None,
        help="ViT with --global-pool avg: the head's LayerNorm after the pool (pooled: timm's fc_norm, MAE) or on "
        "each token before it (per-token: FT-CLIP; from --initial-checkpoint it starts fresh); default: the model's",
    )
    g.add_argument(
        "--freeze-patch-embed",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="do not train the patch embedding, all of model.patch_embed (ViT: its projection, which FT-CLIP "
        "freezes as conv1; Swin: its norm too)",
    )
    g.add_argument(
        "--initial-checkpoint",
        default=None,
        metavar="FILE",
        help="start from these weights (timm, MAE, OpenAI / OpenCLIP CLIP or masksub-train file)",
    )
    g.add_argument(
        "--require-initial-checkpoint",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="refuse to start without --initial-checkpoint (or --resume): the fine-tuning recipes set it, as "
        "their settings (e.g. --lr 1e-5) are for pretrained weights; --no-require-initial-checkpoint trains such a "
        "recipe from random weights",
    )
    g.add_argument(
        "--head-init-scale",
        type=float,
        default=None,
        help="scale the classifier left at initialisation by --initial-checkpoint (MAE, FT-CLIP: 0.001)",
    )
    g.add_argument("--limit-batches", type=int, default=None, help="at most N training batches per epoch (smoke runs)")
    g = p.add_argument_group("augmentation (ImageFolder data; timm's create_transform)")
    g.add_argument("--aa", default=None, help="auto-augment: rand-m9-mstd0.5-inc1 (RandAugment), 3a (3-Augment), ...")
    g.add_argument("--color-jitter", type=float, default=0.4, help="off under RandAugment / AutoAugment, not 3a")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel", choices=("const", "rand", "pixel"), help="random erasing mode")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument(
        "--scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="RandomResizedCrop area range (default 0.08 1.0)",
    )
    # timm's names (a misspelt one was timm's bare KeyError('bicubc') at the transforms, helper-329); 'random'
    # (bilinear or bicubic per image) is a training interpolation only
    interps = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
    g.add_argument(
        "--train-interpolation",
        default="bilinear",
        choices=(*interps, "random"),
        help="training resize: bilinear, bicubic, random, ...",
    )
    g.add_argument("--interpolation", default="bilinear", choices=interps, help="validation resize interpolation")
    g.add_argument("--crop-pct", type=float, default=1.0, help="validation centre crop fraction (1.0: no crop)")
    g.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation (default: the model's)")
    g.add_argument("--std", type=float, nargs="+", default=None, help="normalisation (default: the model's)")
    g.add_argument("--aug-repeats", type=int, default=0, help="repeated augmentation: each image N times per epoch")
    g = p.add_argument_group("MaskSub")
    g.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="plain training (no sub-branch), for comparison",
    )
    g.add_argument("--schedule", choices=("sequential", "joint"), default="sequential")
    g.add_argument("--variant", choices=("mask", "drop", "path"), default="mask")
    g.add_argument("--mask-ratio", type=float, default=0.5)
    g.add_argument("--loss", choices=("ce", "bce"), default="ce")
    g.add_argument("--bce-target-thresh", type=float, default=None, help="BCE: binarise targets (DeiT-III: 0.0)")
    g.add_argument("--cell-size", type=int, default=None, help="mask cell (Swin: 8 tokens, CNN: 32 pixels)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=64, help="per process, per micro-step")
    g.add_argument("--grad-accum-steps", type=int, default=1)
    g.add_argument(
        "--lr-global-batch", type=int, default=None, metavar="N",
        help="the global batch (--batch-size x processes x --grad-accum-steps) the learning rates are for: where "
        "this run's differs, a note gives the rates the linear scaling rule would (--lr, as DeiT's and MAE's code "
        "scale; also --warmup-lr and --min-lr, as Swin's; the rates are used as given); the recipes set their "
        "sources' (8 processes); default: none, no note",
    )  # fmt: skip
    g.add_argument("--opt", default="adamw", help="timm optimizer name")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument(
        "--momentum", type=float, default=None,
        help="SGD-style momentum (default 0.9, for optimizers that take it; refused by those that do not)",
    )  # fmt: skip
    g.add_argument("--opt-eps", type=float, default=None, help="optimizer epsilon (default: the optimizer's)")
    g.add_argument(
        "--opt-betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
        help="Adam-family betas (default: the optimizer's, e.g. 0.9 0.999)",
    )  # fmt: skip
    g.add_argument(
        "--layer-decay", type=float, default=None, help="layer-wise lr decay (MAE: 0.65, FT-CLIP: 0.6; default: none)"
    )
    g.add_argument("--sched", default="cosine", help="timm scheduler name")
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument(
        "--warmup-prefix",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run the warm-up before the schedule, which then decays over the --epochs - --warmup-epochs after it "
        "(MAE's and FT-CLIP's cosine; step / multistep: decay epochs counted from the warm-up's end); default: the "
        "warm-up inside the schedule's --epochs (timm's, as DeiT-III, Swin and RSB ran)",
    )
    g.add_argument("--warmup-lr", type=float, default=1e-5)
    g.add_argument(
        "--decay-epochs", type=float, default=None,
        help="--sched step: epochs between decays (wsd, rsqrt: the decay phase's length, a value in (0, 1) a share of "
        "the schedule); default: timm's (step: 90; wsd, rsqrt: 0.2, the schedule's last 20%%)",
    )  # fmt: skip
    g.add_argument(
        "--decay-milestones", type=int, nargs="+", default=None, metavar="EPOCH",
        help="--sched multistep: the epochs to decay at, ascending; default: timm's (90 180 270)",
    )  # fmt: skip
    g.add_argument(
        "--decay-rate", type=float, default=None,
        help="--sched step / multistep: the factor of each decay; poly: the power; default: timm's (0.1)",
    )  # fmt: skip
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument(
        "--model-ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep an EMA of the weights, evaluate and save it",
    )
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="mixed precision (GPU)")
    g.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False, help=DETERMINISTIC_HELP)
    g.add_argument(
        "--output", default=None,
        help="checkpoints and logs (default: output/masksub-train, or the --resume checkpoint's directory)",
    )  # fmt: skip
    g.add_argument("--resume", default=None, help="checkpoint to continue from")
    g.add_argument(
        "--keep-epoch-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also keep epoch-N.pth every epoch",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--log-interval", type=int, default=10, help="progress-bar refresh, in steps")
    return p


class _Truncated:
    """The first ``n`` batches of a loader (whole accumulation windows per epoch)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.n <= 0:
            return
        for index, batch in enumerate(self.loader):
            yield batch
            if index + 1 >= self.n:  # (before the loader loads a batch more, to be dropped)
                return


def _make_step(args, s: Setup):
    """The micro-step: ``MaskSub.train_step``, or for --baseline a ``PlainStep`` with the same main criterion;
    under torchrun both go through DistributedDataParallel."""
    from .engine import PlainStep
    from .wrapper import supervised_loss

    ddp = None
    if s.world > 1:
        ddp_kwargs = {"device_ids": [s.device.index]} if s.device.type == "cuda" else {}
        if s.ms is not None:
            ddp = s.ms.wrap_ddp(**ddp_kwargs)
        else:
            ddp = torch.nn.parallel.DistributedDataParallel(s.model, **ddp_kwargs)
    if s.ms is not None:
        return functools.partial(s.ms.train_step, schedule=args.schedule)
    criterion = functools.partial(  # the same main criterion as MaskSub's
        supervised_loss,
        mode=args.loss,
        label_smoothing=args.loss_smoothing,
        target_threshold=args.bce_target_thresh,
    )
    return PlainStep(s.model, criterion, ddp)


def _epoch(args, s: Setup, step, epoch: int, num_updates: int, val):
    """Train epoch ``epoch`` (reseeded from (seed, epoch, rank): what makes --resume exact), then evaluate:
    (stats, validation metrics, seconds spent in both)."""
    from .data import train_loader
    from .engine import evaluate, seed_epoch, train_one_epoch
    from .families import unwrap_model

    seed_epoch(args.seed, epoch, s.rank)
    s.trained.train()
    cuda = s.device.type == "cuda"
    loader = train_loader(
        s.data.train, args.batch_size, epoch, args.seed, s.rank, s.world, s.workers, cuda, args.aug_repeats
    )
    ema_update = functools.partial(s.ema.update, unwrap_model(s.model)) if s.ema is not None else None
    stats = train_one_epoch(
        step,
        _Truncated(loader, s.batches),
        s.optimizer,
        device=s.device,
        scheduler=s.scheduler,
        num_updates=num_updates,
        mixup=s.mixup,
        scaler=s.scaler,
        clip_grad=args.clip_grad,
        accum_steps=args.grad_accum_steps,
        autocast=s.autocast,
        channels_last=args.channels_last,
        progress=s.rank == 0 and not args.no_progress,
        log_interval=args.log_interval,
        description=f"epoch {epoch + 1}/{args.epochs}",
        after_step=ema_update,
    )  # (no scheduler.step per epoch: the schedules are per update, step_on_epochs=False: step_update sets them)
    t0 = time.perf_counter()
    if s.world > 1:  # the ranks' BatchNorm statistics averaged: one model validated (and saved) on every shard
        from .distributed import average_batchnorm_stats

        for module in (unwrap_model(s.model), s.ema.module if s.ema is not None else None):
            if module is not None:
                average_batchnorm_stats(module)
    metrics = evaluate(s.model, val, device=s.device, autocast=s.autocast, channels_last=args.channels_last)
    if s.ema is not None:
        ema = evaluate(s.ema.module, val, device=s.device, autocast=s.autocast, channels_last=args.channels_last)
        metrics.update({f"ema_{k}": v for k, v in ema.items()})
    return stats, metrics, stats.seconds + time.perf_counter() - t0


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's learning rate (with --layer-decay the groups hold it times their lr_scale)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


class _Progress:
    """Where the run is, for the message of a Ctrl-C (SIGINT): the epoch being trained and the checkpoint that
    holds the run's latest epoch (--resume's, then each last.pth written)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))  # (torchrun's, until setup says)
        self.epoch: int | None = None  # the epoch being trained, from 1
        self.saving: tuple[str, int] | None = None  # last.pth's (or epoch-N.pth's) path and epoch while it is written
        self.checkpoint: tuple[str, int] | None = None  # the path that holds the run's latest epoch, and that epoch
        self.resuming: str | None = None  # --resume, before it is read

    def saved(self, path: str, epochs: int) -> None:
        self.checkpoint, self.saving = (path, epochs), None

    def resume_hint(self) -> str:
        """'; PATH holds epoch M: ...' for an error that stops the run (nothing before a checkpoint)."""
        if self.checkpoint is None:
            return ""
        path, epochs = self.checkpoint
        return f"; {path} holds epoch {epochs}: to continue, rerun the command with --resume {path}"

    def interrupted(self) -> str:
        """The message: which epoch stopped, which checkpoint holds which epoch, how to continue."""
        from .checkpoint import settle_interrupted_save

        if self.saving is not None:  # save_checkpoint writes PATH.tmp, then renames it: no .tmp left, renamed
            path, epochs = self.saving
            copy = self.checkpoint is not None and self.checkpoint[1] == epochs  # epoch-N.pth: last.pth holds N
            if settle_interrupted_save(path) and not copy:
                self.checkpoint = (path, epochs)
            where = (
                f"while saving {os.path.basename(path)} (epoch {epochs}'s copy)"
                if copy
                else f"while saving epoch {epochs}"
            )
        else:
            where = f"in epoch {self.epoch}" if self.epoch is not None else "before training"
        if self.checkpoint is None and self.resuming is not None:
            return f"interrupted {where}; {self.resuming} is unchanged: to continue, rerun the command"
        return f"interrupted {where}{self.resume_hint() or '; no checkpoint written yet'}"


_PROGRESS = _Progress()  # the running command's (main resets it)


def _save(args, s: Setup, epoch: int, num_updates: int, rows: list, meta: dict) -> None:
    """Rank 0, after each epoch: print the row, write last.pth (and epoch-N.pth) and the logs."""
    from .checkpoint import eager_state_dict, save_checkpoint
    from .data import class_names
    from .runlog import write_log

    row = rows[-1]
    sub = f" loss_sub {row['loss_sub']:.4f}" if row["loss_sub"] is not None else ""
    ema = f" (EMA {row['ema_top1']:.2f}%)" if row.get("ema_top1") is not None else ""
    print(
        f"epoch {epoch + 1}/{args.epochs}: loss_main {row['loss_main']:.4f}{sub} val top-1 {row['top1']:.2f}%{ema} "
        f"top-5 {row['top5']:.2f}% {row['images_per_s']:.0f} img/s lr {row['lr']:.2e}",
        flush=True,
    )
    state = {
        "epoch": epoch,
        "num_updates": num_updates,
        "updates_per_epoch": s.batches // args.grad_accum_steps,  # the schedule's unit (resume compares it)
        "classes": class_names(s.data.train),  # an ImageFolder's, in index order (resume refuses others)
        "world": s.world,  # who drew the batches and their augmentations (resume notes other counts)
        "workers": s.workers,  # recorded only: since data.LOADER_SEEDING 3 the count does not change the run
        "loader_seeding": LOADER_SEEDING,  # how the loaders were seeded (data.py)
        "layer_decay_grouping": LAYER_DECAY_GROUPING,  # where --layer-decay puts the final norm (optim.py)
        "module": eager_state_dict(s.trained),  # the eager names: resumable with or without --compile
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "ema": s.ema.module.state_dict() if s.ema is not None else None,
        "log": rows,
        "args": vars(args),
        "resumes": meta.get("resumes", []),
        "first_start": meta.get("first_start"),  # (runlog.first_start: a resume's meta.first_start)
    }
    # timm's loaders (load_checkpoint, create_model(..., pretrained_cfg_overlay=dict(file=...))) read the bare
    # model's weights under these keys: the same tensors as in "module" and "ema", which torch.save stores once
    state["state_dict"] = eager_state_dict(s.model)
    if state["ema"] is not None:
        state["state_dict_ema"] = state["ema"]
    last = os.path.join(args.output, "last.pth")
    _PROGRESS.saving = (last, epoch + 1)
    save_checkpoint(last, state)
    _PROGRESS.saved(last, epoch + 1)
    if args.keep_epoch_checkpoints:  # (a Ctrl-C here: its .tmp removed, last.pth named)
        _PROGRESS.saving = (os.path.join(args.output, f"epoch-{epoch + 1}.pth"), epoch + 1)
        save_checkpoint(_PROGRESS.saving[0], state)
        _PROGRESS.saving = None
    write_log(args.output, rows, meta)


def _what_runs(s: Setup) -> str:
    """The run's first line: the MaskSub family and what its sub-branch does (or --baseline's plain training), the
    backend of the library's ops and the device."""
    from .families import describe_sub_branch

    branch = "--baseline (plain training, no MaskSub sub-branch)"
    if s.ms is not None:
        branch = f"MaskSub family {describe_sub_branch(s.ms, s.img_size)}"
    world = f" x {s.world} processes" if s.world > 1 else ""
    return f"{branch}, backend {s.backend} on {s.device.type}{world}"


def _run(args) -> None:
    from .data import class_names, val_loader
    from .extras import require
    from .image_files import UnreadableImages, check_image_headers
    from .rank_zero import every_rank_check
    from .runlog import run_provenance

    require("the image training command", ("timm", "torchvision"), "train")
    if args.data_dir is None:
        require("the digits data set (no --data-dir)", ("sklearn",), "train")
    progress = _PROGRESS
    progress.resuming = args.resume
    s = setup(args)
    progress.rank = s.rank
    every_rank_check(lambda: check_image_headers(s.data.val, s.rank, s.world, s.workers), s.rank, s.world)
    for note in getattr(s.data, "notes", ()) if s.rank == 0 else ():
        print(f"{PROG}: note: {note}", file=sys.stderr)
    step = _make_step(args, s)
    start_epoch, num_updates, rows, wall, resumes = 0, 0, [], 0.0, []
    where = run_provenance(s.device)  # the commit, start time, CPU, threads, GPU (runlog.run_provenance)
    first = where  # where the run's first start ran (a resume: the checkpoint's record)
    if args.resume:
        start_epoch, num_updates, rows, resumes, first = resume(args, s, where)
        progress.saved(args.resume, start_epoch)
        wall = rows[-1]["wall_time_s"] if rows else 0.0
    if args.warmup_epochs >= args.epochs and s.rank == 0:  # after every check: a note, not an error
        print(
            f"{PROG}: note: --warmup-epochs {args.warmup_epochs} >= --epochs {args.epochs}: the learning rate is still "
            f"warming up when the run ends and never reaches --lr {args.lr}",
            file=sys.stderr,
        )
    for note in schedule_notes(args, s.world) if s.rank == 0 else ():  # (a decay never reached, the global batch)
        print(note, file=sys.stderr)
    meta = {
        "command": " ".join([PROG, *sys.argv[1:]]),
        "args": dict(vars(args)),
        "world_size": s.world,
        "device": str(s.device),
        "backend": s.backend,
        "torch": torch.__version__,
        **where,
        "first_start": first,  # the first start's provenance (null: resumed from a checkpoint that lacks it)
        "family": s.ms.family if s.ms is not None else None,
        # timm.create_model(args.model, **this) rebuilds the trained model (--global-pool, --fc-norm, the data's
        # classes and channels included; DeiT-III's uniform drop-path, a training setting, is not a kwarg)
        "create_model": getattr(s.model, "masksub_create_kwargs", None),
        "train_images": len(s.data.train),
        # what an epoch trains: whole batches of each process's sampler (timm's repeated augmentation rounds the
        # set down to 256s), --limit-batches, whole accumulation windows
        "batches_per_epoch": s.batches,
        "images_per_epoch": s.batches * args.batch_size * s.world,
        "classes": class_names(s.data.train),  # an ImageFolder's class names in index order
        "val_images": len(s.data.val),
        "initial_checkpoint": vars(s.pretrained) if s.pretrained is not None else None,
        "resumes": resumes,  # each resume's epoch, checkpoint, changed options (args: the latest's), commit, start
    }
    val = val_loader(s.data.val, args.batch_size, s.rank, s.world, s.workers, s.device.type == "cuda")
    if s.rank == 0:  # what runs: log.json's meta.family and meta.backend, in words
        print(f"{PROG}: {_what_runs(s)}", flush=True)
    for epoch in range(start_epoch, args.epochs):
        progress.epoch = epoch + 1
        try:
            stats, metrics, seconds = _epoch(args, s, step, epoch, num_updates, val)
        except UnreadableImages as exc:  # (where the run can continue from, once the files are fixed)
            raise UnreadableImages(f"{exc}{progress.resume_hint()}") from None
        num_updates = stats.num_updates
        wall += seconds
        rows.append(
            {
                "epoch": epoch + 1,
                "lr": _base_lr(s.optimizer),
                "loss": stats.loss,
                "loss_main": stats.loss_main,
                "loss_sub": stats.loss_sub,
                **metrics,
                "images_per_s": stats.images_per_s,
                "epoch_time_s": stats.seconds,
                "wall_time_s": wall,
            }
        )
        if s.rank == 0:
            _save(args, s, epoch, num_updates, rows, meta)
    if s.world > 1:
        from .distributed import close_process_group

        del step  # a PlainStep holds its DDP module (MaskSub's is forgotten by close_process_group)
        close_process_group(s.ms)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``masksub-train`` / ``python -m masksub_kernels.train``; returns the exit status."""
    from .config import parse_args_with_config
    from .rank_zero import option_error, options_parsed

    try:
        with options_parsed():  # (under torchrun argparse's error is local rank 0's alone, as option_error's)
            args = parse_args_with_config(build_parser(), argv)
    except UsageError as exc:  # a --config file's mistakes
        return option_error(PROG, str(exc))
    _PROGRESS.reset()
    try:
        return run_command(PROG, _run, args)
    except KeyboardInterrupt:  # Ctrl-C: one line (not torch's traceback through the loader), status 130 (128 + SIGINT)
        interrupt_traceback()  # (MASKSUB_TRACEBACK=1: where it was, for a hung run)
        if _PROGRESS.rank == 0:
            print(f"\n{PROG}: {_PROGRESS.interrupted()}", file=sys.stderr, flush=True)
        return 130
