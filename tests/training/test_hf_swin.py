"""transformers' Swin and SwinV2 image classifiers in the swin family (masksub_kernels/training/hf_swin.py).

The reference without an absolute position embedding is transformers' own masking: the model's base (``swin`` /
``swinv2``) run with ``bool_masked_pos`` set to the removed cells of ``random_grid_mask`` for the seed, expanded to
tokens, then the classifier, which puts the embeddings' ``mask_token`` where MaskSub's sub-branch must put it (after
the norm). With one, MaskSub masks after it (SEMANTICS.md's Swin), where transformers' masking comes before it: the
reference then masks the tokens its embeddings' dropout takes (``_masked_after_position``). Both agree exactly in
fp64, values and every gradient.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from _models import assert_grads_close, grads, reference_loss

import masksub_kernels as mk
from masksub_kernels.training import MaskSub

transformers = pytest.importorskip("transformers")

CLASSES = ("SwinForImageClassification", "Swinv2ForImageClassification")


def tiny_swin(name: str, **changes) -> torch.nn.Module:
    """A tiny fp64 transformers Swin: 64 px, patch 4 (16 x 16 tokens: 2 x 2 cells of 8), 5 classes, dropout off."""
    cls = getattr(transformers, name)
    settings = dict(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                    num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    drop_path_rate=0.0)  # fmt: skip
    torch.manual_seed(0)
    return cls(cls.config_class(**{**settings, **changes})).double().train()


def _images(batch: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "swin", None) or model.swinv2


def _removed_tokens(images, ratio: float, seed: int, cell: int) -> torch.Tensor:
    """bool [B, h w]: the tokens of the op's removed cells for the seed (patch 4, transformers' padded grid)."""
    grid = (-(-images.shape[-2] // 4), -(-images.shape[-1] // 4))
    cells = (grid[0] // cell, grid[1] // cell)
    removed = mk.random_grid_mask(images.shape[0], cells, int(cells[0] * cells[1] * (1 - ratio)), seed=seed)
    return removed.repeat_interleave(cell, 1).repeat_interleave(cell, 2).reshape(images.shape[0], -1)


def _by_transformers(model, images, ratio: float, seed: int, cell: int = 8, **kwargs) -> torch.Tensor:
    """The sub-branch by transformers' own masking: bool_masked_pos from the op's removed cells for the seed."""
    assert _base(model).embeddings.position_embeddings is None  # else it masks before the position embedding
    tokens = _removed_tokens(images, ratio, seed, cell)
    return model.classifier(_base(model)(images, bool_masked_pos=tokens, **kwargs).pooler_output)


class _MaskedThenDropped(torch.nn.Module):
    def __init__(self, dropout, removed, token):
        super().__init__()
        self.dropout, self.removed, self.token = dropout, removed, token

    def forward(self, tokens):
        removed = self.removed[..., None].to(tokens.dtype)
        return self.dropout(tokens * (1 - removed) + self.token * removed)


def _masked_after_position(model, images, ratio: float, seed: int, cell: int = 8, **kwargs) -> torch.Tensor:
    """The sub-branch of SEMANTICS.md's Swin: the tokens after the norm and the absolute position embedding (the
    embeddings' dropout's input) masked by the formula, the model's forward otherwise."""
    embeddings = _base(model).embeddings
    dropout = embeddings.dropout
    embeddings.dropout = _MaskedThenDropped(dropout, _removed_tokens(images, ratio, seed, cell), embeddings.mask_token)
    try:
        return model(images, **kwargs).logits
    finally:
        embeddings.dropout = dropout


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("ape", [False, True])
def test_the_sub_branch_is_transformers_own_masking_with_the_op_cells(name, ape):
    if ape and name.startswith("Swinv2"):
        pytest.skip("transformers' SwinV2 with absolute position embeddings fails on any input (257 of them)")
    model, twin = tiny_swin(name, use_absolute_embeddings=ape), tiny_swin(name, use_absolute_embeddings=ape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        ms = MaskSub(model, mask_ratio=0.75)
    assert ms.family == "swin" and ms.mask_token is None  # the token is the model's own
    token = _base(model).embeddings.mask_token
    assert isinstance(token, torch.nn.Parameter) and token.shape == (1, 1, 16) and token.dtype == torch.float64
    _base(twin).embeddings.mask_token = torch.nn.Parameter(token.detach().clone())
    images, target = _images(), torch.tensor([0, 3, 4])
    got = ms(images, target, seed=7)
    got["loss"].backward()
    sub = (_masked_after_position if ape else _by_transformers)(twin, images, 0.75, 7)
    want, *_ = reference_loss(twin(images).logits, sub, target)
    want.backward()
    torch.testing.assert_close(ms.sub_logits(images, seed=7), sub, rtol=0, atol=0)
    torch.testing.assert_close(got["loss"], want.float(), rtol=1e-6, atol=0)
    assert_grads_close(grads(model), grads(twin), rtol=1e-5, atol=1e-9)  # the mask token's included
    assert token.grad.abs().sum() > 0
    main = model(images).logits  # the main branch: unmasked
    torch.testing.assert_close(main, twin(images).logits, rtol=0, atol=0)
    assert not torch.equal(ms.sub_logits(images, seed=7), ms.sub_logits(images, seed=8))
    torch.testing.assert_close(MaskSub(model, mask_ratio=0.0).sub_logits(images, seed=1), main, rtol=0, atol=0)


def test_padded_images_and_other_cells():
    # transformers pads 62 px to 64 (16 x 16 tokens); cells of 4 tokens: 4 x 4 of them
    model = tiny_swin("SwinForImageClassification")
    ms = MaskSub(model, cell_size=4)
    images = _images(size=62)
    ms.check_input_size(62)
    torch.testing.assert_close(ms.sub_logits(images, seed=2), _by_transformers(model, images, 0.5, 2, cell=4))
    not_divisible = r"token grid 10 x 10 is not divisible by the mask cell of 8 tokens.*multiple of 32 pixels"
    with pytest.raises(ValueError, match=not_divisible):
        MaskSub(model).check_input_size(40)
    with pytest.raises(ValueError, match="keeps none of the 1 mask cell"):
        MaskSub(tiny_swin("SwinForImageClassification", image_size=32))  # 8 x 8 tokens: one cell
    ape = tiny_swin("SwinForImageClassification", use_absolute_embeddings=True)
    with pytest.raises(ValueError, match="SwinForImageClassification refuses 128 x 128 images"):
        MaskSub(ape).check_input_size(128)  # its position embedding is for 64 px
    ms = MaskSub(ape, model_kwargs={"interpolate_pos_encoding": True})
    ms.check_input_size(128)
    images = _images(size=128)
    want = _masked_after_position(ape, images, 0.5, 3, interpolate_pos_encoding=True)
    torch.testing.assert_close(ms.sub_logits(images, seed=3), want, rtol=0, atol=0)
    torch.testing.assert_close(ms(images, branch="main"), ape(images, interpolate_pos_encoding=True).logits)


def test_one_token_and_one_hook_copies_and_pickles_get_their_own():
    from masksub_kernels.training.hf_swin import CellMask

    model = tiny_swin("SwinForImageClassification")
    MaskSub(model)
    token = model.swin.embeddings.mask_token
    ms = MaskSub(model)
    assert model.swin.embeddings.mask_token is token and "swin.embeddings.mask_token" in model.state_dict()
    assert ms.no_weight_decay() == {"model.swin.embeddings.mask_token"}
    assert sum(p is token for p in ms.parameters()) == 1
    hooks = [h for h in model.swin.embeddings.dropout._forward_pre_hooks.values() if isinstance(h, CellMask)]
    assert len(hooks) == 1 and hooks[0].plan is None
    images = _images()
    want = ms.sub_logits(images, seed=3)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    for other in (copy.deepcopy(model), loaded):
        torch.testing.assert_close(MaskSub(other).sub_logits(images, seed=3), want, rtol=0, atol=0)
        torch.testing.assert_close(other(images).logits, model(images).logits, rtol=0, atol=0)
    # a token the model already has (built with use_mask_token, or loaded) is the one trained
    other = tiny_swin("SwinForImageClassification")
    other.swin.embeddings.mask_token = torch.nn.Parameter(torch.ones(1, 1, 16, dtype=torch.float64))
    MaskSub(other)
    assert torch.equal(other.swin.embeddings.mask_token, torch.ones(1, 1, 16, dtype=torch.float64))


def test_under_torch_compile_the_sub_branch_is_the_eager_one():
    model = tiny_swin("Swinv2ForImageClassification")
    images = _images()
    want = MaskSub(model).sub_logits(images, seed=4)
    compiled = MaskSub(torch.compile(model, backend="eager"))
    assert compiled.no_weight_decay() == {"model._orig_mod.swinv2.embeddings.mask_token"}
    torch.testing.assert_close(compiled.sub_logits(images, seed=4), want, rtol=1e-12, atol=1e-12)


def test_a_failed_sub_forward_leaves_the_main_branch_unmasked_and_odd_norms_are_errors(monkeypatch):
    from masksub_kernels.training.hf_swin import prepare

    model = tiny_swin("SwinForImageClassification")
    ms, images = MaskSub(model), _images()
    with pytest.raises((ValueError, RuntimeError)):
        ms.sub_logits(torch.zeros(3, 1, 64, 64, dtype=torch.float64), seed=1)  # 1 channel: refused by the model
    assert prepare(model)[0].plan is None
    torch.testing.assert_close(model(images).logits, tiny_swin("SwinForImageClassification")(images).logits)
    norm = model.swin.embeddings.norm
    own = type(norm).forward
    monkeypatch.setattr(norm, "forward", lambda x: own(norm, x)[:, :5])
    with pytest.raises(RuntimeError, match=r"expected the embeddings' dropout to take tokens \[B, 256, C\]"):
        ms.sub_logits(images, seed=1)
    monkeypatch.undo()
    monkeypatch.setattr(model, "forward", lambda images: model.classifier(torch.zeros(len(images), 32).double()))
    with pytest.raises(RuntimeError, match="forward did not call its embeddings' dropout"):
        ms.sub_logits(images, seed=1)


def test_bare_encoders_and_masked_image_modelling_heads_are_not_cut(monkeypatch):
    from masksub_kernels.training import families
    from masksub_kernels.training.hf_swin import is_hf_swin

    config = tiny_swin("SwinForImageClassification").config

    class MySwin(transformers.SwinForImageClassification):  # a subclass in user code: still masked
        pass

    assert is_hf_swin(MySwin(config)) and MaskSub(MySwin(config).double()).family == "swin"
    monkeypatch.setattr(families, "_WARNED", set())
    for other in (transformers.SwinModel(config), transformers.SwinForMaskedImageModeling(config)):
        assert not is_hf_swin(other)
        with pytest.raises(ValueError, match="family='swin' needs a model with"):
            MaskSub(other, family="swin")
        with pytest.raises(ValueError, match=r"without an image-classification head .* use SwinForImageClassification"):
            MaskSub(other)  # (helper-302: was the pixel fallback's warning, then a failure at the first step)
    with pytest.raises(ValueError, match=r"DropSub / PathSub.*defined for ViTs"):
        MaskSub(tiny_swin("SwinForImageClassification"), variant="drop")


@pytest.mark.parametrize("size", [(64, 128), (96, 64), (32, 96)])
def test_non_square_images_mask_the_cells_of_their_own_grid(size):
    # helper-111: an h / w swap of the token grid survived the square tests. 16 x 32, 24 x 16, 8 x 24 tokens:
    # 2 x 4, 3 x 2, 1 x 3 cells of 8
    model = tiny_swin("SwinForImageClassification")
    ms = MaskSub(model)
    ms.check_input_size(size)
    images = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for seed in (5, 6):
        torch.testing.assert_close(ms.sub_logits(images, seed=seed), _by_transformers(model, images, 0.5, seed),
                                   rtol=0, atol=0)  # fmt: skip


def test_the_token_is_trunc_normal_and_a_refused_masksub_leaves_the_model_as_it_was():
    from masksub_kernels.training.hf_swin import CellMask

    model = tiny_swin("Swinv2ForImageClassification")
    torch.manual_seed(3)
    MaskSub(model)
    torch.manual_seed(3)  # timm's trunc-normal 0.02, drawn from torch's generator as the Swin token of timm's
    want = torch.nn.init.trunc_normal_(torch.empty(1, 1, 16, dtype=torch.float64), std=0.02)
    torch.testing.assert_close(model.swinv2.embeddings.mask_token.detach(), want, rtol=0, atol=0)
    small = tiny_swin("SwinForImageClassification", image_size=32)  # 8 x 8 tokens: one cell, which r = 0.5 drops
    with pytest.raises(ValueError, match="keeps none of the 1 mask cell"):
        MaskSub(small)
    dropout = small.swin.embeddings.dropout
    assert small.swin.embeddings.mask_token is None and "swin.embeddings.mask_token" not in small.state_dict()
    assert not any(isinstance(hook, CellMask) for hook in dropout._forward_pre_hooks.values())


def test_an_optimizer_without_the_models_mask_token_is_refused():
    # MaskSub creates the token in the model: an optimizer built from the model before would never train it
    model = tiny_swin("SwinForImageClassification")
    early = torch.optim.SGD(model.parameters(), lr=0.1)
    ms = MaskSub(model)
    images, target = _images(), torch.tensor([0, 3, 4])
    with pytest.raises(ValueError, match=r"mask_token: it lives in the model.*call MaskSub\(model\) first"):
        ms.train_step(images, target, early, seed=1)
    token = model.swin.embeddings.mask_token
    before = token.detach().clone()
    ms.train_step(images, target, torch.optim.SGD(model.parameters(), lr=0.1), seed=1)
    assert not torch.equal(token, before)
    token.requires_grad_(False)  # a frozen token, left out of the optimizer on purpose: accepted
    trainable = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ms.train_step(images, target, trainable, seed=1)


def test_each_batch_is_checked_before_the_main_branch():
    # helper-112: transformers' Swin takes any size; a 72 px batch (18 x 18 tokens) got the op's talk of cell_size,
    # and a batch smaller than a window shrank the model's windows for good in the main branch before any refusal
    model = tiny_swin("SwinForImageClassification")
    ms = MaskSub(model)
    target = torch.tensor([0, 3, 4])
    with pytest.raises(ValueError, match=r"token grid 18 x 18 is not divisible.*multiple of 32 pixels"):
        ms(_images(size=72), target, seed=1)
    with pytest.raises(ValueError, match=r"token grid 1 x 1 is not divisible"):
        ms(_images(size=4), target, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match=r"token grid 1 x 1 is not divisible"):  # the main branch alone, first
        ms.train_step(_images(size=4), target, optimizer, seed=1, schedule="sequential")
    with pytest.raises(ValueError, match=r"token grid 18 x 18 is not divisible"):
        ms.sub_logits(_images(size=72), seed=1)
    images = _images()
    torch.testing.assert_close(ms.sub_logits(images, seed=2), _by_transformers(model, images, 0.5, 2), rtol=0, atol=0)
    assert ms.eval()(_images(size=72))["logits"].shape == (3, 5)  # eval runs the model alone: any size


def test_under_autocast_the_fp32_mask_token_fills_bf16_tokens():
    # helper-119's mutant (the token not cast to the tokens' dtype) passed the fp64 tests; under autocast the
    # embeddings' norm gives bf16 tokens and the op refused the fp32 token. Its gradient stays fp32
    model = tiny_swin("SwinForImageClassification").float()
    ms = MaskSub(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms(_images().float(), torch.tensor([0, 3, 4]), seed=1)
    out["loss"].backward()
    token = model.swin.embeddings.mask_token
    assert token.dtype == token.grad.dtype == torch.float32 and token.grad.abs().sum() > 0


# kills hf_swin.py:87 the token grid of (width, height) and hf_swin.py:88 `cell_size` -> 8 in check_batch: the batch
# checks were tested at the default cell of 8 and on square batches only, so a cell_size=4 run refused 48 px batches
# (12 x 12 tokens) and the refusal of a 72 x 64 batch named its grid 16 x 18
def test_each_batch_is_checked_with_the_runs_cell_size_and_its_own_grid():  # helper-202: S4, S5
    model = tiny_swin("SwinForImageClassification")
    target = torch.tensor([0, 3, 4])
    assert MaskSub(model, cell_size=4)(_images(size=48), target, seed=1)["loss"] > 0  # 12 x 12 tokens: 3 x 3 cells
    images = torch.randn(3, 3, 72, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"token grid 18 x 16 is not divisible"):
        MaskSub(model)(images, target, seed=1)


# hf_swin.py:96 `BEFORE = True` -> `False` (the mask token put on the dropout's output, not its input) is killed
# today only by test_one_token_and_one_hook_...'s count of pre-hooks: every tiny Swin has its dropout off, where the
# two give the same logits; with it on, the removed cells' tokens must be dropped out like the others (the official
# code and timm mask before the dropout), not pass as the bare mask token. Optional: a behavioural check of S13
def test_the_mask_token_goes_through_the_embeddings_dropout():  # helper-202: S13
    model = tiny_swin("SwinForImageClassification", hidden_dropout_prob=0.5)
    ms, images = MaskSub(model), _images()
    torch.manual_seed(11)  # the dropout's draws (the cells come from the seed, not torch's generator)
    got = ms.sub_logits(images, seed=7)
    torch.manual_seed(11)
    want = _masked_after_position(model, images, 0.5, 7)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# kills hf_swin.py:62 the width's token count by the patch's height (`conv.stride[0]` for both sides): every tiny
# Swin has a square patch; transformers' Swin takes a (height, width) one, whose token grid is then not square
def test_a_non_square_patch_masks_the_cells_of_its_own_token_grid():  # helper-202: S2
    model = tiny_swin("SwinForImageClassification", image_size=(64, 128), patch_size=(4, 8))
    images = torch.randn(2, 3, 64, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ms = MaskSub(model)  # 16 x 16 tokens: 2 x 2 cells of 8, 2 of them kept
    removed = mk.random_grid_mask(2, (2, 2), 2, seed=5).repeat_interleave(8, 1).repeat_interleave(8, 2)
    base = model.swin
    want = model.classifier(base(images, bool_masked_pos=removed.reshape(2, -1)).pooler_output)
    torch.testing.assert_close(ms.sub_logits(images, seed=5), want, rtol=0, atol=0)


# helper-202's finding: with a non-square patch (transformers' Swin takes patch_size=(h, w)) the refusals used the
# patch's height for both sides: "a multiple of 32 pixels" for a width that needs 64
def test_a_non_square_patch_is_named_per_side_in_the_refusals():
    model = tiny_swin("SwinForImageClassification", image_size=(64, 128), patch_size=(4, 8))
    with pytest.raises(ValueError, match=r"token grid 16 x 12 .* a multiple of 32 x 64 pixels \(height x width\) "
                       r"\(patch 4 x 8, cell 8\)"):  # fmt: skip
        MaskSub(model).check_input_size((64, 96))
    with pytest.raises(ValueError, match=r"mask cell\(s\) of 8 tokens that fit 32 x 64 images .* use images of 64 x "
                       r"128 pixels or more"):  # fmt: skip
        MaskSub(model).check_input_size((32, 64))


# helper-222 (the Swin family's second-pass mutation audit): the configured size's order and the run's ratio


# kills hf_swin.py:73 the config's (height, width) image size read as (width, height) (`tuple(size)[::-1]`): the
# configured grid is checked at construction, and every non-square config kept both orders divisible by the cells.
# 32 x 128 px at patch 4 x 8 is 8 x 16 tokens (1 x 2 cells of 8, one kept); read as 128 x 32 it is 32 x 4 tokens,
# which cells of 8 do not divide: a valid model was refused
def test_a_non_square_configured_size_is_checked_height_then_width():
    model = tiny_swin("SwinForImageClassification", image_size=(32, 128), patch_size=(4, 8))
    ms = MaskSub(model)
    images = torch.randn(2, 3, 32, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    removed = mk.random_grid_mask(2, (1, 2), 1, seed=5).repeat_interleave(8, 1).repeat_interleave(8, 2)
    want = model.classifier(model.swin(images, bool_masked_pos=removed.reshape(2, -1)).pooler_output)
    torch.testing.assert_close(ms.sub_logits(images, seed=5), want, rtol=0, atol=0)


# kills hf_swin.py:88 check_batch's `mask_ratio` -> 0.5: every batch check ran at r = 0.5, so a run at r = 0.8 took a
# 64 px batch (4 cells, of which 0.8 keeps none) through the main branch before the sub-branch's op refused it (the
# ordering helper-112 fixed for the cell size); the refusal must come first, in families.py's words
def test_each_batch_is_checked_with_the_runs_mask_ratio_before_the_main_branch():
    model = tiny_swin("SwinForImageClassification", image_size=128)  # 32 x 32 tokens: 16 cells, 0.8 keeps 3
    ms = MaskSub(model, mask_ratio=0.8)
    heads = []
    model.classifier.register_forward_hook(lambda *_: heads.append(1))
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)  # 16 x 16 tokens: 4 cells
    with pytest.raises(ValueError, match=r"mask_ratio=0.8 keeps none of the 4 mask cell\(s\)"):
        ms(images, torch.tensor([0, 3, 4]), seed=1)
    assert heads == []


# helper-250's mutation audit: kills hf_swin.py prepare's mask token drawn on the model's device again (a GPU run
# started from another token than the CPU run of its seed, helper-249) and the token left on the CPU; the meta device
# stands in for a GPU
def test_the_mask_token_is_drawn_on_the_cpu_and_lives_on_the_models_device(monkeypatch):
    from masksub_kernels.training import hf_swin

    drawn, real = [], torch.nn.init.trunc_normal_
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda t, **kw: drawn.append(t.device) or real(t, **kw))
    assert hf_swin.prepare(tiny_swin("SwinForImageClassification").to("meta"))[1].device.type == "meta"
    assert drawn == [torch.device("cpu")]
