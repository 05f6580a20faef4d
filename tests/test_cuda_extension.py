"""The CUDA extension masksub_kernels._C (csrc/): the `cuda` backend.

Where the extension imports, its argument checks run on any machine: CPU tensors (and bad metadata) are refused
with messages that say what was expected and what came. Every function is then compared with the PyTorch
reference (bit for bit for the token and grid ops: ids, inverse map, gather, scatter, cell masks, masked images and
tokens, dT; within fp32 rounding for the loss and the mask token's gradient, sums in another order) on the kernels'
device: the compiled extension on CUDA tensors where there is a GPU, else the same sources on the CUDA emulator
with CPU tensors (tools/cuda_emulator.py; there device maths are the host's libm, within the same
tolerances). tests/ops/ runs the public ops on this backend too.
"""

import pytest
import torch
from conftest import CUDA_EMULATED

import masksub_kernels as mk
from masksub_kernels import _backend
from masksub_kernels._philox import philox_uint32
from masksub_kernels.ops import grid_mask as gm
from masksub_kernels.ops import masksub_loss as ml
from masksub_kernels.ops import token_grid_mask as tgm
from masksub_kernels.ops import token_select as ts
from masksub_kernels.ops._common import MAX_TOKENS

try:
    from masksub_kernels import _C

    _C_MISSING = None
except ImportError as exc:  # not built here (no toolkit, MASKSUB_BUILD_CUDA=0) or built for another torch
    _C, _C_MISSING = None, f"masksub_kernels._C does not import: {exc}"

CPU = torch.device("cpu")
needs_C = pytest.mark.skipif(_C is None, reason=str(_C_MISSING))
gpu = pytest.mark.skipif(not torch.cuda.is_available() or _C is None, reason=_C_MISSING or "needs a CUDA device")

# The kernels under comparison and their device: the extension on a GPU, else csrc/ on the CUDA emulator.
if torch.cuda.is_available() and _C is not None:
    EXT, DEV = _C, torch.device("cuda")
elif CUDA_EMULATED:
    EXT, DEV = _backend._extensions["cpu"], CPU
else:
    EXT = DEV = None
kernels = pytest.mark.skipif(EXT is None, reason="needs a CUDA device, or the CUDA emulator (MASKSUB_CUDA_EMULATOR)")
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@needs_C
def test_extension_is_a_backend():
    # available where it can run: on a GPU, or on CPU tensors once the tests registered the emulator
    assert ("cuda" in mk.available_backends()) == (torch.cuda.is_available() or CUDA_EMULATED)
    assert _C.MAX_SELECT_TOKENS == MAX_TOKENS
    names = ("select_tokens", "gather_tokens", "scatter_tokens", "grid_cell_mask", "mask_image_grid")
    names += ("mask_image_grid_random", "mask_tokens_grid_random")
    names += ("mask_tokens_grid_forward", "mask_tokens_grid_backward", "masksub_loss_forward", "masksub_loss_backward")
    assert all(hasattr(_C, name) for name in names)


# ---------------------------------------------------------------------------------------------------------------
# Refusals (any machine): messages name the argument, what was expected and what came
# ---------------------------------------------------------------------------------------------------------------


@needs_C
def test_select_refuses_cpu_device():
    with pytest.raises(RuntimeError, match="device must be a CUDA device, got cpu"):
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
    with pytest.raises(RuntimeError, match=message):
        _C.select_tokens(args[0], None, *args[1:], False, True, CPU)


@needs_C
def test_gather_refuses_cpu_tensors():
    x = torch.randn(2, 5, 4)
    ids = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor, got cpu"):
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
    with pytest.raises(RuntimeError, match=message):
        _C.gather_tokens(x, ids, prefix)


@needs_C
def test_select_gather_refuses_cpu_tensors():
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor, got cpu"):
        _C.select_gather_tokens(torch.randn(2, 5, 4), 1, None, 2, 1, False)


@needs_C
def test_scatter_refuses_cpu_tensors():
    grad_y = torch.randn(2, 3, 4)
    inv = torch.full((2, 4), -1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="grad_y must be a CUDA tensor, got cpu"):
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
    with pytest.raises(RuntimeError, match=message):
        _C.scatter_tokens(grad_y, inv, prefix)


@needs_C
def test_seed_tensor_refusals():
    with pytest.raises(RuntimeError, match="seed tensor must hold one int64, got Int with 1 elements"):
        _C.select_tokens(0, torch.zeros(1, dtype=torch.int32), 2, 10, 5, False, True, torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match="seed tensor must hold one int64, got Long with 2 elements"):
        _C.grid_cell_mask(0, torch.zeros(2, dtype=torch.int64), 2, 49, 24, torch.device("cuda", 0))


@needs_C
def test_grid_cell_mask_refusals():
    with pytest.raises(RuntimeError, match="device must be a CUDA device, got cpu"):
        _C.grid_cell_mask(1, None, 2, 49, 24, CPU)
    with pytest.raises(RuntimeError, match=r"num_cells must be in \[1, 8192\], got 0"):
        _C.grid_cell_mask(1, None, 2, 0, 1, CPU)
    with pytest.raises(RuntimeError, match=r"num_keep must be in \[1, num_cells=49\], got 50"):
        _C.grid_cell_mask(1, None, 2, 49, 50, CPU)


MASK = torch.zeros(2, 2, 2, dtype=torch.bool)


@needs_C
@pytest.mark.parametrize(
    ("images", "mask", "cell_size", "message"),
    [
        (torch.zeros(2, 3, 64, 64), MASK, 32, "images must be a CUDA tensor, got cpu"),
        (torch.zeros(3, 64, 64), MASK, 32, r"images must be \[batch, channels, height, width\] \(4-D\)"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.int32), MASK, 32, "images must be float32, float16, bfloat16 or"),
        (torch.zeros(2, 3, 64, 60), MASK, 32, "images of 64 x 60 is not divisible by cell_size=32"),
        (torch.zeros(2, 3, 64, 64), MASK, 0, "cell_size must be >= 1, got 0"),
        (torch.zeros(2, 3, 64, 64), MASK.to(torch.uint8), 32, "cell_mask must be bool, got uint8"),
        (torch.zeros(2, 3, 64, 96), MASK, 32, r"cell_mask must have shape \[2, 2, 3\], got \[2, 2, 2\]"),
    ],
)
def test_mask_image_grid_refusals(images, mask, cell_size, message):
    with pytest.raises(RuntimeError, match=message):
        _C.mask_image_grid(images, mask, cell_size, 0.0)


@needs_C
def test_mask_tokens_grid_refusals():
    tokens, token = torch.zeros(2, 16, 16, 40), torch.zeros(40)
    with pytest.raises(RuntimeError, match="tokens must be a CUDA tensor, got cpu"):
        _C.mask_tokens_grid_forward(tokens, token, MASK, 8)
    with pytest.raises(RuntimeError, match="mask_token must have C=40 elements, got shape"):
        _C.mask_tokens_grid_forward(tokens, torch.zeros(39), MASK, 8)
    with pytest.raises(RuntimeError, match="mask_token must have the dtype of tokens \\(float32\\), got float16"):
        _C.mask_tokens_grid_forward(tokens, token.half(), MASK, 8)
    with pytest.raises(RuntimeError, match="grad_out must be a CUDA tensor, got cpu"):
        _C.mask_tokens_grid_backward(tokens, MASK, 8, True, True)
    with pytest.raises(RuntimeError, match="grad_out of 16 x 16 is not divisible by cell_size=5"):
        _C.mask_tokens_grid_backward(tokens, MASK, 5, True, True)


LOGITS, TARGET = torch.zeros(4, 10), torch.zeros(4, dtype=torch.int64)


@needs_C
@pytest.mark.parametrize(
    ("logits", "sub", "target", "options", "message"),
    [
        (LOGITS, LOGITS, TARGET, {}, "logits must be a CUDA tensor, got cpu"),
        (torch.zeros(10), None, None, {}, r"logits must be \[rows, classes\] \(2-D\)"),
        (LOGITS, torch.zeros(4, 9), TARGET, {}, r"sub_logits must have shape \[4, 10\], got \[4, 9\]"),
        (LOGITS, LOGITS.half(), TARGET, {}, r"sub_logits must have the dtype of logits \(float32\), got float16"),
        (LOGITS, None, TARGET.bool(), {}, "target must be int64, int32, float32, float16, bfloat16 or float64, got"),
        (LOGITS, None, torch.zeros(4, 9), {}, r"target must have shape \[4, 10\], got \[4, 9\]"),
        (LOGITS, None, torch.zeros(5, dtype=torch.int64), {}, r"target must have shape \[4\], got \[5\]"),
        (LOGITS, None, TARGET, {"temperature": 0.0}, "temperature must be > 0, got 0"),
        (LOGITS, None, TARGET, {"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\], got 1.5"),
        (LOGITS, None, TARGET, {"target_threshold": 0.5}, "target_threshold binarises BCE targets"),
    ],
)
def test_masksub_loss_refusals(logits, sub, target, options, message):
    args = {"bce": False, "label_smoothing": 0.0, "ignore_index": -100, "temperature": 1.0, "target_threshold": None}
    args.update(options)
    with pytest.raises(RuntimeError, match=message):
        _C.masksub_loss_forward(logits, sub, target, *args.values())
    out = torch.zeros(9, logits.shape[0] if logits.dim() == 2 else 1)
    with pytest.raises(RuntimeError, match=message):
        _C.masksub_loss_backward(None, None, out, logits, sub, target, *args.values())


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
    expected = ts.select_reference(seed, batch_size, num_tokens, num_keep, CPU, ordered)
    assert ids.dtype == torch.int64 and ids.is_contiguous() and ids.device.type == DEV.type
    assert torch.equal(ids.cpu(), expected)
    if write_inverse:
        assert inv.dtype == torch.int32 and inv.shape == (batch_size, num_tokens)
        assert torch.equal(inv.cpu(), ts.inverse_reference(expected, num_tokens))
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
    expected = ts.select_reference(seed, rows, num_tokens, num_tokens, device, False)
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
    expected = ts.gather_reference(x, ids, prefix)
    for name, view in _layouts(x).items():
        y = EXT.gather_tokens(view, ids, prefix)
        assert y.dtype == dtype and y.is_contiguous() and y.shape == expected.shape, name
        assert torch.equal(y, expected), name
    # ids with strides of their own (a column slice): read through their strides
    wide = torch.cat([ids, ids], dim=1)[:, ::2]
    assert torch.equal(EXT.gather_tokens(x, wide, prefix), ts.gather_reference(x, wide.contiguous(), prefix))


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
    inv = ts.inverse_reference(ids, num_tokens)
    grad_y = torch.randn(3, prefix + num_keep, dim).to(dtype).to(DEV)
    expected = ts.scatter_reference(grad_y, ids, prefix, num_tokens)
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
    expected_ids = ts.select_reference(seed, batch_size, num_tokens, num_keep, CPU, ordered)
    expected_inv = ts.inverse_reference(expected_ids, num_tokens)
    expected_y = ts.gather_reference(x.cpu(), expected_ids, prefix)
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
        expected = ts.select_reference(-77, 3, num_tokens, num_keep, CPU, ordered, keep, drop)
        assert torch.equal(ids.cpu(), expected), ordered
        assert torch.equal(inv.cpu(), ts.inverse_reference(expected, num_tokens)), ordered
        assert torch.equal(y.cpu(), ts.gather_reference(x.cpu(), expected, 1)), ordered


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
        with pytest.raises(RuntimeError, match=message):
            EXT.select_gather_tokens(x, *args)


@gpu
@pytest.mark.gpu
def test_runs_on_the_current_stream():
    stream = torch.cuda.Stream()
    x = torch.randn(8, 197, 256, device=DEV)
    stream.wait_stream(torch.cuda.current_stream())  # x is written on the default stream
    with torch.cuda.stream(stream):
        ids, inv = EXT.select_tokens(5, None, 8, 196, 98, False, True, DEV)
        y = EXT.gather_tokens(x, ids, 1)
        grad_x = EXT.scatter_tokens(y, inv, 1)
    stream.synchronize()
    expected_ids = ts.select_reference(5, 8, 196, 98, CPU, False)
    assert torch.equal(ids.cpu(), expected_ids)
    assert torch.equal(y, ts.gather_reference(x, ids, 1))
    assert torch.equal(grad_x, ts.scatter_reference(y, ids, 1, 196))


# ---------------------------------------------------------------------------------------------------------------
# Kernels: grid masks (bit for bit; the mask token's gradient within fp32 rounding)
# ---------------------------------------------------------------------------------------------------------------


def _bits(x):
    return x.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]).cpu()


@kernels
@pytest.mark.parametrize(("batch_size", "num_cells", "num_keep"), [(3, 49, 24), (2, 240, 100), (1, 4096, 1)])
def test_grid_cell_mask_matches_reference(batch_size, num_cells, num_keep):
    mask = EXT.grid_cell_mask(21, None, batch_size, num_cells, num_keep, DEV)
    assert mask.dtype == torch.bool and mask.shape == (batch_size, num_cells)
    assert torch.equal(mask.cpu(), gm.cell_mask_reference(21, batch_size, num_cells, num_keep, CPU))


def _image_layouts(x):
    wide = torch.zeros(*x.shape[:3], x.shape[3] + 5, dtype=x.dtype, device=x.device)
    wide[..., 2 : 2 + x.shape[3]] = x
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide[..., 2 : 2 + x.shape[3]],
    }


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("channels", "height", "width", "cell_size"), [(3, 64, 96, 32), (1, 48, 72, 24), (5, 8, 8, 1)])
def test_mask_image_grid_matches_reference(dtype, channels, height, width, cell_size):
    images = torch.randn(2, channels, height, width, device=DEV).to(dtype)
    cells = EXT.grid_cell_mask(3, None, 2, (height // cell_size) * (width // cell_size), 2, DEV)
    cells = cells.view(2, height // cell_size, width // cell_size)
    for name, view in _image_layouts(images).items():
        out = EXT.mask_image_grid(view, cells, cell_size, 0.1)
        assert out.dtype == dtype and out.shape == images.shape, name
        assert out.stride() == torch.empty_like(view).stride(), name  # the input's layout where dense
        expected = gm.mask_image_reference(view.cpu(), cells.cpu(), cell_size, 0.1)
        assert torch.equal(_bits(out), _bits(expected)), name


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("channels", "grid", "cell_size", "num_keep"),
    [(3, (7, 7), 4, 24), (2, (16, 16), 2, 179), (1, (17, 16), 1, 100), (4, (2, 3), 8, 1)],
)
def test_mask_image_grid_random_matches_reference(dtype, channels, grid, cell_size, num_keep):
    # the cell mask drawn in the masking launch (up to 256 cells: (16, 16) is the limit) or by the selection kernel
    # first (17 x 16 cells), in every layout, with an int seed and a seed tensor: the reference's cells and pixels
    height, width = grid[0] * cell_size, grid[1] * cell_size
    images = torch.randn(3, channels, height, width, device=DEV).to(dtype)
    expected_mask = gm.cell_mask_reference(2**40 + 9, 3, grid[0] * grid[1], num_keep, CPU).view(3, *grid)
    seeds = (2**40 + 9, torch.tensor([2**40 + 9], dtype=torch.int64, device=DEV))
    for (name, view), seed in zip(_image_layouts(images).items(), seeds + seeds[:1]):
        seed_value, seed_tensor = (seed, None) if isinstance(seed, int) else (0, seed)
        out, mask = EXT.mask_image_grid_random(view, seed_value, seed_tensor, cell_size, num_keep, -0.5)
        assert mask.dtype == torch.bool and torch.equal(mask.cpu(), expected_mask), name
        assert out.stride() == torch.empty_like(view).stride(), name
        expected = gm.mask_image_reference(view.cpu(), expected_mask, cell_size, -0.5)
        assert torch.equal(_bits(out), _bits(expected)), name


@needs_C
def test_mask_image_grid_random_refusals():
    images = torch.zeros(2, 3, 64, 64)
    with pytest.raises(RuntimeError, match="images must be a CUDA tensor, got cpu"):
        _C.mask_image_grid_random(images, 1, None, 32, 2, 0.0)
    with pytest.raises(RuntimeError, match="images of 64 x 64 is not divisible by cell_size=24"):
        _C.mask_image_grid_random(images, 1, None, 24, 2, 0.0)
    with pytest.raises(RuntimeError, match=r"num_keep must be in \[1, num_cells=4\], got 5"):
        _C.mask_image_grid_random(images, 1, None, 32, 5, 0.0)


def _assert_mask_token_grad(grad_mask, grad, cells, cell_size):
    """grad_mask [C] against the fp64 sum of grad [B, H, W, C] over the removed cells' tokens. Summation in fp32
    (fp64 for fp64) over n terms, then one rounding to the dtype: the classic bound |error| <= n u sum|x| + eps |sum|
    (a missed or doubled token is off by |x|, far above it)."""
    removed = gm.pixel_mask_reference(cells.cpu(), cell_size)[..., None]
    removed_grad = torch.where(removed, grad.cpu().double(), 0)
    expected = removed_grad.sum(dim=(0, 1, 2))
    terms = int(removed[..., 0].sum())
    unit = 2.0**-53 if grad.dtype == torch.float64 else 2.0**-24
    bound = terms * unit * removed_grad.abs().sum(dim=(0, 1, 2)) + torch.finfo(grad.dtype).eps * expected.abs()
    error = (grad_mask.cpu().double() - expected).abs()
    assert grad_mask.dtype == grad.dtype and grad_mask.shape == expected.shape
    assert bool((error <= bound + 1e-30).all()), float((error - bound).max())


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("height", "width", "channels", "cell_size"), [(16, 24, 40, 8), (56, 56, 96, 8), (8, 8, 3, 4)])
def test_mask_tokens_grid_matches_reference(dtype, height, width, channels, cell_size):
    device = DEV
    grid_h, grid_w = height // cell_size, width // cell_size
    cells = EXT.grid_cell_mask(4, None, 2, grid_h * grid_w, max(1, grid_h * grid_w // 2), device).view(
        2, grid_h, grid_w
    )
    tokens = torch.randn(2, height, width, channels, device=device).to(dtype)
    token = torch.randn(channels, device=device).to(dtype)
    strided = tokens.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # h and w strides swapped
    for view in (tokens, strided, tokens.transpose(1, 2).contiguous().transpose(1, 2)):
        out = EXT.mask_tokens_grid_forward(view, token, cells, cell_size)
        assert out.is_contiguous()
        expected = tgm.mask_tokens_reference(view.cpu(), token.cpu(), cells.cpu(), cell_size)
        assert torch.equal(_bits(out), _bits(expected))
    grad = torch.randn(2, height, width, channels, device=device).to(dtype)
    expected_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), cells.cpu(), cell_size)
    grad_tokens, grad_mask = EXT.mask_tokens_grid_backward(grad, cells, cell_size, True, True)
    assert torch.equal(_bits(grad_tokens), _bits(expected_tokens))
    _assert_mask_token_grad(grad_mask, grad, cells, cell_size)
    only_mask = EXT.mask_tokens_grid_backward(grad, cells, cell_size, False, True)
    assert only_mask[0].numel() == 0 and torch.equal(_bits(only_mask[1]), _bits(grad_mask))  # same fixed order
    only_tokens = EXT.mask_tokens_grid_backward(grad, cells, cell_size, True, False)
    assert only_tokens[1].numel() == 0 and torch.equal(_bits(only_tokens[0]), _bits(grad_tokens))


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("grid", "cell_size", "channels", "num_keep"), [((7, 7), 2, 40, 24), ((2, 3), 4, 3, 2), ((17, 16), 1, 1, 100)]
)
def test_mask_tokens_grid_random_matches_reference(dtype, grid, cell_size, channels, num_keep):
    # cells drawn in the masking launch (contiguous token rows, up to 256 cells; 3 channels of 2 bytes: 2-byte
    # words; one channel) or by the selection kernel first (hw-swapped rows; 17 x 16 cells), with an int seed and a
    # seed tensor: the reference's cells and tokens
    height, width = grid[0] * cell_size, grid[1] * cell_size
    tokens = torch.randn(2, height, width, channels, device=DEV).to(dtype)
    token = torch.randn(channels, device=DEV).to(dtype)
    expected_mask = gm.cell_mask_reference(77, 2, grid[0] * grid[1], num_keep, CPU).view(2, *grid)
    swapped = tokens.transpose(1, 2).contiguous().transpose(1, 2)
    seed = torch.tensor(77, dtype=torch.int64, device=DEV)
    for view, (seed_value, seed_tensor) in ((tokens, (77, None)), (swapped, (0, seed)), (tokens, (0, seed))):
        out, mask = EXT.mask_tokens_grid_random(view, token, seed_value, seed_tensor, cell_size, num_keep)
        assert mask.dtype == torch.bool and torch.equal(mask.cpu(), expected_mask) and out.is_contiguous()
        expected = tgm.mask_tokens_reference(view.cpu(), token.cpu(), expected_mask, cell_size)
        assert torch.equal(_bits(out), _bits(expected))


@needs_C
def test_mask_tokens_grid_random_refusals():
    tokens, token = torch.zeros(2, 16, 16, 40), torch.zeros(40)
    with pytest.raises(RuntimeError, match="tokens must be a CUDA tensor, got cpu"):
        _C.mask_tokens_grid_random(tokens, token, 1, None, 8, 2)
    with pytest.raises(RuntimeError, match="mask_token must have C=40 elements, got shape"):
        _C.mask_tokens_grid_random(tokens, torch.zeros(39), 1, None, 8, 2)
    with pytest.raises(RuntimeError, match="tokens of 16 x 16 is not divisible by cell_size=5"):
        _C.mask_tokens_grid_random(tokens, token, 1, None, 5, 2)
    with pytest.raises(RuntimeError, match=r"num_keep must be in \[1, num_cells=4\], got 0"):
        _C.mask_tokens_grid_random(tokens, token, 1, None, 8, 0)


@kernels
def test_mask_token_grad_adds_every_token_of_a_part():
    # a part = a cell row of 8 x 32 tokens: each thread adds two tokens of each of 8 rows, then the block adds its
    # threads' sums in shared memory (after a barrier); every cell removed, so every token of every part counts
    cells = torch.ones(2, 4, 4, dtype=torch.bool, device=DEV)
    grad = torch.randn(2, 32, 32, 40, generator=torch.Generator().manual_seed(0)).to(DEV)
    _assert_mask_token_grad(EXT.mask_tokens_grid_backward(grad, cells, 8, False, True)[1], grad, cells, 8)


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_token_grad_channel_chunks(dtype):
    # more channel words than a block's threads (1040 fp32 = 260 words of 16 bytes; 2056 bf16 = 257): the channels
    # split over a second grid dimension, each chunk's threads keeping their own words
    channels = 1040 if dtype == torch.float32 else 2056
    generator = torch.Generator().manual_seed(5)
    cells = torch.tensor([[[True, False], [False, True]]], device=DEV)
    grad = torch.randn(1, 4, 4, channels, generator=generator).to(dtype).to(DEV)
    grad_tokens, grad_mask = EXT.mask_tokens_grid_backward(grad, cells, 2, True, True)
    expected_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), cells.cpu(), 2)
    assert torch.equal(_bits(grad_tokens), _bits(expected_tokens))
    _assert_mask_token_grad(grad_mask, grad, cells, 2)


@kernels
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("layout", ["contiguous", "hw-swapped"])
def test_mask_token_grad_narrow_rows(width, layout):
    # Over 1024 cell rows (3 per part, in turn) of narrow rows (W < 8: a block's threads take several token rows at
    # once); S = 2 makes the cell a non-linear function of the token.
    batch, channels, cell = 2, 8, 2
    height = 2 * (9000 // (2 * batch * width) + 1)
    generator = torch.Generator().manual_seed(3)
    cells = (torch.rand(batch, height // cell, width // cell, generator=generator) < 0.5).to(DEV)
    grad = torch.randn(batch, height, width, channels, generator=generator).to(DEV)
    if layout == "hw-swapped":
        grad = grad.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    _assert_mask_token_grad(EXT.mask_tokens_grid_backward(grad, cells, cell, False, True)[1], grad, cells, cell)


# ---------------------------------------------------------------------------------------------------------------
# Kernels: the loss (fp32 arithmetic in another order than the reference: close, not equal)
# ---------------------------------------------------------------------------------------------------------------


def _loss_inputs(rows, classes, dtype, kind, seed=0):
    generator = torch.Generator().manual_seed(seed)
    main = (torch.randn(rows, classes, generator=generator) * 3).to(dtype).to(DEV)
    sub = (torch.randn(rows, classes, generator=generator) * 3).to(dtype).to(DEV)
    if kind == "dense":
        target = torch.softmax(torch.randn(rows, classes, generator=generator) * 2, 1).to(DEV)
    else:
        target = torch.randint(0, classes, (rows,), generator=generator)
        target[::3] = -100
        target = target.to(DEV)
    return main, sub, target


@kernels
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("bce", "kind", "eps", "temperature", "threshold"),
    [
        (False, "index", 0.1, 1.0, None),
        (False, "dense", 0.0, 2.0, None),
        (True, "dense", 0.0, 1.0, 0.0),
        (True, "index", 0.1, 0.5, None),
    ],
)
@pytest.mark.parametrize(("rows", "classes"), [(7, 1000), (5, 3), (3, 4500)])
def test_masksub_loss_matches_reference(dtype, bce, kind, eps, temperature, threshold, rows, classes):
    main, sub, target = _loss_inputs(rows, classes, dtype, kind)
    options = (bce, eps, -100, temperature, threshold)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    assert out.dtype == torch.float32 and out.shape == (9, rows)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))
    grad_main = torch.randn(rows, device=DEV)
    grad_sub = torch.tensor(0.7, device=DEV).expand(rows)  # a broadcast scalar: stride 0
    dz, ds = EXT.masksub_loss_backward(grad_main, grad_sub, out, main, sub, target, *options)
    ez, es = ml.loss_backward_reference(grad_main, grad_sub, expected, main, sub, target, *options)
    assert dz.dtype == dtype and ds.dtype == dtype and dz.is_contiguous()
    rtol = {torch.float16: 2**-10, torch.bfloat16: 2**-7}.get(dtype, 1e-5)
    for got, want in ((dz, ez), (ds, es)):
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rtol * float(want.abs().max()))
    only_sub = EXT.masksub_loss_backward(None, grad_sub, out, main, sub, target, *options)
    assert only_sub[0].numel() == 0 and torch.equal(only_sub[1], ds)


@kernels
def test_masksub_loss_single_terms_and_ignored_rows():
    main, sub, target = _loss_inputs(6, 50, torch.float32, "index")
    target[:] = -100  # every row ignored: zero losses, zero gradients
    out = EXT.masksub_loss_forward(main, sub, target, False, 0.1, -100, 1.0, None)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    dz, ds = EXT.masksub_loss_backward(torch.ones(6, device=DEV), torch.ones(6, device=DEV), out, main, sub,
                                      target, False, 0.1, -100, 1.0, None)  # fmt: skip
    assert torch.equal(dz, torch.zeros_like(dz)) and torch.equal(ds, torch.zeros_like(ds))
    sub_only = EXT.masksub_loss_forward(main, sub, None, False, 0.0, -100, 1.0, None)
    expected = ml.loss_forward_reference(main, sub, None, False, 0.0, -100, 1.0, None)
    torch.testing.assert_close(sub_only, expected, rtol=2e-6, atol=1e-6)
    main_only = EXT.masksub_loss_forward(main, None, target.clamp_min(0), True, 0.0, -100, 1.0, None)
    expected = ml.loss_forward_reference(main, None, target.clamp_min(0), True, 0.0, -100, 1.0, None)
    torch.testing.assert_close(main_only, expected, rtol=2e-6, atol=1e-6)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_masksub_loss_forward_underflow_and_minus_inf(dtype, kind, temperature):
    # the forward's exponentials flush results below 2^-126 to 0 (ex2.approx.ftz): logits 80-200 below the row's
    # max (e^-d subnormal or 0), -inf logits in both branches (the teacher term's 0 * -inf guard), a row of -inf
    # sub logits except one, and a row whose every logit is -inf but one
    rows, classes = 6, 1000
    main, sub, target = _loss_inputs(rows, classes, dtype, kind)
    main, sub = main.clone(), sub.clone()
    main[:, 1::3] -= torch.linspace(80, 200, main[:, 1::3].shape[1], device=DEV).to(dtype)
    sub[:, 2::5] -= torch.linspace(85, 95, sub[:, 2::5].shape[1], device=DEV).to(dtype)
    main[0, 7::11] = sub[0, 7::11] = -torch.inf
    main[1, 5::13] = -torch.inf
    sub[2, 1:] = -torch.inf
    main[3, 1:] = -torch.inf
    options = (False, 0.0, -100, temperature, None)
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected[expected.isfinite()].abs().max()))


@kernels
@pytest.mark.parametrize("bce", [False, True])
def test_masksub_loss_backward_splits_few_rows(bce):
    # 2 rows of 9000 fp32 classes: the backward spreads each row over 4 blocks (grid (M, splits)), split 0 also
    # taking the scalar classes before the row's first 16-byte boundary (row 1 starts 8 bytes past one)
    main, sub, target = _loss_inputs(2, 9002, torch.float32, "dense")
    _check_loss_both_ways(main, sub, target, (bce, 0.1, -100, 2.0, None), grad_rtol=1e-5)


def _check_loss_both_ways(main, sub, target, options, grad_rtol):
    """The extension's forward (fp32 tolerance) and backward (grad_rtol, scaled by the largest gradient) against
    the reference, with random per-row upstream gradients."""
    out = EXT.masksub_loss_forward(main, sub, target, *options)
    expected = ml.loss_forward_reference(main, sub, target, *options)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))
    rows = main.shape[0]
    grad_main, grad_sub = torch.randn(rows, device=DEV), torch.randn(rows, device=DEV)
    dz, ds = EXT.masksub_loss_backward(grad_main, grad_sub, out, main, sub, target, *options)
    ez, es = ml.loss_backward_reference(grad_main, grad_sub, expected, main, sub, target, *options)
    for got, want in ((dz, ez), (ds, es)):
        torch.testing.assert_close(
            got.double(), want.double(), rtol=grad_rtol, atol=grad_rtol * float(want.abs().max())
        )


def _offset_columns(x, offset):
    """x's values in a wider buffer, starting `offset` columns into each row: the same values, rows that sit
    differently within 16 bytes than a contiguous tensor's (and a row stride that is no multiple of 16 bytes)."""
    wide = torch.zeros(x.shape[0], x.shape[1] + offset + 1, dtype=x.dtype, device=x.device)
    wide[:, offset : offset + x.shape[1]] = x
    return wide[:, offset : offset + x.shape[1]]


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "layout",
    ["sub offset", "main offset", "target offset", "target fp32", "target other dtype", "target fp32 offset"],
)
@pytest.mark.parametrize("bce", [False, True])
def test_masksub_loss_row_layouts(dtype, layout, bce):
    # The kernels read a row as 16-byte vectors from its first 16-byte boundary where z, s (dz, ds) and the
    # probabilities sit alike within 16 bytes, else element by element: every layout gives the reference's values.
    # "main offset": z's rows differ from the contiguous dz's (the backward's scalar path); probabilities in fp32
    # with narrower logits are two 16-byte words per vector; in another dtype, the binding makes them fp32.
    rows, classes = 5, 700
    main, sub, target = _loss_inputs(rows, classes, dtype, "index" if layout.endswith("offset") and
                                     not layout.startswith("target") else "dense")  # fmt: skip
    if layout == "sub offset":
        sub = _offset_columns(sub, 1)
    elif layout == "main offset":
        main = _offset_columns(main, 3)
    elif layout == "target fp32":
        target = target.float()
    elif layout == "target other dtype":
        target = target.to(torch.float16 if dtype != torch.float16 else torch.float64)
    elif layout == "target offset":
        target = _offset_columns(target.to(dtype), 1)
    elif layout == "target fp32 offset":
        target = _offset_columns(target.float(), 2)
    options = (bce, 0.1, -100, 1.0, None)
    _check_loss_both_ways(main, sub, target, options, grad_rtol={torch.bfloat16: 2**-7}.get(dtype, 1e-5))
