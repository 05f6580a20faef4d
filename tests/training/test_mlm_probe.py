"""``masksub-train-mlm``: the fixes after a user's probe (helper-297), each test failing before its fix."""

from __future__ import annotations

import os

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)

from masksub_kernels.training import mlm_blocks
from masksub_kernels.training.mlm_cli import main
from masksub_kernels.training.run_setup import UsageError, check_writable_directory

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

CPU = ["--device", "cpu"]
UNMAKEABLE = "/proc/masksub-h297/out"  # a folder no one can make (root included: os.access passes for root)
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")


# 1. check_writable_directory trusted os.access for a folder to make (root passes everywhere): --output /proc/x
# trained a round, then failed in write_log with a FileNotFoundError traceback
@needs_proc
def test_an_output_that_cannot_be_made_is_refused_before_training(corpus, tokenizer, tmp_path, capsys):
    args = ["--data-dir", corpus, *TINY, *CPU, "--tokenizer", tokenizer, "--output", UNMAKEABLE]
    assert main([*args, "--block-cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr()
    assert f"--output '{UNMAKEABLE}' cannot be made" in err.err
    assert "step 2" not in err.out and not os.listdir(tmp_path)  # nothing trained, no cache packed


@needs_proc
def test_check_writable_directory_makes_a_missing_folder_then_removes_it(tmp_path):
    with pytest.raises(UsageError, match="cannot be made"):
        check_writable_directory(UNMAKEABLE, "--output")
    check_writable_directory(str(tmp_path / "a" / "b"), "--output")  # can be made: made, tried, removed
    assert os.listdir(tmp_path) == []
    check_writable_directory(str(tmp_path), "--output")  # an existing folder stays, empty
    assert os.listdir(tmp_path) == []


# 1b. the cache's refusal named --block-cache where the user gave none (it defaulted to --output)
@needs_proc
def test_the_cache_refusal_names_output_when_the_cache_defaulted_to_it():
    blocks = {"train": torch.ones(4, 16, dtype=torch.int32), "held_out": torch.ones(2, 16, dtype=torch.int32)}
    with pytest.raises(UsageError, match=r"^--output '/proc/masksub-h297/out': the token blocks cannot be cached"):
        mlm_blocks.ensure_cache(UNMAKEABLE, {"key": "k" * 64, "version": 2}, lambda: blocks, {}, lambda b: {},
                                f"--output {UNMAKEABLE!r}")  # fmt: skip


# 2. a resume whose recorded vocabulary (--tokenizer X) and the file beside the checkpoint are both gone named only
# the fallback beside the checkpoint, never X
def test_a_missing_vocabulary_names_the_recorded_path_and_the_one_beside(tmp_path):
    from types import SimpleNamespace

    from masksub_kernels.training.mlm_tokenizer import tokenizer_path

    recorded, checkpoint = str(tmp_path / "shared" / "tok.json"), str(tmp_path / "run" / "last.pth")
    args = SimpleNamespace(tokenizer=None, resume=checkpoint, output=str(tmp_path / "run"))
    with pytest.raises(UsageError) as info:
        tokenizer_path(args, {"tokenizer": recorded, "args": {}})
    beside = str(tmp_path / "run" / "tokenizer.json")
    assert f"neither '{recorded}' (the path the checkpoint records) nor '{beside}' (beside the checkpoint)" in str(
        info.value
    )
    with pytest.raises(UsageError, match=f"its run's vocabulary '{beside}' is missing; pass --tokenizer"):
        tokenizer_path(args, {"tokenizer": beside, "args": {}})  # one path: named once


# 3. 300 copies of one paragraph were "too few documents to hold 10% out": the split is by a hash of the text, so
# identical documents fall together
def test_identical_documents_are_refused_as_one_text_held_out_together(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(["the same paragraph, again and again"] * 300), encoding="utf-8")
    with pytest.raises(UsageError) as info:
        mlm_blocks.read_documents(str(tmp_path))
    message = str(info.value)
    assert "300 document(s), 1 distinct" in message and "landed in the held-out part" in message
    assert "identical texts fall together" in message and "give more distinct documents" in message


@pytest.fixture(scope="module", name="run32")
def run32_fixture(corpus, tokenizer, tmp_path_factory) -> str:
    """A run of --seq-len 32, --mask-ratio 0.5 stopped at step 2 of 4: its last.pth."""
    out = tmp_path_factory.mktemp("run32")
    assert main(["--data-dir", corpus, *TINY, *CPU, "--seq-len", "32", "--mask-ratio", "0.5", "--tokenizer", tokenizer,
                 "--output", str(out), "--stop-at", "2"]) == 0  # fmt: skip
    return str(out / "last.pth")


def _no_corpus(monkeypatch) -> None:
    def read(*_args, **_kwargs):
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(mlm_blocks, "corpus_documents", read)


# 4. a resume with another --seq-len (32 -> 16) was refused by the masking cap at 16 (check_args' check_keep), not as
# a resume of another run
def test_a_resume_with_another_seq_len_names_it_before_the_masking_cap(corpus, run32, monkeypatch, capsys):
    _no_corpus(monkeypatch)
    args = ["--data-dir", corpus, *TINY, *CPU, "--mask-ratio", "0.5", "--resume", run32]  # (TINY's --seq-len 16)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "continues another run" in err and "--seq-len 32 -> 16" in err and "lower --mask-ratio" not in err


# 5. a resume of a run with no step left was refused only after the corpus was read and its cache checked
def test_a_resume_with_nothing_left_is_refused_before_the_corpus_is_read(corpus, run32, monkeypatch, capsys):
    _no_corpus(monkeypatch)
    args = ["--data-dir", corpus, *TINY, *CPU, "--seq-len", "32", "--mask-ratio", "0.5", "--resume", run32]
    assert main([*args, "--steps", "2"]) == 2
    assert "is at step 2: nothing left to train" in capsys.readouterr().err


def _options(*argv: str) -> dict:
    from masksub_kernels.training.mlm_cli import build_parser

    return vars(build_parser().parse_args(list(argv)))


# 6. resume comparisons of the values a run uses: --intermediate 256 on a run of the default (4 x --width 64 = 256)
# was refused as '--intermediate None -> 256'; --seed -1 trained as 2^63 - 1 (and 2^64 - 1): refused up front
def test_a_resume_compares_the_feed_forward_size_the_model_has():
    from argparse import Namespace

    from masksub_kernels.training.mlm_resume import _changes

    state = {"args": _options("--width", "64"), "world_size": 1}
    assert _changes(Namespace(**_options("--width", "64", "--intermediate", "256")), state, 1, None) == []
    assert _changes(Namespace(**_options("--width", "32")), state, 1, None) == ["--width 64 -> 32"]  # (named once)
    changed = _changes(Namespace(**_options("--width", "64", "--intermediate", "128")), state, 1, None)
    assert changed == ["--intermediate None (4 x --width = 256) -> 128"]


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64 - 1)])
def test_a_seed_outside_0_to_2_63_is_refused(seed, capsys):
    assert main(["--seed", seed, "--steps", "4", "--stop-at", "5"]) == 2  # (else refused by --stop-at, untrained)
    assert f"--seed must be an integer in [0, 2^63) (seeds that differ by 2^63 train alike), got {seed}" in (
        capsys.readouterr().err
    )


# 7. --baseline trains no sub-branch: its --mask-ratio / --sub-fill / --schedule were accepted silently, and a resume
# that changed them was refused as another run
def test_the_baseline_notes_its_unused_options_and_does_not_compare_them(tmp_path, capsys):
    from argparse import Namespace

    from masksub_kernels.training.mlm_resume import _changes

    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["--baseline", "--mask-ratio", "0.3", "--schedule", "joint", "--output", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "note: not used with --baseline (no sub-branch): --mask-ratio, --schedule" in err
    state = {"args": _options("--baseline"), "world_size": 1}
    assert (
        _changes(Namespace(**_options("--baseline", "--mask-ratio", "0.3", "--sub-fill", "mask")), state, 1, None) == []
    )
    assert _changes(Namespace(**_options("--mask-ratio", "0.3")), state, 1, None) == [
        "--baseline True -> False",
        "--mask-ratio 0.5 -> 0.3",
    ]


# 8. Ctrl-C (SIGINT) ended the command in a raw KeyboardInterrupt traceback
@pytest.mark.parametrize("at", [0, 2])
def test_an_interrupt_names_the_checkpoint_to_resume_from(at, corpus, tokenizer, tmp_path, monkeypatch, capsys):
    from masksub_kernels.training import mlm_cli

    train_batch = mlm_cli._train_batch

    def interrupted(args, vocab, data, step, part, parts):
        if step == at:
            raise KeyboardInterrupt
        return train_batch(args, vocab, data, step, part, parts)

    monkeypatch.setattr(mlm_cli, "_train_batch", interrupted)
    assert main(["--data-dir", corpus, *TINY, *CPU, "--tokenizer", tokenizer, "--output", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    if at == 0:
        assert "masksub-train-mlm: interrupted at step 1; no checkpoint yet (the first is saved at step 2)" in err
    else:
        last = tmp_path / "last.pth"
        assert (f"masksub-train-mlm: interrupted at step 3; {last} holds step 2: rerun the command with --resume "
                f"{last}") in err  # fmt: skip
    assert "Traceback" not in err
    monkeypatch.setenv("MASKSUB_TRACEBACK", "1")  # a hung run's Ctrl-C: where it was, then the one line
    assert main(["--data-dir", corpus, *TINY, *CPU, "--tokenizer", tokenizer, "--output", str(tmp_path / "t")]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback (most recent call last)" in err and "in interrupted" in err
    assert err.splitlines()[-1].startswith("masksub-train-mlm: interrupted at step ")


def test_an_interrupt_in_a_save_or_a_resumes_read_names_what_the_checkpoints_hold(
    corpus, tokenizer, tmp_path, monkeypatch, capsys
):
    from masksub_kernels.training import checkpoint, mlm_cli

    save = checkpoint.save_checkpoint
    last = tmp_path / "last.pth"

    def half_written(path, state):  # the Ctrl-C while the second save writes: last.pth (step 2) is intact
        if state["step"] == 4:
            open(f"{path}.tmp", "wb").close()
            raise KeyboardInterrupt
        save(path, state)

    def renamed(path, state):  # the Ctrl-C after the rename (the folder's fsync): last.pth holds step 2
        save(path, state)
        raise KeyboardInterrupt

    run = ["--data-dir", corpus, *TINY, *CPU, "--tokenizer", tokenizer, "--output", str(tmp_path)]
    monkeypatch.setattr(checkpoint, "save_checkpoint", half_written)
    assert main(run) == 130
    err = capsys.readouterr().err
    assert f"interrupted while saving step 4; {last} holds step 2: rerun the command with --resume {last}" in err
    assert not os.path.exists(f"{last}.tmp")
    monkeypatch.setattr(checkpoint, "save_checkpoint", renamed)
    assert main([*run[:-1], str(tmp_path / "r")]) == 130
    assert f"interrupted while saving step 2; {tmp_path / 'r' / 'last.pth'} holds step 2" in capsys.readouterr().err

    def read(args, prog):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlm_cli, "read_checkpoint", read)
    assert main([*run, "--resume", str(last)]) == 130
    assert f"interrupted before training began; {last} is unchanged: to continue, rerun" in capsys.readouterr().err


# 9. --vocab-size 200 on a small corpus trained fewer tokens with no note; the API trained a 5-token vocabulary from
# no documents, and any vocab_size below the command's minimum
def test_a_vocabulary_smaller_than_asked_is_noted(tmp_path, capsys):
    words = " ".join(f"w{i}" for i in range(40))
    (tmp_path / "a.txt").write_text("\n\n".join(f"{words} doc {i}." for i in range(60)), encoding="utf-8")
    args = ["--data-dir", str(tmp_path), *TINY, *CPU, "--vocab-size", "2000", "--output", str(tmp_path / "out")]
    main([*args, "--batch-size", "100000"])  # (refused after the vocabulary: too few blocks)
    err = capsys.readouterr().err
    assert "note: --vocab-size 2000: the vocabulary trained has" in err and "seen at least twice" in err


def test_train_tokenizer_refuses_no_documents_and_a_size_below_the_minimum():
    from masksub_kernels.training import text_data

    with pytest.raises(ValueError, match="no documents to train the vocabulary on"):
        text_data.train_tokenizer([], 100)
    with pytest.raises(ValueError, match=r"vocab_size must be >= 64 \(the special tokens and the characters\), got 5"):
        text_data.train_tokenizer(["some words"] * 4, 5)


# 10. the vocabulary tool (python -m masksub_kernels.training.text_data PATH): an unwritable PATH trained, then
# failed in a traceback; an existing PATH was replaced silently (the command reuses one, never replaces it)
@needs_proc
def test_the_vocabulary_tool_checks_its_path_before_training(tmp_path, monkeypatch, capsys):
    from masksub_kernels.training import text_data

    (tmp_path / "a.txt").write_text("\n\n".join(f"paragraph {i} of words to learn" for i in range(40)))
    trained = []
    real = text_data.train_tokenizer
    monkeypatch.setattr(text_data, "train_tokenizer", lambda d, size: trained.append(1) or real(d, size))
    with pytest.raises(SystemExit):
        text_data.main([f"{UNMAKEABLE}/tok.json", "--vocab-size", "64", "--data-dir", str(tmp_path)])
    assert f"'{UNMAKEABLE}/tok.json': its folder cannot be made" in capsys.readouterr().err and not trained
    path = tmp_path / "tok.json"
    path.write_text("{}")
    with pytest.raises(SystemExit):
        text_data.main([str(path), "--vocab-size", "64", "--data-dir", str(tmp_path)])
    assert "exists: runs that share it (--tokenizer) would read another vocabulary; pass --overwrite" in (
        capsys.readouterr().err
    )
    assert path.read_text() == "{}" and not trained
    assert text_data.main([str(path), "--vocab-size", "64", "--data-dir", str(tmp_path), "--overwrite"]) == 0
    assert path.read_text() != "{}"


# 11. messages: --seq-len 0 said '>= 1' (2 said '>= 3'); integer options said 'a finite number'; the note on a
# tokenizer.json found in --output named a --vocab-size never given
@pytest.mark.parametrize(("argv", "message"), [
    (["--seq-len", "0"], "--seq-len must be >= 3 ([CLS], a token, [SEP]), got 0"),
    (["--warmup-steps", "-1"], "--warmup-steps must be an integer >= 0, got -1"),
    (["--eval-blocks", "-2"], "--eval-blocks must be an integer >= 0, got -2"),
])  # fmt: skip
def test_the_messages_of_integer_options(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_note_on_a_found_vocabulary_names_no_vocab_size_not_given(corpus, tokenizer, tmp_path, capsys):
    import shutil

    assert TINY[:2] == ["--vocab-size", "120"]
    (tmp_path / "out").mkdir()
    shutil.copy(tokenizer, tmp_path / "out" / "tokenizer.json")
    main(["--data-dir", corpus, *TINY[2:], *CPU, "--output", str(tmp_path / "out"), "--batch-size", "100000"])
    err = capsys.readouterr().err
    assert "that an earlier run wrote there (not trained by this run: delete it" in err and "--vocab-size" not in err
