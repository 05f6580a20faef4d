"""MaskSub's construction-time refusals of a transformers model that its image families cannot train.

- ``check_hf_config``: what the model's config says about its labels: ``problem_type`` (where set: None is not
  read) 'regression' (MaskSub has no regression loss) or 'multi_label_classification' with ``loss='ce'`` (softmax
  cross-entropy on multi-hot targets: ``loss='bce'``), ``num_labels=1`` with ``loss='ce'`` (softmax over one class is
  0 whatever the model), and ``return_dict=False`` (the model returns tuples, without ``.logits``).

The checks read the class and config only; a model in user code that subclasses a transformers model has its
config read, and its head is its own business (a class of its own may add one).
"""

from __future__ import annotations

from torch import nn

__all__ = ["check_hf_config", "transformers_config"]


def transformers_config(model: nn.Module):
    """The model's transformers config (a ``PretrainedConfig``), else None."""
    config = getattr(model, "config", None)
    from_transformers = any(cls.__module__.startswith("transformers.") for cls in type(config).__mro__)
    return config if config is not None and from_transformers else None


def check_hf_config(model: nn.Module, loss: str) -> None:
    """Refuse a transformers image model whose config says MaskSub's ``loss`` cannot train it (module docstring)."""
    config = transformers_config(model)
    if config is None:
        return
    name = type(model).__name__
    if getattr(config, "return_dict", True) is False:
        raise ValueError(
            f"{name}'s config has return_dict=False: its forward returns tuples, and MaskSub reads the .logits of its "
            "output; set model.config.return_dict = True"
        )
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        raise ValueError(
            f"{name}'s config has problem_type='regression': MaskSub has no regression loss (its criteria are "
            "cross-entropy, loss='ce', and binary cross-entropy, loss='bce', over class logits)"
        )
    if problem == "multi_label_classification" and loss == "ce":
        raise ValueError(
            f"{name}'s config has problem_type='multi_label_classification', and loss='ce' is a softmax over the "
            "classes (one label per image): use loss='bce' (a sigmoid per class) with multi-hot float targets [B, C]"
        )
    if getattr(config, "num_labels", None) == 1 and loss == "ce":
        raise ValueError(
            f"{name}'s config has num_labels=1, and loss='ce' over one class is 0 whatever the model: for one binary "
            "label use loss='bce' with float targets [B, 1] of 0. / 1. (a regression head: MaskSub has no regression "
            "loss)"
        )
