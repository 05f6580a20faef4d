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
    """The compiled extension ``masksub_kernels._C`` (built by setup.py where a CUDA toolkit is present), or the CUDA
    emulator standing in for it (masksub_kernels.tools.cuda_emulator)."""
    from .._backend import cuda_module

    return cuda_module()


class MaskSubOp:
    """An op of this library: a ``torch.library`` custom op for torch.compile, a direct call in eager mode.

    Through the dispatcher a custom op with autograd costs ~70 us of Python per call (measured on the CPU), more than
    the kernels take at ViT sizes. So in eager mode the op runs its implementation directly, inside an
    ``autograd.Function`` when an input needs a gradient, with the very setup_context / backward registered on the
    custom op. While torch.compile traces (dynamo, and AOTAutograd tracing the backward formulas), the custom op is
    called instead, so compiled graphs keep one opaque node per op and never break.
    """

    def __init__(self, name: str, implementation):
        self.implementation = implementation
        self.custom_op = torch.library.custom_op(f"masksub::{name}", implementation, mutates_args=())
        self._function = None

    def register_fake(self, fake):
        self.custom_op.register_fake(fake)
        return fake

    def register_autograd(self, backward, *, setup_context) -> None:
        self.custom_op.register_autograd(backward, setup_context=setup_context)
        implementation = self.implementation

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                output = implementation(*args)
                setup_context(ctx, args, output)
                return output

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, *grads)

        self._function = Function

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.custom_op(*args)
        if self._function is not None and torch.is_grad_enabled():
            if any(isinstance(arg, torch.Tensor) and arg.requires_grad for arg in args):
                return self._function.apply(*args)
        return self.implementation(*args)


def masksub_op(name: str):
    """Decorator: ``@masksub_op("gather_tokens")`` makes the function the op ``masksub::gather_tokens``."""
    return lambda implementation: MaskSubOp(name, implementation)
