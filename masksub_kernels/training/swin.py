"""Swin sub-branch: structured masking of the stage-1 tokens with a learnable mask token.

docs/semantics.md, §6 and §8. timm's ``SwinTransformer.forward_features`` (and ``SwinTransformerV2``'s, the same
layout: SimMIM, the masking this is, is how SwinV2 was pre-trained) is ``patch_embed (conv + norm, NHWC out) ->
layers -> norm``; the sub-branch replaces, per sample, the tokens of Lc - Kc random cells of S x S tokens
(S = 8 tokens = 32 pixels at patch 4) by the mask token m [C]:

    T_out = T * (1 - M) + m * M      (M = 1 on removed cells; Kc = floor(Lc * (1 - r)) cells kept)

The sequence length is unchanged, so the shifted-window attention runs as usual. A model with an absolute
position embedding (``absolute_pos_embed``, the original Swin's ``ape`` option) gets it added before the masking.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_swin", "swin_embed_dim", "swin_sub_logits", "swin_token_grid"]


def is_swin(model: nn.Module) -> bool:
    """True for timm's ``SwinTransformer`` (v1), ``SwinTransformerV2`` (swinv2_*) and their subclasses. timm's
    ``SwinTransformerV2Cr`` (swinv2_cr_*: NCHW stages, another layout) is not one."""
    try:
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.swin_transformer_v2 import SwinTransformerV2
    except ImportError:
        return False
    return isinstance(model, (SwinTransformer, SwinTransformerV2))


def swin_embed_dim(model: nn.Module) -> int:
    """Channels of the stage-1 tokens (the mask token's size)."""
    return int(model.patch_embed.proj.out_channels)


def swin_token_grid(model: nn.Module) -> tuple[int, int]:
    """The stage-1 token grid (H/p, W/p) at the model's configured image size."""
    return tuple(model.patch_embed.grid_size)


def swin_sub_logits(
    model: nn.Module,
    images: torch.Tensor,
    mask_token: torch.Tensor,
    mask_ratio: float,
    cell_size: int,
    seed: int | None,
) -> torch.Tensor:
    """Logits of the masked sub-branch. With ``seed=s`` the removed cells are ``random_grid_mask(B, (H/pS, W/pS),
    Kc, seed=s)`` (the op's contract). The mask token is cast to the tokens' dtype (autocast) differentiably."""
    import masksub_kernels as mk

    x = model.patch_embed(images)  # [B, H, W, C]
    pos = getattr(model, "absolute_pos_embed", None)
    if pos is not None:
        x = x + pos.reshape(1, *x.shape[1:])
    x, _ = mk.mask_tokens_grid(x, mask_token.to(x.dtype), mask_ratio, cell_size=cell_size, seed=seed)
    x = model.layers(x)
    x = model.norm(x)
    return model.forward_head(x)
