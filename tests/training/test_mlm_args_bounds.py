"""masksub-train-mlm's option ranges (training/mlm_args.py's check_args), each end of each range tried, from
helper-346's mutation audit: each test names the mutants it kills. The command's own refusals (exit status 2):
test_mlm_cli.py's test_clear_errors; the keep check's tail: test_mlm_cli.py."""

from __future__ import annotations

import pytest

from masksub_kernels.training import mlm_args, mlm_cli


def _parse(*extra):
    return mlm_cli.build_parser().parse_args(["--seq-len", "16", "--mask-ratio", "0.25", *extra])


# kills mlm_args.py's bounds each moved onto a value that is inside the documented range: `args.seq_len < 3` -> `< 4`,
# `0 <= args.seed < 2**63` -> `... <= 2**63 - 2`, `1 <= args.chunk_rows < 2**31` -> `2 <= ...` or `... < 2**31 - 1`,
# `args.intermediate < 1` -> `< 2`, `0.0 < args.mlm_probability <= 1.0` -> `... < 1.0`, the integer options'
# `< 0` -> `< 1` (--warmup-steps 0, --eval-blocks 0: all of them), `math.isfinite(value) and value >= 0` -> `value > 0`
# (--weight-decay 0, --clip-grad 0: no clipping), check_keep's `max(shares) > keep` -> `>=` (K = s = 2 special tokens
# of 3 kept, the one other token predicted in 1e-4 of the blocks: taken)
@pytest.mark.parametrize(
    "extra",
    [["--seq-len", "3", "--mask-ratio", "0"], ["--seed", str(2**63 - 1)], ["--chunk-rows", "1"],
     ["--chunk-rows", str(2**31 - 1)], ["--intermediate", "1"], ["--mlm-probability", "1", "--mask-ratio", "0"],
     ["--warmup-steps", "0"], ["--eval-blocks", "0"], ["--weight-decay", "0"], ["--clip-grad", "0"],
     ["--lr", "1e-30"], ["--dropout", "0.999"], ["--mask-ratio", "0"],
     ["--seq-len", "3", "--mask-ratio", "0.3", "--mlm-probability", "1e-4"]],
)  # fmt: skip
def test_the_inclusive_ends_of_the_ranges_are_taken(extra):
    mlm_args.check_args(_parse(*extra))


# kills `1 <= args.chunk_rows < 2**31` -> `<= 2**31`, `0.0 <= args.mask_ratio < 1.0` -> `<= 1.0` (--mask-ratio 1 was
# then refused by num_kept_tokens' own message, not the range's), `math.isfinite(args.lr) and args.lr > 0` ->
# `args.lr >= 0` or `not args.lr <= 0` (NaN passed it), the weight decay's and the clip's `math.isfinite(value) and`
# left out (inf passed), `value >= 0` -> `not value < 0` (NaN passed)
@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--chunk-rows", str(2**31)], r"--chunk-rows must be in \[1, 2\^31\)"),
     (["--mask-ratio", "1"], r"--mask-ratio must be in \[0, 1\), got 1.0"),
     (["--mlm-probability", "1.5"], r"--mlm-probability must be in \(0, 1\], got 1.5"),
     (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
     (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
     (["--clip-grad", "inf"], "--clip-grad must be a finite number >= 0, got inf"),
     (["--clip-grad", "-1"], "--clip-grad must be a finite number >= 0, got -1.0"),
     (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan")],
)  # fmt: skip
def test_the_open_ends_of_the_ranges_are_refused(extra, message):
    with pytest.raises(mlm_cli.UsageError, match=message):
        mlm_args.check_args(_parse(*extra))


# kills check_args' `os.path.abspath` of --tokenizer, --block-cache, --data-dir or --output left out: a checkpoint
# recorded them relative, so a resume from another working directory read another vocabulary / cache / corpus
def test_the_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    args = _parse("--data-dir", "corpus", "--tokenizer", "tok.json", "--block-cache", "cache", "--output", "out")
    mlm_args.check_args(args)
    expected = {name: str(tmp_path / name) for name in ("corpus", "tok.json", "cache", "out")}
    assert [args.data_dir, args.tokenizer, args.block_cache, args.output] == list(expected.values())


# kills _binomial_pmf's `if p == 1.0: return float(x == n)` left out: at --mlm-probability 1 its log-space form took
# math.log1p(-1), 'ValueError: math domain error', a traceback instead of the refusal (every token predicted: 2 + 14 >
# K = 12 in every block of 16 tokens)
def test_every_token_predicted_is_refused_where_the_sub_branch_drops_any():
    with pytest.raises(mlm_cli.UsageError, match=r"a share of 1\.0e"):
        mlm_args.check_args(_parse("--mlm-probability", "1"))
    assert mlm_args._binomial_pmf(14, 14, 1.0) == 1.0 and mlm_args._binomial_pmf(14, 13, 1.0) == 0.0


# kills check_keep's `shares = {2: 1.0} if specials is None` -> `{1: 1.0}` (before the corpus is read a block holds at
# least [CLS] and [SEP]) and `keep = mk.num_kept_tokens(...)` -> `int(L (1 - r)) + 1`: at L = 8, K = 4, p = 0.05 a
# block of s = 2 draws 2 + X > 4, X ~ Bin(6, p), in 2.2e-3 of the blocks (s = 1: 1 + Bin(7, p) > 4 in 1.9e-4; K = 5:
# 8.6e-5), over CAPPED_SHARE_LIMIT
def test_before_the_corpus_is_read_a_block_holds_two_special_tokens():
    assert mlm_args._over_keep(8, 2, 4, 0.05) > mlm_args.CAPPED_SHARE_LIMIT > mlm_args._over_keep(8, 1, 4, 0.05)
    with pytest.raises(mlm_cli.UsageError, match=r"keeps 4 of 8 tokens, but a share of 2\.2e-03 of the blocks draw"):
        mlm_args.check_args(_parse("--seq-len", "8", "--mask-ratio", "0.5", "--mlm-probability", "0.05"))
