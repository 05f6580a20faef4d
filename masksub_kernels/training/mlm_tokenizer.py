"""The vocabulary of ``masksub-train-mlm`` (mlm_cli.py): which tokenizer.json a run uses, trains and keeps.

- ``--tokenizer PATH``: that file, trained on the training documents and written there when absent.
- Without it: ``OUTPUT/tokenizer.json``; a resumed run (``--resume CKPT``) takes the checkpoint's run's own: the
  absolute path its checkpoint records (``tokenizer``; a resume into another ``--output`` records the same file
  again; in checkpoints from before 2026-12-03, that run's ``--tokenizer``), else, where that file is gone (a run
  directory moved elsewhere), the ``tokenizer.json`` beside the checkpoint (the digest check refuses another); none
  is trained for a resume (a new vocabulary would only be refused by that check, after being written): a resume's
  ``--tokenizer`` must name an existing file.
- ``--tokenizer`` is made absolute before it is recorded, so a resume from another working directory finds it.
- A vocabulary trained by a run that is then refused (too few blocks, a resume of another run, ...) is deleted, so
  the next run into the same ``--output`` trains its own instead of silently reading it (with the directories made
  for it, where they are left empty: ``removed_if_refused``); only the file this process saved, still at the path
  (its inode, mtime and size): one that another run (a concurrent ``--prepare-only``) wrote meanwhile is kept. A
  default-path file that a run reuses without resuming is named in a note (it may come from an earlier run with
  another ``--vocab-size``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .run_setup import UsageError

DEFAULT_VOCAB_SIZE = 8192  # --vocab-size's: the WordPiece vocabulary trained for a run

__all__ = ["Vocab", "check_tokenizer_arg", "load_tokenizer", "removed_if_refused", "tokenizer_digest", "tokenizer_path"]


class Vocab(NamedTuple):
    size: int
    mask_id: int
    pad_id: int = 0  # the model's pad_token_id: the tokenizer's [PAD] (0 for the command's own vocabularies)


def check_tokenizer_arg(path: str | None) -> None:
    """--tokenizer names a file (existing or to write), not a directory such as a save_pretrained one."""
    if path is None or not os.path.isdir(path):
        return
    inside = os.path.join(path, "tokenizer.json")
    hint = f": use --tokenizer {inside}" if os.path.isfile(inside) else ""
    raise UsageError(f"--tokenizer {path!r} is a directory; it takes a tokenizers JSON file (tokenizer.json){hint}")


def tokenizer_path(args, state: dict | None) -> str:
    """The tokenizer.json this run uses (module docstring); ``state``: the --resume checkpoint, or None."""
    if args.tokenizer:
        if state is not None and not os.path.isfile(args.tokenizer):  # (trained, it would only be refused)
            raise UsageError(
                f"--tokenizer {args.tokenizer!r}: no such file; a resumed run (--resume) continues with the "
                "vocabulary it was trained with: pass that tokenizer.json, or leave --tokenizer out to take the "
                "checkpoint's"
            )
        return args.tokenizer
    if state is not None:
        beside = os.path.join(os.path.dirname(os.path.abspath(args.resume)), "tokenizer.json")
        saved = state.get("tokenizer") or state.get("args", {}).get("tokenizer")
        path = saved if saved and os.path.isfile(saved) else beside  # a run directory moved: the file beside it
        if not os.path.isfile(path):
            where = (f"{path!r} is missing" if not saved or os.path.abspath(saved) == beside else
                     f"is missing: neither {saved!r} (the path the checkpoint records) nor {beside!r} (beside the "
                     "checkpoint) exists")  # fmt: skip
            raise UsageError(
                f"--resume {args.resume!r}: its run's vocabulary {where}; pass --tokenizer with the tokenizer.json "
                "that run used"
            )
        return path
    return os.path.join(args.output, "tokenizer.json")


def tokenizer_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_tokenizer(args, path: str, train_docs: list[str], rank: int, world: int, resuming: bool, prog: str):
    """(tokenizer, digest, trained): the vocabulary at ``path``, trained on the training documents and saved when
    absent (``trained``). Under DDP rank 0 alone decides and trains, and every rank waits for its outcome (the
    broadcast of rank_zero_check): training is not deterministic, so the ranks must read one file, and a save that
    fails on rank 0 ends every rank with its message (none is left waiting in a collective)."""
    from tokenizers import Tokenizer

    from . import text_data
    from .rank_zero import rank_zero_check

    trained = rank == 0 and not os.path.isfile(path)

    def train_and_save() -> None:
        if not trained:
            return
        try:
            tokenizer = text_data.train_tokenizer(train_docs, args.vocab_size or DEFAULT_VOCAB_SIZE)
        except ValueError as exc:  # (an empty corpus, a size below the minimum: refused before, by the command)
            raise UsageError(str(exc)) from exc
        # a temporary name of this process's own (two runs saving into one path wrote one .partial file together)
        partial = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.partial"
        try:  # (its directory was checked before: a disk that fills, a permission changed since)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tokenizer.save(partial)
            written = _identity(partial)  # (a rename keeps it: the file this process wrote)
            os.replace(partial, path)  # whole files only: an interrupted save leaves no half-written one
            _WRITTEN[os.path.abspath(path)] = written
        except BaseException as exc:  # OSError, tokenizers' own Exception type for a failed save, or a Ctrl-C
            with contextlib.suppress(OSError):  # a part written (removed_if_refused then removes the directories)
                os.remove(partial)
            if not isinstance(exc, Exception):
                raise
            raise UsageError(
                f"--tokenizer {path!r}: the vocabulary trained for this run cannot be saved: {exc}"
            ) from exc

    rank_zero_check(train_and_save, rank, world)  # every rank: under DDP the others wait here for the file
    if trained and args.tokenizer:  # (a mistyped path to share a vocabulary trains another: say so)
        print(f"{prog}: note: --tokenizer {path!r} did not exist: a new vocabulary was trained on this run's "
              "documents and written there (runs compared share one existing file)", file=sys.stderr)  # fmt: skip
    if rank == 0 and not trained and not args.tokenizer and not resuming:
        which = "by this run" if args.vocab_size is None else "for this run's --vocab-size"  # (one given or not)
        print(f"{prog}: note: using the vocabulary {path!r} that an earlier run wrote there (not trained {which}: "
              "delete it, or pass --tokenizer, to train another)", file=sys.stderr)  # fmt: skip
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises its own Exception type for a bad file
        raise UsageError(f"--tokenizer {path!r} is not a tokenizers JSON file: {exc}") from exc
    missing = [t for t in text_data.SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise UsageError(f"--tokenizer {path!r} lacks BERT's special tokens {missing}")
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
    plain = [t for t in text_data.SPECIAL_TOKENS if t not in special]
    if plain:  # (pack_blocks encodes only special added tokens as text, else a corpus's "[MASK]" would be masks)
        raise UsageError(f"--tokenizer {path!r}: BERT's tokens {plain} are not special added tokens there "
                         "(added_tokens with \"special\": true): the corpus's own text would encode as them; mark them "
                         "special")  # fmt: skip
    size = tokenizer.get_vocab_size()
    top = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if top != size - 1:  # (else an id past the embedding's rows, an IndexError at the first step)
        raise UsageError(f"--tokenizer {path!r}: its ids run to {top} but it has {size} tokens (the model embeds ids "
                         f"0 to {size - 1}): number the vocabulary without gaps")  # fmt: skip
    asked = args.vocab_size or DEFAULT_VOCAB_SIZE
    if trained and size < asked:  # (rank 0's: only it trains; a note, not silently smaller)
        default = " (the default)" if args.vocab_size is None else ""
        print(f"{prog}: note: --vocab-size {asked}{default}: the vocabulary trained has {size} tokens, all that the "
              "training documents give (WordPiece keeps the pieces seen at least twice)", file=sys.stderr)  # fmt: skip
    if rank == 0 and not trained and args.vocab_size not in (None, size):  # (a note: not ignored silently)
        print(f"{prog}: note: --vocab-size {args.vocab_size} is not used: the vocabulary read from {path!r} has "
              f"{size} tokens", file=sys.stderr)  # fmt: skip
    return tokenizer, tokenizer_digest(path), trained


def _identity(path: str) -> tuple[int, int, int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


_WRITTEN: dict[str, tuple[int, int, int, int]] = {}  # {absolute path: the vocabulary file this process saved there}


def _written_here(path: str) -> bool:
    """The file at ``path`` is the vocabulary this process saved there (load_tokenizer), not another run's since."""
    try:
        return _WRITTEN.get(os.path.abspath(path)) == _identity(path)
    except OSError:
        return False


@contextlib.contextmanager
def removed_if_refused(path: str, rank: int, also: Sequence[str | Callable[[], None]] = ()):
    """Around a run's set-up: where it ends in a ``UsageError`` and the file at ``path`` is the vocabulary this
    process trained and saved there inside it (load_tokenizer: its path and inode, mtime, size; not a file another
    run, a concurrent --prepare-only, wrote there meanwhile), it is deleted, with the files ``also`` (the
    token blocks this run cached for it, which no other vocabulary's run would reuse: mlm_blocks.py, and the folders
    made for them; a callable removes its own: the cache files, each where still its own, and the lock, under the
    lock: mlm_blocks.remove_built, remove_lock; read where the exception is handled, so a list the set-up fills);
    where rank 0 had no file at ``path`` before, so are the directories made for it (innermost first, while
    empty)."""
    _WRITTEN.pop(os.path.abspath(path), None)  # (an earlier set-up's, in this process: not this one's)
    fresh = rank == 0 and not os.path.isfile(path)
    made, parent = [], os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    try:
        yield
    except UsageError:
        if fresh and _written_here(path):
            for file in (path, *also):
                if callable(file):  # a removal of its own (mlm_blocks.remove_lock: under the lock)
                    file()
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(file) if os.path.isdir(file) else os.remove(file)  # a folder: once emptied (in order)
        if fresh:  # (a save that failed left none: its directories go too, where empty)
            with contextlib.suppress(OSError):
                for directory in made:  # one that is not empty stops it
                    os.rmdir(directory)
        raise
    finally:
        _WRITTEN.pop(os.path.abspath(path), None)
