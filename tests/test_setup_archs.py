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
