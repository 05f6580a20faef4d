"""``MaskSub``: a model plus its masked sub-branch, the MaskSub loss, and the training-step schedules.

One network, two branches per step, same parameters, same images (docs/semantics.md, §8):

    L = main_weight * crit(z_main, y) + sub_weight * crit(z_sub, stopgrad(T(z_main)))      (1/2 and 1/2 published)

crit is soft-target cross-entropy with T = softmax (``loss='ce'``) or binary cross-entropy with T = sigmoid
(``loss='bce'``; ``target_threshold=0.0`` binarises mixed targets as DeiT-III does). The sub-branch depends on the
model family (families.py): token selection for ViTs, a mask token on Swin's stage-1 cells, pixel cells for CNNs;
or, for ViTs, the unmasked model with dropout (``variant='drop'``) or drop-path (``variant='path'``) at rate r.

Two schedules give the same gradients (dropout and drop-path aside, whose randomness differs):

- joint: ``ms(images, target)`` runs both branches, returns the fused ``masksub_loss``; one backward by the caller.
- sequential (``ms.train_step``, the official schedule): main forward + backward, then sub forward + backward, then
  one optimizer step; the main graph is freed before the sub forward (the joint one holds both). See schedules.py.
"""

from __future__ import annotations

import inspect
import numbers
import typing
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from .._philox import SEED_TYPES, new_seed
from ..ops._common import check_real
from . import mlm
from .families import (
    DEFAULT_CELL_SIZE,
    check_classes,
    check_eva,
    check_family_options,
    check_input_size,
    logits_of,
    resolve_family,
    unwrap_model,
)
from .hf_checks import check_hf_config, check_return_dict
from .hf_swin import check_batch as check_hf_swin_batch
from .hf_swin import hf_swin_embeddings, hf_swin_sub_logits, is_hf_swin
from .hf_swin import prepare as prepare_hf_swin
from .hf_vit import hf_vit_sub_logits, is_hf_vit
from .hf_vit import prepare as prepare_hf_vit
from .pixel import pixel_sub_logits
from .schedules import CheckedOptimizers
from .swin import swin_embed_dim, swin_sub_logits
from .user_warning import warn_user
from .variants import check_variant, sub_drop_path, sub_dropout
from .vit import check_vit_images, vit_sub_logits
from .vit_relpos import is_relpos_vit
from .vit_relpos import prepare as prepare_relpos

LOSSES = ("ce", "bce")
VARIANTS = ("mask", "drop", "path")
BRANCHES = ("joint", "main", "sub")

__all__ = ["LOSSES", "VARIANTS", "MaskSub", "supervised_loss"]


def supervised_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "ce",
    label_smoothing: float = 0.0,
    target_threshold: float | None = None,
) -> torch.Tensor:
    """The main branch's criterion (and the baseline's), fp32 scalar, with the fused ops:
    CE: mean_rows sum_c -w_c log_softmax(z)_c; BCE: mean_{rows, classes} softplus(z) - w z; w the smoothed
    (BCE: first binarised at ``target_threshold``) target."""
    import masksub_kernels as mk

    if mode not in LOSSES:
        raise ValueError(f"mode must be one of {LOSSES}, got {mode!r}")
    if target_threshold is not None and mode != "bce":
        raise ValueError(f"target_threshold binarises BCE targets: it needs mode='bce', got mode={mode!r}")
    if mode == "bce":
        return mk.soft_target_bce(logits, target, target_threshold=target_threshold, label_smoothing=label_smoothing)
    return mk.soft_target_cross_entropy(logits, target, label_smoothing=label_smoothing)


class MaskSub(nn.Module):
    """A model trained with MaskSub: ``ms(images, target)`` (joint schedule) or ``ms.train_step(...)`` (sequential).

    Args:
        model: a timm ViT (VisionTransformer, Eva, Beit, VisionTransformerRelPos) / Swin (v1, v2), a transformers
            ViT-like image classifier (ViT, DeiT, DINOv2, I-JEPA, ViT-MSN, CLIP, SigLIP: hf_vit.py), a CNN, or any
            image classifier (pixel-grid fallback with a one-time warning; a Hugging Face image classifier's
            ``.logits`` are read from its output); may be ``torch.compile``-d (the sub-branch is then compiled with
            the same options). Or a Hugging Face masked-LM model of BERT / RoBERTa structure (family 'mlm', mlm.py):
            it then takes a batch mapping (input_ids, labels, ...) where image models take images, and its branches
            return head inputs instead of logits, which the fused-linear loss turns into the loss without [rows, V]
            logits.
        mask_ratio: r, the fraction of tokens / cells removed (DropSub / PathSub: the dropout / drop-path rate).
        loss: 'ce' (softmax, DeiT / MAE / Swin recipes) or 'bce' (sigmoid, DeiT-III / ResNet RSB recipes).
        variant: 'mask' (MaskSub), 'drop' (DropSub) or 'path' (PathSub); the last two for timm ViTs only.
        main_weight, sub_weight: weights of the two terms (1/2 each in the paper; not both 0).
        target_threshold: BCE only: the main target becomes [y > threshold] (DeiT-III: 0.0).
        label_smoothing: eps of the main target, w = (1 - eps) y + eps / C (leave 0 when timm's Mixup smooths).
        family: 'auto' (detect), 'vit', 'swin', 'pixel' or 'mlm'.
        cell_size: mask cell side, in tokens for Swin (8) and pixels for the pixel grid (32).
        sub_fill: mlm only: 'drop' (the sub-branch drops tokens) or 'mask' (it replaces them by [MASK]).
        mask_token_id: mlm with sub_fill='mask': the [MASK] id (default: the model config's ``mask_token_id``).
        chunk_rows: mlm only: rows per chunk of the fused-linear loss, which holds ~2 chunk_rows V fp32 logits at once
            (V the vocabulary); None: the backend's rule (docs/fused_linear.md). Evaluation forms the predicted rows'
            logits whatever it says.
        model_kwargs: keyword arguments of every call of the model's forward, both branches, train and eval (e.g.
            ``{'interpolate_pos_encoding': True}``: a transformers ViT / Swin on images larger than its config's),
            for models whose sub-branch runs their forward (transformers' ViT-like, Swin; pixel; DropSub / PathSub);
            only names that forward takes.

    In eval mode ``ms(images)`` just runs the model: {'logits'} (+ 'loss' = 'loss_main' when a target is given). The
    mode is the model's (``in_training``): ``ms.eval()`` and ``model.eval()`` alike. Only the Swin family owns a
    parameter, ``mask_token`` [C] (trunc-normal 0.02, listed by ``no_weight_decay``); for transformers' Swin it lives
    in the model, in its own ``embeddings.mask_token`` slot [1, 1, C] (hf_swin.py).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mask_ratio: float = 0.5,
        loss: str = "ce",
        variant: str = "mask",
        main_weight: float = 0.5,
        sub_weight: float = 0.5,
        target_threshold: float | None = None,
        label_smoothing: float = 0.0,
        family: str = "auto",
        cell_size: int | None = None,
        sub_fill: str = "drop",
        mask_token_id: int | None = None,
        chunk_rows: int | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if target_threshold is not None and loss != "bce":
            raise ValueError("target_threshold binarises BCE targets: it needs loss='bce'")
        # the options masksub_loss takes checked as it checks them (ops/_common.check_real: the same messages),
        # here at construction rather than at the first step
        self.mask_ratio = check_real("mask_ratio", mask_ratio, 0.0, 1.0, open_high=True)
        self.main_weight = check_real("main_weight", main_weight, 0.0, expected=">= 0 (at most fp32's max)")
        self.sub_weight = check_real("sub_weight", sub_weight, 0.0, expected=">= 0 (at most fp32's max)")
        if self.main_weight == 0 and self.sub_weight == 0:
            raise ValueError("main_weight and sub_weight are both 0: the loss would be 0 whatever the model")
        self.label_smoothing = check_real("label_smoothing", label_smoothing, 0.0, 1.0)
        self.target_threshold = None
        if target_threshold is not None:  # a probability threshold: [0, 1), as masksub_loss takes it
            self.target_threshold = check_real("target_threshold", target_threshold, 0.0, 1.0, open_high=True)
        if cell_size is not None and (
            isinstance(cell_size, bool) or not isinstance(cell_size, numbers.Integral) or cell_size < 1
        ):
            raise ValueError(f"cell_size must be an int >= 1 (or None for the family's default), got {cell_size!r}")
        cell_size = None if cell_size is None else int(cell_size)
        self.loss_mode = loss
        self.variant = variant
        inner = unwrap_model(model)
        if isinstance(inner, (MaskSub, nn.parallel.DistributedDataParallel, nn.DataParallel)):  # torch.compile(DDP) too
            raise ValueError(
                f"MaskSub wraps the bare model (or its torch.compile), not a {type(inner).__name__}: its family and "
                "sub-branch are read from the model itself; wrap the model, then ms.wrap_ddp(...) for DDP"
            )
        self.model = model
        self.family = resolve_family(inner, family, cell_size)
        if self.family != "mlm" and getattr(inner, "num_classes", None) == 0:  # timm's num_classes=0: no head
            raise ValueError(
                f"{type(inner).__name__} has no classifier (timm num_classes=0): its outputs are features, not the "
                "logits MaskSub's losses need; build it with num_classes=C (or model.reset_classifier(C))"
            )
        check_return_dict(inner)  # (and at each forward: a flag set afterwards)
        if self.family != "mlm":
            check_hf_config(inner, loss)  # a transformers config's labels MaskSub's loss cannot train (hf_checks.py)
        check_family_options(self.family, variant, cell_size)
        if variant != "mask" and is_hf_vit(inner):
            raise ValueError(
                f"variant={variant!r} (DropSub / PathSub) is defined for timm ViTs (their blocks' dropout and "
                f"drop-path modules); {type(inner).__name__} is a transformers model: use variant='mask'"
            )
        check_variant(inner, variant)  # (a ViT whose blocks have no dropout / drop-path slot to set)
        self.cell_size = cell_size if cell_size is not None else DEFAULT_CELL_SIZE[self.family]
        self._mlm = self.chunk_rows = None  # (the mlm family's parts and rows per chunk, None: the backend's rule)
        if self.family == "mlm":
            self._mlm, self.sub_fill, self.mask_token_id, self.chunk_rows = mlm.check_options(
                inner, loss, self.target_threshold, sub_fill, mask_token_id, cell_size, chunk_rows
            )
        elif sub_fill != "drop" or mask_token_id is not None or chunk_rows is not None:
            raise ValueError(
                f"sub_fill, mask_token_id and chunk_rows are options of the mlm family; this model is {self.family}"
            )
        self.model_kwargs = self._check_model_kwargs(inner, model_kwargs)
        if self.family == "swin" and variant == "mask" and not is_hf_swin(inner):
            reference = next(inner.parameters())  # drawn on the CPU: a GPU run starts from the CPU run's
            token = nn.init.trunc_normal_(torch.empty(swin_embed_dim(inner), dtype=reference.dtype), std=0.02)
            self.mask_token = nn.Parameter(token.to(reference.device))
        else:
            self.register_parameter("mask_token", None)
        if variant == "mask":
            if self.family == "vit":
                check_eva(inner)  # (first: an Eva's patch dropout is refused, not counted as a ViT's)
            check_input_size(self.family, inner, None, self.cell_size, self.mask_ratio, self.model_kwargs)
            if self.family == "swin" and is_hf_swin(inner):  # after the checks: a refused MaskSub leaves it as it was
                prepare_hf_swin(inner)  # the mask token in the model's own slot, the hook on its embeddings' dropout
            if self.family == "vit":
                if is_relpos_vit(inner):
                    prepare_relpos(inner)  # the stand-ins of its attention bias methods (vit_relpos.py)
                if is_hf_vit(inner):
                    prepare_hf_vit(inner)  # the token-dropping hook on its embeddings (hf_vit.py)
        self._compiled_sub = None  # the sub-branch under the model's torch.compile context, built on first use
        self._micro_step = 0  # position inside the gradient-accumulation window (train_step)
        self._window_steps = 1  # that window's accum_steps (each of its micro-steps is divided by it)
        self._checked_optimizers = CheckedOptimizers()
        object.__setattr__(self, "_ddp", None)  # the DistributedDataParallel wrapping self, when wrap_ddp made one

    def __getstate__(self) -> dict:
        """A copy or pickle holds neither the compiled sub-branch (bound to this wrapper: a copy's would run this
        one's weights) nor wrap_ddp's DDP module (it needs the process group): a copy compiles its own."""
        return {**super().__getstate__(), "_compiled_sub": None, "_ddp": None}

    def _check_model_kwargs(self, inner: nn.Module, model_kwargs) -> dict[str, Any]:
        """A copy of ``model_kwargs`` after checking that the model's forward runs in both branches and takes
        these names: a sub-branch that runs the model's parts (timm's ViTs and Swin, the mlm family) would not
        pass them, and the main branch would differ from it."""
        if model_kwargs is None:
            return {}
        if not isinstance(model_kwargs, Mapping) or not all(isinstance(key, str) for key in model_kwargs):
            raise TypeError(f"model_kwargs must be a mapping of keyword names to values, got {model_kwargs!r}")
        if not model_kwargs:
            return {}
        forward_runs = self.variant != "mask" or self.family == "pixel" or is_hf_vit(inner) or is_hf_swin(inner)
        if self.family == "mlm" or not forward_runs:
            raise ValueError(
                f"model_kwargs are passed to the model's forward, which the {self.family} sub-branch of "
                f"{type(inner).__name__} does not run (it runs the model's parts): they would reach the main branch "
                "only"
            )
        parameters = inspect.signature(inner.forward).parameters
        names = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        var = next((p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        typed = typing.get_args(var.annotation) if var is not None else ()  # transformers: **Unpack[TypedDict]
        if typed and hasattr(typed[0], "__optional_keys__"):
            names |= typed[0].__required_keys__ | typed[0].__optional_keys__
        elif var is not None:
            names = None  # a plain **kwargs takes any name
        first = next(iter(parameters), None)  # the images' own parameter: given by MaskSub
        if first in model_kwargs:
            raise ValueError(f"model_kwargs must not hold {first!r}: the images, which MaskSub passes")
        if "labels" in model_kwargs:
            raise ValueError(
                "model_kwargs must not hold 'labels': MaskSub computes the loss from the target it is given (the "
                "model's own loss would be computed, unused, on one fixed batch's labels)"
            )
        unchecked = [key for key in model_kwargs if names is None and key not in parameters]
        if unchecked:
            warn_user(
                f"model_kwargs {unchecked}: {type(inner).__name__}.forward takes them through a plain **kwargs, so "
                "MaskSub cannot check their names (a misspelt one would be ignored by the model, silently)"
            )
        unknown = [key for key in model_kwargs if names is not None and key not in names]
        if unknown:
            raise ValueError(
                f"model_kwargs {unknown} are not keyword arguments of {type(inner).__name__}.forward, which takes "
                f"{sorted(names - {first})}"
            )
        return dict(model_kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # Introspection used by timm's factories and the training command
    # ------------------------------------------------------------------------------------------------------------

    @property
    def in_training(self) -> bool:
        """Train or eval mode: the model's own flag. ``ms.train()`` / ``ms.eval()`` set it, and so do
        ``model.train()`` / ``model.eval()`` on the wrapped model (Hugging Face's Trainer switches the model it was
        given, never the wrapper: with the wrapper's own flag its evaluation ran the MaskSub loss)."""
        return self.inner_model.training

    @property
    def inner_model(self) -> nn.Module:
        """The eager model (under ``torch.compile``, the original module)."""
        return unwrap_model(self.model)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names (relative to this wrapper) that timm's ``create_optimizer_v2`` keeps out of weight decay: the
        model's own ``no_weight_decay()`` names under ``model.`` and the Swin mask token."""
        prefix = "model._orig_mod." if self.model is not self.inner_model else "model."
        names = {prefix + name for name in getattr(self.inner_model, "no_weight_decay", lambda: set())()}
        if self.mask_token is not None:
            names.add("mask_token")
        if self.family == "swin" and is_hf_swin(self.inner_model):  # its mask token, in the model (hf_swin.py)
            params = self.inner_model.named_parameters()
            names.update(prefix + name for name, _ in params if name.endswith("embeddings.mask_token"))
        return names

    def _trained_mask_token(self) -> nn.Parameter | None:
        """The swin family's mask token, which the optimizer must hold: the wrapper's own ``mask_token`` (timm's
        Swin) or a transformers Swin's ``embeddings.mask_token``; None for the other families and variants."""
        if self.mask_token is not None:
            return self.mask_token
        if self.family == "swin" and self.variant == "mask" and is_hf_swin(self.inner_model):
            return hf_swin_embeddings(self.inner_model).mask_token
        return None

    def check_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Raise a ValueError when images of ``img_size`` cannot be masked (cells not dividing the grid, nothing
        kept) or the model refuses them (a ViT / Swin built for another size, strict). The training command calls it
        before training."""
        if self.variant == "mask":
            inner = self.inner_model
            check_input_size(self.family, inner, img_size, self.cell_size, self.mask_ratio, self.model_kwargs)

    def extra_repr(self) -> str:
        return (
            f"family={self.family}, variant={self.variant}, mask_ratio={self.mask_ratio}, loss={self.loss_mode}, "
            f"weights=({self.main_weight}, {self.sub_weight}), cell_size={self.cell_size}"
            + (f", chunk_rows={self.chunk_rows}" if self.chunk_rows is not None else "")
        )

    # ------------------------------------------------------------------------------------------------------------
    # Criteria: the fused op's two terms, separately (the sequential schedule backpropagates them one at a time)
    # ------------------------------------------------------------------------------------------------------------

    def main_criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """crit(z_main, y), fp32 scalar: soft-target CE, or BCE with the threshold; label smoothing applied.
        (mlm: ``logits`` are the main head inputs [B, L, D] and ``target`` the labels [B, L].)"""
        if self._mlm is not None:
            return mlm.main_loss(self._mlm, logits, target, self.label_smoothing, self.chunk_rows)
        check_classes(self.loss_mode, logits, target)
        return supervised_loss(
            logits,
            target,
            mode=self.loss_mode,
            label_smoothing=self.label_smoothing,
            target_threshold=self.target_threshold,
        )

    def sub_criterion(
        self, sub_logits: torch.Tensor, main_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """crit(z_sub, stopgrad(T(z_main))), fp32 scalar; no gradient reaches main_logits. ``target``: class ids [B]
        (rows of -100 left out of the mean, as by the joint masksub_loss's sub term), probabilities or None.
        (mlm: ``sub_logits`` is the sub-branch's ``MLMSub``, ``main_logits`` the main head inputs [B, L, D].)"""
        import masksub_kernels as mk

        if self._mlm is not None:
            terms = mlm.masksub_terms(
                self._mlm, main_logits.detach(), sub_logits, main_weight=0.0, sub_weight=1.0, label_smoothing=0.0,
                chunk_rows=self.chunk_rows,
            )  # fmt: skip
            return terms.sub
        if target is None or target.is_floating_point():
            return mk.self_distillation_loss(sub_logits, main_logits.detach(), mode=self.loss_mode)
        # the counted rows' mean, no host sync (masksub_loss's sub term computes its main one too: 1.4-2x the time)
        rows = mk.self_distillation_loss(sub_logits, main_logits.detach(), mode=self.loss_mode, reduction="none")
        counted = target != -100
        return torch.where(counted, rows, 0.0).sum() / counted.sum().clamp_min(1)

    def loss(
        self, main_logits: torch.Tensor, sub_logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused ``masksub_loss`` with this wrapper's settings: (loss, main, sub), fp32 scalars. (mlm: the
        fused-linear loss on the kept rows; ``target`` is unused, the sub-branch carries the kept rows' labels.)"""
        import masksub_kernels as mk

        if self._mlm is not None:
            return mlm.masksub_terms(
                self._mlm, main_logits, sub_logits, main_weight=self.main_weight, sub_weight=self.sub_weight,
                label_smoothing=self.label_smoothing, chunk_rows=self.chunk_rows,
            )  # fmt: skip

        check_classes(self.loss_mode, main_logits, target)
        return mk.masksub_loss(
            main_logits,
            sub_logits,
            target,
            mode=self.loss_mode,
            main_weight=self.main_weight,
            sub_weight=self.sub_weight,
            label_smoothing=self.label_smoothing,
            target_threshold=self.target_threshold,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Branches
    # ------------------------------------------------------------------------------------------------------------

    def _sub_eager(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        model = self.inner_model
        if self.variant == "drop":
            with sub_dropout(model, self.mask_ratio):
                return logits_of(model(images, **self.model_kwargs), images.shape[0])
        if self.variant == "path":
            with sub_drop_path(model, self.mask_ratio):
                return logits_of(model(images, **self.model_kwargs), images.shape[0])
        if self.family == "mlm":
            return mlm.sub_branch(self._mlm, images, self.mask_ratio, seed, self.sub_fill, self.mask_token_id)
        if self.family == "vit" and is_hf_vit(model):
            return hf_vit_sub_logits(model, images, self.mask_ratio, seed, self.model_kwargs)
        if self.family == "vit":
            return vit_sub_logits(model, images, self.mask_ratio, seed)
        if self.family == "swin" and is_hf_swin(model):
            return hf_swin_sub_logits(model, images, self.mask_ratio, self.cell_size, seed, self.model_kwargs)
        if self.family == "swin":
            return swin_sub_logits(model, images, self.mask_token, self.mask_ratio, self.cell_size, seed)
        masked = pixel_sub_logits(model, images, self.mask_ratio, self.cell_size, seed, self.model_kwargs)
        return logits_of(masked, images.shape[0])

    def sub_logits(self, images: torch.Tensor, seed: int | torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the sub-branch: the ops' mask for ``seed`` (None: drawn here from torch's default generator; a
        tensor, one int64 on the images' device: read on the device). A compiled sub-branch gets a tensor (an int is a
        symbolic int there, per whose value reduce-overhead records a new CUDA graph; same mask)."""
        check_return_dict(self.inner_model)  # (its own entry too: public)
        if self._mlm is not None and isinstance(images, Mapping):  # (before a compiled sub-branch: a warning
            mlm.warn_no_special_mask(self, images)  # there would break its graph)
        if not isinstance(seed, torch.Tensor):
            seed = new_seed(seed, SEED_TYPES)
        if self.model is self.inner_model:
            return self._sub_eager(images, seed)
        if self._compiled_sub is None:  # the user's torch.compile(model)'s backend and options: its dynamo context
            object.__setattr__(self, "_compiled_sub", self.model.dynamo_ctx(self._sub_eager))
        if not isinstance(seed, torch.Tensor):
            device = (images["input_ids"] if self._mlm is not None else images).device
            seed = torch.full((1,), seed, dtype=torch.int64, device=device)
        return self._compiled_sub(images, seed)

    def forward(
        self,
        images: torch.Tensor | Mapping[str, torch.Tensor],
        target: torch.Tensor | None = None,
        *,
        seed: int | torch.Tensor | None = None,
        branch: str = "joint",
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Joint schedule in train mode: {'loss', 'loss_main', 'loss_sub', 'logits'} (fp32 losses, main logits).

        target: class ids int64 [B] or probabilities [B, C] (timm's Mixup / CutMix output). ``branch='main'`` or
        ``'sub'`` returns that branch's logits only (how ``train_step`` runs each branch through
        DistributedDataParallel). In eval mode: the model's logits ({'logits'}, + 'loss' / 'loss_main' with a target).
        """
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        check_return_dict(self.inner_model)  # (set False after MaskSub was built)
        if self._mlm is not None:
            return self._mlm_forward(images, target, seed, branch)
        self._check_images(images)
        if self.in_training and self.family == "swin" and is_hf_swin(self.inner_model):
            # a transformers Swin takes any size: a batch the cells cannot mask is refused before the main branch
            # runs (train_step's sequential schedule runs it alone first); the sub-branch checks its own
            check_hf_swin_batch(self.inner_model, images, self.cell_size, self.mask_ratio)
        elif self.in_training and self.family in ("pixel", "swin") and images.dim() == 4:
            # likewise a CNN, and a timm Swin of a non-strict image size (before its main branch runs)
            check_input_size(self.family, self.inner_model, tuple(images.shape[-2:]), self.cell_size, self.mask_ratio)
        elif self.family == "vit":  # a size timm's patch embedding would refuse with a bare AssertionError; the
            dropped = self.in_training and self.variant == "mask"  # ratio is a token share for MaskSub alone
            check_vit_images(self.inner_model, images, self.mask_ratio if dropped else 0.0)
        if branch == "main":
            return logits_of(self.model(images, **self.model_kwargs), images.shape[0])
        if branch == "sub":
            return self.sub_logits(images, seed)
        if not self.in_training:
            logits = logits_of(self.model(images, **self.model_kwargs), images.shape[0])
            out = {"logits": logits}
            if target is not None:
                out["loss"] = out["loss_main"] = self.main_criterion(logits, target)
            return out
        if target is None:
            raise ValueError("the joint MaskSub step in train mode needs a target (class ids or probabilities)")
        main_logits = logits_of(self.model(images, **self.model_kwargs), images.shape[0])
        sub_logits = self.sub_logits(images, seed)
        loss, loss_main, loss_sub = self.loss(main_logits, sub_logits, target)
        return {"loss": loss, "loss_main": loss_main, "loss_sub": loss_sub, "logits": main_logits}

    def _check_images(self, images) -> None:
        """The image families take a tensor of images (a mapping is a Hugging Face batch: the mlm family's)."""
        if not isinstance(images, torch.Tensor):
            mapping = isinstance(images, Mapping)
            hint = (  # a batch of images in a mapping, or a forward that takes one: the tensor itself
                " (the image families take the image tensor [B, C, H, W] itself: a Hugging Face batch's "
                "'pixel_values'; a model whose forward takes a dict: wrap it in a module that takes the image tensor)"
            ) * mapping
            if mapping and "input_ids" in images:  # a text batch: the mlm family's
                hint = " (a batch mapping of input_ids is for a Hugging Face masked-LM model: family 'mlm')"
            if mapping and type(self.inner_model).__name__.endswith("ForMaskedLM"):
                hint = (  # a masked LM of another structure (DistilBERT, ALBERT, ...): the family's own refusal
                    f" ({type(self.inner_model).__name__} is a masked LM, but family 'mlm' takes BERT structure (bert "
                    "+ cls.predictions) or RoBERTa structure (roberta + lm_head) only)"
                )
            raise TypeError(
                f"this MaskSub wraps a {self.family} model, which takes images as a tensor [B, C, H, W]; got "
                f"{type(images).__name__}{hint}"
            )
        if images.dim() != 4:
            raise ValueError(
                f"this MaskSub wraps a {self.family} model, which takes a batch of images [B, C, H, W]; got a "
                f"{images.dim()}-d tensor of shape {tuple(images.shape)}"
            )

    @staticmethod
    def _check_mlm_target(batch, target) -> None:
        """The mlm family's sub-branch keeps the positions ``batch['labels']`` predicts: a target other than that
        very tensor would train the two terms on different labels."""
        if target is not None and target is not batch.get("labels"):
            raise ValueError(
                "the mlm family reads its labels from batch['labels']: pass target=None or target=batch['labels']"
            )

    def _mlm_forward(self, batch, target, seed, branch):
        """forward for the mlm family: the same branches and outputs, with head inputs in place of logits
        ('logits' holds the main head inputs [B, L, D]). The labels are ``batch['labels']``: the sub-branch reads
        them to keep the predicted tokens, so ``target`` must be None or that very tensor. In eval mode: {'loss',
        'loss_main', 'correct', 'count'}: the held-out MLM loss, correct predictions and predicted tokens."""
        mlm.check_batch(batch, need_labels=self.in_training and branch != "main", parts=self._mlm)
        self._check_mlm_target(batch, target)
        if branch == "main":
            return mlm.main_hidden(self._mlm, batch)
        if branch == "sub":
            return self.sub_logits(batch, seed)
        if not self.in_training:
            if batch.get("labels") is None:
                return {"logits": mlm.main_hidden(self._mlm, batch)}
            stats = mlm.evaluate_batch(self._mlm, batch)
            loss = stats["loss_sum"] / stats["count"].clamp_min(1)
            return {"loss": loss, "loss_main": loss, "correct": stats["correct"], "count": stats["count"]}
        hidden = mlm.main_hidden(self._mlm, batch)
        sub = self.sub_logits(batch, seed)
        loss, loss_main, loss_sub = self.loss(hidden, sub, target)
        return {"loss": loss, "loss_main": loss_main, "loss_sub": loss_sub, "logits": hidden}

    # ------------------------------------------------------------------------------------------------------------
    # Training step and DDP (schedules.py, distributed.py)
    # ------------------------------------------------------------------------------------------------------------

    def train_step(
        self,
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
        """One micro-step of training; the optimizer steps when the accumulation window closes.

        See ``schedules.train_step`` for the details: returns {'loss', 'loss_main', 'loss_sub', 'logits'} detached
        (no host sync) and 'stepped' (a Python bool: whether the window closed and the optimizer step ran).
        """
        from .schedules import train_step

        return train_step(
            self,
            images,
            target,
            optimizer,
            scaler=scaler,
            clip_grad=clip_grad,
            accum_steps=accum_steps,
            seed=seed,
            schedule=schedule,
            autocast=autocast,
        )

    def wrap_ddp(self, **ddp_kwargs: Any) -> nn.parallel.DistributedDataParallel:
        """Wrap this module in DistributedDataParallel and route ``train_step``'s forwards through it (see
        distributed.py): one gradient all-reduce per optimizer step. Returns the DDP module (for the joint
        schedule call it: ``ddp(images, target)``)."""
        from .distributed import wrap_ddp

        return wrap_ddp(self, **ddp_kwargs)
