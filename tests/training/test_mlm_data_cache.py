"""``masksub-train-mlm``'s token blocks (training/mlm_blocks.py, helper-254): cached in --output under a key of what
determines them, memory-mapped on the CPU, a batch at a time moved to the device; the held-out blocks evaluated
spread over the held-out part."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

from masksub_kernels.training import mlm_blocks, mlm_cli, text_data
from masksub_kernels.training.mlm_cli import main
from masksub_kernels.training.run_setup import UsageError

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

CPU = torch.device("cpu")


def _corpus(corpus, tokenizer, output, *extra, device=CPU):
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--output", str(output), *extra])
    return mlm_cli._corpus(args, 0, 1, device, tokenizer, False)


def _packs(monkeypatch) -> list:
    """Records each pack_blocks call (the corpus tokenised)."""
    calls, real = [], text_data.pack_blocks
    monkeypatch.setattr(text_data, "pack_blocks", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


def _fresh(corpus, tokenizer, seq_len=16):
    from tokenizers import Tokenizer

    train, held_out = text_data.split_documents(text_data.text_dir_documents(corpus))
    tok = Tokenizer.from_file(tokenizer)
    return text_data.pack_blocks(tok, train, seq_len), text_data.pack_blocks(tok, held_out, seq_len)


# kills mlm_blocks.ensure_cache's `if _valid(...): return False` -> never reused (every start tokenised the corpus
# again on every rank, helper-253), load_cache's torch.from_file -> a copy in memory (torch.load / .clone()), and
# the log's record of it (meta.block_cache, the printed line) fixed to "built"
def test_a_second_start_reads_the_cache_memory_mapped_and_tokenises_nothing(corpus, tokenizer, tmp_path, monkeypatch,
                                                                            capsys):  # fmt: skip
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--stop-at", "2"]
    assert main(argv) == 0
    where = os.path.join(str(tmp_path), "blocks.json")
    assert f"token blocks packed and cached in {where}" in capsys.readouterr().out
    assert _log(tmp_path)["meta"]["block_cache"] == {"path": where, "built": True}
    packs = _packs(monkeypatch)
    assert main([*argv, "--resume", str(tmp_path / "last.pth"), "--stop-at", "4"]) == 0
    assert packs == [] and f"token blocks read from the cache {where}" in capsys.readouterr().out
    assert _log(tmp_path)["meta"]["block_cache"] == {"path": where, "built": False}
    _, data, _, sizes = _corpus(corpus, tokenizer, tmp_path)
    assert packs == [] and sizes["block_cache"]["built"] is False
    train, _ = _fresh(corpus, tokenizer)
    assert torch.equal(data.blocks, train) and data.blocks.device == CPU
    with open("/proc/self/maps") as f:  # the file is mapped, not read into this process's memory
        assert str(tmp_path / "blocks_train.bin") in f.read()


# kills cache_key without its "seq_len", "documents_sha256" or "tokenizer_sha256" (a cache of another --seq-len, other
# text or another vocabulary reused silently)
@pytest.mark.parametrize("change", ["seq_len", "documents", "tokenizer"])
def test_a_cache_of_other_blocks_is_rebuilt(change, corpus, tokenizer, tmp_path, tmp_path_factory, monkeypatch):
    import shutil

    data_dir = tmp_path_factory.mktemp("text")
    shutil.copytree(corpus, data_dir, dirs_exist_ok=True)
    tok = str(tmp_path / "tok.json")
    shutil.copy(tokenizer, tok)
    out = tmp_path / "out"
    _corpus(str(data_dir), tok, out)
    extra, seq_len = [], 16
    if change == "seq_len":
        extra, seq_len = ["--seq-len", "24"], 24
    elif change == "documents":  # one more paragraph, in a training document's place or a held-out one's
        with open(data_dir / "a.txt", "a", encoding="utf-8") as f:
            f.write("\n\nA paragraph added to the corpus after its blocks were cached, of several words.")
    else:  # the same words, another file: its ids may be the same, its digest is not
        with open(tok, "a") as f:
            f.write("\n")
    packs = _packs(monkeypatch)
    _, data, val, sizes = _corpus(str(data_dir), tok, out, *extra, "--eval-blocks", "0")
    assert packs == [seq_len, seq_len] and sizes["block_cache"]["built"]
    train, held_out = _fresh(str(data_dir), tok, seq_len)
    assert torch.equal(data.blocks, train)
    assert torch.equal(torch.where(val["labels"] == -100, val["input_ids"], val["labels"]), held_out)
    meta = json.loads((out / "blocks.json").read_text())
    assert meta["seq_len"] == seq_len and meta["train"] == list(train.shape)


# kills _valid's file-size check (a truncated cache, e.g. a disk that filled, mapped as it is) and ensure_cache's
# removal of blocks.json before the files are replaced (a rebuild stopped half-way left the old key beside new
# blocks: a later run of the old key read them)
def test_a_truncated_or_half_rebuilt_cache_is_rebuilt(corpus, tokenizer, tmp_path, monkeypatch):
    _corpus(corpus, tokenizer, tmp_path)
    with open(tmp_path / "blocks_train.bin", "r+b") as f:
        f.truncate(8 * 16)
    packs = _packs(monkeypatch)
    _, data, _, _ = _corpus(corpus, tokenizer, tmp_path)
    assert packs == [16, 16] and torch.equal(data.blocks, _fresh(corpus, tokenizer)[0])
    real = mlm_blocks._write

    def fails_on_held_out(path, blocks):  # a rebuild for --seq-len 24 that stops after its training blocks
        if path.endswith("held_out.bin"):
            raise OSError(28, "No space left on device")
        real(path, blocks)

    monkeypatch.setattr(mlm_blocks, "_write", fails_on_held_out)
    with pytest.raises(UsageError, match=r"the token blocks cannot be cached there: .*No space left"):
        _corpus(corpus, tokenizer, tmp_path, "--seq-len", "24")
    assert not (tmp_path / "blocks.json").exists() and not (tmp_path / "blocks_held_out.bin.tmp").exists()
    monkeypatch.setattr(mlm_blocks, "_write", real)
    packs.clear()
    _, data, _, _ = _corpus(corpus, tokenizer, tmp_path)  # --seq-len 16 again: its blocks were replaced
    assert packs == [16, 16] and torch.equal(data.blocks, _fresh(corpus, tokenizer)[0])


# kills load_cache's key check (another rank reading a cache rank 0 did not write for this run: --output not shared
# between machines)
def test_a_rank_reads_only_the_cache_of_rank_zeros_key(corpus, tokenizer, tmp_path):
    _corpus(corpus, tokenizer, tmp_path)
    key = json.loads((tmp_path / "blocks.json").read_text())["key"]
    assert mlm_blocks.load_cache(str(tmp_path), key)[0]["train"].shape[1] == 16
    with pytest.raises(UsageError, match="must be a shared folder"):
        mlm_blocks.load_cache(str(tmp_path), "0" * 64)
    with pytest.raises(UsageError, match="must be a shared folder"):
        mlm_blocks.load_cache(str(tmp_path / "elsewhere"), key)


# kills eval_rows' stride (`* num_blocks // k` -> the first k, of the first documents alone), its `min(...)` (more
# rows than blocks: an IndexError) and `eval_blocks == 0` -> none
def test_eval_rows_spread_evenly_in_file_order():
    assert mlm_blocks.eval_rows(10, 4).tolist() == [0, 2, 5, 7]
    assert mlm_blocks.eval_rows(1000, 512).tolist()[-1] == 998
    assert mlm_blocks.eval_rows(5, 0).tolist() == [0, 1, 2, 3, 4]
    assert mlm_blocks.eval_rows(3, 8).tolist() == [0, 1, 2]
    big = mlm_blocks.eval_rows(2**40, 512)  # int64: no overflow at 512 x 2^40
    assert big.dtype == torch.int64 and int(big[-1]) == 511 * 2**40 // 512


# kills to_device's pinned, non-blocking copy to CUDA (-> a plain `.to(device)`, a blocking copy from pageable memory
# each micro-batch) and its CPU path (-> pinning there too: CPU runs changed; pinning needs an accelerator)
def test_to_device_pins_for_cuda_and_leaves_cpu_tensors_alone():
    batch = mock.MagicMock()
    cuda = torch.device("cuda", 0)
    assert mlm_blocks.to_device(batch, cuda) is batch.pin_memory.return_value.to.return_value
    batch.pin_memory.assert_called_once_with()
    batch.pin_memory.return_value.to.assert_called_once_with(cuda, non_blocking=True)
    cpu = torch.arange(6).view(2, 3)
    assert mlm_blocks.to_device(cpu, CPU) is cpu


# kills _corpus's `TrainBlocks(train, ...)` -> `TrainBlocks(train.to(device), ...)` (the whole corpus on every GPU:
# 24 GB at 2.7B tokens, helper-253) and _train_batch's `to_device(...)` left out (batches on the CPU); the special
# tokens' mask of a batch is computed from it, as the held-out part's is, with the ids kept on the device
# (`torch.tensor([...], device=device)` -> on the CPU)
def test_the_blocks_stay_on_the_cpu_and_a_batch_goes_to_the_device(corpus, tokenizer, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(mlm_cli, "_corrupt", lambda args, vocab, blocks, special, *a, **k: seen.append(
        (blocks, special)) or {"input_ids": blocks})  # fmt: skip
    meta = torch.device("meta")  # a device other than the CPU, on every machine
    vocab, data, _, _ = _corpus(corpus, tokenizer, tmp_path, device=meta)
    assert data.blocks.device == CPU and data.device == meta and seen[0][0].device == meta  # (the held-out batch)
    assert data.special_ids.device == meta  # (on the CPU: a blocking copy of them to the GPU each micro-batch)
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY])
    mlm_cli._train_batch(args, vocab, data, 0, 0, 1)
    assert seen[1][0].device == meta and seen[1][1].device == meta and seen[1][1].dtype == torch.bool
    tok = _tok(tokenizer)
    ids = torch.tensor([tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")])
    cpu = data._replace(device=CPU, special_ids=ids)
    mlm_cli._train_batch(args, vocab, cpu, 0, 0, 1)
    rows = mlm_cli._epoch_order(data.blocks.shape[0], 0, 0)[:4]
    assert torch.equal(seen[2][0], data.blocks[rows])
    assert torch.equal(seen[2][1], text_data.special_tokens_mask(data.blocks[rows], tok))


def _tok(path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


# kills special_counts' chunks (`s : s + rows_per_chunk` -> `s : s + 1`, or a chunk left out): _check_keep's shares
def test_special_counts_counts_every_block_by_chunks():
    blocks = torch.randint(5, 64, (7, 8), generator=torch.Generator().manual_seed(0))
    blocks[:, 0], blocks[:, -1], blocks[3, 4] = 2, 3, 3
    ids = torch.tensor([0, 2, 3])
    want = torch.isin(blocks, ids).sum(1)
    for chunk in (1, 3, 7, 100):
        assert torch.equal(mlm_blocks.special_counts(blocks, ids, rows_per_chunk=chunk), want)
    assert want[3] == 3


# kills _corpus reading the documents on every rank (`rank_zero_check(lambda: docs.update(...))` -> a read outside it)
# and packing them there (the cache's build outside rank_zero_check): under torchrun the other ranks read rank 0's
# cache, after its broadcast of the key, and neither read nor tokenise the corpus (helper-253: every rank did)
def test_another_rank_reads_rank_zeros_cache_and_not_the_corpus(corpus, tokenizer, tmp_path, monkeypatch):
    import torch.distributed as dist

    _, data, val, sizes = _corpus(corpus, tokenizer, tmp_path)  # rank 0's build
    key = json.loads((tmp_path / "blocks.json").read_text())["key"]

    def broadcast(objects, src):  # the collectives as rank 1 sees them: rank 0's outcome (no error), then its key
        assert src == 0
        if len(objects) == 2:
            objects[:] = [key, True]

    def unread(*args):
        raise AssertionError("rank 1 read the corpus")

    def all_gather(objects, mine):  # every rank's load_cache outcome: none failed
        objects[:] = [None, mine]

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    monkeypatch.setattr(dist, "all_gather_object", all_gather)
    monkeypatch.setattr(text_data, "text_dir_documents", unread)
    monkeypatch.setattr(text_data, "pack_blocks", unread)
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--output", str(tmp_path)])
    _, data1, val1, sizes1 = mlm_cli._corpus(args, 1, 2, CPU, tokenizer, False)
    assert torch.equal(data1.blocks, data.blocks) and torch.equal(val1["input_ids"], val["input_ids"])
    assert sizes1["corpus_sha256"] == sizes["corpus_sha256"] and sizes1["documents"] == sizes["documents"] == 400


# (helper-257) kills mlm_blocks.load_cache's `shared=False` -> `shared=True`: a write into the mapped blocks (an
# in-place op by mistake in a batch path) would then go to blocks_train.bin, the cache every other rank and every
# later run reads; private (copy-on-write), the file stays as packed
def test_the_mapped_blocks_are_private_a_write_leaves_the_cache_file_alone(corpus, tokenizer, tmp_path):
    _, data, _, _ = _corpus(corpus, tokenizer, tmp_path)
    path = tmp_path / "blocks_train.bin"
    before = path.read_bytes()
    data.blocks[0].fill_(7)
    del data
    assert path.read_bytes() == before


# (helper-257) kills _corpus's special ids from text_data.NEVER_PREDICTED -> text_data.SPECIAL_TOKENS (all five:
# [UNK] and [MASK] too): a training batch's special-token mask (never predicted, always kept by the sub-branch) then
# differed from the held-out part's (text_data.special_tokens_mask) and from the batches before 2026-12-07; the test
# above replaces special_ids by hand, so it never sees the ids _corpus builds
def test_a_training_batchs_special_tokens_are_pad_cls_and_sep_alone(corpus, tokenizer, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(mlm_cli, "_corrupt", lambda args, vocab, blocks, special, *a, **k: seen.append(
        (blocks, special)) or {"input_ids": blocks})  # fmt: skip
    vocab, data, _, _ = _corpus(corpus, tokenizer, tmp_path)
    tok = _tok(tokenizer)
    ids = {t: tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    blocks = torch.full((4, 16), 50, dtype=torch.int32)
    blocks[:, 0], blocks[:, -1] = ids["[CLS]"], ids["[SEP]"]
    blocks[:, 3], blocks[:, 5], blocks[:, 7] = ids["[UNK]"], ids["[MASK]"], ids["[PAD]"]
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY])
    mlm_cli._train_batch(args, vocab, data._replace(blocks=blocks), 0, 0, 1)
    special = seen[-1][1]
    assert special[:, [0, 7, 15]].all() and not special[:, [1, 2, 3, 4, 5, 6]].any()


# (helper-257) kills mlm_tokenizer.removed_if_refused deleting ``also`` (the cached blocks) outside `if fresh`: a
# refused run that trained no vocabulary (too large a --batch-size, a resume of another run) must keep the cache it
# built or read, or the next start tokenises the whole corpus again (tens of minutes on rank 0 at 20 GB of text)
def test_a_refused_run_that_trained_no_vocabulary_keeps_the_cache(corpus, tokenizer, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(out), "--batch-size", "100000"]
    for done in ("packed and cached in", "read from the cache"):  # built by the refused run, then read by another
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert "fewer than one step" in captured.err and f"token blocks {done}" in captured.out
        files = sorted(os.listdir(out))
        assert {"blocks.json", "blocks_train.bin", "blocks_held_out.bin"} <= set(files)
