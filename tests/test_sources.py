"""masksub_kernels/_sources.py: the digest of csrc/ that setup.py stamps into _C, and the package's refusal of an
extension built from other sources than its checkout's csrc/ (helper-328: a stale _C ran the old kernels silently)."""

import shutil
import sys
import types
from pathlib import Path

import pytest

import masksub_kernels as mk
from masksub_kernels import _backend
from masksub_kernels._sources import source_files, sources_digest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def copy_csrc(tmp_path: Path) -> Path:
    return Path(shutil.copytree(CSRC, tmp_path / "csrc"))


def test_the_digest_follows_what_the_real_build_compiles(tmp_path):
    csrc = copy_csrc(tmp_path)
    before = sources_digest(csrc)
    assert before == sources_digest(CSRC) and before.startswith("s") and len(before) == 17  # a C identifier
    assert {p.name for p in source_files(csrc)} >= {"bindings.cpp", "token_select.cu", "philox.cuh"}
    (csrc / "emulator" / "emulator.h").write_text("// the tests' CPU twin: not in the extension\n")
    assert sources_digest(csrc) == before
    for changed in ("token_select.cu", "philox.cuh", "platform/masksub_platform.h", "bindings.cpp"):
        copy = Path(shutil.copytree(csrc, tmp_path / changed.replace("/", "_")))
        (copy / changed).write_text((copy / changed).read_text() + "\n// changed\n")
        assert sources_digest(copy) != before, changed
    (csrc / "token_select.cu").rename(csrc / "token_select2.cu")  # a renamed file is another build
    assert sources_digest(csrc) != before


def fake_extension(digest: str | None) -> types.ModuleType:
    module = types.ModuleType("masksub_kernels._C")
    module.__file__ = "/somewhere/_C.so"
    if digest is not None:
        module.SOURCES_DIGEST = digest
    return module


def test_an_extension_from_other_sources_is_refused_with_the_reason(tmp_path):
    csrc = copy_csrc(tmp_path)
    assert _backend.stale_extension(fake_extension(sources_digest(csrc)), csrc) is None
    stale = _backend.stale_extension(fake_extension("s0123456789abcdef"), csrc)
    assert "/somewhere/_C.so was built from other sources than" in stale and "digest s0123456789abcdef" in stale
    assert "rebuild it with `MASKSUB_BUILD_CUDA=1 pip install --no-build-isolation -e .`" in stale
    assert "no digest recorded" in _backend.stale_extension(fake_extension(None), csrc)  # built before the stamp
    # bindings.cpp compiled without setup.py's -DMASKSUB_SOURCES_DIGEST (a user's own cpp_extension.load) stringifies
    # the macro's name: not a digest
    unstamped = _backend.stale_extension(fake_extension("MASKSUB_SOURCES_DIGEST"), csrc)
    assert "built without setup.py: no digest recorded" in unstamped and "digest MASKSUB" not in unstamped
    # an installed package (no csrc/ beside it): its extension was built with it; a csrc/ without bindings.cpp beside
    # site-packages (another distribution's) is not this checkout's (helper-333)
    assert _backend.stale_extension(fake_extension(None), tmp_path / "no-csrc") is None
    (tmp_path / "other" / "csrc").mkdir(parents=True)
    (tmp_path / "other" / "csrc" / "kernel.cu").write_text("// another package's\n")
    assert _backend.stale_extension(fake_extension(None), tmp_path / "other" / "csrc") is None


def test_hidden_files_and_dangling_links_in_csrc_are_no_sources(tmp_path):
    # helper-333: an editor's lock symlink (.#bindings.cpp, dangling) crashed available_backends() with a traceback
    csrc = copy_csrc(tmp_path)
    before = sources_digest(csrc)
    (csrc / ".#bindings.cpp").symlink_to(tmp_path / "nowhere")
    (csrc / ".hidden.cu").write_text("// an editor's backup\n")
    (csrc / "gone.cuh").symlink_to(tmp_path / "nowhere-either")
    assert sources_digest(csrc) == before
    assert _backend.stale_extension(fake_extension(before), csrc) is None


def test_a_stale_extension_is_what_the_cuda_backend_reports_missing(monkeypatch):
    missing = _backend._compiled_extension_missing.__wrapped__  # (the cached one keeps this process's answer)
    monkeypatch.setitem(sys.modules, "masksub_kernels._C", fake_extension("s0123456789abcdef"))
    assert "was built from other sources than" in missing()
    monkeypatch.setitem(sys.modules, "masksub_kernels._C", fake_extension(sources_digest(CSRC)))
    assert missing() is None
    monkeypatch.setitem(sys.modules, "masksub_kernels._C", fake_extension(None))
    monkeypatch.setattr(_backend, "_compiled_extension_missing", missing)
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(_backend, "_extensions", {})  # (the tests' CUDA emulator)
    assert "cuda" not in mk.available_backends()
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: .* was built from other sources"):
        mk.set_backend("cuda")


def test_the_emulator_stamps_the_digest_as_the_real_build_does():
    from conftest import CUDA_EMULATED

    from tools import cuda_emulator

    assert f"-DMASKSUB_SOURCES_DIGEST={sources_digest(CSRC)}" in cuda_emulator.compile_flags()
    if CUDA_EMULATED:  # csrc/ compiled for the CPU: bindings.cpp exposes what it was given
        assert _backend._extensions["cpu"].SOURCES_DIGEST == sources_digest(CSRC)
