"""random_keep_indices, gather_tokens, random_token_select: every backend against the reference, bit for bit."""

import math

import pytest
import torch
from _guards import guard
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels.ops import _token_select_reference as reference
from masksub_kernels.ops import token_select as ts
from masksub_kernels.ops._common import MAX_TOKENS

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference_ids(batch_size, num_tokens, num_keep, seed, ordered=False):
    return reference.select_reference(seed, batch_size, num_tokens, num_keep, torch.device("cpu"), ordered)


# ---------------------------------------------------------------------------------------------------------------
# random_keep_indices
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("num_tokens", "num_keep"), [(1, 1), (10, 5), (196, 98), (197, 1), (300, 300)])
def test_keep_indices_match_reference(backend, ordered, num_tokens, num_keep):
    ids = mk.random_keep_indices(3, num_tokens, num_keep, seed=1234, device=DEVICE, ordered=ordered)
    assert ids.dtype == torch.int64 and ids.shape == (3, num_keep) and ids.device.type == DEVICE.type
    assert torch.equal(ids.cpu(), reference_ids(3, num_tokens, num_keep, 1234, ordered))


def test_keep_indices_semantics_smallest_draws_in_draw_order():
    ids = mk.random_keep_indices(4, 50, 20, seed=77)
    draws = mk.philox_uint32(77, torch.arange(200).view(4, 50))
    for row in range(4):
        pairs = sorted((int(draws[row, p]), p) for p in range(50))
        assert ids[row].tolist() == [p for _, p in pairs[:20]]
    ordered = mk.random_keep_indices(4, 50, 20, seed=77, ordered=True)
    assert torch.equal(ordered, ids.sort(dim=1).values)


def test_keep_indices_large_sequence(kernel_backend):
    # the largest one-program sort the issue asks for (N up to 4096)
    ids = mk.random_keep_indices(1, 4096, 2048, seed=9, device=DEVICE, ordered=True)
    assert torch.equal(ids.cpu(), reference_ids(1, 4096, 2048, 9, ordered=True))


def test_seed_none_follows_torch_manual_seed(backend):
    torch.manual_seed(0)
    first = mk.random_keep_indices(2, 30, 10, device=DEVICE)
    torch.manual_seed(0)
    again = mk.random_keep_indices(2, 30, 10, device=DEVICE)
    other = mk.random_keep_indices(2, 30, 10, device=DEVICE)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_keep_indices_rows_unique_and_in_range():
    ids = mk.random_keep_indices(64, 97, 40, seed=5)
    assert bool(((ids >= 0) & (ids < 97)).all())
    assert all(len(set(row.tolist())) == 40 for row in ids)
    assert not torch.equal(ids[0], ids[1])  # rows draw different counters


def test_uniformity_chi_square():
    # Each position kept with frequency K/N: 4000 samples of N=16, K=8 -> 2000 expected per position.
    # chi-square with 15 degrees of freedom; 37.7 is its 0.999 quantile (fixed seed: deterministic).
    batch_size, num_tokens, num_keep = 4000, 16, 8
    ids = mk.random_keep_indices(batch_size, num_tokens, num_keep, seed=2024)
    counts = torch.bincount(ids.flatten(), minlength=num_tokens).double()
    expected = batch_size * num_keep / num_tokens
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 37.7, counts
    # and the first kept slot (the smallest draw) is uniform too
    first = torch.bincount(ids[:, 0], minlength=num_tokens).double()
    assert float(((first - batch_size / num_tokens) ** 2 / (batch_size / num_tokens)).sum()) < 37.7


def test_ratio_within_tolerance_over_seeds():
    # Over many seeds, each position of a ViT-S sequence is kept with frequency close to K/N = 98/196.
    hits = torch.zeros(196)
    for seed in range(200):
        hits += torch.bincount(mk.random_keep_indices(4, 196, 98, seed=seed).flatten(), minlength=196)
    frequency = hits / (200 * 4)
    assert float((frequency - 0.5).abs().max()) < 0.1


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((2, 0, 0), ValueError, "num_tokens"),
        ((2, 10, 0), ValueError, "num_keep"),
        ((2, 10, 11), ValueError, "num_keep"),
        ((-1, 10, 5), ValueError, r"batch_size must be in \[0, 2\*\*31\), got -1"),
        ((2**31, 10, 5), ValueError, r"batch_size must be in \[0, 2\*\*31\)"),  # as the cuda binding (helper-205)
        ((2.0, 10, 5), TypeError, "batch_size"),
        ((2, MAX_TOKENS + 1, 5), ValueError, "num_tokens"),
    ],
)
def test_keep_indices_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        mk.random_keep_indices(*args, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# gather_tokens and its backward
# ---------------------------------------------------------------------------------------------------------------


def make_tokens(batch_size, seq_len, dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, seq_len, dim, generator=generator).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_prefix", "num_tokens", "dim"), [(0, 9, 7), (1, 16, 1), (5, 12, 33), (1, 20, 384)])
def test_gather_and_backward_bit_exact(backend, dtype, num_prefix, num_tokens, dim):
    x = make_tokens(3, num_prefix + num_tokens, dim, dtype).requires_grad_(True)
    ids = mk.random_keep_indices(3, num_tokens, num_tokens // 2 + 1, seed=11, device=DEVICE)
    y = mk.gather_tokens(x, ids, num_prefix_tokens=num_prefix)
    grad_y = make_tokens(*y.shape, dtype, seed=1)
    y.backward(grad_y)

    x_ref = x.detach().cpu().requires_grad_(True)
    y_ref = reference.gather_reference(x_ref, ids.cpu(), num_prefix)
    y_ref.backward(grad_y.cpu())
    assert y.dtype == dtype and y.is_contiguous()
    assert torch.equal(y.detach().cpu(), y_ref.detach())
    assert torch.equal(x.grad.cpu(), x_ref.grad)
    # semantics spelled out: prefix passes through, kept rows gathered, dropped rows get zero gradient
    assert torch.equal(y[:, :num_prefix].detach(), x[:, :num_prefix].detach())
    dropped = torch.ones(3, num_tokens, dtype=torch.bool)
    dropped.scatter_(1, ids.cpu(), False)
    assert bool((x.grad.cpu()[:, num_prefix:][dropped] == 0).all())


@pytest.mark.parametrize("dim", [1000, 4096])
def test_gather_wide_channels(backend, dim):
    x = make_tokens(1, 1 + 6, dim, torch.bfloat16)
    ids = mk.random_keep_indices(1, 6, 3, seed=2, device=DEVICE)
    assert torch.equal(mk.gather_tokens(x, ids).cpu(), reference.gather_reference(x.cpu(), ids.cpu(), 1))


def test_gather_strided_layouts(backend):
    base = make_tokens(4, 24, 10, torch.float32)
    layouts = {
        "last stride != 1": base.transpose(1, 2).contiguous().transpose(1, 2),
        "strided batch and sequence": base[::2, ::2],
        "channel slice": base[:, :, 2:9],
    }
    for name, x in layouts.items():
        num_tokens = x.shape[1] - 1
        ids = mk.random_keep_indices(x.shape[0], num_tokens, 4, seed=3, device=DEVICE)
        x = x.detach().requires_grad_(True)
        y = mk.gather_tokens(x, ids)
        y.backward(torch.ones_like(y).transpose(0, 1).contiguous().transpose(0, 1))  # a strided grad_output
        expected = reference.gather_reference(x.detach().cpu(), ids.cpu(), 1)
        assert torch.equal(y.detach().cpu(), expected), name
        grad = reference.scatter_reference(torch.ones_like(expected), ids.cpu(), 1, num_tokens)
        assert torch.equal(x.grad.cpu(), grad)


def test_gather_does_not_write_into_input(backend):
    x = make_tokens(2, 9, 5, torch.float32)
    before = x.clone()
    ids = mk.random_keep_indices(2, 8, 4, seed=1, device=DEVICE)
    mk.gather_tokens(x, ids).sum()
    assert torch.equal(x, before)


def test_gather_int32_ids(backend):
    x = make_tokens(2, 9, 5, torch.float32)
    ids = mk.random_keep_indices(2, 8, 4, seed=1, device=DEVICE)
    assert torch.equal(mk.gather_tokens(x, ids.int()), mk.gather_tokens(x, ids))


def test_gather_empty_batch(backend):
    x = make_tokens(0, 9, 5, torch.float32).requires_grad_(True)
    ids = torch.zeros(0, 4, dtype=torch.int64, device=DEVICE)
    y = mk.gather_tokens(x, ids)
    assert y.shape == (0, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    ("x_shape", "ids", "kwargs", "error", "match"),
    [
        (
            (2, 9, 4),
            torch.zeros(2, 3, dtype=torch.int64),
            {"num_prefix_tokens": 9},
            ValueError,
            "num_prefix_tokens",
        ),
        ((2, 9), torch.zeros(2, 3, dtype=torch.int64), {}, ValueError, "3-D"),
        ((2, 9, 4), torch.zeros(3, 3, dtype=torch.int64), {}, ValueError, "batch=2"),
        ((2, 9, 4), torch.zeros(2, 9, dtype=torch.int64), {}, ValueError, "K <= 8"),
        ((2, 9, 4), torch.zeros(2, 3), {}, TypeError, "int64"),
        ((2, 9, 4), torch.tensor([[0, 1, 8], [0, 1, 2]]), {}, ValueError, r"\[0, 8\)"),
        ((2, 9, 4), torch.tensor([[0, 1, -1], [0, 1, 2]]), {}, ValueError, r"\[0, 8\)"),
        ((2, 9, 4), torch.tensor([[0, 1, 1], [0, 1, 2]]), {}, ValueError, "unique"),
        # helper-342's mutation audit of ops/_token_select_checks.py: a repeat that is not adjacent (fails with the
        # uniqueness test on the ids unsorted, line 52), ids of 3 dimensions (fails with `ids.dim() != 2` dropped,
        # line 38: a 'unique' error, unvalidated the backend's own) and ids of no kept token (fails with 0 <= K,
        # line 38: the prefix alone came back)
        ((1, 9, 4), torch.tensor([[2, 5, 2]]), {}, ValueError, "unique"),
        ((2, 9, 4), torch.zeros(2, 3, 1, dtype=torch.int64), {}, ValueError, r"ids must be \[batch=2, K\]"),
        ((2, 9, 4), torch.zeros(2, 0, dtype=torch.int64), {}, ValueError, r"1 <= K <= 8"),
    ],
)
def test_gather_bad_input(x_shape, ids, kwargs, error, match):
    with pytest.raises(error, match=match):
        mk.gather_tokens(torch.zeros(x_shape), ids, **kwargs)


def test_validated_ids_unique_per_row_whatever_the_other_rows_hold():
    # helper-342's mutation audit of ops/_token_select_checks.py:52 (the ids sorted along the batch, dim=0): rows
    # [1, 0] and [0, 1] are each unique; sorted down the batch they read [0, 0] and [1, 1], a repeat refused
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    ids = torch.tensor([[1, 0], [0, 1]])
    y = mk.gather_tokens(x, ids, num_prefix_tokens=1, validate_ids=True)
    assert torch.equal(y, torch.stack([x[0, [0, 2, 1]], x[1, [0, 1, 2]]]))


def test_gather_bad_dtype_and_device():
    with pytest.raises(TypeError, match="float32"):
        mk.gather_tokens(torch.zeros(2, 9, 4, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="device"):
        mk.gather_tokens(torch.zeros(2, 9, 4), torch.zeros(2, 3, dtype=torch.int64, device="meta"))


# ---------------------------------------------------------------------------------------------------------------
# random_token_select: the fused op and its contract
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_prefix", "num_tokens", "ratio"), [(1, 16, 0.5), (0, 15, 0.5), (5, 12, 0.75), (1, 9, 0.0)]
)
def test_token_select_contract(backend, ordered, dtype, num_prefix, num_tokens, ratio):
    x = make_tokens(3, num_prefix + num_tokens, 7, dtype).requires_grad_(True)
    y, ids = mk.random_token_select(x, ratio, num_prefix_tokens=num_prefix, seed=99, ordered=ordered)
    num_keep = math.floor(num_tokens * (1 - ratio))
    assert ids.shape == (3, num_keep) and y.shape == (3, num_prefix + num_keep, 7)
    assert torch.equal(ids.cpu(), reference_ids(3, num_tokens, num_keep, 99, ordered))
    assert torch.equal(ids, mk.random_keep_indices(3, num_tokens, num_keep, seed=99, device=DEVICE, ordered=ordered))
    assert torch.equal(y, mk.gather_tokens(x, ids, num_prefix_tokens=num_prefix))
    grad_y = make_tokens(*y.shape, dtype, seed=4)
    y.backward(grad_y)
    expected = reference.scatter_reference(grad_y.cpu(), ids.cpu(), num_prefix, num_tokens)
    assert torch.equal(x.grad.cpu(), expected)


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(
    ("num_prefix", "num_tokens", "dim"),
    [(1, 196, 600), (2, ts.FUSED_MAX_TOKENS, 24), (1, ts.FUSED_MAX_TOKENS + 1, 24), (0, 20, 0)],
)
def test_token_select_one_launch_and_two_launch_paths(backend, ordered, num_prefix, num_tokens, dim):
    # N <= FUSED_MAX_TOKENS: one kernel (every channel block sorts, the first writes ids and inv; D = 600 spans two
    # blocks, 99 rows several row trips); above: select then gather. Both equal the reference, with the masks too.
    x = make_tokens(2, num_prefix + num_tokens, dim, torch.float32).requires_grad_(True)
    generator = torch.Generator().manual_seed(1)
    keep = (torch.rand(2, num_tokens, generator=generator) < 0.05).to(DEVICE)
    drop = (torch.rand(2, num_tokens, generator=generator) < 0.3).to(DEVICE)
    for masks in ((None, None), (keep, drop)):
        y, ids = mk.random_token_select(
            x, 0.5, num_prefix_tokens=num_prefix, seed=21, ordered=ordered, always_keep=masks[0], drop_first=masks[1]
        )
        expected = reference.select_reference(21, 2, num_tokens, num_tokens // 2, torch.device("cpu"), ordered,
                                       *(m.cpu() if m is not None else None for m in masks))  # fmt: skip
        assert torch.equal(ids.cpu(), expected)
        assert torch.equal(y.cpu(), reference.gather_reference(x.detach().cpu(), expected, num_prefix))
        (grad_x,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert torch.equal(
            grad_x.cpu(), reference.scatter_reference(torch.ones_like(y).cpu(), expected, num_prefix, num_tokens)
        )


def test_token_select_identity_at_ratio_zero_when_ordered(backend):
    x = make_tokens(2, 11, 6, torch.float32)
    y, ids = mk.random_token_select(x, 0.0, seed=1, ordered=True)
    assert torch.equal(y, x)
    assert torch.equal(ids.cpu(), torch.arange(10).expand(2, 10))


@pytest.mark.parametrize(
    ("seq_len", "num_tokens_out"), [(197, 99), (145, 73), (122, 61)]
)  # docs/semantics.md §3: token counts at r = 0.5
def test_published_token_counts(seq_len, num_tokens_out):
    y, _ = mk.random_token_select(torch.zeros(1, seq_len, 2), 0.5, seed=0)
    assert y.shape[1] == num_tokens_out


def test_same_seed_same_ids_on_every_backend():
    results = {}
    for name in mk.available_backends():
        with mk.use_backend(name):
            try:
                _, results[name] = mk.random_token_select(make_tokens(2, 33, 3, torch.float32), seed=5)
            except RuntimeError:  # a backend that runs on another device only (cuda on a CPU tensor)
                continue
    assert len(results) >= 1
    first = next(iter(results.values())).cpu()
    assert all(torch.equal(ids.cpu(), first) for ids in results.values())


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_token_select_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        mk.random_token_select(torch.zeros(2, 9, 4), ratio)


def test_token_select_ratio_keeping_nothing():
    with pytest.raises(ValueError, match="= 0 of 3 tokens: at least one must be kept"):
        mk.random_token_select(torch.zeros(2, 4, 4), 0.9)


def test_backend_is_reported():
    x = torch.zeros(1, 5, 2)
    with mk.use_backend("torch"):
        mk.random_token_select(x, seed=0)
    assert mk.last_backend("random_token_select") == "torch"
    assert mk.resolve_backend("cpu") in mk.available_backends()


def test_torch_compile_fullgraph():
    # the ops are opaque custom ops: no graph break under torch.compile
    def step(x):
        y, _ = mk.random_token_select(x, 0.5, seed=3)
        return (y * 2).sum()

    x = torch.randn(2, 9, 4, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    loss.backward()
    x_eager = x.detach().clone().requires_grad_(True)
    step(x_eager).backward()
    assert torch.equal(x.grad, x_eager.grad)


# ---------------------------------------------------------------------------------------------------------------
# Seeds held in a device tensor (read by the kernels: CUDA-graph replays see new values)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
def test_seed_tensor_gives_the_int_seeds_ids(backend, ordered):
    seed = torch.tensor(123456789012, dtype=torch.int64, device=DEVICE)
    ids = mk.random_keep_indices(3, 40, 17, seed=seed, ordered=ordered)
    assert ids.device.type == DEVICE.type  # the device defaults to the seed's
    assert torch.equal(ids.cpu(), reference_ids(3, 40, 17, 123456789012, ordered))
    x = make_tokens(3, 41, 5, torch.float32)
    y, ids_fused = mk.random_token_select(x, 0.5, seed=seed.reshape(1), ordered=ordered)
    assert torch.equal(ids_fused.cpu(), reference_ids(3, 40, 20, 123456789012, ordered))
    assert torch.equal(y, mk.gather_tokens(x, ids_fused))


def test_the_device_defaults_to_the_seed_tensors_not_torchs_default():
    seed = torch.tensor(5, dtype=torch.int64, device="meta")  # torch's default device is the CPU
    ids = mk.random_keep_indices(2, 10, 5, seed=seed)
    mask = mk.random_grid_mask(2, 4, 5, seed=seed)
    assert ids.device.type == "meta" and ids.shape == (2, 5) and ids.dtype == torch.int64
    assert mask.device.type == "meta" and mask.shape == (2, 4, 4) and mask.dtype == torch.bool


def test_seed_tensor_updated_in_place_changes_the_ids(backend):
    seed = torch.zeros((), dtype=torch.int64, device=DEVICE)
    first = mk.random_keep_indices(2, 30, 10, seed=seed)
    seed.add_(1)  # what a captured graph would do between replays
    second = mk.random_keep_indices(2, 30, 10, seed=seed)
    assert torch.equal(first.cpu(), reference_ids(2, 30, 10, 0))
    assert torch.equal(second.cpu(), reference_ids(2, 30, 10, 1))


def test_seed_tensor_bad_input():
    with pytest.raises(TypeError, match="one int64"):
        mk.random_keep_indices(2, 10, 5, seed=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="one int64"):
        mk.random_keep_indices(2, 10, 5, seed=torch.tensor(1.0))
    with pytest.raises(ValueError, match="op's device"):
        mk.random_keep_indices(2, 10, 5, seed=torch.tensor(1), device="meta")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
def test_cuda_graph_replay_draws_the_seed_tensors_mask(kernel_backend):
    seed = torch.zeros((), dtype=torch.int64, device=DEVICE)
    x = make_tokens(4, 1 + 64, 32, torch.float32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mk.random_token_select(x, seed=seed)  # warm-up: kernels compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, ids = mk.random_token_select(x, seed=seed)
    for value in (5, 6):
        seed.fill_(value)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(ids.cpu(), reference_ids(4, 64, 32, value))
        assert torch.equal(y.cpu(), reference.gather_reference(x.cpu(), ids.cpu(), 1))


@pytest.mark.parametrize("num_prefix", [0, 1, 4])
def test_torch_backend_row_copies_equal_the_references(num_prefix):
    # gather_rows / scatter_rows (index_select / index_copy_ of whole rows: the torch backend) against the
    # references, bit for bit: strided input, fp16, an empty batch, and unvalidated out-of-range ids (the references'
    # spill row: zeros gathered, nothing scattered).
    gen = torch.Generator().manual_seed(num_prefix)
    wide = torch.randn(3, num_prefix + 10, 2 * 6, generator=gen)
    ids = torch.stack([torch.randperm(10, generator=gen)[:4] for _ in range(3)])
    bad = ids.clone()
    bad[0, 1], bad[2, 3] = 10, -1
    for x in (wide[:, :, ::2], wide[:, :, :6].half().contiguous(), wide[:0, :, :6], wide[:, :, :0]):
        for index in (ids[: x.shape[0]], bad[: x.shape[0]]):
            y = ts.gather_rows(x, index, num_prefix)
            assert y.is_contiguous() and torch.equal(y, reference.gather_reference(x, index, num_prefix))
            grad_y = torch.randn(y.shape, generator=gen).to(x.dtype)
            expected = reference.scatter_reference(grad_y, index, num_prefix, 10)
            assert torch.equal(ts.scatter_rows(grad_y, index, num_prefix, 10), expected)
            assert torch.equal(
                ts.scatter_rows(grad_y.transpose(1, 2).contiguous().transpose(1, 2), index, num_prefix, 10), expected
            )


def test_outputs_can_be_changed_in_place(backend):
    # y += pos_embed, y.mul_(...), in-place dropout: the torch backend returned a view of a temporary, which its
    # autograd Function marked as a view and refused to change in place, where the kernels' outputs allowed it
    x = torch.randn(2, 9, 4, device=DEVICE, requires_grad=True)
    ids = mk.random_keep_indices(2, 8, 3, seed=5, device=DEVICE)
    for y in (mk.gather_tokens(x, ids), mk.random_token_select(x, 0.6, seed=5)[0]):
        assert not y._is_view()
        y.mul_(2)
        y.sum().backward()
    expected = torch.zeros_like(x)
    expected[:, 0] = 4  # the prefix and the kept tokens: once by each call, times 2
    expected.scatter_(1, (ids + 1)[..., None].expand(-1, -1, 4), 4.0)
    torch.testing.assert_close(x.grad, expected)


def test_meta_masks_with_validation_asked_are_not_read(backend):
    # token_select.py:149 `and not always_keep.is_meta`: a meta mask has no values to count
    keep = torch.empty(2, 8, dtype=torch.bool, device="meta")
    ids = mk.random_keep_indices(2, 8, 3, seed=1, always_keep=keep, validate_masks=True)
    assert ids.is_meta and ids.shape == (2, 3)
    x = torch.empty(2, 9, 4, device="meta")
    y, ids = mk.random_token_select(x, 0.5, seed=1, always_keep=keep, validate_masks=True)
    assert y.shape == (2, 5, 4) and ids.shape == (2, 4)


def test_meta_ids_with_validation_asked_are_not_read(backend):
    # token_select.py:515 `and not getattr(ids, "is_meta", False)`
    x = torch.empty(2, 9, 4, device="meta")
    y = mk.gather_tokens(x, torch.empty(2, 3, dtype=torch.int64, device="meta"), validate_ids=True)
    assert y.is_meta and y.shape == (2, 4, 4)


def test_token_select_refuses_more_than_max_tokens():
    # token_select.py:543 check_keep_args: N = MAX_TOKENS + 1 patch tokens is refused (meta: no kernel runs)
    x = torch.empty(1, 1 + MAX_TOKENS + 1, 2, device="meta")
    with pytest.raises(ValueError, match="num_tokens must be in"):
        mk.random_token_select(x, 0.5, seed=0)


@pytest.mark.skipif("triton" not in mk.available_backends(), reason="no Triton backend")
@pytest.mark.parametrize("num_tokens", [16, 300])  # the one-launch selection + gather; selection, then row copies
def test_triton_kernels_store_nothing_past_their_outputs(monkeypatch, num_tokens):
    # helper-175's T08 (`kept = lanes < K` -> `<=`: ids[row, K]), T14 (`out_rows < total_rows` -> `<=`) and T19
    # (`row_ok = t < P + K` -> `< P + K + 1`) were killed only by the interpreter's crash, where memory happened to
    # end: here the last row of every output is followed by a guard row that must stay as it was
    guarded = guard(monkeypatch, ts, guard_rows=True)
    batch, prefix, dim = 3, 1, 40
    num_keep = mk.num_kept_tokens(num_tokens, 0.5)  # P + K and B (P + K): not multiples of the copy tiles' rows
    x = torch.randn(batch, prefix + num_tokens, dim, device=DEVICE, requires_grad=True)
    block_r = ts._copy_tile(dim, x.element_size())[0]
    assert (prefix + num_keep) % block_r and (batch * (prefix + num_keep)) % block_r
    with mk.use_backend("triton"):
        y, ids = mk.random_token_select(x, 0.5, num_prefix_tokens=prefix, seed=11)[:2]
        y.backward(torch.ones_like(y))
        kept = mk.random_keep_indices(batch, num_tokens, num_keep, seed=11, device=DEVICE)
    assert ids.shape == (batch, num_keep) and torch.equal(kept, ids)
    # 6 guarded: the selected rows, their ids, the draw's int32 keys and the backward's rows [B, P + N, D]; the
    # check's random_keep_indices: ids and keys again (a launcher's output left unguarded would leave 5)
    assert len(guarded.guards) == 6 and guarded.untouched()
    with mk.use_backend("torch"):
        torch.testing.assert_close(y, mk.random_token_select(x.detach(), 0.5, num_prefix_tokens=prefix, seed=11)[0])


# kills token_select.py:220 (`if x.stride(2) != 1: x = x.contiguous()` dropped from _select_gather_triton)
def test_token_select_of_a_strided_channel_axis_equals_the_reference(backend):
    # the one-launch kernel (N <= FUSED_MAX_TOKENS) takes x's batch and token strides only, its channels
    # contiguous; test_gather_strided_layouts covers gather_tokens' copy, not this launch: a view with every
    # other channel (a sliced head, x[..., ::2]) was read as if contiguous
    wide = torch.randn(2, 9, 8, device=DEVICE)
    x = wide[:, :, ::2].requires_grad_()
    y, ids = mk.random_token_select(x, 0.5, seed=3)
    assert torch.equal(y.cpu(), reference.gather_reference(x.detach().cpu(), ids.cpu(), 1))
    grad_y = torch.randn(y.shape, device=DEVICE)
    (grad_x,) = torch.autograd.grad(y, x, grad_y)
    assert torch.equal(grad_x.cpu(), reference.scatter_reference(grad_y.cpu(), ids.cpu(), 1, 8))


def test_validation_by_default_reads_cpu_tensors_only():
    # helper-342's mutation audit of ops/_token_select_checks.py:96 (`device.type == "cpu"` dropped): the validate_*
    # flags' default (None) reads values on CPU only, never a GPU's (a host sync per call); an explicit flag decides
    from masksub_kernels.ops._token_select_checks import _validate_default

    values = (torch.zeros(2, 3, dtype=torch.int64),)
    assert _validate_default(None, torch.device("cpu"), "validate_ids", values) is True
    assert _validate_default(None, torch.device("cuda", 0), "validate_ids", values) is False
    assert _validate_default(True, torch.device("cuda", 0), "validate_ids", values) is True
