"""``masksub-train-mlm --prepare-only``: the vocabulary and the token-block cache made ahead of a run, in one CPU
process, with no model, no GPU and no training.

Under torchrun rank 0 reads the corpus, trains the vocabulary where absent and packs the blocks where the cache is
absent or stale, while every other rank (and every GPU) waits at a collective, up to the process group's timeout
(run_setup.DIST_TIMEOUT, 60 minutes). ``--prepare-only`` does that work beforehand, through the run's own code: the
first half of ``mlm_cli._corpus`` (mlm_blocks.read_documents, mlm_tokenizer.load_tokenizer, then
mlm_blocks.cached_blocks / ensure_cache: no second copy of the packing; not its held-out batch), as rank 0 of a
one-process run on the CPU would, then prints what it made and where, and returns. A
later run of the same corpus, vocabulary, --seq-len and cache folder reads the cache ("read from the cache") and
trains bit for bit as one that packed it itself: the same files, made by the same function.

- Used: --data-dir, --vocab-size, --tokenizer, --seq-len, --eval-blocks (the corpus digest blocks.json stores for
  it: with the cache it builds, or added to a cache it finds valid where missing: mlm_blocks.record_digest,
  under the lock, blocks.json alone rewritten, its key and the blocks as they are; a folder that cannot be written gets
  a note), --block-cache, --output (the cache's folder without --block-cache, and the default tokenizer.json's).
  --deterministic is the run's (torch's algorithms): a prepare given it notes it as not used.
- Not used (no model is made): the model, MaskSub, optimisation and run options (--device included: CUDA is never
  touched); a note lists those given other values than their defaults. One check of them is made, once the blocks
  are packed: where the run's --mask-ratio check would refuse the options given (mlm_args.check_keep, against the
  blocks' special tokens), a note says so (the prepare itself succeeds).
- Refused (a UsageError, exit status 2): --resume (the checkpoint decides the vocabulary, and its checks would need
  a run; prepare for a resume with its run's --tokenizer, --seq-len and folder instead), --reuse-block-cache (the
  run's: it reads no text, which a prepare packs), and a start under torchrun
  (WORLD_SIZE > 1): every process would read the corpus and, without a vocabulary file, train one of its own (not
  deterministic): it is one process's job, started without torchrun, before it.
- An --output holding a run's last.pth is not refused (a prepare writes no checkpoint and no log): it may re-pack that
  run's cache before its resume. Its --output, or --block-cache, must not be a file.
- A vocabulary this prepare trained is deleted where it is then refused, with the cache files it built
  (mlm_tokenizer.removed_if_refused), as a run's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .run_setup import UsageError

HELP = ("only make the vocabulary (where it is trained) and the token-block cache, on one CPU process: no model, no "
        "GPU, no training, no log; a later run with the same corpus, vocabulary, --seq-len and folder reads them "
        "(docs/masked_lm.md)")  # fmt: skip
# the options a prepare uses; any other takes its default (not checked, not used: no model is made)
USED = ("data_dir", "vocab_size", "tokenizer", "seq_len", "eval_blocks", "block_cache", "output", "prepare_only",
        "resume")  # fmt: skip

__all__ = ["HELP", "USED", "check_prepare", "prepare"]


def check_prepare(args: argparse.Namespace) -> None:
    """Refuse what a prepare cannot do (module docstring): --resume, --reuse-block-cache, a start under torchrun."""
    if args.resume is not None:
        raise UsageError(
            "--prepare-only does not take --resume (the checkpoint's own vocabulary and checks belong to the run): to "
            "pack ahead of a resume, pass that run's --data-dir, --tokenizer, --seq-len and --block-cache (or --output)"
        )
    if getattr(args, "reuse_block_cache", False):
        raise UsageError(
            "--prepare-only builds the token-block cache from the corpus's text, which --reuse-block-cache does not "
            "read: not both (a prepare finds a valid cache without rebuilding it; --reuse-block-cache is the run's)"
        )
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "1"):
        raise UsageError(
            f"--prepare-only runs in one process, not under torchrun (WORLD_SIZE={world}): every process would read "
            "the corpus and train a vocabulary of its own; run it alone first, then torchrun the training"
        )


def prepare(args: argparse.Namespace) -> None:
    """``masksub-train-mlm --prepare-only``: check the data options as a run does, train or read the vocabulary and
    build the block cache (or find it valid) as ``mlm_cli._corpus`` does on the CPU (its first half: no held-out
    batch), then print what was made and where, with a note where the mask options given would refuse the run.
    Creates no model, touches no GPU and writes no last.pth or log."""
    from . import mlm_args, mlm_blocks, mlm_cli
    from .extras import require
    from .mlm_tokenizer import load_tokenizer, removed_if_refused, tokenizer_path
    from .run_setup import check_writable_directory

    check_prepare(args)
    defaults = vars(mlm_cli.build_parser().parse_args([]))
    unused = [name for name in defaults if name not in USED and getattr(args, name) != defaults[name]]
    # the run's checks of the options used (the others at their defaults pass them; as --baseline's: the mask options
    # given are checked against the blocks once packed, a note where a run would refuse them)
    given = argparse.Namespace(**vars(args))
    args = argparse.Namespace(**{**defaults, **{name: getattr(args, name) for name in USED}, "baseline": True})
    mlm_args.check_args(args)
    require("the masked-LM command's --prepare-only", ("tokenizers",), "text")
    if unused:
        print(f"{mlm_cli.PROG}: note: --prepare-only makes no model and trains nothing: not used: "
              f"{', '.join('--' + name.replace('_', '-') for name in unused)}", file=sys.stderr)  # fmt: skip
    for option, path in (("--output", args.output), ("--block-cache", args.block_cache)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{option} {path!r} is a file, not a directory")
    folder = args.block_cache or args.output
    what = f"--block-cache {folder!r}" if args.block_cache else f"--output {folder!r}"
    if not os.path.isfile(os.path.join(folder, mlm_blocks.META)):  # a cache to build (one found valid is only read)
        check_writable_directory(folder, what)
    tokenizer_at = tokenizer_path(args, None)
    if not os.path.isfile(tokenizer_at):  # where the vocabulary will be saved, before it is trained (as a run)
        check_writable_directory(os.path.dirname(tokenizer_at), f"--tokenizer {tokenizer_at!r}")
    built: list[str] = []
    with removed_if_refused(tokenizer_at, 0, also=built):  # the first half of mlm_cli._corpus (no held-out batch)
        docs = mlm_blocks.read_documents(args.data_dir)
        tokenizer, digest, trained = load_tokenizer(args, tokenizer_at, docs["train"], 0, 1, False, mlm_cli.PROG)
        blocks, meta, fresh, _ = mlm_blocks.cached_blocks(args, 0, 1, docs, tokenizer, digest, None, built,
                                                          mlm_cli.PROG)  # fmt: skip
    recorded = None if fresh else _record_digest(folder, meta, blocks, args.eval_blocks)
    try:  # the run's checks of its mask options (ranges, then against these blocks), which the prepare skipped
        mlm_args.check_mask_ranges(given)  # every run's (a --mlm-probability of 0 or 1.5 made check_keep's log fail)
        if not given.baseline:  # the sub-branch's (check_args)
            mlm_args.check_keep(given, meta["special_counts"])
    except UsageError as exc:
        print(f"{mlm_cli.PROG}: note: a run with these options would be refused: {exc}", file=sys.stderr)
    vocab = "trained now" if trained else "read"
    cache = "built now" if fresh else "already valid, not rebuilt"
    if recorded is not None:
        cache += f", the corpus digest of {recorded} held-out blocks (--eval-blocks {args.eval_blocks}) added"
    data = f"--data-dir {shlex.quote(args.data_dir)} " if args.data_dir else ""
    size = tokenizer.get_vocab_size()
    print(
        f"{mlm_cli.PROG}: prepared (no model, no training): the vocabulary {tokenizer_at} ({size} "
        f"tokens, {vocab}) and the token blocks in {folder} ({cache}; {meta['train'][0]} training blocks of "
        f"{args.seq_len} tokens); a run given {data}--tokenizer {shlex.quote(tokenizer_at)} --seq-len {args.seq_len} "
        f"--block-cache {shlex.quote(folder)} reads them (with --reuse-block-cache, without reading the text)",
        flush=True,
    )


def _record_digest(folder: str, meta: dict, blocks: dict, eval_blocks: int) -> int | None:
    """mlm_blocks.record_digest on a cache found valid; a folder that cannot be written (a cache found valid is only
    read: it may be read-only) gets a note, not an error: the run computes the digest at its start."""
    from . import mlm_blocks, mlm_cli

    try:
        return mlm_blocks.record_digest(folder, meta, blocks, eval_blocks)
    except OSError as exc:
        where = os.path.join(folder, mlm_blocks.META)
        print(f"{mlm_cli.PROG}: note: the corpus digest of --eval-blocks {eval_blocks} could not be added to "
              f"{where} ({exc}): a run computes it at its start", file=sys.stderr)  # fmt: skip
        return None
