"""The timm ViT sub-branch (masksub_kernels/training/vit.py) beyond test_wrapper_families.py's: timm's own forward
with a patch dropout of the same tokens as the reference under register tokens, no class token, 'map' pooling, a
pre-norm and a dynamic size; only the kept patches' pixels reaching the logits; the blocks checkpointed when the
model asks; the image sizes a padding or hybrid patch embedding takes (helper-227's mutation audit of the ViT and
CNN sub-branches: 44 mutants, 5 real gaps)."""

import pytest
import torch
from _models import batch, tiny_vit
from torch import nn

import masksub_kernels as mk
from masksub_kernels.training import MaskSub


# Kills: V03 (num_prefix_tokens=1), V04 (register tokens counted among the N patches), V02 (norm_pre left out: a
# pre_norm ViT), and checks 'map' pooling, class_token=False and dynamic_img_size at another size, none of which
# the tiny_vit / deit3 / mae references cover (they are all one class token, 'token' / 'avg', norm_pre Identity).
class _KeepThesePatches(nn.Module):
    """timm's patch dropout interface for VisionTransformer (tokens -> tokens) that keeps the given patch tokens, the
    prefix tokens always: timm's own forward with it is the reference for the sub-branch."""

    def __init__(self, ids: torch.Tensor, num_prefix_tokens: int):
        super().__init__()
        self.ids, self.prefix = ids, num_prefix_tokens

    def forward(self, x):
        kept = x[:, self.prefix :].gather(1, self.ids[..., None].expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, : self.prefix], kept], dim=1)


VIT_OPTIONS = {
    "registers": (dict(reg_tokens=2), 32),  # 1 class + 2 register tokens, 'token' pooling
    "registers-avg-deit3": (dict(reg_tokens=3, global_pool="avg", no_embed_class=True), 32),
    "no-class-token-avg": (dict(class_token=False, global_pool="avg"), 32),
    "no-class-registers-avg": (dict(class_token=False, reg_tokens=2, global_pool="avg"), 32),
    "map-pool": (dict(global_pool="map"), 32),
    "pre-norm": (dict(pre_norm=True), 32),  # CLIP's layout: norm_pre before the blocks
    "dynamic-size-48": (dict(dynamic_img_size=True), 48),  # 6 x 6 patches at 48 px: the resampled pos_embed
}


@pytest.mark.parametrize("option", list(VIT_OPTIONS))
def test_vit_options_equal_timms_forward_with_a_patch_dropout_of_the_same_tokens(option):
    kwargs, size = VIT_OPTIONS[option]
    torch.manual_seed(0)
    model = tiny_vit(**kwargs).double().train()
    with torch.no_grad():  # timm zeroes the register / class tokens' init in places: make every token distinct
        for name, p in model.named_parameters():
            if name in ("cls_token", "reg_token", "pos_embed") or name.startswith("norm_pre"):
                p.normal_(std=0.5)
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = MaskSub(model).sub_logits(images, seed=5)
    patches = (size // 8) ** 2
    ids = mk.random_keep_indices(3, patches, patches // 2, seed=5)
    model.patch_drop = _KeepThesePatches(ids, model.num_prefix_tokens)
    torch.testing.assert_close(got, model(images), rtol=1e-12, atol=1e-12)


# Checks the sub-branch's defining property from the images alone, with no reference forward: the pixels of a
# dropped patch do not reach the logits, those of a kept patch do (a patch embedding is per patch). Kills V03 / V04
# on a registers model too, and any selection that mixes up which patch tokens are kept.
@pytest.mark.parametrize("kwargs", [dict(), dict(reg_tokens=2, global_pool="avg")])
def test_only_the_kept_patches_pixels_reach_the_vit_sub_logits(kwargs):
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit(**kwargs).double()).train()
    images = batch("vit", size=2)[0]
    ids = mk.random_keep_indices(2, 16, 8, seed=3)
    base = ms.sub_logits(images, seed=3)
    kept = set(ids[0].tolist())
    dropped = next(i for i in range(16) if i not in kept)
    for patch, reaches in ((dropped, False), (ids[0, 0].item(), True)):
        row, col = divmod(patch, 4)  # row-major patch numbering on the 4 x 4 grid of 8-pixel patches
        changed = images.clone()
        changed[0, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 1.0
        diff = (ms.sub_logits(changed, seed=3)[0] - base[0]).abs().max()
        assert (diff > 1e-9) == reaches, (patch, reaches, diff)
        torch.testing.assert_close(ms.sub_logits(changed, seed=3)[1], base[1], rtol=0, atol=0)  # other sample


# Kills V13 (vit.py's _blocks ignoring model.grad_checkpointing): the logits are the same either way, so only the
# memory a user turned checkpointing on for is lost, silently; vit_relpos.py has this test
# (test_the_sub_branch_checkpoints_each_block_when_the_model_does), vit.py had none.
def test_the_vit_sub_branch_checkpoints_its_blocks_when_the_model_does(monkeypatch):
    import timm.models
    import timm.models._manipulate as manipulate
    from timm.models.eva import Eva

    calls = []
    original_seq, original_one = timm.models.checkpoint_seq, manipulate.checkpoint
    monkeypatch.setattr(timm.models, "checkpoint_seq", lambda *a, **k: calls.append("seq") or original_seq(*a, **k))
    monkeypatch.setattr(manipulate, "checkpoint", lambda *a, **k: calls.append("block") or original_one(*a, **k))
    torch.manual_seed(0)
    eva = Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10, ref_feat_shape=(4, 4))
    for model, want in ((tiny_vit(), ["seq"]), (eva, ["block", "block"])):
        ms = MaskSub(model.double()).train()
        images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        ms.sub_logits(images, seed=1)
        assert calls == []
        model.set_grad_checkpointing(True)
        ms.sub_logits(images, seed=1).sum().backward()
        assert calls == want, type(model).__name__
        calls.clear()


def test_image_sizes_a_padding_or_hybrid_patch_embedding_takes():
    # helper-227: check_input_size refused 36 px for a ViT whose patch embedding pads (dynamic_img_pad: 5 x 5 patches,
    # the model runs), and counted a hybrid's (CNN backbone) tokens in pixels by its feature-map patch: a 32 px
    # image passed the check and the sub-branch's op refused it. Both take timm's own grid for the size now.
    padded = MaskSub(tiny_vit(dynamic_img_size=True, dynamic_img_pad=True)).train()
    padded.check_input_size(36)
    assert padded(torch.randn(2, 3, 36, 36), torch.tensor([1, 2]), seed=1)["loss"].isfinite()
    with pytest.raises(ValueError, match=r"image size \(36, 36\) is not divisible by the ViT patch size \(8, 8\)"):
        MaskSub(tiny_vit(dynamic_img_size=True)).check_input_size(36)  # no padding: timm refuses 36 px
    timm = pytest.importorskip("timm")
    hybrid = timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, dynamic_img_size=True, num_classes=5)
    ms = MaskSub(hybrid, mask_ratio=0.75).train()  # 64 px: 4 x 4 features, 2 x 2 tokens of 2 x 2 features
    ms.check_input_size(64)
    with pytest.raises(ValueError, match=r"keeps floor\(1 \* \(1 - 0.75\)\) = 0 of 1 tokens"):
        ms.check_input_size(32)  # one token: none kept (the check counted 4 x 4 tokens of 8 pixels)


def test_a_strict_hybrid_takes_the_sizes_that_give_its_token_grid():
    # helper-228: a hybrid ViT (CNN backbone) built at 64 px without dynamic_img_size was refused 72 px "(a strict
    # image size)", though its patch embedding asserts no size and 72 px gives the built 2 x 2 token grid (the model
    # runs); 96 px gives 3 x 3, which its fixed position embedding refuses: the check now says so before a step.
    timm = pytest.importorskip("timm")
    hybrid = timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, num_classes=5)
    ms = MaskSub(hybrid, mask_ratio=0.5).train()
    for size in (64, 72):
        ms.check_input_size(size)
        assert ms(torch.randn(2, 3, size, size), torch.tensor([1, 2]), seed=1)["loss"].isfinite()
    with pytest.raises(ValueError, match=r"refuses \(96, 96\) \(a token grid \(3, 3\) where the position embedding"):
        ms.check_input_size(96)
    with pytest.raises(RuntimeError):
        hybrid(torch.randn(1, 3, 96, 96))  # what the check saves the user from, mid-step


# kills helper-237's F4: families.py check_vit_patches `tiled = getattr(embed, "dynamic_img_pad", False) or
# hasattr(embed, "backbone")` -> `tiled = getattr(embed, "dynamic_img_pad", False)`
def test_a_hybrid_takes_a_size_off_its_patch_size_that_gives_its_token_grid():
    # A hybrid's patch embedding (HybridEmbed, a CNN backbone) reports patch_size (8, 8), but its backbone takes any
    # size and its patches cut the features: 68 px gives the built 2 x 2 token grid and the model runs. The tests'
    # sizes (64, 72 px) are multiples of 8, so a check that applied the pixel-patch divisibility to hybrids too
    # (refusing 68 px "not divisible by the ViT patch size (8, 8)") passed them.
    from masksub_kernels.training.families import check_vit_patches

    timm = pytest.importorskip("timm")
    hybrid = timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, num_classes=5)
    assert tuple(hybrid.patch_embed.patch_size) == (8, 8) and 68 % 8  # the size is off the reported patch
    assert check_vit_patches(hybrid, (68, 68)) == (2, 2)  # also --baseline's check (run_setup.py)
    ms = MaskSub(hybrid, mask_ratio=0.5).train()
    ms.check_input_size(68)
    assert ms(torch.randn(2, 3, 68, 68), torch.tensor([1, 2]), seed=1)["loss"].isfinite()
