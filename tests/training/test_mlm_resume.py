"""``masksub-train-mlm --resume`` (training/mlm_resume.py): exact continuation, refusals, the resumes' record."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

from masksub_kernels.training import mlm_args, mlm_cli
from masksub_kernels.training.mlm_blocks import TrainBlocks
from masksub_kernels.training.mlm_cli import main
from masksub_kernels.training.run_setup import UsageError

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def _data(blocks: torch.Tensor) -> TrainBlocks:
    """Training blocks for _build on the CPU ([PAD], [CLS], [SEP]: ids 0, 2, 3)."""
    return TrainBlocks(blocks, torch.tensor([0, 2, 3]), torch.device("cpu"))


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


def test_bad_resume_files(corpus, tokenizer, tmp_path, capsys):
    torch.save([1, 2], tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("garbage\n")
    torch.save({"module": {}, "epoch": 0}, tmp_path / "image.pth")  # another command's checkpoint
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "step": 1, "args": {}}, tmp_path / "norows.pth")
    for name, message in (
        (
            "list",
            "is not a masksub-train-mlm checkpoint (it lacks model, optimizer, scheduler, step, rows, args: a "
            "list, not a dict)",
        ),
        ("text", "cannot read checkpoint"),
        ("image", "is not a masksub-train-mlm checkpoint"),
        ("norows", "is not a masksub-train-mlm checkpoint (it lacks rows)"),  # the keys it lacks (helper-162)
    ):
        argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "o")]
        assert main([*argv, "--resume", str(tmp_path / f"{name}.pth")]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("masksub-train-mlm: error:") and message in err, err
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "o")]
    assert main([*argv, "--resume", str(tmp_path)]) == 2  # helper-148: a directory was "no such file"
    assert f"--resume {str(tmp_path)!r} is a directory, not a file (e.g. its last.pth)" in capsys.readouterr().err


def test_a_resume_on_another_corpus_is_refused(corpus, tokenizer, tmp_path, capsys):
    # helper-157: files changed under the same --data-dir (or the stdlib corpus of another Python) were trained on
    # silently: the checkpoint now keeps a SHA-256 of the training and held-out blocks
    changed = tmp_path / "corpus"
    changed.mkdir()
    for name in ("a.txt", os.path.join("sub", "b.txt")):
        os.makedirs(changed / os.path.dirname(name), exist_ok=True)
        (changed / name).write_bytes(open(os.path.join(corpus, name), "rb").read())
    common = ["--data-dir", str(changed), *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "run")]
    assert main([*common, "--stop-at", "2"]) == 0
    checkpoint = str(tmp_path / "run" / "last.pth")
    state = torch.load(checkpoint, weights_only=False)
    assert state["corpus"]["documents"] == 400
    del state["corpus"]  # as a checkpoint from before the corpus was recorded
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "last.pth")
    (changed / "sub" / "b.txt").unlink()  # half the corpus gone
    assert main([*common, "--resume", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "continues another run: the corpus (--data-dir" in err and "400 -> 200 documents" in err, err
    # the same sizes, other text
    (changed / "sub" / "b.txt").write_text(open(os.path.join(corpus, "sub", "b.txt")).read().replace("the", "a"))
    assert main([*common, "--resume", checkpoint]) == 2
    assert "400 -> 400 documents" in capsys.readouterr().err
    (changed / "sub" / "b.txt").write_bytes(open(os.path.join(corpus, "sub", "b.txt"), "rb").read())
    assert main([*common, "--resume", checkpoint]) == 0  # the same text again
    # a checkpoint from before the corpus was recorded resumes as before, on any corpus
    (changed / "sub" / "b.txt").unlink()
    old = [*common[:-1], str(tmp_path / "old"), "--resume", str(tmp_path / "old" / "last.pth")]
    assert main(old) == 0


def test_the_corpus_digest_reads_every_token():
    from masksub_kernels.training.mlm_resume import corpus_digest

    train, val = torch.arange(12).view(3, 4), torch.arange(8).view(2, 4)
    other = train.clone()
    other[2, 3] = 99  # one token: the same shapes
    assert corpus_digest(train, val) == corpus_digest(train.clone(), val.clone())
    assert corpus_digest(other, val) != corpus_digest(train, val) != corpus_digest(train, val + 1)
    assert corpus_digest(train.view(4, 3), val) != corpus_digest(train, val)  # the blocks' length too


def test_the_resumes_are_recorded(corpus, tokenizer, tmp_path, capsys):
    # helper-157: a resume rewrote log.json's meta with its own options (a run of fp32 steps then bf16 ones was
    # logged as bf16 throughout), without the record masksub-train keeps
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path)]
    assert main([*common, "--stop-at", "2"]) == 0
    assert _log(tmp_path)["meta"]["resumes"] == []
    assert main([*common, "--resume", str(tmp_path / "last.pth"), "--amp", "bf16", "--vocab-size", "200"]) == 0
    assert "note: --vocab-size 200 is not used: the vocabulary read from" in capsys.readouterr().err
    (resume,) = _log(tmp_path)["meta"]["resumes"]
    assert resume["step"] == 2 and resume["from"] == str(tmp_path / "last.pth")
    assert resume["changed"] == ["--amp 'none' -> 'bf16'", "--vocab-size 120 -> 200"]
    assert torch.load(tmp_path / "last.pth", weights_only=False)["resumes"] == [resume]


def test_a_resume_with_other_steps_trains_its_first_step_at_the_new_schedules_rate(corpus, tokenizer, tmp_path):
    # mlm_resume.load_state: the scheduler's state holds the old schedule's rate for the next step; the new --steps'
    # rate must be put back into the optimizer (LambdaLR.step recomputes it only from the step after)
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path)]
    assert main([*common, "--stop-at", "2"]) == 0  # --steps 4, --warmup-steps 1, --lr 1e-3
    assert main([*common, "--resume", str(tmp_path / "last.pth"), "--steps", "8", "--eval-every", "1",
                 "--stop-at", "3"]) == 0  # fmt: skip
    row = _log(tmp_path)["epochs"][-1]
    assert row["step"] == 3
    assert row["lr"] == pytest.approx(1e-3 * mlm_cli._lr_factor(2, 1, 8))  # (8 - 2) / 7, not the old (4 - 2) / 3


def test_a_resume_without_tokenizer_gets_no_earlier_run_note(corpus, tmp_path, capsys):
    # mlm_tokenizer.load_tokenizer: the note on a reused OUTPUT/tokenizer.json is for fresh runs, not resumes
    common = ["--data-dir", corpus, *TINY, "--output", str(tmp_path)]
    assert main([*common, "--stop-at", "2"]) == 0
    capsys.readouterr()
    assert main([*common, "--resume", str(tmp_path / "last.pth")]) == 0
    assert "that an earlier run wrote there" not in capsys.readouterr().err


def test_a_resume_with_another_number_of_parts_per_step_is_refused():
    # the parts of a step are accum-steps x processes: another count would silently change every step's data and
    # seeds (helper-193); another split of the same count is the same run (helper-253: 2 processes train as 1 with
    # --accum-steps 2, test_mlm_cli.py), so 2 GPUs may continue on 1 with twice the accumulation
    from masksub_kernels.training import mlm_cli
    from masksub_kernels.training.mlm_resume import check_resume

    parse = mlm_cli.build_parser().parse_args
    args = parse(["--resume", "run/last.pth"])
    sizes = {"tokenizer_sha256": "same", "corpus_sha256": "same"}
    state = {"args": dict(vars(args)), "step": 2, "world_size": 2, "tokenizer_sha256": "same"}
    with pytest.raises(mlm_cli.UsageError, match=r"continues another run: a step's parts, --accum-steps x processes, "
                                                 r"1 x 2 -> 1 x 1$"):  # fmt: skip
        check_resume(args, state, 1, sizes)
    check_resume(args, state, 2, sizes)  # the same processes: resumes
    check_resume(parse(["--resume", "run/last.pth", "--accum-steps", "2"]), state, 1, sizes)  # the same parts
    with pytest.raises(mlm_cli.UsageError, match=r"1 x 2 -> 2 x 2"):
        check_resume(parse(["--resume", "run/last.pth", "--accum-steps", "2"]), state, 2, sizes)
    del state["world_size"]  # (a checkpoint without it: one process)
    check_resume(args, state, 1, sizes)


# helper-279: where options and other differences were both refused, the step's parts and the vocabulary were listed
# under "its options differ from this command's (the checkpoint's -> this command's)": the options under that heading
# now, the rest after it under its own words, the ending that a resume repeats the run's options kept
def test_a_refusal_lists_the_options_apart_from_the_other_differences():
    from masksub_kernels.training.mlm_resume import check_resume, check_resume_early

    parse = mlm_cli.build_parser().parse_args
    args = parse(["--resume", "run/last.pth", "--seed", "1"])
    state = {"args": dict(vars(parse(["--resume", "run/last.pth"]))), "step": 2, "world_size": 2,
             "tokenizer_sha256": "that"}  # fmt: skip
    expected = (
        "--resume 'run/last.pth' continues another run: its options differ from this command's (the checkpoint's -> "
        "this command's): --seed 0 -> 1. Other differences: a step's parts, --accum-steps x processes, 1 x 2 -> 1 x 1; "
        "the vocabulary (tokenizer.json differs). A resume repeats the run's options (its command line: log.json's "
        "meta.command) with --resume added"
    )
    with pytest.raises(UsageError) as refused:
        check_resume(args, state, 1, {"tokenizer_sha256": "this", "corpus_sha256": "same"})
    assert str(refused.value) == expected
    with pytest.raises(UsageError) as refused:  # before the blocks are packed: the same words
        check_resume_early(args, state, 1, "this", {"documents_sha256": "same"}, 400)
    assert str(refused.value) == expected


# kills mlm_cli.py:497 `wall = rows[-1]["wall_time_s"] if rows else 0.0` -> `0.0` (a resumed run's wall clock
# restarted at 0: the log said the run took the last slice's time) and mlm_cli.py:521 `"round": len(rows) + 1` ->
# `len(rows)` (the rounds numbered from 0, and the resumed run's first round repeated the last one's number)
def test_a_resumed_run_continues_the_rounds_and_the_wall_clock(corpus, tokenizer, tmp_path):
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--eval-every", "1"]
    assert main([*common, "--stop-at", "2"]) == 0
    assert main([*common, "--resume", str(tmp_path / "last.pth")]) == 0
    rows = _log(tmp_path)["epochs"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and [r["step"] for r in rows] == [1, 2, 3, 4]
    walls = [r["wall_time_s"] for r in rows]  # each round adds at least its training time (and its evaluation's)
    assert all(walls[i + 1] - walls[i] >= rows[i + 1]["round_time_s"] for i in range(3)), rows


# kills mlm_cli.py:534 `"scaler": scaler.state_dict() if scaler else None` -> `None` and mlm_resume.py:102 the
# scaler's load left out: on the CPU no run has a GradScaler (CUDA float16 only), so no test saw the loss scale
# saved or restored; a CUDA --amp fp16 run resumed at the default scale (its first steps skipped as overflows)
def test_a_runs_loss_scale_is_saved_and_restored(corpus, tokenizer, tmp_path, monkeypatch):
    real_build = mlm_cli._build

    def with_a_scaler(*args, **kwargs):  # as a CUDA --amp fp16 run has one
        ms, optimizer, scheduler, _, autocast = real_build(*args, **kwargs)
        return ms, optimizer, scheduler, torch.amp.GradScaler("cpu", init_scale=1234.0), autocast

    monkeypatch.setattr(mlm_cli, "_build", with_a_scaler)
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--stop-at", "2"]
    assert main(argv) == 0
    state = torch.load(tmp_path / "last.pth", weights_only=False)
    assert state["scaler"] is not None and state["scaler"]["scale"] == 1234.0
    # load_state, as _build calls it with the resumed run's new scaler (at its default scale)
    from masksub_kernels.training.mlm_resume import load_state

    args = mlm_cli.build_parser().parse_args([*argv, "--resume", str(tmp_path / "last.pth")])
    vocab = mlm_cli.Vocab(_log(tmp_path)["meta"]["vocab_size"], 4, 0)
    blocks = torch.randint(5, 64, (8, 16))
    ms, optimizer, scheduler, _, _ = real_build(args, vocab, _data(blocks), None, 1, torch.device("cpu"), 0, {})
    scaler = torch.amp.GradScaler("cpu")
    load_state(args, state, ms, optimizer, scheduler, scaler, 0, "prog")
    assert scaler.get_scale() == 1234.0


# kills mlm_resume.py:22 RESUME_MUST_MATCH without "lr", without "warmup_steps" (each: a resume that silently
# changed the learning rate), and each other option's removal (--accum-steps: the parts test above); helper-338:
# without "sub_fill", "mlm_probability" or "clip_grad" (each survived every test), "seed", "seq_len", "mask_ratio" or
# "width" (each caught only by a test that trains, or by a message's wording)
@pytest.mark.parametrize(
    "flag, value",
    [("--lr", "2e-3"), ("--warmup-steps", "50"), ("--batch-size", "32"),
     ("--weight-decay", "0.1"), ("--dropout", "0.2"), ("--layers", "2"), ("--heads", "4"), ("--intermediate", "64"),
     ("--eval-blocks", "16"), ("--schedule", "joint"), ("--baseline", None), ("--seed", "1"), ("--seq-len", "32"),
     ("--mask-ratio", "0.25"), ("--sub-fill", "mask"), ("--mlm-probability", "0.2"), ("--width", "64"),
     ("--clip-grad", "0.5")],
)  # fmt: skip
def test_a_resume_with_another_value_of_an_option_that_fixes_the_run_is_refused(flag, value):
    from masksub_kernels.training.mlm_resume import check_resume

    parse = mlm_cli.build_parser().parse_args
    saved = parse(["--resume", "run/last.pth"])
    args = parse(["--resume", "run/last.pth", flag, *([value] if value else [])])
    sizes = {"tokenizer_sha256": "same", "corpus_sha256": "same"}
    state = {"args": dict(vars(saved)), "step": 2, "world_size": 1, "tokenizer_sha256": "same"}
    with pytest.raises(mlm_cli.UsageError, match=rf"continues another run: its options differ from .*: {flag} "):
        check_resume(args, state, 1, sizes)


# kills mlm_resume.py:68 `(args.stop_at or args.steps)` -> `args.steps`: a time-limited job started again with the
# --stop-at its checkpoint already reached trained nothing, wrote nothing, and exited 0
def test_a_resume_already_at_its_stop_at_is_refused():
    from masksub_kernels.training.mlm_resume import check_resume

    parse = mlm_cli.build_parser().parse_args
    args = parse(["--resume", "run/last.pth", "--steps", "400", "--stop-at", "200"])
    sizes = {"tokenizer_sha256": "same", "corpus_sha256": "same"}
    state = {"args": dict(vars(args)), "step": 200, "world_size": 1, "tokenizer_sha256": "same"}
    with pytest.raises(mlm_cli.UsageError, match="is at step 200: nothing left to train"):
        check_resume(args, state, 1, sizes)
    args.stop_at = 400
    check_resume(args, state, 1, sizes)


# helper-199's bug: a run with a relative --output (the default output/mlm too), resumed by --resume alone, takes the
# absolute directory of the checkpoint (default_output): the two strings differed, and every such resume recorded
# "--output 'runs/mlm' -> '/cwd/runs/mlm'" in log.json's meta.resumes. Now the command records --output and --data-dir
# absolute (helper-201: a resume from another working directory read a relative one against its own), and compares
# them as directories (an older checkpoint's relative ones: from the directory its run started in)
def test_a_plain_resume_records_no_change_of_output_from_any_working_directory(tmp_path, monkeypatch):
    from masksub_kernels.training.mlm_resume import resumes

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    first = mlm_cli.build_parser().parse_args(["--output", "runs/mlm", "--data-dir", "."])
    mlm_args.check_args(first)
    assert (first.output, first.data_dir) == (str(tmp_path / "runs" / "mlm"), str(tmp_path))
    state = {"args": dict(vars(first)), "step": 200}
    older = {"args": {**vars(first), "output": "runs/mlm"}, "step": 200}  # a checkpoint from before: relative
    again = mlm_cli.build_parser().parse_args(["--resume", "runs/mlm/last.pth"])
    again.output = mlm_args.default_output(again, "output/mlm")  # as check_args sets it (the file need not exist)
    assert resumes(again, state)[-1]["changed"] == resumes(again, older)[-1]["changed"] == []
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = mlm_cli.build_parser().parse_args(["--resume", "../runs/mlm/last.pth"])
    moved.output = mlm_args.default_output(moved, "output/mlm")
    assert resumes(moved, state)[-1]["changed"] == []
    into = mlm_cli.build_parser().parse_args(["--resume", "../runs/mlm/last.pth", "--output", "runs/mlm"])
    into.output = os.path.abspath(into.output)  # elsewhere/runs/mlm: another directory of the same name
    assert resumes(into, state)[-1]["changed"] == [f"--output {first.output!r} -> {into.output!r}"]


# helper-230
# kills mlm_resume.py load_state's `zip(optimizer.param_groups, ...)` -> `zip(optimizer.param_groups[:1], ...)`:
# the new --steps' rate put back into the decayed group only, so the biases and LayerNorm weights (the second group)
# trained the resumed run's first step at the old schedule's rate; the log reads the first group's rate alone
def test_a_resume_with_other_steps_sets_every_groups_rate(corpus, tokenizer, tmp_path):
    from masksub_kernels.training.mlm_resume import load_state

    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--stop-at", "2"]
    assert main(argv) == 0  # --steps 4, --warmup-steps 1, --lr 1e-3: the next step's old rate 1e-3 * 2 / 3
    state = torch.load(tmp_path / "last.pth", weights_only=False)
    args = mlm_cli.build_parser().parse_args([*argv, "--resume", str(tmp_path / "last.pth"), "--steps", "8"])
    vocab = mlm_cli.Vocab(_log(tmp_path)["meta"]["vocab_size"], 4, 0)
    blocks = torch.randint(5, 64, (8, 16))
    ms, optimizer, scheduler, _, _ = mlm_cli._build(args, vocab, _data(blocks), None, 1, torch.device("cpu"),
                                                    0, {})  # fmt: skip
    load_state(args, state, ms, optimizer, scheduler, None, 0, "prog")
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:  # (8 - 2) / 7 of --lr, in the decayed group and in the other
        assert group["lr"] == pytest.approx(1e-3 * mlm_cli._lr_factor(2, 1, 8)), group["weight_decay"]


# helper-233's mutation audit of mlm_resume.py


def _state(args, **extra):
    return {"args": dict(vars(args)), "step": 2, "world_size": 1, **extra}


# kills mlm_resume.py:56 `not in (None, digest)` -> `!= digest` (a checkpoint from before the vocabulary's digest was
# recorded refused as "another vocabulary") and the digest check left out
def test_a_resume_compares_the_vocabulary_only_where_the_checkpoint_recorded_it():
    from masksub_kernels.training import mlm_cli
    from masksub_kernels.training.mlm_resume import check_resume

    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth"])
    sizes = {"tokenizer_sha256": "this", "corpus_sha256": "same"}
    check_resume(args, _state(args), 1, sizes)  # an older checkpoint: no digest to compare
    check_resume(args, _state(args, tokenizer_sha256="this"), 1, sizes)
    with pytest.raises(UsageError, match=r"continues another run: the vocabulary \(tokenizer.json differs\)$"):
        check_resume(args, _state(args, tokenizer_sha256="that"), 1, sizes)


# kills mlm_resume.py:45 --data-dir compared as strings (and "data_dir" left out of RESUME_MUST_MATCH: a checkpoint
# without a corpus record then resumed on any folder): a checkpoint from before 2026-12-06 recorded the relative
# --data-dir its run was given; resumed from the same working directory (the absolute directory now), the same corpus
def test_an_older_checkpoints_relative_data_dir_is_the_same_directory(tmp_path, monkeypatch):
    from masksub_kernels.training import mlm_cli
    from masksub_kernels.training.mlm_resume import check_resume

    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth", "--data-dir", str(tmp_path / "corpus")])
    sizes = {"tokenizer_sha256": "same", "corpus_sha256": "same"}
    check_resume(args, {**_state(args), "args": {**vars(args), "data_dir": "corpus"}}, 1, sizes)
    with pytest.raises(UsageError, match=r"this command's .*: --data-dir 'other' -> "):
        check_resume(args, {**_state(args), "args": {**vars(args), "data_dir": "other"}}, 1, sizes)


# kills mlm_resume.py:27 "steps" left out of RESUME_MAY_CHANGE (a resume's new --steps unrecorded), mlm_resume.py:119
# `"from": os.path.abspath(args.resume)` -> `args.resume` and :118 the earlier resumes left out of
# the list: each resume is recorded with the checkpoint's absolute path (a relative one is meaningless in log.json
# read from elsewhere), after the resumes the checkpoint already recorded
def test_the_resumes_record_keeps_earlier_ones_and_absolute_paths(tmp_path, monkeypatch):
    from masksub_kernels.training import mlm_cli
    from masksub_kernels.training.mlm_resume import resumes

    monkeypatch.chdir(tmp_path)
    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth", "--steps", "300"])
    earlier = {"step": 100, "from": "/elsewhere/last.pth", "changed": []}
    state = {"args": {**vars(args), "steps": 200}, "step": 150, "resumes": [earlier]}
    assert resumes(args, state) == [
        earlier,
        {"step": 150, "from": str(tmp_path / "run" / "last.pth"), "changed": ["--steps 200 -> 300"]},
    ]
    assert resumes(args, None) == []
    # (helper-233: --deterministic, the bits of a GPU run, changed on a resume without a record)
    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth", "--deterministic"])
    state = {"args": {**vars(args), "deterministic": False}, "step": 150}
    assert resumes(args, state)[-1]["changed"] == ["--deterministic False -> True"]


# kills mlm_resume.py:78 corpus_record's "python" not the running one: a resume of the default corpus on another
# Python names both versions (its docstrings differ: the likely reason for another corpus)
def test_a_default_corpus_of_another_python_is_named_in_the_refusal():
    from masksub_kernels.training import mlm_cli
    from masksub_kernels.training.mlm_resume import check_resume, corpus_record

    sizes = {"tokenizer_sha256": "same", "corpus_sha256": "new", "documents": 9, "held_out_documents": 1,
             "train_blocks": 5, "val_blocks": 1}  # fmt: skip
    record = corpus_record(sizes)
    python = sys.version.split()[0]
    assert record == {"sha256": "new", "python": python, "eval_spread": True, "documents": 9, "held_out_documents": 1,
                      "train_blocks": 5, "val_blocks": 1}  # fmt: skip
    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth"])
    old = {**record, "sha256": "old", "python": "3.0.1", "documents": 8, "train_blocks": 4}
    with pytest.raises(UsageError, match=rf"the standard library's docstrings of Python 3.0.1 -> {python}: 8 -> 9 "
                                         r"documents, 4 -> 5 training blocks; other text\)"):  # fmt: skip
        check_resume(args, _state(args, corpus=old), 1, sizes)
    check_resume(args, _state(args, corpus={**old, "sha256": "new"}), 1, sizes)  # the same text: resumes


# kills mlm_resume.check_resume's note for a checkpoint without corpus_record's "eval_spread" (helper-254: before
# 2026-12-07 the first --eval-blocks held-out blocks were evaluated; a resume of such a run is refused as other text)
def test_a_checkpoint_that_evaluated_the_first_held_out_blocks_is_named_in_the_refusal():
    from masksub_kernels.training.mlm_resume import check_resume, corpus_record

    sizes = {"tokenizer_sha256": "same", "corpus_sha256": "new", "documents": 9, "held_out_documents": 1,
             "train_blocks": 5, "val_blocks": 1}  # fmt: skip
    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth", "--data-dir", "."])
    old = {**corpus_record(sizes), "sha256": "old"}
    with pytest.raises(UsageError, match=r"other text\)"):
        check_resume(args, _state(args, corpus=old), 1, sizes)
    del old["eval_spread"]
    with pytest.raises(UsageError, match=r"other text or, from a checkpoint before 2026-12-07, the held-out blocks"):
        check_resume(args, _state(args, corpus=old), 1, sizes)


def test_each_resume_records_its_commit_and_the_first_start_survives(corpus, tokenizer, tmp_path, monkeypatch):
    # helper-321: as masksub-train's (test_train_cli.py): each resume's commit, dirty flag, start time and machine in
    # its meta.resumes entry, the first start's provenance in meta.first_start (and the checkpoint)
    from masksub_kernels.training import runlog

    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "run")]
    monkeypatch.setattr(runlog, "_git_commit", lambda: ("a" * 40, False))
    assert main([*common, "--stop-at", "2"]) == 0
    last = tmp_path / "run" / "last.pth"
    saved = torch.load(last, weights_only=False)
    monkeypatch.setattr(runlog, "_git_commit", lambda: ("b" * 40, True))
    assert main([*common, "--resume", str(last)]) == 0
    meta = _log(tmp_path / "run")["meta"]
    assert meta["git_commit"] == "b" * 40 and meta["first_start"]["git_commit"] == "a" * 40
    (resume,) = meta["resumes"]
    assert (resume["step"], resume["git_commit"], resume["git_dirty"]) == (2, "b" * 40, True)
    assert {k: resume[k] for k in runlog.PROVENANCE} == {k: meta[k] for k in runlog.PROVENANCE}
    assert torch.load(last, weights_only=False)["first_start"] == meta["first_start"]
    # a checkpoint of before 2026-12-07 (no first start; an earlier resume without a commit) resumes
    del saved["first_start"]
    saved["resumes"] = [{"step": 1, "from": "/elsewhere/last.pth", "changed": []}]
    torch.save(saved, tmp_path / "old.pth")
    old_run = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "old")]
    assert main([*old_run, "--resume", str(tmp_path / "old.pth")]) == 0
    meta = _log(tmp_path / "old")["meta"]
    assert meta["first_start"] is None and meta["resumes"][0] == saved["resumes"][0]
    assert meta["resumes"][1]["git_commit"] == "b" * 40


# helper-338's mutation audit of mlm_resume.py: check_resume_options (right after the checkpoint is read)
# kills mlm_resume.py check_resume_options `tokenizer_digest(tokenizer_at) if os.path.isfile(tokenizer_at) else ...`
# -> the checkpoint's own digest (another vocabulary file refused only after the corpus was read and packed), and
# its `_check_steps_left` left out (a run with nothing left to train refused only after the corpus)
def test_the_options_check_compares_the_vocabulary_file_and_the_steps_left(tmp_path):
    import hashlib

    from masksub_kernels.training.mlm_resume import check_resume_options

    vocab = tmp_path / "tokenizer.json"
    vocab.write_text('{"model": "this"}')
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest()
    args = mlm_cli.build_parser().parse_args(["--resume", "run/last.pth", "--steps", "4"])
    check_resume_options(args, _state(args, tokenizer_sha256=digest), 1, str(vocab))
    check_resume_options(args, _state(args, tokenizer_sha256="that"), 1, str(tmp_path / "absent.json"))  # no file
    with pytest.raises(UsageError, match=r"continues another run: the vocabulary \(tokenizer.json differs\)$"):
        check_resume_options(args, _state(args, tokenizer_sha256="that"), 1, str(vocab))
    with pytest.raises(UsageError, match="is at step 4: nothing left to train"):
        check_resume_options(args, {**_state(args, tokenizer_sha256=digest), "step": 4}, 1, str(vocab))


# kills mlm_resume.py resumes' `{**NEWER_OPTIONS, **saved}` -> `saved` (a checkpoint from before
# --reuse-block-cache: the option's first use unrecorded), "accum_steps" left out of RESUME_MAY_CHANGE (a new
# split of a step unrecorded), "block_cache" compared as a string (an older checkpoint's relative --block-cache
# recorded as a change), and load_state's refusal of another model (`except RuntimeError`) narrowed away
def test_the_resumes_record_of_newer_and_split_options_and_another_models_refusal(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from masksub_kernels.training.mlm_resume import load_state, resumes

    monkeypatch.chdir(tmp_path)
    argv = ["--resume", "run/last.pth", "--accum-steps", "2", "--block-cache", str(tmp_path / "blocks")]
    args = mlm_cli.build_parser().parse_args([*argv, "--reuse-block-cache"])
    saved = {**vars(args), "accum_steps": 1, "block_cache": "blocks"}  # relative: the same folder from here
    del saved["reuse_block_cache"]  # a checkpoint from before the option: it ran without it
    changed = resumes(args, {"args": saved, "step": 2})[-1]["changed"]
    assert changed == ["--accum-steps 1 -> 2", "--reuse-block-cache False -> True"]
    model = SimpleNamespace(model=torch.nn.Linear(2, 2))
    state = {"args": vars(args), "step": 2, "model": {"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}}
    with pytest.raises(UsageError, match=r"--resume 'run/last.pth' holds another model: "):
        load_state(args, state, model, None, None, None, 0, "prog")
