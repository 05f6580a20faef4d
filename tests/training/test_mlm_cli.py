"""``masksub-train-mlm`` (training/mlm_cli.py) and its text pipeline (training/text_data.py), on a tiny corpus."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

import masksub_kernels as mk
from masksub_kernels.training import mlm_args, mlm_cli, text_data
from masksub_kernels.training.mlm_cli import main

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


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
    with pytest.MonkeyPatch.context() as patch:  # encoded by batches of 7 documents (helper-253's memory): the same
        patch.setattr(text_data, "ENCODE_BATCH_DOCUMENTS", 7)
        assert torch.equal(text_data.pack_blocks(tok, train, 16), blocks)
    assert (blocks[:, 0] == 2).all() and (blocks[:, -1] == 3).all()
    special = text_data.special_tokens_mask(blocks, tok)
    assert special[:, 0].all() and special[:, -1].all() and not special[:, 1:-1].all()
    with pytest.raises(ValueError, match="too few"):
        text_data.pack_blocks(tok, ["a"], 16)
    # a text's own "[MASK]", "[PAD]", "[CLS]", "[SEP]" are words there, not special tokens (helper-131), on both the
    # trained tokenizer (a BertWordPieceTokenizer) and one read from its file (a Tokenizer), left as they were
    about_bert = ["BERT replaces a token by [MASK], pads with [PAD]; [CLS] starts and [SEP] ends. " * 4]
    from tokenizers import Tokenizer

    for tokenizer in (tok, Tokenizer.from_str(tok.to_str())):
        body = text_data.pack_blocks(tokenizer, about_bert, 16)[:, 1:-1]
        assert not bool(text_data.special_tokens_mask(body, tokenizer).any())
        assert not bool((body == tokenizer.token_to_id("[MASK]")).any())
        assert getattr(tokenizer, "_tokenizer", tokenizer).encode_special_tokens is False


def test_masksub_run_logs_and_checkpoint(corpus, tokenizer, tmp_path):
    out = str(tmp_path / "run")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out]) == 0
    log = _log(out)
    rows = log["epochs"]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        for key in ("loss", "loss_main", "loss_sub", "val_loss", "val_acc"):
            assert row[key] == row[key] and abs(row[key]) < 1e3, (key, row)
    assert log["meta"]["vocab_size"] <= 120 and log["meta"]["val_blocks"] == 8  # --eval-blocks
    assert {"git_commit", "started_utc", "cpu", "torch_threads", "gpu"} <= set(log["meta"])  # runlog.run_provenance
    # the rate each round's last step used: warm-up of 1 step, then linear decay to 0 at step 4 (helper-120)
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3 / 3])
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
        (["--vocab-size", "63"], "--vocab-size must be >= 64"),
        (["--warmup-steps", "-1"], "--warmup-steps must be an integer >= 0, got -1"),
        (["--eval-blocks", "-1"], "--eval-blocks must be an integer >= 0, got -1"),
        (["--lr", "-1"], "--lr must be a finite number > 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),  # NaN losses before
        (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
        (["--clip-grad", "nan"], "--clip-grad must be a finite number >= 0, got nan"),  # a traceback at step 1
        (["--stop-at", "9"], "--stop-at must be in"),
        (["--data-dir", "/nonexistent"], "is not a directory"),
        (["--resume", "/nonexistent.pth"], "no such file"),
        (["--batch-size", "2000", "--steps", "1", "--eval-every", "1"], "fewer than one step"),
        # helper-157: the message named --batch-size alone
        (["--accum-steps", "400", "--steps", "2"], "one step's 1600 (--batch-size 4 x --accum-steps 400 x 1 process"),
        # helper-157: a held-out corruption without a predicted token logged val_loss 0.0, a perfect-looking loss
        (["--mlm-probability", "0.001", "--eval-blocks", "1"], "of 1 block(s) (--eval-blocks) predicts no token"),
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
    assert (
        main(["--data-dir", corpus, *TINY, "--tokenizer", str(tmp_path / "bad.json"), "--output", str(tmp_path / "b")])
        == 2
    )
    assert "not a tokenizers JSON file" in capsys.readouterr().err
    out = str(tmp_path / "w16")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out, "--steps", "1",
                 "--eval-every", "1"]) == 0  # fmt: skip
    wider = [a if a != "16" else "32" for a in TINY]  # width 32 (and seq-len 32): another model
    assert main(["--data-dir", corpus, *wider, "--tokenizer", tokenizer, "--resume", f"{out}/last.pth"]) == 2
    err = capsys.readouterr().err
    assert (
        "continues another run: its options differ from this command's (the checkpoint's -> this command's): "
        "--seq-len 16 -> 32; --width 16 -> 32. A resume repeats the run's options" in err
    ), err
    # helper-270: --resume alone (the run's options left out: the defaults) said "continues another run", listing the
    # defaults against the checkpoint's values, and nowhere that a resume repeats the run's options
    assert main(["--data-dir", corpus, "--tokenizer", tokenizer, "--resume", f"{out}/last.pth"]) == 2
    err = capsys.readouterr().err
    assert "its options differ from this command's (the checkpoint's -> this command's): " in err, err
    assert "--seq-len 16 -> 64" in err and err.rstrip().endswith(
        "A resume repeats the run's options (its command line: log.json's meta.command) with --resume added"
    ), err
    resume = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--resume", f"{out}/last.pth"]
    assert main([*resume, "--seed", "1"]) == 2
    assert "--seed 0 -> 1" in capsys.readouterr().err
    assert main([*resume, "--steps", "1", "--eval-every", "1"]) == 2
    assert "nothing left to train" in capsys.readouterr().err
    assert main([*resume, "--steps", "2", "--eval-every", "1", "--clip-grad", "0.5"]) == 2
    assert "--clip-grad 1.0 -> 0.5" in capsys.readouterr().err
    assert main([*resume, "--mask-ratio", "0.2", "--sub-fill", "mask", "--mlm-probability", "0.1"]) == 2
    assert (
        "--mask-ratio 0.25 -> 0.2; --sub-fill 'drop' -> 'mask'; --mlm-probability 0.15 -> 0.1"
        in capsys.readouterr().err
    )
    with open(tokenizer) as f:  # another vocabulary (the same tokens, two ids swapped)
        spec = json.load(f)
    ids = spec["model"]["vocab"]
    ids["[PAD]"], ids["[UNK]"] = ids["[UNK]"], ids["[PAD]"]
    (tmp_path / "other.json").write_text(json.dumps(spec))
    assert main([*resume, "--tokenizer", str(tmp_path / "other.json")]) == 2
    assert "continues another run: the vocabulary (tokenizer.json differs)" in capsys.readouterr().err
    # another --steps: taken, with a note; without --output the run continues in the checkpoint's directory
    assert main([*resume, "--steps", "2", "--eval-every", "1"]) == 0
    assert "note: resuming with --steps 1 -> 2: the learning rate follows the new schedule" in capsys.readouterr().err
    resumed = torch.load(f"{out}/last.pth", weights_only=False)
    fresh = str(tmp_path / "fresh")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", fresh, "--steps", "2",
                 "--eval-every", "1"]) == 0  # fmt: skip
    # step 2 at the new schedule's rate (the restored optimizer held the old one's: 0, the end of a 1-step decay)
    assert resumed["step"] == 2 and resumed["rows"][-1]["lr"] == _log(fresh)["epochs"][-1]["lr"] > 0
    # --output is checked before anything runs (was: after the tokenizer's training, or a round of training)
    (tmp_path / "a_file").write_text("")
    assert main(["--data-dir", corpus, *TINY, "--output", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out]) == 2  # out: a run
    assert "holds another run (last.pth)" in capsys.readouterr().err


def test_a_tokenizer_path_that_cannot_be_written_is_refused_before_training(corpus, tmp_path, capsys, monkeypatch):
    # helper-131: was a traceback, after the corpus was read and a vocabulary trained (~10 s for the stdlib corpus)
    from masksub_kernels.training import text_data

    (tmp_path / "a_file").write_text("")
    trained = []
    real_train = text_data.train_tokenizer
    monkeypatch.setattr(text_data, "train_tokenizer", lambda *a: trained.append(1) or real_train(*a))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # helper-134: passed the check, failed after training
    for path, blocker in (
        (tmp_path / "a_file" / "tok.json", "a_file"),
        (tmp_path / "a_file" / "sub" / "tok.json", "a_file"),
        (tmp_path / "dangling" / "tok.json", "dangling"),
    ):
        assert main(["--data-dir", corpus, *TINY, "--tokenizer", str(path), "--output", str(tmp_path / "o")]) == 2
        assert f"--tokenizer '{path}' cannot be made: '{tmp_path / blocker}' is not a writable directory" in (
            capsys.readouterr().err
        )
    assert not trained and not (tmp_path / "o").exists()
    # a save that fails after the check (a disk that fills): the command's error, not tokenizers' exception
    monkeypatch.setattr(text_data, "train_tokenizer", lambda *a: _FailingSave())
    made = tmp_path / "made" / "tok.json"  # its directory made for it, removed again with the part written
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", str(made), "--output", str(tmp_path / "p")]) == 2
    assert (
        "the vocabulary trained for this run cannot be saved: [Errno 28] No space left on device"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "made").exists()


def test_a_tokenizer_path_that_does_not_exist_gets_a_note_that_one_was_trained(corpus, tokenizer, tmp_path, capsys):
    # helper-231: a mistyped --tokenizer (the README's way to share one vocabulary between compared runs) trained a
    # new vocabulary there without a word, and the runs were no longer comparable
    fresh = str(tmp_path / "typo" / "tokenizer.json")
    common = ["--data-dir", corpus, *TINY, "--steps", "1", "--eval-every", "1"]
    assert main([*common, "--tokenizer", fresh, "--output", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert f"note: --tokenizer '{fresh}' did not exist: a new vocabulary was trained" in err
    # (and the console line prints each term, as masksub-train: 'loss' was the weighted sum, the main loss for the
    # baseline, helper-231)
    assert re.search(r"^step 1: loss_main \d+\.\d{4} loss_sub \d+\.\d{4} val_loss", out, re.M), out
    assert main([*common, "--tokenizer", tokenizer, "--output", str(tmp_path / "b"), "--baseline"]) == 0
    out, err = capsys.readouterr()
    assert "did not exist" not in err
    assert re.search(r"^step 1: loss_main \d+\.\d{4} val_loss", out, re.M), out


def test_a_warm_up_longer_than_the_run_gets_a_note(corpus, tokenizer, tmp_path, capsys):
    # helper-131: masksub-train notes it; here --warmup-steps == --steps still reaches --lr at the last step
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--steps", "2", "--eval-every", "2"]
    assert main([*common, "--output", str(tmp_path / "a"), "--warmup-steps", "2"]) == 0
    assert "note: --warmup-steps" not in capsys.readouterr().err
    assert main([*common, "--output", str(tmp_path / "b"), "--warmup-steps", "3"]) == 0
    assert (
        "masksub-train-mlm: note: --warmup-steps 3 > --steps 2: the learning rate is still warming up when the run "
        "ends and never reaches --lr 0.001" in capsys.readouterr().err
    )


class _FailingSave:
    def save(self, path):
        with open(path, "w") as f:
            f.write("{")  # a part written, then the disk is full
        raise OSError(28, "No space left on device")


def test_the_held_out_corruption_is_the_same_for_every_seed(corpus, tokenizer, tmp_path):
    # runs of other seeds are compared on the same held-out masks (EVAL_SEED), --eval-blocks of them (helper-120)
    from masksub_kernels.training import mlm_cli

    held_out = []
    for seed in ("0", "1"):
        args = mlm_cli.build_parser().parse_args(
            ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--seed", seed, "--output", str(tmp_path)]
        )
        held_out.append(mlm_cli._corpus(args, 0, 1, torch.device("cpu"), tokenizer, False)[2])
    assert held_out[0]["input_ids"].shape[0] == 8
    for key in ("input_ids", "labels"):
        assert torch.equal(held_out[0][key], held_out[1][key]), key


def test_a_nan_loss_does_not_make_the_rounds_counts_nan(corpus, tokenizer, tmp_path, monkeypatch):
    from masksub_kernels.training import mlm_cli

    nan = torch.tensor(float("nan"))
    monkeypatch.setattr(mlm_cli, "_make_step", lambda *a: lambda *b: {"loss": nan, "loss_main": nan, "loss_sub": nan})
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--device", "cpu"]
    assert main([*argv, "--steps", "2", "--eval-every", "2"]) == 0
    (row,) = _log(tmp_path)["epochs"]
    assert row["tokens_per_s"] > 0 and row["loss"] != row["loss"]  # the count stays 2 micro-batches; the loss NaN
    with open(tmp_path / "log.csv") as f:
        assert f.read().splitlines()[1].split(",")[3] == "nan"


def test_micro_batches_that_predict_nothing_are_not_averaged_into_the_logged_loss(corpus, tokenizer, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    # helper-107: a micro-batch without a predicted token has loss 0, which pulled the round's mean loss down
    from masksub_kernels.training import mlm_cli

    batches = mlm_cli._train_batch

    def first_predicts_nothing(args, vocab, data, step, part, parts):
        batch = batches(args, vocab, data, step, part, parts)
        if part == 0:
            batch["labels"] = torch.full_like(batch["labels"], -100)
        return batch

    def step(batch, *_):
        loss = torch.tensor(0.0 if (batch["labels"] == -100).all() else 2.0, device=batch["labels"].device)
        return {"loss": loss, "loss_main": loss, "loss_sub": loss}

    monkeypatch.setattr(mlm_cli, "_train_batch", first_predicts_nothing)
    monkeypatch.setattr(mlm_cli, "_make_step", lambda *a: step)
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--accum-steps", "2"]
    assert main([*argv, "--steps", "1", "--eval-every", "1"]) == 0
    (row,) = _log(tmp_path)["epochs"]
    assert row["loss"] == row["loss_sub"] == 2.0
    # tokens/s counts both micro-batches of 4 blocks of 16 tokens
    assert row["tokens_per_s"] * row["round_time_s"] == pytest.approx(2 * 4 * 16, rel=1e-6)


def test_fp16_without_a_grad_scaler_says_so(corpus, tokenizer, tmp_path, capsys):
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--device", "cpu"]
    assert main([*argv, "--steps", "1", "--eval-every", "1", "--amp", "fp16"]) == 0
    assert "note: --amp fp16 on cpu: no GradScaler" in capsys.readouterr().err


def test_blocks_of_many_documents_are_checked_for_their_special_tokens(tmp_path, capsys):
    """Packed blocks end each document with a [SEP] the sub-branch must keep: on a corpus of one-word paragraphs a
    block holds ~20 special tokens of 64, so at r = 0.5 (K = 32) a few % of the blocks would draw more predicted +
    special tokens than K (the command's cap would change the recipe there). The check before training counts the
    blocks' own special tokens (with 2 per block it passed, and the run stopped at the first such block)."""
    words = [f"w{i % 37} v{i % 11}" for i in range(3000)]  # two-word paragraphs
    (tmp_path / "short.txt").write_text("\n\n".join(words), encoding="utf-8")
    argv = ["--data-dir", str(tmp_path), "--vocab-size", "80", "--seq-len", "64", "--layers", "1", "--width", "16",
            "--heads", "2", "--batch-size", "4", "--steps", "2", "--eval-every", "1", "--eval-blocks", "4",
            "--output", str(tmp_path / "o")]  # fmt: skip
    assert main([*argv, "--mask-ratio", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "of the blocks draw more predicted + special tokens" in err and "a block holding up to" in err, err
    assert main([*argv, "--mask-ratio", "0.1", "--tokenizer", str(tmp_path / "o" / "tokenizer.json")]) == 0
    # a block whose special tokens alone outnumber K is refused, however rare
    other = ["--output", str(tmp_path / "o2"), "--tokenizer", str(tmp_path / "o" / "tokenizer.json")]  # o: a run
    assert main([*argv, *other, "--mask-ratio", "0.8", "--mlm-probability", "1e-9"]) == 2
    assert "but a training block holds" in capsys.readouterr().err


def test_the_keep_check_is_the_binomial_tail_over_the_blocks():
    from types import SimpleNamespace

    from masksub_kernels.training import mlm_cli

    # L = 8, K = floor(8 x 0.5) = 4: a block of s = 2 special tokens is over with P(X >= 3), X ~ Bin(6, p)
    p = 0.03
    tail = sum(mlm_args._binomial_pmf(6, x, p) for x in range(3, 7))
    assert mlm_args._over_keep(8, 2, 4, p) == pytest.approx(tail, rel=1e-12)
    assert mlm_args._over_keep(8, 5, 4, p) == pytest.approx(1.0)  # more special tokens than K: always over
    assert tail < mlm_args.CAPPED_SHARE_LIMIT < mlm_args._over_keep(8, 3, 4, p)
    args = SimpleNamespace(seq_len=8, mask_ratio=0.5, mlm_probability=p)
    mlm_args.check_keep(args)  # s = 2
    mlm_args.check_keep(args, specials=torch.tensor([2, 2, 2, 2]))
    # the blocks' own counts, weighted by their share: a quarter with 3 special tokens
    share = (3 * tail + mlm_args._over_keep(8, 3, 4, p)) / 4
    with pytest.raises(mlm_cli.UsageError, match=f"a share of {share:.1e} of the blocks.*holding up to 3 special"):
        mlm_args.check_keep(args, specials=torch.tensor([2, 3, 2, 2]))
    # one block of 10000 with more special tokens than K: refused whatever the share
    args.mlm_probability = 1e-9
    with pytest.raises(mlm_cli.UsageError, match="keeps 4 of 8 tokens, but a training block holds 5 special tokens"):
        mlm_args.check_keep(args, specials=torch.tensor([2] * 9999 + [5]))


def test_training_batches_cap_what_the_sub_branch_must_keep(corpus, tokenizer):
    """At 90% predicted nearly every block draws more than K = 12 of 16: the training batches keep the first
    K - s predicted tokens of each block (the sub-branch then takes every batch); the baseline's are not capped."""
    from tokenizers import Tokenizer

    from masksub_kernels.training import mlm_cli
    from masksub_kernels.training.mlm_blocks import TrainBlocks

    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--mlm-probability", "0.9"])
    tok = Tokenizer.from_file(tokenizer)
    blocks = text_data.pack_blocks(tok, text_data.text_dir_documents(corpus), 16)
    special_ids = torch.tensor([tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")])
    data = TrainBlocks(blocks, special_ids, torch.device("cpu"))
    vocab = mlm_cli.Vocab(tok.get_vocab_size(), tok.token_to_id("[MASK]"))
    keep = mk.num_kept_tokens(16, 0.25)
    batch = mlm_cli._train_batch(args, vocab, data, step=0, part=0, parts=1)
    kept = (batch["labels"] != -100).sum(1) + batch["special_tokens_mask"].sum(1)
    assert int(kept.max()) == keep
    args.baseline = True
    plain = mlm_cli._train_batch(args, vocab, data, step=0, part=0, parts=1)
    assert int(((plain["labels"] != -100).sum(1) + plain["special_tokens_mask"].sum(1)).max()) > keep
    capped = batch["labels"] != plain["labels"]  # the same draws: only later predicted tokens left out
    assert bool((batch["labels"][capped] == -100).all()) and bool(capped.any())


# kills mlm_cli.py:417 `dist.all_reduce(sums)` left out of _evaluate (under torchrun rank 0 logged the held-out loss
# and accuracy of its own share of the blocks only) and mlm_cli.py:513 the round's all_reduce left out (the logged
# training loss rank 0's micro-batches only): the weights matched, so no test saw the logged numbers differ
def test_two_processes_equal_one_with_accumulation(corpus, tokenizer, tmp_path):
    """torchrun, 2 CPU processes (gloo), dropout on: the weights equal one process with --accum-steps 2 (each
    step sees the same parts, each part seeds its masks and its dropout; DDP averages what accumulation averages),
    and so do the logged losses (summed over the ranks)."""
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
    for key in ("loss", "loss_main", "loss_sub", "val_loss", "val_acc"):
        got, want = ([row[key] for row in _log(tmp_path / run)["epochs"]] for run in ("two", "one"))
        assert got == pytest.approx(want, rel=1e-4), key


def test_the_vocabulary_a_run_uses_and_keeps(corpus, tokenizer, tmp_path, capsys):
    """helper-107's probe: a refused run left its trained tokenizer.json in --output, which the next run there read
    silently (its --vocab-size ignored); a resume without --tokenizer trained a new vocabulary beside the checkpoint
    before refusing it; --tokenizer DIR ended in a traceback after training one."""
    out = tmp_path / "o"
    assert main(["--data-dir", corpus, *TINY, "--output", str(out / "a" / "b"), "--batch-size", "100000"]) == 2
    assert "fewer than one step" in capsys.readouterr().err and not out.exists()  # nor the directories made for it
    out.mkdir()
    assert main(["--data-dir", corpus, *TINY, "--output", str(out), "--batch-size", "100000"]) == 2
    assert "fewer than one step" in capsys.readouterr().err and not (out / "tokenizer.json").exists() and out.is_dir()
    (out / "tokenizer.json").write_bytes(open(tokenizer, "rb").read())  # as an interrupted run leaves it
    assert main(["--data-dir", corpus, *TINY, "--output", str(out), "--steps", "1", "--eval-every", "1"]) == 0
    assert "note: using the vocabulary" in capsys.readouterr().err
    # a resume without --tokenizer takes the vocabulary of the checkpoint's run (here: --tokenizer's)
    run = tmp_path / "run"
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer]
    assert main([*common, "--output", str(run), "--stop-at", "2"]) == 0
    resumed = ["--data-dir", corpus, *TINY, "--resume", str(run / "last.pth")]
    assert main(resumed) == 0 and not (run / "tokenizer.json").exists()
    assert _log(run)["meta"]["tokenizer"] == tokenizer
    # ... and the one beside the checkpoint, where the run wrote its own; refused when it is gone
    own = tmp_path / "own"
    assert main(["--data-dir", corpus, *TINY, "--output", str(own), "--stop-at", "2"]) == 0
    os.rename(own / "tokenizer.json", tmp_path / "moved.json")
    assert main(["--data-dir", corpus, *TINY, "--resume", str(own / "last.pth")]) == 2
    assert "its run's vocabulary" in capsys.readouterr().err and not (own / "tokenizer.json").exists()
    # a resume's --tokenizer that names no file: refused before a vocabulary is trained (helper-199: one was
    # trained and written, ~10 s on the stdlib corpus, then refused by the digest check and deleted)
    absent = tmp_path / "absent.json"
    assert main(["--data-dir", corpus, *TINY, "--resume", str(own / "last.pth"), "--tokenizer", str(absent)]) == 2
    assert "no such file; a resumed run" in capsys.readouterr().err and not absent.exists()
    os.rename(tmp_path / "moved.json", own / "tokenizer.json")
    assert main(["--data-dir", corpus + "/", *TINY, "--resume", str(own / "last.pth")]) == 0  # corpus/ = corpus
    # a directory (a save_pretrained one) is refused before anything is trained
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", str(tmp_path / "hf"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and f"use --tokenizer {tmp_path / 'hf' / 'tokenizer.json'}" in err


def test_bad_text_and_backends_are_usage_errors_before_training(corpus, tokenizer, tmp_path, capsys, monkeypatch):
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "a.txt").write_bytes("café naïve\n\nrésumé".encode("latin-1"))
    assert main(["--data-dir", str(latin), *TINY, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{latin / 'a.txt'} is not UTF-8" in err and not (tmp_path / "o" / "tokenizer.json").exists()
    (latin / "a.txt").write_text("one document a line\n" * 50)
    assert main(["--data-dir", str(latin), *TINY, "--output", str(tmp_path / "o")]) == 2
    assert "documents are separated by blank lines" in capsys.readouterr().err
    from masksub_kernels import _backend

    for name, message in (("bogus", "unknown backend 'bogus'"), ("cuda", "")):  # cuda: no fused-linear loss
        monkeypatch.setattr(_backend, "_requested", None)  # read MASKSUB_BACKEND again, as a new process does
        monkeypatch.setenv("MASKSUB_BACKEND", name)
        assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "b")]) == 2
        assert f"MASKSUB_BACKEND: {message}" in capsys.readouterr().err and not (tmp_path / "b").exists()
    monkeypatch.setattr(_backend, "_requested", None)
    monkeypatch.delenv("MASKSUB_BACKEND")
    out = tmp_path / "ok"
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(out), "--steps", "1",
                 "--eval-every", "1", "--device", "cpu"]) == 0  # fmt: skip
    assert _log(out)["meta"]["backend"] == "torch"  # auto on CPU tensors


def test_the_model_pads_with_the_tokenizers_pad_id(corpus, tokenizer, tmp_path, monkeypatch):
    """helper-107: a --tokenizer whose [PAD] is not id 0 got a model with pad_token_id=0 (its id 0 another token)."""
    from masksub_kernels.training import mlm_cli

    with open(tokenizer) as f:
        spec = json.load(f)
    ids = spec["model"]["vocab"]
    ids["[PAD]"], ids["[UNK]"] = ids["[UNK]"], ids["[PAD]"]  # [PAD] = 1, [UNK] = 0
    for token in spec["added_tokens"]:
        token["id"] = ids[token["content"]]
    (tmp_path / "swapped.json").write_text(json.dumps(spec))
    models = []
    monkeypatch.setattr(mlm_cli, "_model", lambda args, vocab, _build=mlm_cli._model: models.append(_build(args, vocab))
                        or models[-1])  # fmt: skip
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", str(tmp_path / "swapped.json"), "--output", str(tmp_path / "o")]
    assert main([*argv, "--steps", "1", "--eval-every", "1"]) == 0
    assert models[0].config.pad_token_id == 1 and models[0].bert.embeddings.word_embeddings.padding_idx == 1


def test_a_resumed_run_finds_its_vocabulary_from_anywhere(corpus, tokenizer, tmp_path, monkeypatch):
    # helper-108: a run resumed into another --output could not be resumed again without --tokenizer (its checkpoint
    # recorded no vocabulary), and a relative --tokenizer was recorded as typed (a resume elsewhere missed it)
    monkeypatch.chdir(tmp_path)
    os.makedirs("work")
    with open(tokenizer, "rb") as f:
        (tmp_path / "work" / "tok.json").write_bytes(f.read())
    monkeypatch.chdir(tmp_path / "work")
    argv = ["--data-dir", corpus, *TINY, "--steps", "6"]
    assert main([*argv, "--output", "out1", "--tokenizer", "tok.json", "--stop-at", "2"]) == 0
    monkeypatch.chdir(tmp_path)  # another working directory
    assert main([*argv, "--resume", "work/out1/last.pth", "--output", "out2", "--stop-at", "4"]) == 0
    assert main([*argv, "--resume", "out2/last.pth"]) == 0
    state = torch.load(tmp_path / "out2" / "last.pth", weights_only=False)
    assert state["step"] == 6 and state["tokenizer"] == str(tmp_path / "work" / "tok.json")
    assert not (tmp_path / "out2" / "tokenizer.json").exists()
    # the default vocabulary (OUTPUT/tokenizer.json, a relative --output), resumed from another directory, and
    # after its run directory moved (helper-110: the recorded path, gone, won over the file beside the checkpoint)
    assert main([*argv, "--output", "out3", "--stop-at", "2"]) == 0
    monkeypatch.chdir(tmp_path / "work")
    assert main([*argv, "--resume", str(tmp_path / "out3" / "last.pth"), "--stop-at", "4"]) == 0
    os.rename(tmp_path / "out3", tmp_path / "moved")
    assert main([*argv, "--resume", str(tmp_path / "moved" / "last.pth")]) == 0
    assert torch.load(tmp_path / "moved" / "last.pth", weights_only=False)["step"] == 6


def test_chunk_rows_of_2_to_the_31_is_refused(tmp_path, capsys):
    # the bound is exclusive: [1, 2^31); checked before the corpus is read
    assert main(["--chunk-rows", str(2**31), "--output", str(tmp_path)]) == 2
    assert "--chunk-rows must be in [1, 2^31)" in capsys.readouterr().err
    args = mlm_cli.build_parser().parse_args(["--chunk-rows", str(2**31 - 1), "--output", str(tmp_path)])
    mlm_args.check_args(args)  # the largest allowed value passes


def test_a_vocab_size_equal_to_the_files_gets_no_note(corpus, tokenizer, tmp_path, capsys):
    # mlm_tokenizer.load_tokenizer notes an unused --vocab-size only where it differs from the file's size
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(tokenizer).get_vocab_size()
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--steps", "1",
            "--eval-every", "1", "--vocab-size", str(size)]  # fmt: skip
    assert main(argv) == 0
    assert "is not used" not in capsys.readouterr().err


def test_each_micro_batch_of_a_step_draws_its_own_masks_and_dropout(corpus, tokenizer, tmp_path, monkeypatch):
    # the micro-batches of one optimizer step are different blocks: the same keep pattern (sub-branch seed) or the
    # same dropout masks for each of them would correlate the parts that accumulation averages
    from masksub_kernels.training import MaskSub

    seen = []

    def spy(self, batch, target, optimizer, **kwargs):
        seen.append((kwargs["seed"], torch.initial_seed()))  # the train_step's masks, the dropout's seed
        zero = torch.zeros((), requires_grad=False)
        return {"loss": zero, "loss_main": zero, "loss_sub": zero}

    monkeypatch.setattr(MaskSub, "train_step", spy)
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--accum-steps", "2",
            "--steps", "2", "--eval-every", "2"]  # fmt: skip
    assert main(argv) == 0
    assert len(seen) == 4  # 2 steps x 2 micro-batches
    sub_seeds, dropout_seeds = zip(*seen)
    assert len(set(sub_seeds)) == 4, sub_seeds
    assert len(set(dropout_seeds)) == 4, dropout_seeds


def test_stop_at_the_last_step_need_not_be_a_multiple_of_eval_every():
    # a time-limited job's last slice ends at --steps, which always ends a round (helper-193)
    parse = mlm_cli.build_parser().parse_args
    mlm_args.check_args(parse(["--steps", "5", "--eval-every", "2", "--stop-at", "5", "--seq-len", "16",
                               "--mask-ratio", "0.25"]))  # fmt: skip
    with pytest.raises(mlm_cli.UsageError, match="must end a round"):
        mlm_args.check_args(parse(["--steps", "5", "--eval-every", "2", "--stop-at", "3", "--seq-len", "16",
                                   "--mask-ratio", "0.25"]))  # fmt: skip


def test_pack_blocks_ignores_a_tokenizer_files_truncation_and_padding(tmp_path):
    # a --tokenizer file saved with truncation cut every document silently, one with padding put [PAD] ids into
    # the packed stream as input tokens (helper-193): pack_blocks turns both off around its encode_batch
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer

    docs = ["the quick brown fox jumps over the lazy dog and keeps running far away"] * 3 + ["a b"]
    plain = text_data.train_tokenizer(docs * 4, 80)
    plain.save(str(tmp_path / "plain.json"))
    configured = Tokenizer.from_file(str(tmp_path / "plain.json"))
    configured.enable_truncation(max_length=4)
    configured.enable_padding(pad_id=0, pad_token="[PAD]")
    configured.save(str(tmp_path / "configured.json"))
    want = text_data.pack_blocks(Tokenizer.from_file(str(tmp_path / "plain.json")), docs, 8)
    got = text_data.pack_blocks(Tokenizer.from_file(str(tmp_path / "configured.json")), docs, 8)
    assert torch.equal(got, want)  # was 3 blocks of documents cut to 4 tokens (13 expected), a [PAD] among them
