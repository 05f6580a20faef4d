"""What tools/compile_kernels.py compiles: each Triton kernel of the ops, in the specialisations the launchers use.

A spec is (name, kernel, signature, constexprs, options). Pointer and scalar types follow what the launchers pass;
Triton specialises integer arguments equal to 1 into constants at launch, so unit strides are constexprs here too.
``options`` may name, under ``divisible_by_16``, the arguments the JIT would hint as multiples of 16 (the fused-linear
specs and the chunks' one loss launch, which are recorded launches: see there); the other specs (the loss kernels'
own launches, the masks) carry no such hints: their kernels state the rows' alignment through constexprs such as
ALIGNED, but without the pointers' divisibility Triton proves no 16-byte access there (helper-165), so their
compiles are the launches' unaligned variants: to record too.
These tables know the ops' private kernels and tiling helpers on purpose: they check exactly what the ops launch.
"""

from __future__ import annotations

import inspect

import torch

from masksub_kernels._triton import tl
from masksub_kernels.ops import _linear_loss_kernels as kernels
from masksub_kernels.ops import grid_mask, linear_masksub_loss, masksub_loss, token_grid_mask, token_select
from masksub_kernels.ops._common import MAX_TOKENS, sort_warps


def _spec(name: str, kernel, types: dict[str, str], constexprs: dict, num_warps: int = 4):
    """A spec from the kernel's own parameters: those not typed in ``types`` are i64 strides (named s...) or i32
    sizes; constexprs stay constexprs."""
    params = inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()
    names = [p.name for p in params if "constexpr" not in str(p.annotation)]
    default = {n: "constexpr" if n in constexprs else "i64" if n.startswith("s") else "i32" for n in names}
    signature = {n: types.get(n, default[n]) for n in names}
    return name, kernel, signature, constexprs, {"num_warps": num_warps}


def token_select_specs() -> list[tuple]:
    def copy_signature(dtype: str, map_dtype: str) -> dict[str, str]:
        return {
            "src_ptr": f"*{dtype}", "map_ptr": f"*{map_dtype}", "dst_ptr": f"*{dtype}", "total_rows": "i64",
            "P": "i32", "MAP_LEN": "i32", "SRC_LEN": "i32", "D": "i32", "stride_sb": "i64", "stride_ss": "i64",
        }  # fmt: skip

    select_signature = {
        "ids_ptr": "*i64", "inv_ptr": "*i32", "seed": "i64", "seed_ptr": "*i64", "keep_ptr": "*u8", "drop_ptr": "*u8",
        "N": "i32", "K": "i32", "stride_kb": "i64", "stride_kn": "i64", "stride_db": "i64", "stride_dn": "i64",
    }  # fmt: skip
    # (ORDERED, SEED_FROM_PTR, HAS_KEEP, HAS_DROP, WRITE_INVERSE, blocks): the plain selection at the smallest
    # block (16 keys, 4 warps), at 256 and at the largest (MAX_TOKENS, 32 warps: the most shared memory, 16 KiB
    # under Triton 3.8; ~20 s to compile for both targets), and without the inverse (random_keep_indices); ordered
    # and the always-keep / drop-first masks at 256 and 4096 keys; the seed read from a tensor (one scalar load,
    # whatever the block) at 256 only, as the masks ordered (an ordered 4096-key sort with masks takes ~35 s to
    # compile for sm_80)
    variants = (
        (False, False, False, False, True, (16, 256, MAX_TOKENS)), (False, False, False, False, False, (256,)),
        (True, False, False, False, True, (256, 4096)), (False, True, False, False, True, (256,)),
        (False, False, True, True, True, (256, 4096)), (True, False, True, False, True, (256,)),
    )  # fmt: skip
    select = [
        (
            f"select[ordered={ordered},seed_ptr={from_ptr},keep={keep},drop={drop},"
            f"{'' if inverse else 'no_inverse,'}block={block_n}]",
            token_select._select_kernel,
            select_signature,
            {
                "SEED_FROM_PTR": from_ptr,
                "HAS_KEEP": keep,
                "HAS_DROP": drop,
                "ORDERED": ordered,
                "WRITE_INVERSE": inverse,
                "BLOCK_N": block_n,
            },
            {"num_warps": sort_warps(block_n)},
        )
        for ordered, from_ptr, keep, drop, inverse, blocks in variants
        for block_n in blocks
    ]
    copy = [
        (f"copy_rows[{dtype},{direction}]", token_select._copy_rows_kernel, copy_signature(dtype, map_dtype),
         {"BLOCK_R": 16, "BLOCK_D": 256}, {"num_warps": 4})
        for dtype in ("fp32", "fp16", "bf16")
        for direction, map_dtype in (("gather", "i64"), ("scatter", "i32"))
    ]  # fmt: skip
    # the one-launch selection + gather (N <= token_select.FUSED_MAX_TOKENS): plain, ordered with a seed tensor,
    # and with both masks, per dtype at ViT-B's tile
    fused_signature = {
        **{k: v for k, v in select_signature.items() if k in ("ids_ptr", "inv_ptr", "seed", "seed_ptr")},
        "keep_ptr": "*u8", "drop_ptr": "*u8", "N": "i32", "K": "i32", "P": "i32", "D": "i32", "stride_xb": "i64",
        "stride_xs": "i64", **{k: "i64" for k in ("stride_kb", "stride_kn", "stride_db", "stride_dn")},
    }  # fmt: skip
    fused_constexprs = {"BLOCK_N": 256, "BLOCK_R": 32, "BLOCK_D": 256}
    fused = [
        (
            f"select_gather[{dtype},ordered={ordered},seed_ptr={from_ptr},masks={masks}]",
            token_select._select_gather_kernel,
            {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", **fused_signature},
            {"SEED_FROM_PTR": from_ptr, "HAS_KEEP": masks, "HAS_DROP": masks, "ORDERED": ordered, **fused_constexprs},
            {"num_warps": sort_warps(256)},
        )
        for dtype in ("fp32", "fp16", "bf16")
        for ordered, from_ptr, masks in ((False, False, False), (True, True, False), (False, False, True))
    ]
    return select + copy + fused


def grid_mask_specs() -> list[tuple]:
    specs = [
        _spec(
            f"cell_mask[block={b},seed_ptr={p}]",
            grid_mask._cell_mask_kernel,
            {"mask_ptr": "*u8", "seed_ptr": "*i64"},
            {"SEED_FROM_PTR": p, "BLOCK_L": b},
            sort_warps(b),
        )
        for b, p in ((64, False), (64, True), (1024, True), (MAX_TOKENS, False))  # the largest: 16 KiB of shared memory
    ]
    for t, fill_int in (("fp32", tl.int32), ("fp16", tl.int16), ("bf16", tl.int16)):
        # NCHW; channels_last with contiguous rows (the usual layout) and with strided ones
        for last, contiguous in ((False, False), (True, True), (True, False)):
            rows, cols = grid_mask._tile(224 * 3 if last else 224, 224)
            unit = {"sxc": 1, "syc": 1} if last else {"sxw": 1, "syw": 1}
            layout = ("nhwc" if contiguous else "nhwc-strided") if last else "nchw"
            specs.append(_spec(
                f"mask_image[{t},{layout}]", grid_mask._mask_image_kernel,
                {"x_ptr": f"*{t}", "cell_ptr": "*u8", "y_ptr": f"*{t}"},
                {**unit, "CELL": 32, "CHANNELS_LAST": last, "ROW_CONTIGUOUS": contiguous, "FILL_INT": fill_int,
                 "RUN": 32, "BLOCK_H": rows, "BLOCK_K": cols},
            ))  # fmt: skip
            # the one-launch path (cell mask + masking) at 224 px, 32-pixel cells: 49 cells, 7 per row
            # (and, bf16 NCHW, the largest grids it takes, FUSED_RANK_ELEMENTS comparisons: 16 x 16 cells, and wide
            # ones whose rows take a block of 32 or 64 cells: 4 x 32 and 1 x 64)
            largest = (t, last) == ("bf16", False)
            blocks = ((False, 64, 16), (True, 64, 16), (False, 256, 16), (False, 128, 32), (False, 64, 64))
            for from_ptr, block_l, block_g in blocks if largest else ((False, 64, 16),):
                rows, cols = grid_mask._tile(224 * 3 if last else 224, 32)
                per_row = "" if block_g == 16 else f",per_row={block_g}"
                specs.append(_spec(
                    f"mask_image_random[{t},{layout},seed_ptr={from_ptr},cells={block_l}{per_row}]",
                    grid_mask._mask_image_random_kernel,
                    {"x_ptr": f"*{t}", "y_ptr": f"*{t}", "mask_ptr": "*u8", "seed_ptr": "*i64"},
                    {**unit, "CELL": 32, "CHANNELS_LAST": last, "ROW_CONTIGUOUS": contiguous, "FILL_INT": fill_int,
                     "RUN": 32, "SEED_FROM_PTR": from_ptr, "BLOCK_L": block_l, "BLOCK_G": block_g, "BLOCK_H": rows,
                     "BLOCK_K": cols},
                ))  # fmt: skip
    return specs


def token_grid_mask_specs() -> list[tuple]:
    specs = []
    for t in ("fp32", "fp16", "bf16"):
        w, c = grid_mask._tile(96, 56)  # Swin-T stage 1: 56 x 56 tokens of 96 channels
        specs.append(_spec(
            f"mask_tokens[{t}]", token_grid_mask._mask_tokens_kernel,
            {"x_ptr": f"*{t}", "m_ptr": f"*{t}", "cell_ptr": "*u8", "y_ptr": f"*{t}"},
            {"sxc": 1, "CELL": 8, "BLOCK_W": w, "BLOCK_C": c},
        ))  # fmt: skip
        for dx, dm in ((True, True), (True, False), (False, True)):
            specs.append(_spec(
                f"mask_tokens_backward[{t},dT={dx},dm={dm}]", token_grid_mask._mask_tokens_backward_kernel,
                {"g_ptr": f"*{t}", "cell_ptr": "*u8", "gx_ptr": f"*{t}", "part_ptr": "*fp32"},
                {"sgc": 1, "CELL": 8, "WRITE_GRAD_X": dx, "WRITE_PARTIALS": dm, "BLOCK_W": w, "BLOCK_C": c},
            ))  # fmt: skip
        specs.append(_spec(
            f"sum_partials[{t}]", token_grid_mask._sum_partials_kernel, {"part_ptr": "*fp32", "out_ptr": f"*{t}"},
            {"BLOCK_P": 1024, "BLOCK_C": 8},
        ))  # fmt: skip
    return specs


_ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
_CHUNK_SPLIT = {"SPLIT": True, "ALIGNED": True, "EVEN": True, "ZERO_ABSENT": True}  # the fused-linear op's chunks
_LOSS_SCALARS = {"M": "i32", "C": "i32", "chunk": "i32", "stride_z": "i64", "stride_s": "i64", "stride_y": "i64"}
_LOSS_OPTIONS = {"eps": "fp32", "ignore_index": "i64", "temperature": "fp32", "threshold": "fp32"}
_LOSS_OPTIONS |= {"main_weight": "fp32", "sub_weight": "fp32"}  # the reduced loss's weights (REDUCE, REDUCED)


def _loss_spec(
    kernel, dtype: str, flags: dict, block_c: int = masksub_loss.MAX_BLOCK_C, bias: str | None = None,
    grads: str | None = None,
):  # fmt: skip
    """bias: the bias's dtype where HAS_BIAS (the fused-linear op's chunks: fp32 logits, a bias of the inputs').
    grads: the backward's gradients' dtype where not the logits' (the chunks' bf16 / fp16 over their fp32 rows)."""
    forward = kernel is masksub_loss._loss_fwd_kernel
    if forward:
        block_c = min(block_c, masksub_loss._forward_max_block(flags.get("BCE", False)))  # the launcher's cap
    if flags.get("SPLIT"):
        block_c = masksub_loss._split_max_block()  # the launcher's block for class splits (both kernels)
    logits = {"z_ptr": f"*{dtype}", "s_ptr": f"*{dtype}", "y_ptr": "*fp32" if flags.get("DENSE") else "*i64"}
    logits["bias_ptr"] = f"*{bias or dtype}"
    if forward:
        scratch = {"part_ptr": "*fp32", "ticket_ptr": "*i32", "red_ptr": "*fp32", "d_ptr": "*fp32"}
        signature = {**logits, "out_ptr": "*fp32", **scratch, **_LOSS_SCALARS, "stride_out": "i64", **_LOSS_OPTIONS}
    else:
        written = grads or dtype
        outputs = {"gm_ptr": "*fp32", "gs_ptr": "*fp32", "dz_ptr": f"*{written}", "ds_ptr": f"*{written}"}
        outputs["d_ptr"] = "*fp32"
        signature = {**logits, "out_ptr": "*fp32", **outputs, **_LOSS_SCALARS, "stride_gm": "i64", "stride_gs": "i64"}
        signature |= {"stride_d": "i64", "stride_out": "i64"}
        signature.update(_LOSS_OPTIONS)
    constexprs = {"BCE": False, "DENSE": False, "BINARISE": False, "SPLIT": False, "HAS_BIAS": bias is not None}
    constexprs["UNIT_T"] = False
    constexprs["VEC"] = 1  # the launchers' default: rows already 16-byte aligned (row_alignment)
    constexprs |= {"ALIGNED": False, "EVEN": False}  # _alignment_flags
    constexprs |= {"REDUCE": False, "MEAN": False, "SMOOTHED": True} if forward else {"REDUCED": False}  # per row
    constexprs |= {} if forward else {"OVER_ROWS": False}  # gradients of their own (the chunks': over the logits)
    constexprs.update(flags, BLOCK_C=block_c)
    if "GROUP" not in flags:  # as _alignment_flags: a 16-byte word where the rows' words are aligned, else 1
        aligned_words = constexprs["VEC"] > 1 or constexprs["ALIGNED"]
        constexprs["GROUP"] = 16 // _ELEMENT_BYTES[dtype] if aligned_words else 1
    if not forward:  # as _gradient_group: a 16-byte word of the gradients' elements where ALIGNED, else no hint
        words = max(constexprs["GROUP"], 16 // _ELEMENT_BYTES[grads or dtype])
        constexprs.setdefault("D_GROUP", words if constexprs["ALIGNED"] else 1)
    if forward:
        constexprs["BLOCK_S"] = 64 if constexprs["SPLIT"] else 1  # splits (SPLIT): up to 2 x 132 SMs / rows
        # as the launcher: an output without tickets (no split, no reduction) is not zero-filled
        constexprs.setdefault("ZERO_ABSENT", not (constexprs["SPLIT"] or constexprs["REDUCE"]))
    signature = {name: kind for name, kind in signature.items() if name not in constexprs}
    if not forward:
        constexprs = {"LABELS": False, **constexprs}
    set_flags = ",".join(k.lower() if v is True else f"{k}={v}" for k, v in flags.items() if v)
    set_flags += ",no_smoothed" if flags.get("SMOOTHED") is False else ""  # on unless named
    set_flags += f",bias={bias}" if bias else ""
    set_flags += f",grads={grads}" if grads else ""
    name = f"{'fwd' if forward else 'bwd'}[{dtype},{set_flags},block={block_c}]"
    return name, kernel, signature, constexprs, {"num_warps": masksub_loss._launch_config(block_c, block_c)[1]}


def masksub_loss_specs() -> list[tuple]:
    fwd, bwd = masksub_loss._loss_fwd_kernel, masksub_loss._loss_bwd_kernel
    bce, widest = {"BCE": True, "DENSE": True, "BINARISE": True}, masksub_loss.MAX_BLOCK_C
    # variant: (forward flags, backward flags, BLOCK_C); single-term kernels in bf16 only
    variants = [
        ({"HAS_MAIN": True, "HAS_SUB": True}, {"LABELS": True, "WRITE_DZ": True, "WRITE_DS": True}, widest),
        ({"HAS_MAIN": True, "HAS_SUB": True, "DENSE": True}, {"WRITE_DZ": True, "WRITE_DS": True, "DENSE": True}, 1024),
        ({"HAS_MAIN": True, "HAS_SUB": True, **bce}, {"WRITE_DZ": True, "WRITE_DS": True, **bce}, widest),
    ]
    split_flags = ({}, {"DENSE": True}, {"BCE": True, "DENSE": True})  # class ids, probabilities, BCE
    return [
        _loss_spec(kernel, dtype, flags, block_c)
        for dtype in ("fp32", "fp16", "bf16")
        for fwd_flags, bwd_flags, block_c in variants
        for kernel, flags in ((fwd, fwd_flags), (bwd, bwd_flags))
    ] + [
        _loss_spec(fwd, "bf16", {"HAS_MAIN": True, "HAS_SUB": False}),
        _loss_spec(fwd, "bf16", {"HAS_MAIN": False, "HAS_SUB": True}),
        _loss_spec(bwd, "bf16", {"LABELS": True, "WRITE_DZ": True, "WRITE_DS": False}),
        _loss_spec(bwd, "bf16", {"LABELS": False, "WRITE_DZ": False, "WRITE_DS": True}),
        # rows not 16-byte aligned (C = 30522 in bf16): realigned to the boundary before each row (VEC = 8)
        *(
            _loss_spec(kernel, "bf16", {**flags, "VEC": 8})
            for kernel, flags in ((fwd, variants[0][0]), (bwd, variants[0][1]))
        ),
        # rows of 16 bytes but not of 16 elements (C = 1000 in bf16): hinted (ALIGNED), a word-uniform tail (EVEN)
        *(
            _loss_spec(kernel, dtype, {**flags, "ALIGNED": True, "EVEN": even})
            for dtype, even in (("bf16", True), ("fp32", False))
            for kernel, flags in ((fwd, variants[0][0]), (bwd, variants[0][1]))
        ),
        # BCE with class ids, T != 1 and T = 1 (UNIT_T: the teacher's sigmoid shares the main term's exp)
        *(
            _loss_spec(kernel, "bf16", {**flags, "BCE": True, "UNIT_T": unit_t})
            for unit_t in (False, True)
            for kernel, flags in ((fwd, variants[0][0]), (bwd, variants[0][1]))
        ),
        # class ids without label smoothing (SMOOTHED = False: no sum of z for the weight off the id), CE and BCE
        *(_loss_spec(fwd, "bf16", {**variants[0][0], "BCE": bce, "SMOOTHED": False}) for bce in (False, True)),
        # the reduced loss (ops/masksub_loss_reduced.py): class ids counted for a mean, probabilities, a split
        *(
            _loss_spec(fwd, "bf16", {**flags, "REDUCE": True, "MEAN": mean})
            for flags, mean in ((variants[0][0], True), (variants[1][0], True), (variants[0][0], False))
        ),
        _loss_spec(fwd, "bf16", {"HAS_MAIN": True, "HAS_SUB": True, "SPLIT": True, "REDUCE": True, "MEAN": True}),
        _loss_spec(bwd, "bf16", {**variants[0][1], "REDUCED": True}),
        _loss_spec(bwd, "bf16", {"LABELS": False, "WRITE_DZ": False, "WRITE_DS": True, "REDUCED": True}),
        # CE at T = 1 (UNIT_T: the teacher shares the main term's exp2): class ids, probabilities, sub term only
        *(
            _loss_spec(fwd, dtype, {**flags, "UNIT_T": True})
            for dtype in ("fp32", "bf16")
            for flags in (variants[0][0], variants[1][0], {"HAS_MAIN": False, "HAS_SUB": True})
        ),
        # a few rows of many classes: the class-split grid (class_splits), both target kinds, CE and BCE
        *(_loss_spec(fwd, "bf16", {"HAS_MAIN": True, "HAS_SUB": True, "SPLIT": True, **f}) for f in split_flags),
        *(
            _loss_spec(bwd, "bf16", {"LABELS": not f, "WRITE_DZ": True, "WRITE_DS": True, "SPLIT": True, **f})
            for f in split_flags
        ),
        # the fused-linear op's chunks (ops/_linear_loss_chunks.py): fp32 logits, the bias of bf16 / fp16 inputs
        *(_loss_spec(fwd, "fp32", variants[0][0], bias=bias) for bias in ("bf16", "fp16")),
        # 16-byte rows hinted (ALIGNED, EVEN) in a class split and in the fused-linear op's chunks (fp32 logits)
        *(
            _loss_spec(kernel, "bf16", {**flags, "SPLIT": True, "ALIGNED": True, "EVEN": True})
            for kernel, flags in ((fwd, variants[0][0]), (bwd, variants[0][1]))
        ),
        _loss_spec(fwd, "fp32", {**variants[0][0], "ALIGNED": True, "EVEN": True}, bias="bf16"),
        # the chunks' split forward at BERT's shape: stats into the op's [9, M], its tickets reused (no fill: the
        # kernel writes the zeros, ZERO_ABSENT, with a split)
        _loss_spec(fwd, "fp32", {**variants[0][0], **_CHUNK_SPLIT}, bias="bf16"),
        # the chunks' backward of fp16 / bf16 inputs: the gradients over the fp32 logits' rows (a barrier per block):
        # both terms, with and without a bias, BCE with probabilities, the sub term alone
        *(
            _loss_spec(bwd, "fp32", {**variants[0][1], "ALIGNED": True, "OVER_ROWS": True}, bias=low, grads=low)
            for low in ("bf16", "fp16")
        ),
        *(
            _loss_spec(bwd, "fp32", {**flags, "ALIGNED": True, "OVER_ROWS": True}, bias=bias, grads="bf16")
            for flags, bias in (
                (variants[0][1], None),
                (variants[2][1], "bf16"),
                ({"LABELS": False, "WRITE_DZ": False, "WRITE_DS": True}, "bf16"),
            )
        ),
        # Triton turns integer arguments equal to 1 into constants: one row of one class
        _loss_spec(fwd, "fp32", {"HAS_MAIN": True, "HAS_SUB": True, "M": 1, "C": 1, "stride_out": 1}),
        _loss_spec(bwd, "fp32", {"LABELS": True, "WRITE_DZ": True, "WRITE_DS": True, "M": 1, "C": 1, "stride_out": 1}),
    ]


# The fused-linear loss: the launches its own launchers make (forward, dH, dW), recorded on meta tensors at a shape
# and specialised there as Triton's JIT specialises them (tools/perf_model/capture.py: pointers and sizes divisible
# by 16 get divisibility hints, unit strides become constants). The hints decide the loads' width and with it the
# registers the tiles' addresses take, so a spec without them compiled kernels that spill far more than a launch at
# BERT's shape does (576 against 176 bytes per thread for the bf16 forward on sm_90, 560 / 992 against 0 for dH /
# dW). BERT-base MLM's shape stands for the aligned launches (hidden sizes are multiples of 16); D = 100 for the
# unaligned ones (unvectorised loads), in the base variant.
_LINEAR_ALIGNED = (16384, 768, 30522)
_LINEAR_UNALIGNED = (4096, 100, 1000)
_LINEAR_WIDE = (16384, 18432, 256000)  # C D >= 2^31: W's offsets in int64 (the launcher's WIDE_W)
_LINEAR_BASE = {
    "HAS_SUB": True, "HAS_BIAS": True, "BCE": False, "DENSE": False, "BINARISE": False, "UNIT_T": True, "WIDE_W": False,
}  # fmt: skip
_LINEAR_GRADS = {"MAIN_GRAD": True, "SUB_GRAD": True}


def _linear_launches(dtype: torch.dtype, shape: tuple[int, int, int], variant: dict) -> list:
    """The forward's and backward's launches of linear_masksub_loss (every gradient asked for) at ``shape`` (the
    forward's alone for probability targets, whose backward is the chunk loop's).
    variant: DENSE (probability targets), HAS_BIAS, BCE / BINARISE (DeiT-III's thresholded BCE), HAS_SUB (one branch:
    linear_soft_target_cross_entropy), MAIN_GRAD (False: a backward of the sub term alone), UNIT_T (False: T = 2)."""
    from tools.perf_model.capture import recording

    rows, depth, classes = shape
    flags = {**_LINEAR_BASE, **_LINEAR_GRADS, **variant}
    meta = torch.device("meta")
    hidden = torch.empty(rows, depth, dtype=dtype, device=meta)
    sub_hidden = torch.empty_like(hidden) if flags["HAS_SUB"] else None
    weight = torch.empty(classes, depth, dtype=dtype, device=meta)
    bias = torch.empty(classes, dtype=dtype, device=meta) if flags["HAS_BIAS"] else None
    if flags["DENSE"]:
        target = torch.empty(rows, classes, dtype=torch.float32, device=meta)
    else:
        target = torch.empty(rows, dtype=torch.int64, device=meta)
    label_smoothing, ignore_index = 0.0, -100
    temperature = 1.0 if flags["UNIT_T"] else 2.0
    threshold = 0.5 if flags["BINARISE"] else None
    options = (flags["BCE"], label_smoothing, ignore_index, temperature, threshold)
    grad = torch.empty(rows, device=meta)
    op = linear_masksub_loss
    with recording(op, kernels) as launches:
        out = op._forward_triton(hidden, sub_hidden, weight, bias, target, *options)
        grad_main = grad if flags["MAIN_GRAD"] else None
        grad_sub = grad if flags["HAS_SUB"] and flags["SUB_GRAD"] else None
        # gather False with class ids: the recompute kernels (gather True, and probabilities always, take the chunk
        # loop: cuBLAS and the chunk's loss launch, whose specs are chunk_step_specs': no kernel of this op)
        if not flags["DENSE"]:
            args = (grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, True, True, False)
            op._backward_triton(*args, *options)
    return list(launches)


def _launch_spec(launch, dtype: str, label: str):
    """A recorded launch as a spec: the JIT's signature and constants by parameter name, its divisibility hints as
    the option ``divisible_by_16`` (tools/compile_kernels.py turns them into Triton's attributes)."""
    from tools.perf_model.capture import specialise

    signature, constexprs, attrs, _ = specialise(launch)
    names = launch.kernel.arg_names
    constants = {names[path[0]]: value for path, value in constexprs.items()}
    types = {name: kind for name, kind in signature.items() if name not in constants}
    hinted = sorted(names[path[0]] for path, hints in attrs.items() if ["tt.divisibility", 16] in hints)
    # the name: the flags whose value differs from the base variant's (False ones as no_<flag>), then the label
    base = _LINEAR_BASE | _LINEAR_GRADS
    words = [k.lower() if v is True else f"no_{k.lower()}" for k, v in constants.items() if base.get(k, v) != v]
    # and the sizes the JIT made constants (equal to 1: dH's sum with one split, where every row counts), strides
    # aside (unit last strides: every launch's)
    words += [f"{k}={v}" for k, v in constants.items() if k[0].islower() and not k.startswith("stride") and v == 1]
    name = f"{launch.name.strip('_')}[{','.join([dtype, *words, *([label] if label else [])])}]"
    # the launch's compile options (num_warps, ...): its keyword arguments that are not kernel parameters
    options = {k: v for k, v in launch.kwargs.items() if k not in names}
    return name, launch.kernel, types, constants, {**options, "divisible_by_16": hinted}


_LINEAR_VARIANTS = [  # class ids with a bias (MLM); mixup probabilities without one; DeiT-III's thresholded BCE (the
    # last two at a temperature other than 1: the teacher's own softmax / sigmoid)
    {},
    {"DENSE": True, "HAS_BIAS": False, "UNIT_T": False},
    {"BCE": True, "DENSE": True, "BINARISE": True, "UNIT_T": False},
]


def linear_masksub_loss_specs() -> list[tuple]:
    # The target variants change the loss-side code, not the tl.dot lowering: all of them in bf16; fp32 (the ieee
    # dot on the FMA pipes) and fp16 (bf16's tensor-core path) in the base variant only, which keeps the CI compile
    # time down; one branch (linear_soft_target_cross_entropy) and a backward of the sub term alone in bf16; a head
    # of C D >= 2^31 elements (int64 offsets into W) in bf16
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    cases = [("fp32", _LINEAR_ALIGNED, {}, "")]
    cases += [("bf16", _LINEAR_ALIGNED, variant, "") for variant in _LINEAR_VARIANTS]
    cases += [("fp16", _LINEAR_ALIGNED, {}, ""), ("bf16", _LINEAR_UNALIGNED, {}, "unaligned")]
    cases += [("bf16", _LINEAR_ALIGNED, {"HAS_SUB": False}, ""), ("bf16", _LINEAR_ALIGNED, {"MAIN_GRAD": False}, "")]
    cases += [("bf16", _LINEAR_WIDE, {}, "")]
    specs = {}  # by name: the sub-term-alone case's forward is the base case's
    for dtype, shape, variant, label in cases:
        for launch in _linear_launches(dtypes[dtype], shape, variant):
            if shape == _LINEAR_WIDE and "WIDE_W" not in launch.kernel.arg_names:
                continue  # the wide head changes W's offsets only: a kernel without W (dH's sum) as in the base case
            spec = _launch_spec(launch, dtype, label)
            if specs.setdefault(spec[0], spec) != spec:  # a name must not stand for two compiles
                raise AssertionError(f"two fused-linear specs named {spec[0]} differ")
    return list(specs.values())


def _chunk_step_spec(dtype: str, classes: int, label: str, target: str = "ids", bias: bool = True, **options):
    """The fused-linear chunks' one launch of the loss forward and backward (ops/_loss_fwd_bwd.py), recorded as the
    chunk loop makes it (ops/_linear_loss_grads' triton implementation on meta tensors: one chunk of CHUNK_ROWS rows
    per branch, D = 768, ``classes`` classes: C's tail of < 8 in the launch where C is not a multiple of 8) and as the
    JIT specialises it, its divisibility hints included (helper-165: the merged hand-made constants compiled a kernel
    without them, one the launches never run: no 16-byte loads). ``target``: 'ids' or 'probs'; ``options``:
    main_weight, sub_weight, bce, threshold, temperature."""
    from masksub_kernels.ops import _linear_loss_chunks as chunk_loop
    from masksub_kernels.ops import _linear_loss_grads, _loss_fwd_bwd
    from tools.perf_model.capture import recording, specialise

    meta, rows, depth = torch.device("meta"), CHUNK_ROWS, 768
    types = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    hidden = torch.empty(rows, depth, dtype=types[dtype], device=meta)
    weight = torch.empty(classes, depth, dtype=types[dtype], device=meta)
    b = torch.empty(classes, dtype=types[dtype], device=meta) if bias else None
    y = (torch.empty(rows, classes, device=meta) if target == "probs"
         else torch.empty(rows, dtype=torch.int64, device=meta))  # fmt: skip
    weights = (options.get("main_weight", 0.5), options.get("sub_weight", 0.5))
    loss = (options.get("bce", False), 0.0, -100, options.get("temperature", 1.0), options.get("threshold"))
    with recording(chunk_loop, _loss_fwd_bwd, masksub_loss) as launches:  # gather False: no host read of the ids
        _linear_loss_grads._grads_triton(
            hidden, torch.empty_like(hidden), weight, b, y, True, *weights, True, True, True, False, True, rows, *loss
        )  # fmt: skip
    (launch,) = [launch for launch in launches if launch.kernel is _loss_fwd_bwd._loss_fwd_bwd_kernel]
    signature, constexprs, attrs, _ = specialise(launch)
    names = launch.kernel.arg_names
    constants = {names[path[0]]: value for path, value in constexprs.items()}
    types = {name: kind for name, kind in signature.items() if name not in constants}
    hinted = sorted(names[path[0]] for path, hints in attrs.items() if ["tt.divisibility", 16] in hints)
    tail = classes % 8 != 0
    name = f"fwd_bwd[{label}{',tail' if tail else ''}]"
    compile_options = {k: v for k, v in launch.kwargs.items() if k not in names}  # num_warps, ...
    return name, launch.kernel, types, constants, {**compile_options, "divisible_by_16": hinted}


CHUNK_ROWS = 384  # the chunk step specs' rows per branch: BERT's chunks (one program per row, no class split)


def chunk_step_specs() -> list[tuple]:
    """The chunks' one launch of the loss: BERT's (class ids, a bias, T = 1, bf16 / fp16 gradients over the fp32
    logits' rows, C's tail of 2 classes in it), mixup's probabilities (no bias, 1000 classes: no tail), DeiT-III's
    thresholded BCE (T = 2) on ImageNet-21k's 21841 classes (the one launch in the backward's 16 warps: helper-165's
    finding on its forward's layout) and BCE with class ids there (16-byte rows: the forward's block widened to the
    16 warps, _loss_fwd_bwd.fused_constexprs), fp32 inputs (the fp32 gradients over the logits themselves), the sub term
    alone; and BERT's without a tail (C a multiple of 8)."""
    bert, bert_aligned = 30522, 30528
    return [
        _chunk_step_spec("bf16", bert, "bf16"),
        _chunk_step_spec("bf16", bert_aligned, "bf16"),
        _chunk_step_spec("fp16", bert, "fp16"),
        _chunk_step_spec("bf16", 1000, "bf16,dense,no_bias", target="probs", bias=False),
        _chunk_step_spec("bf16", 21841, "bf16,bce,binarise", target="probs", bce=True, threshold=0.0, temperature=2.0),
        _chunk_step_spec("bf16", 21841, "bf16,bce", bce=True),  # class ids: aligned rows, the forward's block widened
        _chunk_step_spec("fp32", bert, "fp32"),
        _chunk_step_spec("bf16", bert, "bf16,sub_only", main_weight=0.0, sub_weight=1.0),
    ]


def scale_specs() -> list[tuple]:
    """The backward's scaling of the stored gradients (ops/_linear_loss_grads.py): dH / dHs in place (fp16, bf16,
    fp32), dW and db from their fp32 accumulator into the weight's fp16 / bf16."""
    from masksub_kernels.ops import _linear_loss_grads as grads

    pairs = [("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "fp32"), ("fp32", "bf16"), ("fp32", "fp16")]
    return [
        _spec(f"scale[{src}->{dst}]", grads._scale_kernel, {"src_ptr": f"*{src}", "dst_ptr": f"*{dst}",
              "g_ptr": "*fp32", "rows": "i32", "cols": "i32"}, dict(zip(("BLOCK_R", "BLOCK_C"), grads.SCALE_BLOCK)))
        for src, dst in pairs
    ]  # fmt: skip


# op module -> its specs, in the order compile_kernels reports them
SPECS = {
    "token_select": token_select_specs,
    "grid_mask": grid_mask_specs,
    "token_grid_mask": token_grid_mask_specs,
    "masksub_loss": masksub_loss_specs,
    "linear_masksub_loss": linear_masksub_loss_specs,
    "linear_loss_chunks": chunk_step_specs,
    "linear_loss_grads": scale_specs,
}


def kernel_specs():
    """Every spec, named ``<op module>.<kernel variant>``."""
    for module, specs in SPECS.items():
        for name, kernel, signature, constexprs, options in specs():
            yield f"{module}.{name}", kernel, signature, constexprs, options
