"""The vit family on ViTs with relative position biases (timm Beit, VisionTransformerRelPos; vit_relpos.py).

The reference is timm's own forward on the whole sequence with the dropped tokens' keys masked out of every attention
(an additive -inf on their columns), the kept tokens' outputs read afterwards: attention restricted to the kept keys,
with the bias of every pair of places in the whole image computed by timm's own code, which is what the sub-branch's
cut bias must reproduce. Bias tables are randomised (timm zeroes them, which would hide a wrong cut).
"""

import copy
import io
import warnings

import pytest
import torch
from _models import NUM_CLASSES, assert_grads_close, grads, reference_loss
from timm.models.beit import Beit
from timm.models.vision_transformer_relpos import ResPostRelPosBlock, VisionTransformerRelPos

import masksub_kernels as mk
from masksub_kernels.training import MaskSub

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES)
MODELS = {
    "beit": lambda: Beit(**SMALL, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1),
    "beit_abs_token": lambda: Beit(**SMALL, use_abs_pos_emb=True, use_rel_pos_bias=True, global_pool="token"),
    "beit_shared": lambda: Beit(**SMALL, use_shared_rel_pos_bias=True, use_rel_pos_bias=False),
    "beit_both": lambda: Beit(**SMALL, use_shared_rel_pos_bias=True, use_rel_pos_bias=True),
    "relpos_mlp": lambda: VisionTransformerRelPos(**SMALL, rel_pos_type="mlp"),
    "relpos_bias_cls": lambda: VisionTransformerRelPos(
        **SMALL, rel_pos_type="bias", class_token=True, global_pool="token"
    ),
    "relpos_shared_cls": lambda: VisionTransformerRelPos(**SMALL, shared_rel_pos=True, class_token=True),
    "relpos_rpn_cls_avg": lambda: VisionTransformerRelPos(  # res-post-norm blocks, a class token, avg pooling
        **SMALL, rel_pos_type="mlp", class_token=True, block_fn=ResPostRelPosBlock
    ),
    "relpos_mlp_swin": lambda: VisionTransformerRelPos(**SMALL, rel_pos_type="mlp_swin", rel_pos_dim=16),
    "beit_unfused": lambda: _unfused(Beit(**SMALL, use_rel_pos_bias=True, use_shared_rel_pos_bias=True)),
    "relpos_unfused": lambda: _unfused(VisionTransformerRelPos(**SMALL, class_token=True)),
}


def _unfused(model):
    """timm's explicit attention (softmax(q k^T + bias) v) instead of scaled_dot_product_attention."""
    for block in model.blocks:
        block.attn.fused_attn = False
    return model


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().double().train()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "relative_position_bias_table" in key or "gamma" in key:
                p.normal_(std=0.5)
    for module in model.modules():  # RelPosMlp's own dropout (0.125) would make two forwards differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _tokens(model, images):
    """timm's forward_features up to the blocks (written here from timm's code, not taken from vit_relpos.py)."""
    x = model.patch_embed(images)
    if model.cls_token is not None:
        x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    if isinstance(model, Beit):
        x = x + model.pos_embed if model.pos_embed is not None else x
        x = model.pos_drop(x)
    return x


def reference_sub(model, images, ids):
    """Whole sequence, dropped keys masked (-inf) in every attention, then the kept tokens -> norm -> head."""
    x = _tokens(model, images)
    batch, tokens = x.shape[:2]
    prefix = model.num_prefix_tokens
    keep = torch.cat((torch.arange(prefix).expand(batch, prefix), ids + prefix), 1)
    mask = torch.full((batch, 1, 1, tokens), float("-inf"), dtype=x.dtype)
    mask[torch.arange(batch)[:, None], 0, 0, keep] = 0.0
    for block in model.blocks:
        if isinstance(model, Beit):
            shared = model.rel_pos_bias() if model.rel_pos_bias is not None else 0.0
            x = block(x, shared_rel_pos_bias=shared + mask)  # timm adds the block's own table to it
        elif block.attn.rel_pos is None:
            x = block(x, shared_rel_pos=model.shared_rel_pos.get_bias() + mask)
        else:  # timm ignores the shared bias beside the block's own: mask the block's own
            owner = block.attn.rel_pos
            installed = vars(owner).get("get_bias")  # MaskSub's stand-in, put back afterwards
            own = owner.get_bias
            owner.get_bias = lambda own=own: own() + mask
            try:
                x = block(x)
            finally:
                del owner.get_bias
                if installed is not None:
                    owner.get_bias = installed
    x = model.norm(x)[torch.arange(batch)[:, None], keep]
    return model.forward_head(x)


def _batch(size=3):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, 32, 32, generator=g, dtype=torch.float64)
    return images, torch.randint(0, NUM_CLASSES, (size,), generator=g)


@pytest.mark.parametrize("name", list(MODELS))
def test_sub_branch_is_the_full_model_with_dropped_keys_masked(name):
    model = _model(name)
    images, target = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the vit family, not the pixel fallback's warning
        ms = MaskSub(model)
    assert ms.family == "vit"
    out = ms(images, target, seed=11)
    out["loss"].backward()
    got = grads(ms)

    ms.zero_grad(set_to_none=True)
    ids = mk.random_keep_indices(images.shape[0], 16, 8, seed=11)
    main = model(images)
    sub = reference_sub(model, images, ids)
    torch.testing.assert_close(ms.sub_logits(images, seed=11), sub, rtol=1e-10, atol=1e-12)
    loss, _, _ = reference_loss(main, sub, target)
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.float(), rtol=1e-6, atol=1e-7)
    want = grads(ms)
    assert any("relative_position_bias_table" in k or "mlp" in k for k in want)
    assert_grads_close(got, want)  # the bias tables' gradients flow through the cut


@pytest.mark.parametrize("name", ["beit", "relpos_bias_cls"])
def test_gradient_checkpointing_and_the_model_computes_as_before(name):
    model = _model(name)
    images, _ = _batch()
    before = model(images)
    ms = MaskSub(model)
    want = ms.sub_logits(images, seed=3)
    want.sum().backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    got = ms.sub_logits(images, seed=3)
    got.sum().backward()  # the recomputation runs the blocks again: each gets its cut bias again
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_grads_close(grads(model), expected, rtol=1e-10, atol=1e-12)
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(model(images), before, rtol=0, atol=0)  # the stand-ins give the model's own biases
    twin = copy.deepcopy(model)  # as timm's ModelEmaV3 copies it: the copy's stand-ins read the copy's tables
    with torch.no_grad():
        for key, p in twin.named_parameters():
            if "relative_position_bias_table" in key:
                p.zero_()
    assert not torch.allclose(twin(images), before)
    torch.testing.assert_close(model(images), before, rtol=0, atol=0)
    saved = io.BytesIO()
    torch.save(model, saved)  # the whole module pickled, stand-ins included
    saved.seek(0)
    loaded = torch.load(saved, weights_only=False)
    torch.testing.assert_close(loaded(images), before, rtol=0, atol=0)
    torch.testing.assert_close(MaskSub(loaded).sub_logits(images, seed=3), want, rtol=0, atol=0)


def test_family_vit_by_name_and_images_of_another_size():
    model = _model("beit")
    assert MaskSub(model, family="vit").family == "vit"
    with pytest.raises(ValueError, match="not divisible by the ViT patch size"):
        MaskSub(model).check_input_size(36)
    with pytest.raises(ValueError, match=r"built for \(32, 32\) images and refuses \(48, 48\)"):
        MaskSub(model).check_input_size(48)
    MaskSub(model).check_input_size(32)


def test_prepare_installs_one_lasting_stand_in_per_attention():
    from masksub_kernels.training.vit_relpos import _CutBias

    model = _model("relpos_bias_cls")
    ms = MaskSub(model)
    stand_ins = [vars(block.attn.rel_pos)["get_bias"] for block in model.blocks]
    assert all(isinstance(s, _CutBias) and s.cut is None for s in stand_ins)
    images, _ = _batch()
    for seed in (1, 2):  # each sub-branch call prepares again: the same objects (torch.compile's guards see them)
        ms.sub_logits(images, seed=seed)
        assert [vars(block.attn.rel_pos)["get_bias"] for block in model.blocks] == stand_ins
        assert all(s.cut is None for s in stand_ins)
    from masksub_kernels.training.vit_relpos import relpos_sub_logits

    fresh = _model("relpos_bias_cls")  # never wrapped: the sub-branch function prepares it itself
    torch.testing.assert_close(relpos_sub_logits(fresh, images, 0.5, 2), ms.sub_logits(images, seed=2))


def test_the_sub_branch_checkpoints_each_block_when_the_model_does(monkeypatch):
    import timm.models._manipulate as manipulate

    calls = []
    original = manipulate.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(manipulate, "checkpoint", counting)
    model = _model("beit_both")
    images, _ = _batch()
    ms = MaskSub(model)
    ms.sub_logits(images, seed=1)
    assert calls == []
    model.set_grad_checkpointing(True)
    ms.sub_logits(images, seed=1).sum().backward()
    assert len(calls) == len(model.blocks)


def test_dropsub_leaves_the_bias_mlp_dropout_alone():
    from masksub_kernels.training.variants import sub_dropout

    model = MODELS["relpos_mlp"]()
    rates = {name: m.p for name, m in model.blocks.named_modules() if isinstance(m, torch.nn.Dropout)}
    with sub_dropout(model, 0.4):
        inside = {name: m.p for name, m in model.blocks.named_modules() if isinstance(m, torch.nn.Dropout)}
    for name, p in inside.items():
        if "rel_pos" in name or name.endswith("attn_drop"):
            assert p == rates[name], name
        else:
            assert p == 0.4, name
    assert any("rel_pos" in name and p > 0 for name, p in inside.items())  # the MLP's own 0.125 kept


def test_the_sub_branch_runs_beits_position_dropout_before_the_selection():
    # helper-119's mutant (Beit's pos_drop left out of the sub-branch's embedding) passed: the tests run it at p = 0
    model = _model("beit_abs_token")
    seen = []
    model.pos_drop.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    MaskSub(model).sub_logits(_batch()[0], seed=1)
    assert seen == [(3, 17, 32)]  # every token (the class token and 16 patches), then 8 patches kept


def test_relpos_bias_of_another_size_is_refused_in_the_sub_branch():  # helper-172: R3
    torch.manual_seed(0)
    beit = Beit(**{**SMALL, "depth": 1, "num_classes": 3}, use_abs_pos_emb=False, use_rel_pos_bias=True)
    beit.patch_embed.strict_img_size = False  # the model no longer refuses 16 px images itself
    ms = MaskSub(beit, mask_ratio=0.5)
    with pytest.raises(ValueError, match="relative position bias covers 17 tokens but the images give 5"):
        ms.sub_logits(torch.randn(2, 3, 16, 16), seed=0)


# helper-338: kills vit_relpos.py _embed `x = x + model.pos_embed; x = model.pos_drop(x)` -> `x = model.pos_drop(x)
# + model.pos_embed` (the shape check above passes it, and at p = 0 so does every comparison): the position
# dropout takes the tokens with their absolute position embedding added, as timm's forward_features
def test_beits_position_dropout_takes_the_tokens_with_their_position_embedding():
    model = _model("beit_abs_token")
    images = _batch()[0]
    seen = []
    model.pos_drop.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    MaskSub(model).sub_logits(images, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(seen[0], _tokens(model, images), rtol=0, atol=0)  # (pos_drop is p = 0 here)
