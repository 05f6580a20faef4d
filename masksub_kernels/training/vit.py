"""ViT / DeiT-III / MAE sub-branch: random token selection between the embeddings and the blocks.

docs/semantics.md, §4 and §8. timm's ``VisionTransformer.forward_features`` is

    patch_embed -> _pos_embed (prefix tokens + position embedding) -> patch_drop -> norm_pre -> blocks -> norm

and the sub-branch inserts ``random_token_select`` right before ``blocks``: of the L patch tokens,
K = floor(L * (1 - r)) are kept per sample, the ``num_prefix_tokens`` class / register tokens always. Then
``forward_head`` reads the kept tokens out: the class token (``global_pool='token'``), or the mean of the kept
patch tokens (MAE's ``global_pool='avg'``: timm's pool skips the prefix tokens), or attention pooling ('map').

DeiT-III (``no_embed_class=True``: position embedding added before the class token is prepended) and the original
layout (position embedding covering the class token) differ only inside ``_pos_embed``, which is called as is.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_vit", "vit_sub_logits", "vit_token_grid"]


def is_vit(model: nn.Module) -> bool:
    """True for timm's ``VisionTransformer`` and its subclasses (vit_*, deit_*, deit3_*, MAE-style pools)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is optional for the package; without it no model is a timm ViT
        return False
    return isinstance(model, VisionTransformer)


def vit_token_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid (H/p, W/p) at the model's configured image size, or None when it is dynamic."""
    grid = getattr(model.patch_embed, "grid_size", None)
    return tuple(grid) if grid is not None else None


def vit_sub_logits(model: nn.Module, images: torch.Tensor, mask_ratio: float, seed: int | None) -> torch.Tensor:
    """Logits of the masked sub-branch: forward_features with the token selection before the blocks, then the head.

    With ``seed=s`` the kept patch tokens are ``random_keep_indices(B, L, K, seed=s)`` (the op's contract).
    """
    import masksub_kernels as mk  # at call time: the package imports this module

    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    x, _ = mk.random_token_select(x, mask_ratio, num_prefix_tokens=int(model.num_prefix_tokens), seed=seed)
    if getattr(model, "grad_checkpointing", False) and not torch.jit.is_scripting():
        from timm.models import checkpoint_seq

        x = checkpoint_seq(model.blocks, x)
    else:
        x = model.blocks(x)
    x = model.norm(x)
    return model.forward_head(x)
