"""Layer-wise learning-rate decay for Hugging Face models (``MaskSubTrainer(..., layer_decay=d)``).

MAE, BEiT and FT-CLIP fine-tune with it (the training command's ``--layer-decay`` for timm models: optim.py): with
L blocks, the stem (everything before the first block: embeddings, class and position tokens, CLIP's pre-norm) is
layer 0, block i is layer i + 1, and everything after the last block (final norm, pooler, classifier, an MLM
head) is layer L + 1; a parameter's learning rate is ``lr * d ** (L + 1 - layer)``: the head trains at the full
rate, the stem at ``d ** (L + 1)`` of it. The same scales as MAE's ``util/lr_decay.py`` for a ViT.

transformers' models name no matcher as timm's do, so the blocks are found by their container: the
``nn.ModuleList`` attributes named ``layer``, ``layers`` or ``blocks`` whose elements hold parameters (ViT, DeiT,
DINOv2, CLIP / SigLIP vision, BERT, RoBERTa, DistilBERT: one list; Swin, ConvNeXt: a list of stages, each with a
list of blocks, where the innermost lists are the blocks, numbered across the stages in order; T5's blocks are the
elements of a list named ``block``, whose own lists named ``layer`` hold a block's sub-layers, no blocks;
an element that is an unnamed ModuleList is a group of blocks, its elements the blocks: Funnel's).
A model without such a list is refused (transformers' ResNet, whose blocks are an ``nn.Sequential``: CNN recipes use
no layer decay), as is one whose block lists lie in no one list of stages (CLIPModel's text and vision towers,
T5's encoder and decoder). A parameter outside the blocks takes the layer of the block before it in the
model's registration order (a Swin stage's patch merging, after its blocks: its last block's; ConvNeXt's
downsampling, before a stage's blocks: the previous stage's last block; MobileViT's norm, projection and fusion after
a stage's blocks, the last stage's too: its last block's), or 0 before the first block, or L + 1 after the last block
and outside the list of stages holding it (the final norm, the pooler). A relative position bias outside the blocks
and shared by them all (a module named in ``SHARED_BIAS_NAMES``: BEiT's and Data2Vec-vision's with
``use_shared_relative_position_bias``; one inside a block is the block's, as T5's in its first) is L + 1: BEiT's
fine-tuning code puts its ``rel_pos_bias`` at the last layer id, the full rate (unilm beit/optim_factory.py
get_num_layer_for_vit); timm's BEiT matcher, and so the training command's ``--layer-decay``, puts it in the stem.
A transformers model's parameters outside its backbone (``model.base_model``, where that is a
submodule holding the blocks) are its head, L + 1, wherever they are registered: XLM-RoBERTa's and CamemBERT's
classifiers and MLM heads are registered before the backbone, and by registration order alone would train at the
stem's rate. A tied parameter (BERT's MLM decoder, the word embeddings) is one parameter, in one group under
its first name: it trains at the lowest rate of its places (the embeddings', layer 0), whichever is registered
first. ``head_rate`` names parameters that train at the full rate wherever they sit: MaskSub's Swin mask token (the
embeddings' ``mask_token``, new at fine-tuning: at the stem's rate it would barely move), as the training command's
wrapper parameters do (optim.py); a name that is not the model's parameter is refused.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

__all__ = ["BLOCK_LIST_NAMES", "SHARED_BIAS_NAMES", "check_layer_decay", "hf_layer_ids", "split_groups_by_layer"]

BLOCK_LIST_NAMES = ("layer", "layers", "blocks")
# a relative position bias outside the blocks, shared by them all: BEiT's and Data2Vec-vision's (transformers), BEiT's
# own code's and timm's (rel_pos_bias)
SHARED_BIAS_NAMES = frozenset({"shared_position_bias", "relative_position_bias", "rel_pos_bias"})


def check_layer_decay(layer_decay) -> float:
    """``layer_decay`` as a float in (0, 1]: a TypeError or ValueError that names what came otherwise."""
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, numbers.Real):  # NumPy's floats too
        raise TypeError(f"layer_decay must be a number in (0, 1]; got {type(layer_decay).__name__}")
    if not (0 < layer_decay <= 1) or not math.isfinite(layer_decay):
        raise ValueError(f"layer_decay must be in (0, 1] (MAE: 0.65, FT-CLIP: 0.6); got {layer_decay}")
    return float(layer_decay)


def _block_prefixes(model: nn.Module) -> tuple[list[str], str | None]:
    """The blocks' module names in registration order (the elements of the innermost named block lists), and the
    prefix of the list of stages holding them (``"mobilevit.encoder.layer."``; None where there is none)."""
    lists = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES \
                and any(True for _ in module.parameters()):  # fmt: skip
            outer = name.rpartition(".")[0].rpartition(".")[0]  # "encoder.block" for "encoder.block.0.layer"
            if outer.rpartition(".")[2] == "block" and isinstance(model.get_submodule(outer), nn.ModuleList):
                name = outer  # a T5 block's list of its sub-layers: the blocks are the elements of `block`
            lists.setdefault(name)
    inner = [name for name in lists if not any(other.startswith(name + ".") for other in lists)]
    stages = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)
              and all(block.startswith(name + ".") for block in inner)]  # fmt: skip
    if len(inner) > 1 and not stages:  # blocks of several stacks (towers), which one numbering would interleave
        raise ValueError(
            f"layer_decay numbers one stack of blocks; {type(model).__name__} has block lists in no one list of "
            f"stages: {inner}"
        )
    blocks = [block for name in inner for block in _elements(name, model.get_submodule(name))]
    return blocks, (max(stages, key=len) + "." if stages else None)  # the innermost list of stages


def _elements(prefix: str, blocks: nn.ModuleList) -> list[str]:
    """The names of a block list's elements that hold parameters; an element that is itself an unnamed ModuleList
    (Funnel's groups of blocks, ``encoder.blocks.0.1``) stands for its own elements."""
    names = []
    for key, child in blocks.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.ModuleList):
            names += _elements(f"{prefix}.{key}", child)
        else:
            names.append(f"{prefix}.{key}")
    return names


def _backbone_prefix(model: nn.Module, blocks: list[str]) -> str | None:
    """``"roberta."`` where ``model.base_model`` (a transformers model's backbone) is a submodule holding every block:
    what lies outside it is the head, wherever registered. None otherwise (a bare backbone, a plain module)."""
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module) or base is model:
        return None
    prefix = next((name for name, module in model.named_modules() if module is base), None)
    if not prefix or not all(block.startswith(prefix + ".") for block in blocks):
        return None
    return prefix + "."


def hf_layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: layer}, L) for ``model`` (module docstring), over ``named_parameters()`` (a tied parameter
    under its first name, at the lowest layer of its names), trainable or not. A ValueError where the model has no
    block list."""
    blocks, stages = _block_prefixes(model)
    if not blocks:
        raise ValueError(
            f"layer_decay needs the model's blocks in an nn.ModuleList named {' / '.join(BLOCK_LIST_NAMES)}; "
            f"{type(model).__name__} has none"
        )
    backbone = _backbone_prefix(model, blocks)
    depth, layers, first, current = len(blocks), {}, {}, 0
    for name, p in model.named_parameters(remove_duplicate=False):  # every name of a tied parameter
        inside = next((i for i, block in enumerate(blocks) if name.startswith(block + ".")), None)
        if inside is not None:
            current = layer = inside + 1
        elif backbone is not None and not name.startswith(backbone):  # the head, before the backbone or after
            layer = depth + 1
        elif not SHARED_BIAS_NAMES.isdisjoint(name.split(".")[:-1]):  # BEiT's shared bias: its recipe's full rate
            layer = depth + 1
        else:
            if current == depth and not (stages and name.startswith(stages)):  # past the last block and the stages
                current = depth + 1
            layer = current
        key = first.setdefault(id(p), name)  # named_parameters()' name for it
        layers[key] = min(layers.get(key, layer), layer)
    return layers, depth


def split_groups_by_layer(
    optimizer: torch.optim.Optimizer, model: nn.Module, layer_decay: float, head_rate: frozenset[str] = frozenset()
) -> None:
    """Split each of ``optimizer``'s parameter groups (no step taken yet) by the layer of its parameters in
    ``model``, each part at ``lr * layer_decay ** (L + 1 - layer)`` (its ``lr_scale`` recorded; the parameters named
    in ``head_rate`` at layer L + 1), the rest of the group's settings (weight decay, betas, ...) as they were. The
    head's groups come first: a Trainer logs the first group's rate, which is then the schedule's own."""
    if optimizer.state:
        raise ValueError("split_groups_by_layer: the optimizer has taken steps; split its groups before the first")
    if any("initial_lr" in group for group in optimizer.param_groups):  # what a torch scheduler sets at construction
        raise ValueError(
            "split_groups_by_layer: a learning-rate scheduler was built on the optimizer's groups (it would not see "
            "the new ones); split them before building the scheduler"
        )
    names = {id(p): name for name, p in model.named_parameters()}
    ids, depth = hf_layer_ids(model)
    if isinstance(head_rate, str):
        raise TypeError(f"head_rate is a set of parameter names; got the string {head_rate!r}")
    aliases = {name: names[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
    unknown = sorted(name for name in head_rate if name not in aliases)
    if unknown:
        raise ValueError(f"head_rate names no parameter of {type(model).__name__}: {unknown}")
    ids.update({aliases[name]: depth + 1 for name in head_rate})
    parts = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(f"the optimizer holds a parameter of shape {tuple(p.shape)} that is not the model's")
            parts.setdefault((-ids[names[id(p)]], index), []).append(p)
    groups = []
    for (negative_layer, index), params in sorted(parts.items()):
        group, scale = optimizer.param_groups[index], layer_decay ** (depth + 1 + negative_layer)
        groups.append({**group, "params": params, "lr": group["lr"] * scale, "lr_scale": scale})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
