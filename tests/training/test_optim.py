"""training/optim.py: a frozen wrapper parameter stays out of the layer-decay groups; lookahead names checked by
their inner optimizer (helper-171's mutation audit); weight decay without layer decay, and the final norm at the
head's scale as in FT-CLIP and MAE (helper-225's)."""

import types

import pytest
import timm
import torch

from masksub_kernels.training import MaskSub
from masksub_kernels.training.optim import build_optimizer


def test_a_frozen_mask_token_stays_out_of_the_layer_decay_groups():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 2), num_classes=10)  # fmt: skip
    ms = MaskSub(swin)
    ms.mask_token.requires_grad_(False)
    args = types.SimpleNamespace(opt="adamw", lr=1e-3, weight_decay=0.05, momentum=None, opt_eps=None,
                                 opt_betas=None, layer_decay=0.5)  # fmt: skip
    optimizer = build_optimizer(args, ms, swin)
    assert not any(p is ms.mask_token for g in optimizer.param_groups for p in g["params"])


def test_a_lookahead_name_is_checked_by_its_inner_optimizer():  # optim.py:55 split("_")[-1]
    import pytest
    import torch

    from masksub_kernels.training.run_setup import UsageError

    model = torch.nn.Linear(3, 2)
    args = types.SimpleNamespace(opt="lookahead_adamw", lr=1e-3, weight_decay=0.05, momentum=0.5, opt_eps=None,
                                 opt_betas=None, layer_decay=None)  # fmt: skip
    with pytest.raises(UsageError, match="takes no --momentum"):
        build_optimizer(args, model, model)


def _args(**kw):
    base = dict(opt="adamw", lr=1e-3, weight_decay=0.05, momentum=None, opt_eps=None, opt_betas=None, layer_decay=None)
    return types.SimpleNamespace(**{**base, **kw})


# kills optim.py:65 `create_optimizer_v2(trained, ..., weight_decay=args.weight_decay, ...)` -> the keyword dropped:
# without --layer-decay the groups come from timm's own split, which uses that keyword; timm's default is 0, so every
# recipe without layer decay (DeiT-III, Swin, RSB) trained with no weight decay at all and no test saw it (the
# layer-decay path carries its own value in layer_decay_groups)
def test_weight_decay_reaches_the_optimizer_without_layer_decay():
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=1,
                              num_classes=3)  # fmt: skip
    ms = MaskSub(model)
    optimizer = build_optimizer(_args(weight_decay=0.3), ms, model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    # matrices decayed; biases, norms and the no_weight_decay() tokens (3-D) not
    assert decay[id(params["blocks.0.attn.qkv.weight"])] == 0.3
    assert decay[id(params["head.weight"])] == 0.3
    for name in ("cls_token", "pos_embed", "blocks.0.norm1.weight", "head.bias"):
        assert decay[id(params[name])] == 0.0, name
    assert len(decay) == len(params)  # every parameter in exactly one group


# FT-CLIP (recipes/clip_finetune.yaml, --fc-norm per-token) puts its new fc_norm in timm's final `norm` slot. timm's
# ViT group_matcher maps `^norm` to MATCH_PREV_GROUP (99999), i.e. into the LAST BLOCK's layer, so
# param_groups_layer_decay gives it lr x d (0.6) where FT-CLIP's optim_factory.get_num_layer_for_vit gives fc_norm
# num_max_layer - 1 (the head's, lr x 1) and MAE's lr_decay.py gives `norm` num_layers (the head's too). optim.py's
# docstring said "the rest (final norm, fc_norm, head) layer depth + 1" (helper-225: a bug, fixed).
def test_the_final_norm_gets_the_heads_scale_as_in_ft_clip_and_mae():
    model = timm.create_model(
        "vit_base_patch16_clip_quickgelu_224",
        img_size=32,
        patch_size=16,
        embed_dim=16,
        depth=3,
        num_heads=2,
        num_classes=5,
        global_pool="avg",
        fc_norm=False,
    )  # per-token, as the recipe
    for p in model.patch_embed.parameters():  # --freeze-patch-embed (FT-CLIP's freeze_conv1)
        p.requires_grad_(False)
    ms = MaskSub(model)
    optimizer = build_optimizer(_args(layer_decay=0.5), ms, model)
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    # FT-CLIP: class / position embedding and ln_pre (timm's norm_pre) layer 0, block i layer i + 1, fc_norm and
    # head layer depth + 1: lr x 0.5 ** (depth + 1 - layer)
    want = {"cls_token": 0.0625, "pos_embed": 0.0625, "norm_pre.weight": 0.0625, "blocks.0.norm1.weight": 0.125,
            "blocks.2.mlp.fc2.weight": 0.5, "norm.weight": 1.0, "norm.bias": 1.0, "head.weight": 1.0}  # fmt: skip
    for name, expected in want.items():
        assert scale[id(params[name])] == pytest.approx(expected), name
    assert not any(id(p) in scale for p in model.patch_embed.parameters())  # frozen: in no group


# helper-228: a regression of 10694d6 (_FinalNormAtHead), fixed: a group_matcher that returns a function (CaiT,
# InceptionV3, InceptionResNetV2) made --layer-decay fail with "--opt adamw does not take these settings
# ['param_group_fn']"; a model without group_matcher (PoolFormer / MetaFormer, PiT) lost its
# pretrained_cfg["classifier"], so timm grouped every parameter as the head: layer decay silently off (1 lr scale
# instead of 12 / 15)
@pytest.mark.parametrize("name", ["cait_xxs24_224", "poolformer_s12"])
def test_layer_decay_keeps_timms_grouping_for_matcher_functions_and_models_without_a_matcher(name):
    kw = dict(img_size=32, depth=2, embed_dim=16, num_heads=1) if name.startswith("cait") else {}
    model = timm.create_model(name, num_classes=3, **kw)
    optimizer = build_optimizer(_args(layer_decay=0.5), model, model)
    assert len({g["lr_scale"] for g in optimizer.param_groups}) > 2


# kills optim.py `kwargs["betas"] = tuple(args.opt_betas)` -> `pass` (helper-237 O10): --opt-betas was checked (range,
# the optimizer's has_betas) but never read by a test of the built optimizer: timm's default (0.9, 0.999) in its place
# passed every test (the Swin recipe's betas are that default)
def test_opt_betas_reach_every_parameter_group():
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=1,
                              num_classes=3)  # fmt: skip
    for layer_decay in (None, 0.5):
        optimizer = build_optimizer(_args(opt_betas=[0.8, 0.95], layer_decay=layer_decay), model, model)
        assert {g["betas"] for g in optimizer.param_groups} == {(0.8, 0.95)}, layer_decay


# kills helper-237's O13: optim.py:117 build_ema `ModelEmaV3(unwrap_model(model), decay=...)` ->
# `ModelEmaV3(model, decay=...)` (run_setup.py:485 passes the torch.compile'd model under --compile --model-ema)
def test_the_ema_of_a_compiled_model_is_a_copy_of_the_eager_model():
    # An EMA of the OptimizedModule names its weights `_orig_mod.*`: cli.py saves them as the checkpoint's "ema" and
    # "state_dict_ema" (which timm and a resume without --compile cannot load, where "module" holds the eager names)
    # and its evaluation compiles a second graph. torch.compile builds no graph until the first call: cheap.
    from masksub_kernels.training.optim import build_ema

    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                            num_classes=3)  # fmt: skip
    ema = build_ema(types.SimpleNamespace(model_ema=True, model_ema_decay=0.5), torch.compile(vit))
    assert type(ema.module) is type(vit) and ema.module is not vit  # a copy, not the model trained
    assert list(ema.module.state_dict()) == list(vit.state_dict())  # the eager names: no `_orig_mod.` prefix
