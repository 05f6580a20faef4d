"""Which sub-branch a model gets, and the checks that its input size fits the mask grid.

Families (``family='auto'`` picks one):

- ``'vit'``: timm ``VisionTransformer`` and subclasses (vit_*, deit_*, deit3_*, MAE-style global pools), timm
  ``Eva`` (EVA-02, rotary ViTs: the kept tokens keep their rotary embeddings) and the ViTs with relative position
  biases, timm ``Beit`` (BEiT, BEiT v2) and ``VisionTransformerRelPos`` (each attention's bias cut to the kept
  tokens): token selection before the blocks (vit.py, vit_relpos.py); transformers' ViT-like image classifiers
  (ViT, DeiT, DINOv2, I-JEPA, ViT-MSN, CLIP, SigLIP): the same after their embeddings (hf_vit.py).
- ``'swin'``: timm ``SwinTransformer`` and ``SwinTransformerV2``: stage-1 tokens of removed cells replaced by a mask
  token (swin.py); transformers' Swin and SwinV2 image classifiers: the same on their embeddings' output, before
  its dropout (hf_swin.py).
- ``'pixel'``: ResNets and other CNNs: removed cells of the input images set to 0 (pixel.py).
- ``'mlm'``: Hugging Face masked-LM encoders of BERT / RoBERTa structure: tokens dropped after the embeddings, the
  predicted and special ones always kept (mlm.py).

Policy for models outside these families (decided here, documented in the README and docs/training.md): the
pixel-grid masking works on any model that takes [B, C, H, W] images, so such a model gets it, with a one-time
``UserWarning`` per architecture (timm's ``pretrained_cfg['architecture']`` within the class) that says the
sub-branch is the pixel-grid fallback rather than the paper's recipe for that architecture; passing
``family='pixel'`` explicitly silences it. A model whose forward is not image -> logits fails on its first call:
with the model's own error, or where it returns something other than logits [B, C] (a tensor, an object with
``.logits``: Hugging Face's, or a mapping's ``'logits'``), with ``logits_of``'s; a transformers class without an
image-classification head (``ViTModel``) is refused when MaskSub is built (hf_checks.py). Asking for ``'vit'`` /
``'swin'`` on a model without that structure is a ValueError naming what it lacks (a user's ViT with timm's names
can be forced to ``'vit'``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .hf_checks import check_hf_head
from .hf_swin import hf_swin_grid, is_hf_swin
from .hf_vit import check_hf_size, configured_grid, is_hf_vit
from .mlm import is_mlm
from .pixel import is_convolutional
from .swin import is_swin, swin_token_grid
from .user_warning import warn_user
from .variants import check_variant
from .vit import is_eva, is_vit, vit_token_grid
from .vit_relpos import is_relpos_vit

FAMILIES = ("vit", "swin", "pixel", "mlm")
DEFAULT_CELL_SIZE = {"vit": None, "swin": 8, "pixel": 32, "mlm": None}  # Swin: 8 tokens (32 px at patch 4); CNN: 32 px
_WARNED: set[str] = set()

__all__ = [
    *("DEFAULT_CELL_SIZE", "FAMILIES", "check_classes", "check_family_options", "check_input_size"),
    *("check_like_masksub", "check_vit_patches", "describe_sub_branch", "is_vit_family", "logits_of"),
    *("resolve_family", "unwrap_model"),
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module under ``torch.compile`` (``OptimizedModule._orig_mod``), else the model itself."""
    return getattr(model, "_orig_mod", model)


def _pair(size) -> tuple[int, int]:
    """An int or a pair as a pair (timm's patch sizes are either: XCiT's and EfficientViT-MSRA's are ints)."""
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def logits_of(output, batch_size: int) -> torch.Tensor:
    """The logits [B, C] of an image model's output: the tensor itself, the ``.logits`` of a Hugging Face
    ``ModelOutput`` (``ViTForImageClassification`` and the other transformers image classifiers return one) or a
    mapping's ``'logits'``; anything else, or logits of another shape, is an error naming what the model returned
    (shapes only: no sync)."""
    if isinstance(output, torch.Tensor):
        logits = output
    else:  # (a ModelOutput is both: its .logits is its 'logits')
        logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        # (timm's distilled models return their two heads' logits in distilled training, their mean otherwise)
        two_heads = " (a timm distilled model (DeiT, LeViT, PiT, EfficientFormer, ...) in distilled training? "
        two_heads += "model.set_distilled_training(False); or return the logits tensor (wrap the model to return "
        two_heads += "out[0]))"
        raise TypeError(
            "MaskSub's image families need a model whose forward returns logits [B, C]: a tensor, an object with a "
            f".logits tensor (a Hugging Face ModelOutput) or a mapping with a 'logits' tensor; this model returned "
            f"{type(output).__name__}{two_heads if isinstance(output, tuple) else ''}"
        )
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise ValueError(
            f"MaskSub's image families need the model's logits as [B, C] with B = the images' batch size "
            f"{batch_size}; the model returned shape {tuple(logits.shape)}"
        )
    return logits


def check_classes(loss: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits [B, C] that ``loss`` cannot train: softmax CE over one class is 0 whatever the model, and BCE on one
    logit takes float targets [B, 1] (class ids would be one-hot over one class: every row positive, id 1 refused).
    A ValueError rather than a run that learns nothing; shapes and dtypes only (no sync)."""
    if loss == "ce" and logits.shape[-1] < 2:
        raise ValueError(
            f"loss='ce' needs logits of at least 2 classes, got {logits.shape[-1]}: softmax cross-entropy over one "
            "class is 0 whatever the model (a Hugging Face num_labels=1 head?); for one binary label use loss='bce' "
            "with float targets [B, 1] of 0. / 1."
        )
    one_label = loss == "bce" and logits.shape[-1] == 1 and isinstance(target, torch.Tensor)
    if one_label and (not target.is_floating_point() or target.dim() != 2):
        raise ValueError(
            "loss='bce' on one logit (one binary label) takes float targets [B, 1] of 0. / 1. (e.g. "
            f"labels.float()[:, None]); got {target.dtype} {tuple(target.shape)}"
            + (": class ids would be one-hot over a single class" if not target.is_floating_point() else "")
        )


def is_vit_family(model: nn.Module) -> bool:
    """Whether ``model`` is one that the vit family cuts at its tokens: a timm ViT, Eva / BEiT, relpos ViT, or a
    transformers ViT-like classifier (no warning: resolve_family's fallback warns, a --baseline check must not)."""
    return is_vit(model) or is_eva(model) or is_relpos_vit(model) or is_hf_vit(model)


def _auto_family(model: nn.Module) -> str:
    """family='auto''s answer for ``model``, without the pixel fallback's warning (resolve_family gives it; a
    ``--baseline`` check must not, nor reset the warnings registry to hide it)."""
    if is_vit_family(model):
        return "vit"
    if is_swin(model) or is_hf_swin(model):
        return "swin"
    if is_mlm(model):
        return "mlm"
    name = type(model).__name__
    if getattr(model, "main_input_name", None) == "input_ids":  # a transformers text model: no image fallback
        what = "a masked LM of another structure" if name.endswith("ForMaskedLM") else "a model of token ids"
        raise ValueError(
            f"MaskSub: {name} is {what} (it takes input_ids); the text family 'mlm' takes masked LMs of BERT "
            "structure (bert + cls.predictions) or RoBERTa structure (roberta + lm_head) only, and the other "
            "families take images"
        )
    check_hf_head(model)  # a transformers encoder or non-classification head: no logits (hf_checks.py)
    return "pixel"


def resolve_family(model: nn.Module, family: str = "auto", cell_size: int | None = None) -> str:
    """'vit', 'swin', 'pixel' or 'mlm' for ``model`` (see the module docstring for the policy); ``cell_size``: the
    pixel cells' side that the fallback's warning names (None: the pixel family's default, 32)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if family == "auto":
        found = _auto_family(model)
        if found != "pixel":
            return found
        name = type(model).__name__
        # once per architecture: a timm class can hold several (ByobNet: HaloNet and MobileViT; MaxxVit: MaxViT and
        # CoAtNet), told apart by the model's pretrained_cfg; other models by their class
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        key = f"{name}/{architecture}" if architecture else name
        if not is_convolutional(model) and key not in _WARNED:
            _WARNED.add(key)
            shown = f"{name} ({architecture})" if architecture else name
            cell = cell_size if cell_size is not None else DEFAULT_CELL_SIZE["pixel"]
            warn_user(
                f"MaskSub: {shown} is not one of the models cut at their tokens (timm's VisionTransformer, Eva, "
                "Beit, VisionTransformerRelPos, SwinTransformer v1 / v2; transformers' ViT-like image classifiers: "
                "ViT, ViT-MSN, DeiT, DINOv2, I-JEPA, CLIP, MetaCLIP 2, SigLIP; transformers' Swin, SwinV2), nor a "
                f"CNN; its sub-branch uses the pixel-grid fallback (random {cell}x{cell}-pixel cells of the input set "
                "to 0), not a recipe from the paper. Pass family='pixel' to silence this warning."
            )
        return "pixel"
    if family not in FAMILIES:
        raise ValueError(f"family must be 'auto' or one of {FAMILIES}, got {family!r}")
    needs = {
        "vit": ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head"),
        "swin": ("patch_embed", "layers", "norm", "forward_head"),
        "pixel": (),
        "mlm": (),
    }[family]
    if family == "pixel":
        check_hf_head(model)
    if family == "mlm" and not is_mlm(model):
        raise ValueError(
            f"family='mlm' needs a Hugging Face masked-LM model of BERT structure (bert + cls.predictions) or RoBERTa "
            f"structure (roberta + lm_head); {type(model).__name__} has neither"
        )
    if family == "vit" and is_relpos_vit(model):  # no _pos_embed / patch_drop / norm_pre: vit_relpos.py's forward
        needs = ("patch_embed", "blocks", "norm", "forward_head")
    if (family == "vit" and is_hf_vit(model)) or (family == "swin" and is_hf_swin(model)):
        needs = ()  # transformers: its own forward, changed after the embeddings (hf_vit.py, hf_swin.py)
    if family == "vit" and needs:  # timm's parts, which vit.py / vit_relpos.py run (a user ViT with their names too)
        needs = (*needs, "num_prefix_tokens", "patch_embed.patch_size")  # (the selection's prefix; the token grid)
    missing = [name for name in needs if not _has_path(model, name)]
    if missing:
        raise ValueError(f"family={family!r} needs a model with {needs}; {type(model).__name__} lacks {missing}")
    return family


def _has_path(model: nn.Module, name: str) -> bool:
    """Whether ``model`` has the attribute ``name``, a dotted path ('patch_embed.patch_size') too."""
    for part in name.split("."):
        if not hasattr(model, part):
            return False
        model = getattr(model, part)
    return True


def check_family_options(family: str, variant: str, cell_size: int | None) -> None:
    """MaskSub's refusals of a variant or a cell size that ``family`` has no use for."""
    if variant != "mask" and family != "vit":
        raise ValueError(f"variant={variant!r} (DropSub / PathSub) is defined for ViTs; this model is {family}")
    if cell_size is not None and family == "vit":
        raise ValueError(
            "cell_size is an option of the grid masks (swin, pixel); the vit family drops tokens (mask_ratio)"
        )


def check_like_masksub(model: nn.Module, img_size: int, variant: str, cell_size: int | None, mask_ratio: float) -> None:
    """For a ``--baseline`` run: the MaskSub arm's refusals of its variant, cell size and image size for ``model``
    (a cell that does not divide the images, a ViT size its patches do not tile, ...), without building the wrapper
    (which prepares some models for its sub-branch): the paired runs accept and refuse the same options."""
    model = unwrap_model(model)
    family = _auto_family(model)  # (no pixel fallback's warning: it is about the sub-branch, which does not run)
    check_family_options(family, variant, cell_size)
    if variant == "mask":
        if family == "vit":
            check_eva(model)
        cell = cell_size if cell_size is not None else DEFAULT_CELL_SIZE[family]
        check_input_size(family, model, img_size, cell, mask_ratio)
    else:
        check_variant(model, variant)  # (blocks with no dropout / drop-path slot: MaskSub refuses them)


def check_eva(model: nn.Module) -> None:
    """The masked sub-branch on an Eva: its patch dropout runs inside its _pos_embed, before the sub-branch could
    select tokens, so an Eva built with it is refused (DropSub / PathSub run the whole model: they take it)."""
    if is_eva(model) and getattr(model, "patch_drop", None) is not None:
        raise ValueError(
            "MaskSub's vit sub-branch on a timm Eva needs patch_drop_rate=0 (its patch dropout runs inside _pos_embed, "
            "where the sub-branch's token selection cannot follow it); build the model without patch dropout"
        )


def check_input_size(
    family: str,
    model: nn.Module,
    img_size: int | tuple[int, int] | None,
    cell_size: int | None,
    mask_ratio: float,
    model_kwargs: dict | None = None,
) -> None:
    """Raise a ValueError when images of ``img_size`` (None: the model's configured size, where it has one) cannot
    be masked (a grid that the cells do not divide, a ratio that keeps no token / cell) or when the model refuses
    them (a ViT / Swin built for another size with a strict patch embedding, timm's default; a transformers model's
    embeddings, run with the ``model_kwargs`` they take, e.g. ``interpolate_pos_encoding``); a timm ViT's tokens
    counted after its patch dropout (``_check_kept_after_patch_dropout``)."""
    from ..ops.token_select import num_kept_tokens

    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    if family == "mlm":
        return  # sequences: the length is checked on each batch
    embed = getattr(model, "patch_embed", None)
    built = getattr(embed, "img_size", None)
    patch = _pair(getattr(embed, "patch_size", 1))
    if img_size is not None and getattr(embed, "strict_img_size", False) and built is not None:
        patched = not img_size[0] % patch[0] and not img_size[1] % patch[1]  # a ViT: else its patch error, below
        refused = (patched or family != "vit") and tuple(img_size) != tuple(built)  # its patch embedding refuses them
        why = "a strict image size"
        if hasattr(embed, "backbone") and hasattr(embed, "dynamic_feat_size"):
            # a hybrid's patch embedding (a CNN backbone) takes any size and asserts none: its fixed position
            # embedding wants the built token grid, which other sizes may give too (72 px at 64's)
            grid, built_grid = (tuple(embed.dynamic_feat_size(tuple(size))) for size in (img_size, built))
            refused, why = grid != built_grid, f"a token grid {grid} where the position embedding has {built_grid}"
        if refused:
            raise ValueError(
                f"the model is built for {tuple(built)} images and refuses {tuple(img_size)} ({why}): "
                f"build it with img_size={img_size[0] if img_size[0] == img_size[1] else tuple(img_size)}, or "
                f"{'strict_img_size=False' if family == 'swin' else 'dynamic_img_size=True'} where the model has it"
            )
    if family == "vit" and is_hf_vit(model):
        grid = configured_grid(model) if img_size is None else check_hf_size(model, img_size, model_kwargs)
        if grid is not None:
            num_kept_tokens(grid[0] * grid[1], mask_ratio)
        return
    if family == "vit":
        grid = vit_token_grid(model)
        if img_size is not None:
            grid = check_vit_patches(model, img_size)
        if grid is not None:
            _check_kept_after_patch_dropout(model, grid[0] * grid[1], mask_ratio)
        return
    if family == "swin":
        if is_hf_swin(model):  # transformers pads the images to multiples of the patch
            grid, patch = hf_swin_grid(model, img_size, model_kwargs)
        else:
            patch = _pair(model.patch_embed.patch_size)
            grid = swin_token_grid(model) if img_size is None else (img_size[0] // patch[0], img_size[1] // patch[1])
        check_swin_cells(grid, patch, cell_size, mask_ratio)
        return
    else:
        if img_size is None:
            return  # a CNN takes any size; the forward checks the actual images
        grid = img_size
        if grid[0] % cell_size or grid[1] % cell_size:
            raise ValueError(
                f"image size {grid[0]} x {grid[1]} is not divisible by the mask cell of {cell_size} pixels: use a "
                f"multiple of {cell_size}, or {_other_cell(grid, cell_size, mask_ratio)}"
            )
    _check_cells(family, grid, (1, 1), cell_size, mask_ratio)  # the pixel family: cells of pixels (swin returned above)


def describe_sub_branch(ms, img_size: int | tuple[int, int]) -> str:
    """What a MaskSub wrapper ``ms``'s sub-branch does to ``img_size`` images, in words (the training command's
    first line): 'vit (token drop: keep 8 of 16 tokens)', 'swin (mask token on 2 of 4 stage-1 cells of 8 x 8
    tokens)', 'pixel (grid cells: 2 of 4 cells of 32 x 32 pixels set to 0)', and DropSub / PathSub's rates. The
    counts are the ops' (floor(L (1 - r)) kept); the pixel family of a model that is not a CNN says it is the
    fallback."""
    from ..ops.token_select import num_kept_tokens  # (at call time: the package imports this module)

    family, model, ratio, cell = ms.family, ms.inner_model, ms.mask_ratio, ms.cell_size
    if ms.variant != "mask":
        what = {"drop": "DropSub: dropout", "path": "PathSub: drop-path"}[ms.variant]
        return f"{family} ({what} at rate {ratio:g} in the sub-branch)"
    size = _pair(img_size)
    if family == "vit":
        grid = check_hf_size(model, size, ms.model_kwargs) if is_hf_vit(model) else check_vit_patches(model, size)
        tokens = grid[0] * grid[1]
        drop = float(getattr(getattr(model, "patch_drop", None), "prob", 0.0) or 0.0)
        left = max(1, int(tokens * (1.0 - drop))) if drop > 0 else tokens
        after = f" that its patch dropout keeps of {tokens}" if left != tokens else ""
        return f"vit (token drop: keep {num_kept_tokens(left, ratio)} of {left} tokens{after})"
    if family == "swin":
        if is_hf_swin(model):
            grid = hf_swin_grid(model, size, ms.model_kwargs)[0]
        else:
            patch = _pair(model.patch_embed.patch_size)
            grid = (size[0] // patch[0], size[1] // patch[1])
        cells = (grid[0] // cell) * (grid[1] // cell)
        masked = cells - num_kept_tokens(cells, ratio)
        return f"swin (mask token on {masked} of {cells} stage-1 cells of {cell} x {cell} tokens)"
    if family == "pixel":
        cells = (size[0] // cell) * (size[1] // cell)
        masked = cells - num_kept_tokens(cells, ratio)
        fallback = "" if is_convolutional(model) else "; the fallback for a model that is not a CNN"
        return f"pixel (grid cells: {masked} of {cells} cells of {cell} x {cell} pixels set to 0{fallback})"
    return family


def _check_kept_after_patch_dropout(model: nn.Module, tokens: int, mask_ratio: float) -> None:
    """The sub-branch's kept tokens of a timm ViT with ``tokens`` patch tokens: its patch dropout (patch_drop_rate
    p, training only) runs before the selection and keeps max(1, floor(L (1 - p))) of them (timm's rule), of which
    the sub-branch keeps floor(. (1 - r)): a share (1 - p)(1 - r) of the patches. Refused where none is left."""
    from ..ops.token_select import num_kept_tokens  # (at call time: the package imports this module)

    drop = float(getattr(getattr(model, "patch_drop", None), "prob", 0.0) or 0.0)
    left = max(1, int(tokens * (1.0 - drop))) if drop > 0 else tokens
    try:
        num_kept_tokens(left, mask_ratio)
    except ValueError as exc:
        if not drop:
            raise
        raise ValueError(
            f"{exc}: the model's patch dropout (patch_drop_rate={drop:g}) keeps {left} of its {tokens} patch tokens "
            "before the sub-branch's selection"
        ) from exc


def check_vit_patches(model: nn.Module, img_size: tuple[int, int]) -> tuple[int, int]:
    """A timm ViT's token grid for ``img_size`` images; a ValueError for a size its patches do not tile. timm's patch
    embedding refuses such a size unless it pads (dynamic_img_pad), or, not strict, crops it silently (the
    training command's --baseline checks it too); a hybrid's CNN backbone takes any size, its patches cut the
    features (its grid counted in patches of the features, not of pixels)."""
    embed = model.patch_embed
    patch = _pair(embed.patch_size)
    tiled = getattr(embed, "dynamic_img_pad", False) or hasattr(embed, "backbone")
    if not tiled and (img_size[0] % patch[0] or img_size[1] % patch[1]):
        raise ValueError(f"image size {tuple(img_size)} is not divisible by the ViT patch size {patch}")
    feat_size = getattr(embed, "dynamic_feat_size", None)  # timm's grid for a size: padding, backbone
    return tuple(feat_size(tuple(img_size))) if feat_size else (img_size[0] // patch[0], img_size[1] // patch[1])


def check_swin_cells(grid: tuple[int, int], patch: tuple[int, int], cell_size: int, mask_ratio: float) -> None:
    """Raise a ValueError when the cells of ``cell_size`` tokens do not divide the Swin stage-1 token ``grid`` (of
    ``patch`` = (height, width)-pixel patches) or ``mask_ratio`` keeps none of them."""
    if grid[0] % cell_size or grid[1] % cell_size:
        height, width = cell_size * patch[0], cell_size * patch[1]  # a non-square patch: per side
        size = f"{height} pixels" if height == width else f"{height} x {width} pixels (height x width)"
        unit = f"patch {patch[0]} x cell" if patch[0] == patch[1] else f"patch {patch[0]} x {patch[1]}, cell"
        raise ValueError(
            f"the Swin stage-1 token grid {grid[0]} x {grid[1]} is not divisible by the mask cell of {cell_size} "
            f"tokens: use an image size that is a multiple of {size} ({unit} {cell_size}), or "
            f"{_other_cell(grid, cell_size, mask_ratio)}"
        )
    _check_cells("swin", grid, patch, cell_size, mask_ratio)


def _fewest_cells(mask_ratio: float) -> int:
    """The fewest cells of which the grid masks keep one: the smallest n with int(n (1 - r)) >= 1, the ops' own
    rounding (not ceil(1 / (1 - r)): 5 at r = 0.8, where 1 - 0.8 = 0.19999999999999996 keeps 0 of 5)."""
    import math

    n = max(1, math.ceil(1.0 / (1.0 - mask_ratio)) - 1)
    while int(n * (1.0 - mask_ratio)) < 1:
        n += 1
    return n


def _other_cell(grid: tuple[int, int], cell_size: int, mask_ratio: float) -> str:
    """'cell_size=c' for the cell size nearest ``cell_size`` (the larger on a tie) that divides the grid, keeps a
    cell at ``mask_ratio`` and gives the grid masks at most MAX_TOKENS cells; else says that no cell size does."""

    from ..ops._common import MAX_TOKENS

    needed = _fewest_cells(mask_ratio)
    fits = [
        c for c in range(2, max(grid) + 1)
        if not grid[0] % c and not grid[1] % c and needed <= (grid[0] // c) * (grid[1] // c) <= MAX_TOKENS
    ]  # fmt: skip
    if not fits:
        return f"another size: no cell size divides {grid[0]} x {grid[1]} into {needed} to {MAX_TOKENS} cells"
    return f"cell_size={min(fits, key=lambda c: (abs(c - cell_size), -c))}"


def _check_cells(family: str, grid: tuple[int, int], patch: tuple[int, int], cell_size: int, mask_ratio: float) -> None:
    """A grid of too few cells keeps none: say which image size or cell size would keep one (the bare
    ``num_kept_tokens`` error talks about tokens, which means nothing to a CNN user). One of more cells than a mask
    selects among (8192): the ops' error, naming a larger cell size, here before the first step."""
    import math

    from ..ops._grid_checks import _cell_grid

    _cell_grid(grid[0], grid[1], cell_size, "images" if family != "swin" else "Swin's stage-1 token grid")
    cells = (grid[0] // cell_size) * (grid[1] // cell_size)
    needed = _fewest_cells(mask_ratio)
    if cells >= needed:
        return
    side = math.ceil(math.sqrt(needed))  # cells per side of the smallest square grid that keeps one
    smaller = [c for c in range(cell_size - 1, 0, -1) if not grid[0] % c and not grid[1] % c]
    smaller = [c for c in smaller if (grid[0] // c) * (grid[1] // c) >= needed]
    unit = "tokens" if family == "swin" else "pixels"
    hint = f"images of {side * cell_size * patch[0]} x {side * cell_size * patch[1]} pixels or more"
    if smaller:
        hint += f", or cell_size={smaller[0]}"
    raise ValueError(
        f"mask_ratio={mask_ratio} keeps none of the {cells} mask cell(s) of {cell_size} {unit} that fit "
        f"{grid[0] * patch[0]} x {grid[1] * patch[1]} images (it needs at least {needed} cells): use {hint}"
    )
