"""Two costs of the Triton interpreter (triton/runtime/interpreter.py, Triton 3.8) that the tests need not pay, removed
without changing what the kernels compute: the kernels' lines run as they did, with the same results bit for bit
(tests/test_interpreter_speed.py). tests/conftest.py installs both where the interpreter runs the kernels.

- **A custom-combine ``tl.reduce``, one element at a time.** ``ReduceOps.generic_reduce`` calls the combine function
  once per input element, on scalar tensors. The loss's BCE blocks reduce each lane's group of 4 or 8 classes with
  one (``_sum_log1p``'s ``_log1p_pair``): a BCE test of 30522 classes spent 60 of its 64 s there. Replaced by the
  same reduction in the same order -- each output element's accumulator combined with the elements along the axis
  left to right, as the interpreter does (and a GPU thread with the elements it holds) -- with one combine call per
  position along the axis, on all output elements at once: the combine function's own lines on blocks instead of
  scalars (elementwise ops: the same fp32 results; tools/gpu_math.py's emulation applies alike). Only where that is
  the same computation (``_generic_reduce``); elsewhere the interpreter's own. Sums, min / max and argmin / argmax
  keep the interpreter's NumPy reductions.
- **The language patched again at every device-function call.** A launch patches ``triton.language`` for the
  interpreter (``_patch_lang``: ``inspect.getmembers`` of its modules, ~1 ms) and restores it when the grid is done;
  every call of a ``@jit`` function inside the kernel patches it again (its own modules: ``tl.sum``'s is
  ``triton.language.core``, which a kernel's ``tl`` does not name), although nothing has changed since the launch's
  or the first such call's patch (a call's patches are never restored): half the time of a loss test with many
  blocks. Here a call within a launch patches only where its language modules are not among those already patched
  in that launch; outside a launch (a ``@jit`` function called from Python) as the interpreter does.
- **An integer overflow check through the language.** Each add, sub and mul of integers narrower than 64 bits
  computes its result again in int64 and compares it with the type's range (``binary_op_sanitize_overflow_impl``:
  nine more operations through the language's semantics, a quarter of a loss test's time), for a
  ``device_assert`` that asserts only where the interpreter's options have ``debug`` (the interpreter's default is
  False; tests/conftest.py switches it on, so that every kernel the tests run is checked for int32 overflow). Here
  the same int64 results and range test on the operands' NumPy arrays, the same error (AssertionError "int32
  overflow detected for operation mul"); nothing where ``debug`` is off (its result was discarded).
- **The dtype table built at every conversion.** ``_get_np_dtype`` (the NumPy dtype of a Triton type, called for
  every cast, load and arithmetic result) builds its table of 19 types at each call; here each scalar type's answer
  is the interpreter's own, asked once and kept.
"""

from __future__ import annotations

import numpy as np

_installed: dict[str, object] = {}  # the interpreter's own functions, while ours replace them
_launch_languages: list[set[int]] = []  # the language modules (ids) patched in the running launch
_np_dtypes: dict = {}  # a scalar Triton type -> the interpreter's NumPy dtype for it


class _NotTheSameComputation(Exception):
    """The vectorised reduction would not compute what the interpreter's computes: use the interpreter's."""


def _strict_truth(tensor) -> bool:
    # a combine function's `if` / `and` / `or` / `not` / `while` on a tensor: the interpreter's __bool__ calls any
    # block of more than one element true, so on blocks it would take one branch for all of them
    if tensor.handle.data.size != 1:
        raise _NotTheSameComputation
    return bool(tensor.handle.data)


def _combined_in_order(reduce_op, inputs: tuple) -> list[np.ndarray]:
    """Each input reduced along axis ``reduce_op.axis`` (>= 0, of inputs of 2 or more dimensions) by the combine
    function, left to right: arrays of the input's shape less that axis, of its dtype."""
    import triton.language as tl

    data = [np.moveaxis(arg.handle.data, reduce_op.axis, 0) for arg in inputs]
    accumulators = [d[0] for d in data]
    for position in range(1, data[0].shape[0]):
        left = tuple(reduce_op.to_tensor(a, arg.dtype) for a, arg in zip(accumulators, inputs))
        right = tuple(reduce_op.to_tensor(d[position], arg.dtype) for d, arg in zip(data, inputs))
        combined = reduce_op.combine_fn.fn(*left, *right)
        combined = combined if isinstance(combined, tuple) else (combined,)
        if len(combined) != len(data):
            raise _NotTheSameComputation  # the interpreter's own error
        accumulators = [np.asarray(c.handle.data if isinstance(c, tl.core.tensor) else c) for c in combined]
        if any(a.dtype != d.dtype for a, d in zip(accumulators, data)):
            # the interpreter stores each result into an array of the input's dtype (an int that does not fit
            # raises there, where a cast would wrap)
            raise _NotTheSameComputation
    return [np.broadcast_to(a, d.shape[1:]).astype(d.dtype) for a, d in zip(accumulators, data)]


def _generic_reduce(self, input):
    """``ReduceOps.generic_reduce``, vectorised where that is the interpreter's computation: along an axis >= 0 of
    inputs of 2 or more dimensions (each accumulator a block, as each element it meets: tools/gpu_math.py fuses the
    same products), a combine function without control flow on its operands, results of the inputs' dtypes.
    Otherwise, and on any error, the interpreter's own (whole-block reductions: its scalar accumulators; a negative
    axis: its own output shape)."""
    import triton.language as tl

    tensor = tl.core.tensor
    if self.axis is None or self.axis < 0 or any(arg.handle.data.ndim < 2 for arg in input):
        return _installed["generic_reduce"](self, input)
    own_truth = tensor.__dict__.get("__bool__")
    tensor.__bool__ = _strict_truth
    try:
        reduced = _combined_in_order(self, input)
    except Exception:  # _NotTheSameComputation, or an error the interpreter's path will raise as its own
        reduced = None
    finally:
        if own_truth is None:
            del tensor.__bool__
        else:
            tensor.__bool__ = own_truth
    if reduced is None:
        return _installed["generic_reduce"](self, input)
    if self.keep_dims:
        reduced = [np.expand_dims(data, self.axis) for data in reduced]
    return [self.to_tensor(data, arg.dtype) for data, arg in zip(reduced, input)]


def _languages(fn) -> set[int]:
    """The ids of the language modules (triton.language, triton.language.core) that ``fn``'s globals hold: what
    the interpreter's ``_patch_lang(fn)`` patches."""
    import triton.language as tl

    return {id(value) for value in fn.__globals__.values() if value is tl or value is tl.core}


class _NothingPatched:
    def restore(self) -> None:
        pass


def _launch(self, *args, **kwargs):
    """``GridExecutor.__call__`` (a kernel's launch: it patches the language, runs the grid, restores), with a
    record of the language modules patched while it runs."""
    _launch_languages.append(set())
    try:
        return _installed["GridExecutor.__call__"](self, *args, **kwargs)
    finally:
        _launch_languages.pop()


def _patch_lang(fn):
    """The interpreter's ``_patch_lang``, skipped within a launch for a function whose language modules that launch
    has patched already (by its own patch, or a call's: never restored by the interpreter)."""
    languages = _languages(fn)
    if _launch_languages and languages and languages <= _launch_languages[-1]:  # (none: the interpreter's error)
        return _NothingPatched()  # a device function's call: the interpreter discards its scope
    scope = _installed["_patch_lang"](fn)
    if _launch_languages:
        _launch_languages[-1].update(languages)
    return scope


_EXACT = {"add": np.add, "sub": np.subtract, "mul": np.multiply}  # the checked operations, in int64


def _sanitize_overflow(lhs, rhs, binary_op):
    """The interpreter's semantics' ``binary_op_sanitize_overflow_impl``: where its ``device_assert`` asserts (the
    builder's options have ``debug``), the operation of the operands widened to int64 (exact below 32 bits; a
    uint32 zero-extends, as its cast does, and a uint32 product past 2^63 wraps negative as the language's does: an
    overflow either way) in the operand type's range, or AssertionError with its message; nothing
    where it does not (its result is discarded). Any other case (another operation, width or type): its own."""
    from triton.runtime import interpreter

    options = interpreter.interpreter_semantic.builder.options
    if not options.debug:
        return None
    scalar, exact = lhs.type.scalar, _EXACT.get(getattr(binary_op, "__name__", None))
    if not (options.sanitize_overflow and exact and scalar.is_int() and scalar.int_bitwidth in (8, 16, 32)):
        return _installed["sanitize_overflow"](lhs, rhs, binary_op)
    if rhs.type.scalar != scalar:
        return _installed["sanitize_overflow"](lhs, rhs, binary_op)  # (its own assertion error)
    result = exact(lhs.handle.data.astype(np.int64), rhs.handle.data.astype(np.int64))
    if not ((result <= scalar.get_int_max_value()) & (result >= scalar.get_int_min_value())).all():
        raise AssertionError(f"int{scalar.int_bitwidth} overflow detected for operation {binary_op.__name__}")
    return None


def _get_np_dtype(tt_dtype):
    """The interpreter's ``_get_np_dtype``: a block's is its element type's; a scalar type's is asked of the
    interpreter's once (pointer types, unhashable, each time: it answers them first)."""
    import triton.language as tl

    scalar = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
    if isinstance(scalar, tl.pointer_type):
        return _installed["_get_np_dtype"](scalar)
    answer = _np_dtypes.get(scalar)
    if answer is None:
        answer = _np_dtypes[scalar] = _installed["_get_np_dtype"](scalar)  # (a type it lacks: its own KeyError)
    return answer


def install() -> bool:
    """Replace the interpreter's custom reduction, language patching, overflow check and dtype table with these
    (idempotent). False, and nothing replaced, where the interpreter lacks what they replace (another Triton: the
    tests run as they are)."""
    from triton.runtime import interpreter

    if _installed:
        return True
    needed = [getattr(interpreter, name, None) for name in ("_patch_lang", "ReduceOps", "GridExecutor")]
    needed += [getattr(interpreter, "_get_np_dtype", None), getattr(interpreter, "interpreter_semantic", None)]
    semantic = needed[-1]
    if not all(n is not None for n in needed) or not hasattr(semantic, "binary_op_sanitize_overflow_impl"):
        return False
    _installed["generic_reduce"] = interpreter.ReduceOps.generic_reduce
    _installed["_patch_lang"] = interpreter._patch_lang
    _installed["GridExecutor.__call__"] = interpreter.GridExecutor.__call__
    _installed["_get_np_dtype"] = interpreter._get_np_dtype
    _installed["sanitize_overflow"] = semantic.binary_op_sanitize_overflow_impl  # (bound to the interpreter's)
    interpreter.ReduceOps.generic_reduce = _generic_reduce
    interpreter._patch_lang = _patch_lang
    interpreter.GridExecutor.__call__ = _launch
    interpreter._get_np_dtype = _get_np_dtype
    semantic.binary_op_sanitize_overflow_impl = _sanitize_overflow  # this instance's only (not the compiler's)
    return True


def uninstall() -> None:
    """Put the interpreter's own functions back."""
    from triton.runtime import interpreter

    if _installed:
        interpreter.ReduceOps.generic_reduce = _installed.pop("generic_reduce")
        interpreter._patch_lang = _installed.pop("_patch_lang")
        interpreter.GridExecutor.__call__ = _installed.pop("GridExecutor.__call__")
        interpreter._get_np_dtype = _installed.pop("_get_np_dtype")
        del interpreter.interpreter_semantic.binary_op_sanitize_overflow_impl  # the class's method again
        _installed.pop("sanitize_overflow")
        _np_dtypes.clear()
