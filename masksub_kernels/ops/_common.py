"""Pieces every op file shares: accepted dtypes, the selection limits and checks, launch helpers, the extension."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)
MAX_TOKENS = 8192  # one sort per sample in one program (8192 int64 keys, 32 warps); a ViT-H at 448 px has 1024


def check_keep_args(batch_size: int, num_tokens: int, num_keep: int) -> None:
    """Sizes of a per-sample selection of ``num_keep`` of ``num_tokens`` positions (tokens or grid cells)."""
    for name, value in (("batch_size", batch_size), ("num_tokens", num_tokens), ("num_keep", num_keep)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if not 1 <= num_tokens <= MAX_TOKENS:
        raise ValueError(f"num_tokens must be in [1, {MAX_TOKENS}], got {num_tokens}")
    if not 1 <= num_keep <= num_tokens:
        raise ValueError(f"num_keep must be in [1, num_tokens={num_tokens}], got {num_keep}")


def sort_warps(block: int) -> int:
    """Warps for a one-program sort of ``block`` keys: ~8 keys per thread keeps the bitonic network small (compile
    time grows steeply with keys per thread: 4096 keys on 4 warps took minutes to compile, on 16 warps 7 s)."""
    return max(4, min(32, block // 256))


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids."""
    return -(-a // b)


def cuda_extension():
    """The compiled extension ``masksub_kernels._C`` (built by setup.py where a CUDA toolkit is present)."""
    from .. import _C

    return _C
