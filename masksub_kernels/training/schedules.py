"""Training-step schedules for ``MaskSub``: sequential (official) and joint, with accumulation, AMP and clipping.

With A accumulation steps and micro-batches k = 1..A of one optimizer step, both schedules accumulate

    g = sum_k d/dθ [ main_weight * crit(z_main^k, y^k) + sub_weight * crit(z_sub^k, stopgrad(T(z_main^k))) ] / A

- sequential (the official code's order): inside autocast, main forward, backward of main_weight * crit_main / A
  (the main graph is freed here, so activation memory is one forward's, not two); then the sub forward with the
  detached main logits as teacher, backward of sub_weight * crit_sub / A.
- joint: one forward of both branches through the fused ``masksub_loss``, one backward of loss / A.

When the window closes: with a GradScaler, unscale (only when clipping, which must see true gradients), clip the
*summed* gradient's norm, ``scaler.step``, ``scaler.update``; without one, clip and step. Gradients are zeroed
when a window opens (not after the step), so after a step ``p.grad`` still holds the window's summed gradient.

Under DistributedDataParallel (``MaskSub.wrap_ddp``) every backward but the window's last runs under ``no_sync()``:
the sequential schedule's main backward always, the whole micro-step when the window is not closing. DDP then
all-reduces once per optimizer step, over the gradient summed locally from all backwards (the official code
all-reduces after each of its two backwards). Nothing here reads a device value: no host sync (a GradScaler's
``step`` still checks for infs, as it must).
"""

from __future__ import annotations

import contextlib
import numbers
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .._philox import SEED_TYPES, new_seed

if TYPE_CHECKING:
    from .wrapper import MaskSub

SCHEDULES = ("sequential", "joint")

__all__ = [
    "SCHEDULES",
    "CheckedOptimizers",
    "check_holds_mask_token",
    "check_optimizer_params",
    "optimizer_step",
    "train_step",
]


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
) -> None:
    """Unscale (when clipping under a scaler), clip the gradient norm of the optimizer's parameters to
    ``clip_grad``, step. The optimizer's own: those a scaler unscales and the step updates (a head-only optimizer
    beside a trainable backbone: the backbone's still-scaled gradients would make the head's clipped ~2^16 times too
    small)."""
    _check_clip_grad(clip_grad)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if scaler is not None:
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()


def _check_clip_grad(clip_grad) -> None:
    if clip_grad is None:
        return
    if isinstance(clip_grad, bool) or not isinstance(clip_grad, numbers.Real):
        raise TypeError(f"clip_grad must be a number (a max norm > 0) or None, got {type(clip_grad).__name__}")
    if not clip_grad > 0:  # torch would scale by a negative factor: a flipped gradient
        raise ValueError(f"clip_grad must be a max norm > 0 (or None: no clipping), got {clip_grad}")


def check_optimizer_params(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise a ValueError when ``optimizer`` holds none of ``module``'s parameters: one built from another model
    (or an earlier copy of this one) would step nothing here, and training would run on, silently unchanged."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in module.parameters()):
        raise ValueError(
            f"the optimizer holds none of this {type(module).__name__}'s parameters (it was built from another model, "
            "or from a copy): build it from the model being trained, e.g. timm.optim.create_optimizer_v2(ms, ...)"
        )


def _check_optimizer(ms, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer must hold the wrapper's parameters, the Swin mask token included (check_holds_mask_token):
    checked once per optimizer. That it has something to train: on every call (a model may be frozen or unfrozen
    between steps; any() stops at the first trainable parameter)."""
    if not any(p.requires_grad for group in optimizer.param_groups for p in group["params"]):
        raise ValueError(
            "no parameter of the optimizer requires grad (the model is frozen: requires_grad=False everywhere): "
            "nothing to train; unfreeze what should learn (e.g. the head) before train_step"
        )
    if optimizer in ms._checked_optimizers:
        return
    check_optimizer_params(ms, optimizer)
    check_holds_mask_token(ms, optimizer)
    ms._checked_optimizers.add(optimizer)


class CheckedOptimizers:
    """The optimizers whose parameters a step has checked, by identity, held weakly: one that is collected is
    forgotten (kept by id() alone, a new optimizer at a freed one's address would skip its checks;
    an optimizer's own ``__eq__`` / ``__hash__`` play no part). An object that takes no weak reference (a duck-typed
    optimizer, e.g. a SimpleNamespace) is never remembered: checked on every call. A copy (copy.deepcopy, e.g. an
    EMA of the model; pickling) starts empty: its parameters are new objects, which the optimizers checked for the
    original do not hold."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def __contains__(self, optimizer: object) -> bool:
        ref = self._refs.get(id(optimizer))
        return ref is not None and ref() is optimizer

    def add(self, optimizer: object) -> None:
        try:
            ref = weakref.ref(optimizer)
        except TypeError:
            return
        self._refs = {key: old for key, old in self._refs.items() if old() is not None}  # the collected forgotten
        self._refs[id(optimizer)] = ref

    def __len__(self) -> int:
        return sum(ref() is not None for ref in self._refs.values())

    def __reduce__(self):
        return (CheckedOptimizers, ())


def check_holds_mask_token(ms, optimizer: torch.optim.Optimizer) -> None:
    """Raise a ValueError when the swin family's mask token would never train: ``optimizer`` does not hold it (built
    from the bare timm model, whose token is the wrapper's; or from a transformers Swin before MaskSub created the
    token in its ``embeddings.mask_token`` slot)."""
    token = ms._trained_mask_token()
    if token is None or not token.requires_grad:  # a frozen token is the user's choice
        return
    if any(p is token for group in optimizer.param_groups for p in group["params"]):
        return
    if ms.mask_token is not None:
        where = (
            "build it from the wrapper (e.g. timm.optim.create_optimizer_v2(ms, ...) or ms.parameters()), not from "
            "the bare model"
        )
    else:
        where = (
            "it lives in the model (embeddings.mask_token), created by MaskSub(model): call MaskSub(model) first, "
            "then build the optimizer from the model's parameters (a frozen token, requires_grad=False, may be left "
            "out)"
        )
    raise ValueError(f"the optimizer does not hold MaskSub's mask_token: {where}")


def train_step(
    ms: MaskSub,
    images: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    accum_steps: int = 1,
    seed: int | torch.Tensor | None = None,
    schedule: str = "sequential",
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, torch.Tensor | bool]:
    """One micro-step of MaskSub training on (images, target); steps the optimizer every ``accum_steps`` calls.

    Args:
        ms: the ``MaskSub`` wrapper, in train mode (its ``wrap_ddp`` DDP module is used when there is one).
        images, target: a micro-batch; target class ids [B] or probabilities [B, C]. The mlm family: images is the
            batch mapping and target None or ``images['labels']`` itself (the sub-branch reads those labels).
        optimizer: built from the wrapper's parameters (the Swin mask token included).
        scaler: a ``torch.amp.GradScaler`` for fp16 autocast (None for fp32 / bf16).
        clip_grad: max norm of the summed gradient of the optimizer's parameters (None: no clipping).
        accum_steps: A, micro-steps per optimizer step; each backward is divided by A (the same A for every
            micro-step of a window: another one inside it is a ValueError).
        seed: the sub-branch mask's seed, an int or a one-element int64 tensor on the images' device (read there:
            no host sync; None: drawn from torch's default generator after the main branch, as the joint forward
            ``ms(images, target)`` draws it).
        schedule: 'sequential' (official: main then sub backward) or 'joint' (one fused loss, one backward).
        autocast: a context-manager factory (e.g. ``functools.partial(torch.autocast, 'cuda', torch.bfloat16)``)
            entered around the forwards and losses only; backwards run outside it.

    Returns {'loss', 'loss_main', 'loss_sub', 'logits'} detached (the weighted total and the two unweighted
    criteria of this micro-batch, fp32; the main logits) and 'stepped' (whether this call closed the accumulation
    window and ran the optimizer step: a GradScaler may still have skipped the update on inf / NaN gradients, which
    only the scaler's scale tells without a host sync).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, numbers.Integral) or accum_steps < 1:
        raise ValueError(f"accum_steps must be an int >= 1, got {accum_steps!r}")
    accum_steps = int(accum_steps)
    _check_clip_grad(clip_grad)  # here too, so it fails before any work is done
    if seed is not None and not isinstance(seed, torch.Tensor):  # a seed tensor: the ops check it, on its device
        seed = new_seed(seed, SEED_TYPES)  # None: drawn by the sub-branch, after the main branch (below)
    if ms._micro_step and accum_steps != ms._window_steps:  # each micro-step of a window is divided by its A
        raise ValueError(
            f"accum_steps={accum_steps} inside an accumulation window of {ms._window_steps} micro-steps "
            f"({ms._micro_step} done): change it when a window has closed ('stepped')"
        )
    if not ms.in_training:
        raise RuntimeError("train_step needs the model in train mode (call ms.train())")
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():  # before the forwards update BN statistics
        raise RuntimeError(
            "train_step runs backward: call it with gradients enabled, not under torch.no_grad() or "
            "torch.inference_mode()"
        )
    if not all(hasattr(optimizer, name) for name in ("param_groups", "step", "zero_grad")):  # duck-typed ones too
        raise TypeError(
            f"optimizer must be an optimizer (param_groups, step, zero_grad: a torch.optim.Optimizer) built from the "
            f"wrapper's parameters, got {type(optimizer).__name__} (e.g. torch.optim.AdamW(ms.parameters()))"
        )
    if autocast is not None and (not callable(autocast) or isinstance(autocast, contextlib.AbstractContextManager)):
        # torch.autocast(...) itself is callable (a decorator): the factory is what is entered at each forward
        raise TypeError(
            f"autocast must be a context-manager factory (e.g. functools.partial(torch.autocast, 'cuda', "
            f"torch.bfloat16)) or None, got {type(autocast).__name__} {autocast!r}"
        )
    _check_optimizer(ms, optimizer)
    if ms.family == "mlm":  # images is the batch mapping; its labels are the target (the sub-branch reads them)
        from . import mlm

        mlm.check_batch(images, need_labels=True, parts=ms._mlm)
        ms._check_mlm_target(images, target)
        target = images["labels"]
    else:
        ms._check_images(images)
    autocast = autocast or contextlib.nullcontext
    ddp = ms._ddp
    if ddp is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # DistributedDataParallel(ms) made by hand is not routed through here: no gradient would be all-reduced
        raise RuntimeError(
            "train_step under a process group of several ranks needs ms.wrap_ddp(...) (one all-reduce per optimizer "
            "step); a DistributedDataParallel built around the wrapper by hand is not used by train_step"
        )
    runner = ddp if ddp is not None else ms
    no_sync = ddp.no_sync if ddp is not None else contextlib.nullcontext
    closing = (ms._micro_step + 1) % accum_steps == 0
    if ms._micro_step % accum_steps == 0:
        optimizer.zero_grad(set_to_none=True)
        ms._window_steps = accum_steps

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    if schedule == "joint":
        with no_sync() if not closing else contextlib.nullcontext():
            with autocast():  # a seed of None is drawn after the main forward, as by ms(images, target)
                out = runner(images, target, seed=seed)
            backward(out["loss"] / accum_steps)
        logits, loss_main, loss_sub = out["logits"], out["loss_main"], out["loss_sub"]
    else:
        with no_sync():  # never all-reduce after the main backward: the sub backward's sync covers both
            with autocast():
                logits = runner(images, branch="main")
                loss_main = ms.main_criterion(logits, target)
            if loss_main.requires_grad:  # not when only the Swin mask token trains: the main branch never uses it
                backward(loss_main * (ms.main_weight / accum_steps))
        logits = logits.detach()  # the main graph is gone; the logits stay as the sub branch's teacher
        # a seed of None is drawn by the sub-branch (MaskSub.sub_logits), after the main branch as the joint forward
        # draws it: the main branch takes the default generator's state as model(images) would (its CPU dropout)
        with no_sync() if not closing else contextlib.nullcontext():
            with autocast():
                sub_logits = runner(images, branch="sub", seed=seed)
                loss_sub = ms.sub_criterion(sub_logits, logits, target)
            backward(loss_sub * (ms.sub_weight / accum_steps))
    ms._micro_step += 1
    if closing:
        ms._micro_step = 0
        optimizer_step(optimizer, scaler, clip_grad)
    loss_main, loss_sub = loss_main.detach(), loss_sub.detach()
    return {
        "loss": ms.main_weight * loss_main + ms.sub_weight * loss_sub,
        "loss_main": loss_main,
        "loss_sub": loss_sub,
        "logits": logits.detach(),
        "stepped": closing,
    }
