"""``masksub-train-mlm``'s checks of its options (mlm_cli.py's parser), before anything is read: the ranges and
combinations a run refuses with a usage error, and whether the sub-branch can keep every predicted and special token
of a block at --mask-ratio (``check_keep``, run again against the packed blocks' own counts of special tokens)."""

from __future__ import annotations

import math
import os

import torch

from . import text_data
from .mlm_tokenizer import check_tokenizer_arg
from .run_setup import UsageError, default_output

__all__ = ["CAPPED_SHARE_LIMIT", "check_args", "check_keep"]


def check_args(args) -> None:
    args.output = default_output(args, "output/mlm")
    if args.seq_len < 3:  # (0 too: one message)
        raise UsageError(f"--seq-len must be >= 3 ([CLS], a token, [SEP]), got {args.seq_len}")
    positive = ("layers", "width", "heads", "steps", "batch_size", "accum_steps", "eval_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.vocab_size is not None:
        try:
            text_data.check_vocab_size(args.vocab_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if not 0 <= args.seed < 2**63:  # (every seed is mixed mod 2^63: _seed; -1 trained as 2^63 - 1 and 2^64 - 1)
        raise UsageError(
            f"--seed must be an integer in [0, 2^63) (seeds that differ by 2^63 train alike), got {args.seed}"
        )
    if args.width % args.heads:
        raise UsageError(f"--heads ({args.heads}) must divide --width ({args.width})")
    if args.chunk_rows is not None and not 1 <= args.chunk_rows < 2**31:
        raise UsageError(f"--chunk-rows must be in [1, 2^31) (or left out: the backend's rule), got {args.chunk_rows}")
    if args.intermediate is not None and args.intermediate < 1:
        raise UsageError(f"--intermediate must be >= 1 (or left out: 4 x width), got {args.intermediate}")
    if not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    check_mask_ranges(args)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    for name in ("warmup_steps", "eval_blocks"):  # integers (argparse's type=int)
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be an integer >= 0, got {getattr(args, name)}")
    for name in ("weight_decay", "clip_grad"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):  # NaN passes `value < 0`: a run of NaN losses
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if not args.baseline and args.resume is None:  # (a resume's: after its options are compared with the checkpoint's)
        check_keep(args)  # before the corpus is read: s = 2 special tokens per block, the fewest
    if args.data_dir is not None and not os.path.isdir(args.data_dir) and not args.reuse_block_cache:  # (unread)
        raise UsageError(f"--data-dir {args.data_dir!r} is not a directory")
    if args.stop_at is not None and not 1 <= args.stop_at <= args.steps:
        raise UsageError(f"--stop-at must be in [1, --steps={args.steps}], got {args.stop_at}")
    if args.stop_at is not None and args.stop_at % args.eval_every and args.stop_at != args.steps:
        raise UsageError(
            f"--stop-at {args.stop_at} must end a round (a multiple of --eval-every {args.eval_every}): a resumed run "
            "then logs the same rounds as an uninterrupted one"
        )
    if args.resume is not None and os.path.isdir(args.resume):
        raise UsageError(f"--resume {args.resume!r} is a directory, not a file (e.g. its last.pth)")
    if args.resume is not None and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume!r}: no such file")
    check_tokenizer_arg(args.tokenizer)
    # recorded in the checkpoint as absolute paths: a resume may run from another working directory (and compares
    # --data-dir and --output as the directories they name: mlm_resume._resume_value)
    args.output = os.path.abspath(args.output)
    if args.data_dir is not None:
        args.data_dir = os.path.abspath(args.data_dir)
    if args.tokenizer:
        args.tokenizer = os.path.abspath(args.tokenizer)
    if args.block_cache:
        args.block_cache = os.path.abspath(args.block_cache)


# The largest share of the training blocks whose predicted tokens the command may cap (check_keep): BERT's recipe
# is then changed in at most 0.1% of the blocks, slightly.
CAPPED_SHARE_LIMIT = 1e-3


def check_mask_ranges(args) -> None:
    """--mlm-probability in (0, 1] and --mask-ratio in [0, 1) (check_args; --prepare-only's note on the values given,
    which its own checks leave at their defaults)."""
    for name, interval, inside in (
        ("mlm_probability", "(0, 1]", 0.0 < args.mlm_probability <= 1.0),
        ("mask_ratio", "[0, 1)", 0.0 <= args.mask_ratio < 1.0),
    ):
        if not inside:
            raise UsageError(f"--{name.replace('_', '-')} must be in {interval}, got {getattr(args, name)}")


def check_keep(args, specials: torch.Tensor | dict | None = None) -> None:
    """The sub-branch keeps K = floor(L (1 - r)) tokens of a block, all its predicted and special tokens among them
    (a block with more is refused by the op: a ValueError on a CPU, a device-side assert on a GPU). The training
    batches cap them (``mlm_corrupt``'s ``max_kept``: a block's first K - s predicted tokens), so no batch stops the
    run; refuse settings where the cap would change BERT's recipe in more than CAPPED_SHARE_LIMIT of the blocks, or
    where a block's special tokens alone exceed K. A block of s special tokens ([CLS], its closing [SEP] and a [SEP]
    after each document that ends inside it: the corpus is packed) draws s + X, X ~ Binomial(L - s, p), so
    P(s + X > K) exactly, averaged over the training blocks (``specials``: int [blocks], each block's s, or {s:
    blocks}), or before the corpus is read for s = 2, the fewest (what the corpus's blocks would refuse anyway)."""
    import masksub_kernels as mk

    try:
        keep = mk.num_kept_tokens(args.seq_len, args.mask_ratio)
    except ValueError as exc:
        raise UsageError(f"--mask-ratio {args.mask_ratio} with --seq-len {args.seq_len}: {exc}") from exc
    shares = {2: 1.0} if specials is None else _shares(specials)
    if max(shares) > keep:  # the cap cannot help: that block alone would stop the run
        raise UsageError(
            f"--mask-ratio {args.mask_ratio} keeps {keep} of {args.seq_len} tokens, but a training block holds "
            f"{max(shares)} special tokens ([CLS] and a [SEP] ending each of its documents), all of which the "
            "sub-branch must keep: lower --mask-ratio or use a longer --seq-len"
        )
    p = args.mlm_probability
    capped = sum(share * _over_keep(args.seq_len, s, keep, p) for s, share in shares.items())
    if capped > CAPPED_SHARE_LIMIT:
        specials_note = "" if specials is None else f", a block holding up to {max(shares)} special tokens"
        raise UsageError(
            f"--mask-ratio {args.mask_ratio} keeps {keep} of {args.seq_len} tokens, but a share of {capped:.1e} of the "
            f"blocks draw more predicted + special tokens than that at --mlm-probability {p}{specials_note} (the "
            f"sub-branch must keep them all: the command would cap their predicted tokens, which changes BERT's "
            f"recipe; refused above {CAPPED_SHARE_LIMIT:g} of the blocks): lower --mask-ratio or --mlm-probability, "
            "or use a longer --seq-len"
        )


def _shares(specials: torch.Tensor | dict) -> dict[int, float]:
    """{s: the share of the blocks holding s special tokens} from each block's count, or from {s: blocks}."""
    if not isinstance(specials, dict):
        values, counts = torch.unique(specials.cpu(), return_counts=True)
        specials = {int(v): int(c) for v, c in zip(values, counts)}
    total = sum(specials.values())
    return {int(s): n / total for s, n in specials.items()}


def _over_keep(length: int, specials: int, keep: int, p: float) -> float:
    """P(specials + X > keep) for X ~ Binomial(length - specials, p): a block of ``length`` tokens, ``specials`` of
    them special, holds more always-kept tokens than ``keep``."""
    n = length - specials
    return sum(_binomial_pmf(n, x, p) for x in range(max(keep - specials + 1, 0), n + 1))


def _binomial_pmf(n: int, x: int, p: float) -> float:
    """P(X = x) for X ~ Binomial(n, p), 0 < p <= 1, in log space: comb(n, x) alone overflows a float past n ~ 1030
    (--seq-len 2048 raised OverflowError)."""
    if p == 1.0:
        return float(x == n)
    log_comb = math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
    return math.exp(log_comb + x * math.log(p) + (n - x) * math.log1p(-p))
