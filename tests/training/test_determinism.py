"""--deterministic (training/determinism.py): torch's, cuDNN's and cuBLAS's settings for the command's duration, the
same weights as without it on the CPU (where torch.empty is then NaN-filled: a read of memory never written shows),
and on a GPU two runs and a resumed one bit-identical."""

from __future__ import annotations

import os

import pytest
import torch

from masksub_kernels.training.determinism import CUBLAS_WORKSPACE, deterministic_algorithms, refused_by_determinism


def _settings():
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


@pytest.mark.parametrize("workspace", [None, ":16:8"])
def test_the_context_sets_every_setting_and_puts_them_back(monkeypatch, workspace):
    if workspace is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", workspace)
    before = _settings()
    assert before[:2] == (False, False)
    with deterministic_algorithms(True):
        # strict, not warn_only (which keeps attention's nondeterministic backward on a GPU, with a warning)
        assert _settings() == (True, False, True, False, workspace or CUBLAS_WORKSPACE)
        assert torch.isnan(torch.empty(3)).all()  # torch's fill of uninitialised memory, on the CPU too
    assert _settings() == before
    with deterministic_algorithms(False):  # off: cuDNN's benchmarking on, as timm's train.py (helper-249), only
        assert _settings() == (*before[:3], True, before[4])
    assert _settings() == before
    with pytest.raises(RuntimeError, match="inside"), deterministic_algorithms(True):
        raise RuntimeError("inside")
    assert _settings() == before  # put back after an error too


def _record_the_setting_inside(monkeypatch, module) -> list[bool]:
    """Whether torch's deterministic mode was on inside each of the command's runs (its _run)."""
    seen, run = [], module._run
    monkeypatch.setattr(
        module, "_run", lambda args: (seen.append(torch.are_deterministic_algorithms_enabled()), run(args))
    )
    return seen


def _put_without_a_deterministic_kernel(args=None):
    """torch's put_ (accumulate=False), which has no deterministic implementation, on the CPU too."""
    torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))


def test_torchs_refusal_becomes_a_message_naming_the_op():
    with deterministic_algorithms(True), pytest.raises(RuntimeError) as refused:
        _put_without_a_deterministic_kernel()
    message = refused_by_determinism(refused.value)
    assert message.startswith("--deterministic: torch has no deterministic implementation of put_ on this device")
    assert message.endswith("run without --deterministic (then runs and resumes may differ in their last bits)")
    assert refused_by_determinism(RuntimeError("CUDA out of memory")) is None
    assert refused_by_determinism(ValueError("x does not have a deterministic implementation")) is None


@pytest.mark.parametrize("command", ["masksub-train", "masksub-train-mlm"])
def test_the_commands_stop_with_that_message_and_status_2(command, monkeypatch, capsys):
    if command == "masksub-train":
        from masksub_kernels.training import cli as module
    else:
        pytest.importorskip("transformers")
        from masksub_kernels.training import mlm_cli as module
    monkeypatch.setattr(module, "_run", _put_without_a_deterministic_kernel)
    assert module.main(["--deterministic"]) == 2
    assert f"{command}: error: --deterministic: torch has no deterministic implementation of put_" in (
        capsys.readouterr().err
    )
    with pytest.raises(RuntimeError, match="does not have a deterministic"):  # torch's own setting: not ours to word
        with deterministic_algorithms(True):
            module.main([])  # (deterministic_algorithms(False) inside leaves the caller's on)
    monkeypatch.setattr(module, "_run", lambda args: torch.zeros(2) @ torch.zeros(3))  # another error: as it is
    with pytest.raises(RuntimeError, match="inconsistent tensor size"):
        module.main(["--deterministic"])


@pytest.fixture
def image_run(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="the digits come from scikit-learn")
    from masksub_kernels.train import main
    from masksub_kernels.training import cli

    seen = _record_the_setting_inside(monkeypatch, cli)

    tiny = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "64", "--no-progress",
            "--img-size", "16", "--limit-batches", "3", "--drop-path", "0.1"]  # fmt: skip

    def run(name: str, *extra: str) -> dict:
        out = str(tmp_path / name)
        assert main([*tiny, "--output", out, *extra]) == 0
        assert seen.pop() == ("--deterministic" in extra)  # on inside the command with the flag
        assert not torch.are_deterministic_algorithms_enabled()  # and put back after it
        return torch.load(os.path.join(out, "last.pth"), weights_only=False)["module"]

    return run, tmp_path


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def test_masksub_train_deterministic_gives_the_same_weights_on_the_cpu(image_run):
    run, _ = image_run
    _assert_same(run("det", "--deterministic", "--device", "cpu"), run("plain", "--device", "cpu"))


def test_masksub_train_mlm_deterministic_gives_the_same_weights_on_the_cpu(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from masksub_kernels.training import mlm_cli, text_data
    from masksub_kernels.training.mlm_cli import main

    seen = _record_the_setting_inside(monkeypatch, mlm_cli)
    docs = [d for d in text_data.stdlib_docstrings() if "\n\n" not in d][:200]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("\n\n".join(docs), encoding="utf-8")
    tiny = ["--data-dir", str(tmp_path / "corpus"), "--vocab-size", "120", "--seq-len", "16", "--layers", "1",
            "--width", "16", "--heads", "2", "--batch-size", "4", "--steps", "2", "--eval-every", "2",
            "--eval-blocks", "4", "--warmup-steps", "1", "--mask-ratio", "0.25", "--device", "cpu"]  # fmt: skip
    assert main([*tiny, "--output", str(tmp_path / "plain")]) == 0
    tokenizer = str(tmp_path / "plain" / "tokenizer.json")  # one vocabulary for both (training one varies)
    assert main([*tiny, "--output", str(tmp_path / "det"), "--tokenizer", tokenizer, "--deterministic"]) == 0
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    load = lambda name: torch.load(tmp_path / name / "last.pth", weights_only=False)["model"]
    _assert_same(load("det"), load("plain"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU is deterministic as it is)")
def test_on_a_gpu_two_deterministic_runs_and_a_resumed_one_are_bit_identical(image_run):
    run, tmp_path = image_run
    flags = ["--deterministic", "--device", "cuda", "--keep-epoch-checkpoints"]
    first = run("first", *flags)
    _assert_same(run("second", *flags), first)
    resumed = run("resumed", *flags, "--resume", str(tmp_path / "first" / "epoch-1.pth"))
    _assert_same(resumed, first)


def test_a_warn_only_mode_set_before_is_put_back():  # determinism.py:70 warn_only=warn_only
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with deterministic_algorithms(True):
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
