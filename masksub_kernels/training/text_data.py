"""Text for the MLM command: a corpus every machine has offline, a WordPiece vocabulary, fixed-length blocks.

- ``stdlib_docstrings()``: the docstrings (module, class, function) of the running Python's standard library, its
  test suites left out, in a fixed order (sorted paths, ``ast.walk`` order). Same Python version, same corpus.
- ``text_dir_documents(root)``: the paragraphs (blank-line separated) of the ``*.txt`` files under a directory.
- ``split_documents``: held out = the documents whose CRC-32 is 0 mod 10 (about 10%): the split depends on the
  text alone, never on order, and duplicates fall on the same side.
- ``train_tokenizer``: a BERT WordPiece vocabulary (``tokenizers``) trained on the training documents only.
- ``pack_blocks``: every document tokenised, joined with [SEP], cut into blocks of L - 2 tokens framed by [CLS] and
  [SEP]: fixed-length sequences, no padding (the tail shorter than a block is dropped).
"""

from __future__ import annotations

import ast
import os
import re
import stat
import sysconfig
import zlib
from collections.abc import Iterable

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
NEVER_PREDICTED = ("[PAD]", "[CLS]", "[SEP]")  # of them: never predicted, always kept by MaskSub's sub-branch
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

__all__ = ["MIN_VOCAB_SIZE", "NEVER_PREDICTED", "SPECIAL_TOKENS", "check_vocab_size",
           "pack_blocks", "special_tokens_mask", "split_documents",
           "stdlib_docstrings", "text_dir_documents", "train_tokenizer"]  # fmt: skip


def stdlib_docstrings(root: str | None = None) -> list[str]:
    """The docstrings of the standard library's modules, classes and functions (test suites excluded)."""
    root = root or sysconfig.get_paths()["stdlib"]
    documents = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):  # a few files are deliberately broken
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and doc.strip():
                        documents.append(doc.strip())
    return documents


# Paragraphs: separated by a line that is empty or holds whitespace alone (editors leave spaces and tabs;
# a form feed, a no-break space: any Unicode whitespace but a newline, so that a no-break space's line does not join
# two paragraphs)
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")


def text_dir_documents(root: str) -> list[str]:
    """The non-empty paragraphs (separated by blank lines, any whitespace allowed on them) of every ``*.txt`` file
    (any case: ``.TXT``) under ``root``, linked folders and files read once, pipes and devices left out (sorted
    paths, UTF-8: another encoding, or a file that cannot be read, is a ValueError naming the file)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such directory: {root}")
    documents, seen = [], set()

    def unlisted(exc: OSError):  # a folder that cannot be listed: its files would be left out silently
        raise ValueError(f"{exc.filename} cannot be read: {exc.strerror or exc}") from exc

    for directory, subdirs, files in os.walk(root, followlinks=True, onerror=unlisted):
        real = os.path.realpath(directory)
        if real in seen:  # a link back up the tree, or two links to one folder: read once
            subdirs.clear()
            continue
        seen.add(real)
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.lower().endswith(".txt") and _first_read(path, seen):
                try:
                    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no text
                        documents.extend(p.strip() for p in _PARAGRAPH_BREAK.split(f.read()) if p.strip())
                except UnicodeDecodeError as exc:  # replaced characters would vanish from the vocabulary unseen
                    raise ValueError(
                        f"{path} is not UTF-8 (byte {exc.start}: {exc.reason}); the corpus is read as UTF-8: convert "
                        "it (e.g. iconv -f latin1 -t utf-8)"
                    ) from exc
                except OSError as exc:  # a broken link, no permission
                    raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if not documents:
        raise ValueError(f"no text in {root}: the corpus is the *.txt files under it (none found, or all empty)")
    return documents


def _first_read(path: str, seen: set) -> bool:
    """Whether text_dir_documents reads ``path``: a file not read before under another name (a symbolic or hard
    link to a file is read once), and not a pipe or a device (a FIFO named
    *.txt hung the read). A broken link is read: its error names it. ``seen``: the folders' real paths and the
    files' (device, inode) pairs read so far."""
    try:
        info = os.stat(path)
    except OSError:
        return True
    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
        return False
    seen.add((info.st_dev, info.st_ino))
    return True


def split_documents(documents: Iterable[str], held_out_mod: int = 10) -> tuple[list[str], list[str]]:
    """(train, held_out): a document is held out when CRC-32 of its UTF-8 text is 0 mod ``held_out_mod``."""
    train, held_out = [], []
    for doc in documents:
        (held_out if zlib.crc32(doc.encode("utf-8")) % held_out_mod == 0 else train).append(doc)
    return train, held_out


# A run of more than WordPiece's 100 letters and digits (not CJK ideographs, which BERT's pre-tokenizer splits one by
# one): one word that encodes as [UNK] whatever the vocabulary, where the trainer's merges inside it take time
# quadratic in its length (a 100k-character run 5.4 s, a 1M one minutes): left out of the vocabulary's
# training. Any other character (punctuation, symbols, marks) ends a run here: a word is never cut short
_UNUSABLE_WORD = re.compile(r"(?:(?![\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff])[^\W_]){101,}")


MIN_VOCAB_SIZE = 64  # masksub-train-mlm's --vocab-size, and train_tokenizer's: the special tokens and the characters


def check_vocab_size(vocab_size: int, name: str = "--vocab-size") -> None:
    """A ValueError for a vocabulary size below MIN_VOCAB_SIZE (the command's message; ``name``: the option)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"{name} must be >= {MIN_VOCAB_SIZE} (the special tokens and the characters), got {vocab_size}"
        )


def train_tokenizer(documents: list[str], vocab_size: int):
    """A lower-casing BERT WordPiece tokenizer (``tokenizers.BertWordPieceTokenizer``) trained on ``documents``
    (words of more than 100 characters left out: they encode as [UNK]), with SPECIAL_TOKENS at ids 0..4 ([PAD] = 0,
    [CLS] = 2, [SEP] = 3, [MASK] = 4). A ValueError for no documents (a vocabulary of the special tokens alone) or a
    ``vocab_size`` below MIN_VOCAB_SIZE, as masksub-train-mlm refuses them. The vocabulary may come out smaller than
    ``vocab_size``: WordPiece keeps the pieces seen at least twice."""
    from tokenizers import BertWordPieceTokenizer

    check_vocab_size(vocab_size, "vocab_size")
    if not documents:
        raise ValueError("no documents to train the vocabulary on: the corpus is empty")

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(
        (_UNUSABLE_WORD.sub(" ", doc) for doc in documents),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    return tokenizer


# Documents per encode_batch call of pack_blocks: the tokenizers' Encoding objects of one batch are ~140 bytes a token,
# so the whole corpus at once peaked at ~175 bytes a token; by batches, ~12 (the stream's int32 ids and
# the int64 blocks) plus one batch's
ENCODE_BATCH_DOCUMENTS = 10_000


def pack_blocks(tokenizer, documents: list[str], length: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``dtype`` [num_blocks, length]: [CLS] + L - 2 tokens of the documents joined by [SEP] + [SEP] (int32: what the
    block cache stores, mlm_blocks.py)."""
    import numpy as np

    if length < 3:
        raise ValueError(f"the sequence length must be >= 3 ([CLS], a token, [SEP]), got {length}")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    parts = []
    # the text's own "[MASK]", "[PAD]", ... (a corpus about BERT) are words, not special tokens: encoded as text
    # (tokenizers matches added tokens in the text even without add_special_tokens)
    inner = getattr(tokenizer, "_tokenizer", tokenizer)  # a BertWordPieceTokenizer wraps its Tokenizer
    was = getattr(inner, "encode_special_tokens", None)  # (None: a stand-in with no such switch)
    if was is not None:
        inner.encode_special_tokens = True
    truncation, padding = getattr(inner, "truncation", None), getattr(inner, "padding", None)
    if truncation:
        inner.no_truncation()
    if padding:
        inner.no_padding()
    try:
        for start in range(0, len(documents), ENCODE_BATCH_DOCUMENTS):
            encodings = tokenizer.encode_batch(
                documents[start : start + ENCODE_BATCH_DOCUMENTS], add_special_tokens=False
            )
            ids = (token for encoding in encodings for token in (*encoding.ids, sep_id))
            parts.append(np.fromiter(ids, dtype=np.int32))  # (a vocabulary's ids are far below 2^31)
    finally:
        if was is not None:
            inner.encode_special_tokens = was
        if truncation:
            inner.enable_truncation(**truncation)
        if padding:
            inner.enable_padding(**padding)
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts
    body = length - 2
    num_blocks = len(stream) // body
    if num_blocks == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens: too few for one block of {length}")
    blocks = torch.empty(num_blocks, length, dtype=dtype)
    blocks[:, 0], blocks[:, -1] = cls_id, sep_id
    blocks[:, 1:-1] = torch.from_numpy(stream[: num_blocks * body].reshape(num_blocks, body))
    return blocks


def special_tokens_mask(blocks: torch.Tensor, tokenizer) -> torch.Tensor:
    """bool, like ``blocks``: True at NEVER_PREDICTED's tokens, [PAD], [CLS] and [SEP]."""
    ids = torch.tensor([tokenizer.token_to_id(t) for t in NEVER_PREDICTED])
    return torch.isin(blocks, ids)


def main(argv: list[str] | None = None) -> int:
    """``python -m masksub_kernels.training.text_data PATH [--vocab-size N] [--data-dir DIR]``: train the
    vocabulary that ``masksub-train-mlm`` would train, once, and save it to PATH for runs to share."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m masksub_kernels.training.text_data", description=main.__doc__, allow_abbrev=False
    )
    p.add_argument("path", help="tokenizer.json to write")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--data-dir", default=None, help="directory of *.txt files (default: the stdlib docstrings)")
    p.add_argument("--overwrite", action="store_true", help="replace PATH where it exists (default: refused)")
    args = p.parse_args(argv)
    if os.path.isdir(args.path):  # (before tokenizers' "Is a directory" traceback after the training)
        p.error(f"{args.path!r} is a directory; PATH is the tokenizers JSON file to write (e.g. DIR/tokenizer.json)")
    if os.path.lexists(args.path) and not args.overwrite:  # (as the command, which reuses an existing one)
        p.error(f"{args.path!r} exists: runs that share it (--tokenizer) would read another vocabulary; pass "
                "--overwrite to replace it, or choose another PATH")  # fmt: skip
    from .run_setup import UsageError, check_writable_directory

    try:  # before the training (a folder that cannot be written failed after it, in a traceback)
        check_writable_directory(os.path.dirname(os.path.abspath(args.path)), f"{args.path!r}: its folder")
    except UsageError as exc:
        p.error(str(exc))
    try:
        check_vocab_size(args.vocab_size)
    except ValueError as exc:
        p.error(str(exc))
    try:
        documents = text_dir_documents(args.data_dir) if args.data_dir else stdlib_docstrings()
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    train, held_out = split_documents(documents)
    if not train:  # as masksub-train-mlm refuses it (else a vocabulary of the special tokens alone)
        p.error(f"no training documents: the corpus's {len(held_out)} document(s) are all held out")
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    tokenizer = train_tokenizer(train, args.vocab_size)
    tokenizer.save(args.path + ".partial")
    os.replace(args.path + ".partial", args.path)  # whole files only, as the command saves its vocabulary
    # (the documents trained on; log.json's `documents` of a run counts the corpus's, held-out ones included)
    print(f"{args.path}: {tokenizer.get_vocab_size()} tokens from {len(train)} training documents ({len(held_out)} of "
          f"the corpus's {len(documents)} held out)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
