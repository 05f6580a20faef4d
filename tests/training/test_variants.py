"""DropSub / PathSub: the sub-branch runs at rate r, the model's own rates come back afterwards (even on error)."""

import pytest
import torch
from _models import batch, tiny_vit
from timm.layers import DropPath

from masksub_kernels.training import MaskSub


def _rates(model):
    """(dropout p of every proj / MLP dropout, attention-dropout p, drop-path slots as (type, rate))."""
    drops, attn = [], []
    for name, m in model.blocks.named_modules():
        if isinstance(m, torch.nn.Dropout):
            (attn if name.endswith("attn_drop") else drops).append(m.p)
    paths = [
        (type(m).__name__, getattr(m, "drop_prob", 0.0))
        for block in model.blocks
        for name, m in block.named_children()
        if name.startswith("drop_path")
    ]
    return drops, attn, paths


class _Recorder:
    """Forward pre-hooks on the blocks that record the rates seen while each block runs."""

    def __init__(self, model):
        self.seen = []
        for block in model.blocks:
            block.register_forward_pre_hook(lambda module, args: self.seen.append(_rates_of_block(module)))


def _rates_of_block(block):
    drops = [m.p for n, m in block.named_modules() if isinstance(m, torch.nn.Dropout) and not n.endswith("attn_drop")]
    attn = [m.p for n, m in block.named_modules() if n.endswith("attn_drop")]
    paths = [getattr(m, "drop_prob", 0.0) for n, m in block.named_children() if n.startswith("drop_path")]
    return drops, attn, paths


@pytest.mark.parametrize("own_drop_path", [0.0, 0.1])
def test_pathsub_runs_the_sub_branch_at_rate_r_and_restores(own_drop_path):
    model = tiny_vit(drop_path_rate=own_drop_path, attn_drop_rate=0.05)
    before = _rates(model)
    ms = MaskSub(model, variant="path", mask_ratio=0.3).train()
    recorder = _Recorder(model)
    ms(*batch("vit", dtype=torch.float32), seed=1)
    depth = len(model.blocks)
    main, sub = recorder.seen[:depth], recorder.seen[depth:]
    assert all(paths == [0.3, 0.3] for _, _, paths in sub)  # uniform over depth
    assert all(attn == [0.05] for _, attn, _ in sub)
    assert [paths for _, _, paths in main] == [[p for _, p in before[2][2 * i : 2 * i + 2]] for i in range(depth)]
    assert _rates(model) == before
    if own_drop_path == 0.0:  # timm put Identity there: the original modules are back, not DropPath(0)
        assert all(kind == "Identity" for kind, _ in _rates(model)[2])


def test_dropsub_sets_projection_and_mlp_dropout_only_and_restores():
    model = tiny_vit(proj_drop_rate=0.02, attn_drop_rate=0.05)
    before = _rates(model)
    ms = MaskSub(model, variant="drop", mask_ratio=0.4).train()
    recorder = _Recorder(model)
    ms(*batch("vit", dtype=torch.float32), seed=1)
    sub = recorder.seen[len(model.blocks) :]
    assert all(drops and all(p == 0.4 for p in drops) for drops, _, _ in sub)
    assert all(attn == [0.05] for _, attn, _ in sub)  # attention dropout untouched
    assert _rates(model) == before


@pytest.mark.parametrize("variant", ["drop", "path"])
def test_rates_are_restored_when_the_sub_forward_raises(variant):
    model = tiny_vit(drop_path_rate=0.1, proj_drop_rate=0.02)
    before = _rates(model)
    modules_before = list(model.modules())
    ms = MaskSub(model, variant=variant).train()
    images, target = batch("vit", dtype=torch.float32)
    calls = []

    def fail_in_sub_branch(module, args):
        calls.append(1)
        if len(calls) > len(model.blocks):  # the main branch passes, the sub branch fails
            raise RuntimeError("boom")

    handles = [block.register_forward_pre_hook(fail_in_sub_branch) for block in model.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        ms(images, target)
    for h in handles:
        h.remove()
    assert _rates(model) == before
    assert list(model.modules()) == modules_before
    ms(images, target)  # still trains


def test_variants_in_eval_mode_run_the_plain_model():
    model = tiny_vit(drop_path_rate=0.1).eval()
    ms = MaskSub(model, variant="path").eval()
    images, _ = batch("vit", dtype=torch.float32)
    torch.testing.assert_close(ms(images)["logits"], model(images))
    assert not any(isinstance(m, DropPath) and m.drop_prob == 0.5 for m in model.modules())


@pytest.mark.parametrize("variant", ["drop", "path"])
def test_dropsub_and_pathsub_take_a_rate_that_would_keep_no_token(variant):
    # helper-277: the forward's image check took DropSub's / PathSub's rate for a share of tokens dropped and refused
    # r = 0.8 on a 4-token grid (floor(4 * 0.2) = 0 kept), where these variants drop no token: it trained before
    model = tiny_vit(img_size=16, patch_size=8)  # 2 x 2 patch tokens
    ms = MaskSub(model, variant=variant, mask_ratio=0.8).train()
    images, target = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    out = ms(images, target)
    assert torch.isfinite(out["loss"])
