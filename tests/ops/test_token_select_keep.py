"""random_keep_indices / random_token_select with always_keep and drop_first (docs/semantics.md §4): every backend
against the reference bit for bit, the reference against the stated order, properties, and the traced paths.
Bad input to the masks is in tests/ops/test_op_inputs.py."""

import pytest
import torch
from conftest import DEVICE, property_settings
from hypothesis import given
from hypothesis import strategies as st

import masksub_kernels as mk
from masksub_kernels.ops import _token_select_reference as reference
from masksub_kernels.ops import token_select as ts

CPU = torch.device("cpu")


def random_masks(batch_size, num_tokens, num_keep, seed, keep_rate=0.2, drop_rate=0.3):
    """(always_keep, drop_first) bool [B, N] on DEVICE, at most num_keep always-keep positions per row (the rest of
    a row's always-keep draws are cleared), overlapping drop-first ones."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(batch_size, num_tokens, generator=generator) < keep_rate
    keep &= keep.cumsum(dim=1) <= num_keep
    drop = torch.rand(batch_size, num_tokens, generator=generator) < drop_rate
    return keep.to(DEVICE), drop.to(DEVICE)


def stated_order(seed, batch_size, num_tokens, num_keep, keep, drop, ordered=False):
    """The selection as docs/semantics.md states it, from the raw draws: sort by (class, draw, position) with
    class 0 = always-keep (draw taken as 0), 1 = ordinary, 2 = drop-first and not always-keep (draw taken as max)."""
    draws = mk.philox_uint32(seed, torch.arange(batch_size * num_tokens).view(batch_size, num_tokens))
    keep = torch.zeros(batch_size, num_tokens, dtype=torch.bool) if keep is None else keep.cpu()
    drop = torch.zeros(batch_size, num_tokens, dtype=torch.bool) if drop is None else drop.cpu()
    rows = []
    for b in range(batch_size):

        def key(p, b=b):
            if keep[b, p]:
                return (0, 0, p)
            if drop[b, p]:
                return (2, 2**32 - 1, p)
            return (1, int(draws[b, p]), p)

        kept = sorted(range(num_tokens), key=key)[:num_keep]
        rows.append(sorted(kept) if ordered else kept)
    return torch.tensor(rows, dtype=torch.int64).view(batch_size, num_keep)


# ---------------------------------------------------------------------------------------------------------------
# The reference: its keys give the stated order; absent or empty masks give the plain selection
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("batch_size", "num_tokens", "num_keep"), [(3, 1, 1), (4, 20, 7), (2, 50, 50), (3, 33, 1)])
def test_reference_is_the_stated_order(batch_size, num_tokens, num_keep, ordered):
    keep, drop = random_masks(batch_size, num_tokens, num_keep, seed=num_tokens)
    for masks in ((keep, drop), (keep, None), (None, drop)):
        ids = reference.select_reference(7, batch_size, num_tokens, num_keep, DEVICE, ordered, *masks)
        assert torch.equal(ids.cpu(), stated_order(7, batch_size, num_tokens, num_keep, *masks, ordered=ordered))


def test_priority_keys_on_the_edge_draws():
    # Draws of exactly 0 and 2^32 - 1 (2^-32 each: no seed at hand produces them) must stay ordinary: after every
    # always-keep position and before every drop-first one, in (draw, position) order among themselves.
    num_tokens = 6
    draws = torch.tensor([[0, 2**32 - 1, 0, 5, 2**32 - 1, 0]], dtype=torch.int64)
    positions = torch.arange(num_tokens)
    keys = ((draws - 2**31) << 32) + positions
    keep = torch.tensor([[False, False, False, False, False, True]])
    drop = torch.tensor([[False, False, False, False, True, True]])
    order = torch.argsort(reference.priority_keys(keys, keep, drop), dim=1)
    assert order.tolist() == [[5, 0, 2, 3, 1, 4]]  # keep 5 | draws 0, 0, 5, max | drop 4
    # without masks the +N on draw-0 keys never reorders: the plain order
    none = torch.zeros(1, num_tokens, dtype=torch.bool)
    assert torch.equal(torch.argsort(reference.priority_keys(keys, none, none), dim=1), torch.argsort(keys, dim=1))
    assert reference.priority_keys(keys, None, None) is keys


def test_empty_masks_give_the_plain_selection(backend):
    plain = mk.random_keep_indices(5, 40, 13, seed=3, device=DEVICE)
    none = torch.zeros(5, 40, dtype=torch.bool, device=DEVICE)
    for masks in ({"always_keep": none}, {"drop_first": none}, {"always_keep": none, "drop_first": none}):
        assert torch.equal(mk.random_keep_indices(5, 40, 13, seed=3, device=DEVICE, **masks), plain)
    assert torch.equal(plain.cpu(), reference.select_reference(3, 5, 40, 13, CPU, False))


# ---------------------------------------------------------------------------------------------------------------
# Every backend against the reference: ids, inverse map, gathered tokens, the backward scatter
# ---------------------------------------------------------------------------------------------------------------


def strided_variants(mask):
    """The same mask in other layouts: column-major, a stepped slice of a wider tensor, expanded (stride 0)."""
    wide = torch.zeros(mask.shape[0], 2 * mask.shape[1], dtype=torch.bool, device=mask.device)
    wide[:, ::2] = mask
    return {
        "contiguous": mask,
        "column-major": mask.t().contiguous().t(),
        "stepped": wide[:, ::2],
    }


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("batch_size", "num_tokens", "num_keep"), [(3, 1, 1), (4, 37, 12), (2, 196, 98)])
def test_ids_and_inverse_match_reference(backend, batch_size, num_tokens, num_keep, ordered):
    keep, drop = random_masks(batch_size, num_tokens, num_keep, seed=num_keep)
    for masks in ((keep, drop), (keep, None), (None, drop)):
        on_cpu = [None if m is None else m.cpu() for m in masks]
        expected = reference.select_reference(5, batch_size, num_tokens, num_keep, CPU, ordered, *on_cpu)
        ids, inv = ts._select_op(5, None, batch_size, num_tokens, num_keep, DEVICE, ordered, True, *masks)
        assert torch.equal(ids.cpu(), expected)
        assert inv.dtype == torch.int32 and torch.equal(inv.cpu(), reference.inverse_reference(expected, num_tokens))
        public = mk.random_keep_indices(batch_size, num_tokens, num_keep, seed=5, ordered=ordered,
                                        always_keep=masks[0], drop_first=masks[1])  # fmt: skip
        assert torch.equal(public.cpu(), expected) and public.device.type == DEVICE.type  # device: the masks'


def test_strided_masks_read_in_place(backend):
    keep, drop = random_masks(3, 30, 10, seed=1)
    expected = reference.select_reference(9, 3, 30, 10, CPU, False, keep.cpu(), drop.cpu())
    before = (keep.clone(), drop.clone())
    for name, k in strided_variants(keep).items():
        for other, d in strided_variants(drop).items():
            ids = mk.random_keep_indices(3, 30, 10, seed=9, always_keep=k, drop_first=d)
            assert torch.equal(ids.cpu(), expected), (name, other)
    assert torch.equal(keep, before[0]) and torch.equal(drop, before[1])  # never written
    # one row's mask for the whole batch (batch stride 0)
    shared = keep[:1].expand(3, 30)
    ids = mk.random_keep_indices(3, 30, 10, seed=9, always_keep=shared)
    assert torch.equal(ids.cpu(), reference.select_reference(9, 3, 30, 10, CPU, False, shared.cpu()))


@pytest.mark.parametrize(("num_tokens", "num_keep"), [(256, 100), (1000, 500), (2048, 1024), (4095, 2000)])
def test_every_block_shape(kernel_backend, num_tokens, num_keep):
    # the CUDA kernel's block shapes up to 4096 keys (8192 below); Triton's masks take one path at every block
    # size, and its interpreter needs a minute for a 4096-key sort: up to 1024 keys there
    if kernel_backend == "triton" and DEVICE.type == "cpu" and num_tokens > 1024:
        pytest.skip("the Triton interpreter: the smaller blocks cover the same code")
    keep, drop = random_masks(2, num_tokens, num_keep, seed=num_tokens, keep_rate=0.1)
    for ordered in (False, True):
        ids = mk.random_keep_indices(2, num_tokens, num_keep, seed=4, ordered=ordered, always_keep=keep,
                                     drop_first=drop)  # fmt: skip
        expected = reference.select_reference(4, 2, num_tokens, num_keep, CPU, ordered, keep.cpu(), drop.cpu())
        assert torch.equal(ids.cpu(), expected)


def test_largest_row_on_the_cuda_backend():
    if "cuda" not in mk.available_backends():
        pytest.skip("no cuda backend (GPU or CUDA emulator) in this run")
    keep, drop = random_masks(1, 8192, 4096, seed=8192, keep_rate=0.05)
    with mk.use_backend("cuda"):
        ids = mk.random_keep_indices(1, 8192, 4096, seed=4, device=DEVICE, always_keep=keep, drop_first=drop)
    assert torch.equal(ids.cpu(), reference.select_reference(4, 1, 8192, 4096, CPU, False, keep.cpu(), drop.cpu()))


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("num_prefix", "num_tokens", "ratio"), [(1, 16, 0.5), (0, 15, 0.75), (2, 9, 0.0)])
def test_token_select_forward_and_backward_match_reference(backend, num_prefix, num_tokens, ratio, ordered):
    num_keep = mk.num_kept_tokens(num_tokens, ratio)
    keep, drop = random_masks(3, num_tokens, num_keep, seed=num_tokens, keep_rate=0.3)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, num_prefix + num_tokens, 7, generator=generator).to(DEVICE).requires_grad_(True)
    y, ids = mk.random_token_select(x, ratio, num_prefix_tokens=num_prefix, seed=21, ordered=ordered,
                                    always_keep=keep, drop_first=drop)  # fmt: skip
    expected = reference.select_reference(21, 3, num_tokens, num_keep, CPU, ordered, keep.cpu(), drop.cpu())
    assert torch.equal(ids.cpu(), expected)
    assert torch.equal(y.detach().cpu(), reference.gather_reference(x.detach().cpu(), expected, num_prefix))
    grad_y = torch.randn(y.shape, generator=generator).to(DEVICE)
    y.backward(grad_y)
    assert torch.equal(x.grad.cpu(), reference.scatter_reference(grad_y.cpu(), expected, num_prefix, num_tokens))


# ---------------------------------------------------------------------------------------------------------------
# Properties on every backend: always-keep positions kept first, drop-first ones dropped before any random one
# ---------------------------------------------------------------------------------------------------------------


@property_settings(12)
@given(
    batch_size=st.integers(1, 3),
    num_tokens=st.integers(1, 40),
    keep_fraction=st.floats(0.0, 1.0),
    rates=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    seed=st.integers(-(2**63), 2**63 - 1),
    ordered=st.booleans(),
)
def test_properties_on_every_backend(batch_size, num_tokens, keep_fraction, rates, seed, ordered):
    num_keep = max(1, round(keep_fraction * num_tokens))
    keep, drop = random_masks(batch_size, num_tokens, num_keep, seed % 2**32, *rates)
    expected = reference.select_reference(seed, batch_size, num_tokens, num_keep, CPU, ordered, keep.cpu(), drop.cpu())
    for name in mk.available_backends():
        with mk.use_backend(name):
            ids = mk.random_keep_indices(batch_size, num_tokens, num_keep, seed=seed, device=DEVICE,
                                         ordered=ordered, always_keep=keep, drop_first=drop)  # fmt: skip
        assert torch.equal(ids.cpu(), expected), name
    keep, drop = keep.cpu(), drop.cpu() & ~keep.cpu()
    for b in range(batch_size):
        kept = torch.zeros(num_tokens, dtype=torch.bool)
        kept[expected[b]] = True
        assert bool(kept[keep[b]].all())  # every always-keep position is kept
        ordinary = ~keep[b] & ~drop[b]
        if bool((kept & drop[b]).any()):  # a drop-first position is kept only once every ordinary one is
            assert bool(kept[ordinary].all())
        if not ordered:  # ascending-key order: always-keep by position, ordinary, drop-first by position
            row = expected[b].tolist()
            classes = [0 if keep[b, p] else 2 if drop[b, p] else 1 for p in row]
            assert classes == sorted(classes)
            for fixed in (0, 2):  # the always-keep and the drop-first positions each come by position
                positions = [p for p, c in zip(row, classes) if c == fixed]
                assert positions == sorted(positions)


def test_too_many_always_keep_unvalidated_keeps_the_lowest_positions(backend):
    keep = torch.zeros(2, 12, dtype=torch.bool, device=DEVICE)
    keep[0, [1, 3, 4, 8, 10]] = True  # 5 > K = 3
    keep[1, [0, 11]] = True
    ids = mk.random_keep_indices(2, 12, 3, seed=2, device=DEVICE, always_keep=keep, validate_masks=False)
    assert ids[0].tolist() == [1, 3, 4]
    assert ids[1, :2].tolist() == [0, 11]
    assert torch.equal(ids.cpu(), reference.select_reference(2, 2, 12, 3, CPU, False, keep.cpu()))


def test_always_keep_wins_over_drop_first(backend):
    both = torch.zeros(1, 10, dtype=torch.bool, device=DEVICE)
    both[0, [2, 7]] = True
    ids = mk.random_keep_indices(1, 10, 2, seed=0, device=DEVICE, always_keep=both, drop_first=both)
    assert ids.tolist() == [[2, 7]]
    drop_all = torch.ones(1, 10, dtype=torch.bool, device=DEVICE)
    ids = mk.random_keep_indices(1, 10, 4, seed=0, device=DEVICE, always_keep=both, drop_first=drop_all)
    assert ids.tolist() == [[2, 7, 0, 1]]  # then the drop-first positions, by position


# ---------------------------------------------------------------------------------------------------------------
# Traced paths: meta tensors, torch.compile, opcheck of the custom op with the new arguments
# ---------------------------------------------------------------------------------------------------------------


def test_meta_masks(backend):
    meta = torch.device("meta")
    keep = torch.empty(2, 8, dtype=torch.bool, device=meta)
    y, ids = mk.random_token_select(torch.empty(2, 9, 4, device=meta), 0.5, seed=1, always_keep=keep, drop_first=keep)
    assert y.is_meta and y.shape == (2, 5, 4) and ids.shape == (2, 4)
    assert mk.random_keep_indices(2, 8, 3, seed=1, always_keep=keep).shape == (2, 3)  # device: the mask's


def test_torch_compile_fullgraph_with_masks():
    keep, drop = random_masks(2, 8, 4, seed=3)
    keep, drop = keep.cpu(), drop.cpu()

    def step(x, keep, drop):
        y, ids = mk.random_token_select(x, 0.5, seed=3, always_keep=keep, drop_first=drop)
        return (y * 2).sum(), ids

    x = torch.randn(2, 9, 4, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, ids = compiled(x, keep, drop)
    loss.backward()
    x_eager = x.detach().clone().requires_grad_(True)
    loss_eager, ids_eager = step(x_eager, keep, drop)
    loss_eager.backward()
    assert torch.equal(ids, ids_eager) and torch.equal(x.grad, x_eager.grad)


def test_opcheck_of_the_selection_with_masks(backend):
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    keep, drop = random_masks(3, 10, 5, seed=0)
    for masks in ((keep, drop), (keep.t().contiguous().t(), None), (None, drop), (None, None)):
        for ordered, inverse in ((False, True), (True, False)):
            args = (6, None, 3, 10, 5, DEVICE, ordered, inverse, *masks)
            torch.library.opcheck(ts._select_op.custom_op, args, test_utils=checks)


def test_the_cuda_binding_checks_the_masks():
    # behind the public checks, the extension's own (a direct caller of masksub_kernels._C gets them too)
    if "cuda" not in mk.available_backends():
        pytest.skip("no cuda backend (GPU or CUDA emulator) in this run")
    from masksub_kernels import _backend

    extension = _backend.extension(DEVICE.type)
    good = torch.zeros(2, 8, dtype=torch.bool, device=DEVICE)
    bad = {  # of the Python backends' kinds (helper-205)
        "always_keep must be bool, got uint8": (TypeError, {"always_keep": good.to(torch.uint8)}),
        r"drop_first must have shape \[2, 8\], got \[2, 7\]": (ValueError, {"drop_first": good[:, :7]}),
        "always_keep must be on": (ValueError, {"always_keep": torch.zeros(2, 8, dtype=torch.bool, device="meta")}),
    }
    for message, (error, masks) in bad.items():
        with pytest.raises(error, match=message):
            extension.select_tokens(1, None, 2, 8, 4, False, True, DEVICE, **masks)
    ids, _ = extension.select_tokens(1, None, 2, 8, 4, False, False, DEVICE, good, good)
    assert torch.equal(ids.cpu(), reference.select_reference(1, 2, 8, 4, CPU, False))


# helper-180's mutation audit of _token_select_reference.py


def test_token_select_reference_drop_first_ranks_after_a_max_draw_at_a_later_position():
    # kills _token_select_reference.py:29 `DROP_FIRST_KEY + num_tokens + positions` -> `DROP_FIRST_KEY + positions`
    # (a drop-first token p would then rank before an ordinary token q > p whose draw is 2^32 - 1)
    draws = torch.tensor([[5, 2**32 - 1, 7]], dtype=torch.int64)
    keys = ((draws - 2**31) << 32) + torch.arange(3)
    drop = torch.tensor([[True, False, False]])
    order = torch.argsort(reference.priority_keys(keys, None, drop), dim=1)
    assert order.tolist() == [[2, 1, 0]]  # draw 7 | draw 2^32 - 1 | drop-first
