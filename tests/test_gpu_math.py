"""tools/gpu_math.py: the GPU's fp32 exp, exp2 and division for the Triton interpreter, within the hardware's bounds
and off the correctly rounded results (an emulation that changed nothing would let every tolerance pass)."""

import gc

import numpy as np
import pytest
import torch

from masksub_kernels._backend import triton_interpreted
from tools import gpu_math

F32 = np.float32


def ulps(actual: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|actual - exact| in units of fp32's last place at ``exact`` (float64 ``exact``)."""
    spacing = np.spacing(np.abs(exact).astype(F32)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def test_ex2_within_two_ulp_off_the_rounded_result_exact_at_integers():
    x = np.linspace(-125, 127, 400_001, dtype=F32)
    exact = np.exp2(x.astype(np.float64))
    got = gpu_math.ex2_approx(x, ftz=True)
    error = ulps(got, exact)
    assert error.max() <= 2.0
    assert (got != exact.astype(F32)).mean() > 0.5  # two in three moved off the correctly rounded result
    integers = np.arange(-125, 128, dtype=F32)  # (NumPy's fp32 exp2 gives 2^127 + 1 ulp: ldexp is exact)
    assert np.array_equal(gpu_math.ex2_approx(integers, ftz=True), np.ldexp(F32(1), integers.astype(np.int32)))


def test_ex2_flushes_subnormals_with_ftz_only():
    assert gpu_math.ex2_approx(np.array([-130.5, -149.0], dtype=F32), ftz=True).tolist() == [0.0, 0.0]
    kept = gpu_math.ex2_approx(np.array([-130.5], dtype=F32), ftz=False)
    assert 0 < kept[0] < np.finfo(F32).tiny
    assert gpu_math.ex2_approx(np.array([1e-40, -np.inf, np.inf, np.nan], dtype=F32), ftz=True)[:3].tolist() == [
        1.0, 0.0, np.inf,
    ]  # fmt: skip


def test_exp_rounds_the_scaled_argument_first():
    # CUDA's __expf bound: 2 + floor(|1.173 x|) ulp, large |x| erring by far more than the ex2 alone (the
    # emulation's ulp on top of a worst-case rounding of the product can pass the bound by less than an ulp)
    x = np.linspace(-87, 88, 200_001, dtype=F32)
    error = ulps(gpu_math.exp_approx(x), np.exp(x.astype(np.float64)))
    assert (error <= 3 + np.floor(np.abs(1.173 * x.astype(np.float64)))).all()
    assert error[np.abs(x) > 80].max() > 20


def test_division_within_two_ulp_exact_by_powers_of_two_one_error_per_divisor():
    gen = np.random.default_rng(0)
    a, b = (gen.standard_normal(100_000).astype(F32) for _ in "ab")
    got = gpu_math.div_full(a, b)
    exact = a.astype(np.float64) / b.astype(np.float64)
    assert ulps(got, exact).max() <= 2.0 and (got != a / b).mean() > 0.4
    shared = gpu_math.div_full(a[:1000], np.full(1000, b[0]))  # one divisor: one relative error, up to rounding
    ratio = shared.astype(np.float64) / (a[:1000].astype(np.float64) / np.float64(b[0]))
    assert np.ptp(ratio) <= 2**-23
    assert gpu_math.div_full(F32(3.0), F32(7.0)).shape == ()  # 0-d stays 0-d
    powers = np.array([1.0, 0.5, -4.0, 2.0**-20], dtype=F32)
    assert np.array_equal(gpu_math.div_full(a[:4], powers), a[:4] / powers)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert gpu_math.div_full(np.array([1, 0, np.inf], dtype=F32), np.array([0, 0, 3], dtype=F32))[[0, 2]].tolist() \
            == [np.inf, np.inf]  # fmt: skip


def test_rsqrt_within_two_ulp_exact_at_powers_of_four_flushing_subnormals():
    x = np.geomspace(1e-30, 1e30, 100_001, dtype=F32)
    got = gpu_math.rsqrt_approx(x)
    exact = 1 / np.sqrt(x.astype(np.float64))
    assert ulps(got, exact).max() <= 2.0 and (got != exact.astype(F32)).mean() > 0.5
    powers = np.array([1.0, 4.0, 0.25, 2.0**-40], dtype=F32)
    assert np.array_equal(gpu_math.rsqrt_approx(powers), (1 / np.sqrt(powers.astype(np.float64))).astype(F32))
    assert gpu_math.rsqrt_approx(np.array([1e-40, 0.0], dtype=F32)).tolist() == [np.inf, np.inf]


def test_offsets_cover_minus_one_to_one_evenly():
    counts = np.bincount(gpu_math._ulp_offsets(np.arange(30_000, dtype=F32)) + 1, minlength=3)
    assert counts.min() > 9_000


@pytest.mark.skipif(not triton_interpreted(), reason="the emulation patches the Triton interpreter")
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the interpreter's fp64 cast
def test_install_gives_the_interpreter_these_results_and_uninstall_restores():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        x = tl.load(x_ptr + offs)
        tl.store(out_ptr + offs, tl.exp2(x))
        tl.store(out_ptr + N + offs, tl.exp(x))
        tl.store(out_ptr + 2 * N + offs, x / 3.0)
        tl.store(out_ptr + 3 * N + offs, x.to(tl.bfloat16).to(tl.float32))
        tl.store(out_ptr + 4 * N + offs, tl.math.rsqrt(tl.abs(x)))

    # -130: exp2 flushes its subnormal result, -100: exp keeps it (no ftz)
    x = torch.cat([torch.linspace(-20, 20, 62), torch.tensor([-130.0, -100.0])])
    x_np = x.numpy()

    def run(dtype=torch.float32):
        out = torch.empty(5 * 64, dtype=dtype)
        kernel[(1,)](x.to(dtype), out, N=64)
        return out.view(5, 64).numpy()

    was_installed = bool(gpu_math._installed)
    gpu_math.uninstall()
    try:
        plain, plain64 = run(), run(torch.float64)
        gpu_math.install()
        emulated, emulated64 = run(), run(torch.float64)
        gpu_math.uninstall()
        restored = run()
    finally:
        if was_installed:
            gpu_math.install()
    assert np.array_equal(emulated[0], gpu_math.ex2_approx(x_np, ftz=True)) and emulated[0, -2] == 0
    assert np.array_equal(emulated[1], gpu_math.exp_approx(x_np)) and 0 < emulated[1, -1] < np.finfo(F32).tiny
    assert np.array_equal(emulated[2], gpu_math.div_full(x_np, np.full_like(x_np, 3.0)))
    assert np.array_equal(emulated[3], x.to(torch.bfloat16).float().numpy())
    assert np.array_equal(emulated[4], gpu_math.rsqrt_approx(np.abs(x_np)))
    assert all((emulated[i] != plain[i]).any() for i in range(5))
    assert np.array_equal(restored, plain, equal_nan=True)  # uninstall restores every method
    assert np.array_equal(emulated64, plain64, equal_nan=True)  # fp64 is left alone


def test_bf16_rounds_to_nearest_even_as_torch_does():
    gen = np.random.default_rng(1)
    x = np.concatenate([
        gen.standard_normal(50_000).astype(F32) * 100,
        np.array([0.0, -0.0, np.inf, -np.inf, 3.3895314e38, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8], dtype=F32),
    ])  # fmt: skip
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(gpu_math.bf16_round(x), expected)
    truncated = (x.view(np.uint32) >> 16).astype(np.uint16)
    assert (expected != truncated).mean() > 0.4  # the interpreter's own conversion
    nan = gpu_math.bf16_round(np.array([np.nan], dtype=F32))
    assert np.isnan(torch.from_numpy(nan.view(np.int16)).view(torch.bfloat16).float().numpy()).all()


@pytest.mark.skipif(not triton_interpreted(), reason="the emulation patches the Triton interpreter")
def test_adds_of_products_contract_to_one_rounding_as_the_gpu_compiles_them():
    # a * b - c and c - a * b compile to fma.rn.f32 for sm_90 (LLVM contracts even a product used twice); with
    # a = b = 1 + 2^-12 the product's rounding drops 2^-24, which the fma keeps
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(a_ptr, c_ptr, out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        a, c = tl.load(a_ptr + offs), tl.load(c_ptr + offs)
        p = a * a
        tl.store(out_ptr + offs, p - c)
        tl.store(out_ptr + N + offs, c - a * a)
        tl.store(out_ptr + 2 * N + offs, p + 0.0)

    a = torch.full((4,), 1 + 2**-12)
    c = torch.ones(4)
    was_installed = bool(gpu_math._installed)
    gpu_math.install()
    try:
        out = torch.empty(12)
        kernel[(1,)](a, c, out, N=4)
    finally:
        if not was_installed:
            gpu_math.uninstall()
    exact = 2**-11 + 2**-24
    assert out[:4].tolist() == [exact] * 4 and out[4:8].tolist() == [-exact] * 4
    assert out[8:].tolist() == [1 + 2**-11] * 4  # the product itself, rounded (its add of 0 changes nothing)
    plain = (a * a - c).tolist()
    assert plain == [2**-11] * 4  # what the interpreter (and a CPU) computes: two roundings


# kills G07 (`np.abs(value) < _MIN_NORMAL` -> `<=` in _flush: the least normal number flushed as a subnormal)
def test_ftz_flushes_subnormals_not_the_least_normal_number():
    # 2^-126 is fp32's least normal number: ex2.approx.ftz's result at -126 and rsqrt.approx.ftz's input there are
    # kept (both exact: an integer exponent, a power of 4)
    tiny = np.finfo(F32).tiny
    assert gpu_math.ex2_approx(np.array([-126.0], dtype=F32), ftz=True).tolist() == [tiny]
    assert gpu_math.rsqrt_approx(np.array([tiny], dtype=F32)).tolist() == [2.0**63]


# kills G22 (the NaN's `| 0x40` dropped) and G23 (no NaN case: NaNs rounded as numbers)
def test_bf16_keeps_a_nan_whose_payload_is_in_the_low_bits_a_nan():
    # rounding (or truncating) such a NaN's bits leaves exponent 0xFF and a zero mantissa: inf
    bits = np.array([0x7F800001, 0xFF800001, 0x7F807FFF, 0x7FC00000], dtype=np.uint32)
    rounded = gpu_math.bf16_round(bits.view(F32))
    assert torch.isnan(torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16).float()).all()


# kills G24 (the weakref's callback dropped: every product's float64 copy kept for the whole run)
def test_products_are_forgotten_with_their_arrays():
    # the interpreter makes an array per fp32 multiply; the exact products must go with them, or `make test`'s
    # gpu_math pass holds a float64 copy of every product it ever made
    products = gpu_math._Products()
    product = np.full(4, 1.5, dtype=F32)
    products.remember(product, product.astype(np.float64))
    assert products.exact(product) is not None and products.exact(product.copy()) is None  # by identity
    del product
    gc.collect()
    assert products._exact == {}


# kills G36 (install not idempotent: a second install takes the emulation for the interpreter's own methods, and
# uninstall then leaves it in place)
@pytest.mark.skipif(not triton_interpreted(), reason="the emulation patches the Triton interpreter")
def test_install_twice_then_uninstall_restores_the_interpreters_methods():
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    was_installed = bool(gpu_math._installed)
    gpu_math.uninstall()
    own = {name: getattr(builder, name) for name in gpu_math._PATCHED}
    try:
        gpu_math.install()
        gpu_math.install()
        assert all(getattr(builder, name) is not own[name] for name in gpu_math._PATCHED)
        gpu_math.uninstall()
        assert all(getattr(builder, name) is own[name] for name in gpu_math._PATCHED)
    finally:
        if was_installed:
            gpu_math.install()


# kills G32 (fp32 -> fp16 casts taken for bf16 ones: bf16 bits stored as fp16)
@pytest.mark.skipif(not triton_interpreted(), reason="the emulation patches the Triton interpreter")
def test_install_leaves_casts_to_fp16_to_the_interpreter():
    # cvt.rn.f16.f32 rounds to nearest even, as NumPy's astype does: only fp32 -> bf16 (truncated by the
    # interpreter) is replaced
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(out_ptr + offs, tl.load(x_ptr + offs).to(tl.float16).to(tl.float32))

    x = torch.linspace(-300, 300, 64) + 1 / 3
    out = torch.empty(64)
    was_installed = bool(gpu_math._installed)
    gpu_math.install()
    try:
        kernel[(1,)](x, out, N=64)
    finally:
        if not was_installed:
            gpu_math.uninstall()
    assert torch.equal(out, x.half().float())


def test_rsqrt_of_a_negative_zero_or_subnormal_is_minus_infinity():
    # helper-200: _flush made every subnormal +0, so rsqrt(-0) and rsqrt(-1e-40) gave +inf; the PTX ISA's rsqrt
    # gives -inf at -0, and .ftz flushes to a zero of the input's sign
    out = gpu_math.rsqrt_approx(np.array([-0.0, -1e-40, 0.0, 1e-40], dtype=F32))
    assert out.tolist() == [-np.inf, -np.inf, np.inf, np.inf]
