"""No CUDA kernel of csrc/ spills registers (python -m tools.check_spills: the built extension's cubins read; a
source compiled where nvcc is found).

The parser is also checked on canned ptxas output, which needs no toolkit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import check_spills

CSRC = Path(__file__).resolve().parents[1] / "csrc"

PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4fastPf' for 'sm_90a'
ptxas info    : Function properties for _Z4fastPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 28 registers, used 1 barriers, 5312 bytes smem
ptxas info    : Compiling entry function '_Z4slowPf' for 'sm_90a'
ptxas info    : Function properties for _Z4slowPf
    824 bytes stack frame, 1072 bytes spill stores, 1076 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 8 bytes cumulative stack size
"""

SPILLING_SOURCE = """\
// 64 live accumulators under a 32-register cap (1024 threads x 2 blocks per SM): ptxas must spill.
__global__ void __launch_bounds__(1024, 2) spilling_kernel(const float* x, float* y, int n) {
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = x[threadIdx.x + i * n];
  for (int k = 0; k < n; ++k) {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = acc[i] * x[k] + acc[(i + 1) % 64];
  }
#pragma unroll
  for (int i = 0; i < 64; ++i) y[threadIdx.x + i * n] = acc[i];
}
"""

needs_nvcc = pytest.mark.skipif(check_spills.find_cuda_home() is None, reason="no CUDA toolkit (nvcc) found")


def test_parse_ptxas_records_each_function():
    records = {r["symbol"]: r for r in check_spills.parse_ptxas(PTXAS_OUTPUT, "x.cu")}
    assert set(records) == {"_Z4fastPf", "_Z4slowPf"}
    fast, slow = records["_Z4fastPf"], records["_Z4slowPf"]
    assert (fast["registers"], fast["smem"], fast["spill_stores"], fast["spill_loads"]) == (28, 5312, 0, 0)
    assert (slow["registers"], slow["stack"], slow["spill_stores"], slow["spill_loads"]) == (32, 824, 1072, 1076)
    assert slow["arch"] == "sm_90a" and slow["kind"] == "kernel"


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "tools.check_spills", *args],
        cwd=check_spills.ROOT,  # tools/ is a folder of the checkout, not of the installed package
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.skipif(check_spills.built_extension() is None, reason="the CUDA extension is not built")
def test_csrc_kernels_do_not_spill(tmp_path):
    # the built extension's cubins, read (the compiling mode, python -m tools.check_spills, took 83 s in CI: CI
    # builds the extension anyway, sm_80 and sm_90a, with -Werror)
    report = tmp_path / "spills.json"
    result = _run("--built", "--json", str(report))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    records = json.loads(report.read_text())
    names = {r["name"] for r in records}
    for kernel in (
        "select_tokens_kernel",
        "copy_rows_kernel",
        "loss_forward_kernel",
        "loss_backward_kernel",
        "mask_image_kernel",
    ):
        assert any(kernel in name for name in names), (kernel, sorted(names)[:20])
    assert {r["source"] for r in records} == {path.name for path in CSRC.glob("*.cu")}
    built_for = {"sm_80", "sm_90a"} if os.environ.get("MASKSUB_CUDA_ARCHS", "80;90") == "80;90" else None
    assert built_for is None or {r["arch"] for r in records} == built_for
    assert all(r["stack"] == 0 and r["spill_stores"] == 0 and r["spill_loads"] == 0 for r in records)


@needs_nvcc
def test_a_spilling_kernel_fails_the_check(tmp_path):
    source = tmp_path / "spilling.cu"
    source.write_text(SPILLING_SOURCE)
    result = _run(str(source))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "spilling_kernel spills" in result.stderr


# helper-187's mutation audit: the parser and main without nvcc (compile_source and find_cuda_home stubbed)


def test_parse_ptxas_ignores_figures_before_any_function():
    # C01 (drop `current is not None`: a stray figures line before the first function raised TypeError)
    text = "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 3 registers\n"
    assert check_spills.parse_ptxas(text, "x.cu") == []


def test_parse_ptxas_marks_non_inlined_device_functions():
    # C03 (a device function's record of kind "kernel")
    text = (
        "ptxas info    : Function properties for _Z3devf\n"
        "    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 20 registers\n"
    )
    records = {r["symbol"]: r for r in check_spills.parse_ptxas(text, "x.cu")}
    assert (records["_Z3devf"]["kind"], records["_Z3devf"]["spill_stores"]) == ("function", 8)
    assert (records["_Z1kPf"]["kind"], records["_Z1kPf"]["registers"]) == ("kernel", 20)


def _main_with(monkeypatch, tmp_path, outcome, *argv):
    """check_spills.main on one (empty) source with nvcc stubbed: ``outcome(arch)`` -> compile_source's answer."""
    source = tmp_path / "k.cu"
    source.write_text("")
    monkeypatch.setattr(check_spills, "find_cuda_home", lambda: tmp_path)  # no cu++filt there
    monkeypatch.setattr(check_spills.shutil, "which", lambda name: None)  # nor c++filt: names stay as they are
    archs = []

    def compile_source(source, arch, nvcc, workdir):
        archs.append(arch)
        return outcome(arch)

    monkeypatch.setattr(check_spills, "compile_source", compile_source)
    return check_spills.main([*argv, str(source)]), archs


def test_check_spills_a_failed_compilation_exits_2(monkeypatch, tmp_path, capsys):
    # C06 (drop `if failures: return 2`: a source that does not compile passed as "no spills", exit 0)
    status, _ = _main_with(monkeypatch, tmp_path, lambda arch: ([], "nvcc: error"))
    assert status == 2
    assert "check_spills: compilation failed:\nnvcc: error" in capsys.readouterr().err


def test_check_spills_spill_loads_alone_fail_and_empty_arches_are_dropped(monkeypatch, tmp_path):
    # C09 (only spill stores counted as spilling); C08 (drop `if arch.strip()`: "--arch 90a," compiled for "sm_")
    def loads_only(arch):
        record = check_spills._record("k.cu", "_Z1kv", f"sm_{arch}", "kernel")
        return [{**record, "registers": 32, "stack": 8, "spill_loads": 4}], None

    status, archs = _main_with(monkeypatch, tmp_path, loads_only, "--arch", "90a, ,80,")
    assert status == 1
    assert archs == ["90a", "80"]


# helper-217's mutation audit of the emulator's build tool and the real build's configuration (44 mutants)


# -> tests/test_cuda_spills.py. Kills C02 (the default source list cut short: the slow test checks two kernels of
# token_select.cu only, so grid_mask.cu and masksub_loss.cu could leave the check unnoticed) and C06 (the default
# arch sm_90, not the sm_90a the extension is built for).
def test_check_spills_by_default_compiles_every_csrc_source_for_sm_90a(monkeypatch, tmp_path):
    compiled = []
    monkeypatch.setattr(check_spills, "find_cuda_home", lambda: tmp_path)
    monkeypatch.setattr(check_spills.shutil, "which", lambda name: None)
    monkeypatch.setattr(
        check_spills, "compile_source", lambda s, arch, nvcc, w: (compiled.append((s, arch)), ([], None))[1]
    )
    assert check_spills.main([]) == 0
    assert sorted(compiled) == [(path, "90a") for path in sorted(CSRC.glob("*.cu"))]  # (a thread pool's order)


RESOURCE_USAGE = """\

Fatbin elf code:
================
arch = sm_80
code version = [1,8]
identifier = /src/csrc/a.cu

Resource usage:
 Common:
  GLOBAL:0
 Function _Z4fastPf:
  REG:28 STACK:0 SHARED:5312 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z4slowPf:
  REG:32 STACK:824 SHARED:0 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_90a
code version = [1,8]
identifier = /src/csrc/b.cu

Resource usage:
 Function _Z4fastPf:
  REG:30 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z4fastPf:
  REG:99 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z5localPf:
  REG:20 STACK:0 SHARED:0 LOCAL:16 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parse_resource_usage_records_each_function_per_arch_and_source():
    records = check_spills.parse_resource_usage(RESOURCE_USAGE)
    rows = [(r["source"], r["arch"], r["symbol"], r["registers"], r["smem"], r["stack"]) for r in records]
    assert rows == [
        ("a.cu", "sm_80", "_Z4fastPf", 28, 5312, 0),
        ("a.cu", "sm_80", "_Z4slowPf", 32, 0, 824),
        ("b.cu", "sm_90a", "_Z4fastPf", 30, 0, 0),  # listed twice for one source and arch: counted once, the first
        ("b.cu", "sm_90a", "_Z5localPf", 20, 0, 0),
    ]
    spills = [(r["spill_stores"], r["spill_loads"]) for r in records]
    assert spills == [(0, 0), (None, None), (0, 0), (None, None)]  # a stack frame or local memory: not told


def test_built_mode_fails_a_function_with_a_stack_frame_and_refuses_what_it_cannot_read(monkeypatch, tmp_path, capsys):
    library = tmp_path / "_C.so"
    library.write_bytes(b"")
    monkeypatch.setattr(check_spills, "find_cuda_home", lambda: None)  # names stay as they are
    monkeypatch.setattr(check_spills.shutil, "which", lambda name: None)
    monkeypatch.setattr(check_spills, "read_built", lambda path: check_spills.parse_resource_usage(RESOURCE_USAGE))
    assert check_spills.main(["--built", str(library)]) == 1
    out, err = capsys.readouterr()
    assert "a.cu sm_80 _Z4slowPf has a 824 B stack frame, 0 B of local memory (spills or a local array" in err
    assert "b.cu sm_90a _Z5localPf has a 0 B stack frame, 16 B of local memory" in err
    assert "_Z4fastPf" not in err and "4 functions from _C.so: 2 spilling" in out
    monkeypatch.setattr(check_spills, "read_built", lambda path: [])
    assert check_spills.main(["--built", str(library)]) == 2
    assert "cuobjdump lists no CUDA function in" in capsys.readouterr().err
    assert check_spills.main(["--built", str(tmp_path / "missing.so")]) == 2
    monkeypatch.setattr(check_spills, "built_extension", lambda: library)  # the package's, built from other sources
    monkeypatch.setattr(check_spills, "_package_extension_stale", lambda: "masksub_kernels._C is stale: rebuild")
    assert check_spills.main(["--built"]) == 2
    assert "check_spills: masksub_kernels._C is stale: rebuild" in capsys.readouterr().err
    monkeypatch.setattr(check_spills, "built_extension", lambda: None)
    assert check_spills.main(["--built"]) == 2
    assert "no built extension at masksub_kernels._C" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_spills.main(["--built", str(library), "--arch", "80"])
