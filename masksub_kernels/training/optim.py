"""The training command's optimizer (timm's, with layer-wise learning-rate decay) and weight EMA (timm's).

Layer decay (``--layer-decay d``, MAE / BEiT / FT-CLIP fine-tuning): timm's ``param_groups_layer_decay`` on the bare
model (through _FinalNormAtHead), i.e. with the model's ``group_matcher`` -- for a ViT the stem (cls token,
position embedding, patch embedding, ``norm_pre``) is layer 0, block i is layer i + 1, the rest (final norm,
fc_norm, head) layer depth + 1 -- and learning rate ``lr * d ** (depth + 1 - layer)``: the same scales as MAE's
``util/lr_decay.py`` and FT-CLIP's ``optim_factory.py``. timm's matchers put the final ``norm`` with the last block
(``MATCH_PREV_GROUP``: lr * d); the references, and so this module, with the head (lr * 1): FT-CLIP's fresh
per-token norm sits there.
Weight decay is off for 1-D parameters and the model's ``no_weight_decay()`` names. The MaskSub wrapper's own
parameter (Swin's mask token) joins as one more no-decay group at the full learning rate. timm's schedulers multiply
each group's learning rate by its ``lr_scale``.

EMA (``--model-ema``): ``timm.utils.ModelEmaV3`` of the bare model (what is evaluated), updated after every optimizer
step with a constant decay (``--model-ema-decay``), evaluated each epoch beside the model and saved in checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from .run_setup import UsageError

__all__ = ["LAYER_DECAY_GROUPING", "build_ema", "build_optimizer", "layer_decay_groups"]

# How --layer-decay groups the parameters, recorded in checkpoints (a resume names the change where the groups differ):
# 2 since 2026-12-06, the final norm with the head (1 before: with the last block, timm's matcher)
LAYER_DECAY_GROUPING = 2


class _FinalNormAtHead:
    """``model`` as timm's param_groups_layer_decay reads it, with the final ``norm`` at the head's layer (MAE's
    lr_decay.py, FT-CLIP's optim_factory.py) where timm's group_matcher merges it into the last block's. Everything
    else is the model's (its parameters, its ``pretrained_cfg`` for timm's grouping of a model without a matcher), and
    a matcher that is a function (CaiT, Inception) is timm's as it is."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        if hasattr(model, "group_matcher"):  # timm asks hasattr: only a model with a matcher has one here
            self.group_matcher = self._group_matcher

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def _group_matcher(self, coarse: bool = False):
        from timm.models._manipulate import MATCH_PREV_GROUP

        matcher = self._model.group_matcher(coarse=coarse)
        if not isinstance(matcher, dict):
            return matcher
        matcher, blocks = dict(matcher), matcher.get("blocks")
        if isinstance(blocks, (list, tuple)):
            # unmatched, the final norm joins the trailing group of the rest (fc_norm, head): layer depth + 1
            matcher["blocks"] = [b for b in blocks if not (b[0] == r"^norm" and tuple(b[1] or ()) == MATCH_PREV_GROUP)]
        return matcher


def layer_decay_groups(trained: nn.Module, model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with ``lr_scale`` for ``model`` (timm's layer decay) plus any parameter of ``trained`` (the
    MaskSub wrapper) outside ``model``, in a no-decay group with ``lr_scale`` 1."""
    from timm.optim import param_groups_layer_decay

    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_layer_decay(
        _FinalNormAtHead(model), weight_decay=weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay
    )
    inside = {id(p) for p in model.parameters()}
    extra = [p for p in trained.parameters() if id(p) not in inside and p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def build_optimizer(args, trained: nn.Module, model: nn.Module) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` on ``trained`` (the wrapper, or the model for --baseline), with --layer-decay,
    --opt-eps, --opt-betas and --momentum where given (--momentum: 0.9 where not). A setting the optimizer does not
    take is refused: timm would drop it silently (SGD has no betas, AdamW no momentum)."""
    from timm.optim import create_optimizer_v2, get_optimizer_info

    kwargs = {}
    if args.opt_eps is not None:
        kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    if args.layer_decay is not None:
        kwargs["param_group_fn"] = lambda _: layer_decay_groups(trained, model, args.weight_decay, args.layer_decay)
    try:  # timm's own reading of a name: "lookahead_adamw" is AdamW inside Lookahead
        info = get_optimizer_info(args.opt.lower().split("_")[-1])
    except ValueError:
        info = None  # an unknown name: create_optimizer_v2 says so below
    if info is not None:
        given = (("--opt-betas", args.opt_betas, info.has_betas), ("--opt-eps", args.opt_eps, info.has_eps),
                 ("--momentum", args.momentum, info.has_momentum))  # fmt: skip
        unused = [flag for flag, value, taken in given if value is not None and not taken]
        if unused:
            raise UsageError(f"--opt {args.opt} takes no {' or '.join(unused)} (timm would ignore it): leave it out")
    momentum = 0.9 if args.momentum is None else args.momentum
    try:
        return create_optimizer_v2(
            trained, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=momentum, **kwargs
        )
    except ValueError as exc:  # an unknown name: timm says "not found in registry"
        raise UsageError(f"--opt {args.opt}: {exc} (timm.optim.list_optimizers() lists them)") from exc
    except TypeError as exc:  # a setting the optimizer's constructor refuses
        raise UsageError(f"--opt {args.opt} does not take these settings {sorted(kwargs)}: {exc}") from exc


def build_ema(args, model: nn.Module):
    """``ModelEmaV3`` of ``model`` (the eager module under torch.compile) with --model-ema, else None."""
    if not args.model_ema:
        return None
    from timm.utils import ModelEmaV3

    from .families import unwrap_model

    return ModelEmaV3(unwrap_model(model), decay=args.model_ema_decay)
