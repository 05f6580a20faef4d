"""``--initial-checkpoint FILE``: start from pretrained weights in a local file (fine-tuning recipes).

Formats, recognised from the file's keys:

- ``masksub``: a ``masksub-train`` checkpoint (``last.pth``; e.g. DeiT-III fine-tuning from its pre-training run):
  the trained module's state, MaskSub's ``model.`` prefix removed, its ``mask_token`` dropped.
- ``mae``: an MAE checkpoint (facebookresearch/mae: ``{'model': ...}``): the decoder (``decoder_*``) and the
  pre-training ``mask_token`` are dropped; the encoder is timm's layout already.
- ``clip``: OpenAI CLIP (``visual.class_embedding``, ``visual.transformer.resblocks...``; OpenAI's TorchScript ``.pt``
  archives are read with ``torch.jit.load``) and OpenCLIP (the same layout, or a timm trunk under ``visual.trunk.``):
  the text tower is dropped and the vision tower renamed by timm's converter.
- ``timm``: anything else (a timm / torchvision state dict, ``{'state_dict': ...}``, ``{'model': ...}``).

Every format then goes through the model's own timm ``checkpoint_filter_fn`` (where its module has one: ViT, Swin,
...), which converts OpenAI / OpenCLIP keys, resamples position embeddings and patch embeddings to the model's grid
(e.g. DeiT-III's 192 px pre-training to 224 px fine-tuning) and the like. ``.safetensors`` files are read by timm.

What may differ between the file and the model, and nothing else (a ``UsageError`` lists the rest):

- the classifier (``head`` / ``fc``, from the model's ``pretrained_cfg['classifier']``): missing from the file or of
  another shape (another number of classes, CLIP's projection) -> kept at the model's initialisation, scaled by
  ``head_init_scale`` (MAE: trunc-normal std 2e-5 = timm's 0.02 x 0.001; FT-CLIP: 0.001);
- ``fc_norm``: missing when fine-tuning with average pooling (MAE) -> the model's LayerNorm initialisation;
- the final ``norm``: in the file but not in a model that pools with ``fc_norm`` -> ignored, as MAE does;
- with ``fresh_norm`` (``--fc-norm per-token``: FT-CLIP's head, a new LayerNorm on each patch token before the mean,
  which is timm's final ``norm`` slot): the file's final norm (CLIP's ``ln_post``) is not loaded, the model's stays
  at its LayerNorm initialisation, as FT-CLIP's ``fc_norm`` does -- unless the file is a ``masksub-train``
  checkpoint of a run with ``--fc-norm per-token`` (or ``--model-kwargs fc_norm=False`` and an averaging pool),
  whose ``norm`` is that head's, trained. Other files cannot say which their ``norm`` is: to load a trained
  per-token norm from one (an exported EMA), build the model with ``--model-kwargs fc_norm=False`` instead.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field

import torch
from torch import nn

from .run_setup import UsageError

__all__ = ["DOWNLOAD", "LoadReport", "detect_format", "load_initial_checkpoint", "read_state_dict"]

# What to do about weights that would have to be downloaded (a URL, a Hub name, timm's pretrained=True)
DOWNLOAD = (
    "masksub-train does not download weights: fetch the file where there is a network (a URL with curl or wget, a "
    "Hub model with `huggingface-cli download timm/NAME model.safetensors`), then pass its local path as "
    "--initial-checkpoint FILE"
)


@dataclass
class LoadReport:
    """What ``load_initial_checkpoint`` did."""

    format: str
    loaded: int  # tensors copied into the model
    reinitialised: list[str] = field(default_factory=list)  # classifier / fc_norm kept at initialisation
    ignored: list[str] = field(default_factory=list)  # file keys not used (decoder, text tower, final norm, ...)
    notes: list[str] = field(default_factory=list)  # what the user asked for that did nothing

    def summary(self, path: str) -> str:
        """One line; the file's tensors set aside for one the model keeps (a classifier of another shape, CLIP's
        ln_post / proj under timm's names) are named beside the model's, not listed as both initialised and unused."""
        parts = [f"loaded {self.loaded} tensors from {path!r} ({self.format} format)"]
        replaced = [key for key in self.ignored if key.split(" ")[0] in self.reinitialised]
        others = [key for key in self.ignored if key not in replaced]
        if self.reinitialised:
            clip = self.format == "clip"
            sources = [name for prefix, name in (("norm.", "ln_post"), ("head.", "proj")) if _starts(replaced, prefix)]
            origin = f" (CLIP's {' and '.join(sources)}, under timm's names)" if clip and sources else ""
            instead = f" instead of the file's {', '.join(replaced)}{origin}" if replaced else ""
            parts.append(f"initialised here: {', '.join(self.reinitialised)}{instead}")
        if others:
            more = f" and {len(others) - 6} more" if len(others) > 6 else ""
            parts.append(f"not used: {', '.join(others[:6])}{more}")
        return "; ".join(parts + self.notes)


def _starts(keys: list[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def read_state_dict(path: str) -> dict:
    """The raw object in ``path`` (a dict): torch.load, timm's safetensors reader, or a TorchScript archive's
    state dict (OpenAI CLIP's .pt files)."""
    if not os.path.isfile(path):
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://|hf[-_]hub:", path) and not os.path.exists(path):
            what = "a Hugging Face Hub name" if path.startswith(("hf-hub:", "hf_hub:")) else "a URL"
            raise UsageError(f"initial checkpoint {path!r} is {what}: {DOWNLOAD}")
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"initial checkpoint {path!r} {what}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise UsageError(f"reading {path!r} needs the safetensors package: {exc}") from exc
        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise UsageError(f"cannot read initial checkpoint {path!r}: {exc}") from exc
    try:
        if _is_torchscript(path):  # OpenAI's CLIP releases: read as torch.load would, without its two warnings
            with warnings.catch_warnings():  # (torch.load's "dispatching to torch.jit.load" is not raised here)
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
                obj = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UsageError(f"cannot read initial checkpoint {path!r}: {exc}") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise UsageError(f"initial checkpoint {path!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive: torch.load's own test, a zip with a ``constants.pkl`` record."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.partition("/")[2] == "constants.pkl" for name in archive.namelist())


def _tensors(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def detect_format(obj: dict) -> tuple[str, dict]:
    """(format name, the state dict to map) for a loaded checkpoint object."""
    if "module" in obj and "num_updates" in obj and isinstance(obj["module"], dict):
        state = obj["module"]
        if any(k.startswith("model.") for k in state):
            state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        state = {k.replace("_orig_mod.", "", 1) if k.startswith("_orig_mod.") else k: v for k, v in state.items()}
        return "masksub", _tensors(state)
    for key in ("state_dict", "model", "module"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = _tensors(obj)
    if any(k.startswith("module.") for k in state) and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if "visual.class_embedding" in state or any(k.startswith("visual.trunk.") for k in state):
        return "clip", state
    if any(k.startswith("decoder_") for k in state) or ("mask_token" in state and "blocks.0.norm1.weight" in state):
        return "mae", {k: v for k, v in state.items() if not k.startswith("decoder_") and k != "mask_token"}
    return "timm", state


def _filter_fn(model: nn.Module):
    """The timm ``checkpoint_filter_fn`` of the model's module, if it has one."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


AVERAGING = ("avg", "avgmax", "max")  # timm ViT pools over the patch tokens, where --fc-norm places the norm


def _trained_per_token(obj: dict) -> bool:
    """Whether ``obj`` is a masksub-train checkpoint of a run whose head normalised each token (--fc-norm
    per-token): its ``norm`` is then that head's LayerNorm, not a pre-training's final norm."""
    args = obj.get("args") if "module" in obj and "num_updates" in obj else None
    if not isinstance(args, dict):
        return False
    kwargs = args.get("model_kwargs")  # the same model built as --model-kwargs fc_norm=False with an averaging pool
    by_kwargs = isinstance(kwargs, dict) and kwargs.get("fc_norm") is False and args.get("global_pool") in AVERAGING
    return args.get("fc_norm") == "per-token" or by_kwargs


def load_initial_checkpoint(
    model: nn.Module, path: str, head_init_scale: float | None = None, fresh_norm: bool = False
) -> LoadReport:
    """Copy the weights in ``path`` into ``model`` (see the module docstring); UsageError when they do not fit.
    ``fresh_norm``: the model's final ``norm`` is a new head norm (--fc-norm per-token), not loaded from the file."""
    obj = read_state_dict(path)
    fmt, state = detect_format(obj)
    fresh_norm = fresh_norm and not (fmt == "masksub" and _trained_per_token(obj))
    ignored: list[str] = []
    if fmt == "clip":  # OpenAI's layout or OpenCLIP's timm trunk (visual.trunk.*; its text tower listed as ignored)
        ignored = sorted(k for k in state if not k.startswith("visual."))  # the text tower and logit scale
    filter_fn = _filter_fn(model)
    if filter_fn is not None:
        # the sources resample a position embedding by F.interpolate(bicubic, align_corners=False) without
        # antialiasing (DeiT's main.py, MAE's util/pos_embed.py); timm's filters antialias by default, another cubic
        # (a = -0.5, not -0.75): 8% apart on a 12 -> 14 grid
        plain = "antialias" in inspect.signature(filter_fn).parameters
        try:
            state = filter_fn(state, model, antialias=False) if plain else filter_fn(state, model)
        except Exception as exc:
            raise UsageError(
                f"initial checkpoint {path!r} ({fmt} format) cannot be mapped onto {type(model).__name__}: "
                f"{str(exc).rstrip('.')}. Check --model, --model-kwargs, --global-pool and --fc-norm against the "
                "checkpoint"
            ) from exc
    own = model.state_dict()
    heads = _classifier_prefixes(model)
    uses_fc_norm = not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity)
    load, reinit = {}, []
    mismatched = []
    for key, value in state.items():
        if fmt == "clip" and key.startswith(heads):
            ignored.append(key)  # CLIP's image-text projection, not a classifier
            continue
        if fresh_norm and key.startswith("norm.") and key in own:
            ignored.append(key)  # the pre-training's final norm: FT-CLIP's per-token head norm starts fresh
            continue
        if key not in own:
            if uses_fc_norm and key.startswith("norm.") and isinstance(getattr(model, "norm", None), nn.Identity):
                ignored.append(key)  # MAE pools with fc_norm and drops the final norm
            else:
                mismatched.append(f"unexpected {key}")
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            if key.startswith(heads):
                ignored.append(f"{key} {tuple(value.shape)}")
                continue
            mismatched.append(f"{key} is {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the model")
            continue
        load[key] = value
    for key in own:
        if key in load:
            continue
        if key.startswith(heads) or key.startswith("fc_norm.") or (fresh_norm and key.startswith("norm.")):
            reinit.append(key)
        elif key not in state:
            mismatched.append(f"missing {key}")
    if mismatched:
        shown = "; ".join(mismatched[:8]) + (f"; and {len(mismatched) - 8} more" if len(mismatched) > 8 else "")
        raise UsageError(
            f"initial checkpoint {path!r} ({fmt} format) does not fit the model {type(model).__name__}: {shown}. "
            "Check --model, --model-kwargs, --global-pool and --fc-norm against the checkpoint"
        )
    model.load_state_dict(load, strict=False)
    notes = []
    if head_init_scale is not None:
        scaled = [name for name, _ in model.named_parameters() if name in reinit and name.startswith(heads)]
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in scaled:
                    param.mul_(head_init_scale)
        if not scaled:  # the file's classifier fits the model and was loaded: there was nothing to scale
            notes.append(f"--head-init-scale {head_init_scale} scaled nothing (the file's classifier was loaded)")
    return LoadReport(format=fmt, loaded=len(load), reinitialised=reinit, ignored=ignored, notes=notes)
