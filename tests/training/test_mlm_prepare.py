"""``masksub-train-mlm --prepare-only`` (training/mlm_prepare.py, helper-262): the vocabulary and the token-block cache
made ahead of a run, on one CPU process, through the run's own code; the run then reads the cache and trains as one
that packed it itself."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

from masksub_kernels.training import mlm_blocks, mlm_cli, run_setup, text_data
from masksub_kernels.training.mlm_cli import main

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TIMINGS = ("tokens_per_s", "round_time_s", "wall_time_s")
CACHE_FILES = (mlm_blocks.META, *mlm_blocks.PARTS.values())


def _packs(monkeypatch) -> list:
    """Records each pack_blocks call (the corpus tokenised)."""
    calls, real = [], text_data.pack_blocks
    monkeypatch.setattr(text_data, "pack_blocks", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


# kills main's dispatch left out (--prepare-only ignored: a whole run), prepare writing its cache elsewhere than
# --block-cache (e.g. "block_cache" dropped from mlm_prepare.USED: it went to --output) or skipping the packing (the
# run then packs: "packed and cached in"), and any difference between the blocks it caches and a run's own
def test_a_run_after_a_prepare_reads_the_cache_and_trains_as_one_that_packed_itself(corpus, tokenizer, tmp_path,
                                                                                   monkeypatch, capsys):  # fmt: skip
    cache = tmp_path / "cache"
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--device", "cpu"]
    assert main(["--prepare-only", *common, "--block-cache", str(cache), "--output", str(tmp_path / "unused")]) == 0
    out = capsys.readouterr().out
    assert f"token blocks packed and cached in {cache / 'blocks.json'}" in out
    assert f"--tokenizer {tokenizer} --seq-len 16 --block-cache {cache} reads them (with --reuse-block-cache, " in out
    assert not (tmp_path / "unused").exists()  # --output: neither the cache's folder nor the vocabulary's here
    packs = _packs(monkeypatch)
    assert main([*common, "--block-cache", str(cache), "--output", str(tmp_path / "read")]) == 0
    assert packs == [] and f"token blocks read from the cache {cache / 'blocks.json'}" in capsys.readouterr().out
    assert _log(tmp_path / "read")["meta"]["block_cache"] == {"path": str(cache / "blocks.json"), "built": False}
    assert main([*common, "--output", str(tmp_path / "packed")]) == 0  # packs its own, into --output
    assert "token blocks packed and cached in" in capsys.readouterr().out
    for name in CACHE_FILES[1:]:  # the same blocks, byte for byte
        assert (cache / name).read_bytes() == (tmp_path / "packed" / name).read_bytes(), name
    read, packed = (torch.load(tmp_path / run / "last.pth", weights_only=False) for run in ("read", "packed"))
    assert read["step"] == packed["step"] == 4
    for name, weight in packed["model"].items():
        assert torch.equal(read["model"][name], weight), name
    rows = [[{k: v for k, v in row.items() if k not in TIMINGS} for row in _log(tmp_path / run)["epochs"]]
            for run in ("read", "packed")]  # fmt: skip
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    assert read["corpus"] == packed["corpus"]  # the corpus's digest and the cache's key, as a resume compares them


# kills main's dispatch left out (a run: _build / _model / _distributed called), prepare calling check_output (an
# --output holding a run's last.pth refused), and the note on the options not used left out
def test_a_prepare_makes_no_model_touches_no_gpu_and_writes_no_checkpoint_or_log(corpus, tmp_path, monkeypatch,
                                                                                capsys):  # fmt: skip
    def refuse(*args, **kwargs):
        raise AssertionError("called by --prepare-only")

    for module, name in ((mlm_cli, "_model"), (mlm_cli, "_build"), (mlm_cli, "_distributed"),
                         (mlm_cli, "check_backend"), (run_setup, "check_output"), (torch.cuda, "is_available"),
                         (torch.cuda, "device_count"), (torch.cuda, "set_device")):  # fmt: skip
        monkeypatch.setattr(module, name, refuse)
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.pth").write_bytes(b"another run's")  # not refused: a prepare writes no checkpoint
    # --mask-ratio 0.5 at 16 tokens: refused by a run's check, which does not stop a prepare (a note says so)
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--output", str(out), "--device", "cuda", "--layers", "3",
            "--mask-ratio", "0.5"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert sorted(os.listdir(out)) == sorted([*CACHE_FILES, mlm_blocks.LOCK, "last.pth", "tokenizer.json"])
    assert (out / "last.pth").read_bytes() == b"another run's"
    assert "tokens, trained now) and the token blocks in" in captured.out and "(built now; " in captured.out
    # TINY's and these, where not at their defaults (--mask-ratio 0.5 is); the options a prepare uses are not named
    assert ("note: --prepare-only makes no model and trains nothing: not used: --layers, --width, --steps, "
            "--batch-size, --warmup-steps, --device, --eval-every\n") in captured.err  # fmt: skip
    assert "note: a run with these options would be refused: --mask-ratio 0.5 keeps 8 of 16 tokens" in captured.err


# kills mlm_prepare.check_prepare left out or either of its checks (--resume was ignored: a prepare for another
# vocabulary than the resume's; under torchrun every process read the corpus and trained a vocabulary), the
# prepare's --output / --block-cache file check (a traceback-free but misleading ensure_cache error, after training)
@pytest.mark.parametrize("case", ["resume", "torchrun", "output_file", "cache_file", "output_file_beside_a_cache"])
def test_what_a_prepare_refuses(case, corpus, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "run" / "last.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"a checkpoint")
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "out"
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--output", str(out)]
    if case == "resume":
        argv += ["--resume", str(checkpoint)]
        message = "--prepare-only does not take --resume (the checkpoint's own vocabulary and checks belong to the run)"
    elif case == "torchrun":
        monkeypatch.setenv("WORLD_SIZE", "2")
        message = "--prepare-only runs in one process, not under torchrun (WORLD_SIZE=2): every process would read"
    elif case == "output_file":
        argv[-1] = str(tmp_path / "file")
        message = f"--output {str(tmp_path / 'file')!r} is a file, not a directory"
    elif case == "cache_file":
        argv += ["--block-cache", str(tmp_path / "file")]
        message = f"--block-cache {str(tmp_path / 'file')!r} is a file, not a directory"
    else:  # the cache and the vocabulary elsewhere: an --output that is a file is refused all the same (helper-265)
        argv[-1] = str(tmp_path / "file")
        argv += ["--block-cache", str(out), "--tokenizer", str(tmp_path / "tok.json")]
        message = f"--output {str(tmp_path / 'file')!r} is a file, not a directory"
    assert main(argv) == 2
    assert f"masksub-train-mlm: error: {message}" in capsys.readouterr().err
    assert not out.exists()  # refused before the corpus is read: no vocabulary trained, no cache


# kills prepare's removed_if_refused left out: a vocabulary it trained, then refused (too few held-out tokens for a
# block), stayed in --output for the next run to read silently
def test_a_refused_prepare_deletes_the_vocabulary_it_trained(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--prepare-only", "--data-dir", corpus, *TINY, "--seq-len", "4096", "--output", str(out)]) == 2
    assert "the held-out part of the corpus" in capsys.readouterr().err
    assert not out.exists()  # the vocabulary, the build's lock file (mlm_blocks.remove_lock) and the folder all gone


# kills ensure_cache's `if _valid(...): return False` (a second prepare packed and rewrote the files) and prepare's
# report fixed to "built now"
def test_a_second_prepare_of_the_same_key_rebuilds_nothing(corpus, tokenizer, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--block-cache", str(cache)]
    assert main(argv) == 0
    assert "(built now; " in capsys.readouterr().out
    mtimes = {name: os.stat(cache / name).st_mtime_ns for name in CACHE_FILES}
    packs = _packs(monkeypatch)
    assert main([*argv, "--eval-blocks", "0"]) == 0  # not in the key: stored digests aside, the same cache
    out = capsys.readouterr().out
    assert packs == [] and f"token blocks read from the cache {cache / 'blocks.json'}" in out
    assert "(already valid, not rebuilt; " in out
    assert {name: os.stat(cache / name).st_mtime_ns for name in CACHE_FILES} == mtimes


# kills prepare's record of a new --eval-blocks' corpus digest left out (helper-269: a prepare that found the cache
# valid left it to every rank of the run, at its start, hashing all the training blocks), a digest other than the
# run's own (corpus_digest of its evaluated blocks), a rewrite of blocks.json where the digest is there already, and
# a folder that cannot be written refusing the prepare (a cache found valid is only read)
def test_a_prepare_that_finds_the_cache_valid_records_its_eval_blocks_digest(corpus, tokenizer, tmp_path, monkeypatch,
                                                                            capsys):  # fmt: skip
    cache = tmp_path / "cache"
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--block-cache", str(cache)]
    assert main(argv) == 0
    capsys.readouterr()
    before = json.loads((cache / mlm_blocks.META).read_text())
    assert "3" not in before["corpus_sha256"] and before["held_out"][0] > 3
    mtimes = {name: os.stat(cache / name).st_mtime_ns for name in CACHE_FILES[1:]}
    packs = _packs(monkeypatch)
    assert main([*argv, "--eval-blocks", "3"]) == 0
    out = capsys.readouterr().out
    assert packs == [] and "(already valid, not rebuilt, the corpus digest of 3 held-out blocks (--eval-blocks 3) " \
                          "added; " in out  # fmt: skip
    after = json.loads((cache / mlm_blocks.META).read_text())
    assert after == {**before, "corpus_sha256": {**before["corpus_sha256"], "3": after["corpus_sha256"]["3"]}}
    assert {name: os.stat(cache / name).st_mtime_ns for name in CACHE_FILES[1:]} == mtimes  # the blocks untouched
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--eval-blocks", "3", "--block-cache",
                                              str(cache), "--output", str(tmp_path / "run")])  # fmt: skip
    real = mlm_blocks.corpus_digest
    monkeypatch.setattr(mlm_blocks, "corpus_digest", lambda *a: pytest.fail("the run computed the digest"))
    sizes = mlm_cli._corpus(args, 0, 1, torch.device("cpu"), tokenizer, False)[3]  # the run finds it
    blocks, _ = mlm_blocks.load_cache(str(cache), after["key"])
    val = blocks["held_out"][mlm_blocks.eval_rows(blocks["held_out"].shape[0], 3)]
    assert sizes["corpus_sha256"] == after["corpus_sha256"]["3"] == real(blocks["train"], val)
    monkeypatch.undo()
    stamp = os.stat(cache / mlm_blocks.META).st_mtime_ns
    assert main([*argv, "--eval-blocks", "3"]) == 0  # there already: nothing written
    assert "(already valid, not rebuilt; " in capsys.readouterr().out
    assert os.stat(cache / mlm_blocks.META).st_mtime_ns == stamp

    def refused(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mlm_blocks, "_write", refused)  # a read-only folder: a note, the prepare succeeds
    assert main([*argv, "--eval-blocks", "5"]) == 0
    captured = capsys.readouterr()
    assert "(already valid, not rebuilt; " in captured.out
    assert (f"note: the corpus digest of --eval-blocks 5 could not be added to {cache / mlm_blocks.META} ([Errno 13] "
            "Permission denied): a run computes it at its start") in captured.err  # fmt: skip
    assert json.loads((cache / mlm_blocks.META).read_text()) == after


# kills record_digest without its check, under the lock, that the folder still holds the cache it read (a rebuild of
# another key meanwhile: the old blocks' digest was added to the new key's blocks.json)
def test_a_digest_is_not_recorded_into_a_cache_rebuilt_meanwhile(corpus, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--block-cache", str(cache)]
    assert main(argv) == 0
    old = json.loads((cache / mlm_blocks.META).read_text())
    blocks = {name: part.clone() for name, part in mlm_blocks.load_cache(str(cache), old["key"])[0].items()}
    assert main([*argv, "--seq-len", "24"]) == 0  # another run's rebuild, of another key
    new = (cache / mlm_blocks.META).read_text()
    assert mlm_blocks.record_digest(str(cache), old, blocks, 3) is None
    assert (cache / mlm_blocks.META).read_text() == new


# helper-343's mutation audit: kills mlm_prepare.py's `mlm_args.check_keep(given, meta["special_counts"])` ->
# `check_keep(given)` (the note checked s = 2 special tokens a block, not the packed blocks' own: a corpus of short
# paragraphs that a run refuses got no note)
def test_a_prepare_notes_a_refusal_by_the_blocks_own_special_tokens(tmp_path, capsys):
    words = [f"w{i % 37} v{i % 11}" for i in range(3000)]  # two-word paragraphs: ~20 special tokens a block of 64
    (tmp_path / "short.txt").write_text("\n\n".join(words), encoding="utf-8")
    argv = ["--prepare-only", "--data-dir", str(tmp_path), "--vocab-size", "80", "--seq-len", "64", "--eval-blocks",
            "4", "--output", str(tmp_path / "o"), "--mask-ratio", "0.5"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: a run with these options would be refused: --mask-ratio 0.5 keeps 32 of 64 tokens" in err, err
    assert "a block holding up to" in err


# helper-343: a --mlm-probability outside (0, 1] (left at its default by the prepare's own checks) reached the note's
# check_keep, whose binomial tail took its log: 'ValueError: math domain error' after the packing, status 1
@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_a_prepare_notes_an_mlm_probability_out_of_range(value, corpus, tmp_path, capsys):
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--output", str(tmp_path / "o"), "--mlm-probability", value]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"note: a run with these options would be refused: --mlm-probability must be in (0, 1], got {value}" in err


# helper-347's audit: a --baseline run refuses an --mlm-probability outside (0, 1] too (check_args' check_mask_ranges
# runs for every run; only check_keep is the sub-branch's): the prepare's note said nothing under --baseline (fails
# with mlm_prepare's check_mask_ranges inside the try whose refusal `if not given.baseline` silences)
def test_a_baseline_prepare_notes_an_mlm_probability_out_of_range(corpus, tmp_path, capsys):
    base = [*TINY, "--output", str(tmp_path / "o"), "--mlm-probability", "1.5", "--baseline"]
    assert main(["--prepare-only", "--data-dir", corpus, *base]) == 0
    err = capsys.readouterr().err
    assert "note: a run with these options would be refused: --mlm-probability must be in (0, 1], got 1.5" in err
    assert main(["--data-dir", corpus, *base]) == 2  # the run itself
    assert "--mlm-probability must be in (0, 1], got 1.5" in capsys.readouterr().err


# helper-346's mutation audit: kills mlm_prepare.py's `if not os.path.isfile(os.path.join(folder, mlm_blocks.META))`
# -> `if True:` (a read-only folder holding a valid cache, which a prepare only reads, was refused; root ignores
# permissions, so the refusal is check_writable_directory's, made to refuse), and the vocabulary's check left out or
# never run (`if not os.path.isfile(tokenizer_at)` -> `if False:`: a vocabulary to train into a folder that cannot be
# written was trained, then its save failed), and the report's parts: the vocabulary 'read' (not 'trained now'), the
# training blocks (not the held-out ones), --data-dir, and a refused cache folder named by --block-cache
def test_only_what_a_prepare_writes_must_be_writable(corpus, tokenizer, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--block-cache", str(cache)]
    assert main(argv) == 0
    capsys.readouterr()

    def read_only(directory, what):
        raise run_setup.UsageError(f"{what}: read-only")

    monkeypatch.setattr(run_setup, "check_writable_directory", read_only)
    assert main(argv) == 0  # the cache and the vocabulary both found: only read
    meta = json.loads((cache / mlm_blocks.META).read_text())
    size = __import__("tokenizers").Tokenizer.from_file(tokenizer).get_vocab_size()
    assert meta["train"][0] != meta["held_out"][0]  # (the report's count is told apart)
    assert (f"prepared (no model, no training): the vocabulary {tokenizer} ({size} tokens, read) and the token blocks "
            f"in {cache} (already valid, not rebuilt; {meta['train'][0]} training blocks of 16 tokens); a run given "
            f"--data-dir {corpus} --tokenizer {tokenizer} --seq-len 16 --block-cache {cache} reads them") in (
        capsys.readouterr().out)  # fmt: skip
    fresh = tmp_path / "new" / "tokenizer.json"
    assert main([*argv[:-4], "--tokenizer", str(fresh), "--block-cache", str(cache)]) == 2
    assert f"error: --tokenizer {str(fresh)!r}: read-only" in capsys.readouterr().err
    assert not fresh.exists()
    assert main([*argv[:-2], "--block-cache", str(tmp_path / "other")]) == 2  # named by its option
    assert f"error: --block-cache {str(tmp_path / 'other')!r}: read-only" in capsys.readouterr().err
