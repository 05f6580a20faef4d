"""setup.py's decisions: where the CUDA toolkit is (wrapper scripts included), when the extension is built."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cuda_home import find_cuda_home

ROOT = Path(__file__).resolve().parents[1]


def load_setup_module():
    spec = importlib.util.spec_from_file_location("masksub_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, runs no setup()
    return module


def fake_toolkit(root: Path) -> Path:
    nvcc = root / "cuda-13.0" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho real nvcc\n")
    nvcc.chmod(0o755)
    return root / "cuda-13.0"


def test_wrapper_script_is_followed_to_the_real_toolkit(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path)
    wrapper = tmp_path / "wrapper" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert find_cuda_home(str(wrapper), fallback="") == toolkit


def test_real_nvcc_gives_its_parent_and_cuda_home_wins(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path)
    (toolkit / "bin" / "nvcc").write_bytes(b"\x7fELF binary")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert find_cuda_home(str(toolkit / "bin" / "nvcc"), fallback="") == toolkit
    other = fake_toolkit(tmp_path / "other")
    monkeypatch.setenv("CUDA_HOME", str(other))
    assert find_cuda_home(str(toolkit / "bin" / "nvcc"), fallback="") == other


def test_no_toolkit_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert find_cuda_home(str(tmp_path / "missing-nvcc"), fallback=str(tmp_path / "nowhere")) is None


def test_build_switch_zero_skips_and_says_why(monkeypatch):
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", "0")
    assert setup.cuda_extension_plan() == (False, "MASKSUB_BUILD_CUDA=0")
    assert setup.extension_modules() == ([], {})


def test_forced_build_without_toolkit_fails_loudly(monkeypatch):
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_BUILD_CUDA", "1")
    monkeypatch.setattr(setup, "find_cuda_home", lambda: None)
    with pytest.raises(SystemExit, match="MASKSUB_BUILD_CUDA=1 but the extension cannot be built"):
        setup.extension_modules()


def test_setup_py_skips_the_extension_with_a_message():
    env = {**os.environ, "MASKSUB_BUILD_CUDA": "0"}
    result = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "masksub_kernels"
    assert "skipping the CUDA extension masksub_kernels._C (MASKSUB_BUILD_CUDA=0)" in result.stderr
