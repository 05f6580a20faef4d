"""What the loss kernels' launch configurations read of their operands and of the device, no tunable of the op among it:
the operands with unit last stride, an operand's layout (the key of masksub_loss.py's configuration cache and of
_linear_loss_chunks.py's class-tail plans), the rows' realignment to 16-byte boundaries (VEC), the 16-byte hints
(GROUP, ALIGNED, EVEN), the device's SM count (a cached property: no sync) and the rows of the forward's fp32 [9, M]
output (here, so that _loss_checks.py reads them too: it cannot import masksub_loss.py). Shared by masksub_loss.py's
launchers and _loss_fwd_bwd.py's one launch, and apart from the op so that masksub_loss.py keeps its reference,
launchers and autograd; the tunables (MAX_BLOCK_C, SPLIT_PROGRAMS_PER_SM) and the cache stay there, where the tests
change them. The tests patch _device_sms on masksub_loss, whose _cached_config reads it."""

from __future__ import annotations

import functools

import torch

# Rows of the loss forward's fp32 [9, M] output: the two per-row losses, then the stats the backward reads (CE only).
MAIN, SUB, C_Z, LOG_L_Z, S_Z, C_S, LOG_L_S, C_T, LOG_L_T = range(9)
NUM_OUT = 9

DEFAULT_SMS = 132  # SMs assumed off a GPU (the interpreter; meta tensors for the perf model): H100 / H200


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_sms(device: torch.device) -> int:
    """The SM count of the device the kernels run on (a cached property: no sync), DEFAULT_SMS off a GPU."""
    if device.type != "cuda":
        return DEFAULT_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


def _unit_last_stride(*tensors):
    """The kernel operands: each tensor (or None) with unit last stride (a copy only where it has not)."""
    return tuple(t if t is None or t.stride(-1) == 1 else t.contiguous() for t in tensors)


def _layout(t: torch.Tensor | None):
    """What a launch configuration reads of an operand: dtype, shape, strides and whether its data starts on a
    16-byte boundary (meta tensors, which have none: yes, as the configuration reads them). Of the device only its
    SM count matters: _cached_config's key has it."""
    if t is None:
        return None
    return t.dtype, t.shape, t.stride(), t.is_meta or t.data_ptr() % 16 == 0


def row_alignment(rows: torch.Tensor, *others: torch.Tensor) -> int:
    """The kernels' VEC: 16 bytes in elements of ``rows`` when its row stride is not a multiple of that (C = 30522
    or 21841 in bf16) and the other [M, C] operands given (sub logits, gradients) share the stride, so that the
    kernels realign each row's blocks to 16-byte boundaries (_block_range); else 1 (aligned rows, or none to gain)."""
    vec, stride = 16 // rows.element_size(), rows.stride(0)
    if rows.shape[0] < 2 or stride % vec == 0 or any(t.numel() and t.stride(0) != stride for t in others):
        return 1
    # the shift is computed from row * stride alone: each tensor must start on a 16-byte boundary (a view with a
    # storage offset would stay correct, with no wider access to gain)
    if any(t.data_ptr() % 16 for t in (rows, *others) if t.numel() and t.device.type != "meta"):
        return 1
    return vec


def rows_aligned(group: int, *tensors: torch.Tensor) -> bool:
    """Whether every [M, C] operand's row stride is a multiple of ``group`` elements (16 bytes of the logits) and
    its data 16-byte aligned: the kernels then hint it (ALIGNED), as Triton infers it only for strides of 16
    elements (C = 1000 in bf16: 16-byte rows, 2-byte loads without the hint)."""
    return all(
        (t.shape[0] == 1 or t.stride(0) % group == 0) and (t.device.type == "meta" or t.data_ptr() % 16 == 0)
        for t in tensors
        if t.numel()
    )


def _alignment_flags(vec: int, z: torch.Tensor, *others: torch.Tensor) -> dict:
    """The kernels' GROUP, ALIGNED and EVEN constexprs for rows not realigned (vec = 1): ALIGNED where rows_aligned
    (a single row: its data alone), EVEN where C is a multiple of GROUP as well (a masked last block's mask is then
    uniform over each 16-byte word). GROUP: a 16-byte word of the logits where the rows' words are aligned (realigned
    or ALIGNED), else 1 (the forward's per-word states would need shuffles across lanes)."""
    group = 16 // z.element_size()
    aligned = vec == 1 and rows_aligned(group, z, *others)
    even = aligned and z.shape[1] % group == 0
    return {"GROUP": group if vec > 1 or aligned else 1, "ALIGNED": aligned, "EVEN": even}
