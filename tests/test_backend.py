"""Backend selection: names, availability messages, the environment variable, per-device resolution."""

import os
import subprocess
import sys
import types

import pytest
import torch
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels import __main__ as entry
from masksub_kernels import _backend


def test_torch_always_available():
    assert "torch" in mk.available_backends()


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="auto, triton, cuda, torch"):
        mk.set_backend("tpu")


def test_unavailable_backend_says_what_is_missing(monkeypatch):
    real = _backend._missing
    fake = lambda name: "the extension is not built" if name == "cuda" else real(name)
    monkeypatch.setattr(_backend, "_missing", fake)
    assert "cuda" not in mk.available_backends()
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: the extension is not built"):
        mk.set_backend("cuda")


def test_use_backend_restores_previous():
    before = mk.get_backend()
    with mk.use_backend("torch"):
        assert mk.get_backend() == "torch"
    assert mk.get_backend() == before


def test_use_backend_restores_previous_after_an_error(monkeypatch):
    monkeypatch.setattr(_backend, "_requested", "auto")
    with pytest.raises(KeyError, match="inside"), mk.use_backend("torch"):
        raise KeyError("inside")
    assert mk.get_backend() == "auto"


def test_backend_names_are_read_in_any_case(monkeypatch):
    monkeypatch.setattr(_backend, "_requested", "auto")  # docs/api.md: 'triton', 'cuda', 'torch' (any case)
    mk.set_backend("TORCH")
    assert mk.get_backend() == "torch"
    with mk.use_backend("Auto"):
        assert mk.get_backend() == "auto"


def test_auto_takes_triton_first_for_cuda_tensors(monkeypatch):
    # as on a GPU machine with Triton and the extension: auto runs Triton, the extension where an op lacks Triton
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)
    monkeypatch.setattr(_backend, "_triton_missing", lambda: None)
    monkeypatch.setattr(_backend, "_compiled_extension_missing", lambda: None)
    monkeypatch.setattr(_backend, "_requested", "auto")
    assert mk.resolve_backend("cuda") == "triton"
    assert mk.resolve_backend("cuda", implemented=("cuda", "torch")) == "cuda"
    assert mk.resolve_backend("cpu") == "torch"


def test_register_extension_refuses_meta_and_other_non_names():
    for device_type in ("meta", None, 0):
        with pytest.raises(ValueError, match="device type name such as 'cpu'"):
            _backend.register_extension(device_type, types.SimpleNamespace())
    assert "meta" not in _backend._extensions and None not in _backend._extensions


def test_last_backend_knows_every_public_op_and_refuses_other_names():
    public = ["gather_tokens", "linear_masksub_loss", "linear_soft_target_cross_entropy", "mask_image_grid",
              "mask_tokens_grid", "masksub_loss", "random_grid_mask", "random_keep_indices", "random_token_select",
              "self_distillation_loss", "soft_target_bce", "soft_target_cross_entropy"]  # fmt: skip
    assert set(public) <= set(mk.__all__)
    for name in public:  # None before its first call in this process, else a backend: never an error
        assert mk.last_backend(name) in (None, *_backend.BACKEND_NAMES)
    with pytest.raises(ValueError, match=r"no op is named 'masksub_los'; the ops: .*masksub_loss"):
        mk.last_backend("masksub_los")
    with mk.use_backend("torch"):  # a name a caller records (resolve_backend is public) is known after that
        mk.resolve_backend("cpu", "my_own_op")
    assert mk.last_backend("my_own_op") == "torch"


def test_resolve_backend_answers_for_the_ops_backends(monkeypatch):
    # helper-102's probe: with the cuda backend requested and an extension for CPU tensors, resolve_backend said
    # 'cuda' for the fused-linear ops, which have no CUDA implementation (the op itself refused it)
    monkeypatch.setitem(_backend._extensions, "cpu", types.SimpleNamespace())
    monkeypatch.setattr(_backend, "_requested", "cuda")
    assert mk.resolve_backend("cpu", "masksub_loss") == "cuda"
    assert mk.resolve_backend("cpu") == "cuda"
    for name in ("linear_masksub_loss", "linear_soft_target_cross_entropy"):
        with pytest.raises(RuntimeError, match=f"'cuda' has no implementation of {name}: select one of triton, torch"):
            mk.resolve_backend("cpu", name)
    monkeypatch.setattr(_backend, "_requested", "auto")
    assert mk.resolve_backend("cpu", "linear_masksub_loss") == "torch"


def test_each_loss_function_reports_its_own_calls(monkeypatch):
    # the single-branch losses share masksub_loss's ops: a call of one must not report for the others
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    calls = {
        "masksub_loss": lambda: mk.masksub_loss(logits, logits.clone(), target),
        "soft_target_cross_entropy": lambda: mk.soft_target_cross_entropy(logits, target),
        "soft_target_bce": lambda: mk.soft_target_bce(logits, target),
        "self_distillation_loss": lambda: mk.self_distillation_loss(logits, logits.clone()),
    }
    for name in calls:
        monkeypatch.setitem(_backend._last_used, name, "not yet")
    with mk.use_backend("torch"):
        for called, call in calls.items():
            call()
            assert mk.last_backend(called) == "torch"
            later = list(calls)[list(calls).index(called) + 1 :]
            assert all(mk.last_backend(name) == "not yet" for name in later), called


def test_loss_functions_report_nothing_while_traced_or_refused(monkeypatch):
    # fake CUDA tensors trace on a machine without a GPU (the ops' fakes run); a torch.func call is refused by the op
    from torch._subclasses.fake_tensor import FakeTensorMode

    names = ("soft_target_cross_entropy", "soft_target_bce", "self_distillation_loss")
    for name in names:
        monkeypatch.setitem(_backend._last_used, name, "not yet")
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match=r"does not support torch\.func"):
        torch.func.grad(lambda x: mk.soft_target_cross_entropy(x, target))(logits)
    assert all(mk.last_backend(name) == "not yet" for name in names)
    try:
        with FakeTensorMode():
            logits, target = torch.empty(4, 5, device="cuda"), torch.zeros(4, dtype=torch.int64, device="cuda")
            outs = (mk.soft_target_cross_entropy(logits, target), mk.soft_target_bce(logits, target),
                    mk.self_distillation_loss(logits, logits.clone()))  # fmt: skip
    except RuntimeError as exc:  # torch 2.8's dispatcher initialises CUDA for a custom op on fake CUDA tensors
        if torch.cuda.is_available() or "driver" not in str(exc):
            raise
        pytest.skip(f"this torch ({torch.__version__}) runs no custom op on fake CUDA tensors without a driver")
    assert all(out.device.type == "cuda" and out.shape == () for out in outs)
    assert all(mk.last_backend(name) == "not yet" for name in names)


def test_auto_runs_reference_on_cpu_tensors():
    with mk.use_backend("auto"):
        assert mk.resolve_backend("cpu") == "torch"


def test_cuda_device_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: False)
    for device in ("cuda", torch.device("cuda", 0)):
        with pytest.raises(RuntimeError, match="torch finds no CUDA device"):
            mk.resolve_backend(device)
    with pytest.raises(RuntimeError, match="torch finds no CUDA device"):
        mk.random_keep_indices(2, 8, 4, seed=0, device="cuda")


def test_bad_device_names_say_what_is_expected():
    with pytest.raises(ValueError, match=r"device must be a torch\.device or a device string"):
        mk.random_grid_mask(1, 4, 2, seed=0, device="gpu0")
    with pytest.raises(TypeError, match=r"device must be a torch\.device or a device string"):
        mk.random_keep_indices(1, 4, 2, seed=0, device=1.5)


def test_cuda_backend_refuses_cpu_tensors(monkeypatch):
    monkeypatch.setattr(_backend, "_requested", "cuda")
    monkeypatch.setattr(_backend, "_extensions", {})  # the tests' CUDA emulator takes CPU tensors
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        mk.resolve_backend("cpu")


def test_triton_backend_refuses_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "_requested", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        mk.resolve_backend("cpu")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key not in ("MASKSUB_BACKEND", "TRITON_INTERPRET")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_environment_variable_selects_backend():
    result = run_python("import masksub_kernels as mk; print(mk.get_backend())", MASKSUB_BACKEND="torch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def test_environment_variable_unknown_name_fails_clearly():
    result = run_python("import masksub_kernels as mk; mk.get_backend()", MASKSUB_BACKEND="nope")
    assert result.returncode != 0 and "unknown backend 'nope'" in result.stderr


def test_import_never_initialises_cuda():
    code = "import torch, masksub_kernels as mk; mk.get_backend(); print(torch.cuda.is_initialized())"
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_triton_without_gpu_or_interpreter_is_unavailable():
    code = "import masksub_kernels as mk; print(mk.available_backends())"
    result = run_python(code, TRITON_INTERPRET="0")
    assert result.returncode == 0, result.stderr
    assert "triton" not in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_triton_interpret_set_after_the_import_does_not_offer_the_cpu(monkeypatch):
    # helper-140: the kernels are made (for a GPU) at the import; a later TRITON_INTERPRET=1 offered triton for CPU
    # tensors, which then failed inside Triton ("0 active drivers")
    code = (
        "import os, masksub_kernels as mk\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "print(mk.available_backends())\n"
        "mk.set_backend('triton')\n"
        "mk.random_keep_indices(1, 4, 2, seed=0)\n"
    )
    result = run_python(code, TRITON_INTERPRET="0")
    assert "'triton'" not in result.stdout.splitlines()[0], result.stdout
    assert "after the import: the kernels were made for a GPU then" in result.stderr, result.stderr


def test_an_empty_backend_variable_is_unset():
    result = run_python("import masksub_kernels as mk; print(mk.get_backend())", MASKSUB_BACKEND="")
    assert result.returncode == 0 and result.stdout.strip() == "auto", result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter's switch")
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch):
    # helper-105: 'false' counted as on here (Triton: off), so triton was offered for CPU tensors and then failed
    # inside Triton ("0 active drivers")
    for value, interpreted in (
        ("1", True),
        ("true", True),
        ("ON", True),
        ("yes", True),
        ("Y", True),
        ("false", False),
        ("off", False),
        ("2", False),
        (" 1", False),  # helper-192: Triton strips no spaces (the library's reading did)
        ("1 ", False),
    ):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert mk.triton_interpreted() is interpreted, value
        import triton

        if hasattr(triton, "knobs"):  # Triton >= 3.4's own reading of the variable
            assert triton.knobs.runtime.interpret is interpreted, value


def test_torch_older_than_the_tested_releases_is_refused_at_import():
    for version, refused in (("2.5.1+cu124", True), ("2.7.0", True), ("2.8.0a0+git1234", False), ("2.14.1", False)):
        code = f"import torch; torch.__version__ = {version!r}; import masksub_kernels; print('imported')"
        result = run_python(code)
        if refused:
            assert result.returncode != 0 and "imported" not in result.stdout, version
            assert f"masksub_kernels needs torch >= 2.8, found {version}" in result.stderr, result.stderr[-2000:]
        else:
            assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


def test_triton_older_than_the_tested_releases_is_unavailable(monkeypatch):
    # Triton 3.3 drew other token selections than the reference under the interpreter (tools/gpu_versions_env.sh,
    # 2026-12-02): such a release must not be chosen, by auto or by name, and the reason says what to install
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)  # as on a GPU machine
    cases = (("3.3.1", False), ("2.3.0", False), ("unknown", False), ("3.4.0", True), ("3.10.0+git1a2b", True),
             ("3.5.0rc1", True))  # fmt: skip
    for version, usable in cases:
        monkeypatch.setattr(triton, "__version__", version)
        _backend._triton_missing.cache_clear()
        try:
            reason = _backend._triton_missing()
            assert (reason is None) == usable, (version, reason)
            assert ("triton" in mk.available_backends()) == usable
            if not usable:
                assert f"Triton {version} is older than 3.4" in reason and "install Triton >= 3.4" in reason
                assert _backend.resolve_backend("cuda") != "triton"  # auto: the extension or the reference
                with pytest.raises(RuntimeError, match=f"backend 'triton' is not available: Triton {version}"):
                    mk.set_backend("triton")
        finally:
            _backend._triton_missing.cache_clear()


ENTRY_POINT = "import runpy; runpy.run_module('masksub_kernels', run_name='__main__')"


def test_module_entry_point_describes_the_installation():
    result = run_python(ENTRY_POINT)
    assert result.returncode == 0, result.stderr
    assert "requested backend: auto" in result.stdout
    assert "tensors on cpu run: torch" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report")
def test_module_entry_point_under_the_interpreter_says_where_triton_runs():
    result = run_python(ENTRY_POINT, TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stderr
    assert "triton  available for tensors on: cpu (the CPU interpreter, TRITON_INTERPRET=1)" in result.stdout
    assert "tensors on cpu run: torch" in result.stdout  # auto keeps the reference on the CPU
    assert "cuda    unavailable: " in result.stdout


@pytest.mark.parametrize("name", ["tpu", "triton"])
def test_module_entry_point_fails_on_a_backend_that_cannot_run(name):
    if name == "triton" and torch.cuda.is_available():
        pytest.skip("triton runs here")
    bad = run_python(ENTRY_POINT, MASKSUB_BACKEND=name, TRITON_INTERPRET="0")
    assert bad.returncode == 2
    assert bad.stderr.startswith("python -m masksub_kernels: error: "), bad.stderr


def test_module_entry_point_explains_itself_and_refuses_arguments():
    helped = run_python("import sys; sys.argv = ['masksub_kernels', '--help']; " + ENTRY_POINT)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: python -m masksub_kernels") and "MASKSUB_BACKEND" in helped.stdout
    assert "tensors on cpu run" not in helped.stdout  # the help, not the report
    stray = run_python("import sys; sys.argv = ['masksub_kernels', '--backend', 'torch']; " + ENTRY_POINT)
    assert stray.returncode == 2 and "unrecognized arguments: --backend torch" in stray.stderr


# The compiled extension masksub_kernels._C (built where a CUDA toolkit is present, CI included)
needs_compiled_extension = pytest.mark.skipif(
    _backend._compiled_extension_missing() is not None, reason="masksub_kernels._C does not import"
)


@needs_compiled_extension
def test_cuda_backend_refuses_cpu_tensors_before_the_extension(monkeypatch):
    monkeypatch.setattr(_backend, "_extensions", {})  # the tests' CUDA emulator takes CPU tensors
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)  # as on a GPU machine
    with mk.use_backend("cuda"), pytest.raises(RuntimeError, match="the CUDA extension needs CUDA tensors"):
        mk.random_keep_indices(2, 10, 5, seed=1, device="cpu")


@needs_compiled_extension
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_backend_is_unavailable_without_a_gpu(monkeypatch):
    monkeypatch.setattr(_backend, "_extensions", {})
    assert "cuda" not in mk.available_backends()
    with pytest.raises(RuntimeError, match="imports, but this machine has no CUDA device"):
        mk.set_backend("cuda")


@pytest.mark.parametrize("name", ["torch", *(["triton"] if "triton" in mk.available_backends() else [])])
def test_ops_compute_under_autocast_what_they_compute_outside_it(monkeypatch, device, name):
    """Implementations run with autocast off (ops/_common.py): under bf16 autocast the fused-linear loss's reference
    matmuls stayed bf16 (its documented fp32 logits were not) and its dW accumulation got bf16 and fp32 operands, a
    RuntimeError on CUDA (masksub-train-mlm --amp bf16 with the torch backend, H200, 2026-11-30)."""
    from masksub_kernels.ops import _linear_loss_matmuls as matmuls

    operands = []
    real = matmuls.add_matmul
    monkeypatch.setattr(matmuls, "add_matmul", lambda acc, a, b: operands.append((a.dtype, b.dtype)) or real(acc, a, b))
    gen = torch.Generator().manual_seed(0)
    h, hs = (torch.randn(12, 16, generator=gen).to(device, torch.bfloat16) for _ in range(2))
    weight = (torch.randn(40, 16, generator=gen) / 4).to(device, torch.bfloat16)
    bias = torch.zeros(40, device=device, dtype=torch.bfloat16)
    target = torch.randint(0, 40, (12,), generator=gen).to(device)
    target[::3] = -100
    results = []
    for enabled in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (h, hs, weight, bias)]
        with mk.use_backend(name), torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            out = mk.linear_masksub_loss(*leaves, target, ignore_index=-100)
        out.loss.backward()
        results.append([out.loss, *(t.grad for t in leaves)])
    for outside, inside in zip(*results):
        assert torch.equal(inside, outside)
    assert operands and all(a == b for a, b in operands), operands


def test_resolve_backend_checks_its_arguments(monkeypatch):
    # helper-140: implemented='triton' was read letter by letter, op=5 a bare TypeError, and auto answered torch for
    # an op without it
    monkeypatch.setattr(_backend, "_requested", "torch")
    with pytest.raises(TypeError, match="implemented must be an iterable of backend names, got 'triton'"):
        mk.resolve_backend("cpu", "my_op", "triton")
    with pytest.raises(ValueError, match="implemented: 'tpu' is not one of triton, cuda, torch"):
        mk.resolve_backend("cpu", "my_op", ["tpu"])
    with pytest.raises(ValueError, match="implemented must name at least one backend"):
        mk.resolve_backend("cpu", "my_op", [])
    with pytest.raises(TypeError, match="op must be a name or an iterable of names, got 5"):
        mk.resolve_backend("cpu", 5)
    with pytest.raises(ValueError, match="op: 5 is not a name"):
        mk.resolve_backend("cpu", ["my_op", 5])
    with pytest.raises(RuntimeError, match="backend 'torch' has no implementation of my_op: select one of cuda"):
        mk.resolve_backend("cpu", "my_op", ["cuda"])
    monkeypatch.setattr(_backend, "_requested", "auto")
    monkeypatch.setattr(_backend, "_extensions", {})  # the tests' CUDA emulator takes CPU tensors
    assert mk.resolve_backend("cpu", "my_op", ["torch", "triton"]) == "torch"
    with pytest.raises(RuntimeError, match="no backend of cuda can take tensors on cpu here"):
        mk.resolve_backend("cpu", "my_op", ["cuda"])  # was 'torch', which the op lacks
    monkeypatch.setattr(_backend, "_extensions", {"cpu": object()})  # an extension for CPU tensors (the emulator)
    with pytest.raises(RuntimeError, match="no backend of cuda can take tensors on cpu here"):
        mk.resolve_backend("cpu", "my_op", ["cuda"])  # auto never takes it for another device type than CUDA
    if mk.triton_interpreted():  # the interpreter: auto takes the op's one backend for CPU tensors (a GPU machine's
        # Triton takes CUDA tensors only: helper-147)
        assert mk.resolve_backend("cpu", "my_triton_op", ["triton"]) == "triton"
        assert mk.last_backend("my_triton_op") == "triton"


def test_fake_tensors_outside_their_mode_run_the_fake_on_every_backend(backend):  # helper-164: C12
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 1 + 8, 4)
    y, ids = mk.random_token_select(x, 0.5, seed=1)  # no mode active: only the arguments' type says "tracing"
    assert isinstance(y, FakeTensor) and y.shape == (2, 5, 4) and ids.shape == (2, 4)


def test_the_triton_refusal_of_meta_tensors_gives_no_interpreter_hint():
    # helper-164: with TRITON_INTERPRET=1 set before the import, a meta tensor was told the variable "was set after
    # the import"; the interpreter's hint is for CPU tensors
    if "triton" not in mk.available_backends():
        pytest.skip("Triton cannot run here")
    with mk.use_backend("triton"), pytest.raises(RuntimeError) as refused:
        mk.resolve_backend(torch.device("meta"), "masksub_loss")
    assert "need CUDA tensors" in str(refused.value) and "TRITON_INTERPRET" not in str(refused.value)


# helper-177's mutation audit of _backend.py


def test_backend_variable_is_read_without_surrounding_spaces(monkeypatch):
    # kills _backend.py:204 `.strip() or "auto"` -> `or "auto"` (MASKSUB_BACKEND=' torch ' from a shell script, and
    # a blank value, which is unset as the empty one is)
    for value, expected in ((" torch ", "torch"), ("  ", "auto")):
        monkeypatch.setattr(_backend, "_requested", None)
        monkeypatch.setenv("MASKSUB_BACKEND", value)
        assert _backend.get_backend() == expected, value


def test_backend_triton_at_exactly_the_oldest_tested_release_is_usable(monkeypatch):
    # kills _backend.py:99 `_version_tuple(...) < MIN_TRITON` -> `<=`: only a two-part version ("3.4", as a
    # source build may report) tells them apart, since (3, 4, 0) > (3, 4); the floor itself must stay usable
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)
    monkeypatch.setattr(triton, "__version__", "3.4")
    _backend._triton_missing.cache_clear()
    try:
        assert _backend._triton_missing() is None
    finally:
        _backend._triton_missing.cache_clear()


# helper-187's mutation audit of `python -m masksub_kernels` and the parts of _backend it reads


def _report(monkeypatch, requested="auto"):
    monkeypatch.setattr(_backend, "_requested", requested)
    monkeypatch.setattr(_backend, "_extensions", {})  # the tests' CUDA emulator (MASKSUB_CUDA_EMULATOR) serves cpu
    return entry.describe().splitlines()


def test_entry_point_lists_the_reference_for_every_device(monkeypatch):
    # M08 (the backends listed without "torch"), B01 (_serves("torch", ...) not always True: the torch line empty
    # once no extension is registered), M02 (the interpreter's note on every backend's cpu, not triton's only)
    lines = _report(monkeypatch)
    devices = ", ".join(["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    assert f"  torch   available for tensors on: {devices}" in lines, lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report")
def test_entry_point_says_when_there_is_no_cuda_device(monkeypatch):
    # M04 (`if not torch.cuda.is_available()` inverted: the note missing here, printed on GPU machines)
    lines = _report(monkeypatch)
    assert lines[-1] == (
        "no CUDA device here: under `auto` every op runs the torch backend (PyTorch code), not the kernels"
    ), lines  # not "its PyTorch reference": the CPU path of the loss, token select and Swin masks is its own
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine: no such note
    assert not any(line.startswith("no CUDA device here") for line in entry.describe().splitlines())


def test_entry_point_reports_a_device_the_requested_backend_cannot_take_as_a_line(monkeypatch):
    # M03 (`except RuntimeError` -> `except ValueError` around resolve_backend: the report aborts instead)
    lines = _report(monkeypatch, requested="cuda")  # set before the extension went away: CPU tensors refused
    assert any(line.startswith("tensors on cpu: error: ") for line in lines), lines
    assert entry.main([]) == 0


def test_triton_interpret_unset_is_off(monkeypatch):
    # B05 (TRITON_INTERPRET's default "0" -> "1": an unset variable would count as the interpreter)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert mk.triton_interpreted() is False


def test_cuda_backend_says_the_extension_is_not_built_before_the_missing_gpu(monkeypatch):
    # B08 (drop `reason is None and`: the "imports, but ... no CUDA device" reason replaced the import error)
    monkeypatch.setattr(_backend, "_extensions", {})
    monkeypatch.setattr(_backend, "_compiled_extension_missing", lambda: "the extension is not built")
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: False)
    assert _backend._cuda_missing() == "the extension is not built"


# kills _backend.py:154 `_extensions.pop(device_type, None)` -> `pass` (register_extension(..., None) ignored)
def test_register_extension_of_none_takes_the_extension_away(monkeypatch):
    # the docstring's "None removes it" (the tests' emulator is taken away so): kept, the cuda backend went on
    # taking CPU tensors after the extension that served them was removed
    monkeypatch.setattr(_backend, "_extensions", {})
    monkeypatch.setattr(_backend, "_requested", "cuda")
    _backend.register_extension("cpu", types.SimpleNamespace())
    assert mk.resolve_backend("cpu") == "cuda"
    _backend.register_extension("cpu", None)
    assert "cpu" not in _backend._extensions
    with pytest.raises(
        RuntimeError,
        match=r"needs CUDA tensors \(extensions registered for other device types: none",
    ):
        mk.resolve_backend("cpu")
    _backend.register_extension("cpu", None)  # removing what is not there: nothing to do, no error


# kills _backend.py:305 `for name in ops:` -> `for name in ops[:1]:` (only an op's first name recorded)
def test_an_op_with_several_names_records_its_backend_under_each(monkeypatch):
    # random_token_select's one op reports under 'random_token_select' and 'gather_tokens' (its gather), and a
    # caller's resolve_backend may name several ops: recorded under the first name only, last_backend('gather_tokens')
    # went on naming an older call's backend
    monkeypatch.setattr(
        _backend,
        "_last_used",
        {"gather_tokens": "not yet", "random_token_select": "not yet"},
    )
    with mk.use_backend("torch"):
        mk.random_token_select(torch.randn(2, 9, 4, device=DEVICE), 0.5, seed=0)
        mk.resolve_backend("cpu", ["my_first_op", "my_second_op"])
    assert mk.last_backend("random_token_select") == mk.last_backend("gather_tokens") == "torch"
    assert mk.last_backend("my_first_op") == mk.last_backend("my_second_op") == "torch"


# kills _backend.py:100 `_version_tuple(version.lstrip("v"))` -> `_version_tuple(version)` (a 'v' prefix)
def test_backend_triton_version_with_a_leading_v_is_read_as_its_number(monkeypatch):
    # 'v3.6.0' (a tag-style version string) parsed as () without the strip, older than every release: a usable
    # Triton refused, and auto fell back to the extension or the reference on a GPU
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)  # as on a GPU machine
    _backend._triton_missing.cache_clear()
    try:
        for version, usable in (("v3.6.0", True), ("v3.3.1", False)):
            monkeypatch.setattr(triton, "__version__", version)
            _backend._triton_missing.cache_clear()
            assert (_backend._triton_missing() is None) == usable, version
    finally:
        _backend._triton_missing.cache_clear()


# kills _backend.py:352 `return dict(_last_used)` -> `return _last_used` (the process's record handed out)
def test_last_backend_of_all_ops_is_a_copy(monkeypatch):
    # a caller's changes to the returned dict (e.g. clearing it between two measurements) must not rewrite what
    # last_backend(op) answers afterwards
    monkeypatch.setattr(_backend, "_last_used", {})
    with mk.use_backend("torch"):
        mk.gather_tokens(torch.randn(1, 5, 2, device=DEVICE), torch.tensor([[0, 2]], device=DEVICE))
    every = mk.last_backend()
    assert every == {"gather_tokens": "torch"}
    every.clear()
    every["masksub_loss"] = "cuda"
    assert mk.last_backend("gather_tokens") == "torch" and mk.last_backend("masksub_loss") is None


def test_a_missing_extension_says_what_the_build_lacked_and_how_to_see_why(monkeypatch):
    # helper-335: "not built or does not import" for both, with no word on why an install skipped the build
    real, error = _backend.importlib.import_module, ModuleNotFoundError("No module", name="masksub_kernels._C")

    def absent(name, *args):
        if name == "masksub_kernels._C":
            raise error
        return real(name, *args)

    monkeypatch.setattr(_backend.importlib, "import_module", absent)
    _backend._compiled_extension_missing.cache_clear()
    try:
        reason = _backend._compiled_extension_missing()
        assert reason.startswith("the CUDA extension masksub_kernels._C is not built: "), reason
        assert "`pip install -v`" in reason and "MASKSUB_BUILD_CUDA=1 pip install --no-build-isolation" in reason
        error = ImportError("_C.so: undefined symbol: _ZN3c10")
        _backend._compiled_extension_missing.cache_clear()
        assert _backend._compiled_extension_missing().startswith(
            "the CUDA extension masksub_kernels._C does not import (_C.so: undefined symbol: _ZN3c10); rebuild it"
        )
    finally:
        monkeypatch.setattr(_backend.importlib, "import_module", real)
        _backend._compiled_extension_missing.cache_clear()
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(_backend.shutil, "which", lambda name: None)
    assert _backend._build_obstacle("/nonexistent").startswith("no CUDA toolkit here: no nvcc on PATH")
    monkeypatch.setattr(_backend.shutil, "which", lambda name: "/opt/cuda/bin/nvcc")
    assert "install was told to skip it (MASKSUB_BUILD_CUDA=0)" in _backend._build_obstacle("/nonexistent")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "is a CPU-only build: the extension needs a CUDA build of torch" in _backend._build_obstacle()
    header = entry.describe().splitlines()[0]
    assert header.endswith(f"(torch {torch.__version__}, a CPU-only build)")  # not "CUDA None"
