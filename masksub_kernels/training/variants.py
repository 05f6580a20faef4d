"""DropSub and PathSub: the sub-branch as the unmasked model with extra dropout or drop-path (official DeiT code).

- DropSub (``variant='drop'``): during the sub forward every dropout inside the ViT blocks except the attention-
  weight dropout (``attn_drop``) runs at p = r: the attention output projection's and the MLP's.
- PathSub (``variant='path'``): during the sub forward every drop-path slot of the blocks (``drop_path``,
  ``drop_path1``, ``drop_path2``) runs at rate r, uniform over depth. timm builds an ``nn.Identity`` where the
  model's own rate is 0, so such slots get a temporary ``DropPath(r)``.

Both are context managers that restore the model's own rates (and modules) on exit, also when the forward raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["check_variant", "sub_drop_path", "sub_dropout", "uniform_drop_path"]


def _blocks(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise ValueError(f"DropSub / PathSub need a ViT with .blocks; {type(model).__name__} has none")
    return blocks


def _dropouts(model: nn.Module) -> list[nn.Dropout]:
    """DropSub's dropouts: every ``nn.Dropout`` in ``model.blocks`` except ``*attn_drop`` and those inside a relative
    position bias module (``rel_pos``: vit_relpos_*'s bias MLP, whose dropout is not DropSub's)."""
    return [
        module for name, module in _blocks(model).named_modules()
        if isinstance(module, nn.Dropout) and not name.endswith("attn_drop") and "rel_pos" not in name
    ]  # fmt: skip


def check_variant(model: nn.Module, variant: str) -> None:
    """A ValueError for DropSub / PathSub on a model whose blocks have nothing they set: its sub-branch would be the
    main branch (the sub term training nothing). timm's ViTs have them (an ``nn.Dropout(p=0)``, an ``nn.Identity``
    drop-path slot, where their rates are 0)."""
    if variant == "drop" and not _dropouts(model):
        raise ValueError(
            f"variant='drop' (DropSub) sets the dropout of the model's blocks, and {type(model).__name__}.blocks has "
            "no torch.nn.Dropout (other than attn_drop and those of a relative position bias, rel_pos): its "
            "sub-branch would be the main branch"
        )
    if variant == "path" and not list(_drop_path_slots(model)):
        raise ValueError(
            f"variant='path' (PathSub) sets the drop-path slots of the model's blocks, and {type(model).__name__}"
            ".blocks has none: a child named drop_path* that is timm's DropPath (timm.layers.DropPath, not a class "
            "of one's own) or an nn.Identity (timm's slot at rate 0); its sub-branch would be the main branch"
        )


@contextlib.contextmanager
def sub_dropout(model: nn.Module, rate: float) -> Iterator[None]:
    """Set p = rate on DropSub's dropouts (``_dropouts``); restore on exit."""
    saved: list[tuple[nn.Dropout, float]] = []
    try:
        for module in _dropouts(model):
            saved.append((module, module.p))
            module.p = rate
        yield
    finally:
        for module, p in saved:
            module.p = p


def _drop_path_slots(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) of every drop-path slot of ``model.blocks``: a timm DropPath, or the
    ``nn.Identity`` timm builds where a block's rate is 0 (``drop_path``, ``drop_path1``, ``drop_path2``)."""
    from timm.layers import DropPath

    for parent in _blocks(model).modules():
        for name, child in list(parent.named_children()):
            if name.startswith("drop_path") and isinstance(child, (DropPath, nn.Identity)):
                yield parent, name, child


def uniform_drop_path(model: nn.Module, rate: float) -> int:
    """Drop-path ``rate`` in every block of a ViT (``model.blocks``), in place: the official DeiT-III models'
    ``dpr = [drop_path_rate] * depth``, where timm's models ramp it linearly from 0 at the first block to the rate
    at the last (half the average). Returns how many slots were set; ValueError for a model without any."""
    from timm.layers import DropPath

    slots = list(_drop_path_slots(model)) if isinstance(getattr(model, "blocks", None), nn.Module) else []
    if not slots:
        raise ValueError(f"{type(model).__name__} has no drop-path slots in model.blocks")
    for parent, name, child in slots:
        if isinstance(child, DropPath):
            child.drop_prob = rate
        else:
            setattr(parent, name, DropPath(rate))
    return len(slots)


@contextlib.contextmanager
def sub_drop_path(model: nn.Module, rate: float) -> Iterator[None]:
    """Every drop-path slot of ``model.blocks`` at ``rate`` (Identity slots get a DropPath); restore on exit."""
    from timm.layers import DropPath

    swapped: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, original module)
    rates: list[tuple[nn.Module, float]] = []
    try:
        for parent, name, child in _drop_path_slots(model):
            if isinstance(child, DropPath):
                rates.append((child, child.drop_prob))
                child.drop_prob = rate
            else:
                swapped.append((parent, name, child))
                setattr(parent, name, DropPath(rate))
        yield
    finally:
        for module, drop_prob in rates:
            module.drop_prob = drop_prob
        for parent, name, original in swapped:
            setattr(parent, name, original)
