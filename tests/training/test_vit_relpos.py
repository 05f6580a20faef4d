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
from timm.models.vision_transformer_relpos import VisionTransformerRelPos

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
}


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
            own = block.attn.rel_pos.get_bias
            block.attn.rel_pos.get_bias = lambda own=own: own() + mask
            try:
                x = block(x)
            finally:
                del block.attn.rel_pos.get_bias
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
