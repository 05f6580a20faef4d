"""transformers' ViT-like image classifiers in the vit family (masksub_kernels/training/hf_vit.py).

The sub-branch is the model's own forward with its embeddings' output cut to the prefix tokens and K random patch
tokens. The references: a spy on the first encoder layer's input (the embeddings' full output gathered by the
public ops' ids for the seed, the prefix kept: every class), and for ViT a forward written by hand from the model's
parts (values and every gradient in fp64).
"""

from __future__ import annotations

import copy
import io
import types
import warnings

import pytest
import torch
from _models import assert_grads_close, grads, reference_loss

import masksub_kernels as mk
from masksub_kernels.training import MaskSub

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
# class -> (config changes, prefix tokens: class, distillation and register tokens)
CLASSES = {
    "ViTForImageClassification": ({}, 1),
    "ViTMSNForImageClassification": ({}, 1),
    "DeiTForImageClassification": ({}, 2),
    "DeiTForImageClassificationWithTeacher": ({}, 2),
    "Dinov2ForImageClassification": ({}, 1),
    "Dinov2WithRegistersForImageClassification": ({"num_register_tokens": 3}, 4),
    "IJepaForImageClassification": ({}, 0),
    "CLIPForImageClassification": ({}, 1),
    "SiglipForImageClassification": ({}, 0),
}


def tiny_hf(name: str, **changes) -> torch.nn.Module:
    """A tiny fp64 transformers classifier: 32 px, patch 8 (16 patches), 5 classes, dropout off."""
    cls = getattr(transformers, name)
    settings = {**TINY, **CLASSES[name][0], **changes}
    config = cls.config_class(num_labels=settings["num_labels"])
    for target in (config, getattr(config, "vision_config", None)):
        for key, value in settings.items():
            if target is not None and key != "num_labels":
                setattr(target, key, value)
    torch.manual_seed(0)
    return cls(config).double().train()


def _images(batch: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _first_layer(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for n, m in model.named_modules() if n.endswith(("layers.0", "layer.0")))


def _embeddings(model: torch.nn.Module) -> torch.nn.Module:
    from masksub_kernels.training.hf_vit import hf_vit_embeddings

    return hf_vit_embeddings(model)


def _kept(full: torch.Tensor, prefix: int, ratio: float, seed: int) -> torch.Tensor:
    """The expected sub-branch tokens: the prefix, then the op's kept patch tokens for the seed, in its order."""
    patches = full.shape[1] - prefix
    ids = mk.random_keep_indices(full.shape[0], patches, mk.num_kept_tokens(patches, ratio), seed=seed)
    return mk.gather_tokens(full, ids, num_prefix_tokens=prefix)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_the_encoder_gets_the_prefix_and_the_kept_patch_tokens(name):
    model = tiny_hf(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        ms = MaskSub(model, mask_ratio=0.75)
    assert ms.family == "vit"
    images, seen = _images(), []
    hook = _first_layer(model).register_forward_pre_hook(lambda m, args, kw: seen.append(args[0] if args else
                                                         kw["hidden_states"]), with_kwargs=True)  # fmt: skip
    full = _embeddings(model)(images)
    ms.sub_logits(images, seed=7)
    hook.remove()
    prefix = CLASSES[name][1]
    assert full.shape[1] == 16 + prefix and seen[0].shape[1] == prefix + 4  # 16 patches, 4 kept at r = 0.75
    before_encoder = getattr(getattr(model, "vision_model", None), "pre_layrnorm", torch.nn.Identity())  # CLIP's
    torch.testing.assert_close(seen[0], before_encoder(_kept(full, prefix, 0.75, 7)), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_the_step_trains_what_the_model_trains_and_ratio_zero_is_the_main_branch(name):
    model = tiny_hf(name)
    images, target = _images(), torch.tensor([0, 3, 4])
    torch.testing.assert_close(MaskSub(model, mask_ratio=0.0).sub_logits(images, seed=1), model(images).logits)
    ms = MaskSub(model)
    first, again = ms.sub_logits(images, seed=1), ms.sub_logits(images, seed=1)
    assert torch.equal(first, again) and not torch.equal(first, ms.sub_logits(images, seed=2))
    model(images).logits.sum().backward()
    trained_alone = {n for n, p in model.named_parameters() if p.grad is not None}  # not e.g. DINOv2's mask token
    model.zero_grad(set_to_none=True)
    ms(images, target)["loss"].backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trained_alone


def _vit_by_hand(model, images: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """ViT's sub-branch from its parts: embeddings, the kept tokens, the layers, the norm, the class token's head."""
    vit = model.vit
    x = _kept(vit.embeddings(images), 1, ratio, seed)
    for layer in getattr(vit, "layers", None) or vit.encoder.layer:  # transformers 5.x / 4.x
        x = layer(x)
        x = x[0] if isinstance(x, tuple) else x
    return model.classifier(vit.layernorm(x)[:, 0])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_vit_matches_the_sub_branch_written_by_hand(checkpointing):
    model, twin = tiny_hf("ViTForImageClassification"), tiny_hf("ViTForImageClassification")
    if checkpointing:  # transformers 5.x's name, else 4.x's
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    images, target = _images(), torch.tensor([1, 0, 4])
    ms = MaskSub(model)
    if checkpointing:  # the sub-branch's layers run through the model's checkpointing
        layer, calls = _first_layer(model), []
        own = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *args, **kwargs: calls.append(1) or own(*args, **kwargs)
        ms.sub_logits(images, seed=5)
        assert calls == [1]
    got = ms(images, target, seed=5)
    got["loss"].backward()
    sub = _vit_by_hand(twin, images, 0.5, 5)
    want, *_ = reference_loss(twin(images).logits, sub, target)
    want.backward()
    torch.testing.assert_close(got["loss"], want.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ms.sub_logits(images, seed=5), sub, rtol=1e-12, atol=1e-12)
    assert_grads_close(grads(model), grads(twin), rtol=1e-5, atol=1e-9)  # the fp32 loss's gradient, as the others


def test_one_lasting_hook_copies_and_pickles_get_their_own():
    from masksub_kernels.training.hf_vit import TokenDrop

    model = tiny_hf("ViTForImageClassification")
    MaskSub(model), MaskSub(model)
    hooks = [h for h in _embeddings(model)._forward_hooks.values() if isinstance(h, TokenDrop)]
    assert len(hooks) == 1 and hooks[0].plan is None
    images = _images()
    want = MaskSub(model).sub_logits(images, seed=3)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    for other in (copy.deepcopy(model), loaded):
        (hook,) = [h for h in _embeddings(other)._forward_hooks.values() if isinstance(h, TokenDrop)]
        assert hook is not hooks[0]
        torch.testing.assert_close(MaskSub(other).sub_logits(images, seed=3), want, rtol=0, atol=0)
        torch.testing.assert_close(other(images).logits, model(images).logits, rtol=0, atol=0)  # main: uncut


def test_under_torch_compile_the_sub_branch_is_the_eager_one():
    model = tiny_hf("DeiTForImageClassification")
    images = _images()
    want = MaskSub(model).sub_logits(images, seed=4)
    compiled = MaskSub(torch.compile(model, backend="eager"))
    torch.testing.assert_close(compiled.sub_logits(images, seed=4), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled(images, branch="main"), model(images).logits, rtol=1e-12, atol=1e-12)


def test_options_and_sizes_are_checked():
    model = tiny_hf("ViTForImageClassification")
    assert MaskSub(model, family="vit").family == "vit"
    for variant in ("drop", "path"):
        with pytest.raises(ValueError, match=r"defined for timm ViTs.*use variant='mask'"):
            MaskSub(model, variant=variant)
    with pytest.raises(ValueError, match="cell_size is an option of the grid masks"):
        MaskSub(model, cell_size=4)
    with pytest.raises(ValueError, match="0 of 1 tokens: at least one must be kept"):
        MaskSub(tiny_hf("ViTForImageClassification", image_size=8))  # 1 patch: r = 0.5 keeps none
    for size in (64, 40):  # helper-109: passed, and the forward then refused them (no interpolate_pos_encoding)
        with pytest.raises(ValueError, match=f"ViTForImageClassification refuses {size} x {size} images: Input image"):
            MaskSub(model).check_input_size(size)
    ms = MaskSub(tiny_hf("Dinov2ForImageClassification"), mask_ratio=0.9)
    ms.check_input_size(64)  # 64 patches keep 6 (DINOv2 interpolates its position embedding)
    with pytest.raises(ValueError, match="0 of 4 tokens: at least one must be kept"):
        ms.check_input_size(16)  # 4 patches keep none


def test_cross_entropy_over_one_class_is_refused():
    # helper-109: num_labels=1 (Hugging Face's regression convention) with loss='ce' trained on a loss of 0; refused
    # at construction since helper-302's probe (was: at the first step), saying which targets loss='bce' then takes
    with pytest.raises(ValueError, match=r"num_labels=1, and loss='ce' .* float targets \[B, 1\] of 0\. / 1\."):
        MaskSub(tiny_hf("ViTForImageClassification", num_labels=1))
    # a model without a transformers config: at its first step, in train and eval mode
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).double()
    ms, images, target = MaskSub(plain, family="pixel", cell_size=8), _images(), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"loss='ce' needs logits of at least 2 classes, got 1: .* \[B, 1\] of 0"):
        ms(images, target)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ms.eval()(images, target)


def test_bce_on_one_logit_takes_float_targets_b_by_1():
    # helper-302: class ids [B] were one-hot over one class (all 0: every row a positive, trained silently; a 1:
    # "class ids must be in [0, 1)") and float [B] a bare shape error
    ms, images = MaskSub(tiny_hf("ViTForImageClassification", num_labels=1), loss="bce"), _images()
    for target in (torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0]), torch.tensor([0.0, 1.0, 0.0])):
        with pytest.raises(ValueError, match=r"loss='bce' on one logit .* takes float targets \[B, 1\] of 0\. / 1\."):
            ms(images, target)
    with pytest.raises(ValueError, match="one-hot over a single class"):
        ms.eval()(images, torch.zeros(3, dtype=torch.long))
    assert ms.train()(images, torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64))["loss"] > 0


def test_the_configs_problem_type_and_return_dict_are_checked_at_construction():
    # helper-302: a multi-label config trained silently on softmax CE; regression and return_dict=False failed later
    model = tiny_hf("ViTForImageClassification")
    model.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match=r"problem_type='multi_label_classification', .* use loss='bce'"):
        MaskSub(model)
    model.config.problem_type = "regression"
    for loss in ("ce", "bce"):
        with pytest.raises(ValueError, match="problem_type='regression': MaskSub has no regression loss"):
            MaskSub(model, loss=loss)
    # transformers' own loss sets it at its first call with labels: float labels (mixup's) say multi-label
    model.config.problem_type = None
    model.eval()(_images(), labels=torch.full((3, 5), 0.2, dtype=torch.float64))
    assert model.train().config.problem_type == "multi_label_classification"
    with pytest.raises(ValueError, match=r"where that guess is wrong, set model.config.problem_type = None"):
        MaskSub(model)
    model.config.problem_type, model.config.return_dict = None, False
    with pytest.raises(ValueError, match=r"return_dict=False: .* set model.config.return_dict = True"):
        MaskSub(model)
    model.config.return_dict = True
    for problem, loss in ((None, "ce"), ("single_label_classification", "ce"), ("multi_label_classification", "bce")):
        model.config.problem_type = problem
        assert MaskSub(model, loss=loss).loss_mode == loss
    # set after MaskSub was built: refused at the next forward, every branch (transformers' own AttributeError on a
    # tuple's .last_hidden_state before)
    model.config.problem_type = None
    ms = MaskSub(model)
    model.config.return_dict = False
    for branch in ("joint", "main", "sub"):
        with pytest.raises(ValueError, match=r"ViTForImageClassification's config has return_dict=False"):
            ms(_images(), torch.zeros(3, dtype=torch.long), branch=branch)
    with pytest.raises(ValueError, match=r"return_dict=False"):  # helper-347: the public sub_logits too
        ms.sub_logits(_images(), seed=1)
    model.config.return_dict = True
    assert ms(_images(), torch.zeros(3, dtype=torch.long))["loss"] > 0
    model.config = type(model.config)(**{**model.config.to_dict(), "return_dict": False})  # another config in place
    with pytest.raises(ValueError, match=r"return_dict=False"):
        ms(_images(), torch.zeros(3, dtype=torch.long))


def test_other_transformers_classifiers_keep_the_warned_pixel_fallback(monkeypatch):
    from masksub_kernels.training import families

    monkeypatch.setattr(families, "_WARNED", set())  # once per architecture: whatever warned before in this process
    config = transformers.BeitConfig(**{k: v for k, v in TINY.items() if k != "num_labels"}, num_labels=5,
                                     use_relative_position_bias=True)  # fmt: skip
    with pytest.warns(UserWarning, match="pixel-grid fallback"):
        assert MaskSub(transformers.BeitForImageClassification(config), cell_size=8).family == "pixel"
    with pytest.raises(ValueError, match="family='vit' needs a model with"):
        MaskSub(transformers.BeitForImageClassification(config), family="vit")


def test_a_failed_sub_forward_leaves_the_main_branch_uncut():
    # helper-108's mutant: without the plan cleared in a `finally`, images the model refuses (before its embeddings
    # run) left the cut armed for the next main forward
    from masksub_kernels.training.hf_vit import prepare

    model = tiny_hf("ViTForImageClassification")
    ms = MaskSub(model)
    with pytest.raises((ValueError, RuntimeError)):
        ms.sub_logits(torch.zeros(3, 1, 32, 32, dtype=torch.float64), seed=1)  # 1 channel: refused by the model
    assert prepare(model).plan is None
    twin = tiny_hf("ViTForImageClassification")
    torch.testing.assert_close(model(_images()).logits, twin(_images()).logits, rtol=0, atol=0)


def test_which_transformers_models_are_cut_and_the_errors_of_odd_embeddings(monkeypatch):
    from masksub_kernels.training import families
    from masksub_kernels.training.hf_vit import is_hf_vit

    class MyViT(transformers.ViTForImageClassification):  # a subclass in user code: still cut at its tokens
        pass

    config = tiny_hf("ViTForImageClassification").config
    assert is_hf_vit(MyViT(config)) and MaskSub(MyViT(config).double()).family == "vit"
    monkeypatch.setattr(families, "_WARNED", set())
    # no logits: refused at construction, naming the classifier to use (helper-302: they got the pixel fallback's
    # warning, then failed at the first step); a user class with a head of its own takes the fallback
    dinov2 = transformers.Dinov2Backbone(
        transformers.Dinov2Config(**{k: v for k, v in TINY.items() if k != "num_labels"})
    )
    bare_models = (transformers.ViTModel(config), transformers.ViTForMaskedImageModeling(config), dinov2)
    for bare, family in zip(bare_models, ("auto", "pixel", "auto")):
        assert not is_hf_vit(bare)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (refused before the fallback's warning)
            with pytest.raises(ValueError, match=rf"{type(bare).__name__} is a transformers model without an image-"):
                MaskSub(bare, family=family)
    with pytest.raises(ValueError, match=r"head \(.*\); use ViTForImageClassification \(from_pretrained"):
        MaskSub(transformers.ViTModel(config))
    with pytest.raises(ValueError, match="use Dinov2ForImageClassification"):
        MaskSub(dinov2)
    # helper-308: a vision tower's model type ('clip_vision_model') names its family's classifier; a video classifier
    # is not said to lack a head
    small = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8)
    with pytest.raises(ValueError, match="use CLIPForImageClassification"):
        MaskSub(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**small, patch_size=4)))
    video = transformers.VideoMAEConfig(**small, patch_size=4, num_frames=2, tubelet_size=2, num_labels=3)
    with pytest.raises(ValueError, match="classifier of other inputs than images"):
        MaskSub(transformers.VideoMAEForVideoClassification(video))

    class WithHead(transformers.ViTModel):
        def forward(self, pixel_values):
            return super().forward(pixel_values).pooler_output

    with pytest.warns(UserWarning, match="pixel-grid fallback"):
        assert MaskSub(WithHead(config).double(), cell_size=8)(_images(), torch.zeros(3, dtype=torch.long))["loss"] > 0
    # the construction-time size check reads a vision config too (CLIP): 8 px, 1 patch, keeps none
    with pytest.raises(ValueError, match="0 of 1 tokens: at least one must be kept"):
        MaskSub(tiny_hf("CLIPForImageClassification", image_size=8))
    # embeddings that return something else than [B, P + N, D], or fewer tokens than patches, or are never called
    model = tiny_hf("ViTForImageClassification")
    ms, embeddings, images = MaskSub(model), model.vit.embeddings, _images()
    own = type(embeddings).forward
    odd_outputs = ((lambda *a, **k: own(embeddings, *a, **k)[:, :5], "fewer than the patches"),
                   (lambda *a, **k: own(embeddings, *a, **k)[None], r"to return tokens \[B, L, D\]"))  # fmt: skip
    for odd, message in odd_outputs:
        monkeypatch.setattr(embeddings, "forward", odd)
        with pytest.raises(RuntimeError, match=message):
            ms.sub_logits(images, seed=1)
    monkeypatch.undo()
    monkeypatch.setattr(model, "forward", lambda images: model.classifier(torch.zeros(len(images), 32).double()))
    with pytest.raises(RuntimeError, match="forward did not call its"):
        ms.sub_logits(images, seed=1)


def test_model_kwargs_reach_every_call_of_the_model():
    # a ViT fine-tuned on images larger than its config's: interpolate_pos_encoding in both branches, train and eval
    model = tiny_hf("ViTForImageClassification")
    ms = MaskSub(model, model_kwargs={"interpolate_pos_encoding": True})
    ms.check_input_size(64)
    images, target, seen = _images(size=64), torch.tensor([0, 3, 4]), []
    hook = _first_layer(model).register_forward_pre_hook(lambda m, args, kw: seen.append(args[0] if args else
                                                         kw["hidden_states"]), with_kwargs=True)  # fmt: skip
    full = model.vit.embeddings(images, interpolate_pos_encoding=True)
    ms.sub_logits(images, seed=7)
    hook.remove()
    torch.testing.assert_close(seen[0], _kept(full, 1, 0.5, 7), rtol=0, atol=0)  # 64 patches, 32 kept
    want = model(images, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(ms(images, target, seed=7)["logits"], want, rtol=0, atol=0)
    torch.testing.assert_close(ms(images, branch="main"), want, rtol=0, atol=0)
    torch.testing.assert_close(ms.eval()(images)["logits"], model(images, interpolate_pos_encoding=True).logits)
    typo = (r"model_kwargs \['interpolate_pos_embedding'\] are not keyword arguments "
            r"of ViTForImageClassification.forward, which takes \[.*'interpolate_pos_encoding'")  # fmt: skip
    with pytest.raises(ValueError, match=typo):
        MaskSub(model, model_kwargs={"interpolate_pos_embedding": True})  # a typo: the **kwargs' names are typed
    with pytest.raises(ValueError, match="must not hold 'pixel_values': the images, which MaskSub passes"):
        MaskSub(model, model_kwargs={"pixel_values": images})
    with pytest.raises(TypeError, match="model_kwargs must be a mapping of keyword names to values"):
        MaskSub(model, model_kwargs=[("interpolate_pos_encoding", True)])


def test_model_kwargs_labels_unchecked_names_and_unbatched_images():
    # helper-112: a plain **kwargs forward (transformers' CNNs) took misspelt names silently; labels were accepted
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    resnet = transformers.ResNetForImageClassification(config)
    said = r"model_kwargs \['interpolate_pos_embeding'\]: .*cannot check their names"
    with pytest.warns(UserWarning, match=said) as w:
        MaskSub(resnet, model_kwargs={"interpolate_pos_embeding": True})
    assert [each.filename for each in w] == [__file__]  # the user's line (user_warning.warn_user)
    with pytest.raises(ValueError, match="must not hold 'labels'"):
        MaskSub(tiny_hf("ViTForImageClassification"), model_kwargs={"labels": torch.tensor([1])})
    ms = MaskSub(tiny_hf("ViTForImageClassification"))
    with pytest.raises(ValueError, match=r"a batch of images \[B, C, H, W\]; got a 3-d tensor of shape \(3, 32, 32\)"):
        ms(_images()[0], torch.tensor([1]))


def test_the_size_check_reads_a_vision_config_and_converts_the_convolutions_error():
    # helper-119's mutants: tiny_hf sets image_size on a CLIPConfig itself too, so reading the vision config's was
    # untested; images smaller than a patch (the patch convolution's RuntimeError) went unconverted
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=8,
                  patch_size=8)  # fmt: skip
    clip = transformers.CLIPForImageClassification(transformers.CLIPConfig(vision_config=vision, num_labels=5))
    assert getattr(clip.config, "image_size", None) is None
    with pytest.raises(ValueError, match="0 of 1 tokens: at least one must be kept"):
        MaskSub(clip)  # 8 px, 1 patch: keeps none
    with pytest.raises(ValueError, match="ViTForImageClassification refuses 4 x 4 images: Calculated padded input"):
        MaskSub(tiny_hf("ViTForImageClassification")).check_input_size(4)  # smaller than the 8 px patch


def test_a_classifier_holding_two_vit_embeddings_is_not_cut():
    # helper-119's mutant (the first of several embeddings taken) passed: which one the sub-branch should cut is
    # unknown, so such a model gets the warned pixel-grid fallback, as any other transformers classifier
    from masksub_kernels.training.hf_vit import is_hf_vit

    class TwoTowers(transformers.ViTForImageClassification):
        def __init__(self, config):
            super().__init__(config)
            self.other = transformers.ViTModel(config)

    model = TwoTowers(tiny_hf("ViTForImageClassification").config)
    assert not is_hf_vit(model)
    with pytest.raises(ValueError, match="family='vit' needs a model with"):
        MaskSub(model, family="vit")


# helper-172's mutation audit
def test_patch_grid_of_a_same_padded_convolution_is_the_image_size():  # helper-172: H1
    from torch import nn

    from masksub_kernels.training.hf_vit import patch_grid

    assert patch_grid(nn.Sequential(nn.Conv2d(3, 4, 3, padding="same")), 10, 12) == (10, 12)


def test_non_square_images_keep_the_prefix_and_k_of_h_times_w_patches():  # helper-172: H6
    model = tiny_hf("Dinov2ForImageClassification", num_hidden_layers=1)
    seen = []
    layer = next(m for n, m in model.named_modules() if n.endswith(("layers.0", "layer.0")))
    layer.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True)
    images = torch.randn(2, 3, 32, 48, dtype=torch.float64)  # a 4 x 6 patch grid: 24 patches + the class token
    MaskSub(model, mask_ratio=0.75).sub_logits(images, seed=0)
    assert seen[0].shape[1] == 1 + 6  # the class token and floor(24 * 0.25) patches


def test_the_size_check_passes_the_embeddings_only_the_keywords_it_takes():  # helper-172: H7b
    model = tiny_hf("ViTForImageClassification", num_hidden_layers=1)
    ms = MaskSub(model, model_kwargs={"interpolate_pos_encoding": True, "output_hidden_states": True})
    ms.check_input_size(48)  # interpolated: accepted; output_hidden_states is the model's, not the embeddings'


# kills hf_vit.py:90 `else tuple(size)` -> `else (size[0], size[0])`: every tiny model has a square int image_size,
# so a non-square config (ViTConfig takes (height, width)) was counted as a square of its height
def test_a_non_square_configured_image_size_counts_its_own_patch_grid():  # helper-202: V5
    model = tiny_hf("ViTForImageClassification", image_size=(8, 32), num_hidden_layers=1)
    ms = MaskSub(model)  # 1 x 4 patches keep 2 at r = 0.5 (a square of 8 px: 1 patch, which keeps none)
    assert ms.sub_logits(_images(size=32)[..., :8, :], seed=0).shape == (3, 5)
    with pytest.raises(ValueError, match="0 of 1 tokens: at least one must be kept"):
        MaskSub(tiny_hf("ViTForImageClassification", image_size=(8, 8), num_hidden_layers=1))


# kills hf_vit.py:78 `// conv.stride[i]` -> `// conv.kernel_size[i]`: every transformers patch convolution has its
# stride equal to its kernel, so the formula's stride went unchecked (an overlapping patch embedding's grid)
def test_patch_grid_steps_by_the_stride_not_the_kernel():  # helper-202: V2
    from torch import nn

    from masksub_kernels.training.hf_vit import patch_grid

    assert patch_grid(nn.Sequential(nn.Conv2d(3, 4, 16, stride=8, padding=4)), 64, 32) == (8, 4)


# kills hf_vit.py:171 the sub-branch run with the model in eval mode (`model.eval()` around run_armed, restored
# after): every tiny model has its dropout off, where train and eval mode give the same logits, so a sub-branch that
# silently skipped the model's dropout / drop-path (a fine-tuning recipe's regularisation, the paper's sub-branch
# runs it) passed. The sub-branch runs in the model's train mode: its dropout draws from torch's generator
def test_the_sub_branch_runs_in_the_models_train_mode_with_its_dropout():
    model = tiny_hf("ViTForImageClassification", hidden_dropout_prob=0.5)
    ms, images, modes = MaskSub(model), _images(), []
    _first_layer(model).register_forward_pre_hook(lambda m, args: modes.append(m.training))
    torch.manual_seed(0)
    first = ms.sub_logits(images, seed=1)
    torch.manual_seed(0)
    assert torch.equal(ms.sub_logits(images, seed=1), first)  # the same tokens kept, the same dropout drawn
    assert not torch.equal(ms.sub_logits(images, seed=1), first)  # the same tokens, other dropout: it is on
    assert modes == [True, True, True] and model.training


# helper-309's mutation audit
def test_a_config_that_is_not_a_transformers_one_is_not_read():
    # kills hf_checks.py transformers_config's `return config if config is not None and from_transformers else None`
    # -> `return config` (a model of one's own with a `config` namespace of num_labels=1 / return_dict=False was
    # refused as if it were a transformers config)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model.config = types.SimpleNamespace(num_labels=1, return_dict=False, problem_type="regression")
    assert MaskSub(model, family="pixel", cell_size=8).family == "pixel"


def test_a_masked_lms_config_labels_are_not_checked():
    # kills wrapper.py `if self.family != "mlm": check_hf_config(inner, loss)` -> `if True:` (a BERT MLM whose
    # config carries num_labels=1 or a problem_type, fields the MLM loss never reads, was refused)
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=1, problem_type="regression")  # fmt: skip
    assert MaskSub(transformers.BertForMaskedLM(config)).family == "mlm"


# helper-343's mutation audit: kills hf_vit.py check_embeddings_size's message `{img_size[0]} x {img_size[1]}` ->
# `{img_size[1]} x {img_size[0]}` (every refused size tried was square: a 32 x 48 image was called 48 x 32)
def test_a_refused_non_square_size_is_named_height_by_width():
    from masksub_kernels.training.hf_vit import check_hf_size

    with pytest.raises(ValueError, match=r"^ViTForImageClassification refuses 32 x 48 images: "):
        check_hf_size(tiny_hf("ViTForImageClassification", num_hidden_layers=1), (32, 48))


def test_metaclip_2_is_cut_at_its_tokens():
    # helper-346's mutation audit: kills "MetaClip2VisionEmbeddings" left out of hf_vit.HF_VIT_EMBEDDINGS (MetaCLIP 2's
    # classifier, named in the docs' list, got the pixel fallback with its warning; CLASSES has no MetaCLIP 2)
    from masksub_kernels.training.hf_vit import is_hf_vit

    if not hasattr(transformers, "MetaClip2ForImageClassification"):
        pytest.skip("this transformers has no MetaCLIP 2")
    vision = {k: v for k, v in TINY.items() if k != "num_labels"}
    model = transformers.MetaClip2ForImageClassification(
        transformers.MetaClip2Config(vision_config=vision, num_labels=5)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms = MaskSub(model.double())
    assert is_hf_vit(model) and ms.family == "vit"
    assert ms.sub_logits(_images(), seed=1).shape == (3, 5)


def test_a_subclass_returning_the_logits_tensor_and_a_config_without_a_size():
    # helper-346's mutation audit: kills hf_vit_sub_logits' `return logits_of(output, ...)` -> `return output.logits`
    # (a user subclass whose forward returns the logits tensor, which the main branch takes, failed in the sub-branch)
    # and configured_grid's `if size is None: return None` left out (tuple(None): a TypeError at construction)
    from masksub_kernels.training.hf_vit import configured_grid

    class LogitsViT(transformers.ViTForImageClassification):
        def forward(self, pixel_values):
            return super().forward(pixel_values).logits

    plain = tiny_hf("ViTForImageClassification")
    model = LogitsViT(plain.config).double().train()
    model.load_state_dict(plain.state_dict())
    torch.testing.assert_close(MaskSub(model).sub_logits(_images(), seed=1),
                               MaskSub(plain).sub_logits(_images(), seed=1), rtol=0, atol=0)  # fmt: skip
    assert configured_grid(types.SimpleNamespace(config=types.SimpleNamespace(image_size=None))) is None
