"""masksub-train-mlm's options, rounds, logs, held-out blocks and vocabulary (training/mlm_cli.py), from helper-199's
second mutation audit of the command: each test names the mutants it kills. The runs and exact continuation:
test_mlm_cli.py; resume: test_mlm_resume.py."""

from __future__ import annotations

import functools

import pytest
import torch
from _mlm_runs import TINY, corpus_fixture, tokenizer_fixture  # noqa: F401  (fixtures: corpus, tokenizer)
from _mlm_runs import log as _log

from masksub_kernels.training import mlm_args, mlm_cli, text_data
from masksub_kernels.training.mlm_blocks import TrainBlocks
from masksub_kernels.training.mlm_cli import main

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


# kills mlm_cli.py:159 `not 1 <= args.stop_at` -> `not 0 <= args.stop_at` (--stop-at 0 ran the whole schedule, as
# `args.stop_at or args.steps` reads 0 as absent), mlm_cli.py:128 "eval_every" left out of the positive options
# (--eval-every 0: a ZeroDivisionError traceback after the corpus, the vocabulary and a step),
# mlm_cli.py:134 `< 64` -> `<= 64`, :143 `0.0 <= args.dropout` -> `0.0 < ...`, :145 `0.0 <= args.mask_ratio` ->
# `0.0 < ...` (the documented bounds, each way)
def test_the_option_bounds_are_the_documented_ones():
    parse = lambda *extra: mlm_cli.build_parser().parse_args(["--seq-len", "16", "--mask-ratio", "0.25", *extra])
    for extra, message in (
        (["--stop-at", "0"], r"--stop-at must be in \[1, --steps=2000\], got 0"),
        (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
        (["--vocab-size", "63"], "--vocab-size must be >= 64"),
    ):
        with pytest.raises(mlm_cli.UsageError, match=message):
            mlm_args.check_args(parse(*extra))
    # the inclusive ends are taken: 64 tokens, no dropout, a sub-branch that keeps every token
    for extra in (["--vocab-size", "64"], ["--dropout", "0"], ["--mask-ratio", "0"]):
        mlm_args.check_args(parse(*extra))


# kills mlm_cli.py:510 `step + 1 not in (args.steps, args.stop_at)` -> `step + 1 != args.stop_at`: with --steps not
# a multiple of --eval-every the last steps were trained but never evaluated, logged or saved (last.pth stayed at
# the last whole round)
def test_the_last_step_ends_a_round_when_steps_is_not_a_multiple_of_eval_every(corpus, tokenizer, tmp_path):
    out = str(tmp_path)
    assert main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out, "--steps", "3"]) == 0
    assert [r["step"] for r in _log(out)["epochs"]] == [2, 3]
    assert torch.load(tmp_path / "last.pth", weights_only=False)["step"] == 3


# kills mlm_cli.py:522 `"loss_main": float(sums[1]) / n` -> `float(sums[2]) / n`: the log's loss_main column showed
# the sub-branch's term (no test told the three loss columns apart: on a run they are all plausible losses)
def test_a_log_row_holds_each_loss_in_its_own_column(corpus, tokenizer, tmp_path, monkeypatch):
    values = {"loss": torch.tensor(1.0), "loss_main": torch.tensor(2.0), "loss_sub": torch.tensor(3.0)}
    monkeypatch.setattr(mlm_cli, "_make_step", lambda *a: lambda *b: values)
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--steps", "2",
            "--eval-every", "2"]  # fmt: skip
    assert main(argv) == 0
    (row,) = _log(tmp_path)["epochs"]
    assert (row["loss"], row["loss_main"], row["loss_sub"]) == (1.0, 2.0, 3.0)


# kills mlm_blocks.eval_rows' `k = num_blocks if eval_blocks == 0` -> `k = eval_blocks` (--eval-blocks 0, "all",
# evaluated none: refused as a held-out set that predicts no token), its stride `* num_blocks // k` -> `+ 0` (the
# first blocks, of the first documents alone: helper-254) and mlm_cli's `eval_rows(...)` -> `[: args.eval_blocks]`
def test_eval_blocks_are_spread_over_the_held_out_blocks_and_0_takes_them_all(corpus, tokenizer, tmp_path):
    held_out = {}
    for blocks in ("8", "0"):
        argv = ["--data-dir", corpus, *TINY, "--eval-blocks", blocks, "--output", str(tmp_path)]
        args = mlm_cli.build_parser().parse_args(argv)
        _, _, val, sizes = mlm_cli._corpus(args, 0, 1, torch.device("cpu"), tokenizer, False)
        held_out[blocks] = val, sizes
    (first, sizes_8), (every, sizes_all) = held_out["8"], held_out["0"]
    from tokenizers import Tokenizer

    docs = text_data.split_documents(text_data.text_dir_documents(corpus))[1]
    packed = text_data.pack_blocks(Tokenizer.from_file(tokenizer), docs, 16)
    n = packed.shape[0]
    assert sizes_8["val_blocks"] == 8 and sizes_all["val_blocks"] == n > 16
    assert torch.equal(torch.where(every["labels"] == -100, every["input_ids"], every["labels"]), packed)
    rows = [i * n // 8 for i in range(8)]  # block floor(i N / K): from the first block to the last eighth
    assert rows[-1] >= n - n // 8 - 1
    assert torch.equal(torch.where(first["labels"] == -100, first["input_ids"], first["labels"]), packed[rows])


# kills mlm_cli.py:258 `load_tokenizer(args, tokenizer_at, train_docs, ...)` -> `documents` (the vocabulary trained
# on the held-out text too: its words then never [UNK] or split as an unseen word is, a flattering val_loss) and
# mlm_cli.py:273 `corpus_digest(train, val)` -> a digest without the held-out blocks (a resume on changed held-out
# text was taken)
def test_the_vocabulary_is_trained_on_the_training_documents_and_the_digest_covers_both_parts(
    corpus, tmp_path, monkeypatch
):
    from masksub_kernels.training.mlm_blocks import eval_rows

    seen = []
    real = text_data.train_tokenizer
    monkeypatch.setattr(text_data, "train_tokenizer", lambda docs, size: seen.append(list(docs)) or real(docs, size))
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--output", str(tmp_path)])
    path = str(tmp_path / "tokenizer.json")
    _, data, _, sizes = mlm_cli._corpus(args, 0, 1, torch.device("cpu"), path, False)
    train_docs, held_out = text_data.split_documents(text_data.text_dir_documents(corpus))
    assert seen == [train_docs] and held_out
    from tokenizers import Tokenizer

    from masksub_kernels.training.mlm_resume import corpus_digest

    blocks = text_data.pack_blocks(Tokenizer.from_file(path), held_out, 16)
    assert sizes["corpus_sha256"] == corpus_digest(data.blocks, blocks[eval_rows(blocks.shape[0], 8)])


# kills mlm_cli.py:390 the baseline's `accum_steps=args.accum_steps` -> `accum_steps=1`: --baseline --accum-steps 2
# stepped the optimizer after every micro-batch (the MaskSub path was tested, the baseline's PlainStep not)
def test_mlm_baseline_accumulates_as_masksub_does(corpus, tokenizer, tmp_path, monkeypatch):
    from masksub_kernels.training import engine

    seen = []
    real = engine.PlainStep.__call__

    def spy(self, *args, **kwargs):
        seen.append((kwargs["accum_steps"], kwargs["clip_grad"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engine.PlainStep, "__call__", spy)
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", str(tmp_path), "--baseline",
            "--accum-steps", "2", "--clip-grad", "0.5", "--steps", "1", "--eval-every", "1"]  # fmt: skip
    assert main(argv) == 0
    assert seen == [(2, 0.5), (2, 0.5)]


# kills mlm_cli.py:79 `--eval-blocks` default 512 -> 256 and mlm_cli.py:85 `--dropout` default 0.1 -> 0.0 (BERT's
# dropout; runs compared against earlier ones must score the same held-out blocks), and the other defaults no test read
def test_mlm_defaults_the_tests_did_not_read():
    args = mlm_cli.build_parser().parse_args([])
    assert (args.layers, args.width, args.heads, args.intermediate, args.dropout) == (4, 128, 2, None, 0.1)
    assert (args.batch_size, args.accum_steps, args.eval_every, args.eval_blocks) == (64, 1, 200, 512)
    assert (args.schedule, args.amp, args.seed, args.baseline) == ("sequential", "none", 0, False)


# kills mlm_cli.py:330 `_seed(args.seed, step, part)` -> `_seed(args.seed, step, 0)`: every micro-batch (and every
# rank) of a step corrupted the same positions, a correlation accumulation averages over; the dropout and sub-branch
# seeds were tested per part (helper-193), the corruption's not
def test_mlm_each_part_of_a_step_corrupts_its_own_positions():
    args = mlm_cli.build_parser().parse_args(["--batch-size", "2", "--accum-steps", "2", "--seq-len", "16"])
    blocks = torch.randint(5, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    data = TrainBlocks(blocks, torch.tensor([0, 2, 3]), torch.device("cpu"))  # none special
    vocab = mlm_cli.Vocab(64, 4, 0)
    chosen = [mlm_cli._train_batch(args, vocab, data, 0, part, 2)["labels"] != -100 for part in (0, 1)]
    assert chosen[0].any() and not torch.equal(chosen[0], chosen[1])
    again = mlm_cli._train_batch(args, vocab, data, 0, 1, 2)["labels"] != -100
    assert torch.equal(again, chosen[1])  # (a seed per part, not a random draw)


# kills mlm_cli.py:433 `< per_step` -> `<= per_step` (a corpus of exactly one step's blocks refused) and
# mlm_cli.py:456 the bf16 / fp16 swap (--amp bf16 ran float16 autocast: on a CPU no error, no scaler, another run)
def test_mlm_build_takes_a_corpus_of_one_step_and_the_named_autocast_dtype():
    blocks = torch.randint(5, 64, (8, 16))
    blocks[:, 0], blocks[:, -1] = 2, 3  # [CLS], [SEP]
    data = TrainBlocks(blocks, torch.tensor([0, 2, 3]), torch.device("cpu"))
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        argv = ["--layers", "1", "--width", "16", "--heads", "2", "--seq-len", "16", "--mask-ratio", "0.25",
                "--batch-size", "4", "--accum-steps", "2", "--amp", amp]  # fmt: skip
        args = mlm_cli.build_parser().parse_args(argv)
        built = mlm_cli._build(args, mlm_cli.Vocab(64, 4, 0), data, None, 1, torch.device("cpu"), 0, {})
        autocast = built[4]
        assert isinstance(autocast, functools.partial) and autocast.keywords["dtype"] == dtype, amp


# kills text_data.py:187 `train_tokenizer(train, ...)` -> `train_tokenizer(documents, ...)` (the shared vocabulary
# trained on the held-out text too) and text_data.py:176 its --vocab-size default 8192 -> 8000 (a shared file
# other than the one the command trains by default)
def test_the_vocabulary_tool_trains_what_the_command_would(tmp_path, monkeypatch, capsys):
    from masksub_kernels.training.mlm_tokenizer import DEFAULT_VOCAB_SIZE

    seen = []
    real = text_data.train_tokenizer
    monkeypatch.setattr(
        text_data, "train_tokenizer", lambda docs, size: seen.append((list(docs), size)) or real(docs, 80)
    )
    documents = [f"document number {i} of the corpus" for i in range(40)]
    (tmp_path / "a.txt").write_text("\n\n".join(documents))
    assert text_data.main([str(tmp_path / "out" / "tok.json"), "--data-dir", str(tmp_path)]) == 0
    train, held_out = text_data.split_documents(documents)
    assert held_out and seen == [(train, DEFAULT_VOCAB_SIZE)]
    assert f"from {len(train)} training documents ({len(held_out)} of the corpus's {len(documents)} held out)" in (
        capsys.readouterr().out
    )


# kills mlm_cli.py:317 `_epoch_order`'s `_seed(seed, epoch)` -> `_seed(0, epoch)` (every --seed walked the blocks in
# one order: test_mlm_batches_walk_... compares _train_batch with _epoch_order itself, so it cannot see it) and
# mlm_cli.py:335 the corruption's `_seed(args.seed, step, part)` -> `_seed(0, step, part)` (every --seed predicted the
# same positions): runs of other seeds, meant as independent repeats, shared their data order or their masks
def test_the_seed_sets_the_data_order_and_the_masks():
    def batch(seed, blocks, special_ids):
        args = mlm_cli.build_parser().parse_args(["--batch-size", "4", "--seq-len", "16", "--seed", str(seed)])
        data = TrainBlocks(blocks, special_ids, torch.device("cpu"))
        return mlm_cli._train_batch(args, mlm_cli.Vocab(64, 4, 0), data, 0, 0, 1)

    numbered = torch.arange(40 * 16).view(40, 16)  # block i holds 16 i .. 16 i + 15; all special: none corrupted
    taken = [(batch(seed, numbered, numbered.flatten())["input_ids"][:, 0] // 16).tolist()
             for seed in (0, 1)]  # fmt: skip
    assert taken[0] != taken[1]
    same = torch.randint(5, 64, (1, 16), generator=torch.Generator().manual_seed(0)).expand(40, 16)  # one block
    chosen = [batch(seed, same, torch.tensor([0, 2, 3]))["labels"] != -100 for seed in (0, 1)]
    assert chosen[0].any() and not torch.equal(chosen[0], chosen[1])


# kills mlm_cli.py:507 the dropout seed `_seed(args.seed, step, part, 1)` -> `_seed(0, step, part, 1)` and
# mlm_cli.py:509 the sub-branch's `_seed(args.seed, step, part, 2)` -> `_seed(0, step, part, 2)`: other --seed runs
# dropped the same tokens and units (the per-part seeds were tested, their --seed not)
def test_the_seed_sets_the_dropout_and_the_sub_branchs_tokens(corpus, tokenizer, tmp_path, monkeypatch):
    from masksub_kernels.training import MaskSub

    class Seen(Exception):
        pass

    seen = []

    def spy(self, batch, target, optimizer, **kwargs):
        seen.append((kwargs["seed"], torch.initial_seed()))  # torch's: the dropout's, seeded just before
        raise Seen

    monkeypatch.setattr(MaskSub, "train_step", spy)
    for seed in ("0", "1"):
        with pytest.raises(Seen):
            mlm_cli.main(["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--seed", seed,
                          "--output", str(tmp_path / seed)])  # fmt: skip
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]


# kills mlm_cli.py:274 the Vocab's `token_to_id("[MASK]")` -> `token_to_id("[UNK]")`: the corruption's 80% then wrote
# [UNK] for [MASK] (a run trained and logged plausible losses; the tests built their own Vocab or read only pad_id)
def test_the_corpus_corrupts_with_the_vocabularys_mask_token(corpus, tokenizer, tmp_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    args = mlm_cli.build_parser().parse_args(["--data-dir", corpus, *TINY, "--output", str(tmp_path)])
    vocab, _, val, _ = mlm_cli._corpus(args, 0, 1, torch.device("cpu"), tokenizer, False)
    assert vocab == (tok.get_vocab_size(), tok.token_to_id("[MASK]"), tok.token_to_id("[PAD]"))
    predicted = val["labels"] != -100
    masked = (val["input_ids"] == tok.token_to_id("[MASK]")) & predicted
    assert masked.sum() > 0.6 * predicted.sum()  # BERT's 80% (of some 100 predicted tokens)


# kills mlm_tokenizer.py:111 the special-token check left out (`if missing:` -> `if False:`): a --tokenizer file
# without [CLS] / [SEP] / [MASK] (another model's, a word-level one) reached the corpus packing with None ids
def test_a_tokenizer_without_berts_special_tokens_is_refused(corpus, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate("the a of to and in is for".split())}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(tmp_path / "words.json")
    tokenizer.save(path)
    argv = ["--data-dir", corpus, *TINY, "--tokenizer", path, "--output", str(tmp_path / "run")]
    assert mlm_cli.main(argv) == 2
    assert "lacks BERT's special tokens ['[CLS]', '[SEP]', '[MASK]']" in capsys.readouterr().err


# helper-230 (the masked-LM command's optimisation, mutation audit: 33 mutants, 3 real gaps, no bug)


# kills mlm_cli.py _optimizer: the 1-D group's `"weight_decay": 0.0` -> args.weight_decay (biases and LayerNorm
# decayed), the matrices' `args.weight_decay` -> 0.0 (no decay at all), `betas=(0.9, 0.999)` -> (0.9, 0.98) and
# `eps=1e-6` -> 1e-8: each a silently different optimizer, and no test read the groups (a run's loss stays finite)
def test_mlm_optimizer_decays_the_matrices_once_and_no_bias_or_layernorm():
    pytest.importorskip("transformers")
    from masksub_kernels.training.wrapper import MaskSub

    argv = ["--seq-len", "16", "--layers", "1", "--width", "16", "--heads", "2", "--mask-ratio", "0.25",
            "--weight-decay", "0.05", "--lr", "3e-4"]  # fmt: skip
    args = mlm_cli.build_parser().parse_args(argv)
    ms = MaskSub(mlm_cli._model(args, mlm_cli.Vocab(120, 4, 0)), mask_ratio=0.25)
    optimizer = mlm_cli._optimizer(ms, args)
    assert isinstance(optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in ms.named_parameters()}
    decay = {g["weight_decay"]: [names[id(p)] for p in g["params"]] for g in optimizer.param_groups}
    assert sorted(decay) == [0.0, 0.05]
    # every parameter in exactly one group; the decoder's weight is the word embedding's (tied): one entry, decayed
    # once; its bias is the head's `predictions.bias` (tied too)
    listed = decay[0.0] + decay[0.05]
    assert sorted(listed) == sorted(names.values()) and len(set(listed)) == len(listed)
    model = ms.model
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert "model.bert.embeddings.word_embeddings.weight" in decay[0.05]
    # BERT / transformers' run_mlm: no decay on biases and LayerNorm weights; the embeddings and every matrix decayed
    for name in listed:
        assert (name in decay[0.0]) == (name.endswith("bias") or "LayerNorm" in name), name
    for group in optimizer.param_groups:  # BERT's AdamW: betas (0.9, 0.999), eps 1e-6, at --lr
        assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.9, 0.999), 1e-6)


# kills mlm_cli.py _lr_factor `(step + 1) / warmup` -> `step / warmup` (the first update at lr 0, the logged
# steps 2 and 4 of TINY unchanged), `step < warmup` -> `<=`, the decay's `(total - step)` -> `(total - step - 1)` and
# `max(total - warmup, 1)` -> `max(total, 1)`: the whole schedule, not two points of it
def test_mlm_learning_rate_warms_up_then_decays_linearly_to_0():
    factors = [mlm_cli._lr_factor(step, warmup=3, total=7) for step in range(8)]  # step = updates done
    # update 1 at lr / 3 (not 0: a wasted update), update 3 reaches lr; then linear decay, 0 after the last update
    assert factors == pytest.approx([1 / 3, 2 / 3, 1, 1, 3 / 4, 2 / 4, 1 / 4, 0])
    assert [mlm_cli._lr_factor(step, warmup=0, total=4) for step in range(5)] == pytest.approx(
        [1, 3 / 4, 2 / 4, 1 / 4, 0]
    )


def test_a_diverged_run_stops_before_saving_over_its_last_checkpoint(corpus, tokenizer, tmp_path, capsys, monkeypatch):
    # helper-253 M6: a run whose weights became inf / NaN trained on to --steps and saved them over last.pth each
    # round, the only checkpoint; now the round stops first (exit 2, the message), the last finite round's file kept.
    # The divergence: the optimizer's second step leaves a NaN in the weights
    build = mlm_cli._optimizer

    def diverging(module, args):
        optimizer, calls = build(module, args), []

        def poison(optimizer, *_):
            calls.append(1)
            if len(calls) == 2:
                with torch.no_grad():
                    next(module.parameters()).view(-1)[0] = float("nan")

        optimizer.register_step_post_hook(poison)
        return optimizer

    monkeypatch.setattr(mlm_cli, "_optimizer", diverging)
    out = str(tmp_path / "run")
    args = ["--data-dir", corpus, *TINY, "--tokenizer", tokenizer, "--output", out, "--eval-every", "1"]
    assert main([*args, "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "step 2: the model's weights are no longer finite (the training diverged): stopped before saving" in err
    assert torch.load(f"{out}/last.pth", map_location="cpu", weights_only=False)["step"] == 1  # round 1's, finite


# kills mlm_args.py:20 dropping "layers" / "width" / "heads" / "batch_size" / "accum_steps" from the positive options
# (only --steps and --eval-every are tried) and :36 `0.0 < args.mlm_probability` -> `0.0 <=` (0 was never tried)
@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--layers", "0"], "--layers must be >= 1, got 0"), (["--width", "0"], "--width must be >= 1, got 0"),
     (["--heads", "0"], "--heads must be >= 1, got 0"), (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
     (["--accum-steps", "0"], "--accum-steps must be >= 1, got 0"),
     (["--mlm-probability", "0"], r"--mlm-probability must be in \(0, 1\], got 0.0")],
)  # fmt: skip
def test_zero_sized_options_are_usage_errors(extra, message):
    args = mlm_cli.build_parser().parse_args(["--seq-len", "16", "--mask-ratio", "0.25", *extra])
    with pytest.raises(mlm_cli.UsageError, match=message):
        mlm_args.check_args(args)


# helper-347's audit of mlm_args.check_mask_ranges: kills `args.mlm_probability <= 1.0` -> `< 1.0` (every token
# predicted, the documented inclusive end, refused) and `args.mask_ratio < 1.0` -> `<= 1.0` (a --baseline run, which
# skips check_keep, took a sub-branch that keeps no token)
def test_the_mask_ranges_inclusive_and_exclusive_ends():
    parse = lambda *extra: mlm_cli.build_parser().parse_args(["--seq-len", "16", "--baseline", *extra])
    mlm_args.check_args(parse("--mlm-probability", "1"))
    with pytest.raises(mlm_cli.UsageError, match=r"--mask-ratio must be in \[0, 1\), got 1.0"):
        mlm_args.check_args(parse("--mask-ratio", "1"))
