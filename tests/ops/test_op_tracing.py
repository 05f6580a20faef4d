"""The ops under tracers and dispatch modes (ops/_common.py: _tracing picks the op's route, values_readable whether a
default validation may read values): make_fx (real, pre-dispatch) traces one custom op whose values nobody checks,
while a user's dispatch mode (FlopCounterMode, selective checkpointing) or a plain Tensor subclass runs on real
values, which the default checks of class ids, token ids and priority masks still read. From helper-201's review."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

import masksub_kernels as mk


def test_make_fx_traces_the_token_ops_whose_default_validation_reads_values(backend):
    # gather_tokens' ids and the priority masks are validated by default on CPU tensors, which reads their values:
    # make_fx's real mode hands the call plain tensors under its dispatch mode, and the check read a tracing tensor
    # ("It appears that you're trying to get value out of a tracing tensor"). Now skipped while a tracer runs
    # (_common.values_readable), as under torch.compile: the op is one node, its values checked by nobody
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(2, 1 + 8, 4, device=DEVICE)
    ids = torch.tensor([[0, 5, 2], [7, 1, 3]], device=DEVICE)
    keep = torch.tensor([[True] + [False] * 7, [False] * 8], device=DEVICE)
    calls = (
        (lambda x, ids: mk.gather_tokens(x, ids), (x, ids), "gather_tokens"),
        (lambda keep: mk.random_keep_indices(2, 8, 3, seed=4, always_keep=keep), (keep,), "select_tokens"),
        (lambda x, keep: mk.random_token_select(x, 0.5, seed=4, drop_first=keep)[0], (x, keep), "select_gather"),
    )
    for call, args, op in calls:
        graph = make_fx(call)(*args)
        called = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
        assert f"masksub.{op}.default" in called or f"masksub.{op}_tokens.default" in called, called
        assert torch.equal(graph(*args), call(*args))


# kills the HEAD version of _common.values_readable (`return not _tracing(tensors)`: any dispatch mode counts as a
# tracer): under FlopCounterMode, DebugMode, a user's TorchDispatchMode or selective activation checkpointing
# (torch.utils.checkpoint's caching modes) the default checks of class ids, token ids and priority masks were
# skipped, so an eager CPU call let a bad id through (a NaN row, a row of zeros, a silently clipped mask)


class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _user_modes():
    from torch.utils.flop_counter import FlopCounterMode

    yield "FlopCounterMode", lambda: FlopCounterMode(display=False)
    yield "TorchDispatchMode", _PassThrough


def _bad_calls():
    # CPU tensors: the default validations read values on CPU only
    x = torch.randn(2, 5, 3)
    logits, bad_target = torch.randn(4, 6), torch.tensor([0, 1, 9, 2])
    too_many_kept = torch.ones(2, 4, dtype=torch.bool)  # 4 always-keep positions, num_keep 2
    yield "class ids", lambda: mk.soft_target_cross_entropy(logits, bad_target), "class ids must be in"
    yield (
        "fused-linear class ids",
        lambda: mk.linear_soft_target_cross_entropy(torch.randn(4, 3), torch.randn(6, 3), None, bad_target),
        "class ids must be in",
    )
    yield "token ids", lambda: mk.gather_tokens(x, torch.tensor([[0, 7], [1, 2]])), "ids must index patch tokens"
    yield "priority masks", lambda: mk.random_keep_indices(2, 4, 2, seed=0, always_keep=too_many_kept), "always"
    yield (
        "priority masks of random_token_select",
        lambda: mk.random_token_select(x, 0.5, seed=0, always_keep=too_many_kept),
        "always",
    )


@pytest.mark.parametrize("mode_name, mode", list(_user_modes()))
def test_default_validations_still_read_values_under_a_users_dispatch_mode(mode_name, mode):
    # values_readable must skip the checks under the tracers' own modes (make_fx's proxy mode, fake and functional
    # tensors) only: a profiling or logging mode runs on real tensors, whose values the check can read
    for _what, call, message in _bad_calls():
        with pytest.raises(ValueError, match=message), mode():
            call()


def test_default_validation_reads_the_ids_under_selective_checkpointing():
    # torch.utils.checkpoint's selective checkpointing runs the forward (and its recompute) under its caching
    # dispatch modes: the ids are real, and an out-of-range one is refused as in a plain forward
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    x = torch.randn(2, 5, 3, requires_grad=True)
    ids = torch.tensor([[0, 7], [1, 2]])

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.PREFER_RECOMPUTE

    with pytest.raises(ValueError, match="ids must index patch tokens"):
        checkpoint(
            lambda x: mk.gather_tokens(x, ids).sum(),
            x,
            use_reentrant=False,
            context_fn=lambda: create_selective_checkpoint_contexts(policy),
        )


# kills _common._tracing / values_readable without torch.fx.experimental.proxy_tensor.get_proxy_mode(): make_fx's
# pre-dispatch tracing (pre_dispatch=True, the mode torch.export's non-strict path uses) keeps its proxy mode on a
# separate stack that _get_current_dispatch_mode does not see, so the default checks read a tracing tensor and the
# op ran its eager path ("It appears that you're trying to get value out of a tracing tensor")


def test_make_fx_pre_dispatch_traces_the_ops_whose_default_validation_reads_values():
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(2, 1 + 4, 3)
    ids = torch.tensor([[0, 3], [1, 2]])
    keep = torch.tensor([[True, False, False, False], [False, False, True, False]])
    logits, sub, target = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, -100, 5, 2])
    calls = (
        (lambda x, ids: mk.gather_tokens(x, ids), (x, ids)),
        (lambda keep: mk.random_keep_indices(2, 4, 2, seed=3, always_keep=keep), (keep,)),
        (lambda x, keep: mk.random_token_select(x, 0.5, seed=3, always_keep=keep)[0], (x, keep)),
        (lambda a, b, t: mk.masksub_loss(a, b, t, ignore_index=-100).loss, (logits, sub, target)),
    )
    for call, args in calls:
        graph = make_fx(call, pre_dispatch=True)(*args)
        assert any(str(node.target).startswith("masksub.") for node in graph.graph.nodes), graph.code
        torch.testing.assert_close(
            graph(*args), call(*args)
        )  # the losses: the op against the eager path, fp32 rounding


# kills values_readable's `type(t) not in _PLAIN_TENSORS` (via _tracing): a plain Python subclass of Tensor (no
# __torch_dispatch__: its values are on the host as a Tensor's) as x or ids turned gather_tokens' and
# random_token_select's default checks off, which 617f531 ran


class _Tagged(torch.Tensor):
    """A user's tag subclass (no __torch_dispatch__), as a library may wrap its activations."""


def test_default_validations_read_a_plain_tensor_subclass():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="ids must index patch tokens"):
        mk.gather_tokens(x.as_subclass(_Tagged), torch.tensor([[0, 7], [1, 2]]))
    with pytest.raises(ValueError, match="ids must index patch tokens"):
        mk.gather_tokens(x, torch.tensor([[0, 7], [1, 2]]).as_subclass(_Tagged))
    with pytest.raises(ValueError, match="always"):
        mk.random_token_select(x.as_subclass(_Tagged), 0.5, seed=0, always_keep=torch.ones(2, 4, dtype=torch.bool))


# helper-201: a symbolic trace (make_fx's 'symbolic' mode, torch.export's dynamic_shapes) hands the ops SymInt sizes,
# refused as "batch_size must be an int, got SymInt", which read as the caller's mistake; the grid masks named the
# cell count num_tokens. The message now says what happened and what to do (torch.compile specialises them itself)
def test_a_symbolic_trace_is_told_the_ops_take_static_sizes():
    from torch.fx.experimental.proxy_tensor import make_fx

    calls = (
        (lambda x: mk.random_token_select(x, 0.5, seed=3)[0], torch.randn(2, 1 + 4, 3)),
        (lambda x: mk.mask_image_grid(x, 0.5, cell_size=4, seed=3)[0], torch.randn(2, 3, 8, 8)),
    )
    for call, x in calls:
        with pytest.raises(TypeError, match=r"is a symbolic size \(.+\): the ops take static sizes"):
            make_fx(call, tracing_mode="symbolic")(x)
        assert torch.equal(make_fx(call, tracing_mode="fake")(x)(x), call(x))  # static shapes trace


def test_a_non_strict_export_with_a_dynamic_batch_is_told_so_and_a_strict_one_traces():
    # non-strict torch.export counts as compiling without dynamo: the SymInt batch got "must be an int, got SymInt"
    # (helper-211); it gets the symbolic-size message now. Strict export's dynamo handles the batch (at most 2^31 - 1)
    class Select(torch.nn.Module):
        def forward(self, x):
            return mk.random_token_select(x, 0.5, seed=3)[0]

    x, batch = torch.randn(4, 1 + 8, 3), torch.export.Dim("batch", min=2, max=1024)
    with pytest.raises(TypeError, match=r"batch_size is a symbolic size \(.+\): the ops take static sizes"):
        torch.export.export(Select(), (x,), dynamic_shapes={"x": {0: batch}}, strict=False)
    exported = torch.export.export(Select(), (x,), dynamic_shapes={"x": {0: batch}}, strict=True).module()
    other = torch.randn(6, 1 + 8, 3)
    assert torch.equal(exported(other), Select()(other))
