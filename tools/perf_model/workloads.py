"""The ops at the benchmark shapes: their launchers run on meta tensors under ``capture.recording``.

For each Triton kernel, ``KERNELS`` says what the SASS cannot: the trip count of its loops, the elements one
program handles per iteration, and the bytes the design reads and writes (the design's, not what the masked SASS
could touch: e.g. the image mask reads no pixel of a removed cell). Each case then names the op's minimal bytes
(each input read once, each output written once: the benchmark's byte counts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from masksub_kernels.ops import grid_mask, masksub_loss, masksub_loss_reduced, token_grid_mask, token_select
from masksub_kernels.ops._common import cdiv

from . import csrc_launches as csrc
from .capture import Launch, LaunchLog, counting_torch_launches, recording

META = torch.device("meta")
MASK_RATIO = 0.5  # the benchmarks' ratio
SEED = 1234


def _size(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ------------------------------------------------------------------------------------------------------------
# Per kernel: (trips per loop depth, elements per program per innermost iteration, bytes read, bytes written)
# ------------------------------------------------------------------------------------------------------------


def _select(a: dict) -> tuple:
    # one program per sample sorts N keys: writes K ids (int64) and, for the backward, N inverse entries (int32)
    n, k, rows = a["N"], a["K"], a["ids_ptr"].shape[0]
    return [], a["BLOCK_N"], 0, rows * (8 * k + (4 * n if a["WRITE_INVERSE"] else 0))


def _copy_rows(a: dict) -> tuple:
    # each output row: one map entry read, the source row read unless the map says -1 (a zero row), the row written
    rows, d, e = a["total_rows"], a["D"], a["src_ptr"].element_size()
    batch, prefix, map_len, src_len = a["map_ptr"].shape[0], a["P"], a["MAP_LEN"], a["SRC_LEN"]
    copied = batch * (prefix + min(map_len, src_len))  # gather: every row; scatter: the K kept of N
    return [], a["BLOCK_R"] * a["BLOCK_D"], copied * d * e + batch * map_len * a["map_ptr"].element_size(), rows * d * e


def _select_gather(a: dict) -> tuple:
    # program (b, c): the sort of b's N keys, then its P + K output rows in channel block c, BLOCK_R rows a trip;
    # the c = 0 programs write the K ids (int64) and the N inverse entries (int32)
    rows, p, k, n, d = a["ids_ptr"].shape[0], a["P"], a["K"], a["N"], a["D"]
    e = a["x_ptr"].element_size()
    copied = rows * (p + k) * d * e
    return [cdiv(p + k, a["BLOCK_R"])], a["BLOCK_R"] * a["BLOCK_D"], copied, copied + rows * (8 * k + 4 * n)


def _loss(a: dict) -> tuple:
    # both kernels' steady loops run over the whole blocks only; a partial last block is peeled (outside the loop).
    # SPLIT: a grid of (row, class split) programs, each looping over chunk classes (the row's last split fewer);
    # the forward stores 9 fp32 partial states per program, which the row's last program reads back, and takes a
    # ticket (an int32 read and written per program); each backward program reads its row's stats
    m, c, e = a["M"], a["C"], a["z_ptr"].element_size()
    forward = "gm_ptr" not in a
    dense = a["DENSE"]
    splits = cdiv(c, a["chunk"]) if a["SPLIT"] else 1
    span, block = (a["chunk"] if a["SPLIT"] else c), a["BLOCK_C"]
    trips = [span // block]
    if a.get("VEC", 1) > 1:
        # realigned rows (_block_range): the masked first block, peeled, holds classes up to BLOCK_C - shift; the
        # loop's whole blocks follow it, (span + shift) // BLOCK_C - 1 of them (a row's shift is in [0, VEC): its
        # middle taken); the peeled block is straight code, already in the kernel's once-per-program count
        trips = [max((span + (a["VEC"] - 1) // 2) // block - 1, 0)]
    if forward and a["BCE"] and a["HAS_MAIN"] and not dense:
        # BCE with class ids: the whole blocks run in two loops around the one that holds the label's column (its
        # own code, outside the loops: counted once), half of the others in each
        others = max(trips[0] - 1, 0)
        trips = [(others // 2, others - others // 2)]
    if forward and a["REDUCE"]:  # the reduction's loop after the row's (SASS order) runs in one program of M: ~0
        trips = [(*(trips[0] if isinstance(trips[0], tuple) else (trips[0],)), 0)]
    target = m * c * a["y_ptr"].element_size() if dense else m * 8
    if forward:
        reads = m * c * e * (int(a["HAS_MAIN"] or a["HAS_SUB"]) + int(a["HAS_SUB"])) + target * a["HAS_MAIN"]
        partials = (9 + 1) * 4 * m * splits if a["SPLIT"] else 0
        # REDUCE: a ticket per row; the last row's program reads the two loss rows (and the class ids) back
        reduction = m * (4 + 8 + 8 * int(a["HAS_MAIN"] and not dense)) if a["REDUCE"] else 0
        return trips, a["BLOCK_C"], reads + partials + reduction, 9 * m * 4 + partials + 16 * a["REDUCE"]
    dz, ds = a["WRITE_DZ"], a["WRITE_DS"]
    reads = m * c * e * (1 + int(ds)) + target * dz + 9 * m * 4 * splits
    written = (a["dz_ptr"] if dz else a["ds_ptr"]).element_size()  # the gradients' dtype (the fused-linear op's: bf16)
    return trips, a["BLOCK_C"], reads, m * c * written * (int(dz) + int(ds))


def _cell_mask(a: dict) -> tuple:
    return [], a["BLOCK_L"], 0, a["mask_ptr"].numel()


def _mask_image_random(a: dict) -> tuple:
    # program (plane, cell row, column block): ranks its cell row's cells, then CELL rows of BLOCK_K columns,
    # BLOCK_H rows a trip; the writers store the cell mask bytes
    x, mask = a["x_ptr"], a["mask_ptr"]
    trips = [cdiv(a["CELL"], a["BLOCK_H"])]
    return trips, a["BLOCK_H"] * a["BLOCK_K"], int(_size(x) * (1.0 - MASK_RATIO)), _size(x) + mask.numel()


def _mask_tokens(a: dict) -> tuple:
    x = a["x_ptr"]
    return [], a["BLOCK_W"] * a["BLOCK_C"], int(_size(x) * (1 - MASK_RATIO)) + a["cell_ptr"].numel(), _size(x)


def _mask_tokens_backward(a: dict) -> tuple:
    g, programs = a["g_ptr"], a["part_ptr"].shape[0]
    trips = [a["lines_per_program"], cdiv(a["W"], a["BLOCK_W"])]
    reads = _size(g) if a["WRITE_GRAD_X"] else int(_size(g) * MASK_RATIO)
    writes = _size(g) * a["WRITE_GRAD_X"] + programs * a["C"] * 4 * a["WRITE_PARTIALS"]
    return trips, a["BLOCK_W"] * a["BLOCK_C"], reads + a["cell_ptr"].numel(), writes


def _sum_partials(a: dict) -> tuple:
    parts = a["part_ptr"]
    return [], a["BLOCK_P"] * a["BLOCK_C"], _size(parts), _size(a["out_ptr"])


# (mask_image_grid's given-mask kernel, _mask_image_kernel, is in no case: no formula until a case records it,
# so that one is worked out against the launch, not guessed; helper-210 found the old one never exercised)
KERNELS: dict[str, Callable[[dict], tuple]] = {
    "_select_kernel": _select,
    "_copy_rows_kernel": _copy_rows,
    "_select_gather_kernel": _select_gather,
    "_loss_fwd_kernel": _loss,
    "_loss_bwd_kernel": _loss,
    "_cell_mask_kernel": _cell_mask,
    "_mask_image_random_kernel": _mask_image_random,
    "_mask_tokens_kernel": _mask_tokens,
    "_mask_tokens_backward_kernel": _mask_tokens_backward,
    "_sum_partials_kernel": _sum_partials,
}


# ------------------------------------------------------------------------------------------------------------
# Cases: an op at a shape, per mode, as the launches its Triton implementation makes
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    op: str  # the benchmark suite's name
    shape: str  # the benchmark's shape label where the benchmark has the shape
    dtype: str
    variant: str
    mode: str
    launches: list[Launch]
    minimal_bytes: int
    headline: bool = False  # in the prediction table of docs/performance.md (README: a few of them)
    cuda: list = field(default_factory=list)  # the CUDA extension's launcher calls for the same op (csrc.Call)
    torch_launches: int = 0  # torch ops of the Triton launchers that launch a kernel too (LaunchLog.torch_ops)


def _modes(forward: LaunchLog, backward: LaunchLog) -> tuple:
    """(mode, Triton launches, torch launches) of an op's forward, its backward and both."""
    f, b = len(forward.torch_ops), len(backward.torch_ops)
    return ("forward", list(forward), f), ("backward", list(backward), b), ("full", forward + backward, f + b)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def token_select_cases() -> list[Case]:
    """ViT token select + gather (forward), scatter (backward): the issue's ViT-B shapes and the benchmark's."""
    shapes = [("ViT-S", 256, 196, 384, False), ("ViT-B", 256, 196, 768, True), ("ViT-L", 256, 196, 1024, False)]
    shapes.append(("ViT-B", 256, 1024, 768, True))
    select_gather = token_select._select_gather_op._implementations["triton"]
    scatter = token_select._scatter_op._implementations["triton"]
    cases = []
    for name, b, n, d, headline in shapes:
        dtype, k, prefix = torch.bfloat16, token_select.num_kept_tokens(n, MASK_RATIO), 1
        x = torch.empty(b, prefix + n, d, dtype=dtype, device=META)
        with recording(token_select) as forward:
            y, ids, inv = select_gather(x, SEED, None, k, prefix, False, None, None)
        with recording(token_select) as backward:
            scatter(torch.empty_like(y), ids, inv, prefix, n)
        rows_out, rows_in = b * (prefix + k), b * (prefix + n)
        # the cuda backend: select + gather (one launch or two: csrc's launcher decides) forward; the scatter from
        # inv backward
        cuda = {"forward": [csrc.select_gather_tokens(x, k, prefix)]}
        cuda["backward"] = [csrc.scatter_tokens(y, n, prefix)]
        cuda["full"] = cuda["forward"] + cuda["backward"]
        minimal = {"forward": 2 * rows_out * d * 2, "backward": (rows_out + rows_in) * d * 2}
        label = f"{name} B={b} N={n} D={d}"
        for mode, launches, fills in _modes(forward, backward):
            total = minimal.get(mode, minimal["forward"] + minimal["backward"])
            case = Case("token_select", label, "bfloat16", "", mode, launches, total, headline, cuda[mode], fills)
            cases.append(case)
    return cases


LOSS_SHAPES = [
    ("ImageNet-21k", 4096, 21841, torch.bfloat16, True),
    ("BERT-like", 16384, 30522, torch.bfloat16, True),
    ("LLM-like", 8, 128256, torch.bfloat16, True),
    ("ImageNet", 1024, 1000, torch.float32, False),
    ("ImageNet", 1024, 1000, torch.bfloat16, False),
    ("LLM-like", 8192, 128256, torch.bfloat16, False),
]
LOSS_VARIANTS = [
    ("CE, class ids", False, False),
    ("CE, probabilities", False, True),
    ("BCE, class ids", True, False),
    ("BCE, probabilities", True, True),
]


class _ReducedBindings:
    """The extension's reduced loss bindings as meta-tensor stand-ins: what the cuda backend runs around them (torch
    ops that launch a kernel) is counted; the bindings' own fills are csrc.Call's."""

    @staticmethod
    def masksub_loss_reduced_forward(logits, *args):
        return torch.empty(4, device=META), torch.empty(9, logits.shape[0], device=META), torch.empty(1, device=META)

    @staticmethod
    def masksub_loss_reduced_backward(grad, need_main, need_sub, d, out, logits, *args):
        return tuple(torch.empty_like(logits) if need else logits.new_empty(0) for need in (need_main, need_sub))


def _cuda_backend_launches(z: torch.Tensor, y: torch.Tensor, options: tuple) -> tuple[int, int]:
    """(forward, backward) torch launches of the cuda backend's reduced loss around the extension's bindings
    (ops/masksub_loss_reduced.py), counted on meta tensors: none today, the reduction is in the kernels."""
    with counting_torch_launches() as forward:
        reduced, out, d = masksub_loss_reduced._forward_cuda(_ReducedBindings, z, z, y, *options, 0.5, 0.5, True)
    with counting_torch_launches() as backward:
        grad = torch.empty_like(reduced)
        masksub_loss_reduced._backward_cuda(_ReducedBindings, grad, True, True, d, out, z, z, y, *options, 0.5, 0.5)
    return len(forward), len(backward)


def loss_cases() -> list[Case]:
    """The MaskSub loss (main + sub term, one fused forward, one fused backward), CE and BCE, both target kinds.
    Probability targets come in the logits' dtype (as the benchmark builds them)."""
    forward_impl = masksub_loss_reduced._reduced_loss_op._implementations["triton"]  # the public loss's ('mean')
    backward_impl = masksub_loss_reduced._reduced_backward_op._implementations["triton"]
    cases = []
    for name, m, c, dtype, headline in LOSS_SHAPES:
        for variant, bce, dense in LOSS_VARIANTS:
            if not headline and (bce or dense):
                continue  # the benchmark's extra shapes: its own case only (CE, class ids)
            z = torch.empty(m, c, dtype=dtype, device=META)
            y = torch.empty(m, c, dtype=dtype, device=META) if dense else torch.empty(m, dtype=torch.int64, device=META)
            options = (bce, 0.0, -100, 1.0, None)
            with recording(masksub_loss) as forward:
                reduced, out, d = forward_impl(z, torch.empty_like(z), y, *options, 0.5, 0.5, True)
            with recording(masksub_loss) as backward:  # autograd's gradient of the [4] reduced losses
                grad = torch.empty_like(reduced)
                backward_impl(grad, True, True, d, out, z, torch.empty_like(z), y, *options, 0.5, 0.5)
            # the cuda backend: the extension's reduced bindings (the reduction in the kernels' launches, as Triton's)
            # and whatever torch ops its Python side runs around them
            around = _cuda_backend_launches(z, y, options)
            calls = (csrc.masksub_loss_reduced_forward(z, z, y, bce), csrc.masksub_loss_reduced_backward(z, z, y, bce))
            calls = [dataclasses.replace(c, torch_launches=c.torch_launches + n) for c, n in zip(calls, around)]
            cuda = {"forward": calls[:1], "backward": calls[1:]}
            cuda["full"] = cuda["forward"] + cuda["backward"]
            logits, target = _size(z), _size(y)
            # minimal: the forward reads both logits and the target; the backward writes both gradients (and must
            # read the logits again unless the forward wrote the gradients: the benchmark's 4 passes in all)
            minimal = {"forward": 2 * logits + target, "backward": 4 * logits + target, "full": 4 * logits + target}
            label = f"{name} M={m} C={c}"
            for mode, launches, fills in _modes(forward, backward):
                case = Case("loss", label, _dtype_name(dtype), variant, mode, launches, minimal[mode], headline)
                cases.append(dataclasses.replace(case, cuda=cuda[mode], torch_launches=fills))
    return cases


def grid_mask_cases() -> list[Case]:
    """Image masks (NCHW and channels_last, fp32 and bf16) and Swin-T stage-1 token masks (bf16) at B=256."""
    mask_image = grid_mask._mask_image_random_op._implementations["triton"]  # mask_image_grid's one launch
    cases = []
    b, hw, cell = 256, 224, 32
    cells = (hw // cell) ** 2
    keep = token_select.num_kept_tokens(cells, MASK_RATIO)
    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("nchw", "channels_last"):
            images = torch.empty(b, 3, hw, hw, dtype=dtype, device=META)
            if layout == "channels_last":
                images = images.to(memory_format=torch.channels_last)
            with recording(grid_mask) as launches:
                mask_image(images, SEED, None, cell, keep, 0.0)
            label = f"images B={b} 3x{hw}x{hw} cell 32" + (" channels_last" if layout == "channels_last" else "")
            headline = dtype == torch.bfloat16
            # minimal: the kept cells' pixels read, every pixel written (the benchmark counts a full read: 2 x size)
            minimal = int((2 - MASK_RATIO) * _size(images))
            cuda = [csrc.mask_image_grid_random(images, cell, keep)]  # mask_image_grid's
            fills = len(launches.torch_ops)
            case = Case("grid_mask", label, _dtype_name(dtype), layout, "forward", list(launches), minimal, headline)
            cases.append(dataclasses.replace(case, cuda=cuda, torch_launches=fills))
    # Swin-T stage 1: 56 x 56 tokens of 96 channels, cells of 8 x 8 tokens
    hw, channels, cell = 56, 96, 8
    cells, dtype = (hw // cell) ** 2, torch.bfloat16
    keep = token_select.num_kept_tokens(cells, MASK_RATIO)
    tokens = torch.empty(b, hw, hw, channels, dtype=dtype, device=META)
    token = torch.empty(channels, dtype=dtype, device=META)
    with recording(grid_mask, token_grid_mask) as forward:  # mask_tokens_grid's op: the cell mask, the masking
        _, mask = token_grid_mask._mask_tokens_random_op._implementations["triton"](
            tokens, token, SEED, None, cell, keep
        )
    with recording(token_grid_mask) as backward:
        token_grid_mask._mask_tokens_backward_op._implementations["triton"](tokens, mask, cell, True, True)
    label = f"Swin-T tokens B={b} {hw}x{hw}x{channels} cell 8"
    # minimal: forward reads the kept tokens and writes all; backward reads dT_out and writes dT (and dm)
    minimal = {"forward": int((2 - MASK_RATIO) * _size(tokens)), "backward": 2 * _size(tokens)}
    minimal["full"] = minimal["forward"] + minimal["backward"]
    cuda = {"forward": [csrc.mask_tokens_grid_random(tokens, cell, keep)]}  # one launch: cells drawn in it
    cuda["backward"] = [csrc.mask_tokens_grid_backward(tokens, cell)]
    cuda["full"] = cuda["forward"] + cuda["backward"]
    for mode, launches, fills in _modes(forward, backward):
        cases.append(Case("grid_mask", label, "bfloat16", "", mode, launches, minimal[mode], True, cuda[mode], fills))
    return cases


def all_cases() -> list[Case]:
    return token_select_cases() + loss_cases() + grid_mask_cases()


def kernel_terms(launch: Launch) -> tuple:
    """(trips, elements per iteration, bytes read, bytes written) of a recorded launch."""
    return KERNELS[launch.name](launch.bound)
