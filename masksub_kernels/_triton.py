"""Triton, when it is installed: ``triton``, ``tl`` and ``HAS_TRITON`` for the op files.

Triton ships with the CUDA builds of torch on Linux but not with CPU-only builds. The op files define their
kernels at import time, so without Triton this module supplies a stand-in ``tl`` whose attributes are only good
for what runs at import (annotations of kernel signatures, module-level ``tl.constexpr(...)`` constants), and a
``jit`` that leaves the function as plain Python. Such kernels are never launched: ``_backend`` reports the Triton
backend as unavailable and the ops run the PyTorch reference.
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

    class _StandIn:
        """Any attribute of the stand-in ``tl``: a type, so an annotation (``x: tl.constexpr``); called, it gives
        back its first argument, so a module-level ``tl.constexpr(1024)`` is 1024 and a decorator leaves the function
        as is."""

        def __new__(cls, value: Any = None, *args: Any, **kwargs: Any) -> Any:
            return value

    class _AnnotationOnly:
        """Stands in for ``triton.language`` so that the op files' import-time uses of ``tl`` evaluate without Triton
        (annotations, ``tl.constexpr(...)`` constants)."""

        def __getattr__(self, name: str) -> Any:
            return _StandIn

    tl = _AnnotationOnly()


def jit(fn=None, *, do_not_specialize: tuple[str, ...] = ()):
    """``triton.jit`` when Triton is present, else the undecorated function (never launched). ``do_not_specialize``:
    arguments whose values must not specialise the kernel: a per-call seed, since Triton compiles a variant of its
    own for an int equal to 1 or divisible by 16, so that the first such random seed of a run (one call in 16) would
    compile the kernel again, ~1 s, at a random training step."""
    if fn is None:  # @jit(do_not_specialize=...)
        return lambda f: jit(f, do_not_specialize=do_not_specialize)
    if not HAS_TRITON:
        return fn
    return triton.jit(fn, do_not_specialize=list(do_not_specialize)) if do_not_specialize else triton.jit(fn)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1): Triton block sizes must be powers of two."""
    return 1 << max(0, (int(n) - 1).bit_length())
