"""A masksub_kernels._C file cut short (an interrupted copy or build) is refused before it is loaded: the dynamic
loader maps its segments and faults on the missing pages (SIGBUS: ``python -m masksub_kernels`` died without a
word). _backend._cut_short_library reads the ELF headers only."""

import importlib.util
import struct
import sys
import types

import pytest

from masksub_kernels import _backend


@pytest.fixture(autouse=True)
def _not_loaded(monkeypatch):
    """The check is for a _C not yet loaded (a loaded one is not mapped again): this process's own, where it was
    imported, set aside for the test."""
    monkeypatch.delitem(sys.modules, "masksub_kernels._C", raising=False)


def test_a_loaded_or_stand_in_extension_is_not_read_again(monkeypatch):
    # a stand-in module (a test's fake _C, __spec__ None) made find_spec raise ValueError out of the check
    monkeypatch.setitem(sys.modules, "masksub_kernels._C", types.ModuleType("masksub_kernels._C"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: pytest.fail("find_spec called"))
    assert _backend._cut_short_library() is None
    monkeypatch.delitem(sys.modules, "masksub_kernels._C")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: (_ for _ in ()).throw(ValueError("__spec__ is None")))
    assert _backend._cut_short_library() is None


def _elf(path, *, file_size: int, segment_end: int, sections_at: int = 256) -> str:
    """A 64-bit little-endian ELF header, one program header (PT_LOAD at 0, ``segment_end`` bytes in the file) and a
    section table of 2 entries at ``sections_at``; the file written ``file_size`` bytes long."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", header, 0x20, 64, sections_at)  # e_phoff, e_shoff
    struct.pack_into("<HHHH", header, 0x36, 56, 1, 64, 2)  # e_phentsize, e_phnum, e_shentsize, e_shnum
    program = bytearray(56)
    struct.pack_into("<II", program, 0, 1, 5)  # PT_LOAD, R+X
    struct.pack_into("<QQQQ", program, 8, 0, 0, 0, segment_end)  # p_offset, p_vaddr, p_paddr, p_filesz
    data = bytes(header + program)
    path.write_bytes(data[:file_size] + bytes(max(0, file_size - len(data))))
    return str(path)


@pytest.fixture
def extension_at(monkeypatch):
    """Point find_spec('masksub_kernels._C') at a file of the test's; the import must not be reached."""

    def point(origin):
        spec = types.SimpleNamespace(origin=origin)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "masksub_kernels._C" else None)
        _backend._compiled_extension_missing.cache_clear()
        monkeypatch.setattr(_backend.importlib, "import_module", lambda name: pytest.fail(f"imported {name}"))

    yield point
    _backend._compiled_extension_missing.cache_clear()


def test_a_library_shorter_than_its_segments_is_refused_before_the_import(tmp_path, extension_at):
    extension_at(_elf(tmp_path / "_C.so", file_size=4096, segment_end=10_000))
    reason = _backend._compiled_extension_missing()
    assert reason.startswith(f"the CUDA extension {tmp_path / '_C.so'} is cut short (4096 bytes, its ELF headers need ")
    assert "10000: an interrupted copy or build), and loading it would kill the process (SIGBUS): rebuild" in reason


def test_a_library_shorter_than_its_section_table_is_refused(tmp_path, extension_at):
    extension_at(_elf(tmp_path / "_C.so", file_size=300, segment_end=200, sections_at=256))  # table ends at 384
    assert "(300 bytes, its ELF headers need 384:" in _backend._compiled_extension_missing()


@pytest.mark.parametrize(("file_size", "segment_end"), [(10_000, 10_000), (20_000, 10_000)])
def test_a_whole_library_goes_on_to_the_import(tmp_path, monkeypatch, file_size, segment_end):
    path = _elf(tmp_path / "_C.so", file_size=file_size, segment_end=segment_end)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=path))
    assert _backend._cut_short_library() is None


@pytest.mark.parametrize("content", [b"", b"\x7fEL", b"not a library at all" * 10, b"\x7fELF\x01\x01" + bytes(58)])
def test_what_is_not_a_64_bit_elf_is_left_to_the_import(tmp_path, monkeypatch, content):
    # (the import refuses those with its own ImportError: invalid ELF header, file too short, wrong class)
    (tmp_path / "_C.so").write_bytes(content)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=str(tmp_path / "_C.so")))
    assert _backend._cut_short_library() is None


@pytest.mark.parametrize("ident", [b"\x01\x01", b"\x02\x02"])  # ELFCLASS32; big-endian
def test_a_cut_short_elf_of_another_class_or_byte_order_is_left_to_the_import(tmp_path, monkeypatch, ident):
    # helper-341's mutation audit: the header of a 32-bit or big-endian ELF is not read as a 64-bit little-endian one
    # (the one tested above was all zeros past its magic: no extent, whatever it was read as)
    path = tmp_path / "_C.so"
    _elf(path, file_size=4096, segment_end=10_000)
    data = bytearray(path.read_bytes())
    data[4:6] = ident
    path.write_bytes(data)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=str(path)))
    assert _backend._cut_short_library() is None


def test_no_extension_file_is_no_reason_here(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _backend._cut_short_library() is None


def test_the_built_extension_is_whole():
    # where this checkout has a _C (CI builds it): its own headers agree with its size
    spec = importlib.util.find_spec("masksub_kernels._C")
    if spec is None:
        pytest.skip("no built masksub_kernels._C here")
    assert _backend._cut_short_library() is None


def _elf_of(path, size: int, segments, sections=(0, 0)) -> str:
    """A 64-bit little-endian ELF header, its program headers right after it (PT_LOAD, (p_offset, p_filesz) each)
    and a section table of (offset, count) entries; the file written ``size`` bytes long."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", header, 0x20, 64, sections[0])
    struct.pack_into("<HHHH", header, 0x36, 56, len(segments), 64, sections[1])
    table = b"".join(struct.pack("<IIQQQQ", 1, 5, offset, 0, 0, filesz) + bytes(16) for offset, filesz in segments)
    data = bytes(header) + table
    path.write_bytes(data[:size] + bytes(max(0, size - len(data))))
    return str(path)


@pytest.mark.parametrize(
    ("size", "segments"),
    [
        (120, [(0, 4096)]),  # the program headers end the file: their segments are still read
        (4100, [(4096, 100)]),  # a segment's end is its offset plus its size in the file
        (4096, [(0, 1024), (1024, 8192)]),  # every segment, not the first alone
    ],
)
def test_a_segment_past_the_files_end_is_found(tmp_path, extension_at, size, segments):
    # helper-340's mutation audit: the test files' one segment at offset 0, table well inside, did not tell these
    extension_at(_elf_of(tmp_path / "_C.so", size, segments))
    end = max(offset + filesz for offset, filesz in segments)
    assert f"is cut short ({size} bytes, its ELF headers need {end}:" in _backend._compiled_extension_missing()


def test_a_module_the_extension_needs_that_is_missing_is_not_a_missing_build(monkeypatch):
    # a ModuleNotFoundError for another module (one _C imports) is a file that does not import, not "not built"
    def needs_another(name, *args):
        raise ModuleNotFoundError("No module named 'torch._masksub_helper'", name="torch._masksub_helper")

    monkeypatch.setattr(_backend, "_cut_short_library", lambda: None)
    monkeypatch.setattr(_backend.importlib, "import_module", needs_another)
    _backend._compiled_extension_missing.cache_clear()
    try:
        reason = _backend._compiled_extension_missing()
    finally:
        _backend._compiled_extension_missing.cache_clear()
    assert reason.startswith("the CUDA extension masksub_kernels._C does not import (No module named 'torch._"), reason


@pytest.mark.parametrize("where", ["CUDA_PATH", "default"])
def test_a_toolkit_in_cuda_path_or_the_default_home_is_found(tmp_path, monkeypatch, where):
    # _build_obstacle looks where setup.py does: CUDA_HOME, CUDA_PATH, the default home, not only nvcc on PATH
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(_backend.torch.version, "cuda", "13.0")
    monkeypatch.setattr(_backend.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    if where == "CUDA_PATH":
        monkeypatch.setenv("CUDA_PATH", str(tmp_path))
    obstacle = _backend._build_obstacle(str(tmp_path) if where == "default" else "/nonexistent")
    assert obstacle.startswith(f"torch {_backend.torch.__version__} and a CUDA toolkit are here"), obstacle


def test_a_rocm_torch_is_named_so_not_cpu_only(monkeypatch):
    # helper-339: torch.version.cuda is None on a ROCm build too, which the report and the reason called CPU-only
    import torch

    from masksub_kernels import __main__ as entry

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.4.1", raising=False)
    assert "is a ROCm (HIP) build: the extension needs a CUDA build of torch" in _backend._build_obstacle()
    assert entry._torch_build() == "ROCm 6.4.1"
    monkeypatch.setattr(torch.version, "hip", None)
    assert entry._torch_build() == "a CPU-only build"
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert entry._torch_build() == "CUDA 12.8"
