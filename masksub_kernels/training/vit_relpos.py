"""ViTs with relative position biases: the vit family's token selection, each attention bias cut to the kept tokens.

timm's ``Beit`` (BEiT, BEiT v2) and ``VisionTransformerRelPos`` (vit_relpos_*, vit_srelpos_*) carry no position in
their tokens (or not only there): each attention adds a bias ``A [heads, S, S]`` over the S = P + L tokens (P prefix
tokens, L patches) to its logits, from a table indexed by relative position (BEiT) or an MLP of it (relpos), per
block and / or one shared by every block. On the kept tokens, rows ``keep = [0, ..., P-1, P + ids]`` of the full
sequence (``ids`` from ``random_token_select``, [B, K]), the sub-branch gives each attention

    A_sub[b] = A[:, keep[b]][:, :, keep[b]]      [B, heads, P+K, P+K]

so a kept token attends to another with the bias of their places in the whole image: the same as the full model's
attention with the dropped tokens' keys masked out, restricted to the kept queries (what the tests compare with).
The model computes ``A`` with its own code (``_get_rel_pos_bias`` / ``get_bias`` / the shared module), and the
sub-branch hands each attention its cut, per sample, for the length of that block's call (with timm's gradient
checkpointing, for the recomputation too), through a stand-in for the attention's bias method that MaskSub installs
on the model once (``prepare``: it returns the module's own bias except during that call); the bias tables get
their gradients through the cut. Memory: one
``[B, heads, P+K, P+K]`` bias per block, held for the backward as the attention's input.

Forward (timm's ``forward_features`` with the selection before the blocks, then ``forward_head``):

    Beit:   patch_embed -> cat cls -> + pos_embed (when present) -> pos_drop -> select -> blocks -> norm
    RelPos: patch_embed -> cat cls (when present) -> select -> blocks -> norm
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["is_relpos_vit", "prepare", "relpos_sub_logits"]


def _classes() -> tuple[type, ...]:
    try:
        from timm.models.beit import Beit
        from timm.models.vision_transformer_relpos import VisionTransformerRelPos
    except ImportError:  # timm is optional for the package
        return ()
    return Beit, VisionTransformerRelPos


def is_relpos_vit(model: nn.Module) -> bool:
    """True for timm's ``Beit`` and ``VisionTransformerRelPos`` (and their subclasses)."""
    classes = _classes()
    return bool(classes) and isinstance(model, classes)


def _is_beit(model: nn.Module) -> bool:
    from timm.models.beit import Beit

    return isinstance(model, Beit)


def _embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tokens [B, P + L, D] that the blocks take, as the model's forward_features makes them."""
    x = model.patch_embed(images)
    if getattr(model, "cls_token", None) is not None:
        x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    if _is_beit(model):
        if model.pos_embed is not None:
            x = x + model.pos_embed
        x = model.pos_drop(x)
    return x


def _shared_bias(model: nn.Module) -> tuple[str, torch.Tensor | None]:
    """(the blocks' keyword for the shared bias, the full shared bias or None)."""
    if _is_beit(model):
        return "shared_rel_pos_bias", (model.rel_pos_bias() if model.rel_pos_bias is not None else None)
    shared = model.shared_rel_pos
    return "shared_rel_pos", (shared.get_bias() if shared is not None else None)


def _own_bias(block: nn.Module) -> tuple[nn.Module, str] | None:
    """(the module, the name of its method) giving this block's own bias, or None where it has none."""
    attn = block.attn
    if getattr(attn, "relative_position_bias_table", None) is not None:  # Beit
        return attn, "_get_rel_pos_bias"
    if getattr(attn, "rel_pos", None) is not None:  # VisionTransformerRelPos
        return attn.rel_pos, "get_bias"
    return None


def _cut(bias: torch.Tensor | None, keep: torch.Tensor, tokens: int) -> torch.Tensor | None:
    """[heads, S, S] or [1, heads, S, S] -> [B, heads, P+K, P+K]: the kept tokens' rows and columns, per sample.
    ``tokens``: the full sequence's length, which S must be (checked on shapes: no read of ``keep``)."""
    if bias is None:
        return None
    full = bias.reshape(bias.shape[-3:])  # [heads, S, S]
    if full.shape[-1] != tokens or full.shape[-2] != tokens:
        raise ValueError(
            f"MaskSub: the model's relative position bias covers {full.shape[-1]} tokens but the images give "
            f"{tokens} (prefix and patches): the images must have the size the model was built for"
        )
    rows = keep[:, :, None]  # [B, P+K, 1]
    cols = keep[:, None, :]  # [B, 1, P+K]
    return full.permute(1, 2, 0)[rows, cols].permute(0, 3, 1, 2)  # [B, P+K, P+K, heads] -> [B, heads, P+K, P+K]


class _CutBias:
    """Stands in for an attention's bias method (``_get_rel_pos_bias`` / ``get_bias``), installed once on the module
    as an instance attribute by ``prepare``: the module's own bias (its method, unchanged), or while the sub-branch
    runs that block, the cut one. A lasting object whose ``cut`` is set and reset, rather than a method swapped in and
    out per call: torch.compile traces the attribute's mutation, and its guards see the same object every step."""

    def __init__(self, module: nn.Module, name: str):
        # the module and its class's function, not a bound method: a copy of the model (timm's EMA) or a pickled
        # one (torch.save(model)) gets a stand-in of its own module that computes that module's own bias
        self.module = module
        self.function = getattr(type(module), name)
        self.cut: torch.Tensor | None = None

    def own(self) -> torch.Tensor:
        """The module's own bias, from its class's method."""
        return self.function(self.module)

    def __call__(self) -> torch.Tensor:
        return self.own() if self.cut is None else self.cut


def prepare(model: nn.Module) -> None:
    """Install the stand-ins of every block's bias method (idempotent; MaskSub calls it when it wraps the model).
    The model computes the same values as before: only a MaskSub sub-branch sets a cut."""
    for block in model.blocks:
        target = _own_bias(block)
        if target is not None and not isinstance(vars(target[0]).get(target[1]), _CutBias):
            module, name = target
            setattr(module, name, _CutBias(module, name))


def _run_block(block: nn.Module, keyword: str, x: torch.Tensor, own: torch.Tensor | None, shared):
    """The block on the kept tokens, its attention's own bias the cut ``own`` for the length of the call."""
    target = _own_bias(block)
    if target is None:
        return block(x, **{keyword: shared})
    stand_in = getattr(*target)
    stand_in.cut = own
    try:
        return block(x, **{keyword: shared})
    finally:
        stand_in.cut = None


def relpos_sub_logits(model: nn.Module, images: torch.Tensor, mask_ratio: float, seed: int | None) -> torch.Tensor:
    """Logits of the masked sub-branch of a Beit / VisionTransformerRelPos. With ``seed=s`` the kept patch tokens are
    ``random_keep_indices(B, L, K, seed=s)`` (the op's contract), as in the vit family."""
    import masksub_kernels as mk  # at call time: the package imports this module

    prefix = int(model.num_prefix_tokens)
    x = _embed(model, images)
    tokens = x.shape[1]
    x, ids = mk.random_token_select(x, mask_ratio, num_prefix_tokens=prefix, seed=seed)
    head = torch.arange(prefix, device=ids.device).expand(ids.shape[0], prefix)
    keep = torch.cat((head, ids + prefix), dim=1)  # [B, P+K]: the kept tokens' places in the full sequence
    prepare(model)  # a no-op after MaskSub's own call
    keyword, shared = _shared_bias(model)
    shared = _cut(shared, keep, tokens)
    checkpointing = getattr(model, "grad_checkpointing", False) and not torch.jit.is_scripting()
    for block in model.blocks:
        target = _own_bias(block)
        own = _cut(getattr(*target).own(), keep, tokens) if target is not None else None
        run = functools.partial(_run_block, block, keyword)
        if checkpointing:
            from timm.models._manipulate import checkpoint

            x = checkpoint(run, x, own, shared)
        else:
            x = run(x, own, shared)
    return model.forward_head(model.norm(x))
