"""The GPU's fp32 transcendentals, division and bf16 rounding in the Triton interpreter: a stand-in's arithmetic.

The interpreter evaluates ``tl.exp``, ``tl.exp2`` and ``/`` with NumPy, correctly rounded (or nearly). Compiled for
sm_80 / sm_90 (PTX read from Triton 3.8's output; tools/compile_kernels.py compiles the same kernels), fp32 takes:

- ``tl.exp2(x)``: ``ex2.approx.ftz.f32`` (MUFU.EX2): within 2 ulp (CUDA C++ Programming Guide, the fast-math
  ``exp2f``), subnormal inputs and results flushed to zero;
- ``tl.exp(x)``: ``ex2.approx.f32(x * log2(e))``, the product rounded to fp32 first (CUDA's ``__expf``, within
  2 + floor(|1.173 x|) ulp): the product's rounding is an absolute error of up to |x| log2(e) 2^-24 in the
  exponent, a relative error that grows with |x| (x = -80: ~4e-6); subnormal results kept (no ``ftz``);
- ``a / b``: ``div.full.f32``: within 2 ulp (PTX ISA);
- ``tl.log`` / ``tl.log2``: libdevice's ``__nv_logf`` / ``__nv_log2f``, within 1 ulp: left as NumPy's;
- fp32 -> bf16 (``.to(tl.bfloat16)``, a store into bf16): rounded to nearest even (``cvt.rn.bf16.f32``), where the
  interpreter truncates (twice the error: the tests' bf16 tolerances are the interpreter's, not a GPU's).

``install()`` replaces the interpreter's exp / exp2 / fdiv / fp32 -> bf16 cast with these; exp, exp2 and fdiv give the
correctly rounded result moved by -1, 0 or +1 ulp, drawn from a hash of the operands' bits (up to 1.5 ulp off, inside
the 2 ulp bounds; the hardware's error tables are not public). Deterministic: the same operands give the same result,
as on the hardware. Exact where the hardware's approximations are exact at their knots (undocumented): 2^x at an
integer x, and a / b for b a power of two (the reciprocal's mantissa is 1, assumed). The first is borne out by the one
GPU run: with exp2(0) = 1 +- 1 ulp, the test file the H200 passed in full on 2026-11-30 (commit 50de68d's
tests/ops/test_masksub_loss.py, its kernels) fails 3 one-class tests here (log l = log 1 must be 0). Without the
second, sigmoid(1e4) = 1 / 1 = 1 - 1 ulp would cost BCE the ulp of 1e4. Not emulated: FMA contraction (the GPU fuses a
* b + c where the interpreter rounds the product) and reductions' order (``tl.sum`` over a tile's threads). fp64 and
lower-precision operands are left alone: the kernels compute in fp32.

Tests opt in with MASKSUB_GPU_MATH=1 (tests/conftest.py); `make test` runs the loss kernels' Triton tests so a
second time (Makefile).
"""

from __future__ import annotations

import numpy as np

LOG2E = np.float32(1.4426950408889634)
_MIN_NORMAL = np.float32(np.finfo(np.float32).tiny)  # 2^-126
_installed: dict[str, object] = {}


def _ulp_offsets(*operands: np.ndarray) -> np.ndarray:
    """-1, 0 or 1 per element, from a multiplicative hash of the operands' fp32 bits (Knuth's 2654435761)."""
    h = np.zeros(np.broadcast(*operands).shape, dtype=np.uint32)
    for i, operand in enumerate(operands):
        bits = np.ascontiguousarray(operand, dtype=np.float32).view(np.uint32)
        h = h ^ ((bits + np.uint32(0x9E3779B9 * (i + 1) & 0xFFFFFFFF)) * np.uint32(2654435761))
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(2246822519)
    return (h >> np.uint32(8)).astype(np.int64) % 3 - 1


def _off_by_ulps(value: np.ndarray, ulps: np.ndarray) -> np.ndarray:
    """``value`` moved by ``ulps`` units in its last place (finite non-zero values only: 0, inf, NaN stay)."""
    value = np.asarray(value, dtype=np.float32)
    bits = value.view(np.int32).astype(np.int64)
    moved = bits + ulps  # the magnitude sits in the low 31 bits: + is towards larger magnitude for either sign
    moved = np.clip(moved, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32).view(np.float32)
    keep = ~np.isfinite(value) | (value == 0) | ~np.isfinite(moved) | (np.sign(moved) != np.sign(value))
    return np.where(keep, value, moved)


def _flush(value: np.ndarray) -> np.ndarray:
    return np.where(np.abs(value) < _MIN_NORMAL, np.float32(0), value).astype(np.float32)


def ex2_approx(x: np.ndarray, ftz: bool) -> np.ndarray:
    """MUFU.EX2 of fp32 ``x``: 2^x within 2 ulp, exact at integers; with ``ftz`` subnormal inputs read as 0 and
    results flushed."""
    x = np.asarray(x, dtype=np.float32)
    if ftz:
        x = _flush(x)
    with np.errstate(over="ignore", under="ignore"):
        exact = np.exp2(x.astype(np.float64)).astype(np.float32)
    # an integer x: a power of two, exact (the unit splits x into integer and fraction; 2^0 of the fraction is 1)
    out = np.where(x == np.round(x), exact, _off_by_ulps(exact, _ulp_offsets(x)))
    return _flush(out) if ftz else out


def exp_approx(x: np.ndarray) -> np.ndarray:
    """Triton's fp32 ``tl.exp``: ``ex2.approx.f32(x * log2 e)``, the product rounded to fp32 first."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return ex2_approx(np.asarray(x, dtype=np.float32) * LOG2E, ftz=False)


def div_full(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``div.full.f32``: a / b within 2 ulp, exact where b is a power of two."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        exact = np.divide(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))
    # b a power of two: exact (the reciprocal's mantissa is 1, the one a table gives exactly; then one rounding)
    mantissa, _ = np.frexp(np.asarray(b, dtype=np.float32))
    return np.where(np.abs(mantissa) == 0.5, exact, _off_by_ulps(exact, _ulp_offsets(a, b)))


def bf16_round(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits (uint16), rounded to nearest even as a GPU's ``cvt.rn.bf16.f32``; NaN stays a (quiet) NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


def install() -> None:
    """Give the Triton interpreter the GPU's fp32 exp, exp2 and division (idempotent)."""
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if _installed:
        return
    _installed.update(
        exp=builder.create_exp, exp2=builder.create_exp2, fdiv=builder.create_fdiv, cast=builder.cast_impl
    )

    def fp32(handle) -> bool:
        return handle.data.dtype == np.float32

    def create_exp(self, arg):
        if not fp32(arg):
            return _installed["exp"](self, arg)
        return interpreter.TensorHandle(exp_approx(arg.data), arg.dtype.scalar)

    def create_exp2(self, arg):
        if not fp32(arg):
            return _installed["exp2"](self, arg)
        return interpreter.TensorHandle(ex2_approx(arg.data, ftz=True), arg.dtype.scalar)

    def create_fdiv(self, lhs, rhs):
        if not (fp32(lhs) and fp32(rhs)):
            return _installed["fdiv"](self, lhs, rhs)
        return interpreter.TensorHandle(div_full(lhs.data, rhs.data), lhs.dtype.scalar)

    def cast_impl(self, src, dst_type):  # fp32 -> bf16 (x.to(tl.bfloat16), tl.store into bf16): the interpreter
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:  # truncates
            return _installed["cast"](self, src, dst_type)
        return interpreter.TensorHandle(bf16_round(src.data), dst_type.scalar)

    builder.create_exp, builder.create_exp2, builder.create_fdiv = create_exp, create_exp2, create_fdiv
    builder.cast_impl = cast_impl


def uninstall() -> None:
    """The interpreter's own exp, exp2 and division again."""
    from triton.runtime import interpreter

    if _installed:
        builder = interpreter.InterpreterBuilder
        builder.create_exp, builder.create_exp2, builder.create_fdiv, builder.cast_impl = (
            _installed.pop("exp"), _installed.pop("exp2"), _installed.pop("fdiv"), _installed.pop("cast"),
        )  # fmt: skip
