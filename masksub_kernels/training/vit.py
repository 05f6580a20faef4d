"""ViT / DeiT-III / MAE / EVA sub-branch: random token selection between the embeddings and the blocks.

docs/semantics.md, §4 and §8. timm's ``VisionTransformer.forward_features`` is

    patch_embed -> _pos_embed (prefix tokens + position embedding) -> patch_drop -> norm_pre -> blocks -> norm

and the sub-branch inserts ``random_token_select`` right before ``blocks``: of the L patch tokens,
K = floor(L * (1 - r)) are kept per sample, the ``num_prefix_tokens`` class / register tokens always. Then
``forward_head`` reads the kept tokens out: the class token (``global_pool='token'``), or the mean of the kept
patch tokens (MAE's ``global_pool='avg'``: timm's pool skips the prefix tokens), or attention pooling ('map').

DeiT-III (``no_embed_class=True``: position embedding added before the class token is prepended) and the original
layout (position embedding covering the class token) differ only inside ``_pos_embed``, which is called as is.

timm's ``Eva`` (EVA-02 and the rotary ViTs: vit_*_rope_*, ...) is the same model with rotary position embeddings
applied inside each block's attention to the patch tokens (the prefix excluded): its ``_pos_embed`` returns them
beside the tokens, ``[L, dim]`` (or ``[depth, heads, L, dim]`` for mixed RoPE), and the sub-branch keeps each kept
token's rotary embedding with it, as timm's own patch dropout does (``apply_keep_indices_nlc``), so that a kept
token keeps its position. Its ``forward_features`` is ``patch_embed -> _pos_embed (patch_drop inside) -> norm_pre
-> blocks(x, rope) -> norm``; an Eva built with patch dropout (``patch_drop_rate > 0``) is refused
(families.check_eva).

ViTs with relative position biases (timm ``Beit``, ``VisionTransformerRelPos``) select their tokens at the same
place and cut each attention's bias to the kept tokens: vit_relpos.py. transformers' ViT-like classifiers drop
their tokens after their embeddings, through their own forward: hf_vit.py.
"""

from __future__ import annotations

import torch
from torch import nn

from .hf_vit import hf_vit_sub_logits, is_hf_vit
from .vit_relpos import is_relpos_vit, relpos_sub_logits

__all__ = ["check_vit_images", "is_eva", "is_vit", "vit_sub_logits", "vit_token_grid"]


def is_vit(model: nn.Module) -> bool:
    """True for timm's ``VisionTransformer`` and its subclasses (vit_*, deit_*, deit3_*, MAE-style pools)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is optional for the package; without it no model is a timm ViT
        return False
    return isinstance(model, VisionTransformer)


def is_eva(model: nn.Module) -> bool:
    """True for timm's ``Eva`` (EVA-02, the rotary-embedding ViTs): the vit family with rotary positions."""
    try:
        from timm.models.eva import Eva
    except ImportError:
        return False
    return isinstance(model, Eva)


def vit_token_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid (H/p, W/p) at the model's configured image size, or None when it is dynamic."""
    grid = getattr(model.patch_embed, "grid_size", None)
    return tuple(grid) if grid is not None else None


def check_vit_images(model: nn.Module, images: torch.Tensor, mask_ratio: float) -> None:
    """The wrapper's forward on a timm model of the vit family: images of a size it refuses (another than a strict
    patch embedding's, one its patches do not tile) or whose grid leaves the sub-branch no token (``mask_ratio``; 0
    in eval mode) are families.check_input_size's ValueError, as masksub-train's, where timm's patch embedding
    asserts bare. Shapes and the model's settings only: no host sync. transformers' ViTs check their
    own sizes (a ValueError)."""
    if not is_hf_vit(model):
        from .families import check_input_size

        check_input_size("vit", model, tuple(images.shape[-2:]), None, mask_ratio)


def _blocks(model: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """The blocks on the kept tokens, with timm's gradient checkpointing where the model has it switched on.
    kwargs: Eva's ``rope`` (a list per block for mixed RoPE, else one tensor for every block)."""
    checkpointing = getattr(model, "grad_checkpointing", False) and not torch.jit.is_scripting()
    if not kwargs:
        if checkpointing:
            from timm.models import checkpoint_seq

            return checkpoint_seq(model.blocks, x)
        return model.blocks(x)
    from timm.models._manipulate import checkpoint

    rope = kwargs["rope"]
    for depth, block in enumerate(model.blocks):
        rope_here = rope[depth] if isinstance(rope, (list, tuple)) else rope
        x = checkpoint(block, x, rope=rope_here) if checkpointing else block(x, rope=rope_here)
    return x


def _kept_rope(model: nn.Module, x: torch.Tensor, rope: torch.Tensor | None, ids: torch.Tensor):
    """The kept tokens' rotary embeddings, shaped as Eva's blocks take them after timm's patch dropout: [B, 1, K,
    dim] (one for every block), or per block [B, heads, K, dim] for mixed RoPE ([depth, heads, L, dim] before)."""
    if rope is None:
        return None
    from timm.layers import apply_keep_indices_nlc

    kept = apply_keep_indices_nlc(x, rope, ids)  # [B, ..., K, dim]
    if getattr(model, "rope_mixed", False):
        return list(kept.transpose(0, 1))  # per block: [B, heads, K, dim]
    return kept.unsqueeze(1)


def vit_sub_logits(model: nn.Module, images: torch.Tensor, mask_ratio: float, seed: int | None) -> torch.Tensor:
    """Logits of the masked sub-branch: forward_features with the token selection before the blocks, then the head.

    With ``seed=s`` the kept patch tokens are ``random_keep_indices(B, L, K, seed=s)`` (the op's contract).
    """
    import masksub_kernels as mk  # at call time: the package imports this module

    if is_relpos_vit(model):
        return relpos_sub_logits(model, images, mask_ratio, seed)
    if is_hf_vit(model):
        return hf_vit_sub_logits(model, images, mask_ratio, seed)
    x, rope = model.patch_embed(images), None
    eva = is_eva(model)
    if eva:
        x, rope = model._pos_embed(x)  # no patch dropout inside: refused (families.check_eva)
    else:
        x = model._pos_embed(x)
        x = model.patch_drop(x)
    x = model.norm_pre(x)
    x, ids = mk.random_token_select(x, mask_ratio, num_prefix_tokens=int(model.num_prefix_tokens), seed=seed)
    x = _blocks(model, x, rope=_kept_rope(model, x, rope, ids)) if eva else _blocks(model, x)
    x = model.norm(x)
    return model.forward_head(x)
