"""The CUDA extension's token select / gather / scatter (csrc/token_select.cu, bindings_token_select.cpp):
refusals on any machine, then bit for bit against the reference on the kernels' device (extension_under_test.py)."""

import pytest
import torch
from extension_under_test import _C, CPU, DEV, EXT, FLOAT_DTYPES, gpu, kernels, needs_C, refused

import masksub_kernels as mk
from masksub_kernels._philox import philox_uint32
from masksub_kernels.ops import _token_select_reference as reference
from masksub_kernels.ops import token_grid_mask as tgm

# ---------------------------------------------------------------------------------------------------------------
# Refusals (any machine): messages name the argument, what was expected and what came
# ---------------------------------------------------------------------------------------------------------------


@needs_C
def test_select_refuses_cpu_device():
    with refused("device must be a CUDA device, got cpu"):
        _C.select_tokens(1, None, 2, 10, 5, False, True, CPU)


@needs_C
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, -1, 10, 5), r"batch_size must be in \[0, 2\*\*31\), got -1"),
        ((1, 2, 0, 1), r"num_tokens must be in \[1, 8192\], got 0"),
        ((1, 2, 8193, 5), r"num_tokens must be in \[1, 8192\], got 8193"),
        ((1, 2, 10, 0), r"num_keep must be in \[1, num_tokens=10\], got 0"),
        ((1, 2, 10, 11), r"num_keep must be in \[1, num_tokens=10\], got 11"),
    ],
)
def test_select_refuses_bad_sizes(args, message):
    with refused(message):
        _C.select_tokens(args[0], None, *args[1:], False, True, CPU)


@needs_C
def test_gather_refuses_cpu_tensors():
    x = torch.randn(2, 5, 4)
    ids = torch.zeros(2, 2, dtype=torch.int64)
    with refused("x must be a CUDA tensor, got cpu"):
        _C.gather_tokens(x, ids, 1)


@needs_C
@pytest.mark.parametrize(
    ("x", "ids", "prefix", "message"),
    [
        (torch.randn(5, 4), torch.zeros(2, 2, dtype=torch.int64), 1, r"x must be \[batch, prefix \+ tokens, dim\] "),
        (
            torch.zeros(2, 5, 4, dtype=torch.int32),
            torch.zeros(2, 2, dtype=torch.int64),
            1,
            "x must be float32, float16, bfloat16 or float64, got int32",
        ),
        (torch.randn(2, 5, 4), torch.zeros(2, dtype=torch.int64), 1, r"ids must be \[batch, K\] \(2-D\), got shape"),
        (torch.randn(2, 5, 4), torch.zeros(2, 2), 1, "ids must be int64 or int32, got float32"),
        (torch.randn(2, 5, 4), torch.zeros(2, 2, dtype=torch.int64), 5, r"num_prefix_tokens must be in \[0, seq"),
        (torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.int64), 1, r"ids must have 1 <= K <= 4 \(patch"),
        (torch.randn(2, 5, 4), torch.zeros(3, 2, dtype=torch.int32), 1, r"ids must have shape \[2, 2\], got \[3, 2\]"),
    ],
)
def test_gather_refuses_bad_metadata(x, ids, prefix, message):
    with refused(message):
        _C.gather_tokens(x, ids, prefix)


@needs_C
def test_select_gather_refuses_cpu_tensors():
    with refused("x must be a CUDA tensor, got cpu"):
        _C.select_gather_tokens(torch.randn(2, 5, 4), 1, None, 2, 1, False)


@needs_C
def test_scatter_refuses_cpu_tensors():
    grad_y = torch.randn(2, 3, 4)
    inv = torch.full((2, 4), -1, dtype=torch.int32)
    with refused("grad_y must be a CUDA tensor, got cpu"):
        _C.scatter_tokens(grad_y, inv, 1)


@needs_C
@pytest.mark.parametrize(
    ("grad_y", "inv", "prefix", "message"),
    [
        (torch.randn(3, 4), torch.zeros(2, 4, dtype=torch.int32), 1, r"grad_y must be \[batch, prefix \+ kept"),
        (torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.int64), 1, "inv must be int32, got int64"),
        (
            torch.randn(2, 3, 4).to(torch.int64),
            torch.zeros(2, 4, dtype=torch.int32),
            1,
            "grad_y must be float32, float16, bfloat16 or float64, got int64",
        ),
        (torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.int32), 3, r"num_prefix_tokens must be in \[0, grad_y"),
        (torch.randn(2, 3, 4), torch.zeros(2, 1, dtype=torch.int32), 1, "inv must have at least K=2"),
        (torch.randn(2, 3, 4), torch.zeros(1, 4, dtype=torch.int32), 1, r"inv must have shape \[2, 4\], got \[1, 4\]"),
    ],
)
def test_scatter_refuses_bad_metadata(grad_y, inv, prefix, message):
    with refused(message):
        _C.scatter_tokens(grad_y, inv, prefix)


# ---------------------------------------------------------------------------------------------------------------
# Kernels: bit for bit against the reference
# ---------------------------------------------------------------------------------------------------------------


# (B, N, K): every block shape of the selection kernel (capacities 256 ... 8192), edges K = 1 and K = N.
SELECT_SIZES = [
    (3, 1, 1),
    (4, 10, 5),
    (8, 196, 98),
    (2, 256, 256),
    (3, 257, 100),
    (2, 512, 1),
    (2, 1000, 500),
    (2, 2048, 1024),
    (2, 4095, 2047),
    (1, 8192, 4096),
]


@kernels
@pytest.mark.parametrize("write_inverse", [True, False])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("batch_size", "num_tokens", "num_keep"), SELECT_SIZES)
def test_select_matches_reference(batch_size, num_tokens, num_keep, ordered, write_inverse):
    seed = 0x1234_5678_9ABC
    ids, inv = EXT.select_tokens(seed, None, batch_size, num_tokens, num_keep, ordered, write_inverse, DEV)
    expected = reference.select_reference(seed, batch_size, num_tokens, num_keep, CPU, ordered)
    assert ids.dtype == torch.int64 and ids.is_contiguous() and ids.device.type == DEV.type
    assert torch.equal(ids.cpu(), expected)
    if write_inverse:
        assert inv.dtype == torch.int32 and inv.shape == (batch_size, num_tokens)
        assert torch.equal(inv.cpu(), reference.inverse_reference(expected, num_tokens))
    else:
        assert inv is None


@kernels
def test_select_breaks_draw_ties_by_position():
    # Equal 32-bit draws within a row of 8192 happen (~0.8% of rows); seed 11 has them in rows 44, 188 and 245.
    # The full order (K = N) must match the reference's (draw, position) order there: the sort is stable.
    seed, rows, num_tokens = 11, 256, 8192
    device = DEV
    draws = philox_uint32(seed, torch.arange(rows * num_tokens, device=device).view(rows, num_tokens))
    ordered_draws = draws.sort(dim=1).values
    tied = (ordered_draws[:, 1:] == ordered_draws[:, :-1]).any(dim=1).nonzero().flatten().tolist()
    assert tied == [44, 188, 245]
    ids, _ = EXT.select_tokens(seed, None, rows, num_tokens, num_tokens, False, False, device)
    expected = reference.select_reference(seed, rows, num_tokens, num_tokens, device, False)
    assert torch.equal(ids[tied], expected[tied])
    assert torch.equal(ids, expected)


@gpu
@pytest.mark.gpu
def test_select_counters_past_two_to_the_32():
    # Draw offsets b * N + n reach 2^32 here: the counter's high word (offset >> 32) must enter Philox. Too large
    # for the emulator (4.3e9 draws); 4 MB of ids on a GPU.
    seed, rows, num_tokens = 5, 524288, 8192
    ids, _ = EXT.select_tokens(seed, None, rows, num_tokens, 1, False, False, DEV)
    for row in (0, rows // 2 - 1, rows // 2, rows - 1):  # offsets below and above 2^32 = (rows / 2) * num_tokens
        offsets = row * num_tokens + torch.arange(num_tokens, device=DEV)
        draws = philox_uint32(seed, offsets)
        assert int(ids[row, 0]) == int(torch.argmin(draws)), row  # ties go to the first position, as in the kernel


@kernels
def test_select_empty_batch_and_current_device():
    ids, inv = EXT.select_tokens(3, None, 0, 16, 8, False, True, DEV)
    assert ids.shape == (0, 8) and inv.shape == (0, 16)
    ids, _ = EXT.select_tokens(3, None, 1, 16, 8, False, False, DEV)  # no index: the current device
    if DEV.type == "cuda":
        assert ids.device == torch.device("cuda", torch.cuda.current_device())


# (P, N, K, D): a ViT-S row (16-byte words), odd widths (2- and 4-byte words), D = 1, K = N, no prefix.
COPY_SIZES = [(1, 196, 98, 384), (0, 10, 3, 7), (4, 64, 64, 1), (2, 50, 25, 130)]


def _random_ids(batch_size, num_tokens, num_keep, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(num_tokens, generator=generator)[:num_keep] for _ in range(batch_size)]
    return torch.stack(rows).to(dtype)


def _layouts(x):
    """x itself and views of it with other strides: a sequence stride > row, a batch-major transpose, a channel
    slice that breaks 16-byte alignment, and channels-strided (last stride != 1, copied by the binding)."""
    batch_size, seq_len, dim = x.shape
    padded = torch.zeros(batch_size, seq_len * 2, dim + 3, dtype=x.dtype, device=x.device)
    padded[:, ::2, 1 : dim + 1] = x
    transposed = x.transpose(0, 1).contiguous().transpose(0, 1)
    channels_strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    return {
        "contiguous": x,
        "sequence-strided": padded[:, ::2, 1 : dim + 1],
        "transposed": transposed,
        "channels-strided": channels_strided,
    }


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize(("prefix", "num_tokens", "num_keep", "dim"), COPY_SIZES)
def test_gather_matches_reference(dtype, index_dtype, prefix, num_tokens, num_keep, dim):
    x = torch.randn(3, prefix + num_tokens, dim).to(dtype).to(DEV)
    ids = _random_ids(3, num_tokens, num_keep, index_dtype).to(DEV)
    expected = reference.gather_reference(x, ids, prefix)
    for name, view in _layouts(x).items():
        y = EXT.gather_tokens(view, ids, prefix)
        assert y.dtype == dtype and y.is_contiguous() and y.shape == expected.shape, name
        assert torch.equal(y, expected), name
    # ids with strides of their own (a column slice): read through their strides
    wide = torch.cat([ids, ids], dim=1)[:, ::2]
    assert torch.equal(EXT.gather_tokens(x, wide, prefix), reference.gather_reference(x, wide.contiguous(), prefix))


@kernels
def test_gather_out_of_range_ids_read_zeros():
    x = torch.randn(2, 6, 8, device=DEV)
    ids = torch.tensor([[0, 5], [-1, 2]], device=DEV)
    y = EXT.gather_tokens(x, ids, 1)
    assert torch.equal(y[0, 2], torch.zeros(8, device=DEV)) and torch.equal(y[1, 1], torch.zeros(8, device=DEV))
    assert torch.equal(y[1, 2], x[1, 3])


@kernels
def test_scatter_out_of_range_slots_write_zeros():
    grad_y = torch.randn(2, 3, 8, device=DEV)  # P = 1, K = 2: valid slots are 0 and 1
    inv = torch.tensor([[0, 2, -1, 1, 7], [1, -1, 2, 0, -5]], dtype=torch.int32, device=DEV)
    grad_x = EXT.scatter_tokens(grad_y, inv, 1)
    zero = torch.zeros(8, device=DEV)
    for b, t in ((0, 2), (0, 3), (0, 5), (1, 2), (1, 3), (1, 5)):  # slots 2, -1, 7, -1, 2, -5
        assert torch.equal(grad_x[b, t], zero), (b, t)
    for b, t, slot in ((0, 1, 0), (0, 4, 1), (1, 1, 1), (1, 4, 0)):
        assert torch.equal(grad_x[b, t], grad_y[b, 1 + slot]), (b, t)
    assert torch.equal(grad_x[:, 0], grad_y[:, 0])  # the prefix token


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("prefix", "num_tokens", "num_keep", "dim"), COPY_SIZES)
def test_scatter_matches_reference(dtype, prefix, num_tokens, num_keep, dim):
    ids = _random_ids(3, num_tokens, num_keep, torch.int64).to(DEV)
    inv = reference.inverse_reference(ids, num_tokens)
    grad_y = torch.randn(3, prefix + num_keep, dim).to(dtype).to(DEV)
    expected = reference.scatter_reference(grad_y, ids, prefix, num_tokens)
    for name, view in _layouts(grad_y).items():
        grad_x = EXT.scatter_tokens(view, inv, prefix)
        assert grad_x.dtype == dtype and grad_x.is_contiguous() and grad_x.shape == expected.shape, name
        assert torch.equal(grad_x, expected), name
    # every element is written (no zero-fill pass): NaN left in the reused allocation must not survive
    poison = torch.full_like(expected, float("nan"))
    del poison
    assert torch.equal(EXT.scatter_tokens(grad_y, inv, prefix), expected)


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_public_ops_with_cuda_backend_match_torch_backend(dtype):
    x = torch.randn(4, 1 + 196, 192, device=DEV).to(dtype).requires_grad_()
    grad = torch.randn(4, 1 + 98, 192, device=DEV).to(dtype)
    results = {}
    for backend in ("torch", "cuda"):
        with mk.use_backend(backend):
            y, ids = mk.random_token_select(x, 0.5, seed=99)
            assert mk.last_backend("gather_tokens") == backend
            (grad_x,) = torch.autograd.grad(y, x, grad)
            ordered = mk.random_keep_indices(4, 196, 98, seed=99, device=DEV, ordered=True)
        results[backend] = (y, ids, grad_x, ordered)
    for expected, got in zip(results["torch"], results["cuda"]):
        assert torch.equal(expected, got)


# (B, P, N, K, D) of the fused select + gather: its three block shapes (N <= 256, 512, 1024), column splits (few
# samples, rows of 64+ words: 3 splits of 32 16-byte words at D = 384 fp32; a shorter last split at D = 130 fp32,
# 65 8-byte words) and one split (rows of < 64 words), K = N, no prefix; above 1024 tokens, select then gather.
SELECT_GATHER_SIZES = [
    (3, 1, 196, 98, 384),
    (2, 0, 10, 10, 7),
    (2, 4, 300, 150, 130),
    (2, 1, 1024, 512, 40),
    (2, 1, 1025, 100, 24),
]


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("batch_size", "prefix", "num_tokens", "num_keep", "dim"), SELECT_GATHER_SIZES)
def test_select_gather_matches_reference(batch_size, prefix, num_tokens, num_keep, dim, ordered, dtype):
    seed = 0x5EED_1234_ABCD
    x = torch.randn(batch_size, prefix + num_tokens, dim).to(dtype).to(DEV)
    expected_ids = reference.select_reference(seed, batch_size, num_tokens, num_keep, CPU, ordered)
    expected_inv = reference.inverse_reference(expected_ids, num_tokens)
    expected_y = reference.gather_reference(x.cpu(), expected_ids, prefix)
    for name, view in _layouts(x).items():  # 16-, 8-, 4- and 2-byte words, strided rows
        y, ids, inv = EXT.select_gather_tokens(view, seed, None, num_keep, prefix, ordered)
        assert ids.dtype == torch.int64 and inv.dtype == torch.int32 and y.dtype == dtype, name
        assert y.is_contiguous() and y.shape == expected_y.shape and y.device.type == DEV.type, name
        assert torch.equal(ids.cpu(), expected_ids), name
        assert torch.equal(inv.cpu(), expected_inv), name
        assert torch.equal(y.cpu(), expected_y), name


@kernels
@pytest.mark.parametrize(("num_tokens", "num_keep"), [(196, 98), (700, 300), (1500, 600)])
def test_select_gather_with_masks_and_seed_tensor(num_tokens, num_keep):
    # always-keep / drop-first (the two-pass sort) and a seed read on the device, fused (N <= 1024) and not
    generator = torch.Generator().manual_seed(num_tokens)
    keep = torch.rand(3, num_tokens, generator=generator) < 0.1
    drop = torch.rand(3, num_tokens, generator=generator) < 0.3
    x = torch.randn(3, 1 + num_tokens, 96, generator=generator).to(DEV)
    seed = torch.tensor([-77], dtype=torch.int64, device=DEV)
    for ordered in (False, True):
        y, ids, inv = EXT.select_gather_tokens(x, 0, seed, num_keep, 1, ordered, keep.to(DEV), drop.to(DEV))
        expected = reference.select_reference(-77, 3, num_tokens, num_keep, CPU, ordered, keep, drop)
        assert torch.equal(ids.cpu(), expected), ordered
        assert torch.equal(inv.cpu(), reference.inverse_reference(expected, num_tokens)), ordered
        assert torch.equal(y.cpu(), reference.gather_reference(x.cpu(), expected, 1)), ordered


@kernels
def test_select_gather_empty_batch_and_refusals():
    y, ids, inv = EXT.select_gather_tokens(torch.randn(0, 11, 8, device=DEV), 3, None, 5, 1, False)
    assert y.shape == (0, 6, 8) and ids.shape == (0, 5) and inv.shape == (0, 10)
    x = torch.randn(2, 11, 8, device=DEV)
    for args, message in (
        ((3, None, 11, 1, False), r"num_keep must be in \[1, num_tokens=10\], got 11"),
        ((3, None, 5, 11, False), r"num_prefix_tokens must be in \[0, sequence length 11\)"),
        ((3, None, 5, 1, False, torch.zeros(2, 9, dtype=torch.bool, device=DEV)), "always_keep must have shape"),
    ):
        with refused(message):
            EXT.select_gather_tokens(x, *args)


# helper-181's mutation audit of csrc/row_copy.cuh: the copy's word bounded by the row size


@kernels
def test_row_copy_word_bounded_by_the_row_size():
    # Kills csrc/row_copy.cuh launch_copy_rows `alignment_bits | address_bits(dst) | row_bytes` -> row_bytes left
    # out (csrc/row_copy.cuh:105): rows of 7 fp32 (28 bytes) whose addresses and strides are all multiples of 16
    # bytes (a slice of [.., 8] rows) must still move as 4-byte words; with 16-byte words each row would copy 16 of
    # its 28 bytes, to the wrong place. (tests/ops/test_token_select.py::test_gather_strided_layouts[cuda] kills the
    # mutant through the gather too; this test puts it in tests/cuda_extension/ and adds the token-mask row copy.)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 11, 8, generator=generator).to(DEV)[..., :7]
    assert x.stride() == (88, 8, 1)
    ids = torch.tensor([[0, 9, 4], [7, 1, 2]])
    y = EXT.gather_tokens(x, ids.to(DEV), 1)
    assert torch.equal(y.cpu(), reference.gather_reference(x.cpu(), ids, 1))
    tokens, token = torch.randn(2, 4, 4, 8, generator=generator).to(DEV)[..., :7], torch.randn(7).to(DEV)
    cells = torch.tensor([[[True, False], [False, True]], [[False, False], [True, True]]])
    out = EXT.mask_tokens_grid_forward(tokens, token, cells.to(DEV), 2)
    assert torch.equal(out.cpu(), tgm.mask_tokens_reference(tokens.cpu(), token.cpu(), cells, 2))


# helper-215's second-pass mutation audit of csrc/ on the emulator (42 mutants, 14 gaps): the tests below


@kernels
def test_select_class_order_at_draws_of_zero_and_all_ones():
    # Kills csrc/token_select.cu select_row `SortBlockedToStriped(draws, positions, 0, kClassBits)` -> `(draws,
    # positions, 1, kClassBits)` (the class pass over its high bit only, which also passes every test with random
    # draws): an always-keep position takes the draw 0, so an ordinary position whose Philox draw is 0 ties with it
    # in the first (draw) pass, and only the class pass puts the always-keep one first, as the reference's keys do
    # (-2^63 + p before (0 - 2^31) 2^32 + N + p). Seed 65551043 draws 0 at position 27 of row 0 (found by an
    # exhaustive search in C, ~1 draw in 2^32); position 40, later, is always kept. The same at the other end: seed
    # 74293844 draws 0xFFFFFFFF at position 20, the draw a drop-first position takes, and the ordinary position
    # must come before the drop-first position 10 (class 1 before class 2). Both kernels: select_tokens' and the
    # fused select + gather.
    num_tokens, num_keep = 64, 64  # K = N: the whole order is compared
    keep = torch.zeros(1, num_tokens, dtype=torch.bool)
    keep[0, 40] = True
    drop = torch.zeros(1, num_tokens, dtype=torch.bool)
    drop[0, 10] = True
    x = torch.randn(1, 1 + num_tokens, 8, generator=torch.Generator().manual_seed(0)).to(DEV)
    for seed, position, draw, flags, first in (
        (65551043, 27, 0, (keep, None), [40, 27]),
        (74293844, 20, 0xFFFFFFFF, (None, drop), [20, 10]),
    ):
        assert int(philox_uint32(seed, torch.arange(num_tokens))[position]) == draw
        expected = reference.select_reference(seed, 1, num_tokens, num_keep, CPU, False, *flags)
        where = [expected[0].tolist().index(p) for p in first]
        assert where[0] < where[1] and (draw != 0 or where == [0, 1])
        on_device = [None if f is None else f.to(DEV) for f in flags]
        ids, _ = EXT.select_tokens(seed, None, 1, num_tokens, num_keep, False, False, DEV, *on_device)
        assert torch.equal(ids.cpu(), expected), seed
        y, ids, _ = EXT.select_gather_tokens(x, seed, None, num_keep, 1, False, *on_device)
        assert torch.equal(ids.cpu(), expected), seed
        assert torch.equal(y.cpu(), reference.gather_reference(x.cpu(), expected, 1)), seed


@kernels
@pytest.mark.parametrize("num_tokens", [257, 513, 1025, 2049, 4097])
def test_select_one_past_each_block_capacity(num_tokens):
    # Kills csrc/token_select.cu with_sort_shape `num_tokens <= 512` -> `num_tokens <= 520` (and the same slip at
    # 1024, 2048 and 4096; with_fused_shape's at 256 and 512): a row one position longer than a block shape's
    # capacity (threads x keys per thread) must take the next shape. SELECT_SIZES has each capacity itself but one
    # past it only at 256; a shape one short never draws the row's last position, and with K = N every position
    # must come out, in the reference's order. select_gather_tokens takes the fused kernel's shapes up to 1024.
    seed = 0xC0FFEE
    ids, inv = EXT.select_tokens(seed, None, 2, num_tokens, num_tokens, False, True, DEV)
    expected = reference.select_reference(seed, 2, num_tokens, num_tokens, CPU, False)
    assert torch.equal(ids.cpu(), expected)
    assert torch.equal(inv.cpu(), reference.inverse_reference(expected, num_tokens))
    x = torch.randn(2, 1 + num_tokens, 4, generator=torch.Generator().manual_seed(num_tokens)).to(DEV)
    y, ids, inv = EXT.select_gather_tokens(x, seed, None, num_tokens, 1, False)
    assert torch.equal(ids.cpu(), expected)
    assert torch.equal(inv.cpu(), reference.inverse_reference(expected, num_tokens))
    assert torch.equal(y.cpu(), reference.gather_reference(x.cpu(), expected, 1))


@kernels
def test_scatter_reads_inv_through_its_strides():
    # Kills csrc/token_select.cu ScatterRows `inv[b * stride_vb + (t - P) * stride_vn]` -> `(t - P)` for the token
    # stride, or -> `b * N` for the batch stride: the binding passes inv with its own strides (as the gather passes
    # ids'), and every test gave it contiguous: a column slice (token stride 2) and a batch-major copy (batch
    # stride 1) must be read as their values.
    generator = torch.Generator().manual_seed(4)
    batch, prefix, num_tokens, num_keep, dim = 3, 1, 20, 8, 12
    ids = torch.stack([torch.randperm(num_tokens, generator=generator)[:num_keep] for _ in range(batch)])
    inv = reference.inverse_reference(ids, num_tokens)
    grad_y = torch.randn(batch, prefix + num_keep, dim, generator=generator).to(DEV)
    expected = reference.scatter_reference(grad_y.cpu(), ids, prefix, num_tokens)
    column_slice = torch.stack([inv, torch.full_like(inv, 5)], dim=2).flatten(1)[:, ::2]
    batch_major = inv.t().contiguous().t()
    for name, view in (("column slice", column_slice), ("batch-major", batch_major)):
        assert torch.equal(view, inv) and not view.is_contiguous(), name
        assert torch.equal(EXT.scatter_tokens(grad_y, view.to(DEV), prefix).cpu(), expected), name


@kernels
def test_select_gather_word_bounded_by_an_odd_batch_stride():
    # Kills csrc/token_select.cu launch_select_gather_tokens' alignment `stride_xb * element | stride_xs * element |
    # row_bytes` -> the batch stride left out: samples 1 + 64 * 96 + 1 elements apart (odd) in rows of 96 fp32 (16-byte
    # words otherwise), from a 16-byte aligned allocation, so that the batch stride alone bounds the word. With
    # 16-byte words sample 1's rows start 4 bytes off a word's boundary: a GPU's misaligned address (the emulator
    # crashes on the aligned vector load, UBSan's alignment check of the sanitized build names it). The gather's
    # own launch (ids given) takes the same input.
    generator = torch.Generator().manual_seed(6)
    batch, prefix, num_tokens, num_keep, dim = 2, 1, 64, 16, 96
    buffer = torch.randn(batch, (prefix + num_tokens) * dim + 1, generator=generator).to(DEV)
    x = buffer[:, : (prefix + num_tokens) * dim].view(batch, prefix + num_tokens, dim)
    assert x.stride(0) % 2 == 1 and x.data_ptr() % 16 == 0
    seed = 12345
    expected_ids = reference.select_reference(seed, batch, num_tokens, num_keep, CPU, False)
    y, ids, _ = EXT.select_gather_tokens(x, seed, None, num_keep, prefix, False)
    assert torch.equal(ids.cpu(), expected_ids)
    assert torch.equal(y.cpu(), reference.gather_reference(x.cpu(), expected_ids, prefix))
    assert torch.equal(
        EXT.gather_tokens(x, ids, prefix).cpu(), reference.gather_reference(x.cpu(), expected_ids, prefix)
    )


@kernels
def test_negative_prefix_counts_are_refused():
    # Kills csrc/bindings_token_select.cpp gather_tokens `P >= 0 && P < S` -> `P < S` (and the same in
    # select_gather_tokens and scatter_tokens): a negative num_prefix_tokens is a ValueError naming the argument,
    # as the Python ops raise (_check_tokens), not a failed launch (the launcher's own check, a RuntimeError). The
    # refusal tests had only P = S. On the kernels' device (EXT): the emulator builds this checkout's bindings.
    x = torch.randn(2, 5, 4, device=DEV)
    ids = torch.zeros(2, 2, dtype=torch.int64, device=DEV)
    inv = torch.zeros(2, 6, dtype=torch.int32, device=DEV)
    remains = r"so that at least one (patch|kept) token remains, got -1"
    with refused(rf"num_prefix_tokens must be in \[0, sequence length 5\) {remains}"):
        EXT.gather_tokens(x, ids, -1)
    with refused(rf"num_prefix_tokens must be in \[0, sequence length 5\) {remains}"):
        EXT.select_gather_tokens(x, 1, None, 2, -1, False)
    with refused(rf"num_prefix_tokens must be in \[0, grad_y.size\(1\)=5\) {remains}"):
        EXT.scatter_tokens(x, inv, -1)
