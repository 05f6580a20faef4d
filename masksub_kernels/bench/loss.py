"""Benchmark cases for the fused MaskSub loss: ½·CE(main, y) + ½·CE(sub, stopgrad(softmax(main))).

- official: timm-style SoftTargetCrossEntropy twice on dense targets (one-hot labels as the official code's
  mixup produces them) + softmax of the detached main logits;
- eager(int labels): the strongest plain-PyTorch version: F.cross_entropy with class ids for the main term;
- compile(official): torch.compile of the official style;
- liger: Liger-Kernel's fused CE for the main term + the eager sub term (only where liger_kernel imports);
- masksub[<backend>]: this library's masksub_loss (class-id targets).
Minimal bytes (class-id targets): forward reads both logits; backward reads them again and writes both gradients;
full = read main + read sub + write both gradients: 4 passes over the logits. This library's design moves 6 in
full (the backward recomputes the softmax from the logits instead of keeping the gradient from the forward): its
cases carry those design bytes too, and the report gives % of copy bandwidth on both.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

import masksub_kernels as mk

from .runner import OpCase, library_first
from .token_select import library_providers

GPU_SHAPES = [
    ("ImageNet", 1024, 1000, (torch.float32, torch.bfloat16)),
    ("ImageNet-21k", 4096, 21841, (torch.bfloat16,)),  # the headline shapes (the performance model's too)
    ("BERT-like", 16384, 30522, (torch.bfloat16,)),
    ("LLM-like", 8, 128256, (torch.bfloat16,)),  # few rows of a huge vocabulary: the grid, not bytes
    ("LLM-like", 8192, 128256, (torch.bfloat16,)),
]
CPU_SHAPES = [("ImageNet", 256, 1000, (torch.float32,))]


def official_style(main: torch.Tensor, sub: torch.Tensor, dense_target: torch.Tensor) -> torch.Tensor:
    loss_main = torch.sum(-dense_target * F.log_softmax(main, dim=-1), dim=-1).mean()
    teacher = F.softmax(main.detach(), dim=-1)
    loss_sub = torch.sum(-teacher * F.log_softmax(sub, dim=-1), dim=-1).mean()
    return 0.5 * loss_main + 0.5 * loss_sub


def eager_int_labels(main: torch.Tensor, sub: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss_main = F.cross_entropy(main.float(), labels)
    teacher = F.softmax(main.detach().float(), dim=-1)
    loss_sub = F.cross_entropy(sub.float(), teacher)
    return 0.5 * loss_main + 0.5 * loss_sub


def liger_provider():
    """Liger's CE of the main branch beside torch's of the sub branch, or None where liger_kernel does not import or
    construct: a reference point whose failure must not stop the suite (a failure in its call is recorded by the
    runner as the case's error)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger_ce = LigerCrossEntropyLoss()
    except Exception as exc:  # any import-time failure of a third-party reference point
        print(f"liger left out: {type(exc).__name__}: {exc}")
        return None

    def liger(main, sub, labels):
        # Liger writes its gradient into the logits it is given: hand it a copy, since the main logits are also
        # the sub-branch's teacher (ANCHORS.md, their issue #272).
        teacher = F.softmax(main.detach().float(), dim=-1)
        return 0.5 * liger_ce(main.clone(), labels) + 0.5 * F.cross_entropy(sub.float(), teacher)

    return liger


def cases(device: torch.device, *, full: bool = False, tiny: bool = False) -> list[OpCase]:
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    if tiny:
        shapes = [("tiny", 8, 16, (torch.float32,))]
    liger = liger_provider() if device.type == "cuda" else None
    result = []
    for name, rows, classes, dtypes in shapes:
        for dtype in dtypes:
            # static shapes (dynamic=False): otherwise dynamo recompiles for dynamic shapes at the second shape,
            # and the later cases time another kind of graph (the recompile limit: cli._allow_recompiles)
            compiled = torch.compile(official_style, dynamic=False)
            element = torch.tensor([], dtype=dtype).element_size()
            logits_bytes = rows * classes * element
            nbytes = {"forward": 2 * logits_bytes, "backward": 4 * logits_bytes, "full": 4 * logits_bytes}
            design = {"forward": 2 * logits_bytes, "backward": 4 * logits_bytes, "full": 6 * logits_bytes}
            label = f"{name} M={rows} C={classes}"
            dtype_name = str(dtype).removeprefix("torch.")

            def labelled(m=rows, c=classes, dt=dtype):
                generator = torch.Generator(device=device).manual_seed(0)
                main = torch.randn(m, c, device=device, dtype=dt, generator=generator).requires_grad_(True)
                sub = torch.randn(m, c, device=device, dtype=dt, generator=generator).requires_grad_(True)
                return [main, sub, torch.randint(0, c, (m,), device=device, generator=generator)]

            def dense(make=labelled, c=classes):
                main, sub, labels = make()
                return [main, sub, F.one_hot(labels, c).to(main.dtype)]

            for backend in library_providers(device):
                result.append(
                    OpCase(
                        "loss",
                        label,
                        dtype_name,
                        f"masksub[{backend}]",
                        labelled,
                        lambda main, sub, y: mk.masksub_loss(main, sub, y).loss,
                        nbytes,
                        design_bytes=design,
                        setup=lambda b=backend: mk.set_backend(b),
                    )
                )
            baselines = [("official", official_style, dense), ("eager(int labels)", eager_int_labels, labelled)]
            if name == "ImageNet" or full:
                baselines.append(("compile(official)", compiled, dense))
            if liger is not None:
                baselines.append(("liger", liger, labelled))
            for provider, fn, make in baselines:
                result.append(OpCase("loss", label, dtype_name, provider, make, fn, nbytes))
    return library_first(result)  # the kernels of every shape first: a capped suite keeps them (runner.py)
