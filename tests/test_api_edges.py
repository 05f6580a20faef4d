"""The public API's edges that helper-303's probe found: the package without Triton, use_backend under a bad
MASKSUB_BACKEND, last_backend's and num_kept_tokens' argument types, `python -m masksub_kernels`'s arguments."""

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels import __main__ as entry
from masksub_kernels import _backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# run with a `triton` that does not import (CPU-only torch, macOS, Windows: pyproject installs it on Linux x86_64 only)
WITHOUT_TRITON = f"""
import torch, masksub_kernels as mk
from masksub_kernels._triton import HAS_TRITON
assert not HAS_TRITON and "triton" not in mk.available_backends(), mk.available_backends()
x = torch.randn(2, 9, 4, device="{DEVICE}")
with mk.use_backend("torch"):
    y, ids = mk.random_token_select(x, 0.5, seed=3)
assert y.shape == (2, 5, 4), y.shape
print(mk.last_backend("random_token_select"), mk.resolve_backend("cpu"))
"""


def test_the_package_imports_and_runs_without_triton(tmp_path):
    # helper-303: `REDUCE_LANES = tl.constexpr(1024)` raised TypeError at import where Triton is not installed
    (tmp_path / "triton.py").write_text("raise ImportError('no Triton here (the test)')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MASKSUB_BACKEND", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), REPO, env.get("PYTHONPATH", "")])
    ran = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["torch", "torch"]  # the op's backend; auto's for CPU tensors
    entry_point = [sys.executable, "-m", "masksub_kernels"]
    report = subprocess.run(entry_point, capture_output=True, text=True, env=env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "triton  unavailable: the 'triton' package does not import (no Triton here (the test))" in report.stdout


def test_use_backend_works_under_a_bad_backend_variable(monkeypatch):
    # helper-303: use_backend read MASKSUB_BACKEND first, so a bad value refused `with use_backend("torch")`
    monkeypatch.setenv("MASKSUB_BACKEND", "nope")
    monkeypatch.setattr(_backend, "_requested", None)
    with mk.use_backend("torch"):
        assert mk.get_backend() == "torch"
        mk.num_kept_tokens(4, 0.5)
    assert _backend._requested is None  # restored as it was: the variable still unread
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        mk.get_backend()
    monkeypatch.setattr(_backend, "_requested", "auto")
    with mk.use_backend("torch"):
        mk.set_backend("auto")  # a change inside the block is undone too
    assert _backend._requested == "auto"


def test_last_backend_refuses_a_non_name_and_lists_the_public_ops():
    with pytest.raises(TypeError, match=r"op must be an op's name \(str\) or None, got 3"):
        mk.last_backend(3)
    with pytest.raises(ValueError, match="no op is named 'gather'") as refused:
        mk.last_backend("gather")
    listed = str(refused.value).split("the ops: ")[1].split(" (")[0].split(", ")
    assert "gather_tokens" in listed and set(listed) <= set(mk.__all__)  # not scatter_tokens, *_backward
    assert mk.last_backend("scatter_tokens") in (None, *_backend.BACKEND_NAMES)  # the internal ones still answer


def test_num_kept_tokens_refuses_a_unit_that_is_not_a_str():
    with pytest.raises(TypeError, match="unit must be a str"):
        mk.num_kept_tokens(10, 0.99, unit=3)
    assert mk.num_kept_tokens(10, 0.5, unit="grid cells") == 5


@pytest.mark.parametrize("argv", [["foo", "--help"], ["--hel"], ["--help", "-x"]])
def test_module_entry_point_refuses_any_argument_but_help(argv, capsys):
    # helper-303: `foo --help` printed the help and exited 0, and argparse took `--hel` for --help
    with pytest.raises(SystemExit) as exited:
        entry.main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "unrecognized arguments: " in captured.err and captured.out == ""


# helper-309's mutation audit
def test_the_stand_in_tl_gives_back_what_it_is_called_with(monkeypatch):
    # kills _triton.py _StandIn.__new__'s `return value` -> `return None` (import still worked, but the module-level
    # `REDUCE_LANES = tl.constexpr(1024)` was None without Triton, against the docstring's contract); in-process: the
    # file loaded as a module of its own with `import triton` failing, the package untouched
    monkeypatch.setitem(sys.modules, "triton", None)  # (None in sys.modules: an ImportError)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    path = os.path.join(REPO, "masksub_kernels", "_triton.py")
    spec = importlib.util.spec_from_file_location("_triton_without_triton", path)
    stand_in = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stand_in)
    assert not stand_in.HAS_TRITON and stand_in.tl.constexpr(1024) == 1024

    def kernel(x: stand_in.tl.constexpr):  # an annotation evaluates
        return x

    assert stand_in.tl.some_decorator(kernel) is kernel and stand_in.jit(kernel) is kernel
    assert stand_in.jit(do_not_specialize=("seed",))(kernel) is kernel


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["-h", "--help"]])
def test_module_entry_point_takes_both_help_flags(argv, capsys):
    # kills __main__.py `arg not in ("-h", "--help")` -> `arg not in ("--help",)` (`python -m masksub_kernels -h`
    # refused as an unrecognized argument; the existing tests cover --help and the refusals only)
    with pytest.raises(SystemExit) as exited:
        entry.main(argv)
    captured = capsys.readouterr()
    assert exited.value.code == 0 and captured.err == ""
    assert captured.out.startswith("usage: ") and "MASKSUB_BACKEND" in captured.out
