"""`python -m masksub_kernels`: what this installation can run, and which backend each device's tensors get.

Exits with status 2 (and the reason on stderr) when the requested backend (MASKSUB_BACKEND) is unknown or cannot
run here, as any op would fail then. It takes no arguments but --help.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import __version__, _backend


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _backend_line(name: str) -> str:
    reason = _backend._missing(name)
    if reason is not None:
        return f"  {name:7} unavailable: {reason}"
    serves = [device for device in _devices() if _backend._serves(name, device)]
    if name == "triton" and _backend.triton_interpreted():
        serves = [f"{d} (the CPU interpreter, TRITON_INTERPRET=1)" if d == "cpu" else d for d in serves]
    return f"  {name:7} available for tensors on: {', '.join(serves)}"


def _torch_build() -> str:
    """Which accelerator torch was built for: 'CUDA 12.8', 'ROCm 6.4' (HIP), or 'a CPU-only build'."""
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    hip = getattr(torch.version, "hip", None)
    return f"ROCm {hip}" if hip else "a CPU-only build"


def describe() -> str:
    """The report; raises ValueError or RuntimeError when the requested backend is unknown or cannot run."""
    requested = _backend.get_backend()
    lines = [
        f"masksub_kernels {__version__} (torch {torch.__version__}, {_torch_build()})",
        f"requested backend: {requested} (set_backend / MASKSUB_BACKEND)",
        *(_backend_line(name) for name in ("triton", "cuda", "torch")),
    ]
    for device in _devices():
        try:
            lines.append(f"tensors on {device} run: {_backend.resolve_backend(device)}")
        except RuntimeError as exc:
            lines.append(f"tensors on {device}: error: {exc}")
    if not torch.cuda.is_available():
        lines.append(
            "no CUDA device here: under `auto` every op runs the torch backend (PyTorch code), not the kernels"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m masksub_kernels",
        description="Print what this installation of masksub_kernels can run: each backend (triton, cuda, torch), "
        "whether it is available and for which devices' tensors, and which backend CPU and CUDA tensors get under "
        "the requested one (set_backend, or the MASKSUB_BACKEND environment variable; default auto).",
        epilog="Exit status: 0, or 2 when the requested backend is unknown or cannot run here.",
        allow_abbrev=False,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    # any argument but --help is refused, before the help (argparse would print it for `foo --help` and exit 0)
    stray = [arg for arg in argv if arg not in ("-h", "--help")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    parser.parse_args(argv)  # --help
    try:
        print(describe())
    except (ValueError, RuntimeError) as exc:
        print(f"python -m masksub_kernels: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
