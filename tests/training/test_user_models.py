"""MaskSub around a user's own model (helper-315's probe): refusals at construction, with messages that say what is
missing or what to pass, rather than a bare error at the first step or a sub-branch that silently trains nothing."""

import re
import types

import pytest
import torch
from _models import NUM_CLASSES, batch, tiny_vit
from timm.models.vision_transformer import Block

from masksub_kernels.training import MaskSub, families


class _PatchEmbed(torch.nn.Module):
    """Patches as tokens [B, L, D], with timm's ``patch_size``."""

    def __init__(self, dim: int, patch: int = 8):
        super().__init__()
        self.patch_size, self.proj = (patch, patch), torch.nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)


class UserViT(torch.nn.Module):
    """A hand-written ViT with timm's attribute names (no timm VisionTransformer): 32 px, patch 8, a class token."""

    def __init__(self, dim=32, patch_embed=None, prefix=True, blocks=None):
        super().__init__()
        self.patch_embed = patch_embed if patch_embed is not None else _PatchEmbed(dim)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.patch_drop, self.norm_pre, self.norm = torch.nn.Identity(), torch.nn.Identity(), torch.nn.LayerNorm(dim)
        self.blocks = blocks if blocks is not None else torch.nn.Sequential(*[Block(dim, 2) for _ in range(2)])
        self.head = torch.nn.Linear(dim, NUM_CLASSES)
        if prefix:
            self.num_prefix_tokens = 1

    def _pos_embed(self, x):
        return torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), 1) + self.pos_embed

    def forward_head(self, x):
        return self.head(x[:, 0])

    def forward(self, images):
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
        return self.forward_head(self.norm(self.blocks(x)))


def test_a_user_vit_with_timms_names_can_be_forced_to_the_vit_family():
    model = UserViT()
    ms = MaskSub(model, family="vit").train()
    images, target = batch("vit", dtype=torch.float32)
    out = ms.train_step(images, target, torch.optim.SGD(ms.parameters(), lr=0.1), seed=3)
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("lacks", [["patch_embed.patch_size"], ["num_prefix_tokens"]])
def test_a_user_vit_without_what_the_sub_branch_reads_is_refused_when_built(lacks):
    # helper-315: a plain Conv2d patch_embed (no patch_size) or no num_prefix_tokens passed construction and failed at
    # the first step with a bare AttributeError
    if lacks == ["patch_embed.patch_size"]:
        model = UserViT(patch_embed=torch.nn.Conv2d(3, 32, 8, stride=8))
    else:
        model = UserViT(prefix=False)
    lacking = r"family='vit' needs a model with .*; UserViT lacks " + re.escape(repr(lacks))
    with pytest.raises(ValueError, match=lacking):
        MaskSub(model, family="vit")


class _DropPath(torch.nn.Module):
    """A user's own drop-path (not timm's DropPath: PathSub cannot set its rate)."""

    def forward(self, x):
        return x


class _PlainBlock(torch.nn.Module):
    """A residual MLP block without nn.Dropout; ``drop_path``: the user's own class."""

    def __init__(self, dim=32):
        super().__init__()
        self.fc, self.drop_path = torch.nn.Linear(dim, dim), _DropPath()

    def forward(self, x):
        return x + self.drop_path(self.fc(x))


class _AttentionOnlyBlock(torch.nn.Module):
    """A block whose only nn.Dropout is its attention's attn_drop (which DropSub leaves alone)."""

    def __init__(self, dim=32):
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.attn_drop, self.fc = torch.nn.Dropout(0.0), torch.nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.attn.attn_drop(self.fc(x))


def test_dropsub_on_blocks_whose_only_dropout_is_attn_drop_is_refused():
    # helper-319: attn_drop is not one DropSub sets: such blocks have nothing to set
    model = UserViT(blocks=torch.nn.Sequential(_AttentionOnlyBlock(), _AttentionOnlyBlock()))
    with pytest.raises(ValueError, match=r"variant='drop' .*UserViT\.blocks has no torch\.nn\.Dropout"):
        MaskSub(model, family="vit", variant="drop")


@pytest.mark.parametrize("variant", ["drop", "path"])
def test_dropsub_and_pathsub_on_blocks_with_nothing_to_set_are_refused(variant):
    # helper-315: they trained a sub term whose logits were the main branch's (nothing set), silently
    model = UserViT(blocks=torch.nn.Sequential(_PlainBlock(), _PlainBlock()))
    what = "has no torch.nn.Dropout" if variant == "drop" else r"has none: a child named drop_path\* that is timm's"
    with pytest.raises(ValueError, match=rf"variant='{variant}' .*UserViT\.blocks {what}"):
        MaskSub(model, family="vit", variant=variant)
    ms = MaskSub(UserViT(), family="vit", variant=variant, mask_ratio=0.5).train()  # timm's blocks: p = 0 slots
    images, target = batch("vit", dtype=torch.float32)
    out = ms(images, target, seed=1)
    assert not torch.equal(ms.sub_logits(images, seed=1), out["logits"])


class _BatchNormCNN(torch.nn.Module):
    def __init__(self, output=lambda logits: logits):
        super().__init__()
        self.conv, self.bn, self.head = (
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.Linear(4, 10),
        )
        self.output = output  # what the forward returns of its logits

    def forward(self, images):
        return self.output(self.head(self.bn(self.conv(images)).mean((2, 3))))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_train_step_without_gradients_is_refused_before_any_forward(context):
    # helper-315: autograd's error came after both forwards had updated the BatchNorm statistics
    model = _BatchNormCNN()
    ms = MaskSub(model, family="pixel").train()
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    images, target = batch("resnet", dtype=torch.float32)
    with context(), pytest.raises(RuntimeError, match=r"train_step runs backward: .*torch\.no_grad\(\) or torch"):
        ms.train_step(images, target, optimizer)
    assert int(model.bn.num_batches_tracked) == 0
    assert torch.equal(model.bn.running_mean, torch.zeros(4))


def test_the_fallback_warning_names_the_cell_size(monkeypatch):
    # helper-315: it said 32x32-pixel cells whatever the cell size
    monkeypatch.setattr(families, "_WARNED", set())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 10))
    with pytest.warns(UserWarning, match=r"random 16x16-pixel cells of the input"):
        MaskSub(model, cell_size=16)


def test_a_mapping_for_an_image_model_is_told_to_pass_the_image_tensor():
    # helper-315: the hint named Hugging Face masked-LM models whatever the mapping held
    ms = MaskSub(_BatchNormCNN(), family="pixel").train()
    images, target = batch("resnet", dtype=torch.float32)
    with pytest.raises(TypeError, match=r"take the image tensor \[B, C, H, W\] itself: a Hugging Face batch's 'pixel"):
        ms({"pixel_values": images}, target)
    with pytest.raises(TypeError, match=r"a batch mapping of input_ids is for a Hugging Face masked-LM model"):
        ms({"input_ids": torch.zeros(4, 8, dtype=torch.long)}, target)


def test_a_mapping_with_logits_is_read_and_a_tuple_is_told_to_return_the_tensor():
    # helper-315: a dict output was a TypeError (a ModelOutput's .logits was read); a (logits, aux) tuple was told of
    # timm's distilled models only
    images, target = batch("resnet", dtype=torch.float32)
    ms = MaskSub(_BatchNormCNN(lambda z: {"logits": z, "aux": z.sum()}), family="pixel").train()
    out = ms.train_step(images, target, torch.optim.SGD(ms.parameters(), lr=0.1), seed=2)
    assert out["logits"].shape == (4, 10) and torch.isfinite(out["loss"])
    ms = MaskSub(_BatchNormCNN(lambda z: (z, z.sum())), family="pixel").train()
    with pytest.raises(TypeError, match=r"or return the logits tensor \(wrap the model to return out\[0\]\)"):
        ms(images, target)
    ms = MaskSub(_BatchNormCNN(lambda z: {"out": z}), family="pixel").train()  # a mapping without logits (helper-319)
    with pytest.raises(TypeError, match="returned dict"):
        ms(images, target)


# helper-318's mutation audit
# kills M7  training/families.py:75  `isinstance(output, Mapping)` -> `isinstance(output, dict)`
#   (a read-only / user Mapping, not a dict, with 'logits': TypeError "returned mappingproxy")
def test_logits_of_reads_any_mappings_logits():
    from masksub_kernels.training.families import logits_of

    z = torch.randn(4, 10)
    assert logits_of(types.MappingProxyType({"logits": z, "aux": z.sum()}), 4) is z
    with pytest.raises(TypeError, match="or a mapping with a 'logits' tensor; this model returned mappingproxy"):
        logits_of(types.MappingProxyType({"scores": z}), 4)


@pytest.mark.parametrize("variant", ["drop", "path"])
def test_baseline_check_refuses_what_masksub_refuses_for_the_variant(variant):
    # check_like_masksub (--baseline's check of the MaskSub arm) skipped check_variant: a timm ViT whose blocks lost
    # their dropouts / drop-path slots passed it, while MaskSub(model, variant=...) refused the same model
    model = tiny_vit()
    for name, module in list(model.blocks.named_modules()):
        if isinstance(module, torch.nn.Dropout) or name.rsplit(".", 1)[-1].startswith("drop_path"):
            parent = model.blocks.get_submodule(name.rpartition(".")[0]) if "." in name else model.blocks
            setattr(parent, name.rsplit(".", 1)[-1], _Nothing())
    with pytest.raises(ValueError, match=f"variant='{variant}'") as by_masksub:
        MaskSub(model, variant=variant)
    with pytest.raises(ValueError, match=f"variant='{variant}'") as by_baseline:
        families.check_like_masksub(model, 32, variant, None, 0.1)
    assert str(by_baseline.value) == str(by_masksub.value)


class _Nothing(torch.nn.Module):
    """Neither a Dropout nor a drop-path slot."""

    def forward(self, x):
        return x
