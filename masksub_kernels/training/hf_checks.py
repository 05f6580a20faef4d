"""MaskSub's construction-time refusals of a transformers model that its image families cannot train.

- ``check_hf_head``: a transformers class without an image-classification head (``ViTModel``, ``Dinov2Backbone``,
  ``ViTForMaskedImageModeling``, a segmentation or detection model): its forward returns features or
  reconstructions, not logits, so the pixel-grid fallback would warn and then fail at the first step.
- ``check_hf_config``: what the model's config says about its labels: ``problem_type`` (where set: None is not
  read) 'regression' (MaskSub has no regression loss) or 'multi_label_classification' with ``loss='ce'`` (softmax
  cross-entropy on multi-hot targets: ``loss='bce'``), ``num_labels=1`` with ``loss='ce'`` (softmax over one class is
  0 whatever the model), and ``return_dict=False`` (the model returns tuples, without ``.logits``: also refused at
  each forward, by ``check_return_dict``, every family).

transformers' own loss writes ``problem_type`` on its first call with labels where it is None (float labels:
multi-label; num_labels=1: regression), so a model once run on mixup's probabilities says multi-label: the messages
say to reset it. The checks read the class and config only; a model in user code that subclasses a transformers
model has its config read, and its head is its own business (a class of its own may add one).
"""

from __future__ import annotations

from torch import nn

from .hf_hooks import is_transformers_classifier

__all__ = ["check_hf_config", "check_hf_head", "check_return_dict", "transformers_config"]


def transformers_config(model: nn.Module):
    """The model's transformers config (a ``PretrainedConfig``), else None."""
    config = getattr(model, "config", None)
    from_transformers = any(cls.__module__.startswith("transformers.") for cls in type(config).__mro__)
    return config if config is not None and from_transformers else None


def _classifier_name(config) -> str:
    """Where transformers has one, the image classifier of the config's model type, in words."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as names
    except ImportError:  # (a transformers that moved it: the advice without the class name)
        names = {}
    model_type = getattr(config, "model_type", None)
    found = names.get(model_type)
    if found is None and isinstance(model_type, str):  # CLIPVisionModel's 'clip_vision_model': CLIP's classifier
        found = names.get(model_type.removesuffix("_vision_model"))
    if found is None:
        return "an image classifier (a *ForImageClassification class), or a head of its own in a subclass"
    found = (found,) if isinstance(found, str) else tuple(found)
    return " or ".join(found) + " (from_pretrained(..., num_labels=C))"


def check_hf_head(model: nn.Module) -> None:
    """Refuse a model whose own class is a transformers one without an image-classification head (a text model,
    which takes input_ids, is families._auto_family's to refuse)."""
    cls = type(model)
    if not cls.__module__.startswith("transformers.") or is_transformers_classifier(model):
        return
    if getattr(model, "main_input_name", None) == "input_ids":
        return
    config = transformers_config(model)
    if "For" in cls.__name__ and cls.__name__.endswith("Classification"):  # VideoMAE's, an audio model's: logits
        raise ValueError(
            f"MaskSub: {cls.__name__} is a transformers classifier of other inputs than images (video, audio): "
            "MaskSub's image families take images [B, C, H, W] and a model that classifies them"
        )
    raise ValueError(
        f"MaskSub: {cls.__name__} is a transformers model without an image-classification head (its forward returns "
        "features or reconstructions, not the logits [B, C] MaskSub's losses need); use "
        f"{_classifier_name(config)}"
    )


_SET_BY_TRANSFORMERS = (
    "transformers' own loss sets problem_type at its first call with labels where it was None (num_labels=1: "
    "'regression'; float labels, e.g. mixup's probabilities: 'multi_label_classification'): where that guess is "
    "wrong, set model.config.problem_type = None"
)


def check_return_dict(model: nn.Module) -> None:
    """Refuse a transformers model whose config has ``return_dict=False``: its forward returns tuples, and MaskSub
    reads the named outputs (the image families' ``.logits``, the mlm family's hidden states). Checked when MaskSub is
    built and at each of its forwards and sub_logits calls (a flag set afterwards, or another config put in place,
    fails inside transformers with an AttributeError on a tuple): attribute reads, no sync."""
    config = transformers_config(model)
    if config is not None and getattr(config, "return_dict", True) is False:
        raise ValueError(
            f"{type(model).__name__}'s config has return_dict=False: its forward returns tuples, and MaskSub reads "
            "the named outputs of its forward (.logits; the mlm family's hidden states); set "
            "model.config.return_dict = True"
        )


def check_hf_config(model: nn.Module, loss: str) -> None:
    """Refuse a transformers image model whose config says MaskSub's ``loss`` cannot train it (module docstring)."""
    config = transformers_config(model)
    if config is None:
        return
    name = type(model).__name__
    check_return_dict(model)
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        raise ValueError(
            f"{name}'s config has problem_type='regression': MaskSub has no regression loss (its criteria are "
            "cross-entropy, loss='ce', and binary cross-entropy, loss='bce', over class logits); "
            f"{_SET_BY_TRANSFORMERS}"
        )
    if problem == "multi_label_classification" and loss == "ce":
        raise ValueError(
            f"{name}'s config has problem_type='multi_label_classification', and loss='ce' is a softmax over the "
            "classes (one label per image): use loss='bce' (a sigmoid per class) with multi-hot float targets [B, C]; "
            f"{_SET_BY_TRANSFORMERS}"
        )
    if getattr(config, "num_labels", None) == 1 and loss == "ce":
        raise ValueError(
            f"{name}'s config has num_labels=1, and loss='ce' over one class is 0 whatever the model: for one binary "
            "label use loss='bce' with float targets [B, 1] of 0. / 1. (a regression head: MaskSub has no regression "
            "loss)"
        )
