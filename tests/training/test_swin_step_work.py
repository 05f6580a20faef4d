"""The timm Swin MaskSub step does the official step's model work and no more (helper-126).

The 2026-12-04 H200 run timed this library's Swin-T step (sequential 113.7 ms, joint 100.9 ms) above the official
code's (81.9 ms). These tests pin what a CPU can see: per step, the model's heavy ops (matmuls, the patch convolution,
norms, softmax, GELU, rolls; by input shape) are those of the official-style step of the benchmark harness
(bench/train_step.py), forwards and backwards alike; the sub-branch adds one token-sized write (the masked tokens)
to the model's own ops, less than the official masking's blend; the model's blocks run once per branch; MaskSub
leaves the model's hooks and timm's attention settings alone. Op counts from torch.profiler (a spy), not timings.
"""

import collections
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from masksub_kernels.bench.train_step import _step_functions, official_sub_logits
from masksub_kernels.training import MaskSub

timm = pytest.importorskip("timm")

# the harness's CPU Swin ("Swin 64px (tiny cfg)"), smaller: 16 x 16 stage-1 tokens, 2 x 2 cells of 8
SWIN_KWARGS = {"img_size": 64, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)}
HEAVY = (
    "aten::mm", "aten::addmm", "aten::bmm", "aten::convolution", "aten::convolution_backward",
    "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::_softmax", "aten::_softmax_backward_data",
    "aten::gelu", "aten::gelu_backward", "aten::roll",
)  # fmt: skip
LOGITS = "[[2, 10]"  # the first input of an op on the logits
ELEMENTWISE = ("aten::add", "aten::mul", "aten::copy_", "aten::clone", "aten::where", "aten::index_put_")


def _setup(batch_size=2):
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, **SWIN_KWARGS)
    ms = MaskSub(model, mask_ratio=0.5).train()
    optimizer = torch.optim.AdamW(ms.parameters(), lr=1e-4, foreach=True)
    images = torch.randn(batch_size, 3, 64, 64)
    labels = torch.randint(0, 10, (batch_size,))
    steps = _step_functions(ms, optimizer, images, F.one_hot(labels, 10).float(), labels, contextlib.nullcontext)
    return ms, images, steps


def _ops(fn) -> collections.Counter:
    """(op, input shapes) -> calls in one call of fn, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return collections.Counter(
        {(e.key, str(e.input_shapes)): e.count for e in prof.key_averages(group_by_input_shape=True)}
    )


def _select(ops: collections.Counter, names, shape=None) -> collections.Counter:
    """The ops of ``names`` (on ``shape`` when given), less those on the logits [B, classes] (the criteria's, which
    differ by design: the official code's eager log_softmax / softmax against the library's fused losses)."""
    return collections.Counter({
        key: n for key, n in ops.items()
        if key[0] in names and (shape is None or shape in key[1]) and not key[1].startswith(LOGITS)
    })  # fmt: skip


@pytest.mark.parametrize("provider", ["masksub (sequential)", "masksub (joint)"])
def test_swin_step_runs_the_official_steps_heavy_ops(provider):
    _, _, steps = _setup()
    for fn in steps.values():
        fn()  # optimizer state, lazy inits
    official = _ops(steps["masksub official-style (sequential)"])
    ours = _ops(steps[provider])
    plain = _ops(steps["plain"])
    assert _select(ours, HEAVY) == _select(official, HEAVY)
    # two branches: each heavy op (by shape) twice the plain step's, e.g. no second sub forward, no forward rerun
    assert _select(ours, HEAVY) == collections.Counter({key: 2 * n for key, n in _select(plain, HEAVY).items()})


def test_swin_sub_branch_token_work_is_one_write_of_the_tokens():
    # Beyond the model's own ops on the stage-1 tokens, the sub-branch's masking writes them once (the masked copy,
    # torch backend on CPU; its backward works on a flat [B H W, C] view): no extra copy, cast or blend. The official
    # masking's blend, x * (1 - m) + t * m, costs 4 token-sized ops (3 mul, 1 add) and its backward more.
    ms, images, _ = _setup()
    tokens = "[2, 16, 16, 16]"  # [B, H, W, C] stage-1 tokens

    def model_alone():
        ms.model(images).sum().backward()

    def ours():
        ms.sub_logits(images, seed=3).sum().backward()

    def official():
        official_sub_logits(ms, images).sum().backward()

    model_alone(), ours(), official()
    base = _select(_ops(model_alone), ELEMENTWISE, tokens)
    mine, theirs = _select(_ops(ours), ELEMENTWISE, tokens), _select(_ops(official), ELEMENTWISE, tokens)
    assert sum(base.values()) > 0  # the shapes and names still find the model's own ops
    assert sum((mine - base).values()) <= 1 and not base - mine, (mine - base, base - mine)
    assert sum((theirs - base).values()) >= 4  # the official blend, for scale
    assert _select(_ops(ours), HEAVY) == _select(_ops(official), HEAVY) == _select(_ops(model_alone), HEAVY)


@pytest.mark.parametrize("schedule", ["sequential", "joint"])
def test_swin_blocks_run_once_per_branch(schedule):
    ms, images, _ = _setup()
    calls = collections.Counter()
    blocks = [m for m in ms.model.modules() if type(m).__name__ == "SwinTransformerBlock"]
    handles = [b.register_forward_hook(lambda m, a, o: calls.update([id(m)])) for b in blocks]
    patch = ms.model.patch_embed.register_forward_hook(lambda m, a, o: calls.update(["patch_embed"]))
    optimizer = torch.optim.AdamW(ms.parameters(), lr=1e-4)
    ms.train_step(images, torch.tensor([1, 2]), optimizer, schedule=schedule)
    for handle in [*handles, patch]:
        handle.remove()
    assert calls["patch_embed"] == 2
    assert sorted(calls[id(b)] for b in blocks) == [2] * len(blocks)


def test_masksub_leaves_timm_swin_hooks_and_attention_alone():
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, **SWIN_KWARGS)

    def state(m):
        return {
            name: (getattr(mod, "fused_attn", None), len(mod._forward_hooks), len(mod._forward_pre_hooks),
                   len(mod._backward_hooks), len(getattr(mod, "_backward_pre_hooks", {})))
            for name, mod in m.named_modules()
        }  # fmt: skip

    before = state(model)
    ms = MaskSub(model)
    assert state(model) == before
    assert [name for name, _ in ms.named_parameters() if not name.startswith("model.")] == ["mask_token"]
