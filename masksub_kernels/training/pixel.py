"""Pixel-grid sub-branch for ResNets and any other CNN: remove random cells of the (normalised) input images.

docs/semantics.md, §5 and §9. Images I [B, C, H, W], cells of S x S pixels (S = 32), Kc = floor(Lc * (1 - r))
cells kept per sample, the others set to 0, the mean colour after normalisation; then the unchanged model runs.
Unlike the official code (which multiplies by the *remove* mask, zeroing the kept cells), the removed cells are the
ones zeroed. No gradient reaches the images (they are data).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_convolutional", "pixel_sub_logits"]


# timm's channel / spatial gates inside CNNs (ResNeSt's split attention, SKNet, CBAM): not token mixers
_CNN_GATES = ("splitattn", "selectivekernelattn", "channelattn", "spatialattn", "lightchannelattn", "lightspatialattn")
# timm's token mixers whose names say neither: EfficientViT-MIT's linear attention, SHViT's and iFormer's
# single-head attention, EfficientViM's state-space mixer
_OTHER_MIXERS = ("litemla", "shsa", "shma", "hsmssd")


def _mixes_tokens(module: nn.Module) -> bool:
    """An attention, recurrent or state-space module that mixes positions: nn.MultiheadAttention, an RNN, a timm
    class named *Attn* / *Attention* (but a CNN's gates, _CNN_GATES), *Lambda* (LambdaNet), *Mamba* (but MambaOut's
    gated convolutions), or one of _OTHER_MIXERS."""
    if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
        return True
    name = type(module).__name__.lower()
    named = any(part in name for part in ("attn", "attention", "lambda", "mamba")) and "mambaout" not in name
    return (named and name not in _CNN_GATES) or name in _OTHER_MIXERS


def is_convolutional(model: nn.Module) -> bool:
    """True for a CNN, whose recipe pixel masking is: a 2-D convolution that mixes neighbouring pixels (a kernel
    wider than 1 at stride 1: a ResNet's 3x3, a ConvNeXt's depthwise 7x7), and no module that mixes positions by
    attention or recurrence (_mixes_tokens). A patchifying convolution alone (kernel = stride: MLP-Mixer, ResMLP,
    gMLP, CaiT's patch embedding) or pooling as the token mixer (PoolFormer) does not make a CNN, nor does a
    convolutional stem under attention (BotNet, HaloNet, LambdaNet); channel gates (SE, ECA, CBAM, ResNeSt's split
    attention, SKNet) leave a CNN one."""
    mixing = any(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and max(m.stride) == 1 for m in model.modules())
    return mixing and not any(_mixes_tokens(m) for m in model.modules())


def pixel_sub_logits(
    model: nn.Module,
    images: torch.Tensor,
    mask_ratio: float,
    cell_size: int,
    seed: int | None,
    model_kwargs: dict | None = None,
) -> torch.Tensor:
    """Logits of the model on the masked images (``model(masked, **model_kwargs)``). With ``seed=s`` the removed
    cells are ``random_grid_mask(B, (H/S, W/S), Kc, seed=s)``; the masked images keep the input's layout
    (channels_last stays channels_last)."""
    import masksub_kernels as mk

    from .families import check_input_size

    if images.dim() == 4:  # images too small for the cells get the size advice, not the op's talk of tokens
        check_input_size("pixel", model, (images.shape[-2], images.shape[-1]), cell_size, mask_ratio)
    masked, _ = mk.mask_image_grid(images.detach(), mask_ratio, cell_size=cell_size, seed=seed)
    return model(masked, **(model_kwargs or {}))
