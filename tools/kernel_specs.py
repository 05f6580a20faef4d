"""What tools/compile_kernels.py compiles: each Triton kernel of the ops, in the specialisations the launchers use.

A spec is (name, kernel, signature, constexprs, options). Pointer and scalar types follow what the launchers pass;
Triton specialises integer arguments equal to 1 into constants at launch, so unit strides are constexprs here too.
``options`` may name, under ``divisible_by_16``, the arguments the JIT would hint as multiples of 16: the loss
kernels' specs (masksub_loss's, the fused-linear op's, the chunks' one loss launch) are launches recorded on meta
tensors at realistic shapes and specialised as the JIT specialises them (tools/perf_model/capture.py), hints
included: without them Triton proves no 16-byte access, and a compile checks a variant no launch runs
(helper-165). The masks' and the scaling's specs are made by hand, without hints.
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


# masksub_loss's own launches (ops/masksub_loss.py's launchers), recorded on meta tensors at the shapes below and
# specialised as the JIT specialises them (their pointers' and strides' divisibility hints included: helper-165
# found that hand-made constants compiled the unaligned variants, without the 16-byte accesses, that no launch at
# these shapes runs). Each case is (label, options of _loss_launches); it gives its forward's and backward's specs,
# named fwd[label] / bwd[label], one compile for identical ones (the first label).
_MIXED = {"eps": 0.1, "temperature": 2.0}  # label smoothing and T = 2 (the teacher's own softmax)
_LOSS_CASES = [
    # both terms at three heads: class ids over 32000 classes (rows of 16 elements: hinted by the JIT), mixup's
    # probabilities over 1000, DeiT-III's thresholded BCE over ImageNet-21k's 21841 (rows realigned, VEC)
    *((f"{dtype},ids", {"dtype": dtype, "classes": 32000, **_MIXED}) for dtype in ("fp32", "fp16", "bf16")),
    *((f"{dtype},probs", {"dtype": dtype, "classes": 1000, "target": "probs", **_MIXED}) for dtype in ("fp32", "bf16")),
    *(
        (
            f"{dtype},bce,binarise",
            {"dtype": dtype, "classes": 21841, "target": "probs", "bce": True, "threshold": 0.5, "temperature": 2.0},
        )
        for dtype in ("fp32", "bf16")
    ),
    # one term: the main's (no sub-branch), the sub's (no target)
    ("bf16,main_only", {"classes": 32000, "sub": False, **_MIXED}),
    ("bf16,sub_only", {"classes": 32000, "target": None, **_MIXED}),
    # BERT's 30522 classes: bf16 rows realigned to 16-byte words (VEC = 8); ImageNet's 1000: 16-byte rows that are no
    # multiple of 16 elements (ALIGNED, EVEN: the launchers' hint)
    ("bf16,bert", {"classes": 30522, **_MIXED}),
    ("bf16,imagenet", {"classes": 1000, **_MIXED}),
    # logits whose rows no hint can promise 16 bytes of (the sub-branch's rows of another stride, e.g. the halves of
    # one [M, 2 C] matmul's output): the unaligned fallback (VEC 1, GROUP 1), CE and BCE
    ("bf16,ids,unaligned", {"classes": 32000, "sub_stride": 32001, **_MIXED}),
    ("bf16,bce,ids,unaligned", {"classes": 32000, "sub_stride": 32001, "bce": True, **_MIXED}),
    # BCE with class ids, T = 2 and T = 1 (UNIT_T: the teacher's sigmoid shares the main term's exp); CE at T = 1
    ("bf16,bce,ids", {"classes": 32000, "bce": True, **_MIXED}),
    ("bf16,bce,ids,unit_t", {"classes": 32000, "bce": True, "eps": 0.1}),
    *((f"{dtype},ids,unit_t", {"dtype": dtype, "classes": 32000, "eps": 0.1}) for dtype in ("fp32", "bf16")),
    ("bf16,probs,unit_t", {"classes": 1000, "target": "probs", "eps": 0.1}),
    ("bf16,sub_only,unit_t", {"classes": 32000, "target": None}),
    # class ids without label smoothing (no sum of z for the weight off the id), CE and BCE: forwards
    ("bf16,ids,no_smoothing", {"classes": 32000, "eps": 0.0, "temperature": 2.0}),
    ("bf16,bce,ids,no_smoothing", {"classes": 32000, "bce": True, "eps": 0.0, "temperature": 2.0}),
    # the reduced loss (ops/masksub_loss_reduced.py): a mean of class ids, of probabilities, a sum; its backwards
    ("bf16,ids,reduced_mean", {"classes": 32000, "reduce": True, **_MIXED}),
    ("bf16,probs,reduced_mean", {"classes": 1000, "target": "probs", "reduce": True, **_MIXED}),
    ("bf16,ids,reduced_sum", {"classes": 32000, "reduce": "sum", **_MIXED}),
    ("bf16,sub_only,reduced", {"classes": 32000, "reduce": True, "target": None, **_MIXED}),
    # a few rows of many classes (8 x 128256, an LLM's head): the class-split grid (class_splits), a reduction too
    *(
        (f"bf16,split,{label}", {"rows": 8, "classes": 128256, **options})
        for label, options in (
            ("ids", _MIXED),
            ("probs", {"target": "probs", **_MIXED}),
            ("bce,probs", {"target": "probs", "bce": True}),
            ("ids,reduced_mean", {"reduce": True, **_MIXED}),
        )
    ),
    # the fused-linear op's chunks (ops/_linear_loss_chunks.py) with ONE_LAUNCH off, its two launches: fp32 logits
    # in 16-byte rows, a bias of the inputs' dtype, bf16 / fp16 gradients over the logits' rows (a barrier per
    # block), fp32 ones over the logits themselves; BERT's chunk of 384 rows; its last chunk of 8 rows (a class
    # split: the op's stats and tickets, no fill; label smoothing; 32000 classes: EVEN), DeiT-III's BCE with
    # probabilities at T = 2, the sub term alone, no bias (probabilities, class ids)
    *((f"chunk,{low}", {"classes": 30522, "rows": 384, "chunk": low, "eps": 0.0}) for low in ("bf16", "fp16", "fp32")),
    ("chunk,bf16,split", {"classes": 30522, "rows": 8, "chunk": "bf16", "eps": 0.1}),
    ("chunk,bf16,split,even", {"classes": 32000, "rows": 8, "chunk": "bf16", "eps": 0.0}),
    (
        "chunk,bf16,bce,probs",
        {
            "classes": 21841,
            "rows": 384,
            "chunk": "bf16",
            "target": "probs",
            "bce": True,
            "threshold": 0.0,
            "temperature": 2.0,
        },
    ),
    ("chunk,bf16,sub_only", {"classes": 30522, "rows": 384, "chunk": "bf16", "eps": 0.0, "grads": (False, True)}),
    ("chunk,bf16,no_bias", {"classes": 1000, "rows": 384, "chunk": "bf16", "bias": False, "target": "probs"}),
    ("chunk,bf16,ids,no_bias", {"classes": 30522, "rows": 8, "chunk": "bf16", "bias": False, "eps": 0.0}),
    # Triton makes integer arguments equal to 1 constants: one row of one class
    ("fp32,one_class", {"dtype": "fp32", "rows": 1, "classes": 1}),
]


def _loss_launches(
    dtype: str = "bf16", rows: int = 4096, classes: int = 32000, target: str | None = "ids", sub: bool = True,
    bce: bool = False, eps: float = 0.0, temperature: float = 1.0, threshold: float | None = None,
    reduce: bool | str = False, grads: tuple = (True, True), chunk: str | None = None, bias: bool = True,
    sub_stride: int | None = None,
) -> list:  # fmt: skip
    """The launches of masksub_loss's _forward_triton and _backward_triton (every gradient in ``grads`` asked for)
    on meta [rows, classes] logits of ``dtype``. target: 'ids', 'probs' or None (the sub term alone); sub: False
    for the main term alone; sub_stride: the sub logits' row stride where not ``classes`` (a view of wider rows);
    reduce: True (a mean) or 'sum': the reduced loss's launches; chunk: the fused-linear
    op's chunk layout (fp32 logits in a buffer of 16-byte rows, a bias of ``chunk``'s dtype where ``bias``, the
    gradients in it over the logits' rows, an fp32 chunk's over the logits themselves; the op's stats columns and
    tickets)."""
    from masksub_kernels.ops import _linear_loss_chunks as chunk_loop
    from tools.perf_model.capture import recording

    meta, types = torch.device("meta"), {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    into, over_rows, forward_buffers, b = None, False, {}, None
    if chunk:
        buffer = torch.empty(2 * rows, chunk_loop.aligned_classes(classes), device=meta)
        z, s = buffer[:rows, :classes], buffer[rows:, :classes]
        b = torch.empty(classes, dtype=types[chunk], device=meta) if bias else None
        narrow = buffer.view(types[chunk])[:, :classes]  # fp32: the gradients over the logits themselves
        into, over_rows = (narrow[:rows], narrow[rows:]), chunk != "fp32"
        stats = torch.empty(masksub_loss.NUM_OUT, 4 * rows, device=meta)
        forward_buffers = {
            "out": stats[:, rows : 2 * rows],
            "tickets": torch.zeros(rows, dtype=torch.int32, device=meta),
        }
    else:
        z = torch.empty(rows, classes, dtype=types[dtype], device=meta)
        s = torch.empty(rows, sub_stride or classes, dtype=types[dtype], device=meta)[:, :classes]
    s = s if sub else None
    y = {"ids": torch.empty(rows, dtype=torch.int64, device=meta), None: None}.get(target)
    y = torch.empty(rows, classes, device=meta) if target == "probs" else y
    options = (bce, eps, -100, temperature, threshold)
    weights = (0.5, 0.5, reduce is True)
    with recording(masksub_loss) as launches:
        if reduce:
            _, out, d = masksub_loss._forward_triton(z, s, y, *options, reduce=weights)
            grad = torch.empty(4, device=meta)
            gm, gs = (grad if want else None for want in (y is not None, s is not None))
            masksub_loss._backward_triton(gm, gs, out, z, s, y, *options, reduced=(d, *weights[:2]))
        else:
            out = masksub_loss._forward_triton(z, s, y, *options, bias=b, **forward_buffers)
            row_grad = torch.empty(rows, device=meta)
            gm, gs = (row_grad if want and term else None for want, term in zip(grads, (y is not None, s is not None)))
            masksub_loss._backward_triton(gm, gs, out, z, s, y, *options, into=into, bias=b, over_rows=over_rows)
    return list(launches)


def _recorded_spec(launch, name: str):
    """A recorded launch as a spec: the JIT's signature and constants by parameter name, its divisibility hints as
    the option ``divisible_by_16`` (tools/compile_kernels.py turns them into Triton's attributes), its compile
    options (num_warps, ...): its keyword arguments that are not kernel parameters."""
    from tools.perf_model.capture import specialise

    signature, constexprs, attrs, _ = specialise(launch)
    names = launch.kernel.arg_names
    constants = {names[path[0]]: value for path, value in constexprs.items()}
    types = {name: kind for name, kind in signature.items() if name not in constants}
    hinted = sorted(names[path[0]] for path, hints in attrs.items() if ["tt.divisibility", 16] in hints)
    options = {k: v for k, v in launch.kwargs.items() if k not in names}
    return name, launch.kernel, types, constants, {**options, "divisible_by_16": hinted}


def masksub_loss_specs() -> list[tuple]:
    specs, seen = [], set()
    for label, options in _LOSS_CASES:
        for launch in _loss_launches(**options):
            kind = "fwd" if launch.kernel is masksub_loss._loss_fwd_kernel else "bwd"
            spec = _recorded_spec(launch, f"{kind}[{label}]")
            key = (kind, repr(spec[2]), repr(sorted(spec[3].items())), repr(spec[4]))
            if key not in seen:
                seen.add(key)
                specs.append(spec)
    return specs


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
    """A recorded fused-linear launch as a spec (_recorded_spec), named by the flags whose value differs from the
    base variant's and ``label``."""
    from tools.perf_model.capture import specialise

    constants = {launch.kernel.arg_names[path[0]]: value for path, value in specialise(launch)[1].items()}
    # the name: the flags whose value differs from the base variant's (False ones as no_<flag>), then the label
    base = _LINEAR_BASE | _LINEAR_GRADS
    words = [k.lower() if v is True else f"no_{k.lower()}" for k, v in constants.items() if base.get(k, v) != v]
    # and the sizes the JIT made constants (equal to 1: dH's sum with one split, where every row counts), strides
    # aside (unit last strides: every launch's)
    words += [f"{k}={v}" for k, v in constants.items() if k[0].islower() and not k.startswith("stride") and v == 1]
    return _recorded_spec(launch, f"{launch.name.strip('_')}[{','.join([dtype, *words, *([label] if label else [])])}]")


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
    from tools.perf_model.capture import recording

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
    return _recorded_spec(launch, f"fwd_bwd[{label}{',tail' if classes % 8 else ''}]")


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
