"""The PyTorch Philox reproduces Triton's tl.randint bit for bit, and the sort keys order as (draw, position)."""

import pytest
import torch
from conftest import kernel_backends

from masksub_kernels import _philox
from masksub_kernels._philox import new_seed, philox_reference, philox_sort_keys, philox_uint32, sort_keys
from masksub_kernels._triton import HAS_TRITON, jit, tl

SEEDS = [0, 1, 7, 2**31 - 1, 2**31, 2**32 + 5, 123456789012, 2**63 - 1]


def test_known_values_seed_zero():
    # Philox4x32-10 of counter (0, 0, 0, 0) and key (0, 0): the Random123 known-answer vector's first word.
    assert philox_uint32(0, torch.tensor([0])).item() == 0x6627E8D5


@pytest.mark.parametrize("seed", [*SEEDS, -1, -(2**63)])
def test_stacked_rounds_equal_the_reference_rounds(seed):
    # The CPU path (_philox_stacked: uint64 products, both words per op) against the int64-limb rounds, bit for
    # bit: offsets with high words, any shape, none.
    if not _philox._uint64_products():
        pytest.skip("this torch does not multiply uint64 CPU tensors: philox_uint32 runs the reference rounds")
    offsets = torch.cat([torch.arange(3000), torch.tensor([2**32 - 1, 2**32, 2**40 + 3, 2**62, 2**63 - 1])])
    for shaped in (offsets, offsets[:3000].view(30, 100), offsets[:0].view(0, 4)):
        assert torch.equal(_philox._philox_stacked(seed, shaped), philox_reference(seed, shaped))
    assert torch.equal(philox_uint32(seed, offsets), philox_reference(seed, offsets))


@pytest.mark.parametrize(
    ("seed", "offset", "error", "message"),
    [
        (None, torch.tensor([0]), TypeError, "seed must be an int, got None"),
        (1.5, torch.tensor([0]), TypeError, "seed must be an int, got float"),
        (True, torch.tensor([0]), TypeError, "seed must be an int, got bool"),  # was 1
        (7 + 2**64, torch.tensor([0]), ValueError, "seed must be an int64 value"),  # was 7's draws
        (7, torch.tensor([0.7, 1.9]), TypeError, "integer dtype (int64 offsets), got a torch.float32 tensor"),  # 0, 1
        (7, torch.tensor([True]), TypeError, "got a torch.bool tensor"),
        (7, [0, 1], TypeError, "integer dtype (int64 offsets), got list"),
    ],
)
def test_public_draws_refuse_what_the_ops_refuse(seed, offset, error, message):
    # helper-140: the public philox_uint32 took any seed (bools as 1, beyond int64 wrapped) and truncated floats
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        philox_uint32(seed, offset)
    assert torch.equal(
        philox_uint32(7, torch.tensor([0, 1], dtype=torch.int32)), philox_uint32(7, torch.tensor([0, 1]))
    )


def test_fallback_without_uint64_products(monkeypatch):
    monkeypatch.setattr(_philox, "_uint64_products", lambda: False)
    monkeypatch.setattr(_philox, "_philox_stacked", None)  # never reached
    assert philox_uint32(0, torch.tensor([0])).item() == 0x6627E8D5


def test_draws_are_uint32_and_depend_on_high_offset_bits():
    offsets = torch.tensor([5, 5 + 2**32, 2**40 + 3], dtype=torch.int64)
    draws = philox_uint32(99, offsets)
    assert draws.dtype == torch.int64
    assert bool(((draws >= 0) & (draws < 2**32)).all())
    assert draws[0] != draws[1]


def test_sort_keys_order_by_draw_then_position():
    keys = sort_keys(42, 3, 50)
    draws = philox_uint32(42, torch.arange(150).view(3, 50))
    order_by_keys = keys.argsort(dim=1)
    order_by_pairs = torch.stack([torch.tensor(sorted(range(50), key=lambda p: (int(d[p]), p))) for d in draws])
    assert torch.equal(order_by_keys, order_by_pairs)
    assert torch.equal(keys - ((keys >> 32) << 32), torch.arange(50).expand(3, 50))


def test_new_seed_validation_and_default_generator():
    assert new_seed(-1) == -1 and new_seed(-(2**63)) == -(2**63)  # any int64: its 64 bits are the key
    for seed in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match=r"\[-2\*\*63, 2\*\*63\)"):
            new_seed(seed)
    with pytest.raises(TypeError, match="int or None"):
        new_seed(1.5)
    torch.manual_seed(3)
    first = new_seed(None)
    torch.manual_seed(3)
    assert new_seed(None) == first


@jit
def draw_kernel(draws_ptr, keys_ptr, seed, n, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    offsets = row.to(tl.int64) * n + lanes
    tl.store(draws_ptr + offsets, tl.randint(seed, offsets).to(tl.int64), mask=lanes < n)
    tl.store(keys_ptr + offsets, philox_sort_keys(seed, row, lanes, n), mask=lanes < n)


@pytest.mark.skipif(not HAS_TRITON or "triton" not in kernel_backends(), reason="needs the Triton backend")
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_triton_randint_bit_for_bit(seed, device):
    rows, n = 3, 37
    draws = torch.zeros(rows * n, dtype=torch.int64, device=device)
    keys = torch.zeros(rows * n, dtype=torch.int64, device=device)
    draw_kernel[(rows,)](draws, keys, seed, n, BLOCK=64)
    assert torch.equal(draws.cpu(), philox_uint32(seed, torch.arange(rows * n)))
    assert torch.equal(keys.view(rows, n).cpu(), sort_keys(seed, rows, n))


# helper-174's mutation audit
def test_empty_seed_tensor_is_refused_as_a_type_error():
    with pytest.raises(TypeError, match="one int64"):
        _philox.resolve_seed(torch.empty(0, dtype=torch.int64), "cpu")


def test_uint64_products_detected_when_torch_has_them():
    try:
        product = torch.tensor([_philox.MASK32], dtype=torch.int64).view(torch.uint64) * _philox.PHILOX_ROUND_A
        exact = int(product.view(torch.int64)) % 2**64 == _philox.MASK32 * _philox.PHILOX_ROUND_A
    except (RuntimeError, TypeError):
        exact = False
    assert _philox._uint64_products() == exact


# helper-246: test_matches_triton_randint_bit_for_bit draws offsets < 111 only, and its seeds are all >= 0: no
# Triton test, on the interpreter or on either GPU run, had checked (a) the counter's high word (offset >> 32:
# Triton's randint4x splits it off since 3.4, the whole difference with 3.2 / 3.3) or (b) a negative seed below 2^31
# in magnitude, which the JIT types as i32 and philox() sign-extends to uint64 (the reference's two's-complement
# words). CUDA has a GPU-only counter test (test_select_counters_past_two_to_the_32). A base offset keeps the buffers
# tiny. Fails with `offset_hi = _0` in triton/language/random.py, a zero-extending seed cast, or an int32 offset.
@jit(do_not_specialize=("seed",))
def _draws_from_kernel(draws_ptr, keys_ptr, seed, row, n, BLOCK: tl.constexpr):
    lanes = tl.arange(0, BLOCK)
    offsets = row.to(tl.int64) * n + lanes
    tl.store(draws_ptr + lanes, tl.randint(seed, offsets).to(tl.int64), mask=lanes < n)
    tl.store(keys_ptr + lanes, philox_sort_keys(seed, row.to(tl.int64), lanes, n), mask=lanes < n)


@pytest.mark.skipif(not HAS_TRITON or "triton" not in kernel_backends(), reason="needs the Triton backend")
@pytest.mark.parametrize("seed", [-1, -5, -(2**31), -(2**31) - 1, -(2**63), 2**63 - 1, 5])
@pytest.mark.parametrize("row", [0, 524287, 524288, 2**31 - 1])  # 524288 x 8192 = 2^32: offsets past 2^32 from here
def test_triton_draws_past_two_to_the_32_and_negative_seeds(seed, row, device):
    n = 8192  # MAX_TOKENS: the selection's row length, so row * n is an offset the ops really draw
    block = 64  # the first 64 positions of the row
    draws = torch.zeros(block, dtype=torch.int64, device=device)
    keys = torch.zeros(block, dtype=torch.int64, device=device)
    _draws_from_kernel[(1,)](draws, keys, seed, row, n, BLOCK=block)
    offsets = row * n + torch.arange(block)
    expected = philox_uint32(seed, offsets)
    assert torch.equal(draws.cpu(), expected)
    assert torch.equal(keys.cpu(), ((expected - 2**31) << 32) + torch.arange(block))
