"""The token blocks of ``masksub-train-mlm`` (mlm_cli.py): packed once into ``--output``, memory-mapped by every rank,
kept on the CPU, a batch at a time moved to the device.

- The cache: ``OUTPUT/blocks.json`` (its key and shapes) beside ``blocks_train.bin`` and ``blocks_held_out.bin``
  (int64, row-major [blocks, --seq-len]: the blocks as ``text_data.pack_blocks`` packs them). Its key is a SHA-256
  of what determines the blocks (``cache_key``): the documents (every training and held-out document's text, in
  order), the vocabulary file's SHA-256, --seq-len, the ``tokenizers`` version and CACHE_VERSION (the packing's
  format). Rank 0 alone reads the corpus and decides: a cache whose key (or file sizes) differs is rebuilt, never
  reused; the files are written through a temporary file, flushed and renamed, ``blocks.json`` removed first and
  written last, so an interrupted rebuild leaves no cache that passes for another. The other ranks wait (a
  broadcast), then map the files (``torch.from_file``, private: pages shared with the page cache, nothing copied).
  Under torchrun on several machines ``--output`` must be one shared folder, as for the vocabulary.
- Training batches: a batch's rows are gathered from the mapped blocks on the CPU and copied to a CUDA device from
  pinned memory without blocking (``to_device``); their special-token mask is computed from the batch
  (``torch.isin``), not held for the whole corpus: 9 bytes a token on every GPU before (helper-253).
- The held-out evaluation: ``--eval-blocks`` K of the N held-out blocks, evenly strided over them (``eval_rows``:
  block floor(i N / K) for i < K, in file order), not the first K (which came from the first documents alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from .run_setup import UsageError

CACHE_VERSION = 1  # the packing's format ([CLS] + L - 2 tokens + [SEP], documents joined by [SEP]); bump to rebuild
META = "blocks.json"
PARTS = {"train": "blocks_train.bin", "held_out": "blocks_held_out.bin"}
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]")  # never predicted, always kept by the sub-branch

__all__ = ["TrainBlocks", "cache_key", "ensure_cache", "eval_rows", "load_cache", "special_counts", "to_device"]


class TrainBlocks(NamedTuple):
    blocks: torch.Tensor  # int64 [N, L] on the CPU (memory-mapped from the cache)
    special_ids: torch.Tensor  # int64: the ids of SPECIAL_TOKENS, on ``device``
    device: torch.device  # where a batch goes


def read_documents(data_dir: str | None) -> dict:
    """{'count', 'train', 'held_out'}: the corpus's documents (--data-dir's, or the stdlib docstrings), split."""
    from . import text_data

    try:
        documents = text_data.text_dir_documents(data_dir) if data_dir else text_data.stdlib_docstrings()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    train, held_out = text_data.split_documents(documents)
    if not held_out or not train:
        raise UsageError(
            f"the corpus has {len(documents)} document(s) (paragraphs: documents are separated by blank lines): too "
            "few to hold 10% out"
        )
    return {"count": len(documents), "train": train, "held_out": held_out}


def pack_parts(tokenizer, docs: dict, seq_len: int) -> dict[str, torch.Tensor]:
    """{'train', 'held_out'}: each part's documents packed (text_data.pack_blocks); a UsageError names the part."""
    from . import text_data

    split = {}
    for name, held in (("train", False), ("held_out", True)):
        try:
            split[name] = text_data.pack_blocks(tokenizer, docs[name], seq_len)
        except ValueError as exc:  # say which part: the held-out one can be small where the corpus is not
            share = " (the documents whose CRC-32 is 0 mod 10, about 10% of many)" if held else ""
            part = "held-out" if held else "training"
            raise UsageError(f"the {part} part of the corpus, {len(docs[name])} document(s){share}: {exc}") from exc
    return split


def documents_digest(train_docs: list[str], held_out: list[str]) -> str:
    """SHA-256 of the documents in order, each part and each document length-prefixed (no two lists collide)."""
    digest = hashlib.sha256()
    for name, docs in (("train", train_docs), ("held_out", held_out)):
        digest.update(f"{name}:{len(docs)}\n".encode())
        for doc in docs:
            data = doc.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def cache_key(train_docs: list[str], held_out: list[str], tokenizer_sha256: str, seq_len: int) -> dict:
    """What determines the blocks (module docstring), and its SHA-256 as ``key``."""
    import tokenizers

    parts = {"version": CACHE_VERSION, "documents_sha256": documents_digest(train_docs, held_out), "seq_len": seq_len,
             "tokenizer_sha256": tokenizer_sha256, "tokenizers": tokenizers.__version__}  # fmt: skip
    return {"key": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), **parts}


def _read_meta(output: str) -> dict | None:
    try:
        with open(os.path.join(output, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _valid(output: str, meta: dict | None, key: str) -> bool:
    """The cache in ``output`` has this key and files of the sizes it records (a truncated file is rebuilt)."""
    if meta is None or meta.get("key") != key:
        return False
    try:
        return all(
            os.path.getsize(os.path.join(output, PARTS[name])) == 8 * meta[name][0] * meta[name][1] for name in PARTS
        )
    except (OSError, KeyError, TypeError, IndexError):
        return False


def _write(path: str, blocks: torch.Tensor) -> None:
    from .checkpoint import _fsync

    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(blocks.contiguous().numpy()))
            f.flush()
            _fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def ensure_cache(output: str, key: dict, pack: Callable[[], dict], extra: dict) -> bool:
    """Rank 0: the cache in ``output`` for ``key`` (cache_key's), built from ``pack()`` ({'train', 'held_out'}: int64
    [N, L] blocks each) where absent or of another key. ``extra``: recorded in blocks.json (the document counts).
    Returns whether it was built."""
    if _valid(output, _read_meta(output), key["key"]):
        return False
    blocks = pack()
    try:
        os.makedirs(output, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output, META))  # first: no meta passes for the files while they are replaced
        for name, file in PARTS.items():
            _write(os.path.join(output, file), blocks[name])
        meta = {**key, **extra, **{name: list(blocks[name].shape) for name in PARTS}}
        tmp = os.path.join(output, META + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, os.path.join(output, META))
    except OSError as exc:
        raise UsageError(f"--output {output!r}: the token blocks cannot be cached there: {exc}") from exc
    return True


def load_cache(output: str, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Every rank: ({'train', 'held_out'}: the cached blocks, memory-mapped), blocks.json) for ``key`` (rank 0's)."""
    meta = _read_meta(output)
    if not _valid(output, meta, key):
        raise UsageError(
            f"--output {output!r}: the token blocks rank 0 cached there are not this process's to read (another "
            "key, or no file): under torchrun on several machines --output must be a shared folder"
        )
    blocks = {}
    for name, file in PARTS.items():
        rows, length = meta[name]
        mapped = torch.from_file(os.path.join(output, file), shared=False, size=rows * length, dtype=torch.int64)
        blocks[name] = mapped.view(rows, length)
    return blocks, meta


def eval_rows(num_blocks: int, eval_blocks: int) -> torch.Tensor:
    """The held-out blocks evaluated: ``eval_blocks`` (0: all) of ``num_blocks``, evenly strided, in file order."""
    k = num_blocks if eval_blocks == 0 else min(eval_blocks, num_blocks)
    return torch.arange(k, dtype=torch.int64) * num_blocks // k


def special_counts(data: TrainBlocks, rows_per_chunk: int = 1 << 16) -> torch.Tensor:
    """int64 [N]: each training block's special tokens, counted a chunk of blocks at a time (no [N, L] mask)."""
    blocks, ids = data.blocks, data.special_ids.cpu()
    counts = [torch.isin(blocks[s : s + rows_per_chunk], ids).sum(1)
              for s in range(0, blocks.shape[0], rows_per_chunk)]  # fmt: skip
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on ``device``: to CUDA from pinned memory, without blocking the host; elsewhere as it is."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
