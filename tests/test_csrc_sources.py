"""The CUDA emulator runs the very lines the GPU runs: no source of the extension branches on the emulator.

A branch of bindings.cpp that only the real build compiled once held an infinite recursion that no CPU test could
reach. What differs between the two builds lives in the platform header pair (csrc/platform/masksub_platform.h and
csrc/emulator/masksub_platform.h), chosen by the include path; these tests keep it that way.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
PLATFORM_PAIR = (CSRC / "platform" / "masksub_platform.h", CSRC / "emulator" / "masksub_platform.h")
EMULATOR_MACRO = "MASKSUB_EMULATOR"
# Where the emulator's macro may be named: the emulator, the tool that builds it, and this test.
EMULATOR_PLACES = ("csrc/emulator/", "tools/cuda_emulator.py", "tests/test_csrc_sources.py")
# The preprocessor conditionals allowed in the code under test: a tuning knob with a default (row_copy.cuh), which
# changes a value, never which lines are compiled.
ALLOWED_CONDITIONALS = {"#ifndef MASKSUB_MAX_GRID_BLOCKS"}
_CONDITIONAL = re.compile(r"^\s*#\s*(?:if|ifdef|ifndef|elif|elifdef|elifndef|else)\b.*$", re.MULTILINE)


def repository_files() -> list[str]:
    """Tracked files and new ones not ignored (a file not yet committed counts too)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    command = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (ROOT / name).is_file()]


def code_under_test() -> list[Path]:
    """The bindings, the kernels and their headers, and the real platform header: what the GPU build compiles."""
    return [p for p in sorted(CSRC.iterdir()) if p.suffix in (".cu", ".cuh", ".h", ".cpp")] + [PLATFORM_PAIR[0]]


def test_the_emulator_macro_is_named_only_by_the_emulator():
    offenders = []
    for name in repository_files():
        if name.startswith(EMULATOR_PLACES):
            continue
        try:
            text = (ROOT / name).read_text()
        except UnicodeDecodeError:  # binary files
            continue
        offenders += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if EMULATOR_MACRO in line]
    assert not offenders, f"{EMULATOR_MACRO} outside the emulator: {offenders}"


def test_no_conditional_compilation_in_the_code_under_test():
    found = {
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for path in code_under_test()
        for match in _CONDITIONAL.finditer(path.read_text())
        if match.group(0).strip() not in ALLOWED_CONDITIONALS
    }
    assert not found, f"the emulator would not run these lines as the GPU build does: {sorted(found)}"


def _platform_names(path: Path) -> set[str]:
    """The names masksub::platform declares in a platform header."""
    body = path.read_text().split("namespace masksub::platform {", 1)[1]
    declarations = r"constexpr [^=;(]*?(\w+) =|using (\w+) =|struct (\w+)|inline [\w:]+ (\w+)\("
    return {next(filter(None, match.groups())) for match in re.finditer(declarations, body)}


def test_the_platform_pair_declares_the_same_names():
    real, emulated = (_platform_names(path) for path in PLATFORM_PAIR)
    assert real == emulated
    assert {"kKernelDevice", "kKernelTensor", "DeviceGuard", "current_stream", "current_device_index"} <= real


def test_the_real_platform_header_cannot_shadow_the_emulated_one():
    # The emulator stages copies of csrc/*.{cu,cuh,h,cpp} and compiles them where they lie; a quoted include looks
    # there first, so a masksub_platform.h directly in csrc/ would replace the emulated one in the emulator build.
    assert not (CSRC / "masksub_platform.h").exists()
    bindings = (CSRC / "bindings.h").read_text()
    assert '#include "masksub_platform.h"' in bindings


# tools/perf_model/csrc.py's trip counts rest on the kernels' tuning constants: it reads them from these sources
# (helper-322: hand-written copies drifted silently; kLossUnroll changed to 4 passed every test)
def test_the_perf_model_reads_the_kernels_constants_from_the_sources(tmp_path):
    from tools.perf_model import csrc

    def defined(file: str, name: str) -> int:
        return int(re.search(rf"constexpr \w+ {name} = (\d+);", (CSRC / file).read_text()).group(1))

    assert (csrc.LOSS_UNROLL, csrc.COPY_THREADS, csrc.COPY_UNROLL, csrc.MASK_THREADS, csrc.MASK_UNROLL) == (
        defined("masksub_loss.cuh", "kLossUnroll"),
        defined("row_copy.cuh", "kCopyThreads"),
        defined("row_copy.cuh", "kCopyUnroll"),
        defined("grid_mask.cu", "kMaskThreads"),
        defined("grid_mask.cu", "kMaskUnroll"),
    )
    assert csrc.RADIX_PASSES == 8  # cub::BlockRadixSort<uint32_t, ...>: 32 key bits, cub's default 4 radix bits
    # a changed source is what the model reads
    (tmp_path / "masksub_loss.cuh").write_text("constexpr int kLossUnroll = 4;  // vectors in flight\n")
    assert csrc.source_constant("masksub_loss.cuh", "kLossUnroll", tmp_path) == 4
    (tmp_path / "token_select.cu").write_text(
        "using Sort = cub::BlockRadixSort<uint32_t, THREADS, ITEMS, uint16_t, 5>;"
    )
    assert csrc.radix_passes(tmp_path) == 7  # ceil(32 / 5)
    (tmp_path / "token_select.cu").write_text("using Sort = cub::BlockRadixSort<uint64_t, THREADS, ITEMS>;")
    assert csrc.radix_passes(tmp_path) == 16
    (tmp_path / "masksub_loss.cuh").write_text("constexpr int kLossUnroll = kOther;\n")  # not a literal: refused
    with pytest.raises(ValueError, match="kLossUnroll"):
        csrc.source_constant("masksub_loss.cuh", "kLossUnroll", tmp_path)


def test_the_loss_kernels_vectors_per_iteration_follow_kloss_unroll(monkeypatch):
    from tools.perf_model import csrc
    from tools.perf_model.csrc_launches import Call, CsrcLaunch

    named = {"rows": 8, "classes": 4096, "stride_logits": 4096, "target_kind": 1}
    launch = CsrcLaunch(
        "loss_backward_kernel<...>", (8, 1, 1), (256, 1, 1), [], Call("masksub_loss", "bfloat16", named)
    )
    trips, elements, *_ = csrc._loss(launch)
    assert (trips[0][0], elements) == (1, 256 * csrc.LOSS_UNROLL * 8)  # 4096 / 8 vectors over 256 threads x 2
    monkeypatch.setattr(csrc, "LOSS_UNROLL", 4)  # as if csrc/masksub_loss.cuh said kLossUnroll = 4
    trips, elements, *_ = csrc._loss(launch)
    assert (trips[0][0], elements) == (1, 256 * 4 * 8)
    monkeypatch.setattr(csrc, "LOSS_UNROLL", 1)
    assert csrc._loss(launch)[0][0][0] == 2  # 512 vectors over 256 threads, one each per iteration


# helper-327's mutation audit of tools/perf_model/csrc.py's reading of the sources
def test_two_definitions_of_a_constant_are_refused(tmp_path):
    # kills S1 (len(found) != 1 -> not found: the first of two #if-branch definitions read silently)
    (tmp_path / "row_copy.cuh").write_text(
        "#if A\nconstexpr int kCopyThreads = 128;\n#else\nstatic constexpr int kCopyThreads = 256;\n#endif\n"
    )
    from tools.perf_model import csrc

    with pytest.raises(ValueError, match="2 integer definitions of constexpr kCopyThreads"):
        csrc.source_constant("row_copy.cuh", "kCopyThreads", tmp_path)


def test_a_radix_bits_argument_that_is_no_number_is_refused(tmp_path):
    # kills S2 (a named radix-bits constant: int() of it raised a bare ValueError without the file's message)
    (tmp_path / "token_select.cu").write_text("using Sort = cub::BlockRadixSort<uint32_t, T, I, uint16_t, kBits>;")
    from tools.perf_model import csrc

    with pytest.raises(ValueError, match="key or radix bits not read"):
        csrc.radix_passes(tmp_path)
