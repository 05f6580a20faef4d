"""``masksub-train-mlm --reuse-block-cache`` (mlm_blocks.corpus_documents / reused_key, helper-267): a run, or a
resume, takes its token blocks from a prepared cache without reading the corpus's text, trusting the documents the
cache records and checking the rest of its key; it trains bit for bit as a run that read the corpus and found the
same cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

from masksub_kernels.training import mlm_blocks, text_data
from masksub_kernels.training.mlm_cli import main

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TIMINGS = ("tokens_per_s", "round_time_s", "wall_time_s")


def _no_text(monkeypatch) -> None:
    """Every reader of the corpus's text (and its digest, its packing) raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus's text was read")

    for module, name in ((text_data, "text_dir_documents"), (text_data, "stdlib_docstrings"),
                         (text_data, "split_documents"), (text_data, "pack_blocks"), (mlm_blocks, "read_documents"),
                         (mlm_blocks, "documents_digest")):  # fmt: skip
        monkeypatch.setattr(module, name, refuse)


def _rows(output) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in _log(output)["epochs"]]


def _same_run(a, b) -> None:
    """Two runs' last.pth weights, log rows and corpus records are equal."""
    one, two = (torch.load(run / "last.pth", weights_only=False) for run in (a, b))
    assert one["step"] == two["step"] == 4
    for name, weight in one["model"].items():
        assert torch.equal(two["model"][name], weight), name
    for key in ("optimizer", "scheduler"):
        assert str(one[key]) == str(two[key]), key
    assert len(_rows(a)) == 2 and _rows(a) == _rows(b)
    assert one["corpus"] == two["corpus"]  # the corpus digest, the document counts and the cache's key


# kills corpus_documents reading the text all the same (or _corpus calling read_documents), the reuse path computing
# the key from the documents (cache_key), packing where it should only read, check_resume_early left out of the
# reuse path or given other documents, and any difference from a run that read the corpus: weights, rows, corpus
# record, a resume with the option (of a run that had it, and of one that read the corpus)
def test_a_run_and_a_resume_reusing_the_cache_read_no_text_and_train_as_runs_that_read_it(
    corpus, tokenizer, tmp_path, monkeypatch, capsys
):
    cache = tmp_path / "cache"
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--device", "cpu", "--block-cache", str(cache)]
    assert main(["--prepare-only", *common, "--output", str(tmp_path / "unused")]) == 0
    assert main([*common, "--output", str(tmp_path / "read")]) == 0  # read the corpus, found the cache
    assert main([*common, "--output", str(tmp_path / "mixed"), "--stop-at", "2"]) == 0
    capsys.readouterr()
    with monkeypatch.context() as m:
        _no_text(m)
        assert main([*common, "--reuse-block-cache", "--output", str(tmp_path / "reused"), "--stop-at", "2"]) == 0
        out = capsys.readouterr().out
        assert f"token blocks read from the cache {cache / 'blocks.json'}" in out
        assert "; --reuse-block-cache: the corpus not read, its documents as the cache records them)" in out
        for run in ("reused", "mixed"):  # resumed with the option: a run started with it, and one that read the text
            assert main([*common, "--reuse-block-cache", "--resume", str(tmp_path / run / "last.pth")]) == 0
    assert not any(name.endswith(".tmp") for name in os.listdir(cache))
    for run in ("reused", "mixed"):
        _same_run(tmp_path / "read", tmp_path / run)
    meta = _log(tmp_path / "mixed")["meta"]
    assert meta["args"]["reuse_block_cache"] and meta["args"]["data_dir"] == corpus  # recorded, not read
    assert meta["resumes"][-1]["changed"] == ["--reuse-block-cache False -> True"]
    assert meta["block_cache"] == {"path": str(cache / "blocks.json"), "built": False}
    assert meta["documents"] == 400 == json.loads((cache / "blocks.json").read_text())["documents"]


# kills check_resume_early left out of the reuse path (or given the run's own key / count instead of the cache's):
# a resume whose cache was rebuilt from other documents was refused only after the blocks were mapped, by their
# digest ("400 -> 401 documents, ... training blocks"), or not at all
def test_a_resume_reusing_a_cache_of_other_documents_is_refused_early(corpus, tokenizer, tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    text, cache = tmp_path / "text", tmp_path / "cache"
    shutil.copytree(corpus, text)
    common = ["--data-dir", str(text), *TINY, "--tokenizer", tokenizer, "--device", "cpu", "--block-cache", str(cache)]
    assert main([*common, "--output", str(tmp_path / "run"), "--stop-at", "2"]) == 0
    with open(text / "a.txt", "a", encoding="utf-8") as f:
        f.write("\n\nA paragraph added to the corpus after the checkpoint, of several words.")
    assert main(["--prepare-only", *common, "--output", str(tmp_path / "unused")]) == 0  # the cache rebuilt: 401
    capsys.readouterr()
    loads = []
    monkeypatch.setattr(mlm_blocks, "load_cache", lambda *a: loads.append(a) or pytest.fail("mapped"))
    _no_text(monkeypatch)
    assert main([*common, "--reuse-block-cache", "--resume", str(tmp_path / "run" / "last.pth")]) == 2
    err = capsys.readouterr().err
    assert "continues another run: the corpus (--data-dir" in err and "400 -> 401 documents; other text)" in err, err
    assert loads == []


# kills the reuse path checking the cache before the resume (helper-268): a resume with another --seq-len was told
# the cache "was made for other settings" and to rebuild it, which would overwrite a good cache and not help
def test_a_resume_reusing_the_cache_with_another_option_is_the_resumes_error(corpus, tokenizer, tmp_path, capsys):
    common = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--device", "cpu", "--block-cache",
              str(tmp_path / "cache")]  # fmt: skip
    assert main([*common, "--output", str(tmp_path / "run"), "--stop-at", "2"]) == 0
    capsys.readouterr()
    resume = ["--reuse-block-cache", "--resume", str(tmp_path / "run" / "last.pth"), "--seq-len", "24"]
    assert main([*common, *resume]) == 2
    err = capsys.readouterr().err
    assert "(the checkpoint's -> this command's): --seq-len 16 -> 24" in err and "other settings" not in err, err


@pytest.fixture(scope="module", name="prepared")
def prepared_fixture(corpus, tokenizer, tmp_path_factory) -> str:
    """A cache prepared for TINY's --seq-len and the shared vocabulary."""
    cache = tmp_path_factory.mktemp("prepared")
    argv = ["--prepare-only", "--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--block-cache", str(cache),
            "--output", str(cache / "unused")]  # fmt: skip
    assert main(argv) == 0
    return str(cache)


REBUILD = "rebuild it with --prepare-only (the corpus's --data-dir, this run's --tokenizer and --seq-len, --block-cache"


# kills each check of reused_key (the vocabulary's SHA-256, --seq-len, the tokenizers version, CACHE_VERSION: one
# left out, the others' message or _valid's "damaged" one came instead, or none), the vocabulary's existence check
# of corpus_documents (a vocabulary trained on no text), _valid's key and file sizes (an edited or truncated cache
# mapped), and check_prepare's refusal of both options (a prepare of nothing)
@pytest.mark.parametrize("case", ["no_cache", "no_vocabulary", "vocabulary", "seq_len", "tokenizers", "version",
                                  "truncated", "edited_key", "counts", "prepare"])  # fmt: skip
def test_what_reusing_the_cache_refuses(case, prepared, corpus, tokenizer, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(prepared, cache)
    meta = json.loads((cache / "blocks.json").read_text())
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--device", "cpu", "--block-cache", str(cache),
            "--output", str(tmp_path / "out"), "--reuse-block-cache"]  # fmt: skip
    damaged = f"--reuse-block-cache: the token-block cache in --block-cache {str(cache)!r} is damaged"
    settings = f"--reuse-block-cache: the token blocks in --block-cache {str(cache)!r} were made for other settings"
    if case == "no_cache":
        argv[argv.index(str(cache))] = str(tmp_path / "empty")
        message = f"--reuse-block-cache: --block-cache {str(tmp_path / 'empty')!r} holds no token-block cache (blocks"
    elif case == "no_vocabulary":
        argv[argv.index(tokenizer)] = str(tmp_path / "absent.json")
        message = f"--reuse-block-cache: the vocabulary {str(tmp_path / 'absent.json')!r} does not exist, and"
    elif case == "vocabulary":  # the same tokens, another file: another SHA-256
        other = tmp_path / "other.json"
        other.write_bytes(open(tokenizer, "rb").read() + b"\n")
        argv[argv.index(tokenizer)] = str(other)
        new = hashlib.sha256(other.read_bytes()).hexdigest()
        message = f"{settings} (the cache's -> this run's): the vocabulary's SHA-256 {meta['tokenizer_sha256']!r} -> "
        message += f"{new!r}; {REBUILD}"
    elif case == "seq_len":
        argv += ["--seq-len", "24"]
        message = f"{settings} (the cache's -> this run's): --seq-len 16 -> 24; {REBUILD}"
    elif case == "tokenizers":
        monkeypatch.setattr(tokenizers, "__version__", "0.0.1")
        message = f"{settings} (the cache's -> this run's): tokenizers {meta['tokenizers']!r} -> '0.0.1'; {REBUILD}"
    elif case == "version":
        monkeypatch.setattr(mlm_blocks, "CACHE_VERSION", 99)
        message = f"{settings} (the cache's -> this run's): the packing's format (CACHE_VERSION) 2 -> 99; {REBUILD}"
    elif case == "truncated":
        with open(cache / "blocks_train.bin", "r+b") as f:
            f.truncate(os.path.getsize(cache / "blocks_train.bin") - 4)
        message = damaged
    elif case in ("edited_key", "counts"):
        meta.update({"key": "0" * 64} if case == "edited_key" else {"documents": None})
        (cache / "blocks.json").write_text(json.dumps(meta))
        message = damaged
    else:
        argv = ["--prepare-only", *argv]
        message = "--prepare-only builds the token-block cache from the corpus's text, which --reuse-block-cache does"
    _no_text(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"masksub-train-mlm: error: {message}" in err, err
    assert not (tmp_path / "absent.json").exists() and not (tmp_path / "empty").exists()
    if case not in ("no_cache", "prepare", "no_vocabulary"):  # the cache left as it was: a refusal rebuilds nothing
        assert sorted(os.listdir(cache)) == sorted(os.listdir(prepared))


# kills rank 0 alone deciding but the other ranks reading the text (or every rank reusing on its own) under torchrun:
# two processes whose --data-dir holds no text any more (read, it is refused: too few documents) train as one
# process that read the corpus, with --accum-steps 2
def test_two_processes_reusing_the_cache_equal_one_that_read_the_corpus(prepared, corpus, tokenizer, tmp_path):
    empty = tmp_path / "gone"  # the corpus's folder absent, as on a machine given only the cache: recorded, not read
    common = [*TINY, "--tokenizer", tokenizer, "--device", "cpu", "--block-cache", prepared]
    assert main(["--data-dir", corpus, *common, "--accum-steps", "2", "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "masksub_kernels.training.mlm_cli", "--data-dir", str(empty), *common, "--reuse-block-cache",
           "--output", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the corpus not read" in result.stdout
    # blocks.json records the folder it was packed from (outside the key): another --data-dir gets a note, once
    note = f"note: --reuse-block-cache: --data-dir {str(empty)!r} is recorded as this run's corpus, but the cache was "
    assert result.stderr.count(note + f"packed from {corpus!r}") == 1, result.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "last.pth", weights_only=False)
    two = torch.load(tmp_path / "two" / "last.pth", weights_only=False)
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert one["corpus"] == two["corpus"]
