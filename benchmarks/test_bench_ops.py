"""Op suites under pytest-benchmark: one benchmark per (suite, shape, dtype, provider, mode).

Run: `.venv/bin/python -m pytest benchmarks --benchmark-enable` (the default run of the test suite disables
timing: the cases then run once, as a smoke test of the benchmark code).
"""

import importlib

import pytest
import torch

import masksub_kernels as mk
from masksub_kernels.bench.cli import SUITES
from masksub_kernels.bench.runner import _timed_callables

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def collect():
    params = []
    for suite, module_name in SUITES.items():
        if suite == "train":
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for case in module.cases(DEVICE):
            for mode in case.modes:
                params.append(pytest.param(case, mode, id=f"{suite}-{case.shape}-{case.dtype}-{case.provider}-{mode}"))
    return params


@pytest.mark.parametrize(("case", "mode"), collect())
def test_op(benchmark, case, mode):
    if "compile" in case.provider and DEVICE.type == "cpu" and benchmark.disabled:
        pytest.skip("torch.compile on CPU takes minutes to build; timed only with --benchmark-enable")
    with mk.use_backend(mk.get_backend()):  # case.setup selects a backend process-wide: restored afterwards
        if case.setup is not None:
            case.setup()
        fn, prepare = _timed_callables(case, mode)

        def call():
            out = fn()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            return out

        def ready():  # untimed: the forward whose graph the timed backward walks (bench/runner.py)
            prepare()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()

        benchmark.group = f"{case.suite} {case.shape} {case.dtype} {mode}"
        if prepare is None:
            benchmark(call)
        else:  # one call per round, each after its own forward
            benchmark.pedantic(call, setup=ready, rounds=20, warmup_rounds=2)
