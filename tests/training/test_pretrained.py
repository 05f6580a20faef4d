"""masksub_kernels.training.pretrained: the load summary and the checkpoint formats' key rules (helper-177's
mutation audit), and what the fine-tuning recipes load from MAE / CLIP / OpenCLIP files (helper-221's second pass,
with test_recipes.py's fixtures); each test names the mutant it kills."""

import os

import pytest
import timm
import torch
from test_recipes import SHRINK, _mae_checkpoint, _openai_clip_checkpoint, _recipe, _tiny_vit

from masksub_kernels.training.cli import build_parser
from masksub_kernels.training.config import parse_args_with_config
from masksub_kernels.training.pretrained import LoadReport, _trained_per_token, detect_format, load_initial_checkpoint


def test_pretrained_summary_lists_six_ignored_keys_without_a_zero_more():
    # kills pretrained.py:64 `len(self.ignored) > 6` -> `>= 6` ("... and 0 more")
    six = LoadReport(format="timm", loaded=1, ignored=[f"k{i}" for i in range(6)]).summary("f.pth")
    assert six.endswith("not used: k0, k1, k2, k3, k4, k5"), six
    seven = LoadReport(format="timm", loaded=1, ignored=[f"k{i}" for i in range(7)]).summary("f.pth")
    assert seven.endswith("k5 and 1 more"), seven


def test_pretrained_module_prefix_is_stripped_only_when_every_key_has_it():
    # kills pretrained.py:120 `any(...) and all(...)` -> `any(...) or all(...)` (a state with one 'module.' key had
    # every key cut by 7 characters)
    t = torch.zeros(1)
    assert detect_format({"module.head.weight": t, "blocks.0.weight": t})[1].keys() == {
        "module.head.weight",
        "blocks.0.weight",
    }
    assert detect_format({"module.a": t, "module.b": t})[1].keys() == {"a", "b"}


# helper-221's second-pass mutation audit of --initial-checkpoint (47 mutants, 14 gaps, no bug)


# Kills pretrained.py:185 `key.startswith("norm.")` -> `startswith("norm")`
# (with --fc-norm per-token CLIP's ln_pre, timm's norm_pre, was dropped with ln_post and silently stayed at its
# LayerNorm initialisation: no error, as the key is in the file). The fixture's ln_pre is a LayerNorm's ones and
# zeros, so it is moved off them here: every tensor but the fresh norm and the classifier is the file's.
def test_ft_clips_fresh_norm_loads_every_other_tensor_ln_pre_included(tmp_path):
    src = _openai_clip_checkpoint(tmp_path / "clip.pt")
    out = torch.load(tmp_path / "clip.pt")
    g = torch.Generator().manual_seed(2)
    for key in ("weight", "bias"):
        out[f"visual.ln_pre.{key}"] = out[f"visual.ln_pre.{key}"] + torch.randn(32, generator=g)
        src[f"norm_pre.{key}"] = out[f"visual.ln_pre.{key}"]
    torch.save(out, tmp_path / "clip.pt")
    model = _tiny_vit("vit_base_patch16_clip_quickgelu_224", num_classes=10, global_pool="avg", fc_norm=False)
    report = load_initial_checkpoint(model, str(tmp_path / "clip.pt"), fresh_norm=True)
    assert sorted(report.reinitialised) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert not any(key.startswith("norm_pre") for key in report.ignored), report.ignored
    for key, value in model.state_dict().items():
        if not key.startswith(("norm.", "head.")):
            assert torch.equal(value, src[key]), key
    assert report.loaded == len(model.state_dict()) - 4


# Kills pretrained.py:122 `or any(k.startswith("visual.trunk.") ...)`
# dropped: an OpenCLIP checkpoint with a timm trunk was read as a plain timm file, so the image-text projection
# (visual.head.proj, which timm's filter maps to head.weight and a zero head.bias) became the classifier whenever
# the number of classes equals the projection's width -- fine-tuning from CLIP's embedding space, silently.
def test_an_openclip_timm_trunk_checkpoint_loads_the_trunk_and_not_the_projection(tmp_path):
    trunk = _tiny_vit("vit_base_patch16_224", num_classes=0, global_pool="avg").state_dict()
    g = torch.Generator().manual_seed(3)
    file = {f"visual.trunk.{key}": value + torch.randn(value.shape, generator=g) for key, value in trunk.items()}
    file["visual.head.proj.weight"] = torch.randn(10, 32, generator=g)  # as wide as the model's 10 classes
    file.update({"logit_scale": torch.tensor(4.6), "text.token_embedding.weight": torch.randn(50, 10)})
    torch.save(file, tmp_path / "open_clip.pth")
    model = _tiny_vit("vit_base_patch16_224", num_classes=10, global_pool="avg")
    head = model.head.weight.detach().clone()
    report = load_initial_checkpoint(model, str(tmp_path / "open_clip.pth"), head_init_scale=0.5)
    assert report.format == "clip"
    assert sorted(report.reinitialised) == ["head.bias", "head.weight"]
    assert "head.weight" in report.ignored and "head.bias" in report.ignored
    assert {"logit_scale", "text.token_embedding.weight"} <= set(report.ignored)  # the text tower, listed unused
    assert len(report.ignored) == len(set(report.ignored))
    torch.testing.assert_close(model.head.weight, head * 0.5, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, file[f"visual.trunk.{key}"]), key


# Target: tests/training/test_recipes.py (beside test_per_token_head_is_ft_clips). Kills pretrained.py:151
# `and args.get("global_pool") in AVERAGING` dropped (a token-pool run's final norm, built with fc_norm=False, was
# loaded as a trained per-token head norm) and `kwargs.get("fc_norm") is False` -> `not kwargs.get("fc_norm")` (a
# run that left fc_norm to timm counted as one that turned it off). The module docstring's rule, case by case.
def test_which_masksub_runs_trained_a_per_token_head_norm():
    def run(**args):
        return {"module": {}, "num_updates": 1, "args": args}

    assert _trained_per_token(run(fc_norm="per-token", model_kwargs={}, global_pool="avg"))
    assert _trained_per_token(run(fc_norm=None, model_kwargs={"fc_norm": False}, global_pool="avgmax"))
    assert not _trained_per_token(run(fc_norm=None, model_kwargs={"fc_norm": False}, global_pool="token"))
    assert not _trained_per_token(run(fc_norm=None, model_kwargs={}, global_pool="avg"))
    assert not _trained_per_token(run(fc_norm=None, model_kwargs={"fc_norm": None}, global_pool="avg"))
    assert not _trained_per_token({"model": {}, "args": {"fc_norm": "per-token"}})  # not a masksub-train file


# Target: tests/training/test_recipes.py (test_mae_checkpoint_mapping). Kills pretrained.py:224
# `loaded=len(load)` -> `len(state)` (the summary's "loaded N tensors" counted the final norm MAE drops).
def test_the_mae_load_report_counts_only_what_was_copied(tmp_path):
    encoder = _mae_checkpoint(tmp_path / "mae.pth")
    model = _tiny_vit("vit_base_patch16_224", num_classes=10, global_pool="avg")
    report = load_initial_checkpoint(model, str(tmp_path / "mae.pth"))
    assert report.loaded == len(encoder) - 2 == len(model.state_dict()) - 4  # not norm.*; not head.*, fc_norm.*
    assert report.summary("mae.pth").startswith(f"loaded {len(encoder) - 2} tensors from 'mae.pth' (mae format)")


# Target: tests/training/test_hf_more.py (test_a_swin_runs_checkpoint_drops_the_mask_token_and_a_resnets_...).
# Kills pretrained.py:221 the scale applied to weight matrices only: FT-CLIP scales the head's weight and bias
# (head.weight.data.mul_(init_scale); head.bias.data.mul_(init_scale)); a ViT's bias starts at zero, a ResNet's fc
# at nn.Linear's uniform draw, where the difference shows.
def test_head_init_scale_scales_the_classifiers_bias_too(tmp_path):
    source = timm.create_model("resnet10t", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "resnet.pth")
    model = timm.create_model("resnet10t", num_classes=10)
    bias = model.fc.bias.detach().clone()
    assert bias.abs().max() > 0
    load_initial_checkpoint(model, str(tmp_path / "resnet.pth"), head_init_scale=0.5)
    torch.testing.assert_close(model.fc.bias, bias * 0.5, rtol=0, atol=0)


# Kills run_setup.py:504 `args.head_init_scale` -> None (the recipes'
# --head-init-scale never reached the loader: the heads stayed at timm's std 0.02), recipes/clip_finetune.yaml's
# and mae_finetune.yaml's head-init-scale changed (0.01, 0.1), and clip_finetune's model changed to
# vit_base_patch16_clip_224 (GELU: OpenAI's weights were trained with QuickGELU; the file loads all the same).
def test_the_finetune_recipes_build_their_papers_head_and_activation(tmp_path):
    from masksub_kernels.training.run_setup import check_args, setup

    _mae_checkpoint(tmp_path / "mae.pth")
    _openai_clip_checkpoint(tmp_path / "clip.pt")
    for name, file in (("mae_finetune", "mae.pth"), ("clip_finetune", "clip.pt")):
        argv = ["--config", _recipe(name), *SHRINK[name], "--output", "unused", "--device", "cpu",
                "--initial-checkpoint", str(tmp_path / file)]  # fmt: skip
        args = parse_args_with_config(build_parser(), argv)
        check_args(args)
        model = setup(args).model
        std = model.head.weight.std().item()
        assert 1e-5 < std < 4e-5, (name, std)  # timm's trunc-normal 0.02 x 0.001 (MAE's std 2e-5; FT-CLIP's 0.001)
        assert torch.equal(model.head.bias, torch.zeros(10)), name
        act = model.blocks[0].mlp.act
        assert isinstance(act, timm.layers.QuickGELU) == (name == "clip_finetune"), (name, act)


# Target: tests/training/test_recipes.py (beside test_deit3_finetune_from_the_pretraining_checkpoint, which checks
# the shapes only). A finer grid than the file's resamples the position embedding in timm's filter: DeiT-III's
# (192 -> 224 px) has no class-token row (no_embed_class), all of it is the grid; MAE's ViT has one, kept as it is
# in front of the resampled grid. A guard on the timm behaviour the recipes rely on (no mutant of this project's
# code reaches it): with timm's resample given a wrong old grid ((1, 9), monkeypatched) it fails; one losing the
# class token's row is a loud reshape error here, not a silent one.
def test_a_finer_grid_resamples_the_position_embedding_behind_its_prefix(tmp_path):
    # as DeiT's main.py and MAE's util/pos_embed.py: bicubic, align_corners=False, no antialiasing (helper-232:
    # timm's filter antialiased by default, another cubic kernel)
    import torch.nn.functional as F

    tiny = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    for name, prefix in (("deit3_base_patch16_224", 0), ("vit_base_patch16_224", 1)):
        pre = timm.create_model(name, img_size=24, **tiny)
        with torch.no_grad():
            pre.pos_embed.normal_()
        torch.save({"model": pre.state_dict()}, tmp_path / "pre.pth")
        model = timm.create_model(name, img_size=32, **tiny)
        report = load_initial_checkpoint(model, str(tmp_path / "pre.pth"))
        assert report.reinitialised == [] and model.pos_embed.shape == (1, prefix + 16, 32), name
        assert torch.equal(model.pos_embed[:, :prefix], pre.pos_embed[:, :prefix]), name
        old = pre.pos_embed[:, prefix:].reshape(1, 3, 3, 32).permute(0, 3, 1, 2)
        grid = F.interpolate(old, size=(4, 4), mode="bicubic", align_corners=False)
        torch.testing.assert_close(model.pos_embed[:, prefix:], grid.permute(0, 2, 3, 1).reshape(1, 16, 32), msg=name)


# Target: tests/training/test_hf_more.py (uses _models.tiny_vit; here its own tiny ViT). Kills pretrained.py:204
# `(fresh_norm and key.startswith("norm."))` -> `key.startswith("norm.")`: a file without the model's final norm
# (a partial export, or one from a model that had none) left it at its initialisation with no error; only
# --fc-norm per-token (fresh_norm) starts that norm fresh on purpose.
def test_a_file_without_the_models_final_norm_is_refused_unless_it_starts_fresh(tmp_path):
    import pytest

    from masksub_kernels.training.run_setup import UsageError

    source = _tiny_vit("vit_base_patch16_224", num_classes=10, global_pool="avg", fc_norm=False)
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("norm.")}, tmp_path / "no_norm.pth")
    model = _tiny_vit("vit_base_patch16_224", num_classes=10, global_pool="avg", fc_norm=False)
    with pytest.raises(UsageError, match=r"missing norm\.weight; missing norm\.bias"):
        load_initial_checkpoint(model, str(tmp_path / "no_norm.pth"))
    report = load_initial_checkpoint(model, str(tmp_path / "no_norm.pth"), fresh_norm=True)
    assert report.reinitialised == ["norm.weight", "norm.bias"]


# Target: tests/training/test_pretrained.py. Kills pretrained.py:109 `"num_updates" in obj` dropped (a DeepSpeed
# {'module': ...} file, as BEiT / FT-CLIP save, taken for a masksub-train checkpoint), :104 `_tensors` keeping
# non-tensor entries (a flat state dict with an 'epoch' refused: "unexpected epoch"), and :115
# the wrappers' order changed to ('model', 'state_dict', ...) (a file with both took the other one).
def test_pretrained_formats_wrappers_and_non_tensor_entries():
    from masksub_kernels.training.pretrained import detect_format

    a, b = torch.zeros(1), torch.ones(1)
    assert detect_format({"module": {"blocks.0.w": a}}) == ("timm", {"blocks.0.w": a})
    assert detect_format({"module": {"model.w": a}, "num_updates": 1})[0] == "masksub"
    assert detect_format({"pos_embed": a, "epoch": 5, "arch": "vit"})[1] == {"pos_embed": a}
    assert detect_format({"state_dict": {"w": a}, "model": {"w": b}})[1]["w"] is a


def test_an_openai_torchscript_clip_file_loads_without_torchs_warnings(tmp_path):
    # helper-296's probe: reading OpenAI's TorchScript .pt printed torch.load's "dispatching to 'torch.jit.load'"
    # UserWarning and torch.jit.load's deprecation FutureWarning; the same tensors as the torch.save'd file
    import warnings

    from masksub_kernels.training.pretrained import read_state_dict

    for name, torchscript in (("ts.pt", True), ("plain.pt", False)):
        torch.manual_seed(0)  # (the fixture's text tower is drawn from the global generator)
        _openai_clip_checkpoint(tmp_path / name, torchscript=torchscript)
    with warnings.catch_warnings(record=True) as caught:  # (not "error": the old code caught that and read on)
        warnings.simplefilter("always")
        scripted = read_state_dict(str(tmp_path / "ts.pt"))
    assert not caught, [str(w.message) for w in caught]
    plain = read_state_dict(str(tmp_path / "plain.pt"))
    assert scripted.keys() == plain.keys() and all(torch.equal(scripted[k], plain[k]) for k in plain)


def test_the_clip_summary_names_no_key_both_initialised_and_unused(tmp_path):
    # helper-296's probe: FT-CLIP's load listed norm.*, head.* under "initialised here" and again under "not used"
    # (the file's ln_post / proj under timm's names): they are named as the file's, beside the model's
    _openai_clip_checkpoint(tmp_path / "clip.pt")
    model = _tiny_vit("vit_base_patch16_clip_quickgelu_224", num_classes=10, global_pool="avg", fc_norm=False)
    summary = load_initial_checkpoint(model, str(tmp_path / "clip.pt"), 0.001, fresh_norm=True).summary("c.pt")
    initialised, unused = summary.split("; initialised here: ")[1].split("; not used: ")
    assert initialised.startswith("norm.weight, norm.bias, head.weight, head.bias instead of the file's norm.weight")
    assert initialised.endswith("(CLIP's ln_post and proj, under timm's names)"), summary
    assert unused == "logit_scale, token_embedding.weight, transformer.resblocks.0.ln_1.weight", summary


# kills pr1: the Hub spelling `("hf-hub:", "hf_hub:")` -> `("hf-hub:",)` (timm's hf_hub: spelling called a URL);
# pr2: `and not os.path.exists(path)` -> `and True` (a folder named like one, here, called a URL / Hub name, not the
# folder it is)
def test_the_download_refusal_names_hub_names_in_both_spellings_and_not_a_local_folder(tmp_path, monkeypatch):
    from masksub_kernels.training.pretrained import read_state_dict
    from masksub_kernels.training.run_setup import UsageError

    with pytest.raises(UsageError, match="'hf_hub:timm/vit_tiny' is a Hugging Face Hub name: masksub-train does"):
        read_state_dict("hf_hub:timm/vit_tiny")
    monkeypatch.chdir(tmp_path)
    os.makedirs("hf-hub:weights")
    with pytest.raises(UsageError, match=r"^initial checkpoint 'hf-hub:weights' is a directory, not a file$"):
        read_state_dict("hf-hub:weights")


# kills pr5: LoadReport.summary's `clip = self.format == "clip"` -> `clip = True` (a timm file's classifier of another
# shape was said to be CLIP's proj)
def test_a_replaced_classifier_of_a_timm_file_is_not_called_clips():
    from masksub_kernels.training.pretrained import LoadReport

    report = LoadReport(format="timm", loaded=3, reinitialised=["head.weight", "head.bias"],
                        ignored=["head.weight", "head.bias", "extra.x"])  # fmt: skip
    assert report.summary("f.pth") == (
        "loaded 3 tensors from 'f.pth' (timm format); initialised here: head.weight, head.bias instead of the file's "
        "head.weight, head.bias; not used: extra.x"
    )


# kills cl4: main's `if _PROGRESS.rank == 0:` -> `if True:` (each of a torchrun's processes printed the Ctrl-C line:
# world x the same message; before setup the rank is torchrun's RANK)
def test_a_ctrl_c_is_reported_by_rank_zero_only(tmp_path, monkeypatch, capsys):
    from test_cli_more import TINY_VIT

    from masksub_kernels.train import main
    from masksub_kernels.training import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "setup", interrupted)
    argv = [*TINY_VIT, "--epochs", "1", "--output", str(tmp_path)]
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 130
    assert "interrupted" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "masksub-train: interrupted before training; no checkpoint written yet"
    )
