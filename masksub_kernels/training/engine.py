"""The training command's epoch loop: per-epoch seeding, the baseline step, one training epoch, evaluation.

The MaskSub step is ``MaskSub.train_step`` (schedules.py); ``PlainStep`` is the same machinery (accumulation,
GradScaler, clipping, DDP sync once per optimizer step) for the plain recipe that ``--baseline`` compares against,
with the same main criterion. Losses are summed on the device and read once per epoch (a progress-bar refresh
every ``log_interval`` steps reads the current loss, the only other host sync).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .schedules import CheckedOptimizers, check_optimizer_params, optimizer_step

__all__ = ["EpochStats", "PlainStep", "evaluate", "seed_epoch", "train_one_epoch"]


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed Python, NumPy (timm's Mixup) and torch (augmentation, dropout, masks) from (seed, epoch, rank)."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank * 7_919) % (2**62)
    random.seed(s)
    np.random.seed(s % (2**32))  # noqa: NPY002 (timm's Mixup draws from the legacy global generator)
    torch.manual_seed(s)


class PlainStep:
    """The baseline's micro-step: loss = crit(model(x), y) / A, one backward, an optimizer step every A calls."""

    def __init__(self, model: nn.Module, criterion: Callable, ddp: nn.Module | None = None) -> None:
        self.model, self.criterion, self.ddp = model, criterion, ddp
        self.micro_step = 0
        self._checked_optimizers = CheckedOptimizers()

    def __call__(self, images, target, optimizer, *, scaler=None, clip_grad=None, accum_steps=1, autocast=None):
        if optimizer not in self._checked_optimizers:
            check_optimizer_params(self.model, optimizer)
            self._checked_optimizers.add(optimizer)
        autocast = autocast or contextlib.nullcontext
        closing = (self.micro_step + 1) % accum_steps == 0
        if self.micro_step % accum_steps == 0:
            optimizer.zero_grad(set_to_none=True)
        runner = self.ddp if self.ddp is not None else self.model
        sync = self.ddp.no_sync if self.ddp is not None and not closing else contextlib.nullcontext
        with sync():
            with autocast():
                logits = runner(images)
                loss = self.criterion(logits, target)
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        self.micro_step = 0 if closing else self.micro_step + 1
        if closing:
            optimizer_step(optimizer, scaler, clip_grad)
        loss = loss.detach()
        return {"loss": loss, "loss_main": loss, "logits": logits.detach(), "stepped": closing}


@dataclass
class EpochStats:
    """Means over the epoch's micro-batches (over all processes) and the throughput."""

    loss: float
    loss_main: float
    loss_sub: float | None
    images_per_s: float
    num_updates: int
    seconds: float = field(default=0.0)


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def train_one_epoch(
    step: Callable,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scheduler=None,
    num_updates: int = 0,
    mixup: Callable | None = None,
    scaler=None,
    clip_grad: float | None = None,
    accum_steps: int = 1,
    autocast=None,
    channels_last: bool = False,
    progress: bool = False,
    log_interval: int = 10,
    description: str = "",
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One pass over ``loader`` with ``step`` (``MaskSub.train_step`` or a ``PlainStep``); the timm scheduler's
    ``step_update`` and ``after_step()`` (the weight EMA's update) after each optimizer step."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, loss_main, loss_sub, micro-batches
    images_seen = 0
    has_sub = False
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(loader), desc=description, leave=False, dynamic_ncols=True)
    try:  # (the bar closed on a Ctrl-C too: the command's message goes on a clean line)
        for index, (images, target) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                images, target = mixup(images, target)
            out = step(
                images,
                target,
                optimizer,
                scaler=scaler,
                clip_grad=clip_grad,
                accum_steps=accum_steps,
                autocast=autocast,
            )
            sums[0] += out["loss"]
            sums[1] += out["loss_main"]
            if "loss_sub" in out:
                has_sub = True
                sums[2] += out["loss_sub"]
            sums[3] += 1
            images_seen += images.shape[0]
            if out["stepped"]:
                num_updates += 1
                if scheduler is not None:
                    scheduler.step_update(num_updates=num_updates)
                if after_step is not None:
                    after_step()
            if bar is not None:
                bar.update(1)
                if (index + 1) % log_interval == 0:
                    bar.set_postfix(loss=f"{float(out['loss']):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    finally:
        if bar is not None:
            bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    counts = _all_reduce(torch.tensor([images_seen, seconds], dtype=torch.float64, device=device))
    sums = _all_reduce(sums)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    n = max(float(sums[3]), 1.0)
    return EpochStats(
        loss=float(sums[0]) / n,
        loss_main=float(sums[1]) / n,
        loss_sub=float(sums[2]) / n if has_sub else None,
        images_per_s=float(counts[0]) / max(float(counts[1]) / world, 1e-9),
        num_updates=num_updates,
        seconds=seconds,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, *, device: torch.device, autocast=None, channels_last: bool = False
) -> dict[str, float]:
    """Validation on this rank's shard, summed over ranks: {'val_loss' (CE vs labels), 'top1', 'top5' (%)}."""
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, count
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == target[:, None]
        sums[0] += F.cross_entropy(logits, target, reduction="sum")
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += target.shape[0]
    model.train(was_training)
    sums = _all_reduce(sums)
    n = max(float(sums[3]), 1.0)
    return {"val_loss": float(sums[0]) / n, "top1": 100.0 * float(sums[1]) / n, "top5": 100.0 * float(sums[2]) / n}
