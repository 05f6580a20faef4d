"""Which implementation of an op runs: ``triton``, ``cuda`` (the csrc extension) or ``torch`` (the reference).

The choice is a process-wide setting (``set_backend`` / the ``MASKSUB_BACKEND`` environment variable, read on
first use) resolved per call from the device of the op's tensors:

- ``auto`` (default): CUDA tensors run the Triton kernels (the CUDA extension if Triton is missing, the PyTorch
  reference if neither is); CPU tensors run the PyTorch reference.
- ``triton``: the Triton kernels; CPU tensors are accepted only under ``TRITON_INTERPRET=1`` (how the tests run).
- ``cuda``: the compiled extension ``masksub_kernels._C``; CUDA tensors only (CPU tensors too once the CUDA
  emulator is installed: ``masksub_kernels.tools.cuda_emulator``, a test instrument that runs csrc/ on the CPU).
- ``torch``: the PyTorch reference everywhere.

Nothing here touches a GPU at import time: availability is probed lazily, when first asked.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Iterator

import torch

BACKEND_NAMES = ("auto", "triton", "cuda", "torch")
_CONCRETE = ("triton", "cuda", "torch")

_requested: str | None = None  # None until first use: then MASKSUB_BACKEND or "auto"
_last_used: dict[str, str] = {}
_cuda_emulator = None  # csrc/ compiled for the CPU (tools/cuda_emulator.py): the `cuda` backend on CPU tensors


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_missing() -> str | None:
    """Why the Triton backend cannot run here, or None when it can."""
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return f"the 'triton' package does not import ({exc})"
    if triton_interpreted() or torch.cuda.is_available():
        return None
    return "Triton needs a CUDA device, or TRITON_INTERPRET=1 to run its kernels on the CPU interpreter"


@functools.cache
def _cuda_missing() -> str | None:
    """Why the CUDA extension backend cannot run here, or None when it imports."""
    if _cuda_emulator is not None:
        return None
    try:
        importlib.import_module("masksub_kernels._C")
    except ImportError as exc:
        return (
            "the CUDA extension masksub_kernels._C is not built or does not import "
            f"({exc}); build it with `MASKSUB_BUILD_CUDA=1 pip install --no-build-isolation -e .` on a machine "
            "with a CUDA toolkit and a CUDA build of torch"
        )
    return None


def set_cuda_emulator(module) -> None:
    """Use ``module`` (masksub_kernels.tools.cuda_emulator.build()) as the ``cuda`` backend, for CPU tensors; None
    restores the compiled extension. A test instrument: ``auto`` never chooses it."""
    global _cuda_emulator
    _cuda_emulator = module
    _cuda_missing.cache_clear()


def cuda_module():
    """The module behind the ``cuda`` backend: the CUDA emulator when installed, else ``masksub_kernels._C``."""
    if _cuda_emulator is not None:
        return _cuda_emulator
    return importlib.import_module("masksub_kernels._C")


def _missing(name: str) -> str | None:
    return {"triton": _triton_missing, "cuda": _cuda_missing, "torch": lambda: None}[name]()


def available_backends() -> list[str]:
    """Concrete backends that can run in this process, e.g. ``['triton', 'torch']``."""
    return [name for name in _CONCRETE if _missing(name) is None]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKEND_NAMES)}")
    name = name.lower()
    if name != "auto":
        reason = _missing(name)
        if reason is not None:
            raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return name


def get_backend() -> str:
    """The requested backend name: ``auto``, ``triton``, ``cuda`` or ``torch``."""
    global _requested
    if _requested is None:
        _requested = _check_name(os.environ.get("MASKSUB_BACKEND", "auto"))
    return _requested


def set_backend(name: str) -> None:
    """Select the backend for every op in this process (``auto``, ``triton``, ``cuda`` or ``torch``).

    Raises ValueError for an unknown name and RuntimeError naming what is missing for one that cannot run here.
    """
    global _requested
    _requested = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed ops with backend ``name``, then restore the previous choice."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def resolve_backend(device: torch.device | str, op: str | None = None) -> str:
    """The concrete backend an op on tensors of ``device`` runs with under the current setting.

    When ``op`` is given the choice is recorded, so that ``last_backend(op)`` can say what ran.
    """
    device = torch.device(device)
    requested = get_backend()
    on_cuda = device.type == "cuda"
    if requested == "auto":
        chosen = "torch"
        if on_cuda:
            chosen = next((b for b in ("triton", "cuda") if _missing(b) is None), "torch")
    elif requested == "triton":
        if not on_cuda and not triton_interpreted():
            raise RuntimeError(
                f"backend 'triton' got tensors on {device}: the Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 set before importing masksub_kernels to run them on the CPU)"
            )
        chosen = "triton"
    elif requested == "cuda":
        if not on_cuda and not (_cuda_emulator is not None and device.type == "cpu"):
            raise RuntimeError(f"backend 'cuda' got tensors on {device}: the CUDA extension needs CUDA tensors")
        chosen = "cuda"
    else:
        chosen = "torch"
    if op is not None:
        _last_used[op] = chosen
    return chosen


def last_backend(op: str | None = None) -> str | dict[str, str] | None:
    """The backend the last call of ``op`` ran with (all ops as a dict when ``op`` is None)."""
    return dict(_last_used) if op is None else _last_used.get(op)
