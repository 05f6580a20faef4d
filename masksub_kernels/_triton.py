"""Triton, when it is installed: ``triton``, ``tl`` and ``HAS_TRITON`` for the op files.

Triton ships with the CUDA builds of torch on Linux but not with CPU-only builds. The op files define their
kernels at import time, so without Triton this module supplies a stand-in ``tl`` whose attributes are only good
for the annotations of kernel signatures, and a ``jit`` that leaves the function as plain Python. Such kernels are
never launched: ``_backend`` reports the Triton backend as unavailable and the ops run the PyTorch reference.
"""

from __future__ import annotations

from typing import Any

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only torch builds, macOS, Windows
    HAS_TRITON = False
    triton = None

    class _AnnotationOnly:
        """Stands in for ``triton.language`` so that ``x: tl.constexpr`` evaluates without Triton."""

        def __getattr__(self, name: str) -> Any:
            return object

    tl = _AnnotationOnly()


def jit(fn):
    """``triton.jit`` when Triton is present, else the undecorated function (never launched)."""
    return triton.jit(fn) if HAS_TRITON else fn


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1): Triton block sizes must be powers of two."""
    return 1 << max(0, (int(n) - 1).bit_length())
