"""The sub-branch of a transformers image classifier: its own forward, with one module's output changed once.

The ViT-like classifiers (hf_vit.py) drop patch tokens after their embeddings; Swin and SwinV2 (hf_swin.py) replace
the tokens of removed cells by a mask token as their embeddings' dropout takes them (after the norm and any absolute
position embedding). Both run the model's own forward (its pooling, attention implementation, gradient
checkpointing: not a copy of them that a new transformers release could leave behind) with a lasting hook on that
module (on its output, or on its input: ``BEFORE``), armed with a plan for one forward by ``run_armed`` and cleared
in a ``finally``: outside the sub-branch the hook changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["OneShotHook", "embeddings_of", "install", "is_transformers_classifier", "run_armed"]


def is_transformers_classifier(model: nn.Module) -> bool:
    """A transformers image classifier (``*ForImageClassification*``), or a subclass of one in user code; not a
    bare encoder (``ViTModel``, ``Dinov2Backbone``) or a masked-image-modelling head, whose outputs are no logits."""
    return any(
        cls.__module__.startswith("transformers.") and "ForImageClassification" in cls.__name__
        for cls in type(model).__mro__
    )


def embeddings_of(model: nn.Module, class_names: frozenset[str]) -> nn.Module | None:
    """The one module of a transformers image classifier whose class is named in ``class_names``, else None."""
    if not is_transformers_classifier(model):
        return None
    found = [module for module in model.modules() if type(module).__name__ in class_names]
    return found[0] if len(found) == 1 else None


class OneShotHook:
    """A lasting forward hook: the output unchanged, except for the first call after ``plan`` is set, which
    returns ``apply(module, output, *plan)`` and clears the plan. ``BEFORE``: a forward pre-hook instead, whose
    ``apply`` changes the module's first input. A plain object (deep copies and pickles of the model get their
    own)."""

    BEFORE = False

    def __init__(self) -> None:
        self.plan: tuple | None = None

    def __call__(self, module: nn.Module, args, *output):
        if self.plan is None:
            return None
        plan, self.plan = self.plan, None  # one change per sub-branch forward
        if self.BEFORE:
            return (self.apply(module, args[0], *plan), *args[1:])
        return self.apply(module, output[0], *plan)

    def apply(self, module: nn.Module, tensor, *plan):
        raise NotImplementedError


def install(module: nn.Module, hook_class: type[OneShotHook]) -> OneShotHook:
    """The ``hook_class`` hook on ``module`` (a pre-hook where its ``BEFORE``), registered once (idempotent)."""
    hooks = module._forward_pre_hooks if hook_class.BEFORE else module._forward_hooks
    for hook in hooks.values():
        if isinstance(hook, hook_class):
            return hook
    hook = hook_class()
    (module.register_forward_pre_hook if hook_class.BEFORE else module.register_forward_hook)(hook)
    return hook


def run_armed(model: nn.Module, hook: OneShotHook, plan: tuple, images: torch.Tensor, model_kwargs: dict, where: str):
    """``model(images, **model_kwargs)`` with ``hook`` armed with ``plan`` for this forward. A forward that never
    reaches the hooked module (``where``, its name for the error) is an error: its logits would be the main
    branch's."""
    hook.plan = plan
    try:
        output = model(images, **model_kwargs)
        if hook.plan is not None:
            raise RuntimeError(f"{type(model).__name__}'s forward did not call its {where}")
    finally:
        hook.plan = None
    return output
