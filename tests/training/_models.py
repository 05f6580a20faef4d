"""Tiny timm models and the hand-written MaskSub step of docs/semantics.md (§8), shared by the training tests.

The reference is written from the semantics, not from the wrapper: it rebuilds each family's forward from the
model's parts and draws the masks with the public mask ops (``random_keep_indices``, ``random_grid_mask``) for the
given seed, so agreeing with it checks both the routing and the reproducibility contract.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer

import masksub_kernels as mk

NUM_CLASSES = 10


def tiny_vit(**kwargs) -> VisionTransformer:
    """32 px, patch 8: 16 patch tokens + a class token; dropout and drop-path off."""
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES)
    return VisionTransformer(**{**cfg, **kwargs})


def tiny_deit3(**kwargs) -> VisionTransformer:
    """DeiT-III layout: position embedding added before the class token is prepended; layer scale."""
    return tiny_vit(no_embed_class=True, init_values=0.1, **kwargs)


def tiny_mae(**kwargs) -> VisionTransformer:
    """MAE fine-tune layout: the head reads the mean of the (kept) patch tokens, fc_norm."""
    return tiny_vit(global_pool="avg", fc_norm=True, **kwargs)


def tiny_swin(**kwargs) -> SwinTransformer:
    """64 px, patch 4: a 16 x 16 stage-1 token grid, 2 x 2 cells of 8 tokens; drop-path off (timm's default is
    0.1 for Swin)."""
    cfg = dict(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
        num_classes=NUM_CLASSES, drop_path_rate=0.0,
    )  # fmt: skip
    return SwinTransformer(**{**cfg, **kwargs})


def tiny_swinv2(**kwargs) -> SwinTransformerV2:
    """SwinV2 (scaled cosine attention, log-spaced continuous position bias, post-norm) at tiny_swin's sizes."""
    cfg = dict(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
        num_classes=NUM_CLASSES, drop_path_rate=0.0,
    )  # fmt: skip
    return SwinTransformerV2(**{**cfg, **kwargs})


def tiny_resnet() -> torch.nn.Module:
    """timm resnet10t (run at 64 px: 2 x 2 cells of 32 pixels)."""
    return timm.create_model("resnet10t", num_classes=NUM_CLASSES)


IMG_SIZE = {"vit": 32, "deit3": 32, "mae": 32, "swin": 64, "swinv2": 64, "resnet": 64}
BUILDERS = {
    "vit": tiny_vit, "deit3": tiny_deit3, "mae": tiny_mae, "swin": tiny_swin, "swinv2": tiny_swinv2,
    "resnet": tiny_resnet,
}  # fmt: skip


def batch(name: str, size: int = 4, seed: int = 0, soft: bool = False, dtype=torch.float64):
    """(images [B, 3, S, S], target): class ids, or Mixup-like probabilities when soft."""
    g = torch.Generator().manual_seed(seed)
    s = IMG_SIZE[name]
    images = torch.randn(size, 3, s, s, generator=g, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=g)
    if not soft:
        return images, labels
    probs = torch.rand(size, NUM_CLASSES, generator=g, dtype=dtype).pow(4)
    return images, probs / probs.sum(1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------------
# The hand-written step (docs/semantics.md, §8)
# ----------------------------------------------------------------------------------------------------------------


def reference_vit_sub(model: VisionTransformer, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """patch_embed -> + pos (before or after prepending the class token) -> keep prefix + ids -> blocks -> norm ->
    class token or mean of kept patch tokens -> fc_norm -> head."""
    x = model.patch_embed(images)  # [B, L, D]
    cls = model.cls_token.expand(x.shape[0], -1, -1)
    if model.no_embed_class:
        x = torch.cat([cls, x + model.pos_embed], dim=1)
    else:
        x = torch.cat([cls, x], dim=1) + model.pos_embed
    prefix = torch.zeros(x.shape[0], 1, dtype=torch.long)
    rows = torch.cat([prefix, ids + 1], dim=1)  # Y[b, :P] = X[b, :P]; Y[b, P + j] = X[b, P + ids[b, j]]
    y = x[torch.arange(x.shape[0])[:, None], rows]
    for block in model.blocks:
        y = block(y)
    y = model.norm(y)
    pooled = y[:, 1:].mean(1) if model.global_pool == "avg" else y[:, 0]
    return model.head(model.fc_norm(pooled))


def pixel_cells(cells: torch.Tensor, size: int) -> torch.Tensor:
    """[B, Gh, Gw] bool -> [B, Gh*size, Gw*size] float (1 on removed cells)."""
    return cells.repeat_interleave(size, 1).repeat_interleave(size, 2).to(torch.float64)


def reference_swin_sub(model: SwinTransformer | SwinTransformerV2, images, mask_token, cells, cell: int = 8):
    """T_out = T * (1 - M) + m * M on the stage-1 tokens, then layers -> norm -> head."""
    x = model.patch_embed(images)  # [B, H, W, C]
    m = pixel_cells(cells, cell).to(x.dtype)[..., None]
    x = x * (1 - m) + mask_token * m
    return model.head(model.norm(model.layers(x)))


def reference_pixel_sub(model, images, cells: torch.Tensor, cell: int = 32):
    """Removed 32 x 32 cells of the images set to 0, then the model."""
    return model(images * (1 - pixel_cells(cells, cell).to(images.dtype)[:, None]))


def sub_logits_for_seed(name: str, model, images, seed: int, mask_token=None, ratio: float = 0.5):
    """The reference sub-branch with the masks the ops give for ``seed`` (the contract)."""
    b = images.shape[0]
    if name in ("vit", "deit3", "mae"):
        num_tokens = model.patch_embed.num_patches
        ids = mk.random_keep_indices(b, num_tokens, int(num_tokens * (1 - ratio)), seed=seed)
        return reference_vit_sub(model, images, ids)
    if name in ("swin", "swinv2"):
        cells = mk.random_grid_mask(b, (2, 2), int(4 * (1 - ratio)), seed=seed)
        return reference_swin_sub(model, images, mask_token, cells)
    cells = mk.random_grid_mask(b, (2, 2), int(4 * (1 - ratio)), seed=seed)
    return reference_pixel_sub(model, images, cells)


def reference_loss(main: torch.Tensor, sub: torch.Tensor, target: torch.Tensor, mode: str = "ce", threshold=None):
    """(L, crit_main, crit_sub): L = (crit(z_main, y) + crit(z_sub, stopgrad(T(z_main)))) / 2."""
    q = target if target.is_floating_point() else F.one_hot(target, main.shape[1]).to(main.dtype)
    if mode == "ce":
        crit_main = (-q * F.log_softmax(main, 1)).sum(1).mean()
        crit_sub = (-F.softmax(main.detach(), 1) * F.log_softmax(sub, 1)).sum(1).mean()
    else:
        if threshold is not None:
            q = (q > threshold).to(main.dtype)
        crit_main = (F.softplus(main) - q * main).mean()
        crit_sub = (F.softplus(sub) - torch.sigmoid(main.detach()) * sub).mean()
    return (crit_main + crit_sub) / 2, crit_main, crit_sub


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: grad clone} of the parameters that have one."""
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict, rtol: float = 1e-7, atol: float = 1e-9) -> None:
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
