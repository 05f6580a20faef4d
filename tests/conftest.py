"""Test set-up: without a GPU, the Triton kernels run on the CPU interpreter and the CUDA extension's sources on
the CUDA emulator; with a GPU, the tests run on CUDA tensors (the GPU suite).

TRITON_INTERPRET is read when @triton.jit runs, i.e. when masksub_kernels is imported, so it is set here, before
any import of the package (as is MASKSUB_CHECK_LAUNCH_CACHE). MASKSUB_CUDA_EMULATOR chooses whether the ``cuda``
backend runs on the emulator (tools/cuda_emulator.py: csrc/ compiled for the CPU) where there is no GPU: ``auto``
(default: when a CUDA toolkit's headers are present), ``1`` (required: a build failure fails the run; CI), ``0``
(never).
"""

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# every reuse of a cached launch configuration is derived again and compared (ops/masksub_loss.py: _cached_config)
os.environ.setdefault("MASKSUB_CHECK_LAUNCH_CACHE", "1")

# Under pytest-xdist (`make test`: a worker per core) each worker gets its share of the cores for torch's CPU ops,
# not torch's default of all of them per worker (oversubscribed, slower).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest
from hypothesis import settings

import masksub_kernels as mk

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# MASKSUB_GPU_MATH=1: the interpreter computes in fp32 as a GPU does (tools/gpu_math.py: approximate exp, exp2, rsqrt
# and division, fma contraction, bf16 rounded to nearest; `make test` runs the loss kernels' Triton tests so a second
# time). With a GPU there is nothing to emulate: the tests skip.
# MASKSUB_GPU_MATH=defer (`make test`'s first pass): the tests marked gpu_math (the Triton tests of GPU_MATH_FILES)
# are left out where the interpreter would run them, for the second pass to run them once, under a GPU's arithmetic
# (MASKSUB_GPU_MATH=1 pytest -m gpu_math), not twice. On a GPU machine they run in the first pass and the second
# skips. Unset (or 0): every test, the interpreter's own arithmetic.
GPU_MATH_SETTING = os.environ.get("MASKSUB_GPU_MATH", "0")
if GPU_MATH_SETTING not in ("0", "1", "defer"):
    raise ValueError(f"MASKSUB_GPU_MATH must be 0, 1 or defer, got {GPU_MATH_SETTING!r}")
GPU_MATH = GPU_MATH_SETTING == "1"
# The loss and fused-linear loss kernels' test files: their Triton tests are the ones whose tolerances depend on
# the arithmetic (exp, exp2, division, fma, bf16 rounding), run under a GPU's (tools/gpu_math.py) by `make test`.
GPU_MATH_FILES = {
    f"test_{name}.py"
    for name in ("loss_inputs", "masksub_loss", "masksub_loss_split", "masksub_loss_reduced", "masksub_loss_minus_inf",
                 "masksub_loss_threshold",
                 "linear_loss_chunks", "loss_fwd_bwd",
                 "linear_loss_kernels", "linear_loss_paths", "linear_masksub_loss", "linear_loss_grads")
}  # fmt: skip
if GPU_MATH and mk.triton_interpreted():
    from tools import gpu_math

    gpu_math.install()
# The interpreter without four of its costs that change nothing the kernels compute (tools/interpreter_speed.py): a
# custom-combine tl.reduce one element at a time (the loss's BCE blocks), the language patched again at every call
# of a @jit helper, an integer overflow check computed for an assert that its options switch off, a dtype table built
# at every conversion.
# And its programs run out of index order (tools/interpreter_order.py: the last first, then from the first up), as
# a GPU's may: a kernel that takes the largest index to run last, where it must count arrivals, fails.
# And the integer arithmetic of every kernel is checked for overflow: the interpreter's own check of each add, sub
# and mul narrower than 64 bits, which asserts only under its debug options ("int32 overflow detected for operation
# mul"; index arithmetic past 2^31 that a GPU would wrap silently; tools/interpreter_speed.py computes it in NumPy).
if mk.triton_interpreted():
    from triton.runtime import interpreter

    from tools import interpreter_order, interpreter_speed

    interpreter_speed.install()
    interpreter_order.install()
    interpreter.interpreter_builder.options = interpreter.InterpreterOptions(debug=True)


def _install_cuda_emulator() -> bool:
    """Install the CUDA emulator as the ``cuda`` backend for CPU tensors, as MASKSUB_CUDA_EMULATOR says."""
    setting = os.environ.get("MASKSUB_CUDA_EMULATOR", "auto")
    if DEVICE.type == "cuda" or setting == "0":
        return False
    from tools import cuda_emulator

    if setting != "1" and cuda_emulator.missing() is not None:
        return False
    cuda_emulator.install()
    return True


CUDA_EMULATED = _install_cuda_emulator()


def grad_tolerance(table: dict, dtype: torch.dtype, backend: str) -> float:
    """``table[dtype]``, a tolerance of a GPU's (bf16: conversions rounded to nearest, as on a GPU, by the torch and
    CUDA backends on the CPU, and the interpreter under MASKSUB_GPU_MATH=1), bf16's doubled where the Triton
    interpreter truncates fp32 to bf16 (twice the error of a rounding to nearest)."""
    truncates = dtype == torch.bfloat16 and backend == "triton" and mk.triton_interpreted() and not GPU_MATH
    return table[dtype] * (2 if truncates else 1)


def kernel_backends() -> list[str]:
    """The non-reference backends that can run on DEVICE in this process (the CUDA extension may import on a
    machine without a GPU, but runs on CUDA tensors only, or on CPU tensors through the CUDA emulator)."""
    runnable = {"triton"} | ({"cuda"} if DEVICE.type == "cuda" or CUDA_EMULATED else set())
    return [name for name in mk.available_backends() if name in runnable]


def pytest_collection_modifyitems(config, items):
    """The slow tests (minutes each: compilations of every kernel, the AddressSanitizer run) first. Under
    pytest-xdist (`make test`) they then start at once on workers of their own while the others share out the rest,
    instead of ending the run on one busy worker while the others idle. A stable sort: the rest keep their order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:  # the triton marker (pyproject.toml): a Triton backend chosen by a parameter, or by name
        params = getattr(getattr(item, "callspec", None), "params", {})
        chosen = {params.get(name) for name in ("backend", "kernel_backend", "op_backend", "kernel_backend_name")}
        named = "triton" in getattr(item, "originalname", item.name).split("_")  # test_triton_..._is_deterministic
        if "triton" in chosen or named or "triton_backend" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.triton)
        if item.get_closest_marker("triton") is not None and item.path.name in GPU_MATH_FILES:
            item.add_marker(pytest.mark.gpu_math)
        if CUDA_EMULATED and _runs_emulated_cuda(item):
            item.add_marker(pytest.mark.emulated_cuda)
    if GPU_MATH and DEVICE.type == "cuda":
        for item in items:
            item.add_marker(pytest.mark.skip("MASKSUB_GPU_MATH=1 emulates a GPU's arithmetic; this run has a GPU"))
    if GPU_MATH_SETTING == "defer" and DEVICE.type != "cuda" and mk.triton_interpreted():  # pass 2's condition
        deferred = [item for item in items if item.get_closest_marker("gpu_math") is not None]
        if deferred:
            config.hook.pytest_deselected(items=deferred)
            items[:] = [item for item in items if item.get_closest_marker("gpu_math") is None]


# The CUDA backend's tests on the emulator (marked emulated_cuda: tests/cuda_extension, and the tests of tests/ops
# whose name -- the function, its class, its parameters -- says cuda) are what the AddressSanitizer test runs in a
# process of its own, on a sanitized build of the same sources (tests/test_cuda_emulator.py,
# test_kernels_under_address_sanitizer: every load and store of the kernels checked). Where that test is in the
# session (after -m / -k / --deselect: this hook runs last) and can run, those of the integer kernels (token
# selection, grid masks) run there only, not a second time unsanitized. The loss kernels' (the loss files of
# GPU_MATH_FILES, tests/cuda_extension/test_cuda_loss*.py) run in both: the sanitized build is -O0, which forms no
# fma, where the session's -O2 build contracts a * b + c as nvcc does (helper-350). A session without the sanitized
# run (a file or a folder of tests, a machine without ASan's runtime) runs them all itself.
ASAN_TEST = "test_cuda_emulator.py::test_kernels_under_address_sanitizer"


def _float_arithmetic(item) -> bool:
    return item.path.name in GPU_MATH_FILES or item.path.name.startswith("test_cuda_loss")


def _runs_emulated_cuda(item) -> bool:
    tests = Path(__file__).parent
    if item.path.is_relative_to(tests / "cuda_extension"):
        return True
    return item.path.is_relative_to(tests / "ops") and "cuda" in item.nodeid.split("::", 1)[1].lower()


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_last(config, items) -> None:
    """After pytest's own -m / -k / --deselect (a hook that runs last; the name must start with pytest_)."""
    _leave_emulated_cuda_to_the_sanitized_run(config, items)


def _leave_emulated_cuda_to_the_sanitized_run(config, items) -> None:
    if not CUDA_EMULATED or not any(item.nodeid.endswith(ASAN_TEST) for item in items):
        return
    from tools import cuda_emulator

    try:
        cuda_emulator.asan_environment()  # the compiler has ASan's runtime: the sanitized run will not skip
    except RuntimeError:
        return
    covered = {id(item) for item in items if item.get_closest_marker("emulated_cuda") and not _float_arithmetic(item)}
    if covered:
        config.hook.pytest_deselected(items=[item for item in items if id(item) in covered])
        items[:] = [item for item in items if id(item) not in covered]


# The seed of torch's global generators at the start of every test (MASKSUB_TEST_SEED, default 0): what a test
# draws without a generator of its own does not depend on which tests pytest-xdist ran before it in that worker
# (CI once failed on such a draw that no other run reproduced). Another seed re-draws them all: a sweep for tests
# whose tolerances hold only for the draws they happen to get.
TEST_SEED = int(os.environ.get("MASKSUB_TEST_SEED", "0"))

# Hypothesis (the property tests): its own "ci" profile, loaded when CI is set, runs a fixed sequence of examples
# (derandomized); elsewhere each run draws new ones. MASKSUB_HYPOTHESIS=fuzz draws 20 times the examples each
# property test asks for, randomly even under CI: a longer search for a failing case, by hand.
FUZZ = os.environ.get("MASKSUB_HYPOTHESIS") == "fuzz"
if FUZZ:
    settings.register_profile("fuzz", settings.get_profile("default"), print_blob=True)
    settings.load_profile("fuzz")


def property_settings(max_examples: int, **options) -> settings:
    """A property test's settings: ``max_examples`` (20 times that under the fuzz profile), no deadline (the
    interpreter's first calls compile and cache)."""
    scale = 20 if FUZZ else 1
    return settings(max_examples=max_examples * scale, deadline=None, **options)


@pytest.fixture(autouse=True)
def _seeded_global_generators():
    torch.manual_seed(TEST_SEED)


# The op tests on the CPU run with torch's fill of uninitialised memory: torch.empty (and empty_like, new_empty, ...)
# returns NaN (floats) or the largest integer, so an op whose result depends on memory it never wrote -- a masked
# load's lane, a buffer's padding, a row a kernel should have written -- fails its comparison instead of passing on
# whatever the allocator held (zeros, often). It comes with torch's deterministic mode (warn_only: an op without a
# deterministic implementation only warns; a few ops choose deterministic algorithms). Not on a GPU, where the test
# suite also counts kernels and the fills would be launches of their own.
NAN_FILLED = ("ops", "cuda_extension")


@pytest.fixture(autouse=True)
def _uninitialised_memory_filled(request):
    if DEVICE.type != "cpu" or request.node.path.parent.name not in NAN_FILLED:
        yield
        return
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(params=["torch", *kernel_backends()])
def backend(request):
    """Each available backend in turn (the reference included), restored afterwards."""
    with mk.use_backend(request.param):
        yield request.param


@pytest.fixture(params=kernel_backends() or [pytest.param("none", marks=pytest.mark.skip("no kernel backend"))])
def kernel_backend(request):
    """Each available non-reference backend in turn."""
    with mk.use_backend(request.param):
        yield request.param
