"""The commands take options by their full names only (helper-295: argparse's prefixes, `--mask-r 0.3`, ran as
--mask-ratio and were recorded verbatim in log.json's meta.command, which a resume repeats; a prefix unique today is
ambiguous once an option is added). An unrecognised prefix names the options it abbreviates."""

import pytest

from masksub_kernels.training.config import parse_args_with_config


def _refused(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_masksub_train_refuses_a_prefix_and_names_the_option(capsys):
    from masksub_kernels.training.cli import build_parser

    err = _refused(lambda a: parse_args_with_config(build_parser(), a), ["--mask-r", "0.3", "--ep=2"], capsys)
    assert err.startswith("masksub-train: error: unrecognized arguments: --mask-r 0.3 --ep=2"), err
    assert "--mask-r is not an option: --mask-ratio?" in err and "--ep is not an option: --epochs?" in err
    assert "full names only" in err
    # the full names, in both spellings, still parse (a recorded meta.command with them is repeated as it was)
    args = parse_args_with_config(build_parser(), ["--mask-ratio", "0.3", "--epochs=2", "--opt-betas", "0.9", "0.95"])
    assert (args.mask_ratio, args.epochs, args.opt_betas) == (0.3, 2, [0.9, 0.95])


def test_a_config_prefix_is_not_read_as_config(tmp_path, capsys):
    from masksub_kernels.training.cli import build_parser

    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\n")
    err = _refused(lambda a: parse_args_with_config(build_parser(), a), ["--conf", str(config)], capsys)
    assert "--conf is not an option: --config?" in err
    assert parse_args_with_config(build_parser(), ["--config", str(config)]).epochs == 3


def test_masksub_train_mlm_refuses_a_prefix(capsys):
    from masksub_kernels.training.mlm_cli import build_parser

    err = _refused(build_parser().parse_args, ["--vocab", "100"], capsys)
    assert err.startswith("masksub-train-mlm: error: unrecognized arguments: --vocab 100"), err
    assert "--vocab-size?" in err


def test_masksub_bench_refuses_a_prefix(capsys):
    from masksub_kernels.bench import cli

    err = _refused(cli.parse_args, ["--suit", "loss"], capsys)
    assert "unrecognized arguments: --suit" in err, err


# kills hf1: FullNamesParser.error's `name.startswith("--") and len(name) > 2 and` dropped (a stray '-' -- stdin's
# name -- was hinted as '- is not an option: --config or --model or ...?')
def test_a_stray_dash_gets_no_prefix_hint(capsys):
    from masksub_kernels.training.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["-"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "masksub-train: error: unrecognized arguments: -", err


# kills cf3: parse_args_with_config's pre-parser without `allow_abbrev=False` (--conf FILE was read as --config FILE
# before the command's parser refused it: a missing or bad file's error instead of the prefix's)
def test_a_config_prefix_is_not_read_even_when_its_file_is_missing(tmp_path, capsys):
    from masksub_kernels.training.cli import build_parser

    with pytest.raises(SystemExit):
        parse_args_with_config(build_parser(), ["--conf", str(tmp_path / "none.yaml")])
    assert "--conf is not an option: --config?" in capsys.readouterr().err


# kills hf2: FullNamesParser.error's `if full and name not in known` -> `if full` (an option's full name that
# reached the leftovers -- after '--' -- was hinted as '--epochs is not an option: --epochs?')
def test_a_full_name_after_a_double_dash_gets_no_prefix_hint(capsys):
    from masksub_kernels.training.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--", "--epochs"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "masksub-train: error: unrecognized arguments: -- --epochs", err
