"""A GPU's fp32 arithmetic in the Triton interpreter (exp, exp2, rsqrt, division, FMA contraction, bf16 rounding).

The interpreter evaluates each operation on its own with NumPy's fp32 functions (their own errors, with NumPy 2.4:
exp up to ~2.4 ulp, exp2 ~1 ulp; division correctly rounded). Compiled for sm_80 / sm_90 (PTX read from Triton 3.8's
output; tools/compile_kernels.py compiles the same kernels), fp32 takes:

- ``tl.exp2(x)``: ``ex2.approx.ftz.f32`` (MUFU.EX2): within 2 ulp (CUDA C++ Programming Guide, the fast-math
  ``exp2f``), subnormal inputs and results flushed to zero;
- ``tl.exp(x)``: ``ex2.approx.f32(x * log2(e))``, the product rounded to fp32 first (CUDA's ``__expf``, within
  2 + floor(|1.173 x|) ulp): the product's rounding is an absolute error of up to |x| log2(e) 2^-24 in the
  exponent, a relative error that grows with |x| (x = -80: ~4e-6); subnormal results kept (no ``ftz``);
- ``a / b``: ``div.full.f32``: within 2 ulp (PTX ISA), a times an approximate reciprocal of b: elements that share a
  divisor share its error (emulated so: one relative error per divisor);
- ``tl.math.rsqrt``: ``rsqrt.approx.ftz.f32`` (MUFU.RSQ);
- ``tl.log`` / ``tl.log2``: libdevice's ``__nv_logf`` / ``__nv_log2f``, within 1 ulp: left as NumPy's;
- fp32 -> bf16 (``.to(tl.bfloat16)``, a store into bf16): rounded to nearest even (``cvt.rn.bf16.f32``), where the
  interpreter truncates (twice the error: tests/conftest.py's grad_tolerance doubles bf16's for the plain
  interpreter);
- ``a * b + c``, ``a * b - c``, ``c - a * b``: one ``fma.rn.f32`` (LLVM contracts them, Triton's default
  ``enable_fp_fusion``; even a product that is also used elsewhere, its multiply then duplicated): the exact product
  plus c, rounded once, where the interpreter rounds the product first. Emulated: an fp32 add or subtract reading an
  array that an fp32 multiply produced (the left one if both) adds that product's exact value (kept in float64 while
  the array lives) instead. Not emulated: contractions inside ``tl.sum`` (each thread's partial sum of products is
  an fma chain on the GPU), products reshaped or broadcast before the add, and negated products (``-(a * b) + c``
  is an fma on the GPU). Where the emulation fuses and the GPU may not: across basic blocks (a loop-invariant
  product that LLVM hoists out of a loop is not fused with an add inside it), and in ``a * b + c * d`` when the
  left product has more uses (LLVM fuses the product with fewer uses; equal uses: the left one, as here). No
  kernel of the package has these patterns at present (a review checked, 2026-12-03).

``install()`` replaces the interpreter's exp / exp2 / fdiv / rsqrt / fmul / fadd / fsub / fp32 -> bf16 cast with
these; exp, exp2 and rsqrt give the correctly rounded result moved by -1, 0 or +1 ulp, drawn from a hash of the
operands' bits (up to 1.5 ulp off, inside the 2 ulp bounds; the hardware's error tables are not public), division the
quotient off by -1, 0 or +1 times 2^-24 (by a hash of the divisor), rounded once. Deterministic: the same operands
give the same result, as on the hardware. Exact where the hardware's approximations are exact at their knots
(undocumented): 2^x at an integer x, rsqrt at powers of 4, and a / b for b a power of two (the reciprocal's mantissa
is 1). Only exp2(0) = 1 is borne out, by the one GPU run; the others are assumed alike: with exp2(0) = 1 +- 1 ulp, the
test file the H200 passed in full on 2026-11-30 (commit 50de68d's tests/ops/test_masksub_loss.py, its kernels) fails 3
one-class tests here (log l = log 1 must be 0). Without the division's, sigmoid(1e4) = 1 / 1 = 1 - 1 ulp would cost
BCE the ulp of 1e4. Not emulated: reductions' order (``tl.sum`` over a tile's threads). fp64 and lower-precision
operands are left alone: the kernels compute in fp32.

Tests opt in with MASKSUB_GPU_MATH=1 (tests/conftest.py); `make test` runs the loss kernels' Triton tests so a
second time (Makefile).
"""

from __future__ import annotations

import weakref

import numpy as np

LOG2E = np.float32(1.4426950408889634)
_MIN_NORMAL = np.float32(np.finfo(np.float32).tiny)  # 2^-126
_installed: dict[str, object] = {}  # the interpreter's own methods, while ours replace them
_PATCHED = ("create_exp", "create_exp2", "create_fdiv", "create_rsqrt", "create_fmul", "create_fadd", "create_fsub",
            "cast_impl")  # fmt: skip


def _ulp_offsets(*operands: np.ndarray) -> np.ndarray:
    """-1, 0 or 1 per element, from a multiplicative hash of the operands' fp32 bits (Knuth's 2654435761)."""
    h = np.zeros(np.broadcast(*operands).shape, dtype=np.uint32)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as meant (0-d operands warn, arrays do not)
        for i, operand in enumerate(operands):
            bits = np.array(operand, dtype=np.float32).view(np.uint32)  # a copy: contiguous, 0-d kept 0-d
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
    # a subnormal becomes a zero of its sign (.ftz: rsqrt of -0 or of a negative subnormal is -inf)
    return np.where(np.abs(value) < _MIN_NORMAL, np.copysign(np.float32(0), value), value).astype(np.float32)


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
    """``div.full.f32``: a / b within 2 ulp, as a times an approximate reciprocal of b (range-scaled): the quotient
    rounded once after a relative error of -1, 0 or +1 times 2^-24 drawn from b alone, so that the elements sharing
    a divisor (a row's softmax sum, a sigmoid's 1 + e) share its error, as they share the hardware's reciprocal;
    exact where b is a power of two (the reciprocal's mantissa is 1, the one a table gives exactly)."""
    a64, b64 = np.asarray(a, dtype=np.float32).astype(np.float64), np.asarray(b, dtype=np.float32).astype(np.float64)
    mantissa, _ = np.frexp(b64)
    error = np.where(np.abs(mantissa) == 0.5, 0, _ulp_offsets(b)) * 2.0**-24
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        return (a64 / b64 * (1 + error)).astype(np.float32)


def rsqrt_approx(x: np.ndarray) -> np.ndarray:
    """``rsqrt.approx.ftz.f32`` (MUFU.RSQ): 1 / sqrt(x), the correctly rounded result moved by -1, 0 or +1 ulp: up to
    2^-22.4 relative, a little more than the PTX ISA's bound of 2^-22.9 (helper-200), so the tests that use it are
    the stricter; exact at powers of 4 (a knot, assumed as 2^x's), subnormal inputs read as a zero of their sign
    (-> +-inf)."""
    x = _flush(np.asarray(x, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = (1 / np.sqrt(x.astype(np.float64))).astype(np.float32)
    mantissa, exponent = np.frexp(x)
    knot = (np.abs(mantissa) == 0.5) & (exponent % 2 == 1)  # 0.5 x 2^(2k + 1) = 4^k
    return np.where(knot, exact, _off_by_ulps(exact, _ulp_offsets(x)))


def bf16_round(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits (uint16), rounded to nearest even as a GPU's ``cvt.rn.bf16.f32``; NaN stays a (quiet) NaN."""
    bits = np.array(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


class _Products:
    """The exact (float64) value of each live fp32 product array the interpreter made: what an add reading it
    contracts with (fp32 x fp32 is exact in float64: 48 significant bits). Keyed by the array's id, forgotten
    when the array is collected."""

    def __init__(self) -> None:
        self._exact: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    def remember(self, rounded: np.ndarray, exact: np.ndarray) -> None:
        key = id(rounded)
        self._exact[key] = (weakref.ref(rounded, lambda _, key=key: self._exact.pop(key, None)), exact)

    def exact(self, array: np.ndarray) -> np.ndarray | None:
        entry = self._exact.get(id(array))
        return entry[1] if entry is not None and entry[0]() is array else None


def fma_add(lhs: np.ndarray, rhs: np.ndarray, products: _Products, subtract: bool = False) -> np.ndarray | None:
    """lhs + rhs (lhs - rhs) as a GPU computes it when one operand is a product: fma, one rounding of the exact
    product plus the other operand (the left product if both are); None where neither is."""
    sign = -1.0 if subtract else 1.0
    exact = products.exact(lhs)
    if exact is not None:
        total = exact + sign * np.asarray(rhs, dtype=np.float64)
    elif (exact := products.exact(rhs)) is not None:
        total = np.asarray(lhs, dtype=np.float64) + sign * exact
    else:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        return total.astype(np.float32)  # two roundings (53 bits, then 24): a tie's rare ulp off a true fma


def install() -> None:
    """Give the Triton interpreter a GPU's fp32 exp, exp2, division, rsqrt, FMA contraction and bf16 rounding
    (idempotent)."""
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if _installed:
        return
    _installed.update({name: getattr(builder, name) for name in _PATCHED})
    products = _Products()

    def fp32(*handles) -> bool:
        return all(handle.data.dtype == np.float32 for handle in handles)

    def create_exp(self, arg):
        if not fp32(arg):
            return _installed["create_exp"](self, arg)
        return interpreter.TensorHandle(exp_approx(arg.data), arg.dtype.scalar)

    def create_exp2(self, arg):
        if not fp32(arg):
            return _installed["create_exp2"](self, arg)
        return interpreter.TensorHandle(ex2_approx(arg.data, ftz=True), arg.dtype.scalar)

    def create_fdiv(self, lhs, rhs):
        if not fp32(lhs, rhs):
            return _installed["create_fdiv"](self, lhs, rhs)
        return interpreter.TensorHandle(div_full(lhs.data, rhs.data), lhs.dtype.scalar)

    def create_rsqrt(self, arg):
        if not fp32(arg):
            return _installed["create_rsqrt"](self, arg)
        return interpreter.TensorHandle(rsqrt_approx(arg.data), arg.dtype.scalar)

    def create_fmul(self, lhs, rhs):
        out = _installed["create_fmul"](self, lhs, rhs)
        if fp32(lhs, rhs) and out.data.dtype == np.float32:
            with np.errstate(over="ignore", invalid="ignore"):  # inf * 0: NaN, as the rounded product
                products.remember(out.data, lhs.data.astype(np.float64) * rhs.data.astype(np.float64))
        return out

    def contracting(name: str, subtract: bool):
        def create(self, lhs, rhs):
            fused = fma_add(lhs.data, rhs.data, products, subtract) if fp32(lhs, rhs) else None
            if fused is None:
                return _installed[name](self, lhs, rhs)
            return interpreter.TensorHandle(fused, lhs.dtype.scalar)

        return create

    def cast_impl(self, src, dst_type):  # fp32 -> bf16 (x.to(tl.bfloat16), tl.store into bf16): the interpreter
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:  # truncates
            return _installed["cast_impl"](self, src, dst_type)
        return interpreter.TensorHandle(bf16_round(src.data), dst_type.scalar)

    replacements = {
        "create_exp": create_exp, "create_exp2": create_exp2, "create_fdiv": create_fdiv, "create_rsqrt": create_rsqrt,
        "create_fmul": create_fmul,
        "create_fadd": contracting("create_fadd", False), "create_fsub": contracting("create_fsub", True),
        "cast_impl": cast_impl,
    }  # fmt: skip
    for name in _PATCHED:
        setattr(builder, name, replacements[name])


def uninstall() -> None:
    """The interpreter's own arithmetic again."""
    from triton.runtime import interpreter

    for name in list(_installed):
        setattr(interpreter.InterpreterBuilder, name, _installed.pop(name))
