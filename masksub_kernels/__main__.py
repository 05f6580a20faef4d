"""`python -m masksub_kernels`: what this installation can run, and which backend each device's tensors get."""

from __future__ import annotations

import sys

import torch

from . import __version__, _backend


def describe() -> str:
    lines = [f"masksub_kernels {__version__} (torch {torch.__version__}, CUDA {torch.version.cuda})"]
    try:
        lines.append(f"requested backend: {_backend.get_backend()} (set_backend / MASKSUB_BACKEND)")
    except (RuntimeError, ValueError) as exc:
        lines.append(f"requested backend: {exc}")
        return "\n".join(lines)
    notes = {"cuda": " (the extension imports; it runs on CUDA tensors only)"}
    for name in ("triton", "cuda", "torch"):
        reason = _backend._missing(name)
        lines.append(f"  {name:7} {'available' + notes.get(name, '') if reason is None else 'unavailable: ' + reason}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        try:
            chosen = _backend.resolve_backend(device)
        except RuntimeError as exc:
            chosen = f"error: {exc}"
        lines.append(f"tensors on {device}: {chosen}")
    if not torch.cuda.is_available():
        lines.append("no CUDA device: the ops run their PyTorch reference (TRITON_INTERPRET=1 runs Triton on the CPU)")
        # a developer tool of the source tree, not of the installed package
        lines.append("CUDA emulator (csrc/ on the CPU, a test tool): python -m tools.cuda_emulator in a checkout")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
    sys.exit(0)
