"""The one random number generator behind every mask: Philox4x32-10, counter-based.

Every backend (PyTorch reference, Triton, CUDA) draws the random number of an element from a 64-bit ``seed`` and
the element's position alone, so the same seed gives the same mask on every backend and device.

Counter layout (the one of Triton's ``tl.randint(seed, offset)`` with an int64 offset):

    offset = row * num_positions + position              (int64: row = sample, position = token or cell)
    counter = (c0, c1, c2, c3) = (offset mod 2^32, offset div 2^32, 0, 0)
    key     = (k0, k1)         = (seed mod 2^32, seed div 2^32)
    draw    = c0 after 10 Philox rounds                   (a uint32)

Each round (Salmon et al., 2011) with multipliers A = 0xD2511F53, B = 0xCD9E8D57:

    c0' = hi32(B * c2) ^ c1 ^ k0      c1' = lo32(B * c2)
    c2' = hi32(A * c0) ^ c3 ^ k1      c3' = lo32(A * c0)
    k0 += 0x9E3779B9 (mod 2^32)       k1 += 0xBB67AE85 (mod 2^32)

Selection: a row keeps the positions with the smallest draws, ties broken by position. Both are folded into one
int64 sort key that orders as (draw, position):

    key = (draw - 2^31) * 2^32 + position                 (fits int64; signed order = (draw, position) order)
"""

from __future__ import annotations

import functools
import numbers

import torch

from ._triton import jit, tl

MASK32 = 0xFFFFFFFF
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUNDS = 10
SEED_LIMIT = 2**63  # seeds are int64 values, in [-2^63, 2^63): they travel as int64 to every backend
# What the ops (and the training wrapper) take as a seed: their TypeError names it all (it said "an int or None")
SEED_TYPES = "an int, an int64 tensor of one element, or None"


def new_seed(seed: int | None = None, expected: str = "an int or None") -> int:
    """Validate ``seed``, or draw one from torch's default CPU generator when it is None.

    Drawing from the default generator makes ``torch.manual_seed`` reproduce a run; it runs on the host and never
    synchronises with a GPU. ``expected``: what the caller takes, as its TypeError says (``SEED_TYPES`` for the ops).
    """
    if seed is None:
        return int(torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device="cpu").item())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):  # NumPy's integers too, as ignore_index
        raise TypeError(f"seed must be {expected}, got {type(seed).__name__}")
    seed = int(seed)
    if not -SEED_LIMIT <= seed < SEED_LIMIT:
        # Any int64 is a key (its 64 bits, two's complement, as for a seed tensor, which may hold any int64 too)
        raise ValueError(f"seed must be an int64 value, in [-2**63, 2**63), got {seed}")
    return seed


def resolve_seed(seed: int | torch.Tensor | None, device: torch.device) -> tuple[int, torch.Tensor | None]:
    """(integer seed, None) for an int or None (see ``new_seed``); (0, int64 [1] tensor) for a seed tensor.

    A seed tensor is read by the kernels on the device, never by the host: a captured CUDA graph then draws a new
    mask on each replay after the caller updates the tensor in place (e.g. ``seed.add_(1)`` inside the graph).
    It must hold one int64 on the op's device; its 64 bits are the Philox key as they are for an int.
    """
    if not isinstance(seed, torch.Tensor):
        return new_seed(seed, SEED_TYPES), None
    if seed.dtype != torch.int64 or seed.numel() != 1:
        raise TypeError(f"a seed tensor must hold one int64, got {seed.dtype} with {seed.numel()} elements")
    device = torch.device(device)
    if _concrete(seed.device) != _concrete(device):  # 'cuda' is the current CUDA device, as where outputs go
        raise ValueError(f"the seed tensor must be on the op's device ({device}), got {seed.device}")
    return 0, seed.reshape(1)


def _concrete(device: torch.device) -> torch.device:
    """A CUDA device with its index (an index-less 'cuda' is the current device); others unchanged."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def seed_value(seed: int, seed_tensor: torch.Tensor | None) -> int:
    """The integer key of a resolved seed. Reading a seed tensor syncs with its device: the reference backend only."""
    return seed if seed_tensor is None else int(seed_tensor.item())


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi32(a*b), lo32(a*b)) for a 32-bit constant ``a`` and int64 tensor ``b`` holding uint32 values.

    The full product needs 64 unsigned bits, more than int64 holds, so the high word is assembled from 16-bit limbs:
    a*b = ah*bh*2^32 + (ah*bl + al*bh)*2^16 + al*bl, every partial product below 2^50. The low word is exact from
    the wrapping int64 product, whose low 32 bits are the true ones.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    middle = a_hi * b_lo + a_lo * b_hi
    low_part = (middle << 16) + a_lo * b_lo
    hi = (a_hi * b_hi + (low_part >> 32)) & MASK32
    lo = (b * a) & MASK32
    return hi, lo


@functools.cache
def _uint64_products() -> bool:
    """Whether this torch multiplies uint64 CPU tensors (exact 64-bit products of two uint32 values)."""
    try:
        product = torch.tensor([MASK32], dtype=torch.int64, device="cpu").view(torch.uint64) * PHILOX_ROUND_A
        return int(product.view(torch.int64)) == MASK32 * PHILOX_ROUND_A - 2**64
    except (RuntimeError, TypeError):
        return False


def _philox_stacked(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """philox_uint32 in ~70 tensor ops instead of ~300 (the reference above spends ~20 per round on 16-bit limbs):
    each round multiplies both words at once, the stacked [2, ...] tensor (c2, c0) by the column (B, A), as uint64,
    whose products of uint32 values are exact; the int64 view of a product holds hi32 in its upper half (>> 32 and
    a mask) and lo32 in its lower half (a mask). Then, with hi = (hi32(B c2), hi32(A c0)), lo likewise and
    t = (c1, c3), k = (k0, k1):  (c0', c2') = hi ^ t ^ k,  (c1', c3') = lo,  and the next round's (c2', c0') is
    the flip of (c0', c2')."""
    shape = (2,) + (1,) * offset.dim()
    multipliers = torch.tensor([PHILOX_ROUND_B, PHILOX_ROUND_A], dtype=torch.int64, device=offset.device)
    multipliers = multipliers.view(shape).view(torch.uint64)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    keys = [((k0 + r * PHILOX_KEY_A) & MASK32, (k1 + r * PHILOX_KEY_B) & MASK32) for r in range(PHILOX_ROUNDS)]
    keys = torch.tensor(keys, dtype=torch.int64, device=offset.device).view(PHILOX_ROUNDS, *shape)
    c0 = offset & MASK32
    multiplicands = torch.stack([torch.zeros_like(c0), c0])  # (c2, c0)
    words = torch.stack([(offset >> 32) & MASK32, torch.zeros_like(c0)])  # t = (c1, c3)
    for r in range(PHILOX_ROUNDS):
        product = (multiplicands.view(torch.uint64) * multipliers).view(torch.int64)
        mixed = (product >> 32).bitwise_and_(MASK32).bitwise_xor_(words).bitwise_xor_(keys[r])  # (c0', c2')
        words = product.bitwise_and_(MASK32)  # (c1', c3')
        multiplicands = mixed.flip(0)  # (c2', c0')
    return multiplicands[1]


def philox_uint32(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """The uint32 Philox draw for each int64 ``offset`` (any shape), as int64 values in [0, 2^32).

    ``seed``: an int in [-2^63, 2^63) (the ops' seeds); ``offset``: a tensor of an integer dtype, any device.
    Bit for bit ``tl.randint(seed, offset)`` for int64 offsets (and int32 offsets below 2^31). On CPU tensors
    (the torch backend's device) with a torch that multiplies uint64, the same draws in fewer, larger tensor ops
    (_philox_stacked); elsewhere the rounds below, on 16-bit limbs.
    """
    if seed is None:  # new_seed would draw one: a draw of a random key is not what a caller of this function means
        raise TypeError("seed must be an int, got None")
    seed = new_seed(seed, "an int")
    dtype = getattr(offset, "dtype", None)
    if not isinstance(offset, torch.Tensor) or dtype == torch.bool or dtype.is_floating_point or dtype.is_complex:
        what = f"a {dtype} tensor" if isinstance(offset, torch.Tensor) else type(offset).__name__
        raise TypeError(f"offset must be a tensor of an integer dtype (int64 offsets), got {what}")
    return _draws(seed, offset)


def _draws(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """philox_uint32 on arguments the library has checked (sort_keys: a seed that may be traced by torch.compile)."""
    offset = offset.to(torch.int64)
    if offset.device.type == "cpu" and _uint64_products():
        return _philox_stacked(seed, offset)
    return philox_reference(seed, offset)


def philox_reference(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """philox_uint32 round by round, with int64 arithmetic only (any device, any torch): the oracle of the tests."""
    offset = offset.to(torch.int64)
    c0 = offset & MASK32
    c1 = (offset >> 32) & MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + PHILOX_KEY_A) & MASK32, (k1 + PHILOX_KEY_B) & MASK32
    return c0


def sort_keys(seed: int, num_rows: int, num_positions: int, device: torch.device | str | None = None) -> torch.Tensor:
    """int64 [num_rows, num_positions]: key[r, p] = (draw(seed, r*num_positions + p) - 2^31) * 2^32 + p.

    Sorting a row ascending gives its positions in ascending-draw order, ties broken by position.
    """
    positions = torch.arange(num_positions, dtype=torch.int64, device=device)
    rows = torch.arange(num_rows, dtype=torch.int64, device=device)
    offsets = rows[:, None] * num_positions + positions[None, :]
    draws = _draws(seed, offsets)
    return ((draws - 2**31) << 32) + positions


@jit
def load_seed(seed, seed_ptr, SEED_FROM_PTR: tl.constexpr):
    """The kernel's Philox key: the int argument, or the int64 the seed tensor holds (read on the device)."""
    if SEED_FROM_PTR:
        seed = tl.load(seed_ptr)
    return seed


@jit
def philox_sort_keys(seed, row, positions, num_positions):
    """Triton twin of ``sort_keys`` for one row: int64 keys of ``positions`` (an int block) of row ``row``."""
    positions = positions.to(tl.int64)
    offsets = row.to(tl.int64) * num_positions + positions
    draws = tl.randint(seed, offsets).to(tl.int64)  # uint32 -> int64 zero-extends
    return ((draws - 2147483648) << 32) + positions
