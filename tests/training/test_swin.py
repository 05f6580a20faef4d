"""The timm Swin sub-branch (masksub_kernels/training/swin.py) beyond test_wrapper_families.py's: the absolute
position embedding masked away with the tokens, the asked cell size, a non-square patch's token grid, the mask token
created like the model's weights (helper-222's second-pass mutation audit of the Swin family: 43 mutants, 8 real
gaps, no bug)."""

import pytest
import torch
from _models import batch, pixel_cells, reference_swin_sub, tiny_swin

import masksub_kernels as mk
from masksub_kernels.training import MaskSub

timm = pytest.importorskip("timm")


def _ape_swin() -> torch.nn.Module:
    """A tiny fp64 timm Swin with the original Swin's absolute position embedding (`ape`, which timm's
    SwinTransformer has no more): a subclass's absolute_pos_embed added to the stage-1 tokens."""
    from timm.models.swin_transformer import SwinTransformer

    class ApeSwin(SwinTransformer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.absolute_pos_embed = torch.nn.Parameter(torch.randn(1, 16, 16, 16))

        def forward_features(self, x):
            return self.norm(self.layers(self.patch_embed(x) + self.absolute_pos_embed))

    torch.manual_seed(0)
    model = ApeSwin(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                    num_classes=10, drop_path_rate=0.0)  # fmt: skip
    return model.double()


def test_swin_absolute_position_embedding_is_added_before_the_masking():
    # at mask_ratio 0 nothing is masked: the sub-branch is the model, position embedding included (helper-115)
    ms = MaskSub(_ape_swin(), mask_ratio=0.0).train()
    images, _ = batch("swin")
    torch.testing.assert_close(ms.sub_logits(images, seed=1), ms.model(images))


# kills swin.py:55-57 the absolute position embedding added after mask_tokens_grid instead of before it: the test
# above runs at mask_ratio 0, where nothing is masked and the two orders agree. SEMANTICS.md's Swin: the tokens
# after patch_embed and the absolute position embedding are masked, so a removed cell carries the mask token alone,
# not the mask token plus its position
def test_swin_absolute_position_embedding_is_masked_away_with_the_tokens():
    model = _ape_swin()
    ms = MaskSub(model, mask_ratio=0.5).train()
    images, _ = batch("swin")
    removed = pixel_cells(mk.random_grid_mask(4, (2, 2), 2, seed=1), 8)[..., None]
    tokens = model.patch_embed(images) + model.absolute_pos_embed
    tokens = tokens * (1 - removed) + ms.mask_token * removed
    want = model.forward_head(model.norm(model.layers(tokens)))
    torch.testing.assert_close(ms.sub_logits(images, seed=1), want)


# kills swin.py:57 `cell_size=cell_size` -> `cell_size=8` (and wrapper.py:445 passing 8 for self.cell_size): every
# timm Swin test runs the default cell of 8 tokens, so a run asking for cells of 4 tokens silently masked cells of 8
# (transformers' Swin has a cell_size=4 test; timm's had none)
def test_timm_swin_masks_cells_of_the_asked_size():
    torch.manual_seed(0)
    ms = MaskSub(tiny_swin().double(), cell_size=4).train()  # 16 x 16 tokens: 4 x 4 cells of 4
    images, _ = batch("swin")
    cells = mk.random_grid_mask(4, (4, 4), 8, seed=3)
    want = reference_swin_sub(ms.model, images, ms.mask_token, cells, cell=4)
    torch.testing.assert_close(ms.sub_logits(images, seed=3), want)


# kills families.py:202 the width's token count by the patch's height (`img_size[1] // patch[0]`): timm's Swin takes
# a (height, width) patch too, and every timm Swin test had a square one; with it, a 64 x 96 size (16 x 12 tokens)
# passed check_input_size and the sub-branch's op refused the first batch instead, with the op's words
def test_a_timm_swin_with_a_non_square_patch_checks_its_own_token_grid():
    from timm.models.swin_transformer import SwinTransformer

    swin = SwinTransformer(img_size=(64, 128), patch_size=(4, 8), window_size=4, embed_dim=16, depths=(1, 1),
                           num_heads=(1, 2), num_classes=3, strict_img_size=False)  # fmt: skip
    ms = MaskSub(swin)  # 16 x 16 tokens: 2 x 2 cells of 8
    ms.check_input_size((64, 128))
    with pytest.raises(ValueError, match=r"token grid 16 x 12 is not divisible .* 32 x 64 pixels"):
        ms.check_input_size((64, 96))


# kills wrapper.py:191 the timm Swin mask token created in float32 whatever the model's dtype: the fp64 tests cast it
# (mask_token.to(x.dtype), differentiable) and so agree to 1e-7; the token must be created like the model's weights
# (its state_dict entry, its optimizer state and its precision follow), as transformers' Swin's is (test_hf_swin.py)
def test_the_timm_swin_mask_token_has_the_models_dtype_and_device():
    model = tiny_swin().double()
    ms = MaskSub(model)
    weight = model.patch_embed.proj.weight
    assert ms.mask_token.dtype == weight.dtype == torch.float64 and ms.mask_token.device == weight.device
    assert "mask_token" in ms.state_dict() and ms.state_dict()["mask_token"].dtype == torch.float64


# helper-250's mutation audit: kills wrapper.py's mask token drawn on the model's device again (a GPU run started from
# another token than the CPU run of its seed, helper-249) and the token left on the CPU (`.to(device)` dropped); the
# meta device stands in for a GPU
def test_the_mask_token_is_drawn_on_the_cpu_and_lives_on_the_models_device(monkeypatch):
    drawn, real = [], torch.nn.init.trunc_normal_
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda t, **kw: drawn.append(t.device) or real(t, **kw))
    assert MaskSub(tiny_swin().to("meta")).mask_token.device.type == "meta"
    assert drawn == [torch.device("cpu")]


# helper-318's mutation audit
# kills M15  training/families.py:187  `family == "vit" and needs` -> `family in ("vit", "swin") and needs`
#   (no test asked for family='swin' by name on a timm Swin: the structure check for it ran untested; the mutant
#   refuses timm's SwinTransformer / V2, which have no num_prefix_tokens)
def test_timm_swins_asked_for_by_name_pass_the_structure_check():
    from _models import tiny_swin, tiny_swinv2

    from masksub_kernels.training import MaskSub

    for model in (tiny_swin(), tiny_swinv2()):
        assert MaskSub(model, family="swin").family == "swin"
    with pytest.raises(ValueError, match=r"family='swin' needs a model with .*; Sequential lacks \['patch_embed'"):
        MaskSub(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10)), family="swin")
