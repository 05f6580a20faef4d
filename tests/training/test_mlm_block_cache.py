"""``masksub-train-mlm``'s block cache after helper-257's review (helper-259): every rank's load checked, int32 files
(batches int64 as before), the derived counts and digest stored with the cache, --block-cache shared by runs, a
resume of other documents refused before packing, the build's temporary files, lock and flushes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

from masksub_kernels.training import checkpoint, mlm_args, mlm_blocks, mlm_cli, rank_zero, text_data
from masksub_kernels.training.mlm_cli import main
from masksub_kernels.training.rank_zero import ReportedOnRankZero
from masksub_kernels.training.run_setup import UsageError

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

CPU = torch.device("cpu")


def _args(corpus, output, *extra):
    return mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--output", str(output), *extra])


def _corpus(corpus, tokenizer, output, *extra, device=CPU, state=None):
    return mlm_cli._corpus(_args(corpus, output, *extra), 0, 1, device, tokenizer, state is not None, state)


def _packs(monkeypatch) -> list:
    calls, real = [], text_data.pack_blocks
    monkeypatch.setattr(text_data, "pack_blocks", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


def _old_digest(train: torch.Tensor, val: torch.Tensor) -> str:
    """corpus_digest as it was before the cache held int32 (helper-254): shape and int64 bytes of each part."""
    digest = hashlib.sha256()
    for blocks in (train, val):
        digest.update(str(tuple(blocks.shape)).encode())
        digest.update(memoryview(blocks.to(torch.int64).contiguous().numpy()))
    return digest.hexdigest()


# A. kills every_rank_check -> the check on the failing rank alone (rank 0 went on into DDP, and waited up to the
# process group's timeout for a rank that had stopped): every rank raises, rank 0 with the failing rank's message
def test_a_rank_that_cannot_read_the_cache_stops_every_rank(corpus, tokenizer, tmp_path, monkeypatch):
    import torch.distributed as dist

    gathered = []

    def all_gather(objects, mine):  # rank 1 could not map the files; this rank could
        gathered.append(mine)
        objects[:] = [mine, "--block-cache '/x': not this process's to read"]

    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: None)  # rank 0's outcomes, its key: its own
    monkeypatch.setattr(dist, "all_gather_object", all_gather)
    args = _args(corpus, tmp_path)
    with pytest.raises(UsageError, match=r"^rank 1: --block-cache '/x': not this process's to read$") as info:
        mlm_cli._corpus(args, 0, 2, CPU, tokenizer, False)
    assert type(info.value) is UsageError and gathered == [None]  # rank 0 printed it; its own load passed
    with pytest.raises(ReportedOnRankZero, match=r"^rank 1: "):  # another rank exits without printing it again
        rank_zero.every_rank_check(lambda: None, 2, 3)
    monkeypatch.setattr(dist, "all_gather_object", lambda objects, mine: objects.__setitem__(slice(None), [mine] * 2))
    with pytest.raises(UsageError, match=r"^own$"):  # rank 0's own failure, unprefixed
        rank_zero.every_rank_check(lambda: (_ for _ in ()).throw(UsageError("own")), 0, 2)
    rank_zero.every_rank_check(lambda: None, 0, 2)  # none failed


# B. kills the cache's DTYPE -> int64 (8 bytes a token on disk and per copied batch), _train_batch's `.long()` before
# to_device (an int64 copy to the GPU) or left out (int32 ids to the model), the held-out blocks' `.long()`
def test_the_blocks_are_cached_as_int32_and_a_batch_widens_to_int64_on_the_device(corpus, tokenizer, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    seen = []
    monkeypatch.setattr(mlm_cli, "_corrupt", lambda args, vocab, blocks, special, *a, **k: seen.append(
        (blocks, special)) or {"input_ids": blocks})  # fmt: skip
    copied = []
    real = mlm_blocks.to_device
    monkeypatch.setattr(mlm_blocks, "to_device", lambda t, d: copied.append(t.dtype) or real(t, d))
    vocab, data, _, _ = _corpus(corpus, tokenizer, tmp_path)
    meta = json.loads((tmp_path / "blocks.json").read_text())
    assert meta["version"] == mlm_blocks.CACHE_VERSION == 2
    for name, file in mlm_blocks.PARTS.items():
        assert os.path.getsize(tmp_path / file) == 4 * meta[name][0] * meta[name][1]
    assert data.blocks.dtype == torch.int32 and seen[0][0].dtype == torch.int64  # the held-out batch
    mlm_cli._train_batch(_args(corpus, tmp_path), vocab, data, 0, 0, 1)
    rows = mlm_cli._epoch_order(data.blocks.shape[0], 0, 0)[:4]
    assert copied == [torch.int32] and seen[1][0].dtype == torch.int64
    assert torch.equal(seen[1][0], data.blocks[rows].long())
    train, _ = mlm_blocks.load_cache(str(tmp_path), meta["key"])[0].values()
    assert torch.equal(train.long(), _fresh_train(corpus, tokenizer))


def _fresh_train(corpus, tokenizer):
    from tokenizers import Tokenizer

    train, _ = text_data.split_documents(text_data.text_dir_documents(corpus))
    return text_data.pack_blocks(Tokenizer.from_file(tokenizer), train, 16)


# B. kills pack_parts' check of the vocabulary's size (ids past 2^31 - 1 wrapped in an int32 file)
def test_a_vocabulary_whose_ids_do_not_fit_int32_is_refused():
    class Huge:
        def get_vocab_size(self):
            return 2**31 + 1

    with pytest.raises(UsageError, match=r"a vocabulary of 2147483649 tokens: .*torch.int32"):
        mlm_blocks.pack_parts(Huge(), {"train": ["a"], "held_out": ["b"]}, 16)


# B. kills corpus_digest hashing the blocks' own bytes (int32 now: every older checkpoint refused as another corpus)
# and its chunks (one left out, or a chunk's rows twice)
def test_the_corpus_digest_is_the_int64_one_of_before_chunk_by_chunk():
    gen = torch.Generator().manual_seed(0)
    train, val = torch.randint(0, 30000, (7, 5), generator=gen), torch.randint(0, 30000, (3, 5), generator=gen)
    want = _old_digest(train, val)
    assert mlm_blocks.corpus_digest(train.int(), val.int()) == mlm_blocks.corpus_digest(train, val) == want
    for rows in (1, 2, 3, 100):
        digest = mlm_blocks._hash_blocks(mlm_blocks._hash_blocks(hashlib.sha256(), train.int(), rows), val.int(), rows)
        assert digest.hexdigest() == want


# C. kills the counts and digest read from blocks.json -> computed from the mapped files at each start (~2 min a
# rank at 40 GB), the digests stored for the run's --eval-blocks, 0 and 512 (a wrong one: a resume refused), and the
# recompute for another --eval-blocks (a KeyError, or another K's digest)
def test_the_special_counts_and_the_digest_are_stored_when_the_cache_is_built(corpus, tokenizer, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    _, data, _, sizes = _corpus(corpus, tokenizer, tmp_path, "--eval-blocks", "5")
    meta = json.loads((tmp_path / "blocks.json").read_text())
    train, held = mlm_blocks.load_cache(str(tmp_path), meta["key"])[0].values()
    n = held.shape[0]
    assert sorted(meta["corpus_sha256"], key=int) == ["5", str(n)] and 5 < n < 512
    for k in (5, n):
        assert meta["corpus_sha256"][str(k)] == _old_digest(train, held[mlm_blocks.eval_rows(n, k)])
    assert sizes["corpus_sha256"] == meta["corpus_sha256"]["5"]
    ids = torch.tensor([0, 2, 3])  # [PAD], [CLS], [SEP] of the command's vocabularies
    values, counts = torch.unique(torch.isin(train, ids).sum(1), return_counts=True)
    assert meta["special_counts"] == {str(int(v)): int(c) for v, c in zip(values, counts)}
    assert mlm_blocks.block_specials(data) == {int(v): int(c) for v, c in zip(values, counts)}

    def unread(*a, **k):
        raise AssertionError("the blocks were read again")

    monkeypatch.setattr(mlm_blocks, "corpus_digest", unread)
    monkeypatch.setattr(mlm_blocks, "special_counts", unread)
    checked = []
    monkeypatch.setattr(mlm_args, "check_keep", lambda args, specials=None: checked.append(specials))
    assert main(["--data-dir", corpus, *TINY, "--eval-blocks", "0", "--tokenizer", tokenizer, "--output",
                 str(tmp_path), "--stop-at", "2"]) == 0  # fmt: skip
    assert checked[-1] == {int(v): int(c) for v, c in zip(values, counts)}
    assert _log(tmp_path)["meta"]["corpus_sha256"] == meta["corpus_sha256"][str(n)]
    monkeypatch.undo()
    _, _, _, other = _corpus(corpus, tokenizer, tmp_path, "--eval-blocks", "7")  # not stored: computed
    assert other["corpus_sha256"] == _old_digest(train, held[mlm_blocks.eval_rows(n, 7)])


# D. kills --block-cache (the cache in --output whatever it says) and the build's lock file among the files a
# refused run removes; a second run of the same key elsewhere reads the first's cache
def test_runs_with_other_outputs_share_one_block_cache(corpus, tokenizer, tmp_path, monkeypatch, capsys):
    shared = tmp_path / "blocks"
    for name in ("a", "b"):
        argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / name),
                "--block-cache", str(shared), "--stop-at", "2"]  # fmt: skip
        packs = _packs(monkeypatch)
        assert main([*argv, *(["--baseline"] if name == "b" else [])]) == 0
        assert packs == ([16, 16] if name == "a" else [])
        done = "packed and cached in" if name == "a" else "read from the cache"
        assert f"token blocks {done} {shared / 'blocks.json'}" in capsys.readouterr().out
        assert not (tmp_path / name / "blocks.json").exists()
        assert _log(tmp_path / name)["meta"]["block_cache"] == {"path": str(shared / "blocks.json"),
                                                               "built": name == "a"}  # fmt: skip
    assert _log(tmp_path / "a")["meta"]["args"]["block_cache"] == str(shared)


# D. kills removed_if_refused deleting the cache files whatever built them (-> the fixed list of before): a run that
# trains its vocabulary and is refused deletes only a cache it built, not one it shares with other runs
def test_a_refused_run_deletes_only_a_cache_it_built(corpus, tokenizer, tmp_path, capsys):
    shared = tmp_path / "blocks"
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "a"),
                 "--block-cache", str(shared), "--stop-at", "2"]) == 0  # fmt: skip
    files = sorted(os.listdir(shared))
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "one.txt").write_text("one document alone")
    assert main(["--data-dir", str(tiny), *TINY, "--output", str(tmp_path / "b"), "--block-cache", str(shared)]) == 2
    assert "landed in the held-out part" in capsys.readouterr().err
    assert sorted(os.listdir(shared)) == files
    out = tmp_path / "c"  # a run that builds its cache, then is refused: the cache and the folders made go
    assert main(["--data-dir", corpus, *TINY, "--output", str(out), "--block-cache", str(out / "cache"),
                 "--batch-size", "100000"]) == 2  # fmt: skip
    assert "fewer than one step" in capsys.readouterr().err and not out.exists()


# kills removed_if_refused deleting a refused run's cache files by their paths (helper-273): another build that
# replaced them between this run's build and its refusal keeps its files (mlm_blocks.remove_built: under the lock, each
# file where it is still this build's)
def test_a_refused_run_keeps_the_files_another_build_wrote_since(corpus, tokenizer, tmp_path, monkeypatch, capsys):
    out, real = tmp_path / "c", mlm_blocks.load_cache
    names = (mlm_blocks.META, *mlm_blocks.PARTS.values())

    def replaced_first(folder, key):  # another build's files at the paths (new inodes, the same bytes)
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f, open(path + ".other", "wb") as g:
                g.write(f.read())
            os.replace(path + ".other", path)
        return real(folder, key)

    monkeypatch.setattr(mlm_blocks, "load_cache", replaced_first)
    assert main(["--data-dir", corpus, *TINY, "--output", str(out), "--block-cache", str(out / "cache"),
                 "--batch-size", "100000"]) == 2  # fmt: skip
    assert "fewer than one step" in capsys.readouterr().err
    assert sorted(os.listdir(out / "cache")) == sorted(names)  # (the lock file removed, as after any refusal)
    assert not (out / "tokenizer.json").exists()  # the vocabulary this run trained goes, as before


# E. kills check_resume_early (a resume of other documents packed the whole corpus, over a good cache, before it was
# refused) and corpus_record's cache_key; a checkpoint without it (before 2026-12-07) is compared after packing
def test_a_resume_of_other_documents_is_refused_before_packing(corpus, tokenizer, tmp_path, monkeypatch, capsys):
    import shutil

    text = tmp_path / "text"
    shutil.copytree(corpus, text)
    argv = ["--data-dir", str(text), *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path / "run")]
    assert main([*argv, "--stop-at", "2"]) == 0
    checkpoint_path = tmp_path / "run" / "last.pth"
    state = torch.load(checkpoint_path, weights_only=False)
    meta = (tmp_path / "run" / "blocks.json").read_text()
    assert state["corpus"]["cache_key"] == {k: json.loads(meta)[k] for k in
                                            ("key", "version", "documents_sha256", "tokenizer_sha256", "seq_len",
                                             "tokenizers")}  # fmt: skip
    with open(text / "a.txt", "a", encoding="utf-8") as f:
        f.write("\n\nA paragraph added to the corpus after the checkpoint, of several words.")
    packs = _packs(monkeypatch)
    assert main([*argv, "--resume", str(checkpoint_path)]) == 2
    err = capsys.readouterr().err
    assert "continues another run: the corpus (--data-dir" in err and "400 -> 401 documents; other text" in err, err
    assert packs == [] and (tmp_path / "run" / "blocks.json").read_text() == meta  # the good cache kept
    assert main([*argv, "--resume", str(checkpoint_path), "--seq-len", "24"]) == 2  # an option: refused early too
    assert "--seq-len 16 -> 24" in capsys.readouterr().err and packs == []
    del state["corpus"]["cache_key"]  # a checkpoint from before: packed, then refused by the blocks' digest
    torch.save(state, checkpoint_path)
    assert main([*argv, "--resume", str(checkpoint_path)]) == 2
    assert "400 -> 401 documents, " in capsys.readouterr().err and packs == [16, 16]


# F. kills the temporary files' unique names (pid + a random tag: two builders wrote one file), the removal of an
# interrupted build's leftovers, and the folder's flush after the renames
def test_a_build_removes_leftovers_writes_its_own_temporary_files_and_flushes_the_folder(corpus, tokenizer, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    tmp_path.joinpath("blocks_train.bin.123.deadbeef.tmp").write_bytes(b"x" * 10)
    tmp_path.joinpath("blocks.json.tmp").write_text("{}")
    tmp_path.joinpath("notes.tmp").write_text("not the cache's")
    names, flushed = [], []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: names.append(os.path.basename(src)) or real_replace(src, dst))
    monkeypatch.setattr(checkpoint, "fsync_directory", lambda folder: flushed.append((folder, sorted(os.listdir(
        folder)))))  # fmt: skip
    _corpus(corpus, tokenizer, tmp_path)
    pid = os.getpid()
    assert len(names) == 3 and all(n.split(".")[-3] == str(pid) and len(n.split(".")[-2]) == 8 for n in names), names
    assert len({n.split(".")[-2] for n in names}) == 3
    left = sorted(os.listdir(tmp_path))
    assert left == ["blocks.json", "blocks.lock", "blocks_held_out.bin", "blocks_train.bin", "notes.tmp"]
    assert flushed == [(str(tmp_path), left)]  # after the last rename


# F. kills the build's lock (two runs started together both packed the corpus and replaced each other's files) and
# the check under it (the second packed again after the first had built the same key)
def test_a_build_waits_for_another_and_then_reads_its_cache(corpus, tokenizer, tmp_path, monkeypatch):
    key = {"key": "k" * 64, "version": 2}
    blocks = {"train": torch.ones(4, 16, dtype=torch.int32), "held_out": torch.ones(2, 16, dtype=torch.int32)}
    packs = []

    def pack():
        packs.append(1)
        return blocks

    def stats(b):
        return {"special_counts": {"16": 4}}

    done = []
    with open(tmp_path / "blocks.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another run's build
        thread = threading.Thread(target=lambda: done.append(mlm_blocks.ensure_cache(str(tmp_path), key, pack, {},
                                                                                      stats)))  # fmt: skip
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and packs == []  # waiting for the lock
        assert mlm_blocks.ensure_cache(str(tmp_path / "other"), key, pack, {}, stats)  # that build, elsewhere ...
        for name in ("blocks.json", *mlm_blocks.PARTS.values()):  # ... its files in place
            os.replace(tmp_path / "other" / name, tmp_path / name)
    thread.join(10)
    assert done == [False] and packs == [1]  # the waiting run read it


# kills _locked without its check of the file it locked (6cf28c3): a run waiting on a lock file that a refused run
# removed (mlm_blocks.remove_lock, under the lock) held a lock on the removed file, while a third run locked a new one
def test_a_lock_taken_on_a_removed_file_is_taken_again_on_the_new_one(tmp_path):
    path = tmp_path / mlm_blocks.LOCK
    seen = []

    def wait_then_lock():
        with mlm_blocks._locked(str(tmp_path)), open(path) as probe:
            try:  # the lock held is the one on the file now at the path: another open of it cannot take it
                fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("the file at the path is not locked")
            except BlockingIOError:
                seen.append("locked")

    for recreated in (False, True):  # the file removed; removed and made again by a third run
        seen.clear()
        with mlm_blocks._locked(str(tmp_path)):  # a refused run's, which removes its lock file under it
            thread = threading.Thread(target=wait_then_lock)
            thread.start()
            time.sleep(0.3)
            assert thread.is_alive() and seen == []  # waiting
            os.remove(path)
            if recreated:
                path.touch()
        thread.join(10)
        assert seen == ["locked"]
    mlm_blocks.remove_lock(str(tmp_path))
    assert not path.exists()


# G. kills ensure_cache without its removal of what a failed build wrote (helper-269: a full disk left the partial
# blocks_*.bin in the folder), the removal of a file at the path that is no longer this build's (another build's,
# where the file system has no flock), and the full disk's hint
def test_a_failed_build_removes_what_it_wrote_and_names_the_folder(corpus, tokenizer, tmp_path, monkeypatch):
    import errno

    real, calls = mlm_blocks._write, []

    def full_on_the_second(path, data):
        calls.append(os.path.basename(path))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(mlm_blocks, "_write", full_on_the_second)
    folder = tmp_path / "cache"
    with pytest.raises(UsageError) as failed:
        _corpus(corpus, tokenizer, tmp_path / "out", "--block-cache", str(folder))
    assert calls == ["blocks_train.bin", "blocks_held_out.bin"]
    assert os.listdir(folder) == ["blocks.lock"]  # no partial file, no temporary one, no blocks.json
    message = str(failed.value)
    assert message.startswith(f"--block-cache {str(folder)!r}: the token blocks cannot be cached there: ")
    assert "No space left on device (no space left: free some there, or pass a --block-cache on another" in message
    # an exception after both parts (the stats): both go; a file replaced by another build's since is kept
    monkeypatch.setattr(mlm_blocks, "_write", real)
    other = b"another build's blocks"

    def stats_fail(*a, **k):
        (folder / "held.tmp").write_bytes(other)
        os.replace(folder / "held.tmp", folder / "blocks_held_out.bin")
        raise RuntimeError("stats failed")

    monkeypatch.setattr(mlm_blocks, "block_stats", stats_fail)
    with pytest.raises(RuntimeError, match="stats failed"):
        _corpus(corpus, tokenizer, tmp_path / "out", "--block-cache", str(folder))
    assert sorted(os.listdir(folder)) == ["blocks.lock", "blocks_held_out.bin"]
    assert (folder / "blocks_held_out.bin").read_bytes() == other
    monkeypatch.undo()
    packs = _packs(monkeypatch)
    _corpus(corpus, tokenizer, tmp_path / "out", "--block-cache", str(folder))  # then builds whole
    assert packs == [16, 16] and sorted(os.listdir(folder)) == ["blocks.json", "blocks.lock", *sorted(
        mlm_blocks.PARTS.values())]  # fmt: skip
