"""End-to-end training steps: images/s and peak memory (above the step's start: what was allocated before it, the
weights, the optimizer's state and the data, not counted; not the process's peak) of plain training and of MaskSub,
per model. No host time: whole steps get no host-time pass (runner._call), and the report says so.

Providers (one optimizer step each, same model, batch and optimizer):
- plain: the model alone, soft-target CE (no MaskSub): the cost MaskSub is compared with;
- masksub official-style: the official sequential schedule with eager ops: main forward/backward of ½·CE, then
  the sub-branch masked with the official code's ops (rand + argsort + repeated-index gather for ViT; the cell
  mask repeated to token / pixel resolution for Swin / CNNs), backward of ½·CE against softmax(main).detach();
- masksub (sequential) / masksub (joint): this library's ``MaskSub.train_step`` and ``MaskSub(...)`` + backward.
The ideal MaskSub / plain step-time ratio is about 1.5 for ViT at r = 0.5 (the sub-branch runs half the tokens)
and about 2 for Swin and CNNs (full-length sub-branch). On a GPU the steps run under bf16 autocast.

Order: model after model (a suite cut by its cap keeps whole models: each ratio needs its own model's plain step of
the same run), and within a model the four providers timed interleaved, one timing group (runner.run_group): the
warm-up of each, then repeat k of every provider before repeat k+1 of any, plain first in each round, so that a host
that drifts during the model's steps (the 2026-12-04 H200 run: 1.13-1.68x between runs) slows all four alike and the
ratios to plain hold. The rows say so (``timing: "interleaved"``); a model's rows come out, and its JSON is written,
when its last round ends.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ..training import MaskSub
from .grid_mask import official_images, official_tokens
from .runner import STEP, OpCase
from .token_select import official_style

MASK_RATIO = 0.5
# name, timm model, kwargs, batch size
# in the order a capped run should measure them: Swin-T's step gap is an open question, ResNet-50 has never been
# timed on a GPU, the ViTs were (2026-12-04)
GPU_MODELS = [
    ("Swin-T 224px", "swin_tiny_patch4_window7_224", {}, 64),
    ("ResNet-50 224px", "resnet50", {}, 64),
    ("ViT-B/16 224px", "vit_base_patch16_224", {}, 64),
    ("ViT-S/16 224px", "vit_small_patch16_224", {}, 128),
]
CPU_MODELS = [
    ("ViT-Ti/8 64px", "vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8}, 16),
    ("Swin 64px (tiny cfg)", "swin_tiny_patch4_window7_224",
     {"img_size": 64, "window_size": 4, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4)}, 8),
    ("ResNet-18 64px", "resnet18", {}, 16),
]  # fmt: skip
TINY_MODELS = [("ViT tiny 32px", "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}, 2)]
LIBRARY = ("masksub (sequential)", "masksub (joint)")  # this library's steps (the tests' names for them)
BASELINES = ("plain", "masksub official-style (sequential)")  # the steps they are compared with (likewise)
# each model's steps in this order: plain first, the denominator of every ratio of the model's rows
PROVIDER_ORDER = ("plain", "masksub (sequential)", "masksub (joint)", "masksub official-style (sequential)")


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm SoftTargetCrossEntropy: mean over rows of sum_c -q_c log_softmax(z)_c, in fp32."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def official_sub_logits(ms: MaskSub, images: torch.Tensor) -> torch.Tensor:
    """The sub-branch as the official code builds it (eager ops), cut where this library cuts it."""
    model = ms.inner_model
    if ms.family == "vit":
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        x = model.norm(model.blocks(official_style(x, ms.mask_ratio)))
        return model.forward_head(x)
    if ms.family == "swin":
        x = model.patch_embed(images)
        if getattr(model, "absolute_pos_embed", None) is not None:
            x = x + model.absolute_pos_embed.reshape(1, *x.shape[1:])
        x = official_tokens(x, ms.mask_token.to(x.dtype), cell=ms.cell_size)
        return model.forward_head(model.norm(model.layers(x)))
    return model(official_images(images, cell=ms.cell_size))


def _step_functions(ms: MaskSub, optimizer, images, soft_target, labels, autocast):
    """The four providers' step callables, sharing model, optimizer and data."""
    model = ms.model

    def plain():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = soft_ce(model(images), soft_target)
        loss.backward()
        optimizer.step()

    def official():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            main = model(images)
            loss_main = soft_ce(main, soft_target)
        (loss_main / 2).backward()
        teacher = F.softmax(main.detach().float(), dim=-1)
        with autocast():
            loss_sub = soft_ce(official_sub_logits(ms, images), teacher)
        (loss_sub / 2).backward()
        optimizer.step()

    def sequential():
        ms.train_step(images, labels, optimizer, autocast=autocast)

    def joint():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = ms(images, labels)
        out["loss"].backward()
        optimizer.step()

    return {
        "plain": plain,
        "masksub official-style (sequential)": official,
        "masksub (sequential)": sequential,
        "masksub (joint)": joint,
    }


class _StepCase(OpCase):
    """An OpCase whose one mode, 'step' (runner.STEP), is one whole training step: forward, backward and optimizer
    step (the runner times ``fn()`` with no inputs). Older runs recorded it as 'forward'
    (report.older_step_modes relabels them)."""


def cases(device: torch.device, *, full: bool = False, tiny: bool = False) -> list[OpCase]:
    import timm

    on_gpu = device.type == "cuda"
    models = TINY_MODELS if tiny else GPU_MODELS if on_gpu else CPU_MODELS
    autocast = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext
    result = []
    for label, name, kwargs, batch_size in models:
        state = {}
        ideal = 1 + (1 - MASK_RATIO) if name.startswith("vit") else 2.0  # sub-branch cost relative to main

        def build(name=name, kwargs=kwargs, batch_size=batch_size, state=state):
            # Built lazily (and once per model): the four providers share model, optimizer and data.
            if not state:
                model = timm.create_model(name, num_classes=1000 if on_gpu else 10, **kwargs).to(device)
                ms = MaskSub(model, mask_ratio=MASK_RATIO)
                optimizer = torch.optim.AdamW(ms.parameters(), lr=1e-4)
                side = kwargs.get("img_size", 224 if on_gpu else 64)
                images = torch.randn(batch_size, 3, side, side, device=device)
                labels = torch.randint(0, model.num_classes, (batch_size,), device=device)
                soft_target = F.one_hot(labels, model.num_classes).float()
                state.update(_step_functions(ms, optimizer, images, soft_target, labels, autocast))
            return []

        for provider in PROVIDER_ORDER:
            result.append(
                _StepCase(
                    "train", f"{label} B={batch_size}", "bf16 autocast" if on_gpu else "float32", provider,
                    build, lambda provider=provider, state=state: state[provider](), {},
                    modes=(STEP,), max_repeats=10, group=label,  # the model's providers interleaved
                    notes={"batch_size": batch_size, "model": name, "ideal_ratio": ideal},
                )
            )  # fmt: skip
    # model after model, each model's steps together and timed interleaved (unlike the kernel suites' library-first
    # order, runner.py's library_first, one case at a time): a step's ratio is against its own model's plain step of
    # the same run, so a suite cut by its cap (gpu_bench.sh) keeps whole models; library-first had every library step
    # before the first plain one, and a cut run would have had ratios for none. Each model is built once,
    # at its first case.
    return result
