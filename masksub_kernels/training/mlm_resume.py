"""``masksub-train-mlm --resume``: read a checkpoint, refuse one of another run, load it, and record the resume.

A resume continues a run exactly (data order and every seed come from --seed, the step and the rank), so the
options that fix the data, the seeds, the model or the optimizer must match the checkpoint's (RESUME_MUST_MATCH),
as must the number of processes, the vocabulary (its SHA-256) and the corpus itself (a SHA-256 of its training and
held-out blocks evaluated: the same --data-dir may hold other files by now, and the default corpus is the running
Python's standard library; a checkpoint from before 2026-12-07 evaluated the first --eval-blocks held-out blocks,
not blocks spread over them: refused, with a note, unless they were all of them). --steps (with a note),
--eval-every, --stop-at, --output, --device, --amp and --chunk-rows may change; each resume and what it changed is
recorded (log.json's meta.resumes and every later checkpoint's ``resumes``), as masksub-train does. Since
2026-12-07 a checkpoint records the block cache's key too (the documents' and the vocabulary's SHA-256): a resume of
other documents is refused before the corpus is packed (check_resume_early), not after (its cache rebuilt).
"""

from __future__ import annotations

import os
import sys

from .mlm_blocks import corpus_digest
from .run_setup import UsageError

__all__ = ["BASELINE_UNUSED", "RESUME_MAY_CHANGE", "RESUME_MUST_MATCH", "check_resume", "check_resume_early",
           "check_resume_options", "corpus_digest", "corpus_record", "load_state", "read_checkpoint",
           "resumes"]  # fmt: skip

RESUME_MUST_MATCH = ("seed", "batch_size", "seq_len", "baseline", "mask_ratio", "sub_fill",
                     "mlm_probability", "schedule", "lr", "warmup_steps", "weight_decay", "layers", "width", "heads",
                     "intermediate", "dropout", "data_dir", "eval_blocks", "clip_grad")  # fmt: skip
# may change on a resume, recorded: the schedule's length, the rounds, the device and precision, the chunking, the
# output, GPU determinism, the accumulation as long as --accum-steps x processes stays (a step's parts: the same
# data, seeds and mean; 2 processes train as 1 with --accum-steps 2, tested) (--stop-at may change too, not
# recorded: a time-limited job's own)
RESUME_MAY_CHANGE = ("steps", "eval_every", "output", "device", "amp", "chunk_rows", "vocab_size", "deterministic",
                     "accum_steps", "block_cache", "reuse_block_cache")  # fmt: skip
BASELINE_UNUSED = ("mask_ratio", "sub_fill", "schedule")  # the sub-branch's: --baseline trains none (not compared)
NEWER_OPTIONS = {"reuse_block_cache": False}  # options that a checkpoint of before them lacks: their value then
CACHE_KEY_FIELDS = ("key", "version", "documents_sha256", "tokenizer_sha256", "seq_len", "tokenizers")


def _resume_value(name: str, value):
    """An option's value as a resume compares it: --data-dir and --output as the directories they name (corpus/ =
    corpus; a plain resume's --output, the checkpoint's directory, = the run's). The command records both absolute
    (since 2026-12-06); an older checkpoint's relative paths are read from the resuming process's working directory:
    resume those from the directory their run started in."""
    return os.path.realpath(value) if name in ("data_dir", "output", "block_cache") and value is not None else value


def _effective(name: str, options: dict, other: dict):
    """An option's value as the run uses it: --intermediate left out is 4 x --width (the same model as given), where
    the ``other`` side gives it (both left out: compared as given, a --width that differs is named alone)."""
    value = options.get(name)
    width = options.get("width")
    if name == "intermediate" and value is None and other.get(name) is not None and isinstance(width, int):
        return 4 * width
    return _resume_value(name, value)


def _shown(name: str, options: dict, other: dict) -> str:
    value = options.get(name)
    if name == "intermediate" and value is None and _effective(name, options, other) is not None:
        return f"None (4 x --width = {_effective(name, options, other)})"
    return repr(value)


def _changes(args, state: dict, world: int, tokenizer_sha256: str) -> list[str]:
    """The options, the split of a step and the vocabulary that differ from the checkpoint's, as check_resume says
    (each option's value as the run uses it: _effective)."""
    saved, given = state.get("args", {}), vars(args)
    changed = [f"--{k.replace('_', '-')} {_shown(k, saved, given)} -> {_shown(k, given, saved)}"
               for k in RESUME_MUST_MATCH if _effective(k, saved, given) != _effective(k, given, saved)
               and not (k in BASELINE_UNUSED and saved.get("baseline") and args.baseline)]  # fmt: skip
    saved_accum, saved_world = saved.get("accum_steps", 1), state.get("world_size", 1)
    if saved_accum * saved_world != args.accum_steps * world:  # a step's parts (the split may change)
        changed.append(
            f"a step's parts, --accum-steps x processes, {saved_accum} x {saved_world} -> {args.accum_steps} x {world}"
        )
    if state.get("tokenizer_sha256") not in (None, tokenizer_sha256):
        changed.append("the vocabulary (tokenizer.json differs)")
    return changed


def _where(args, corpus: dict) -> str:
    where = f"--data-dir {args.data_dir!r}" if args.data_dir else "the standard library's docstrings"
    python = sys.version.split()[0]
    if not args.data_dir and corpus.get("python") != python:
        where += f" of Python {corpus.get('python')} -> {python}"
    return where


def check_resume_early(args, state: dict, world: int, tokenizer_sha256: str, key: dict, documents: int) -> None:
    """Rank 0, before the blocks are packed (where their cache is of another key: minutes at scale, and a good cache
    overwritten): refuse what check_resume would refuse for the options or the vocabulary, and other documents where
    the checkpoint recorded them (``key``: mlm_blocks.cache_key's, or with --reuse-block-cache reused_key's: the
    cache's recorded documents SHA-256, the text unread; ``documents``: their count, the cache's then; a checkpoint
    from before 2026-12-07 has no key: check_resume compares the blocks after packing)."""
    changed = _changes(args, state, world, tokenizer_sha256)
    corpus = state.get("corpus") or {}
    recorded = corpus.get("cache_key") or {}
    if "documents_sha256" in recorded and recorded["documents_sha256"] != key["documents_sha256"] and not changed:
        changed.append(f"the corpus ({_where(args, corpus)}: {corpus.get('documents')} -> {documents} documents; "
                       "other text)")  # fmt: skip
    if changed:
        raise _another_run(args, changed)


def check_resume_options(args, state: dict, world: int, tokenizer_at: str) -> None:
    """Rank 0, right after the checkpoint is read (before the masking cap of mlm_args.check_keep, the corpus and the
    block cache): refuse what check_resume would refuse for the options, the split of a step and the vocabulary
    (``tokenizer_at``: its file, compared where it exists), and a run with nothing left to train, so the refusal
    names the resume's own difference (--seq-len 32 -> 16, not the cap at 16) and costs no read of the corpus."""
    from .mlm_tokenizer import tokenizer_digest

    digest = tokenizer_digest(tokenizer_at) if os.path.isfile(tokenizer_at) else state.get("tokenizer_sha256")
    changed = _changes(args, state, world, digest)
    if changed:
        raise _another_run(args, changed)
    _check_steps_left(args, state)


def _check_steps_left(args, state: dict) -> None:
    if state["step"] >= (args.stop_at or args.steps):
        raise UsageError(f"--resume {args.resume!r} is at step {state['step']}: nothing left to train")


def _another_run(args, changed: list[str]) -> UsageError:
    """The refusal of a resume of another run: where options differ (`--resume PATH` alone
    compares the defaults with the checkpoint's values: a resume repeats the run's options), it says so, and lists the
    other differences (a step's parts, the vocabulary) after the options, in their own words, not under the options'
    heading."""
    options = [change for change in changed if change.startswith("--")]
    others = [change for change in changed if not change.startswith("--")]
    if not options:
        return UsageError(f"--resume {args.resume!r} continues another run: {'; '.join(others)}")
    besides = f". Other differences: {'; '.join(others)}" if others else ""
    return UsageError(
        f"--resume {args.resume!r} continues another run: its options differ from this command's (the checkpoint's "
        f"-> this command's): {'; '.join(options)}{besides}. A resume repeats the run's options (its command line: "
        "log.json's meta.command) with --resume added"
    )


def check_resume(args, state: dict, world: int, sizes: dict) -> None:
    """Refuse a resume that would silently continue another run (module docstring): a UsageError naming each
    difference. ``sizes``: this run's corpus and vocabulary (the command's _corpus)."""
    changed = _changes(args, state, world, sizes["tokenizer_sha256"])
    corpus = state.get("corpus")  # None: a checkpoint from before 2026-12-05
    if corpus is not None and corpus["sha256"] != sizes["corpus_sha256"] and not changed:
        counts = ", ".join(
            f"{corpus.get(key)} -> {sizes[key]} {what}"
            for key, what in (("documents", "documents"), ("train_blocks", "training blocks"))
        )
        spread = "" if corpus.get("eval_spread") else (
            " or, from a checkpoint before 2026-12-07, the held-out blocks evaluated: the first --eval-blocks then, "
            "spread over them now (mlm_blocks.eval_rows)"
        )  # fmt: skip
        changed.append(f"the corpus ({_where(args, corpus)}: {counts}; other text{spread})")
    if changed:
        raise _another_run(args, changed)
    _check_steps_left(args, state)


def corpus_record(sizes: dict) -> dict:
    """What a checkpoint keeps of the corpus for check_resume."""
    keys = ("documents", "held_out_documents", "train_blocks", "val_blocks")
    record = {"sha256": sizes["corpus_sha256"], "python": sys.version.split()[0], "eval_spread": True,
              **{k: sizes[k] for k in keys}}  # fmt: skip
    if "cache_key" in sizes:  # the block cache's key (check_resume_early)
        record["cache_key"] = {k: sizes["cache_key"][k] for k in CACHE_KEY_FIELDS}
    return record


def read_checkpoint(args, prog: str) -> dict:
    """The --resume checkpoint, read before the corpus (it says which vocabulary the run used)."""
    from .checkpoint import read_run_checkpoint

    return read_run_checkpoint(args.resume, ("model", "optimizer", "scheduler", "step", "rows", "args"), prog)


def load_state(args, state: dict, ms, optimizer, scheduler, scaler, rank: int, prog: str) -> None:
    """The checkpoint's model, optimizer, scheduler (the learning rate of this --steps' schedule) and scaler."""
    old_steps = state["args"].get("steps", args.steps)
    if old_steps != args.steps and rank == 0:  # the schedule's length: warm-up then linear decay to --steps
        print(
            f"{prog}: note: resuming with --steps {old_steps} -> {args.steps}: the learning rate follows the new "
            f"schedule from step {state['step'] + 1} on (the steps so far followed the old one)",
            file=sys.stderr,
        )
    try:
        ms.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UsageError(f"--resume {args.resume!r} holds another model: {str(exc).splitlines()[0]}") from exc
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)  # this --steps' schedule (the state holds the old lr)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def resumes(args, state: dict | None, provenance: dict | None = None) -> list[dict]:
    """The run's resumes, this one last: {'step', 'from', 'changed'} each ('changed': the options of
    RESUME_MAY_CHANGE that differ from the checkpoint's, as '--name old -> new'), with its start's commit, dirty
    flag, start time, CPU, threads and GPU from ``provenance`` (runlog.resume_provenance; entries of before 2026-12-07
    lack them); []
    for a fresh run."""
    from .runlog import resume_provenance

    if state is None:
        return []
    saved = state.get("args", {})
    saved = {**NEWER_OPTIONS, **saved}
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {getattr(args, k)!r}" for k in RESUME_MAY_CHANGE
               if k in saved and _resume_value(k, saved[k]) != _resume_value(k, getattr(args, k))]  # fmt: skip
    return [
        *state.get("resumes", []),
        {"step": state["step"], "from": os.path.abspath(args.resume), "changed": changed,
         **(resume_provenance(provenance) if provenance is not None else {})},
    ]  # fmt: skip
