"""``masksub-train-mlm`` (training/mlm_cli.py) and its text pipeline (training/text_data.py), on a tiny corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import masksub_kernels as mk
from masksub_kernels.training import text_data
from masksub_kernels.training.mlm_cli import main

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TINY = [
    "--vocab-size",
    "120",
    "--seq-len",
    "16",
    "--layers",
    "1",
    "--width",
    "16",
    "--heads",
    "2",
    "--batch-size",
    "4",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--eval-blocks",
    "8",
    "--warmup-steps",
    "1",
    "--mask-ratio",
    "0.25",
]  # fmt: skip  (16 tokens: r = 0.5 could not keep every target)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of two text files: 400 stdlib docstrings, one paragraph each."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [d for d in text_data.stdlib_docstrings() if "\n\n" not in d][:400]
    (root / "a.txt").write_text("\n\n".join(docs[:200]), encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("\n\n".join(docs[200:]), encoding="utf-8")
    return str(root)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    """One vocabulary for the runs that are compared (training one is not deterministic)."""
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    assert main(["--data-dir", corpus, *TINY, "--steps", "1", "--eval-every", "1", "--tokenizer", path,
                 "--output", str(tmp_path_factory.mktemp("first"))]) == 0  # fmt: skip
    return path


def _log(output) -> dict:
    with open(os.path.join(output, "log.json")) as f:
        return json.load(f)


def test_text_pipeline(corpus):
    docs = text_data.text_dir_documents(corpus)
    assert len(docs) == 400
    train, held_out = text_data.split_documents(docs)
    assert 0 < len(held_out) < 80 and len(train) + len(held_out) == 400
    assert text_data.split_documents(reversed(docs))[1] == list(reversed(held_out))  # by content, not by order
    tok = text_data.train_tokenizer(train, 120)
    assert [tok.token_to_id(t) for t in text_data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    blocks = text_data.pack_blocks(tok, train, 16)
    assert blocks.dtype == torch.int64 and blocks.shape[1] == 16
    assert (blocks[:, 0] == 2).all() and (blocks[:, -1] == 3).all()
    special = text_data.special_tokens_mask(blocks, tok)
    assert special[:, 0].all() and special[:, -1].all() and not special[:, 1:-1].all()
    with pytest.raises(ValueError, match="too few"):
        text_data.pack_blocks(tok, ["a"], 16)


def test_masksub_run_logs_and_checkpoint(corpus, tokenizer, tmp_path):
    out = str(tmp_path / "run")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out]) == 0
    log = _log(out)
    rows = log["epochs"]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        for key in ("loss", "loss_main", "loss_sub", "val_loss", "val_acc"):
            assert row[key] == row[key] and abs(row[key]) < 1e3, (key, row)
    assert log["meta"]["vocab_size"] <= 120
    state = torch.load(os.path.join(out, "last.pth"), weights_only=False)
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=log["meta"]["vocab_size"], hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=16,
                                       type_vocab_size=1))  # fmt: skip
    model.load_state_dict(state["model"])  # a plain Hugging Face checkpoint
    assert os.path.isfile(os.path.join(out, "log.csv"))


def test_baseline_joint_schedule_and_bf16(corpus, tokenizer, tmp_path, monkeypatch):
    chunks = []  # the chunk_rows each fused-linear loss call got
    for name in ("linear_masksub_loss", "linear_soft_target_cross_entropy"):
        op = getattr(mk, name)
        monkeypatch.setattr(mk, name, lambda *a, _op=op, **k: chunks.append(k.get("chunk_rows")) or _op(*a, **k))
    for extra in (["--baseline"], ["--schedule", "joint", "--accum-steps", "2", "--sub-fill", "mask", "--chunk-rows",
                                   "7"], ["--amp", "bf16"]):  # fmt: skip
        out = str(tmp_path / extra[0].strip("-"))
        chunks.clear()
        assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out, *extra]) == 0
        row = _log(out)["epochs"][-1]
        assert (row["loss_sub"] is None) == (extra == ["--baseline"])
        assert chunks and set(chunks) == ({7} if "--chunk-rows" in extra else {None})


def test_resume_continues_exactly(corpus, tokenizer, tmp_path):
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer]
    assert main([*common, "--output", str(tmp_path / "full")]) == 0
    assert main([*common, "--output", str(tmp_path / "part"), "--stop-at", "2"]) == 0
    assert main([*common, "--output", str(tmp_path / "part"), "--resume", str(tmp_path / "part" / "last.pth")]) == 0
    full = torch.load(tmp_path / "full" / "last.pth", weights_only=False)
    part = torch.load(tmp_path / "part" / "last.pth", weights_only=False)
    for name, value in full["model"].items():
        assert torch.equal(value, part["model"][name]), name
    assert [r["val_loss"] for r in full["rows"]] == [r["val_loss"] for r in part["rows"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-len", "2"], "--seq-len must be >= 3"),
        (["--heads", "3"], "--heads (3) must divide --width (16)"),
        (["--mask-ratio", "1.0"], "--mask-ratio"),
        (["--mask-ratio", "0.99"], "keeps floor"),
        (["--mask-ratio", "0.5"], "more predicted + special tokens"),
        (["--stop-at", "3"], "must end a round"),
        (["--intermediate", "0"], "--intermediate must be >= 1"),
        (["--chunk-rows", "0"], "--chunk-rows must be in [1, 2^31)"),
        (["--dropout", "1.0"], "--dropout must be in [0, 1), got 1.0"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--stop-at", "9"], "--stop-at must be in"),
        (["--data-dir", "/nonexistent"], "is not a directory"),
        (["--resume", "/nonexistent.pth"], "no such file"),
        (["--batch-size", "100000"], "fewer than one step"),
        (["--seq-len", "3000"], "the held-out part of the corpus, "),  # the training part has blocks of 3000
    ],
)
def test_clear_errors(corpus, tokenizer, tmp_path, capsys, args, message):
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("masksub-train-mlm: error:") and message in err, err


def test_errors_on_files(corpus, tokenizer, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--data-dir", str(tmp_path / "empty"), *TINY, "--output", str(tmp_path / "o")]) == 2
    assert "no text in" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", str(tmp_path / "bad.json")]) == 2
    assert "not a tokenizers JSON file" in capsys.readouterr().err
    out = str(tmp_path / "w16")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out, "--steps", "1",
                 "--eval-every", "1"]) == 0  # fmt: skip
    wider = [a if a != "16" else "32" for a in TINY]  # width 32 (and seq-len 32): another model
    assert main(["--data-dir", corpus, *wider, "--tokenizer", tokenizer, "--resume", f"{out}/last.pth"]) == 2
    assert "continues another run: --seq-len 16 -> 32; --width 16 -> 32" in capsys.readouterr().err
    resume = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--resume", f"{out}/last.pth"]
    assert main([*resume, "--seed", "1"]) == 2
    assert "--seed 0 -> 1" in capsys.readouterr().err
    assert main([*resume, "--steps", "1", "--eval-every", "1"]) == 2
    assert "nothing left to train" in capsys.readouterr().err


def test_two_processes_equal_one_with_accumulation(corpus, tokenizer, tmp_path):
    """torchrun, 2 CPU processes (gloo), dropout on: the weights equal one process with --accum-steps 2 (each
    step sees the same parts, each part seeds its masks and its dropout; DDP averages what accumulation averages)."""
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--device", "cpu"]
    assert main([*common, "--accum-steps", "2", "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "masksub_kernels.training.mlm_cli", *common, "--output", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "last.pth", weights_only=False)["model"]
    two = torch.load(tmp_path / "two" / "last.pth", weights_only=False)["model"]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
