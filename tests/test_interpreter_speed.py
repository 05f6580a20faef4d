"""tools/interpreter_speed.py: the interpreter with it gives the interpreter's own results bit for bit: the
custom-combine tl.reduce, vectorised, in the same order of combination on every axis, with keep_dims, for tuple
combines whose order matters, and for the loss's own _sum_log1p; the language patched once per launch, restored after
it (a failed one too), and patched again for a helper whose language modules the launch did not patch."""

import importlib
import sys

import numpy as np
import pytest
import torch

from masksub_kernels._backend import triton_interpreted
from tools import interpreter_speed

triton = pytest.importorskip("triton")
tl = triton.language
interpreter = pytest.importorskip("triton.runtime.interpreter")
ReduceOps = interpreter.ReduceOps

from masksub_kernels.ops._masksub_loss_blocks import _log1p_pair, _sum_log1p  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_interpreted(), reason="the patch is the Triton interpreter's")


@triton.jit
def first_wins_max(value, index, other_value, other_index):
    # argmax with ties to the left operand: not commutative, so the order of combination shows
    take = other_value > value
    return tl.where(take, other_value, value), tl.where(take, other_index, index)


@triton.jit
def reductions(x_ptr, out_ptr, R: tl.constexpr, G: tl.constexpr):
    rows = tl.arange(0, R)[:, None]
    cols = tl.arange(0, G)[None, :]
    x = tl.load(x_ptr + rows * G + cols)
    tl.store(out_ptr + tl.arange(0, R), tl.reduce(x, 1, _log1p_pair))
    tl.store(out_ptr + R + tl.arange(0, G), tl.reduce(x, 0, _log1p_pair))
    kept = tl.reduce(x, 1, _log1p_pair, keep_dims=True)  # [R, 1]
    tl.store(out_ptr + 2 * R + G + rows, kept)
    whole = tl.reduce(x, None, _log1p_pair, keep_dims=True)  # [1, 1]
    tl.store(out_ptr + 3 * R + G + rows * 0 + cols * 0, whole, mask=(rows == 0) & (cols == 0))
    tl.store(out_ptr + 3 * R + G + 1, tl.reduce(x, None, _log1p_pair))
    best, where = tl.reduce((x, rows + cols * 0), 0, first_wins_max)
    tl.store(out_ptr + 3 * R + G + 2 + tl.arange(0, G), best)
    tl.store(out_ptr + 3 * R + 2 * G + 2 + tl.arange(0, G), where.to(tl.float32))
    tl.store(out_ptr + 3 * R + 3 * G + 2 + tl.arange(0, R), _sum_log1p(x))


def _bits(result) -> bytes | str:
    """A run's result to compare bit for bit (an error's text as it is)."""
    return result if isinstance(result, str) else result.tobytes()


def _plain_and_patched(run):
    """``run()`` with the interpreter's own functions, then with the patch; and the names of the combine functions
    that the patched run reduced with the interpreter's own generic_reduce (its fall-backs)."""
    was_installed = bool(interpreter_speed._installed)
    interpreter_speed.uninstall()
    original = ReduceOps.generic_reduce
    try:
        plain = run()
        assert interpreter_speed.install() and interpreter_speed.install()  # idempotent
        assert ReduceOps.generic_reduce is not original
        fallbacks = []
        own = interpreter_speed._installed["generic_reduce"]

        def counted(reduce_op, input):
            fallbacks.append(reduce_op.combine_fn.fn.__name__)
            return own(reduce_op, input)

        interpreter_speed._installed["generic_reduce"] = counted
        try:
            patched = run()
        finally:
            interpreter_speed._installed["generic_reduce"] = own
        interpreter_speed.uninstall()
        assert ReduceOps.generic_reduce is original
        assert _bits(run()) == _bits(plain)  # uninstalled: as before
    finally:
        if was_installed:
            interpreter_speed.install()
    return plain, patched, fallbacks


@pytest.mark.parametrize("groups", [4, 8])
def test_vectorised_reduction_equals_the_interpreters_own(groups):
    rows = 16
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(rows, groups, generator=gen) * torch.rand(rows, 1, generator=gen) ** 8  # tiny to ~1
    x[9] = x[12] = torch.arange(groups) + 2.0  # ties at every column's maximum: argmax's order decides its index
    x[5, 1] = float("nan")
    length = 3 * rows + 3 * groups + 2 + rows

    def run():
        out = torch.full((length,), -1.0)
        reductions[(1,)](x, out, R=rows, G=groups)
        return out.numpy()

    plain, vectorised, fallbacks = _plain_and_patched(run)
    assert _bits(vectorised) == _bits(plain)
    assert fallbacks == ["_log1p_pair", "_log1p_pair"]  # the whole-block reductions only (their scalar accumulators)
    # the results are the reductions asked for (not two equal wrong ones): log1p's product form, sequential order
    expected = np.float32(0)
    for value in x[0].numpy():
        expected = np.float32(expected + value + expected * value)
    assert plain[0] == expected
    argmax_of_ties = plain[3 * rows + 2 * groups + 2 :][:groups]
    assert (argmax_of_ties == 9).all()
    sums = plain[3 * rows + 3 * groups + 2 :]
    finite = ~torch.isnan(x).any(dim=1)
    torch.testing.assert_close(torch.from_numpy(sums)[finite], torch.log1p(x).sum(dim=1)[finite], rtol=1e-6, atol=0)


@triton.jit
def max_by_if(a, b):
    if a > b:  # control flow on the operands: scalars only (on blocks the interpreter calls any block true)
        return a
    else:
        return b


@triton.jit
def plus_square(a, b):
    return a + b * b  # an fma on a GPU (tools/gpu_math.py fuses it where the operands are alike)


@triton.jit
def widening_sum(a, b):
    return a.to(tl.int64) + b  # int32 operands, an int64 result (stored back into int32 by the interpreter)


@triton.jit
def more_reductions(x_ptr, i_ptr, out_ptr, i_out_ptr, R: tl.constexpr, G: tl.constexpr):
    rows = tl.arange(0, R)[:, None]
    cols = tl.arange(0, G)[None, :]
    x = tl.load(x_ptr + rows * G + cols)
    tl.store(out_ptr + tl.arange(0, R), tl.reduce(x, 1, max_by_if))
    tl.store(out_ptr + R + tl.arange(0, R), tl.reduce(x, 1, plus_square))
    tl.store(out_ptr + 2 * R, tl.reduce(tl.load(x_ptr + tl.arange(0, G)), 0, plus_square))  # 1-D: a scalar
    tl.store(i_out_ptr + tl.arange(0, R), tl.reduce(tl.load(i_ptr + rows * G + cols), 1, widening_sum))


@pytest.mark.parametrize("overflow", [False, True])
def test_what_blocks_would_compute_otherwise_is_left_to_the_interpreter(overflow):
    # combine functions with control flow, results of another dtype, whole-block reductions (under a GPU's
    # arithmetic: the scalar accumulator against a block would fuse other products): the interpreter's own path,
    # the same results and the same errors
    from tools import gpu_math

    x = torch.tensor([[5.0, 1.0, 2.0, 3.0], [0.0, 9.0, 1.0, 2.0], [7.0, 6.0, 8.0, 0.0], [0.1, 0.3, 0.7, 1.3]])
    ints = torch.arange(16, dtype=torch.int32).view(4, 4) + (2**31 - 8 if overflow else 0)

    def run():
        out, i_out = torch.zeros(9), torch.zeros(4, dtype=torch.int32)
        try:
            more_reductions[(1,)](x, ints, out, i_out, R=4, G=4)
        except Exception as exc:  # the interpreter's error: compared as text
            return repr(exc)
        return np.concatenate([out.numpy().view(np.int32), i_out.numpy()])

    gpu_math_was_installed = bool(gpu_math._installed)
    gpu_math.install()
    try:
        plain, patched, fallbacks = _plain_and_patched(run)
    finally:
        if not gpu_math_was_installed:
            gpu_math.uninstall()
    if overflow:
        assert isinstance(plain, str) and "Overflow" in plain and patched == plain
        return
    assert _bits(patched) == _bits(plain)
    assert np.array_equal(plain[:4].view(np.float32), x.max(dim=1).values.numpy())
    assert plain[-4:].tolist() == ints.sum(dim=1).tolist()
    assert fallbacks == ["max_by_if", "plus_square", "widening_sum"]  # the 2-D plus_square alone vectorised


@triton.jit
def _add_one(x):
    return x + 1


@triton.jit
def helpers_in_a_loop(x_ptr, out_ptr, N: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, N))
    for _ in range(5):
        x = _add_one(x)
    tl.store(out_ptr + tl.program_id(0) * N + tl.arange(0, N), x)


@triton.jit
def fails_in_a_helper(x_ptr, N: tl.constexpr):
    _add_one(tl.reshape(tl.load(x_ptr + tl.arange(0, N)), (N + 1,)))


other_module = None  # set by the test: a module of helpers that holds triton.language.core
module_without_language = None  # and one that holds no language module


@triton.jit
def calls_a_helper_of_another_module(x_ptr, out_ptr, N: tl.constexpr):
    x = other_module.maximum_with_core(tl.load(x_ptr + tl.arange(0, N)))
    tl.store(out_ptr + tl.arange(0, N), other_module.maximum_with_core(x - 1.0))  # its modules patched by now


@triton.jit
def calls_a_helper_without_language(x_ptr, out_ptr, N: tl.constexpr):
    tl.store(
        out_ptr + tl.arange(0, N), module_without_language.maximum_through_triton(tl.load(x_ptr + tl.arange(0, N)))
    )


_OTHER_MODULE = """
import triton
import triton.language.core as core


@triton.jit
def maximum_with_core(x):
    return core.maximum(x, 0.5)  # triton.language.core's builtin: its module patched, or it refuses the call
"""

_MODULE_WITHOUT_LANGUAGE = """
import triton


@triton.jit
def maximum_through_triton(x):
    return triton.language.maximum(x, 0.5)  # no language module in its globals: the interpreter refuses it
"""


def test_a_launch_patches_the_language_once_and_restores_it(monkeypatch, tmp_path):
    assert interpreter_speed.install()  # this Triton has what the patch replaces
    calls = []
    original = interpreter_speed._installed["_patch_lang"]
    monkeypatch.setitem(
        interpreter_speed._installed, "_patch_lang", lambda fn: calls.append(fn.__name__) or original(fn)
    )

    def language():
        return tl.reduce, getattr(tl.tensor, "__bool__", None), tl.range

    unpatched = language()
    x = torch.arange(4.0)
    out = torch.zeros(8)
    helpers_in_a_loop[(2,)](x, out, N=4)
    assert torch.equal(out, torch.cat([x + 5, x + 5]))
    assert calls == ["helpers_in_a_loop"]  # not once more per helper call (10 of them)
    assert language() == unpatched and not interpreter_speed._launch_languages
    with pytest.raises(Exception, match="must be a power of 2"):
        fails_in_a_helper[(1,)](x, N=4)
    assert language() == unpatched and not interpreter_speed._launch_languages
    # a helper holding triton.language.core, which the launch's module does not: patched for its first call only
    (tmp_path / "other_language_module.py").write_text(_OTHER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "other_module", importlib.import_module("other_language_module"))
    calls.clear()
    calls_a_helper_of_another_module[(1,)](x, out, N=4)
    assert torch.equal(out[:4], torch.clamp(torch.clamp(x, min=0.5) - 1, min=0.5)) and calls == [
        "calls_a_helper_of_another_module",
        "maximum_with_core",
    ]
    # a helper whose module holds no language module: the interpreter's refusal, not a call that works only here
    (tmp_path / "module_without_language.py").write_text(_MODULE_WITHOUT_LANGUAGE)
    module = importlib.import_module("module_without_language")
    monkeypatch.setattr(sys.modules[__name__], "module_without_language", module)
    with pytest.raises(Exception, match=r"triton\.language must be visible"):
        calls_a_helper_without_language[(1,)](x, out, N=4)
    sys.modules.pop("other_language_module")
    sys.modules.pop("module_without_language")
    # outside a launch (a @jit function called from Python) the language is patched as the interpreter does, and
    # the next launch patches it again
    calls.clear()
    interpreter._patch_lang(_add_one.fn).restore()
    helpers_in_a_loop[(1,)](x, out, N=4)
    assert calls == ["_add_one", "helpers_in_a_loop"] and language() == unpatched


# helper-187's mutation audit


def test_interpreter_speed_installs_nothing_into_an_interpreter_lacking_a_part(monkeypatch):
    # I08 (`all(needed)` -> `any(needed)`: another Triton's interpreter patched in part, a KeyError at its launch)
    was_installed = bool(interpreter_speed._installed)
    interpreter_speed.uninstall()
    try:
        own = interpreter.ReduceOps.generic_reduce, interpreter._patch_lang
        monkeypatch.delattr(interpreter, "GridExecutor")
        assert interpreter_speed.install() is False
        assert interpreter_speed._installed == {}
        assert (interpreter.ReduceOps.generic_reduce, interpreter._patch_lang) == own
    finally:
        monkeypatch.undo()
        interpreter_speed.uninstall()
        if was_installed:
            interpreter_speed.install()


both_languages = None  # set by the test: a module of helpers that holds triton.language and triton.language.core

_BOTH_LANGUAGES = """
import triton
import triton.language as tl
import triton.language.core as core


@triton.jit
def maximum_with_both(x):
    return core.maximum(x, 0.5) + tl.zeros_like(x)  # core's builtin: refused unless core is patched
"""


@triton.jit
def calls_a_helper_of_both_languages(x_ptr, out_ptr, N: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, N), both_languages.maximum_with_both(tl.load(x_ptr + tl.arange(0, N))))


def test_interpreter_speed_patches_a_helper_whose_languages_the_launch_patched_only_in_part(monkeypatch, tmp_path):
    # I05 (`languages <= patched` -> `languages & patched`: a helper holding triton.language (patched by the launch)
    # and triton.language.core (not) skipped its patch, and core.maximum refused the call)
    assert interpreter_speed.install()
    (tmp_path / "h187_both_languages.py").write_text(_BOTH_LANGUAGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        monkeypatch.setattr(sys.modules[__name__], "both_languages", importlib.import_module("h187_both_languages"))
        x, out = torch.arange(4.0), torch.zeros(4)
        calls_a_helper_of_both_languages[(1,)](x, out, N=4)
        assert torch.equal(out, torch.clamp(x, min=0.5))
    finally:
        sys.modules.pop("h187_both_languages", None)


@triton.jit
def reduce_last_axis(x_ptr, out_ptr, R: tl.constexpr, G: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, R)[:, None] * G + tl.arange(0, G)[None, :])
    tl.store(out_ptr + tl.arange(0, R), tl.reduce(x, -1, _log1p_pair))


def test_a_negative_axis_is_left_to_the_interpreter():
    # helper-187's I01 (interpreter_speed.py: drop `self.axis < 0`): the interpreter's own reduction along axis -1 is
    # what the patched run must give (result or error, bit for bit), not the vectorised one's
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(5))

    def run():
        out = torch.full((4,), -1.0)
        try:
            reduce_last_axis[(1,)](x, out, R=4, G=8)
        except Exception as exc:  # the interpreter's answer may be an error: the patched run must give the same
            return f"{type(exc).__name__}: {exc}"
        return out.numpy()

    plain, patched, fallbacks = _plain_and_patched(run)
    assert _bits(patched) == _bits(plain) and fallbacks == ["_log1p_pair"]


@triton.jit
def first_of_pair(a, i, b, j):
    return a + b  # two inputs, one result: the interpreter refuses it


@triton.jit
def reduces_a_pair_to_one(x_ptr, out_ptr, R: tl.constexpr, G: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, R)[:, None] * G + tl.arange(0, G)[None, :])
    total, count = tl.reduce((x, x), 1, first_of_pair)
    tl.store(out_ptr + tl.arange(0, R), total + count)


@pytest.mark.parametrize("groups", [2, 4])
def test_a_combine_returning_fewer_values_than_it_reduces_fails_as_the_interpreters(groups):
    # the vectorised path meets the short result at its first combine (an axis of 2: one call) and leaves the
    # reduction to the interpreter, whose error is the one raised
    x = torch.arange(4 * groups, dtype=torch.float32).view(4, groups)

    def run():
        try:
            reduces_a_pair_to_one[(1,)](x, torch.zeros(4), R=4, G=groups)
        except Exception as exc:
            return repr(exc)
        return "no error"

    plain, patched, fallbacks = _plain_and_patched(run)
    assert plain != "no error" and patched == plain
    assert fallbacks == ["first_of_pair"]


@triton.jit
def int32_arithmetic(a_ptr, b_ptr, out_ptr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    a = tl.load(a_ptr + offsets)
    b = tl.load(b_ptr + offsets)
    tl.store(out_ptr + offsets, a * b + a - b)


@pytest.mark.parametrize("debug", [False, True])
def test_the_overflow_check_runs_where_it_asserts_and_only_there(debug, monkeypatch):
    # int32 products past 2^31: a GPU's result wraps; the interpreter checks the overflow only under debug options
    # (its device_assert; tests/conftest.py switches them on), the patched interpreter then too, with the same
    # message; without debug it computes the check no more (its result was thrown away) and gives the same bits
    a = torch.tensor([3, 2**30, -7, 2**31 - 1], dtype=torch.int32)
    b = torch.tensor([5, 4, 9, 2], dtype=torch.int32)
    monkeypatch.setattr(interpreter.interpreter_builder, "options", interpreter.InterpreterOptions(debug=debug))

    def run():
        out = torch.zeros(4, dtype=torch.int32)
        try:
            int32_arithmetic[(1,)](a, b, out, N=4)
        except Exception as exc:  # the interpreter's error, compared as text
            return repr(exc)
        return out.numpy()

    plain, patched, _ = _plain_and_patched(run)
    assert _bits(patched) == _bits(plain)
    if debug:
        assert "AssertionError('int32 overflow detected for operation mul')" in plain
    else:
        wide = a.long() * b.long() + a.long() - b.long()
        assert plain.tolist() == ((wide + 2**31) % 2**32 - 2**31).tolist()  # wrapped, as on a GPU


@triton.jit
def one_operation(a_ptr, b_ptr, out_ptr, OP: tl.constexpr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    a = tl.load(a_ptr + offsets)
    b = tl.load(b_ptr + offsets)
    if OP == "add":
        result = a + b
    elif OP == "sub":
        result = a - b
    else:
        result = a * b + 0  # (an add of the product: the check of each, in order)
    tl.store(out_ptr + offsets, result)


_EDGES = {
    torch.int8: (-128, 127),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.uint8: (0, 255),
    torch.uint32: (0, 2**32 - 1),
}


@pytest.mark.parametrize("dtype", list(_EDGES), ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_the_overflow_check_of_each_width_asserts_as_the_interpreters(dtype, op, monkeypatch):
    # the NumPy check against the language's, under debug options: in range, one past either end, for signed and
    # unsigned 8 to 32 bits (a uint32 zero-extended to int64, as the language's cast does)
    monkeypatch.setattr(interpreter.interpreter_builder, "options", interpreter.InterpreterOptions(debug=True))
    low, high = _EDGES[dtype]
    operands = {  # (a, b): in range, then past the top, then past the bottom (where the operation can go there)
        "add": [(high - 3, 3), (high, 1), (low, -1 if low else 0)],
        "sub": [(low + 3, 3), (high, -1 if low else 0), (low, 1)],
        "mul": [(high // 2, 2), (high // 2 + 1, 2), (low // 2 - 1, 2) if low else (high, 1)],
    }[op]
    outcomes = []
    for a, b in operands:
        a_block, b_block = (torch.tensor([value, 1], dtype=dtype) for value in (a, b))

        def run(a_block=a_block, b_block=b_block):
            out = torch.zeros(2, dtype=dtype)
            try:
                one_operation[(1,)](a_block, b_block, out, OP=op, N=2)
            except Exception as exc:
                return repr(exc)
            return out.numpy()

        plain, patched, _ = _plain_and_patched(run)
        assert _bits(patched) == _bits(plain), (a, b)
        outcomes.append(isinstance(plain, str) and "overflow detected" in plain)
    assert outcomes[0] is False and True in outcomes  # (the checks ran: the cases are not all in range)


def test_debug_options_without_the_overflow_check_check_nothing(monkeypatch):
    # helper-350: debug on, sanitize_overflow off: the language computes no check (the patched one must not either)
    options = interpreter.InterpreterOptions(debug=True, sanitize_overflow=False)
    monkeypatch.setattr(interpreter.interpreter_builder, "options", options)
    a, b = torch.tensor([2**31 - 1, 1], dtype=torch.int32), torch.tensor([2, 1], dtype=torch.int32)

    def run():
        out = torch.zeros(2, dtype=torch.int32)
        one_operation[(1,)](a, b, out, OP="mul", N=2)
        return out.numpy()

    plain, patched, _ = _plain_and_patched(run)
    assert _bits(patched) == _bits(plain) and plain.tolist() == [-2, 1]  # wrapped, no error


def test_the_dtype_table_answers_as_the_interpreters_own():
    was_installed = bool(interpreter_speed._installed)
    assert interpreter_speed.install()
    own = interpreter_speed._installed["_get_np_dtype"]
    try:
        scalars = [tl.int1, tl.float16, tl.bfloat16, tl.float32, tl.float64, tl.float8e5, tl.float8e4nv]
        scalars += [getattr(tl, f"{sign}int{bits}") for sign in ("", "u") for bits in (8, 16, 32, 64)]
        pointers = [tl.pointer_type(tl.float32), tl.pointer_type(tl.bfloat16)]
        types = scalars + pointers + [tl.block_type(t, [4, 2]) for t in scalars + pointers]
        for _ in range(2):  # asked, then kept
            assert [interpreter._get_np_dtype(t) for t in types] == [own(t) for t in types]
        assert interpreter._get_np_dtype(tl.bfloat16) == np.uint16  # (bf16 held as its bits)
        for missing in (tl.void, tl.block_type(tl.void, [2])):
            with pytest.raises(KeyError):
                own(missing)
            with pytest.raises(KeyError):
                interpreter._get_np_dtype(missing)
    finally:
        if not was_installed:
            interpreter_speed.uninstall()
