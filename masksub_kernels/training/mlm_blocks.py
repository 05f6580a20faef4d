"""The token blocks of ``masksub-train-mlm`` (mlm_cli.py): packed once into ``--block-cache`` (default ``--output``),
memory-mapped by every rank, kept on the CPU, a batch at a time moved to the device.

- The cache: ``DIR/blocks.json`` (its key, shapes and what is derived from the blocks) beside ``blocks_train.bin``
  and ``blocks_held_out.bin`` (int32 since CACHE_VERSION 2: 4 bytes a token; row-major [blocks, --seq-len]: the
  blocks as ``text_data.pack_blocks`` packs them). Its key is a SHA-256 of what determines the blocks
  (``cache_key``): the documents (every training and held-out document's text, in order), the vocabulary file's
  SHA-256, --seq-len, the ``tokenizers`` version and CACHE_VERSION (the packing's format). So runs of the same
  corpus, vocabulary and --seq-len (a baseline and MaskSub, seeds) may share one folder: the first packs it, the
  others read it. Rank 0 of a run alone reads the corpus and decides: a cache whose key (or file sizes) differs is
  rebuilt, never reused. A build holds a lock on ``DIR/blocks.lock`` (flock, where the file system has it: runs
  started together wait for one build, then read it), removes the temporary files an interrupted build left, and
  writes each file through a temporary file of its own (pid and a random tag), flushed and renamed, ``blocks.json``
  removed first and written last, the folder flushed after: an interrupted rebuild leaves no cache that passes for
  another. A build that fails (a full disk, an exception while packing or writing) removes the files it wrote, still
  under the lock (those at their paths that are its own: never another build's), and is refused naming the folder
  (a UsageError; a full disk says so). The other ranks wait (a broadcast), then map the files (``torch.from_file``,
  private: pages shared with the page cache, nothing copied); where one cannot, every rank stops
  (``every_rank_check``). Under torchrun on several machines the folder must be shared, as the vocabulary's.
- Built once with the blocks, stored in blocks.json (not read from the files at each start, ~2 min per rank at
  40 GB): each training block's count of special tokens, as a histogram (mlm_args.check_keep), and the corpus's
  SHA-256 (``corpus_digest``, which a checkpoint records) for the held-out blocks evaluated by this run's
  --eval-blocks, by all of them (0) and by the default 512; another --eval-blocks computes it at the start, unless
  a --prepare-only of that --eval-blocks that found the cache valid recorded it (record_digest).
- ``--reuse-block-cache``: a start or a resume takes the blocks from the cache without reading the text
  (else rank 0 reads the whole corpus into memory at each start to hash it for the key: minutes and tens of GB at
  Wikipedia's size). corpus_documents reads nothing (the vocabulary must exist: none is trained without the text);
  reused_key recomputes the key (key_of: cache_key's own) from the documents' SHA-256 that blocks.json records,
  trusted (a corpus changed since is not noticed), and this run's vocabulary, --seq-len, tokenizers version and
  CACHE_VERSION: a missing cache, one made for other settings (named) or a damaged one is refused, never rebuilt.
  The document counts, the corpus digest and a resume's documents check (check_resume_early) come from blocks.json.
- Training batches: a batch's rows are gathered from the mapped blocks on the CPU and copied to a CUDA device from
  pinned memory without blocking (``to_device``), then widened to int64 (the model's ids, as before); their
  special-token mask is computed from the batch (``torch.isin``), not held for the whole corpus (9 bytes a token on
  every GPU).
- The held-out evaluation: ``--eval-blocks`` K of the N held-out blocks, evenly strided over them (``eval_rows``:
  block floor(i N / K) for i < K, in file order), not the first K (which came from the first documents alone).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch

from .rank_zero import every_rank_check, rank_zero_check
from .run_setup import UsageError

CACHE_VERSION = 2  # the packing's format ([CLS] + L - 2 tokens + [SEP], documents joined by [SEP]; 2: int32 and the
# stats); bump to rebuild
DTYPE = torch.int32  # the files' (a vocabulary's ids < 2^31: pack_parts checks); int64 once on the device
META = "blocks.json"
LOCK = "blocks.lock"
PARTS = {"train": "blocks_train.bin", "held_out": "blocks_held_out.bin"}
DEFAULT_EVAL_BLOCKS = 512  # --eval-blocks' default: its corpus digest is stored with the cache

__all__ = ["CACHE_VERSION", "DEFAULT_EVAL_BLOCKS", "LOCK", "META", "PARTS", "REUSE_HELP", "TrainBlocks",
           "block_specials", "block_stats", "cache_key", "cached_blocks", "corpus_digest", "corpus_documents",
           "documents_digest", "ensure_cache", "eval_count", "eval_rows", "key_of", "load_cache", "pack_parts",
           "read_documents", "record_digest", "remove_built", "remove_lock", "reused_key", "special_counts",
           "stored_digest", "to_device"]  # fmt: skip


class TrainBlocks(NamedTuple):
    blocks: torch.Tensor  # int32 [N, L] on the CPU (memory-mapped from the cache)
    special_ids: torch.Tensor  # int64: the ids of text_data.NEVER_PREDICTED, on ``device``
    device: torch.device  # where a batch goes
    specials: dict | None = None  # {special tokens in a block: blocks}, blocks.json's (None: counted from ``blocks``)


def read_documents(data_dir: str | None) -> dict:
    """{'count', 'train', 'held_out'}: the corpus's documents (--data-dir's, or the stdlib docstrings), split."""
    from . import text_data

    try:
        documents = text_data.text_dir_documents(data_dir) if data_dir else text_data.stdlib_docstrings()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    train, held_out = text_data.split_documents(documents)
    if not held_out or not train:
        distinct = len(set(documents))
        copies = f", {distinct} distinct" if distinct != len(documents) else ""
        raise UsageError(
            f"the corpus has {len(documents)} document(s){copies} (paragraphs: documents are separated by blank "
            f"lines), and {'none' if not held_out else 'all'} of them landed in the held-out part (about 10%, chosen "
            "by a hash of each document's text, so identical texts fall together): give more distinct documents"
        )
    return {"count": len(documents), "train": train, "held_out": held_out}


def pack_parts(tokenizer, docs: dict, seq_len: int) -> dict[str, torch.Tensor]:
    """{'train', 'held_out'}: each part's documents packed (text_data.pack_blocks), DTYPE; a UsageError names the
    part, or a vocabulary whose ids do not fit DTYPE."""
    from . import text_data

    if tokenizer.get_vocab_size() > torch.iinfo(DTYPE).max:
        raise UsageError(
            f"a vocabulary of {tokenizer.get_vocab_size()} tokens: the token blocks are cached as {DTYPE} (ids below "
            f"2^31), too few for it"
        )
    split = {}
    for name, held in (("train", False), ("held_out", True)):
        try:
            split[name] = text_data.pack_blocks(tokenizer, docs[name], seq_len, dtype=DTYPE)
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
    return key_of(documents_digest(train_docs, held_out), tokenizer_sha256, seq_len)


def key_of(documents_sha256: str, tokenizer_sha256: str, seq_len: int) -> dict:
    """cache_key's, from the documents' SHA-256 (documents_digest's, or a cache's record of it: reused_key)."""
    import tokenizers

    parts = {"version": CACHE_VERSION, "documents_sha256": documents_sha256, "seq_len": seq_len,
             "tokenizer_sha256": tokenizer_sha256, "tokenizers": tokenizers.__version__}  # fmt: skip
    return {"key": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), **parts}


def _hash_blocks(digest, blocks: torch.Tensor, rows_per_chunk: int = 1 << 16):
    """``digest`` updated with the blocks' shape and their bytes as int64 (whatever their dtype), a chunk of rows at a
    time: an int64 [N, L] tensor's bytes, as the digest was taken before the cache held int32."""
    digest.update(str(tuple(blocks.shape)).encode())
    for start in range(0, blocks.shape[0], rows_per_chunk):
        digest.update(memoryview(blocks[start : start + rows_per_chunk].to(torch.int64).contiguous().numpy()))
    return digest


def corpus_digest(train: torch.Tensor, val: torch.Tensor) -> str:
    """SHA-256 of the corpus as the run trains and evaluates on it: its training and held-out token blocks ([N, L]
    each, on the CPU, hashed as int64), so a resume on other text (same sizes or not) is told apart."""
    return _hash_blocks(_hash_blocks(hashlib.sha256(), train), val).hexdigest()


def eval_count(num_blocks: int, eval_blocks: int) -> int:
    """The number of held-out blocks evaluated: ``eval_blocks`` (0: all) of ``num_blocks``."""
    return num_blocks if eval_blocks == 0 else min(eval_blocks, num_blocks)


def eval_rows(num_blocks: int, eval_blocks: int) -> torch.Tensor:
    """The held-out blocks evaluated: ``eval_blocks`` (0: all) of ``num_blocks``, evenly strided, in file order."""
    k = eval_count(num_blocks, eval_blocks)
    return torch.arange(k, dtype=torch.int64) * num_blocks // k


def block_stats(blocks: dict[str, torch.Tensor], special_ids: torch.Tensor, eval_blocks: int) -> dict:
    """What blocks.json keeps of the blocks (module docstring), from one read of them: 'special_counts' {s: the
    training blocks holding s special tokens}, 'corpus_sha256' {K: corpus_digest with K held-out blocks evaluated}
    for --eval-blocks ``eval_blocks``, 0 and DEFAULT_EVAL_BLOCKS (the training blocks hashed once)."""
    values, counts = torch.unique(special_counts(blocks["train"], special_ids), return_counts=True)
    held_out = blocks["held_out"]
    trained = _hash_blocks(hashlib.sha256(), blocks["train"])
    ks = sorted({eval_count(held_out.shape[0], e) for e in (eval_blocks, 0, DEFAULT_EVAL_BLOCKS)})
    digests = {str(k): _hash_blocks(trained.copy(), held_out[eval_rows(held_out.shape[0], k)]).hexdigest()
               for k in ks}  # fmt: skip
    return {"special_counts": {str(int(v)): int(c) for v, c in zip(values, counts)}, "corpus_sha256": digests}


def stored_digest(meta: dict, train: torch.Tensor, val: torch.Tensor) -> str:
    """corpus_digest(train, val): blocks.json's where it holds one for this many held-out blocks, else computed."""
    stored = meta.get("corpus_sha256", {}).get(str(val.shape[0]))
    return stored if stored is not None else corpus_digest(train, val)


def record_digest(folder: str, meta: dict, blocks: dict[str, torch.Tensor], eval_blocks: int) -> int | None:
    """--prepare-only, on a cache it found valid (``meta``, ``blocks``: load_cache's): add to blocks.json the corpus
    digest of --eval-blocks ``eval_blocks`` where it has none (a run would compute it at its start, on every rank).
    Computed from the mapped blocks, then written under the lock, atomically (_write), to the blocks.json then in the
    folder where it is still valid for ``meta``'s key (a rebuild of another key meanwhile: nothing written); the key,
    the blocks and every other entry as they are. Returns the number of held-out blocks recorded, or None."""
    from .checkpoint import fsync_directory

    held_out = blocks["held_out"]
    count = str(eval_count(held_out.shape[0], eval_blocks))
    if count in meta.get("corpus_sha256", {}):
        return None
    digest = corpus_digest(blocks["train"], held_out[eval_rows(held_out.shape[0], eval_blocks)])
    with _locked(folder):
        now = _read_meta(folder)
        if not _valid(folder, now, meta["key"]) or count in now.get("corpus_sha256", {}):
            return None
        now["corpus_sha256"] = {**now.get("corpus_sha256", {}), count: digest}
        _write(os.path.join(folder, META), json.dumps(now, indent=1).encode())
        fsync_directory(folder)
    meta["corpus_sha256"] = now["corpus_sha256"]
    return int(count)


def _read_meta(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _valid(folder: str, meta: dict | None, key: str) -> bool:
    """The cache in ``folder`` has this key and files of the sizes it records (a truncated file is rebuilt)."""
    if meta is None or meta.get("key") != key or not isinstance(meta.get("special_counts"), dict):
        return False
    size = DTYPE.itemsize
    try:
        return all(
            os.path.getsize(os.path.join(folder, PARTS[name])) == size * meta[name][0] * meta[name][1] for name in PARTS
        )
    except (OSError, KeyError, TypeError, IndexError):
        return False


def _write(path: str, data: bytes | memoryview) -> None:
    """``data`` to ``path`` through a temporary file of this process's (a concurrent build's is another), flushed and
    renamed."""
    from .checkpoint import fsync

    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _locked(folder: str):
    """An exclusive lock on ``folder``'s LOCK file while a build runs (released when the file closes, also by a
    process that dies); without flock (Windows, a file system that refuses it) builds are not serialised. A lock
    taken on a file that was removed meanwhile (remove_lock: a refused run's, under the lock) is taken again on the
    file now at the path: two builds never hold locks on two files of one folder."""
    path = os.path.join(folder, LOCK)
    while True:
        f = open(path, "a")
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):
            break  # not serialised: nothing to check
        try:
            held, now = os.fstat(f.fileno()), os.stat(path)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        f.close()
    with f:
        yield


def remove_lock(folder: str) -> None:
    """Remove ``folder``'s LOCK file, as a refused run that built the cache there removes what it made: under the
    lock (it waits for a build holding it), so that a run waiting on it takes it again on a new file (_locked)."""
    with contextlib.suppress(OSError), _locked(folder):
        os.remove(os.path.join(folder, LOCK))


def _remove_leftovers(folder: str) -> None:
    """The temporary files of builds that were interrupted (under the lock: no build of this folder is running)."""
    for name in os.listdir(folder):
        if name.endswith(".tmp") and name.startswith((META, *PARTS.values())):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


def ensure_cache(folder: str, key: dict, pack: Callable[[], dict], extra: dict, stats: Callable[[dict], dict],
                 what: str | None = None) -> bool:  # fmt: skip
    """Rank 0: the cache in ``folder`` for ``key`` (cache_key's), built from ``pack()`` ({'train', 'held_out'}: DTYPE
    [N, L] blocks each) where absent or of another key. blocks.json records ``extra`` (the document counts) and
    ``stats(blocks)`` (block_stats). Returns whether it was built. A build that fails removes the files it wrote
    (under the lock), then raises: an OSError as a UsageError naming the folder (``what``: the option that gave it,
    --output where --block-cache defaulted to it; default --block-cache)."""
    from .checkpoint import fsync_directory

    if _valid(folder, _read_meta(folder), key["key"]):
        return False
    try:
        os.makedirs(folder, exist_ok=True)
        with _locked(folder):
            if _valid(folder, _read_meta(folder), key["key"]):  # built by a run of the same key while this one waited
                return False
            _remove_leftovers(folder)
            blocks = pack()
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, META))  # first: no meta passes for the files while they are replaced
            written: dict[str, tuple[int, int]] = {}  # this build's files: (device, inode) of each
            try:
                for name, file in PARTS.items():
                    _write(os.path.join(folder, file), memoryview(blocks[name].to(DTYPE).contiguous().numpy()))
                    written[os.path.join(folder, file)] = _identity(os.path.join(folder, file))
                meta = {**key, **extra, **stats(blocks), **{name: list(blocks[name].shape) for name in PARTS}}
                _write(os.path.join(folder, META), json.dumps(meta, indent=1).encode())
            except BaseException:  # (a full disk, an interrupt): no partial cache of this build is left
                _remove_written(written)
                raise
            fsync_directory(folder)  # the renames
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = " (no space left: free some there, or pass a --block-cache on another disk)" if full else ""
        what = what or f"--block-cache {folder!r}"
        raise UsageError(f"{what}: the token blocks cannot be cached there: {exc}{hint}") from exc
    return True


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def remove_built(folder: str, written: dict[str, tuple[int, int]]) -> None:
    """A refused run's cache (mlm_tokenizer.removed_if_refused): the files its build wrote, under the lock, each where
    it is still that build's (another build of the folder since, between this run's build and its refusal, keeps its
    own files)."""
    with _locked(folder):
        _remove_written(written)


def _remove_written(written: dict[str, tuple[int, int]]) -> None:
    """The files a failed build wrote (under its lock), each where it is still that build's (the same inode)."""
    for path, identity in written.items():
        with contextlib.suppress(OSError):
            if _identity(path) == identity:
                os.remove(path)


def load_cache(folder: str, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Every rank: ({'train', 'held_out'}: the cached blocks, memory-mapped), blocks.json) for ``key`` (rank 0's)."""
    meta = _read_meta(folder)
    if not _valid(folder, meta, key):
        raise UsageError(
            f"--block-cache {folder!r}: the token blocks rank 0 cached or found there are not this process's to read "
            "(another key, or no file): under torchrun on several machines it must be a shared folder (--block-cache, "
            "or --output by default), and no run of other blocks may rebuild it meanwhile"
        )
    blocks = {}
    for name, file in PARTS.items():
        rows, length = meta[name]
        mapped = torch.from_file(os.path.join(folder, file), shared=False, size=rows * length, dtype=DTYPE)
        blocks[name] = mapped.view(rows, length)
    return blocks, meta


REUSE_HELP = ("take the token blocks from the cache in --block-cache (or --output) without reading the corpus's text "
              "(no minutes of reading, no RAM for it, at each start and resume): its recorded documents are trusted, "
              "so a corpus changed since it was made is not noticed; the vocabulary (which must exist), --seq-len and "
              "the versions are checked; --data-dir is recorded, not read (docs/masked_lm.md)")  # fmt: skip


def _reusing(args) -> bool:
    return bool(getattr(args, "reuse_block_cache", False))


def corpus_documents(args, tokenizer_at: str) -> dict:
    """Rank 0's documents (read_documents of --data-dir); with --reuse-block-cache none, the text is not read (the
    cache's record stands for it: reused_key), once the vocabulary is known to exist: none is trained without it."""
    if not _reusing(args):
        return read_documents(args.data_dir)
    if not os.path.isfile(tokenizer_at):
        raise UsageError(
            f"--reuse-block-cache: the vocabulary {tokenizer_at!r} does not exist, and without the corpus's text none "
            "can be trained: pass the --tokenizer the cache was made with (--prepare-only), or leave "
            "--reuse-block-cache out"
        )
    return {}


def reused_key(folder: str, what: str, tokenizer_sha256: str, seq_len: int) -> tuple[dict, dict]:
    """Rank 0, with --reuse-block-cache: (the key, blocks.json) of the cache in ``folder``, the key recomputed
    (key_of) from the documents' SHA-256 it records (trusted: the text is not read) and this run's vocabulary,
    --seq-len, tokenizers version and CACHE_VERSION. A UsageError names what differs from its record (or a cache
    missing, or damaged: its key or file sizes) and how to rebuild it."""
    meta = _read_meta(folder)
    rebuild = (f"rebuild it with --prepare-only (the corpus's --data-dir, this run's --tokenizer and --seq-len, "
               f"{what}), or leave --reuse-block-cache out (rank 0 then reads the corpus and packs it)")  # fmt: skip
    if meta is None or not isinstance(meta.get("documents_sha256"), str):
        raise UsageError(f"--reuse-block-cache: {what} holds no token-block cache ({META} missing or unreadable): "
                         f"{rebuild}")  # fmt: skip
    full = key_of(meta["documents_sha256"], tokenizer_sha256, seq_len)
    names = {"tokenizer_sha256": "the vocabulary's SHA-256", "seq_len": "--seq-len", "tokenizers": "tokenizers",
             "version": "the packing's format (CACHE_VERSION)"}  # fmt: skip
    differ = [f"{label} {meta.get(name)!r} -> {full[name]!r}" for name, label in names.items()
              if meta.get(name) != full[name]]  # fmt: skip
    if differ:
        raise UsageError(f"--reuse-block-cache: the token blocks in {what} were made for other settings (the "
                         f"cache's -> this run's): {'; '.join(differ)}; {rebuild}")  # fmt: skip
    counted = all(isinstance(meta.get(name), int) for name in ("documents", "held_out_documents"))
    if not counted or not _valid(folder, meta, full["key"]):
        raise UsageError(f"--reuse-block-cache: the token-block cache in {what} is damaged (its key, counts or file "
                         f"sizes do not match {META}: an interrupted or edited build): {rebuild}")  # fmt: skip
    return full, meta


def _note_source(args, meta: dict, prog: str) -> None:
    """With --reuse-block-cache: a note where --data-dir (recorded by this run, not read) is not the folder the cache
    was packed from (blocks.json's ``data_dir``, None: the stdlib docstrings; caches made before it have none): the
    same documents on another mount is a cluster's usual case, another corpus a mislabelled log."""
    if "data_dir" in meta and meta["data_dir"] != args.data_dir:
        given, packed = (repr(path) if path else "none (the standard library's docstrings)"
                         for path in (args.data_dir, meta["data_dir"]))  # fmt: skip
        print(f"{prog}: note: --reuse-block-cache: --data-dir {given} is recorded as this run's corpus, but the cache "
              f"was packed from {packed}: the blocks are the cache's", file=sys.stderr)  # fmt: skip


def cached_blocks(args, rank: int, world: int, docs: dict, tokenizer, digest: str, state, built: list, prog: str):
    """(blocks ({'train', 'held_out'}: memory-mapped), blocks.json, whether this run built them, its path): rank 0
    builds the cache in ``args.block_cache`` (or --output) where needed (after refusing a resume of other documents
    or options: mlm_resume.check_resume_early, before the corpus is packed), the others wait for its key, then every
    rank maps the files. ``docs``: rank 0's documents; ``built``: the files and the folders made for them (the lock
    file as a call: remove_lock), where this run built them (a refused run that trained its vocabulary deletes them)."""
    import torch.distributed as dist

    from . import text_data
    from .mlm_resume import check_resume_early

    key = [None, None]  # the cache's key, whether this run built it (rank 0's, then every rank's)
    folder = args.block_cache or args.output
    what = f"--block-cache {folder!r}" if args.block_cache else f"--output {folder!r}"

    def build() -> None:
        if _reusing(args):  # the documents as the cache records them: rank 0 read no text (corpus_documents)
            recorded = _read_meta(folder) or {}
            if state is not None and isinstance(recorded.get("documents_sha256"), str):  # a resume's options first:
                # another --seq-len or vocabulary is the resume's error, not the cache's (whose rebuild would not help)
                early = key_of(recorded["documents_sha256"], digest, args.seq_len)
                check_resume_early(args, state, world, digest, early, recorded.get("documents"))
            full, found = reused_key(folder, what, digest, args.seq_len)
            _note_source(args, found, prog)
            key[0] = full["key"]  # nothing to pack (load_cache checks the key again, on every rank)
            return
        full = cache_key(docs["train"], docs["held_out"], digest, args.seq_len)
        if state is not None:
            check_resume_early(args, state, world, digest, full, docs["count"])
        # (data_dir outside the key: the corpus's folder, for --reuse-block-cache's note)
        counts = {"documents": docs["count"], "held_out_documents": len(docs["held_out"]), "data_dir": args.data_dir}
        pack = functools.partial(pack_parts, tokenizer, docs, args.seq_len)
        ids = torch.tensor([tokenizer.token_to_id(t) for t in text_data.NEVER_PREDICTED])
        stats = functools.partial(block_stats, special_ids=ids, eval_blocks=args.eval_blocks)
        made, parent = [], folder  # the folders the build makes (innermost first)
        while not os.path.exists(parent) and parent != os.path.dirname(parent):
            made.append(parent)
            parent = os.path.dirname(parent)
        new_lock = not os.path.exists(os.path.join(folder, LOCK))
        try:
            key[0], key[1] = full["key"], ensure_cache(folder, full, pack, counts, stats, what)
        except UsageError:  # e.g. a part too small for one block: the lock file and folders it made go too
            if new_lock:
                built.extend([functools.partial(remove_lock, folder), *made])
            raise
        if key[1]:  # (its files and the lock file removed under the lock: remove_built, remove_lock)
            files = [os.path.join(folder, name) for name in (META, *PARTS.values())]  # (blocks.json first)
            own = functools.partial(remove_built, folder, {path: _identity(path) for path in files})
            built.extend([own, functools.partial(remove_lock, folder), *made])

    rank_zero_check(build, rank, world)  # the others wait here for the files
    if world > 1:
        dist.broadcast_object_list(key, src=0)
    loaded: list = []
    every_rank_check(lambda: loaded.extend(load_cache(folder, key[0])), rank, world)
    blocks, meta = loaded
    if rank == 0:
        done = "packed and cached in" if key[1] else "read from the cache"
        reused = "; --reuse-block-cache: the corpus not read, its documents as the cache records them" * _reusing(args)
        print(f"{prog}: token blocks {done} {os.path.join(folder, META)} ({meta['train'][0]} training, "
              f"{meta['held_out'][0]} held-out blocks of {args.seq_len}{reused})", flush=True)  # fmt: skip
    return blocks, meta, bool(key[1]), os.path.join(folder, META)


def special_counts(blocks: torch.Tensor, special_ids: torch.Tensor, rows_per_chunk: int = 1 << 16) -> torch.Tensor:
    """int64 [N]: each block's special tokens, counted a chunk of blocks at a time (no [N, L] mask)."""
    ids = special_ids.cpu()
    counts = [torch.isin(blocks[s : s + rows_per_chunk], ids).sum(1)
              for s in range(0, blocks.shape[0], rows_per_chunk)]  # fmt: skip
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64)


def block_specials(data: TrainBlocks) -> dict[int, int]:
    """{s: the training blocks holding s special tokens}: blocks.json's, else counted (a TrainBlocks made by hand)."""
    if data.specials is not None:
        return {int(s): int(n) for s, n in data.specials.items()}
    values, counts = torch.unique(special_counts(data.blocks, data.special_ids), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on ``device``: to CUDA from pinned memory, without blocking the host; elsewhere as it is."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
