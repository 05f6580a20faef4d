"""pytest plugin: how many Triton specialisations and C launchers a test run would JIT-compile on a GPU.

On a GPU, Triton compiles a kernel once per specialisation (the kernel, its constexpr values, its argument types,
the 16-byte alignment of its pointers and integers, its launch options) and builds one small C launcher per
argument-type signature. Under the CPU interpreter nothing is compiled, so this plugin records, at every launch,
the key that the JIT would have used (Triton's own ``native_specialize_impl``) and writes the census when the run
ends. That is how benchmarks/gpu_check.sh's test budget was sized without a GPU:

    python -m pytest tests -p benchmarks.jit_census [--jit-census=FILE.json] [...]

Alignment of CPU allocations stands in for that of CUDA ones (both are at least 16-byte aligned; views with an
offset are the same on both), so the counts are estimates within a few specialisations.
"""

from __future__ import annotations

import collections
import inspect
import json
import os

import pytest

_current_test = ["(collection)"]
_launches: dict[tuple, set[str]] = collections.defaultdict(set)  # specialisation key -> test files that hit it


def pytest_addoption(parser):
    parser.addoption("--jit-census", default=None, help="write the Triton JIT census to this JSON file")


def _specialisation(function, args: tuple, kwargs: dict) -> tuple:
    """(kernel, per-argument specialisation, options), as Triton's JIT keys its cache (approximately)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    parameters = inspect.signature(function.fn).parameters
    bound = dict(zip(function.arg_names, args))
    options = {}
    for name, value in kwargs.items():
        (bound if name in parameters else options)[name] = value
    parts = []
    for name in function.arg_names:
        if name not in bound:  # a default
            bound[name] = parameters[name].default
        value = bound[name]
        if "constexpr" in str(parameters[name].annotation):
            parts.append((name, "constexpr", repr(value)))
        else:
            kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
            parts.append((name, kind, repr(key)))
    return function.fn.__name__, tuple(parts), tuple(sorted((k, repr(v)) for k, v in options.items()))


def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET") != "1" and not config.getoption("--jit-census"):
        return
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        _launches[_specialisation(self, args, kwargs)].add(_current_test[0])
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _current_test[0] = item.nodeid.split("::")[0]


def census() -> dict:
    """Totals, per kernel and per test file (specialisations first reached from that file, in run order)."""
    per_kernel = collections.Counter(key[0] for key in _launches)
    # A C launcher per signature of argument types: constexpr values and alignments do not change the C code.
    launchers = {(key[0], tuple(kind for _, kind, _ in key[1])) for key in _launches}
    per_file = collections.Counter()
    for files in _launches.values():
        for name in files:
            per_file[name] += 1
    return {
        "specialisations": len(_launches),
        "launchers": len({signature for _, signature in launchers}),
        "per_kernel": dict(per_kernel.most_common()),
        "per_test_file": dict(per_file.most_common()),
    }


def pytest_terminal_summary(terminalreporter, config):
    if not _launches:
        return
    result = census()
    terminalreporter.write_line(
        f"jit census: {result['specialisations']} Triton specialisations, {result['launchers']} C launchers"
    )
    for name, count in result["per_test_file"].items():
        terminalreporter.write_line(f"  {count:4d}  {name}")
    path = config.getoption("--jit-census")
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
