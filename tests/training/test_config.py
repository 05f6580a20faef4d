"""--config FILE: every recipe loads and every key is an option; the command line overrides the file; every mistake in
a file is a one-line error (exit status 2). No training here: these are cheap."""

import glob
import os
import re

import pytest

pytest.importorskip("yaml", reason="--config reads YAML")

from masksub_kernels.train import build_parser, main
from masksub_kernels.training.config import load_config, parse_args_with_config
from masksub_kernels.training.run_setup import UsageError, parse_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


def test_the_recipes_are_there():
    names = {os.path.basename(p)[: -len(".yaml")] for p in RECIPES}
    assert names == {"deit3", "deit3_finetune", "mae_finetune", "clip_finetune", "swin", "resnet_rsb"}


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_loads_with_known_keys_and_cites_each_value(path):
    values = load_config(path, build_parser())
    assert values["mask_ratio"] == 0.5 and values["variant"] == "mask"
    args = parse_args_with_config(build_parser(), ["--config", path])
    for dest, value in values.items():
        assert getattr(args, dest) == value
    # every option line carries its source (a comment)
    with open(path) as f:
        lines = [line for line in f if line.strip() and not line.startswith("#") and not line.startswith(" ")]
    uncited = [line for line in lines if "#" not in line and not line.startswith("std:")]
    assert not uncited, uncited


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_values_are_the_numbers_their_sources_give(path):
    # a value whose comment cites the source's own option (`A: --lr 3e-3`, Swin's `C: TRAIN.EPOCHS 300`) is that
    # number: an edited value, or a source misread, shows here (helper-120; a derived value such as MAE's lr is not)
    import re

    values = load_config(path, build_parser())
    cited = []
    with open(path) as f:
        for line in f:
            option, _, comment = line.partition("#")
            key = option.partition(":")[0].strip().replace("-", "_")
            for flag, number in re.findall(r"(?:--|[A-Z]+\.)([a-zA-Z][\w-]*)[ =]([-+]?\d[\d.e+-]*)", comment):
                if key in values and flag.lower().replace("-", "_") == key:
                    cited.append((key, values[key], float(number)))
    assert len(cited) >= 8 and all(float(value) == number for _, value, number in cited), cited


def test_command_line_overrides_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.5\nweight_decay: 0.01\nmodel-kwargs: {img_size: 16, depths: [1, 1]}\namp: true\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg), "--lr", "0.1"])
    assert args.lr == 0.1 and args.weight_decay == 0.01 and args.amp is True
    assert args.model_kwargs == ["img_size=16", "depths=[1, 1]"]
    # helper-231: the command line's keys replace the file's same keys, the others stay (the whole mapping was
    # replaced: --model-kwargs img_size=... with the DeiT-III recipe dropped its init_values silently); several
    # flags add up (helper-234: argparse kept the last flag alone, the file's img_size back); a bare one changes nothing
    kwargs = lambda *cli: parse_kwargs(
        parse_args_with_config(build_parser(), ["--config", str(cfg), *cli]).model_kwargs
    )
    assert kwargs("--model-kwargs", "img_size=8") == {"img_size": 8, "depths": [1, 1]}
    assert kwargs("--model-kwargs", "depths=None", "x=1") == {"img_size": 16, "depths": None, "x": 1}
    assert kwargs("--model-kwargs", "img_size=8", "--model-kwargs", "x=1") == {"img_size": 8, "depths": [1, 1], "x": 1}
    assert kwargs("--model-kwargs") == {"img_size": 16, "depths": [1, 1]}
    assert parse_kwargs(build_parser().parse_args(["--model-kwargs", "a=1", "--model-kwargs", "b=2"]).model_kwargs) == {
        "a": 1,
        "b": 2,
    }  # without a file too


def test_command_line_turns_off_the_files_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("amp: true\nmodel-ema: true\ncompile: true\nchannels-last: true\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg)])
    assert args.amp and args.model_ema and args.compile and args.channels_last
    args = parse_args_with_config(build_parser(), ["--config", str(cfg), "--no-amp", "--no-model-ema", "--no-compile"])
    assert not args.amp and not args.model_ema and not args.compile and args.channels_last
    assert build_parser().parse_args(["--amp"]).amp and not build_parser().parse_args([]).amp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr: 0.1\n", "unknown key 'lrr' (did you mean 'lr'?); valid keys: aa, amp, amp-dtype"),
        ("lr: fast\n", "'lr' (--lr) must be a number, got 'fast'"),
        ("epochs: 2.5\n", "'epochs' (--epochs) must be an integer, got 2.5"),
        ("epochs: true\n", "'epochs' (--epochs) must be an integer, got True"),  # a bool is no number
        ("amp: 1\n", "'amp' (--amp) is a flag: true or false, got 1"),
        ("loss: mse\n", "'loss' (--loss) must be one of ce, bce, got 'mse'"),
        ("lr: null\n", "'lr' (--lr) cannot be null"),
        ("mean: {r: 0.5}\n", "'mean' (--mean) takes a list"),
        ("scale: [0.1]\n", "'scale' (--scale) takes 2 values, got 1"),
        ("model-kwargs: 3\n", "takes a mapping"),
        ("lr: 1\nlr_: 2\n", "unknown key 'lr_'"),
        ("weight-decay: 0.1\nweight_decay: 0.2\n", "'weight_decay' is given twice"),
        ("lr: 0.1\nlr: 0.2\n", "key 'lr' is given twice"),  # YAML kept the last silently
        ("- lr\n- 0.1\n", "must be a mapping of option: value, got a list"),
        ("lr: [0.1\n", "is not valid YAML"),
        ("clip-grad: -1\n", "--clip-grad must be in (0.0, inf), got -1.0"),  # the ranges apply to file values too
    ],
)
def test_bad_config_files(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["--config", str(cfg), "--epochs", "1", "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("masksub-train: error:") and message in err and "Traceback" not in err, err


def test_a_list_option_takes_one_value_as_the_command_line_does(tmp_path):
    # helper-231: `mean: 0.5` was refused ("takes a list") where `--mean 0.5` is taken
    cfg = tmp_path / "one.yaml"
    cfg.write_text("mean: 0.5\nstd: [0.25]\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg)])
    assert (args.mean, args.std) == ([0.5], [0.25])


def test_yaml_1_1_strings_of_numbers_are_numbers(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string: a float option takes it as the number it spells
    cfg = tmp_path / "sci.yaml"
    cfg.write_text("lr: 1e-3\nwarmup-lr: 5E-6\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg)])
    assert (args.lr, args.warmup_lr) == (1e-3, 5e-6)


def test_merge_keys_and_model_kwargs_strings(tmp_path):
    # `<<: *anchor` merges a mapping (its keys may be overridden: no "given twice"); a model-kwargs value is read
    # as the command line reads it (1e-5 is a string to YAML 1.1: it reached timm as '1e-5')
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("model-kwargs: {depth: 1, init_values: 1e-5}\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg)])
    assert args.model_kwargs == ["depth=1", "init_values=1e-5"]
    assert parse_kwargs(args.model_kwargs) == {"depth": 1, "init_values": 1e-5}
    cfg.write_text("model-kwargs:\n  <<: {depth: 1, num_heads: 2}\n  depth: 2\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg)])
    assert parse_kwargs(args.model_kwargs) == {"depth": 2, "num_heads": 2}
    # the command line's `key=` removes the file's key (helper-236 F5: key=None passed None, not the default)
    args = parse_args_with_config(build_parser(), ["--config", str(cfg), "--model-kwargs", "num_heads="])
    assert parse_kwargs(args.model_kwargs) == {"depth": 2}
    cfg.write_text("model-kwargs: {global_pool: ''}\n")  # the file's empty string stays one (helper-240: removed)
    assert parse_kwargs(parse_args_with_config(build_parser(), ["--config", str(cfg)]).model_kwargs) == {
        "global_pool": ""
    }


def test_missing_config_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file" in capsys.readouterr().err


def test_a_missing_recipe_says_where_the_recipes_are(tmp_path, capsys, monkeypatch):
    # helper-296's probe: run outside the checkout's root, --config recipes/deit3.yaml said only "does not exist"
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "recipes/deit3.yaml"]) == 2
    err = capsys.readouterr().err
    assert (
        "(recipes/ is in masksub_kernels' source checkout, not installed with the package: pass 'recipes/deit3.yaml'"
        in err
    )
    assert f"this package's checkout has {os.path.join(ROOT, 'recipes', 'deit3.yaml')!r})" in err
    assert main(["--config", "elsewhere/deit3.yaml"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("config file 'elsewhere/deit3.yaml' does not exist")


def test_empty_config_file_changes_nothing(tmp_path):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("# nothing\n")
    assert vars(parse_args_with_config(build_parser(), ["--config", str(cfg)])) == {
        **vars(build_parser().parse_args([])),
        "config": str(cfg),
    }


def test_config_a_list_of_too_many_values_is_refused(tmp_path):
    # kills config.py:60 `len(value) != action.nargs` -> `len(value) < action.nargs` (a third value went to argparse)
    pytest.importorskip("yaml")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scale: [0.1, 0.5, 1.0]\n")
    with pytest.raises(UsageError, match=r"'scale' \(--scale\) takes 2 values, got 3"):
        load_config(str(cfg), build_parser())


# kills config.py:30 `a.dest not in ("help", "config")` -> `("help",)` (a file's own `config:` key was taken and
# silently did nothing: config files do not chain)
# kills config.py:54 `isinstance(value, list) and all(isinstance(v, str) ...)` -> `isinstance(value, list)` (a list
# of numbers reached parse_kwargs, a traceback instead of the usage error)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("config: other.yaml\n", "unknown key 'config'"),
        ("model-kwargs: [1, 2]\n", "'model-kwargs' (--model-kwargs) takes a mapping {key: value} or a list of"),
    ],
)
def test_config_refuses_its_own_key_and_model_kwargs_that_are_not_strings(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_config(str(cfg), build_parser())


# a list option of one or more values (--mean, --std) given [] in a file: refused as the command line refuses it
# (was, helper-194: taken, then a traceback from the loader, "The size of tensor a (3) must match ... (0)")
def test_config_an_empty_list_for_an_option_of_one_or_more_values_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mean: []\nstd: []\n")
    with pytest.raises(UsageError, match=re.escape("'mean' (--mean) takes at least one value")):
        load_config(str(cfg), build_parser())


def test_a_missing_recipe_lists_the_closest_names(tmp_path, capsys, monkeypatch):
    # the user passed the path from the checkout's root: the advice is the recipe's closest name, not to do so again
    monkeypatch.chdir(ROOT)
    assert main(["--config", "recipes/deit.yaml"]) == 2
    err = capsys.readouterr().err.rstrip()
    assert err.endswith("'recipes/deit.yaml' does not exist (the closest in 'recipes': 'recipes/deit3.yaml')")
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the checkout's
    assert main(["--config", "recipes/swim.yaml"]) == 2
    err = capsys.readouterr().err.rstrip()
    folder = os.path.join(ROOT, "recipes")
    assert err.endswith(f"(the closest in {folder!r}: {os.path.join(folder, 'swin.yaml')!r})")
    assert main(["--config", "recipes/zzzzzzzz.yaml"]) == 2
    assert "(no name is close in " in capsys.readouterr().err


# kills cf1: _recipes_hint's `"recipes" not in parts[:-1]` -> `not in parts` (a missing FILE named 'recipes' got the
# recipes/ hint); cf2: `if os.path.isfile(here) else ""` dropped (a recipe this checkout does not have was said to be
# in it); also a path with recipes/ deeper in it is shown from recipes/ on
def test_the_recipes_hint_only_for_a_file_under_recipes_and_the_checkout_only_where_it_has_it(tmp_path, monkeypatch):
    from masksub_kernels.training.config import _recipes_hint

    monkeypatch.chdir(tmp_path)
    assert _recipes_hint("recipes") == ""
    assert _recipes_hint("a/recipes.yaml") == ""
    hint = _recipes_hint(os.path.join("x", "recipes", "nosuch.yaml"))
    assert hint.startswith(" (no name is close in ") and "deit3.yaml" in hint, hint
    assert "this package's checkout has" not in hint
    hint = _recipes_hint(os.path.join("x", "recipes", "deit3.yaml"))
    assert hint.startswith(" (recipes/ is in masksub_kernels' source checkout") and "'recipes/deit3.yaml'" in hint
    assert "this package's checkout has" in hint


# helper-310: an installed package (no recipes/ beside it, none in the cwd) said only that the file does not exist
def test_the_recipes_hint_of_an_installed_package_says_where_the_recipes_are(tmp_path, monkeypatch):
    from masksub_kernels.training import config

    site = tmp_path / "site" / "masksub_kernels" / "training"
    site.mkdir(parents=True)
    monkeypatch.setattr(config, "__file__", str(site / "config.py"))
    monkeypatch.chdir(tmp_path)
    hint = config._recipes_hint(os.path.join("recipes", "deit3.yaml"))
    assert hint == (
        " (if you meant masksub_kernels' recipes: they are in its source checkout's recipes/, not installed with the "
        "package; clone the repository and pass the recipe's path there)"
    )


# helper-329: `--config deit3` (the recipe's name, as in the README's table) said only "does not exist"
def test_a_bare_recipe_name_is_pointed_to_the_recipes_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for name in ("deit3", "deit3.yaml", "deit3.yml"):
        assert main(["--config", name]) == 2
        err = capsys.readouterr().err.rstrip()
        assert err.endswith(
            f"config file {name!r} does not exist (a recipe is passed by its path: --config recipes/deit3.yaml)"
        )
    monkeypatch.chdir(tmp_path)  # outside the checkout: its file's full path
    assert main(["--config", "swin"]) == 2
    assert f"--config {os.path.join(ROOT, 'recipes', 'swin.yaml')})" in capsys.readouterr().err
    assert main(["--config", "nosuch"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("config file 'nosuch' does not exist")
    # a misspelt name: the closest recipes' paths (helper-331)
    assert main(["--config", "deit"]) == 2
    closest = os.path.join(ROOT, "recipes", "deit3.yaml")
    assert capsys.readouterr().err.rstrip().endswith(f"passed by its path; the closest recipes: {closest})")


# helper-329: a misspelt interpolation in a recipe ran to the transforms and stopped on timm's bare KeyError('bicubc')
# (on the digits, which use no transform, it trained silently); 'random' is timm's training-only choice
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train-interpolation", "bicubc", "must be one of nearest, bilinear, bicubic, box, hamming, lanczos, random"),
        ("interpolation", "random", "must be one of nearest, bilinear, bicubic, box, hamming, lanczos, got 'random'"),
    ],
)
def test_config_interpolations_are_timms_names(tmp_path, key, value, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{key}: {value}\n")
    with pytest.raises(UsageError, match=re.escape(f"'{key}' (--{key}) {message}")):
        load_config(str(cfg), build_parser())
    for ok in ("bicubic", "lanczos"):
        cfg.write_text(f"{key}: {ok}\n")
        assert load_config(str(cfg), build_parser())[key.replace("-", "_")] == ok


# Kills T11 (_recipes_hint's bare-name branch with get_close_matches(n=1): one recipe offered where several are close)
def test_a_misspelt_bare_recipe_name_lists_every_close_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the checkout's
    assert main(["--config", "deit3_fine"]) == 2
    listed = ", ".join(os.path.join(ROOT, "recipes", f"{name}.yaml") for name in ("deit3_finetune", "deit3"))
    assert capsys.readouterr().err.rstrip().endswith(f"the closest recipes: {listed})")


def test_a_recipes_model_kwargs_refused_by_another_model_say_where_they_came_from(tmp_path):
    # the DeiT-III recipe under --model resnet18: timm's refusal of img_size named --model-kwargs, which the user
    # never passed; the keys the file set are named, with the command line's way to drop them (`key=`)
    from masksub_kernels.training.run_setup import _create_model

    def build(*flags):
        args = parse_args_with_config(build_parser(), list(flags))
        args.model_kwargs = parse_kwargs(args.model_kwargs)
        return _create_model(args, 10, 3)

    recipe = os.path.join(ROOT, "recipes", "deit3.yaml")
    with pytest.raises(UsageError, match=r"got an unexpected keyword argument 'img_size'; img_size, init_values came "
                       r"from --config '.*deit3.yaml', for its model 'deit3_base_patch16_224': drop them with "
                       r"--model-kwargs img_size= init_values=$"):  # fmt: skip
        build("--config", recipe, "--model", "resnet18")
    # one given again on the command line is the user's own: not named (nor offered for dropping)
    with pytest.raises(UsageError, match=r"; init_values came from --config .*: drop them with --model-kwargs init"):
        build("--config", recipe, "--model", "resnet18", "--model-kwargs", "img_size=160")
    # one of them dropped: only the other is named
    with pytest.raises(UsageError, match=r"; init_values came from --config .*: drop them with --model-kwargs init"):
        build("--config", recipe, "--model", "resnet18", "--model-kwargs", "img_size=")
    # both dropped (and the recipe's uniform drop-path schedule is for ViTs): the CNN builds
    assert build("--config", recipe, "--model", "resnet18", "--model-kwargs", "img_size=", "init_values=",
                 "--drop-path-schedule", "linear").num_classes == 10  # fmt: skip
    # the file's own model refusing its own kwargs: no hint (nothing to drop); nor without --config
    cfg = tmp_path / "own.yaml"
    cfg.write_text("model: resnet18\nmodel-kwargs: {img_size: 32}\n")
    with pytest.raises(UsageError, match=r"argument 'img_size'$"):
        build("--config", str(cfg))
    with pytest.raises(UsageError, match=r"argument 'img_size'$"):
        build("--model", "resnet18", "--model-kwargs", "img_size=32")
    # a list of 'key=value' strings in the file, and timm's assertion (a ValueError path) get the hint too
    cfg.write_text("model: vit_tiny_patch16_224\nmodel-kwargs: ['global_pool=bogus']\n")
    with pytest.raises(UsageError, match=r"; global_pool came from --config .*'vit_tiny_patch16_224'"):
        build("--config", str(cfg), "--model", "vit_small_patch16_224")


def test_the_recipe_hint_reads_model_kwargs_either_spelling_and_needs_the_files_own_model(tmp_path):
    # helper-340's mutation audit: a file's model_kwargs (the underscore spelling load_config takes) got no hint, and
    # a file that names no model must give none ("for its model None")
    from masksub_kernels.training.config import config_kwargs_hint

    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("model: deit3_base_patch16_224\nmodel_kwargs: {img_size: 32, init_values: 0.1}\n")
    assert config_kwargs_hint(str(cfg), "resnet18", {"img_size": 32, "drop_rate": 0.0}) == (
        f"; img_size came from --config {str(cfg)!r}, for its model 'deit3_base_patch16_224': drop them with "
        "--model-kwargs img_size="
    )
    cfg.write_text("model_kwargs: {img_size: 32}\n")
    assert config_kwargs_hint(str(cfg), "resnet18", {"img_size": 32}) == ""
    assert config_kwargs_hint(None, "resnet18", {"img_size": 32}) == ""
