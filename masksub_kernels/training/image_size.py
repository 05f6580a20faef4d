"""The training command's image-size checks of a timm ViT / Swin built for a fixed size (run_setup.setup): the
digits' own size where the command builds the model at it, and the advice where the data's size is not the model's.
"""

from __future__ import annotations

import torch


def fixed_size(model: torch.nn.Module) -> tuple | None:
    """The image size a ViT / Swin is built for where it refuses others (strict), else None."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    return tuple(size) if size is not None and getattr(embed, "strict_img_size", False) else None


def digits_default_size(args, model: torch.nn.Module, img_size: int) -> bool:
    """Whether the model should be rebuilt at the digits' size: the digits (no --data-dir) at the default size (no
    --img-size, no img_size model kwarg), and a timm ViT (VisionTransformer, Eva, Beit, VisionTransformerRelPos) built
    for another fixed size (the default vit_tiny_patch16_224 is built for 224 px: the bare command would otherwise
    stop at check_model_size)."""
    if args.data_dir is not None or args.img_size is not None or "img_size" in args.model_kwargs:
        return False
    from .vit import is_eva, is_vit
    from .vit_relpos import is_relpos_vit

    if not (is_vit(model) or is_eva(model) or is_relpos_vit(model)):  # a Swin at 32 px stops at its mask cells:
        return False  # its own error says more
    size = fixed_size(model)
    return size is not None and size != (img_size, img_size)


def check_model_size(model: torch.nn.Module, img_size: int, args) -> None:
    """A ViT / Swin built for another size fails deep in its patch embedding: say so up front, with a size that its
    patches tile (not --img-size 30's img_size=30, which 16-pixel patches refuse), and for a timm Swin's MaskSub
    arm, where that size leaves its mask cells too few, what they need (e.g. the cells' 64-pixel minimum, not the
    digits' img_size=32)."""
    size = fixed_size(model)
    if size is not None and size != (img_size, img_size):
        patch = getattr(model.patch_embed, "patch_size", 1)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if img_size % patch == 0:
            advice = f"pass --model-kwargs img_size={img_size} (or --img-size {size[0]})"
            advice += _swin_cells_at(model, img_size // patch, patch, args)
        else:  # the sizes its patches tile, beside this one
            fits = [n for n in (img_size // patch * patch, (img_size // patch + 1) * patch) if n > 0]
            sizes = " or ".join(map(str, fits))
            advice = f"--img-size {sizes} (its {patch}-pixel patches tile it) with that --model-kwargs img_size"
            advice += f", or --img-size {size[0]}"
        raise ValueError(
            f"the model is built for {tuple(size)} images but the data is {img_size} x {img_size}: {advice}"
        )


def _swin_cells_at(model: torch.nn.Module, grid: int, patch: int, args) -> str:
    """'' where a timm Swin rebuilt for a grid x grid stage-1 token grid keeps a mask cell in the MaskSub arm (or the
    model is no Swin, or the run a --baseline / --variant other than mask), else '; but at that size ' and what the
    cells need (families.check_swin_cells's message)."""
    from .families import DEFAULT_CELL_SIZE, check_swin_cells
    from .swin import is_swin

    if args.baseline or args.variant != "mask" or not is_swin(model):
        return ""
    cell_size = args.cell_size if args.cell_size is not None else DEFAULT_CELL_SIZE["swin"]
    try:
        check_swin_cells((grid, grid), (patch, patch), cell_size, args.mask_ratio)
    except ValueError as exc:
        return f"; but at {grid * patch} px the sub-branch's mask cells do not fit: {exc} (--img-size, --cell-size)"
    return ""
