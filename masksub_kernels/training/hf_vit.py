"""Hugging Face vision transformers in the vit family: the sub-branch drops patch tokens after the embeddings.

transformers' ViT-like image classifiers (``ViTForImageClassification``, DeiT, DINOv2 with or without registers,
I-JEPA, ViT-MSN, CLIP / MetaCLIP 2 and SigLIP's vision classifiers) all run

    embeddings (patch projection, prefix tokens, absolute position embedding, dropout) -> encoder -> norm -> pool
    -> classifier

and their encoders know nothing of positions: the paper's ViT sub-branch (random token selection before the blocks,
docs/semantics.md §8) is the model's own forward with the embeddings' output [B, P + N, D] cut to its P prefix
tokens (class, distillation, register tokens: always kept) and K = floor(N (1 - r)) random patch tokens per sample,
``random_token_select`` with the given seed. The pools then read the kept tokens: the class token (ViT, DeiT's two
heads), the class token with the mean of the kept patch tokens (DINOv2), the mean of the kept patch tokens (CLIP,
without its class token), or the mean of all kept tokens (I-JEPA, SigLIP).

The cut is a lasting forward hook on the embeddings module (``TokenDrop``, installed once by ``prepare``): it
returns the embeddings' output unchanged except while ``hf_vit_sub_logits`` runs the model, so each class's own
forward (its pooling, its gradient checkpointing, its attention implementation) runs, not a copy of it that a new
transformers release could leave behind. The classes are named (``HF_VIT_EMBEDDINGS``), not guessed: BEiT and
Data2Vec-Vision (relative position biases) and the convolutional models need other sub-branches and get the
pixel-grid fallback (Swin: the swin family, hf_swin.py). P is counted from the output: its length less the patch grid
of the patch convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from .hf_hooks import OneShotHook, embeddings_of, install, run_armed

__all__ = [
    "HF_VIT_EMBEDDINGS", "TokenDrop", "check_embeddings_size", "check_hf_size", "embeddings_kwargs",
    "hf_vit_embeddings", "hf_vit_sub_logits", "is_hf_vit", "prepare",
]  # fmt: skip

# The embeddings classes whose output is [B, prefix + patches, D] with absolute positions already added, followed
# by a position-free encoder (transformers 4.4x and 5.x).
HF_VIT_EMBEDDINGS = frozenset(
    {
        "ViTEmbeddings",
        "ViTMSNEmbeddings",
        "DeiTEmbeddings",
        "Dinov2Embeddings",
        "Dinov2WithRegistersEmbeddings",
        "IJepaEmbeddings",
        "CLIPVisionEmbeddings",
        "MetaClip2VisionEmbeddings",
        "SiglipVisionEmbeddings",
    }
)


def hf_vit_embeddings(model: nn.Module) -> nn.Module | None:
    """The embeddings module of a transformers ViT-like classifier (one of ``HF_VIT_EMBEDDINGS``), else None."""
    return embeddings_of(model, HF_VIT_EMBEDDINGS)


def is_hf_vit(model: nn.Module) -> bool:
    """True for transformers' ViT-like image classifiers whose tokens the sub-branch can drop (module docstring)."""
    return hf_vit_embeddings(model) is not None


def _patch_conv(embeddings: nn.Module) -> nn.Conv2d:
    conv = next((module for module in embeddings.modules() if isinstance(module, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(embeddings).__name__} has no patch convolution (nn.Conv2d) to count patches by")
    return conv


def patch_grid(embeddings: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The patch grid that the embeddings' patch convolution makes of images of height x width."""
    conv = _patch_conv(embeddings)
    if conv.padding == "same":  # torch allows it at stride 1 only: the size itself
        return height, width
    padding = (0, 0) if conv.padding == "valid" else conv.padding  # SigLIP's patch convolution says 'valid'
    return tuple(
        (size + 2 * padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
        for i, size in enumerate((height, width))
    )


def configured_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid at the model's configured image size (``config.image_size``, or its vision config's)."""
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config
    size = getattr(config, "image_size", None)
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return patch_grid(hf_vit_embeddings(model), int(height), int(width))


def embeddings_kwargs(embeddings: nn.Module, model_kwargs: dict | None) -> dict:
    """The model keyword arguments that the embeddings' forward takes by name (``interpolate_pos_encoding``)."""
    import inspect

    names = inspect.signature(embeddings.forward).parameters
    return {key: value for key, value in (model_kwargs or {}).items() if key in names}


def check_embeddings_size(model: nn.Module, embeddings: nn.Module, img_size: tuple[int, int],
                          model_kwargs: dict | None = None) -> None:  # fmt: skip
    """The ValueError the model's embeddings raise for ``img_size`` images (ViT, DeiT and CLIP refuse sizes other
    than their config's without ``interpolate_pos_encoding``; Swin with absolute position embeddings likewise):
    they are run on an empty batch of such images, the model's own check whatever its version."""
    conv = _patch_conv(embeddings)
    images = torch.zeros(0, conv.in_channels, *img_size, dtype=conv.weight.dtype, device=conv.weight.device)
    try:
        with torch.no_grad():
            embeddings(images, **embeddings_kwargs(embeddings, model_kwargs))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{type(model).__name__} refuses {img_size[0]} x {img_size[1]} images: {str(exc).splitlines()[0]}"
        ) from exc


def check_hf_size(model: nn.Module, img_size: tuple[int, int], model_kwargs: dict | None = None) -> tuple[int, int]:
    """The patch grid of ``img_size`` images, or the ValueError the model's embeddings raise for that size."""
    embeddings = hf_vit_embeddings(model)
    check_embeddings_size(model, embeddings, img_size, model_kwargs)
    return patch_grid(embeddings, *img_size)


class TokenDrop(OneShotHook):
    """The lasting forward hook on the embeddings: the output unchanged, except once per ``plan`` (mask_ratio,
    seed, image height and width), set by ``hf_vit_sub_logits`` for one forward, when it keeps the prefix tokens
    and K random patch tokens per sample."""

    def apply(self, module: nn.Module, output, mask_ratio: float, seed, height: int, width: int):
        import masksub_kernels as mk  # at call time: the package imports this module

        if not isinstance(output, torch.Tensor) or output.dim() != 3:
            raise RuntimeError(
                f"MaskSub's vit sub-branch expected {type(module).__name__} to return tokens [B, L, D]; it returned "
                f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}"
            )
        grid = patch_grid(module, height, width)
        prefix = output.shape[1] - grid[0] * grid[1]
        if prefix < 0:
            raise RuntimeError(
                f"{type(module).__name__} returned {output.shape[1]} tokens for a {grid[0]} x {grid[1]} patch grid: "
                "fewer than the patches, so MaskSub cannot tell its prefix tokens from them"
            )
        kept, _ = mk.random_token_select(output, mask_ratio, num_prefix_tokens=prefix, seed=seed)
        return kept


def prepare(model: nn.Module) -> TokenDrop:
    """Install the ``TokenDrop`` hook on the model's embeddings once (idempotent); returns it."""
    embeddings = hf_vit_embeddings(model)
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} is not a transformers ViT-like classifier (hf_vit.HF_VIT_EMBEDDINGS)")
    return install(embeddings, TokenDrop)


def hf_vit_sub_logits(
    model: nn.Module,
    images: torch.Tensor,
    mask_ratio: float,
    seed: int | torch.Tensor | None,
    model_kwargs: dict | None = None,
) -> torch.Tensor:
    """Logits [B, C] of the masked sub-branch: the model's own forward on ``images`` [B, 3, H, W] (with
    ``model_kwargs``), its embeddings' patch tokens cut to ``random_keep_indices(B, N, K, seed=seed)`` (the prefix
    tokens kept)."""
    from .families import logits_of

    plan = (mask_ratio, seed, int(images.shape[-2]), int(images.shape[-1]))
    where = type(hf_vit_embeddings(model)).__name__
    output = run_armed(model, prepare(model), plan, images, model_kwargs or {}, where)
    return logits_of(output, images.shape[0])
