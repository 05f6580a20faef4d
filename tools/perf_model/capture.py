"""Launches as the ops make them, compiled for sm_90 as Triton's JIT would compile them, without a GPU.

1. ``recording(module, ...)``: swaps every Triton kernel held in the modules' globals for a stand-in whose
   ``kernel[grid](*args, **kwargs)`` records (kernel, grid, args, kwargs) and launches nothing. The op's own launcher
   then runs unchanged on meta tensors (no memory, exact strides and storage offsets), so the launch parameters
   (grid, constexprs, num_warps) come from the launcher's code, never from a copy of it. Swapping module globals
   relies on nothing inside Triton, so it works on every Triton version. The torch ops the launcher runs around its
   kernels that launch one too on a GPU (a zero fill, a conversion: every aten op but views, allocations and
   metadata, on non-empty outputs, or on non-empty operands for an in-place op that returns none, e.g.
   _foreach_copy_) are counted by a dispatch mode over the same block: ``LaunchLog.torch_ops``.
2. ``compile_launch``: the JIT's own specialisation of those arguments (pointers whose address is a multiple of 16
   and integers divisible by 16 get ``tt.divisibility``; integers equal to 1 become constants), by calling the
   JIT's binder (Triton 3.8 internals) or, where those internals differ, the same rules written out here.
   A meta tensor's data_ptr() is its storage offset in bytes: a fresh allocation counts as 16-aligned (CUDA's
   caching allocator aligns to 512 B) and a view keeps its real offset.
3. The cubin and its metadata are cached under build/perf_model/, keyed by a hash of the kernel's source (Triton's
   own cache key covers the source of every function it calls), the specialisation, the options and the Triton
   version: a warm run compiles nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "perf_model"
TARGET_ARCH = 90


@dataclass
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)``: what the launcher would have sent to the GPU."""

    kernel: Any  # the JITFunction
    grid: tuple[int, int, int]
    args: tuple
    kwargs: dict
    bound: dict = field(default_factory=dict)  # parameter name -> value (defaults applied)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    @property
    def num_warps(self) -> int:
        return int(self.kwargs.get("num_warps", 4))


class _Recorder:
    """Stands in for a JITFunction in a module's globals: ``kernel[grid](...)`` records instead of launching."""

    def __init__(self, kernel, log: list[Launch]):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            signature = inspect.signature(self.kernel.fn)
            bound = signature.bind(*args, **{k: v for k, v in kwargs.items() if k in signature.parameters})
            bound.apply_defaults()
            values = dict(bound.arguments)
            size = grid(values) if callable(grid) else grid
            size = tuple(int(g) for g in size) + (1,) * (3 - len(size))
            self.log.append(Launch(self.kernel, size, args, kwargs, values))

        return launch

    def __getattr__(self, name):  # anything else (e.g. .fn) from the real kernel
        return getattr(self.kernel, name)


class LaunchLog(list):
    """The recorded Triton launches (the list), and the names of the torch ops around them that launch a kernel."""

    def __init__(self):
        super().__init__()
        self.torch_ops: list[str] = []


# aten ops that launch no kernel: allocations and metadata (views are told by their schema: OpOverload.is_view)
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh"}


class _TorchLaunches(TorchDispatchMode):
    """Counts the aten ops that would launch a device kernel (into ``ops``), passing every op through."""

    def __init__(self, ops: list[str]):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        outputs = out if isinstance(out, (tuple, list)) else [out]
        if func._schema.is_mutable and not any(isinstance(o, torch.Tensor) for o in outputs):
            outputs = [t for a in args for t in (a if isinstance(a, (tuple, list)) else [a])]  # _foreach_copy_: ()
        launches = any(isinstance(o, torch.Tensor) and o.numel() for o in outputs)
        if launches and not func.is_view and name not in _NO_KERNEL:
            self.ops.append(name)
        return out


@contextlib.contextmanager
def counting_torch_launches():
    """Within the block, the names of the torch ops that would launch a kernel are appended to the yielded list."""
    ops: list[str] = []
    with _TorchLaunches(ops):
        yield ops


@contextlib.contextmanager
def recording(*modules: ModuleType):
    """Within the block, every Triton kernel in the modules' globals records its launches into the yielded
    LaunchLog, and the torch ops that would launch a kernel are counted in its ``torch_ops``."""
    log = LaunchLog()
    swapped = []
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.JITFunction):
                swapped.append((module, name, value))
    try:
        for module, name, value in swapped:
            setattr(module, name, _Recorder(value, log))
        with _TorchLaunches(log.torch_ops):
            yield log
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)


# ------------------------------------------------------------------------------------------------------------
# Specialisation and compilation
# ------------------------------------------------------------------------------------------------------------


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", TARGET_ARCH, 32)


def _jit_specialisation(launch: Launch):
    """(signature, constexprs, attrs, options) from the JIT's own binder: exactly what ``run`` would compile."""
    from triton import knobs
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(_target())
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options.__dict__


_TORCH_TO_TRITON = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float64": "fp64",
    "int64": "i64",
    "int32": "i32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "bool": "i1",
}


def _rules_specialisation(launch: Launch):
    """The same specialisation written out (for Triton versions whose binder differs): the documented rules."""
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(launch.kernel.params):
        value = launch.bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[(index,)] = "constexpr", value
        elif value is None:
            signature[param.name], constexprs[(index,)] = "constexpr", None
        elif hasattr(value, "data_ptr"):
            signature[param.name] = "*" + _TORCH_TO_TRITON[str(value.dtype).removeprefix("torch.")]
            if value.data_ptr() % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[param.name], constexprs[(index,)] = "constexpr", 1
                continue
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{launch.name}: cannot specialise {param.name}={value!r}")
    options = {k: v for k, v in launch.kwargs.items() if k not in launch.bound}
    return signature, constexprs, attrs, options


def specialise(launch: Launch):
    """The JIT's binder where its internals are those of Triton 3.8, else the rules above."""
    try:
        return _jit_specialisation(launch)
    except (ImportError, AttributeError, TypeError):
        return _rules_specialisation(launch)


@dataclass
class Compiled:
    """A compiled kernel: its cubin on disk and what its metadata says."""

    name: str
    cubin: Path
    num_warps: int
    shared_bytes: int
    signature: dict
    constexprs: dict


def _key(launch: Launch, signature, constexprs, attrs, options) -> str:
    text = json.dumps(
        [
            launch.kernel.cache_key,
            signature,
            sorted(map(str, constexprs.items())),
            sorted(map(str, attrs.items())),
            sorted(map(str, options.items())),
            triton.__version__,
            TARGET_ARCH,
        ],
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def compile_launch(launch: Launch, cache: Path = CACHE) -> Compiled:
    """The cubin of a recorded launch for sm_90 (from the cache when the source and specialisation are unchanged)."""
    signature, constexprs, attrs, options = specialise(launch)
    key = _key(launch, signature, constexprs, attrs, options)
    cubin, meta = cache / f"{launch.name}-{key}.cubin", cache / f"{launch.name}-{key}.json"
    named_constexprs = {launch.kernel.params[path[0]].name: str(v) for path, v in constexprs.items()}
    if not (cubin.exists() and meta.exists()):
        source = triton.compiler.ASTSource(launch.kernel, signature, constexprs, attrs)
        compiled = triton.compile(source, target=_target(), options=options)
        cache.mkdir(parents=True, exist_ok=True)
        info = {"num_warps": compiled.metadata.num_warps, "shared": compiled.metadata.shared}
        # each file through a temporary and a rename: a process reading the cache (another pytest worker, a
        # second run) sees a whole file or none; the metadata last, so that it implies its cubin
        _write_atomic(cubin, compiled.asm["cubin"])
        _write_atomic(meta, json.dumps(info).encode())
    info = json.loads(meta.read_text())
    return Compiled(launch.name, cubin, info["num_warps"], info["shared"], signature, named_constexprs)
