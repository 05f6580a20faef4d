"""setup.py's compute capabilities beyond tests/test_setup.py's: family targets (CUDA 12.9+)."""

import pytest
from test_setup import load_setup_module, planned_extension


# Family targets (CUDA 12.9+: "10.0f", "12.0f", machine code for every GPU of the family) were refused as no compute
# capability, and left out of a TORCH_CUDA_ARCH_LIST that named them; nvcc has none below 10.0
def test_family_targets_are_built_as_such_from_10_0(monkeypatch, capfd):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "8.0;10.0f;12.0F+PTX")
    _, extension = planned_extension(monkeypatch)
    assert [flag for flag in extension.extra_compile_args["nvcc"] if flag.startswith("-gencode")] == [
        "-gencode=arch=compute_80,code=[sm_80,compute_80]", "-gencode=arch=compute_100f,code=sm_100f",
        "-gencode=arch=compute_120f,code=sm_120f", "-gencode=arch=compute_120,code=compute_120",
    ]  # fmt: skip
    setup = load_setup_module()
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "9.0f")
    with pytest.raises(SystemExit, match=r"'9.0f' is a family target below 10.0 \(nvcc's family targets begin"):
        setup.cuda_archs()
    monkeypatch.delenv("MASKSUB_CUDA_ARCHS")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6f 12.0f")
    assert setup.cuda_archs() == (["120f"], set(), "TORCH_CUDA_ARCH_LIST")
    assert "left out '8.6f' is a family target below 10.0" in capfd.readouterr().err


# helper-347's audit: kills `match[3].lower() == "f"` -> `match[3] == "f"` (an upper-case "9.0F" reached nvcc as
# compute_90f, which it has not) and `family_too_old and ... >= MIN_ARCH` -> `family_too_old` ("7.5f" said to be a
# family target below 10.0 where it is below 8.0, as "7.5" is)
def test_a_family_target_below_10_0_is_refused_in_either_case_and_below_8_0_as_such(monkeypatch, capfd):
    setup = load_setup_module()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "9.0F")
    with pytest.raises(SystemExit, match=r"'9.0F' is a family target below 10.0"):
        setup.cuda_archs()
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "7.5f")
    with pytest.raises(SystemExit, match=r"'7.5f' is below 8.0; give compute capabilities"):
        setup.cuda_archs()
    monkeypatch.delenv("MASKSUB_CUDA_ARCHS")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5F 9.0F 10.3F")
    assert setup.cuda_archs() == (["103f"], set(), "TORCH_CUDA_ARCH_LIST")
    assert "left out '7.5F' is below 8.0, '9.0F' is a family target below 10.0" in capfd.readouterr().err


# helper-347: nothing read nvcc's release: a family target under an nvcc before 12.9 became an nvcc error that an
# automatic build swallows (installed without the extension); and "12.0f+PTX;12.0" emitted compute_120's PTX twice
def test_family_targets_need_nvcc_12_9(monkeypatch, capfd):
    setup = load_setup_module()
    monkeypatch.setattr(setup, "nvcc_release", lambda cuda_home: (12, 8))
    with pytest.raises(SystemExit, match=r"MASKSUB_CUDA_ARCHS: family targets \(120f\) need nvcc 12.9 or newer; this"):
        setup.family_targets_checked(["80", "120f"], set(), "MASKSUB_CUDA_ARCHS")
    assert setup.family_targets_checked(["80", "120f"], {"120f"}, "TORCH_CUDA_ARCH_LIST") == (
        ["80"],
        set(),
        "TORCH_CUDA_ARCH_LIST",
    )
    assert setup.family_targets_checked(["120f"], set(), "TORCH_CUDA_ARCH_LIST") == (["80", "90"], set(), "the default")
    assert "left out: family targets (120f) need nvcc 12.9 or newer; this toolkit's is 12.8" in capfd.readouterr().err
    monkeypatch.setattr(setup, "nvcc_release", lambda cuda_home: (12, 9))
    kept = setup.family_targets_checked(["120f"], set(), "MASKSUB_CUDA_ARCHS")
    assert kept == (["120f"], set(), "MASKSUB_CUDA_ARCHS")


def test_nvcc_release_is_read_from_its_version_line(tmp_path):
    setup = load_setup_module()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    nvcc.chmod(0o755)
    assert setup.nvcc_release(str(tmp_path)) == (12, 8)
    assert setup.nvcc_release(str(tmp_path / "none")) is None and setup.nvcc_release(None) is None


def test_one_ptx_per_portable_target(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("MASKSUB_CUDA_ARCHS", "12.0f+PTX;12.0;10.0a+PTX;10.0f+PTX")
    _, extension = planned_extension(monkeypatch)
    assert [flag for flag in extension.extra_compile_args["nvcc"] if flag.startswith("-gencode")] == [
        "-gencode=arch=compute_120f,code=sm_120f", "-gencode=arch=compute_120,code=[sm_120,compute_120]",
        "-gencode=arch=compute_100a,code=sm_100a", "-gencode=arch=compute_100,code=compute_100",
        "-gencode=arch=compute_100f,code=sm_100f",
    ]  # fmt: skip
