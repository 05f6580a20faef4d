"""Hugging Face Swin and SwinV2 in the swin family: the sub-branch masks cells of the stage-1 tokens.

transformers' ``SwinForImageClassification`` and ``Swinv2ForImageClassification`` run

    embeddings (patch projection -> norm -> [mask token] -> absolute position embedding, if any -> dropout)
    -> encoder -> layernorm -> pool -> classifier

and their embeddings already hold SimMIM's masking (``bool_masked_pos``, with which SwinV2 was pre-trained): the
tokens of masked positions replaced by ``embeddings.mask_token`` [1, 1, C] after the norm, before the position
embedding. The sub-branch masks with that token and MaskSub's cells (docs/semantics.md §8): the tokens of Lc - Kc
random cells of S x S tokens per sample (Kc = floor(Lc (1 - r)), S = 8 by default) replaced by the mask token,

    T_out = T (1 - M) + m M        (mask_tokens_grid, on the tokens the embeddings' dropout takes: a lasting
                                    pre-hook on it, hf_hooks.py)

so the model's own forward runs (its shifted windows, padding, attention implementation, checkpointing). As in the
official code and timm's Swin (swin.py), that is after the absolute position embedding where the model has one
(transformers' own masking comes before it, so removed tokens would keep their position); without one (the
released Swin and SwinV2 checkpoints) the two are the same. The grid is the padded one transformers makes:
ceil(H / p) x ceil(W / p) tokens.

The mask token lives in the model, in the slot transformers gives it (``swin.embeddings.mask_token``, created by
``prepare`` where the model was built without one; trunc-normal 0.02 as timm's), so the model's optimizer, a
``Trainer`` (its checkpoints and resumes) and ``save_pretrained`` carry it. A plain ``from_pretrained`` of a saved
model lists it as UNEXPECTED and drops it: the classifier has no slot for it until ``prepare`` makes one.
"""

from __future__ import annotations

import torch
from torch import nn

from .hf_hooks import OneShotHook, embeddings_of, install, run_armed
from .hf_vit import _patch_conv, check_embeddings_size

__all__ = [
    "HF_SWIN_EMBEDDINGS",
    "CellMask",
    "check_batch",
    "hf_swin_embeddings",
    "hf_swin_grid",
    "hf_swin_sub_logits",
    "is_hf_swin",
]

HF_SWIN_EMBEDDINGS = frozenset({"SwinEmbeddings", "Swinv2Embeddings"})


def hf_swin_embeddings(model: nn.Module) -> nn.Module | None:
    """The embeddings module of a transformers Swin / SwinV2 image classifier, else None."""
    return embeddings_of(model, HF_SWIN_EMBEDDINGS)


def is_hf_swin(model: nn.Module) -> bool:
    """True for transformers' Swin and SwinV2 image classifiers (and user subclasses of them)."""
    return hf_swin_embeddings(model) is not None


def _token_grid(embeddings: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The stage-1 token grid of height x width images: transformers pads them to multiples of the patch."""
    conv = _patch_conv(embeddings)
    return -(-height // conv.stride[0]), -(-width // conv.stride[1])


def hf_swin_grid(
    model: nn.Module, img_size: tuple[int, int] | None, model_kwargs: dict | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(token grid, patch (height, width) in pixels) of ``img_size`` images (None: the config's size), after the
    model's embeddings have been run on an empty batch of them (with absolute position embeddings, other sizes need
    ``interpolate_pos_encoding``: their ValueError)."""
    embeddings = hf_swin_embeddings(model)
    if img_size is None:
        size = model.config.image_size  # SwinConfig / Swinv2Config always have one
        img_size = (size, size) if isinstance(size, int) else tuple(size)
    else:
        check_embeddings_size(model, embeddings, img_size, model_kwargs)
    return _token_grid(embeddings, *img_size), tuple(_patch_conv(embeddings).stride)


def check_batch(model: nn.Module, images: torch.Tensor, cell_size: int, mask_ratio: float) -> None:
    """Raise check_input_size's ValueError when the cells do not divide the token grid of ``images`` [B, C, H, W]
    or keep none of them: transformers' Swin takes any size, so each batch is checked, before the main branch (which
    on images smaller than a window would shrink the model's windows for good: transformers' own behaviour)."""
    from .families import check_swin_cells

    embeddings = hf_swin_embeddings(model)
    grid = _token_grid(embeddings, int(images.shape[-2]), int(images.shape[-1]))
    check_swin_cells(grid, tuple(_patch_conv(embeddings).stride), cell_size, mask_ratio)


class CellMask(OneShotHook):
    """The lasting forward pre-hook on the embeddings' dropout: its input [B, h w, C] (the tokens after the norm and
    any absolute position embedding) unchanged, except once per plan (mask token, mask_ratio, cell size, seed, token
    grid), when the tokens of removed cells become the mask token."""

    BEFORE = True

    def apply(self, module: nn.Module, output, mask_token, mask_ratio: float, cell_size: int, seed, grid):
        import masksub_kernels as mk  # at call time: the package imports this module

        if not isinstance(output, torch.Tensor) or output.dim() != 3 or output.shape[1] != grid[0] * grid[1]:
            raise RuntimeError(
                f"MaskSub's swin sub-branch expected the embeddings' dropout to take tokens [B, {grid[0] * grid[1]}, "
                f"C] for a {grid[0]} x {grid[1]} token grid; it took "
                f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}"
            )
        tokens = output.reshape(output.shape[0], grid[0], grid[1], output.shape[2])
        masked, _ = mk.mask_tokens_grid(tokens, mask_token.to(tokens.dtype), mask_ratio, cell_size=cell_size, seed=seed)
        return masked.reshape(output.shape)


def prepare(model: nn.Module) -> tuple[CellMask, nn.Parameter]:
    """The ``CellMask`` pre-hook on the embeddings' dropout (installed once) and the mask token [1, 1, C], created
    in the embeddings' ``mask_token`` slot where the model has none (idempotent)."""
    embeddings = hf_swin_embeddings(model)
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} is not a transformers Swin / SwinV2 image classifier")
    norm = embeddings.norm
    token = getattr(embeddings, "mask_token", None)
    if not isinstance(token, nn.Parameter):
        weight = norm.weight  # the token drawn on the CPU: a GPU run starts from the CPU run's
        token = nn.init.trunc_normal_(torch.empty(1, 1, weight.shape[0], dtype=weight.dtype), std=0.02)
        embeddings.mask_token = nn.Parameter(token.to(weight.device))
    return install(embeddings.dropout, CellMask), embeddings.mask_token


def hf_swin_sub_logits(
    model: nn.Module,
    images: torch.Tensor,
    mask_ratio: float,
    cell_size: int,
    seed: int | torch.Tensor | None,
    model_kwargs: dict | None = None,
) -> torch.Tensor:
    """Logits [B, C] of the masked sub-branch: the model's own forward on ``images`` [B, 3, H, W] (with
    ``model_kwargs``), the tokens of the cells that ``random_grid_mask(B, (h / S, w / S), Kc, seed=seed)`` removes
    replaced by the mask token as the embeddings' dropout takes them (after any absolute position embedding)."""
    from .families import logits_of

    check_batch(model, images, cell_size, mask_ratio)
    hook, token = prepare(model)
    grid = _token_grid(hf_swin_embeddings(model), int(images.shape[-2]), int(images.shape[-1]))
    plan = (token, mask_ratio, cell_size, seed, grid)
    output = run_armed(model, hook, plan, images, model_kwargs or {}, "embeddings' dropout")
    return logits_of(output, images.shape[0])
