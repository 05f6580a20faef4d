"""The training command's set-up: options checked, then the process group, data, model, MaskSub wrapper,
optimizer, schedule and Mixup built (``Setup``); ``--resume`` is resume.py's. A configuration mistake is a
``UsageError``, printed by the command as ``masksub-train: error: ...`` with exit status 2."""

from __future__ import annotations

import ast
import datetime
import difflib
import functools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PROG", "Setup", "UsageError", "check_args", "parse_kwargs", "setup"]

PROG = "masksub-train"


class UsageError(Exception):
    """A user-facing configuration error: printed as ``masksub-train: error: ...``, exit status 2."""


def parse_kwargs(items: list[str] | None) -> dict:
    """``['img_size=32', 'patch_size=4', 'global_pool=avg']`` -> {'img_size': 32, 'patch_size': 4, ...}: values
    are Python literals where they parse as one (numbers, tuples, True / None), strings otherwise; a key's last value
    counts, and ``key=`` (no value) removes the key given before it (a --config file's: the model's own default
    then, where ``key=None`` would pass None, e.g. no LayerScale for a DeiT-III). A value that log.json cannot hold
    (a set, bytes, a complex number: json refuses them) is refused: the run records its kwargs (meta.args,
    meta.create_model) at every epoch's end."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-kwargs expects key=value pairs, got {item!r}")
        if not value:
            out.pop(key, None)
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
        try:
            json.dumps(out[key])
        except (TypeError, ValueError):
            raise UsageError(
                f"--model-kwargs {item!r}: a {type(out[key]).__name__} value; expected numbers, strings, True / False "
                "/ None, or tuples, lists and dicts of them (the run records its kwargs in log.json)"
            ) from None
    return out


# ----------------------------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------------------------


def default_output(args, default: str) -> str:
    """--output, else the --resume checkpoint's directory (a resumed run continues its files), else ``default``."""
    if args.output is not None:
        return args.output
    return os.path.dirname(os.path.abspath(args.resume)) if args.resume else default


def check_output(output: str, resume: str | None) -> None:
    """Before anything trains (rank 0's check: only rank 0 writes, and another node's file system is not this one's):
    --output is a directory that can be written (or can be made), and a run does not overwrite another run's last.pth
    (a whole epoch used to train before a bad --output failed)."""
    if not output:
        raise UsageError("--output is empty: give a directory ('.' for this one)")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output!r} is a file, not a directory")
    own = resume is not None and os.path.realpath(output) == os.path.realpath(os.path.dirname(os.path.abspath(resume)))
    if not own and os.path.isfile(os.path.join(output, "last.pth")):
        if resume is None:
            raise UsageError(
                f"--output {output!r} holds another run (last.pth): continue it with --resume "
                f"{os.path.join(output, 'last.pth')}, or choose another --output (or delete that one)"
            )
        raise UsageError(
            f"--output {output!r} holds another run (last.pth) than --resume's checkpoint: resume into the "
            "checkpoint's own directory, or choose another --output"
        )
    hint = " (the --resume checkpoint's directory: pass --output to write elsewhere)" if own else ""
    check_writable_directory(output, f"--output {output!r}{hint}")


def check_writable_directory(directory: str, what: str) -> None:
    """``directory`` can be written, or made where it does not exist: a file is made and removed there; a missing
    folder is made for it (with its missing parents), then removed again (os.access alone passes for root on any
    path, e.g. under /proc). ``what`` starts the UsageError's message (the option and its value)."""
    first = os.path.abspath(directory)
    made = []  # the folders this check makes (innermost first), removed after it
    while not os.path.lexists(first):  # (a dangling symlink stops here: not a directory)
        made.append(first)
        first = os.path.dirname(first)
    if not os.path.isdir(first):
        raise UsageError(f"{what} cannot be made: {first!r} is not a writable directory")
    try:
        os.makedirs(os.path.abspath(directory), exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        verb = "made" if made else "written"
        where = f" ({exc.filename})" if exc.filename and exc.strerror else ""
        raise UsageError(f"{what} cannot be {verb}: {exc.strerror or exc}{where}") from exc
    finally:
        for folder in made:  # (one another process filled meanwhile stays)
            try:
                os.rmdir(folder)
            except FileNotFoundError:  # (never made: makedirs failed below it)
                continue
            except OSError:
                break


# How long a collective waits for the slowest rank: rank 0's work that the others wait on (masksub-train-mlm training
# its tokenizer on a large corpus, a checkpoint written to slow storage) can outlast NCCL's 10 minutes
DIST_TIMEOUT = datetime.timedelta(minutes=60)


def _distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world, device); initialises the process group under torchrun (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    try:
        device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise UsageError(f"--device {device_arg!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from exc
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device_arg!r}: this command trains on cpu or cuda")
    if device.type == "cuda":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise UsageError(f"--device {device_arg!r} asks for a GPU but torch sees none: pass --device cpu")
        if world > 1:
            # One process per GPU: process r takes cuda:r. With fewer GPUs than processes some would ask for a GPU
            # that does not exist (or two would share one); refuse rather than guess.
            if device.index is not None:
                raise UsageError("under torchrun each process takes the GPU of its local rank: pass --device cuda")
            if local_world > gpus:
                raise UsageError(
                    f"{local_world} processes on this machine but {gpus} GPU(s): run torchrun with "
                    f"--nproc_per_node={gpus}, or pass --device cpu (gloo)"
                )
        device = torch.device("cuda", local_rank if world > 1 else (device.index or 0))
        if device.index >= gpus:
            raise UsageError(f"--device {device_arg!r}: torch sees {gpus} GPU(s), cuda:0 to cuda:{gpus - 1}")
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:  # WORLD_SIZE set by hand: torch's env:// rendezvous would raise a traceback
            raise UsageError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with torchrun "
                "(torchrun --nproc_per_node N ...), or unset WORLD_SIZE"
            )
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=DIST_TIMEOUT)
        return dist.get_rank(), world, device
    return 0, 1, device


IMAGE_OPS = ("masksub_loss", "soft_target_cross_entropy", "random_token_select", "mask_image_grid", "mask_tokens_grid")


def check_backend(device: torch.device, ops: tuple[str, ...]) -> str:
    """The backend that the run's ``ops`` get on ``device`` (MASKSUB_BACKEND, default auto), decided before anything
    trains: an unknown or unusable one is a UsageError (it used to fail at the first loss, with a traceback)."""
    from .. import _backend

    try:
        return _backend.resolve_backend(device, implemented=_backend.implemented_by(ops))
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"MASKSUB_BACKEND: {exc}") from exc


def _create_model(args, num_classes: int, in_chans: int) -> torch.nn.Module:
    import timm

    from .pretrained import AVERAGING, DOWNLOAD
    from .vit import is_vit

    if not timm.is_model(args.model):
        close = difflib.get_close_matches(args.model.lower().replace("-", "_"), timm.list_models(), n=8, cutoff=0.6)
        hint = f"; similar names: {', '.join(close)}" if close else " (timm.list_models() lists them)"
        raise UsageError(f"unknown timm model {args.model!r}{hint}")
    kwargs = dict(args.model_kwargs)
    if "pretrained" in kwargs:  # (timm's create_model would say "got multiple values for keyword argument")
        raise UsageError(
            f"--model-kwargs pretrained={kwargs['pretrained']}: the model is built without timm's weights; {DOWNLOAD}"
        )
    if kwargs.setdefault("num_classes", num_classes) != num_classes:  # the data's
        raise UsageError(f"--model-kwargs num_classes={kwargs['num_classes']}, but the data has {num_classes} classes")
    kwargs.setdefault("in_chans", in_chans)
    # --drop / --drop-path when given, 0 included (a 0 turns the model's own off: a Swin's drop-path 0.1); else the
    # model's own rate. Each, or its --model-kwargs name, not both
    rates = {key: value for key, value in (("drop_rate", args.drop), ("drop_path_rate", args.drop_path))}
    for key, value in rates.items():
        if value is not None and key in kwargs:
            option = "--drop" if key == "drop_rate" else "--drop-path"
            raise UsageError(f"{option} {value} and --model-kwargs {key}={kwargs[key]}: pass one")
        if value is not None:
            kwargs[key] = value
    if args.global_pool is not None:
        kwargs.setdefault("global_pool", args.global_pool)

    def recipe_hint(kwargs):  # timm's refusal of a --config file's model-kwargs under another --model
        from .config import config_kwargs_hint

        return config_kwargs_hint(args.config, args.model, kwargs)

    if args.fc_norm is not None:
        if "fc_norm" in kwargs:
            raise UsageError(f"--fc-norm {args.fc_norm} and --model-kwargs fc_norm={kwargs['fc_norm']}: pass one")
        # timm's ViT: fc_norm=True puts its LayerNorm after the pool, fc_norm=False leaves it as the final norm,
        # on every token before the pool (FT-CLIP's head when the pool averages the patch tokens)
        kwargs["fc_norm"] = args.fc_norm == "pooled"
    try:
        try:
            model = timm.create_model(args.model, pretrained=False, **kwargs)
        except TypeError as exc:  # a model without drop-path (VGG, DenseNet, ...) has none for a 0 to turn off
            unused = [key for key, value in rates.items() if value == 0 and key in str(exc)]
            if not unused:
                raise
            kwargs = {k: v for k, v in kwargs.items() if k not in unused}
            model = timm.create_model(args.model, pretrained=False, **kwargs)
    except TypeError as exc:
        if args.fc_norm is not None and "fc_norm" in str(exc):
            raise UsageError(f"--fc-norm is for timm's VisionTransformer models, not {args.model!r}") from exc
        raise UsageError(
            f"timm model {args.model!r} refuses one of its kwargs {kwargs} (--model-kwargs, --drop, --drop-path, "
            f"--global-pool; num_classes and in_chans: the data's): {exc}{recipe_hint(kwargs)}"
        ) from exc
    except (ValueError, AssertionError) as exc:  # timm asserts its arguments (a pooling it lacks, heads not dividing)
        raise UsageError(
            f"timm cannot build {args.model!r} with {kwargs} (--model-kwargs, --global-pool, --drop, --drop-path): "
            f"{str(exc) or type(exc).__name__}{recipe_hint(kwargs)}"
        ) from exc
    if args.drop_path_schedule == "uniform":  # the rate in every block, as the official DeiT-III models
        if kwargs.get("drop_path_rate") is None:
            raise UsageError("--drop-path-schedule uniform sets every block's drop-path to the rate: pass --drop-path")
        from .variants import uniform_drop_path

        try:
            uniform_drop_path(model, kwargs["drop_path_rate"])
        except ValueError as exc:
            raise UsageError(f"--drop-path-schedule uniform is for models with .blocks (ViTs): {exc}") from exc
    if args.fc_norm is not None and not is_vit(model):  # a model that takes fc_norm for something else (Eva, ...)
        raise UsageError(f"--fc-norm is for timm's VisionTransformer models, not {type(model).__name__}")
    if args.fc_norm is not None and model.global_pool not in AVERAGING:  # one token: both places are the same
        raise UsageError(
            f"--fc-norm places the head's LayerNorm around a pool over the patch tokens; this model pools "
            f"{model.global_pool!r}: pass --global-pool avg (FT-CLIP's head: --global-pool avg --fc-norm per-token)"
        )
    # what rebuilds the trained model (log.json's meta.create_model: --global-pool and --fc-norm included, which a
    # rebuild from --model-kwargs alone missed: the CLIP recipe's weights loaded into a class-token model, helper-329)
    model.masksub_create_kwargs = dict(kwargs)
    return model


def _freeze_patch_embed(model: torch.nn.Module) -> int:
    """--freeze-patch-embed: the patch embedding's parameters get no gradient, so neither the optimizer nor the
    gradient all-reduce touch them (FT-CLIP freezes CLIP's conv1). Returns how many tensors were frozen."""
    embed = getattr(model, "patch_embed", None)
    params = list(embed.parameters()) if isinstance(embed, torch.nn.Module) else []
    if not params:
        raise UsageError(f"--freeze-patch-embed: {type(model).__name__} has no patch_embed with parameters (ViT, Swin)")
    for param in params:
        param.requires_grad_(False)
    return len(params)


def _img_size(args, model_kwargs: dict) -> int:
    """--img-size, else the model's img_size kwarg, else 32 for digits, else the model's default input size."""
    if args.img_size is not None:
        return args.img_size
    size = model_kwargs.get("img_size")
    if isinstance(size, int):
        return size
    if args.data_dir is None:
        return 32
    import timm

    cfg = timm.get_pretrained_cfg(args.model)
    return cfg.input_size[-1] if cfg is not None else 224


def _mean_std(args, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """An image folder's --mean / --std (one number, or one per channel: else a UsageError, not a traceback in
    the loader; the digits use their own), else the model's pretrained config's normalisation, else ImageNet's."""
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if args.data_dir is not None and args.mean is not None and len(args.mean) not in (1, in_chans):  # (digits: own)
        raise UsageError(f"--mean / --std take 1 number or {in_chans} (the images' channels), got {len(args.mean)}")
    if args.mean is not None and args.std is not None:
        return tuple(args.mean), tuple(args.std)
    cfg = timm.get_pretrained_cfg(args.model)
    if cfg is None or cfg.mean is None:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return tuple(cfg.mean), tuple(cfg.std)


# (option, lowest, highest, whether the lowest is allowed, whether the highest is allowed); None: no bound.
_RANGES = (
    ("epochs", 1, None, True, True),
    ("batch_size", 1, None, True, True),
    ("grad_accum_steps", 1, None, True, True),
    ("lr_global_batch", 1, None, True, True),
    ("log_interval", 1, None, True, True),
    ("workers", 0, None, True, True),
    ("lr", 0.0, None, False, True),
    ("weight_decay", 0.0, None, True, True),
    ("momentum", 0.0, 1.0, True, False),
    ("warmup_epochs", 0, None, True, True),
    ("warmup_lr", 0.0, None, True, True),
    ("decay_epochs", 0.0, None, False, True),
    ("decay_rate", 0.0, None, False, True),
    ("min_lr", 0.0, None, True, True),
    ("clip_grad", 0.0, None, False, True),  # a negative max norm would flip the gradient's sign
    ("smoothing", 0.0, 1.0, True, False),  # 1 would train towards the uniform target
    ("mixup", 0.0, None, True, True),
    ("cutmix", 0.0, None, True, True),
    ("mixup_prob", 0.0, 1.0, True, True),
    ("mixup_switch_prob", 0.0, 1.0, True, True),
    ("mask_ratio", 0.0, 1.0, True, False),
    ("bce_target_thresh", 0.0, 1.0, True, False),
    ("cell_size", 1, None, True, True),
    ("drop", 0.0, 1.0, True, False),
    ("img_size", 1, None, True, True),
    ("seed", -(2**43), 2**43, False, False),  # seed * 1_000_003 + epoch seeds torch's generators (int64)
    ("drop_path", 0.0, 1.0, True, False),
    ("layer_decay", 0.0, 1.0, False, True),
    ("model_ema_decay", 0.0, 1.0, True, False),
    ("head_init_scale", 0.0, None, False, True),
    ("opt_eps", 0.0, None, False, True),
    ("color_jitter", 0.0, None, True, True),
    ("reprob", 0.0, 1.0, True, True),
    ("recount", 1, None, True, True),
    ("crop_pct", 0.0, 1.0, False, True),
    ("aug_repeats", 0, None, True, True),
    ("limit_batches", 1, None, True, True),
)


def check_args(args) -> None:
    """Every option's range, checked before anything is built: a bad value is a one-line error, never a
    traceback from deep inside torch or timm, nor (a negative --clip-grad) a silently wrong run. The ranges are
    checked even where an option is unused (--mask-ratio with --baseline): a typo should not wait for a rerun."""
    args.output = default_output(args, "output/masksub-train")
    import math

    for name, low, high, low_ok, high_ok in _RANGES:
        value = getattr(args, name)
        if value is None:
            continue
        inside = math.isfinite(value) and (value > low or (low_ok and value == low))
        if high is not None:
            inside = inside and (value < high or (high_ok and value == high))
        if not inside:
            lo, hi = "[" if low_ok else "(", "]" if high_ok and high is not None else ")"
            bound = f"in {lo}{low}, {high if high is not None else 'inf'}{hi}"
            raise UsageError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
    if args.bce_target_thresh is not None and args.loss != "bce":
        raise UsageError("--bce-target-thresh binarises BCE targets: it needs --loss bce")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        what = "is not a directory" if os.path.exists(args.data_dir) else "does not exist"
        raise UsageError(f"data directory {args.data_dir!r} {what}")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        raise UsageError(f"Mixup / CutMix need an even --batch-size, got {args.batch_size}")
    for name, count in (("mean", None), ("std", None), ("opt_betas", 2), ("scale", 2)):
        value = getattr(args, name)
        if value is not None and count is not None and len(value) != count:
            raise UsageError(f"--{name.replace('_', '-')} takes {count} numbers, got {len(value)}")
        if value is not None and not all(math.isfinite(v) for v in value):
            raise UsageError(f"--{name.replace('_', '-')} takes finite numbers, got {value}")
    if args.opt_betas is not None and not all(0.0 <= b < 1.0 for b in args.opt_betas):
        raise UsageError(f"--opt-betas are two numbers in [0, 1), got {args.opt_betas}")
    if args.aa:  # timm skips or misreads some sections silently (rand-m9-mstd0.5-inc: no increasing ops)
        from .augment import check_aa

        try:
            check_aa(args.aa)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if (args.mean is None) != (args.std is None):
        raise UsageError("--mean and --std go together: pass both (one number per input channel)")
    if args.mean is not None and (len(args.mean) != len(args.std) or any(s <= 0 for s in args.std)):
        raise UsageError(f"--mean / --std need as many numbers each and std > 0, got {args.mean} / {args.std}")
    if args.scale is not None and not 0 < args.scale[0] <= args.scale[1] <= 1:
        raise UsageError(f"--scale is a crop-area range 0 < min <= max <= 1, got {args.scale}")
    if args.require_initial_checkpoint and args.initial_checkpoint is None and args.resume is None:
        # (else deit3_finetune's ViT-B would train from random weights at lr 1e-5, silently)
        where = f"--config {args.config!r} fine-tunes" if args.config is not None else "this run fine-tunes"
        out = ", or --no-require-initial-checkpoint to train from random weights"
        if args.head_init_scale is not None:  # (which needs the checkpoint too, and cannot be unset by an option)
            out = "; its --head-init-scale needs one too: to train from random weights, copy the config without both"
        raise UsageError(
            f"{where} pretrained weights (require-initial-checkpoint): pass --initial-checkpoint FILE (the "
            f"weights to start from: a timm, MAE, CLIP or masksub-train file){out}"
        )
    # (a --resume loads the checkpoint's weights, head included: the scale has nothing to do, as the recipe's
    # own comment says, "refused without --initial-checkpoint (or --resume)")
    if args.head_init_scale is not None and args.initial_checkpoint is None and args.resume is None:
        raise UsageError(
            "--head-init-scale (given, or set by --config FILE) scales the classifier left at initialisation by "
            "--initial-checkpoint: pass --initial-checkpoint (or --resume a run's checkpoint)"
        )


@dataclass
class Setup:
    """Everything ``setup`` builds for the run."""

    rank: int
    world: int
    device: torch.device
    data: Any  # training/data.py's Datasets (train, val, num_classes)
    model: torch.nn.Module  # the bare model: evaluation runs it
    ms: Any  # the MaskSub wrapper, None with --baseline
    trained: torch.nn.Module  # what the optimizer holds and the checkpoint saves: ms, or the model
    optimizer: torch.optim.Optimizer
    scheduler: Any
    mixup: Any
    autocast: Any
    scaler: Any
    workers: int
    batches: int  # micro-batches per epoch (whole accumulation windows)
    mixing: bool
    img_size: int
    ema: Any = None  # timm ModelEmaV3 of the bare model (--model-ema)
    pretrained: Any = None  # the --initial-checkpoint LoadReport
    backend: str = "torch"  # what the library's ops run with on the device (check_backend)


def setup(args) -> Setup:
    """Everything before the first epoch; raises UsageError for configuration mistakes."""
    from timm.data import Mixup

    from .augment import build_transforms, ignored_on_digits
    from .data import build_datasets, train_sampler
    from .engine import seed_epoch
    from .families import check_like_masksub, unwrap_model
    from .image_size import check_model_size, digits_default_size
    from .lr_schedule import build_scheduler
    from .optim import build_ema, build_optimizer
    from .pretrained import load_initial_checkpoint
    from .rank_zero import rank_zero_check
    from .wrapper import MaskSub

    args.model_kwargs = parse_kwargs(args.model_kwargs)
    check_args(args)
    mixing = args.mixup > 0 or args.cutmix > 0
    # Where the label smoothing goes. Without Mixup / CutMix: in the loss. With them: in timm's Mixup, which smooths
    # the mixed targets -- unless BCE binarises them (--bce-target-thresh): every entry of a smoothed target is
    # >= eps / C, so a threshold below that would make every class positive (an all-ones target). Then the loss
    # smooths after binarising, as soft_target_bce does (w = (1 - eps) [y > t] + eps / C). DeiT-III's own recipe
    # passes --smoothing 0.0 with its BCE loss; the README's DeiT-III line does the same.
    binarised = args.bce_target_thresh is not None
    args.loss_smoothing = args.smoothing if (binarised or not mixing) else 0.0
    args.mixup_smoothing = 0.0 if binarised else args.smoothing
    rank, world, device = _distributed(args.device)
    rank_zero_check(lambda: check_output(args.output, args.resume), rank, world)
    backend = check_backend(device, IMAGE_OPS)
    seed_epoch(args.seed, -1, 0)  # model initialisation: the same on every rank (DDP broadcasts rank 0's anyway)
    img_size = _img_size(args, args.model_kwargs)
    in_chans = args.model_kwargs.get("in_chans", 1 if args.data_dir is None else 3)
    if args.data_dir is not None and in_chans != 3:
        raise UsageError(f"--model-kwargs in_chans={in_chans}, but an image folder's images are read as RGB (3)")
    mean, std = _mean_std(args, in_chans)
    try:  # built for the digits too: what timm refuses is an error before anything runs
        transforms = build_transforms(args, img_size, mean, std, augment=not args.no_aug)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise UsageError(
            f"the augmentation options (--aa {args.aa!r}, --train-interpolation {args.train_interpolation!r}, "
            f"--interpolation {args.interpolation!r}, ...) are not valid for timm: {exc!r}"
        ) from exc
    try:
        data = build_datasets(
            args.data_dir, img_size, in_chans, mean, std, augment=not args.no_aug, transforms=transforms
        )
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    model = _create_model(args, data.num_classes, in_chans)
    if digits_default_size(args, model, img_size):  # built at the digits' size, not the model's default
        args.model_kwargs = {**args.model_kwargs, "img_size": img_size}  # saved with the run: --resume agrees
        model = _create_model(args, data.num_classes, in_chans)
        if rank == 0:
            grid = "x".join(map(str, getattr(model.patch_embed, "grid_size", ())))
            print(
                f"{PROG}: note: the digits are {img_size} px: {args.model} built with img_size={img_size} (a "
                f"{grid} patch grid; --model-kwargs img_size=... patch_size=... choose another)",
                file=sys.stderr,
            )
    try:
        check_model_size(model, img_size, args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    report = None
    if args.initial_checkpoint is not None and args.resume is None:  # --resume: the checkpoint's (resume.py's note)
        fresh_norm = args.fc_norm == "per-token"
        report = load_initial_checkpoint(model, args.initial_checkpoint, args.head_init_scale, fresh_norm)
        if rank == 0:
            print(f"{PROG}: {report.summary(args.initial_checkpoint)}", file=sys.stderr)
    if args.freeze_patch_embed:
        frozen = _freeze_patch_embed(model)
        if rank == 0:
            print(f"{PROG}: --freeze-patch-embed: {frozen} tensor(s) of patch_embed are not trained", file=sys.stderr)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    ms = None
    try:
        if not args.baseline:
            ms = MaskSub(
                model,
                mask_ratio=args.mask_ratio,
                loss=args.loss,
                variant=args.variant,
                target_threshold=args.bce_target_thresh,
                label_smoothing=args.loss_smoothing,
                cell_size=args.cell_size,
            ).to(device)
            ms.check_input_size(img_size)
        else:  # what the MaskSub arm refuses (a ViT size timm may crop, a cell not dividing the images, ...)
            check_like_masksub(model, img_size, args.variant, args.cell_size, args.mask_ratio)
    except ValueError as exc:
        hint = " (--img-size, --cell-size)" if "cell_size" in str(exc) or "images of" in str(exc) else ""
        if args.baseline:  # it masks nothing: say why it refuses (the refusal, kept, reads as the MaskSub arm's)
            cells = "mask cell" in str(exc)  # the grid masks' refusals: a cell size that fits lets the pair run
            pick = "; a --baseline run may pass --cell-size N (unused by it) to pick a grid that fits" if cells else ""
            raise UsageError(
                f"--baseline checks what its MaskSub arm would refuse, so the pair match: {exc}{hint}{pick}"
            ) from exc
        raise UsageError(f"{exc}{hint}") from exc
    trained = ms if ms is not None else model
    # The baseline's optimizer sees the eager module's parameter names (no torch.compile prefix): timm matches
    # them for no-weight-decay and --layer-decay, as the wrapper's own names are matched for MaskSub.
    eager = unwrap_model(model)
    optimizer = build_optimizer(args, ms if ms is not None else eager, ms.inner_model if ms is not None else eager)
    ema = build_ema(args, model)
    # An ImageFolder's default: 4 loader processes (timm's) on every machine (the count does not change the
    # augmentations: data.SeededSamples seeds each sample, whichever process loads it); the digits are tensors in
    # memory: none.
    workers = args.workers if args.workers is not None else (0 if args.data_dir is None else 4)
    samples = len(train_sampler(data.train, 0, args.seed, rank, world, args.aug_repeats))
    batches = samples // args.batch_size
    if args.limit_batches is not None:
        batches = min(batches, args.limit_batches)
    updates_per_epoch = batches // args.grad_accum_steps
    if updates_per_epoch < 1:
        limited = args.limit_batches is not None and samples // args.batch_size >= args.grad_accum_steps
        raise UsageError(
            f"{len(data.train)} training images over {world} process(es) give {batches} batch(es) of {args.batch_size}"
            f"{' (--limit-batches)' if limited else ''}: fewer than --grad-accum-steps {args.grad_accum_steps}"
        )
    scheduler = build_scheduler(args, optimizer, updates_per_epoch)
    mixup = None
    if mixing:
        mixup = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            label_smoothing=args.mixup_smoothing,
            num_classes=data.num_classes,
        )
    amp = args.amp and device.type == "cuda"
    if args.amp and not amp and rank == 0:  # a note as the command's others (recipes turn --amp on)
        print(f"{PROG}: note: --amp runs on CUDA devices only: training in float32 on {device}", file=sys.stderr)
    amp_dtype = getattr(torch, args.amp_dtype)
    autocast = functools.partial(torch.autocast, device.type, dtype=amp_dtype) if amp else None
    scaler = torch.amp.GradScaler(device.type) if amp and amp_dtype == torch.float16 else None
    if args.data_dir is None and rank == 0 and ignored_on_digits(args):
        print(
            f"{PROG}: note: {', '.join(ignored_on_digits(args))} shape the ImageFolder transforms (--data-dir): the "
            "digits set keeps its random shifts and its own normalisation",
            file=sys.stderr,
        )
    return Setup(
        rank=rank, world=world, device=device, data=data, model=model, ms=ms, trained=trained, optimizer=optimizer,
        scheduler=scheduler, mixup=mixup, autocast=autocast, scaler=scaler, workers=workers,
        batches=updates_per_epoch * args.grad_accum_steps, mixing=mixing, img_size=img_size, ema=ema,
        pretrained=report, backend=backend,
    )  # fmt: skip
