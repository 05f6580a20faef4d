"""``masksub-train-mlm``: train a BERT masked-language model with MaskSub (or plainly, ``--baseline``).

    masksub-train-mlm --output runs/mlm                         # a 4-layer, width-128 BERT on the stdlib docstrings
    masksub-train-mlm --data-dir corpus/ --seq-len 128 --layers 12 --width 768 --heads 12 --amp bf16
    masksub-train-mlm --prepare-only --data-dir corpus/ --seq-len 128 --tokenizer tok.json --block-cache blocks/
    torchrun --nproc_per_node=8 -m masksub_kernels.training.mlm_cli --data-dir corpus/ --device cuda ...

The corpus is the docstrings of this Python's standard library (offline everywhere, the same for the same Python
version), or the ``*.txt`` files under ``--data-dir``; about 10% of its documents are held out (text_data.py). A
WordPiece vocabulary is trained on the training documents (``tokenizer.json`` in ``--output``, reused by a resumed
run; ``--tokenizer`` shares one between runs), the text packed into fixed-length blocks. Each micro-batch is
corrupted by BERT's recipe from a Philox seed (mlm.py's ``mlm_corrupt``), then trained by ``MaskSub.train_step``
(sequential or joint schedule, accumulation, AMP, clipping, DDP) or, with ``--baseline``, by the same machinery on
the main branch alone. AdamW (no weight decay on biases and LayerNorm), linear warm-up then linear decay to 0, as
BERT.

Every ``--eval-every`` optimizer steps (a round) the held-out blocks are evaluated (the same corruption for every
run: a fixed seed), ``log.csv`` / ``log.json`` and ``last.pth`` are written; ``--resume PATH`` continues a run
exactly: data order and every seed come from (--seed, step, rank).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time

import torch
from torch import nn

from . import mlm_args, mlm_blocks, mlm_prepare
from .determinism import DETERMINISTIC_HELP, interrupt_traceback, run_command
from .help_format import FullNamesParser, HelpWithDefaults
from .mlm_resume import (
    BASELINE_UNUSED,
    CACHE_KEY_FIELDS,
    check_resume,
    check_resume_options,
    corpus_record,
    load_state,
    read_checkpoint,
    resumes,
)
from .mlm_tokenizer import (
    DEFAULT_VOCAB_SIZE,
    Vocab,
    load_tokenizer,
    removed_if_refused,
    tokenizer_path,
)
from .rank_zero import ReportedOnRankZero, options_parsed, rank_zero_check
from .run_setup import (
    UsageError,
    _distributed,
    check_backend,
    check_output,
    check_writable_directory,
)

PROG = "masksub-train-mlm"
EVAL_SEED = 20230619  # the held-out corruption: one fixed draw shared by every run and round
LOG_COLUMNS = ("round", "step", "lr", "loss", "loss_main", "loss_sub", "val_loss", "val_acc", "tokens_per_s",
               "round_time_s", "wall_time_s")  # fmt: skip

__all__ = ["PROG", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    about = __doc__.split("\n\n")[0].replace("``", "")
    p = FullNamesParser(prog=PROG, description=about, formatter_class=HelpWithDefaults)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="directory of *.txt files (default: the stdlib docstrings)")
    g.add_argument(
        "--vocab-size", type=int, default=None,
        help=f"WordPiece vocabulary trained on the corpus (default {DEFAULT_VOCAB_SIZE}; not used where the vocabulary "
        "is read from a file: a note where its size differs)",
    )  # fmt: skip
    g.add_argument(
        "--tokenizer", default=None, metavar="PATH",
        help="tokenizer.json to use, or to write when absent (default: OUTPUT/tokenizer.json); runs to be compared "
        "share one: training a vocabulary is not deterministic",
    )  # fmt: skip
    g.add_argument("--seq-len", type=int, default=64, help="tokens per block, [CLS] and [SEP] included")
    g.add_argument("--eval-blocks", type=int, default=mlm_blocks.DEFAULT_EVAL_BLOCKS,
                   help="held-out blocks evaluated, spread evenly (0: all)")  # fmt: skip
    g.add_argument(
        "--block-cache", default=None, metavar="DIR",
        help="folder of the packed token blocks (default: --output); runs of the same corpus, vocabulary and --seq-len "
        "may share one (docs/masked_lm.md)",
    )  # fmt: skip
    g.add_argument("--prepare-only", action="store_true", help=mlm_prepare.HELP)
    g.add_argument("--reuse-block-cache", action="store_true", help=mlm_blocks.REUSE_HELP)
    g = p.add_argument_group("model (BertForMaskedLM from a config: nothing is downloaded)")
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--width", type=int, default=128, help="hidden size")
    g.add_argument("--heads", type=int, default=2, help="attention heads (must divide --width)")
    g.add_argument("--intermediate", type=int, default=None, help="feed-forward size (default: 4 x width)")
    g.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout")
    g = p.add_argument_group("MaskSub")
    g.add_argument("--baseline", action="store_true", help="plain MLM training, no sub-branch")
    g.add_argument("--mask-ratio", type=float, default=0.5, help="fraction of the other tokens the sub-branch drops")
    g.add_argument("--sub-fill", choices=("drop", "mask"), default="drop", help="drop tokens, or replace by [MASK]")
    g.add_argument("--mlm-probability", type=float, default=0.15, help="fraction of tokens predicted")
    g.add_argument("--schedule", choices=("sequential", "joint"), default="sequential")
    g.add_argument(
        "--chunk-rows", type=int, default=None, metavar="ROWS",
        help="rows per chunk of the fused-linear loss in training, which holds about 2 x ROWS x vocab fp32 logits "
        "at once (default: the backend's rule: triton ~96 MiB of them, at least 384 rows for calls on 12288 rows or "
        "more; torch 2^20 / vocab rows; docs/fused_linear.md)",
    )  # fmt: skip
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=64, help="blocks per micro-batch and process")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=1e-3)
    warmup = "updates of linear warm-up (the first at lr / N), then linear decay to 0 at --steps"
    g.add_argument("--warmup-steps", type=int, default=100, help=warmup)
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's, on matrices only (no bias / LayerNorm)")
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False, help=DETERMINISTIC_HELP)
    g.add_argument(
        "--output", default=None,
        help="logs, tokenizer and checkpoint (default: output/mlm, or the --resume checkpoint's directory)",
    )  # fmt: skip
    g.add_argument("--eval-every", type=int, default=200, help="optimizer steps per round (evaluation, log, save)")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue from a last.pth")
    g.add_argument(
        "--stop-at", type=int, default=None, metavar="STEP",
        help="stop after this step (saved; --resume continues), as a time-limited job would; the schedule still "
        "spans --steps",
    )  # fmt: skip
    return p


# ----------------------------------------------------------------------------------------------------------------
# Data: corpus -> tokenizer -> blocks; a batch per (step, micro-step, rank), corrupted from its own seed
# ----------------------------------------------------------------------------------------------------------------


def _corpus(args, rank: int, world: int, device, tokenizer_at: str, resuming: bool, state=None, built=None):
    """(vocab, the training blocks (mlm_blocks.TrainBlocks: on the CPU, memory-mapped from the cache in
    --block-cache), the held-out batch on ``device``, sizes). Rank 0 alone reads the corpus (not with
    --reuse-block-cache) and packs it where the cache is absent or stale (mlm_blocks.py). The held-out blocks
    evaluated are spread over the held-out part (mlm_blocks.eval_rows) and corrupted once, from EVAL_SEED and each
    block's index: the same masks for every run and round. ``tokenizer_at``: the vocabulary's file (mlm_tokenizer.py);
    sizes['tokenizer_trained']: this run wrote it. ``state``: the --resume checkpoint; ``built``: a list the cache's
    files are added to where this run built them."""
    from . import text_data

    docs: dict = {}  # rank 0's: {'count', 'train', 'held_out'}
    rank_zero_check(lambda: docs.update(mlm_blocks.corpus_documents(args, tokenizer_at)), rank, world)
    tokenizer, digest, trained = load_tokenizer(args, tokenizer_at, docs.get("train", []), rank, world, resuming, PROG)
    built = [] if built is None else built
    blocks, meta, fresh, where = mlm_blocks.cached_blocks(args, rank, world, docs, tokenizer, digest, state, built,
                                                          PROG)  # fmt: skip
    docs.clear()  # (rank 0's documents: no longer needed)
    train = blocks["train"]  # int32, mapped; int64 a batch at a time on the device (_train_batch), as the held-out
    val = blocks["held_out"][mlm_blocks.eval_rows(blocks["held_out"].shape[0], args.eval_blocks)].long()
    vocab = Vocab(tokenizer.get_vocab_size(), tokenizer.token_to_id("[MASK]"), tokenizer.token_to_id("[PAD]"))
    sizes = {"documents": meta["documents"], "held_out_documents": meta["held_out_documents"],
             "train_blocks": int(train.shape[0]), "val_blocks": int(val.shape[0]), "vocab_size": vocab.size,
             "tokenizer_sha256": digest, "tokenizer": tokenizer_at, "tokenizer_trained": trained,
             "block_cache": {"path": where, "built": fresh},
             "corpus_sha256": mlm_blocks.stored_digest(meta, train, val),
             "cache_key": {k: meta[k] for k in CACHE_KEY_FIELDS}}  # fmt: skip
    special_ids = torch.tensor([tokenizer.token_to_id(t) for t in text_data.NEVER_PREDICTED], device=device)
    # (the ids on the device: no copy per batch; the special tokens' histogram from blocks.json)
    train = mlm_blocks.TrainBlocks(train, special_ids, device, meta["special_counts"])
    val = _corrupt(args, vocab, val.to(device), text_data.special_tokens_mask(val, tokenizer).to(device), EVAL_SEED)
    return vocab, train, val, sizes


def _check_held_out(args, val: dict) -> None:
    """Refuse a held-out corruption that predicts no token (else val_loss 0.0 is logged, a perfect-looking
    loss): one fixed draw, known before a round of training."""
    if not bool((val["labels"] != -100).any()):
        raise UsageError(
            f"the held-out corruption of {val['labels'].shape[0]} block(s) (--eval-blocks) predicts no token at "
            f"--mlm-probability {args.mlm_probability}: its loss and accuracy would be undefined; raise either"
        )


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (a fixed mixing: the same parts give the same seed on every machine)."""
    s = 0
    for part in parts:
        s = (s * 1_000_003 + part + 0x9E3779B9) % (2**63)
    return s


def _corrupt(args, vocab: Vocab, blocks: torch.Tensor, special: torch.Tensor, seed: int, max_kept=None) -> dict:
    """A batch of the blocks, corrupted by BERT's recipe from ``seed``: {input_ids, labels, special_tokens_mask};
    ``max_kept``: the cap of a block's predicted + special tokens (``mlm_corrupt``)."""
    from .mlm import mlm_corrupt

    input_ids, labels = mlm_corrupt(
        blocks, special, vocab_size=vocab.size, mask_token_id=vocab.mask_id, seed=seed,
        probability=args.mlm_probability, max_kept=max_kept,
    )  # fmt: skip
    return {"input_ids": input_ids, "labels": labels, "special_tokens_mask": special}


@functools.lru_cache(maxsize=1)
def _epoch_order(num_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the training blocks for an epoch, drawn from (seed, epoch) on the CPU, once."""
    return torch.randperm(num_blocks, generator=torch.Generator().manual_seed(_seed(seed, epoch)))


def _train_batch(args, vocab, data, step: int, part: int, parts: int) -> dict:
    """Part ``part`` (= micro-step * world + rank) of the ``parts`` (= accum-steps * world) of optimizer step
    ``step``: consecutive slices of an epoch-wise permutation drawn from (seed, epoch), corrupted from (seed, step,
    part). So a step sees the same data however it is split into processes and micro-batches; blocks that do not
    fill a step at the end of an epoch are unused."""
    from .mlm_blocks import to_device

    blocks = data.blocks  # on the CPU (memory-mapped): a batch's rows go to the device, pinned on CUDA
    per_step = args.batch_size * parts
    epoch, index = divmod(step, blocks.shape[0] // per_step)
    rows = _epoch_order(blocks.shape[0], args.seed, epoch)[index * per_step + part * args.batch_size :]
    batch = to_device(blocks[rows[: args.batch_size]], data.device).long()  # int32 copied, int64 for the model
    special = torch.isin(batch, data.special_ids.to(batch.device))  # [PAD], [CLS], [SEP]
    # MaskSub's sub-branch keeps K tokens, every predicted and special one among them: the rare block that draws
    # more is capped (mlm_args.check_keep refuses settings where that is not rare). The baseline trains BERT's
    # recipe as is.
    import masksub_kernels as mk

    keep = None if args.baseline else mk.num_kept_tokens(args.seq_len, args.mask_ratio)
    return _corrupt(args, vocab, batch, special, _seed(args.seed, step, part), max_kept=keep)


# ----------------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule, steps
# ----------------------------------------------------------------------------------------------------------------


def _model(args, vocab: Vocab) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab.size, hidden_size=args.width, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate or 4 * args.width, max_position_embeddings=args.seq_len,
        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout, pad_token_id=vocab.pad_id,
        type_vocab_size=1,
    )  # fmt: skip
    config.mask_token_id = vocab.mask_id
    return BertForMaskedLM(config)


def _optimizer(module: nn.Module, args) -> torch.optim.Optimizer:
    """AdamW with BERT's settings (torch's corrects the moments' bias, BERT's optimization.py does not): weight decay
    on matrices only (not on biases, LayerNorm weights or other 1-D parameters), betas 0.9 / 0.999, eps 1e-6."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (``step`` = updates done)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(total - warmup, 1))


class _MainBranch(nn.Module):
    """The baseline's model: the MaskSub wrapper's main branch alone (head inputs; the loss is the same main
    criterion, through the fused-linear loss)."""

    def __init__(self, ms: nn.Module) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, batch: dict) -> torch.Tensor:
        return self.ms(batch, branch="main")


def _make_step(args, ms, world: int):
    """step(batch, seed, optimizer, scaler, autocast) -> the train_step dict, for MaskSub or the baseline."""
    from .engine import PlainStep

    clip = args.clip_grad or None
    if args.baseline:
        main = _MainBranch(ms)
        ddp = nn.parallel.DistributedDataParallel(main) if world > 1 else None
        plain = PlainStep(main, ms.main_criterion, ddp)
        return lambda batch, seed, opt, scaler, autocast: plain(
            batch, batch["labels"], opt, scaler=scaler, clip_grad=clip, accum_steps=args.accum_steps, autocast=autocast
        )
    if world > 1:
        ms.wrap_ddp()
    return lambda batch, seed, opt, scaler, autocast: ms.train_step(
        batch, batch["labels"], opt, scaler=scaler, clip_grad=clip, accum_steps=args.accum_steps, seed=seed,
        schedule=args.schedule, autocast=autocast,
    )  # fmt: skip


@torch.no_grad()
def _evaluate(args, ms, vocab, data, rank: int, world: int, device, autocast) -> dict[str, float]:
    """Held-out MLM loss and accuracy (%) over this rank's share of the (already corrupted) held-out blocks, summed
    over ranks."""
    import torch.distributed as dist

    ms.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for index, start in enumerate(range(0, data["input_ids"].shape[0], args.batch_size)):
        if index % world != rank:
            continue
        batch = {key: value[start : start + args.batch_size] for key, value in data.items()}
        with autocast():
            out = ms(batch)
        sums += torch.stack([out["loss"].double() * out["count"], out["correct"].double(), out["count"].double()])
    ms.train()
    if world > 1:
        dist.all_reduce(sums)
    count = float(sums[2]) or float("nan")  # none predicted: refused before training (_check_held_out)
    return {"val_loss": float(sums[0]) / count, "val_acc": 100.0 * float(sums[1]) / count}


# ----------------------------------------------------------------------------------------------------------------
# The run: set-up, resume, rounds of training + evaluation + save
# ----------------------------------------------------------------------------------------------------------------


def _build(args, vocab: Vocab, train, state: dict | None, world: int, device, rank: int, sizes: dict):
    """(ms, optimizer, scheduler, scaler, autocast), with the checkpoint's state when resuming; refuses batches
    larger than the corpus, blocks whose special tokens the sub-branch cannot keep, and a resume of another run."""
    from .wrapper import MaskSub

    blocks = train.blocks.shape[0]
    per_step = args.batch_size * args.accum_steps * world
    if blocks < per_step:
        raise UsageError(
            f"{blocks} training blocks: fewer than one step's {per_step} (--batch-size {args.batch_size} x "
            f"--accum-steps {args.accum_steps} x {world} process(es)); lower them, or give a larger corpus"
        )
    if not args.baseline:
        mlm_args.check_keep(args, specials=mlm_blocks.block_specials(train))  # the blocks' own [SEP]s (blocks.json's)
    if state is not None:
        check_resume(args, state, world, sizes)
    torch.manual_seed(_seed(args.seed, -1))
    ms = MaskSub(_model(args, vocab), mask_ratio=args.mask_ratio, sub_fill=args.sub_fill, chunk_rows=args.chunk_rows)
    ms = ms.to(device)
    optimizer = _optimizer(ms, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_lr_factor, warmup=args.warmup_steps, total=args.steps)
    )
    use_scaler = args.amp == "fp16" and device.type == "cuda"
    if args.amp == "fp16" and not use_scaler and rank == 0:
        print(f"{PROG}: note: --amp fp16 on {device}: no GradScaler (CUDA's), so small gradients may underflow to "
              "zero; bf16 needs none", file=sys.stderr)  # fmt: skip
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    autocast = contextlib.nullcontext
    if args.amp != "none":
        dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
        autocast = functools.partial(torch.autocast, device.type, dtype=dtype)
    if state is not None:
        load_state(args, state, ms, optimizer, scheduler, scaler, rank, PROG)
    return ms, optimizer, scheduler, scaler, autocast


# The run in progress, for the message of an interrupt (main's _interrupted): {'rank', 'step' (the step in progress,
# 1-based), 'saved' ((checkpoint, its step): the latest saved, the --resume one until this run saves)}; main clears it
_PROGRESS: dict = {}


def _run(args) -> None:
    import torch.distributed as dist

    from .checkpoint import save_checkpoint
    from .extras import require
    from .runlog import first_start, run_provenance, write_log

    mlm_args.check_args(args)
    require("the masked-LM command", ("transformers", "tokenizers"), "text")
    rank, world, device = _distributed(args.device)
    progress = _PROGRESS
    progress["rank"] = rank
    unused = [name for name in BASELINE_UNUSED if getattr(args, name) != build_parser().get_default(name)]
    if args.baseline and unused and rank == 0:  # (as --prepare-only's note: given, yet without effect)
        print(f"{PROG}: note: not used with --baseline (no sub-branch): "
              f"{', '.join('--' + name.replace('_', '-') for name in unused)}", file=sys.stderr)  # fmt: skip
    rank_zero_check(lambda: check_output(args.output, args.resume), rank, world)
    backend = check_backend(device, ("linear_masksub_loss", "random_keep_indices"))
    if args.resume:  # (a Ctrl-C while it is read: the message says it is unchanged)
        progress["resuming"] = os.path.abspath(args.resume)
    state = read_checkpoint(args, PROG) if args.resume else None
    if state is not None:
        progress["saved"] = (os.path.abspath(args.resume), state["step"])
    tokenizer_at = tokenizer_path(args, state)

    def check_resumed_options():  # a resume's options first (another --seq-len: that, not the masking cap at it)
        check_resume_options(args, state, world, tokenizer_at)
        if not args.baseline:
            mlm_args.check_keep(args)  # (a fresh run's: in check_args)

    if state is not None:
        rank_zero_check(check_resumed_options, rank, world)

    def check_tokenizer_directory():  # where the vocabulary will be saved, before it is trained
        if not os.path.isfile(tokenizer_at) and not args.reuse_block_cache:  # (with it: the vocabulary must exist)
            check_writable_directory(os.path.dirname(os.path.abspath(tokenizer_at)), f"--tokenizer {tokenizer_at!r}")

    rank_zero_check(check_tokenizer_directory, rank, world)  # (on every rank: a collective under torchrun)
    built: list[str] = []  # the cache's files, where this run builds them (not another run's, which it may share)
    with removed_if_refused(tokenizer_at, rank, also=built):  # a vocabulary this run trains, then refused
        vocab, train, val, sizes = _corpus(args, rank, world, device, tokenizer_at, state is not None, state, built)
        ms, optimizer, scheduler, scaler, autocast = _build(args, vocab, train, state, world, device, rank, sizes)
        _check_held_out(args, val)
    if args.warmup_steps > args.steps and rank == 0:  # after every check: a note, not an error (as masksub-train's)
        print(f"{PROG}: note: --warmup-steps {args.warmup_steps} > --steps {args.steps}: the learning rate is still "
              f"warming up when the run ends and never reaches --lr {args.lr}", file=sys.stderr)  # fmt: skip
    step_fn = _make_step(args, ms, world)
    start, rows = (state["step"], state["rows"]) if state else (0, [])
    where = run_provenance(device)  # (each resume's recorded in meta.resumes, the first start's too)
    meta = {"command": " ".join([PROG, *sys.argv[1:]]), "args": dict(vars(args)), "world_size": world,
            "device": str(device), "backend": backend, "torch": torch.__version__, "python": sys.version.split()[0],
            **where, "first_start": first_start(state, where), **sizes,
            "resumes": resumes(args, state, where)}  # fmt: skip
    # one round's sums: loss, main, sub (of the micro-batches that predict a token), those micro-batches, all of them
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    one = torch.ones(1, dtype=torch.float64, device=device)  # a micro-batch counted (never NaN, whatever its loss)
    round_start = time.perf_counter()
    wall = rows[-1]["wall_time_s"] if rows else 0.0
    parts = args.accum_steps * world
    for step in range(start, args.stop_at or args.steps):
        progress["step"] = step + 1
        for micro in range(args.accum_steps):
            part = micro * world + rank
            torch.manual_seed(_seed(args.seed, step, part, 1))  # dropout: per part, as the data and the masks
            batch = _train_batch(args, vocab, train, step, part, parts)
            out = step_fn(batch, _seed(args.seed, step, part, 2), optimizer, scaler, autocast)
            losses = torch.stack([out["loss"], out["loss_main"], out.get("loss_sub", out["loss"])]).double()
            predicts = (batch["labels"] != -100).any()  # none: its loss is 0 by definition, not averaged in (no sync)
            sums += torch.cat([torch.where(predicts, losses, 0.0), predicts.double()[None], one])
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used (logged)
        scheduler.step()
        if (step + 1) % args.eval_every and step + 1 not in (args.steps, args.stop_at):
            continue
        if world > 1:
            dist.all_reduce(sums)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - round_start
        _check_finite_weights(ms.model, step + 1, rank)
        metrics = _evaluate(args, ms, vocab, val, rank, world, device, autocast)
        n = float(sums[3]) or float("nan")  # no micro-batch predicted a token: no loss to log
        wall += time.perf_counter() - round_start
        rows.append({
            "round": len(rows) + 1, "step": step + 1, "lr": lr,
            "loss": float(sums[0]) / n, "loss_main": float(sums[1]) / n,
            "loss_sub": None if args.baseline else float(sums[2]) / n, **metrics,
            "tokens_per_s": float(sums[4]) * args.batch_size * args.seq_len / max(seconds, 1e-9),
            "round_time_s": seconds, "wall_time_s": wall,
        })  # fmt: skip
        if rank == 0:
            row = rows[-1]
            # each term, as masksub-train prints them ('loss', the weighted sum, means another thing per arm)
            sub = "" if row["loss_sub"] is None else f" loss_sub {row['loss_sub']:.4f}"
            print(
                f"step {row['step']}: loss_main {row['loss_main']:.4f}{sub} val_loss {row['val_loss']:.4f} "
                f"val_acc {row['val_acc']:.2f}% ({row['tokens_per_s']:.0f} tokens/s)",
                flush=True,
            )
            write_log(args.output, rows, meta, columns=LOG_COLUMNS)
            progress["saving"] = (os.path.join(args.output, "last.pth"), step + 1)  # (a Ctrl-C in the write)
            save_checkpoint(progress["saving"][0], {
                "model": ms.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "step": step + 1, "rows": rows, "args": dict(vars(args)), "world_size": world,
                "tokenizer_sha256": sizes["tokenizer_sha256"], "tokenizer": os.path.abspath(sizes["tokenizer"]),
                "corpus": corpus_record(sizes), "resumes": meta["resumes"], "first_start": meta["first_start"],
            })  # fmt: skip
            progress["saved"], progress["saving"] = progress["saving"], None
        sums.zero_()
        round_start = time.perf_counter()
    if world > 1:
        from .distributed import close_process_group

        del step_fn  # its closure holds ms (whose DDP module close_process_group forgets) or, for --baseline, a
        # PlainStep and its own DDP module
        close_process_group(ms)


def _check_finite_weights(model: nn.Module, step: int, rank: int) -> None:
    """Stop a run whose weights are no longer finite before its round saves them over last.pth, the last good
    checkpoint. Weights, not the round's loss: under fp16 a non-finite loss whose step the GradScaler
    skipped leaves them intact. One device read per round; DDP keeps every rank's weights equal: all stop alike."""
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    if not bool(finite):
        report = UsageError if rank == 0 else ReportedOnRankZero
        raise report(
            f"step {step}: the model's weights are no longer finite (the training diverged): stopped before saving, "
            "so last.pth holds the last finite round; resume from it with a lower --lr or a longer --warmup-steps "
            "(or --amp bf16 for fp16)"
        )


def _interrupted(args, progress: dict) -> str:
    """The line printed for Ctrl-C (SIGINT): where the run stopped and which checkpoint continues it (as
    masksub-train's)."""
    from .checkpoint import settle_interrupted_save

    if args.prepare_only:
        return f"{PROG}: interrupted"
    where = f"at step {progress['step']}" if progress.get("step") else "before training began"
    if progress.get("saving") is not None:  # save_checkpoint writes PATH.tmp, then renames it
        if settle_interrupted_save(progress["saving"][0]):  # renamed: it holds this step
            progress["saved"] = progress["saving"]
        where = f"while saving step {progress['saving'][1]}"
    saved = progress.get("saved")
    if saved is None and progress.get("resuming"):
        return f"{PROG}: interrupted {where}; {progress['resuming']} is unchanged: to continue, rerun the command"
    if saved is None:
        first = min(args.eval_every, args.stop_at or args.steps, args.steps)
        return f"{PROG}: interrupted {where}; no checkpoint yet (the first is saved at step {first})"
    return f"{PROG}: interrupted {where}; {saved[0]} holds step {saved[1]}: rerun the command with --resume {saved[0]}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``masksub-train-mlm``; returns the exit status (2 with a message for unusable options, 130 for
    an interrupt: Ctrl-C)."""
    with options_parsed():  # (under torchrun argparse's error is local rank 0's alone)
        args = build_parser().parse_args(argv)
    _PROGRESS.clear()
    try:
        return run_command(PROG, mlm_prepare.prepare if args.prepare_only else _run, args)
    except KeyboardInterrupt:
        interrupt_traceback()  # (MASKSUB_TRACEBACK=1: where it was, for a hung run)
        # (under torchrun every process is interrupted: rank 0 says it; torchrun's RANK until setup records it)
        if _PROGRESS.get("rank", int(os.environ.get("RANK", 0))) == 0:
            print(_interrupted(args, _PROGRESS), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
