"""What tools/compile_kernels.py compiles: each Triton kernel of the ops, in the specialisations the launchers use.

A spec is (name, kernel, signature, constexprs, options). Every spec is a launch its op's own launcher makes,
recorded on meta tensors at a realistic shape (tools/perf_model/capture.py) and specialised as the JIT specialises
it: pointer and scalar types as passed (an int is i32 below 2^31), integer arguments equal to 1 as constants, and the
arguments divisible by 16 named in ``options['divisible_by_16']`` (the JIT's hints; Triton's attributes in
tools/compile_kernels.py). Hand-made specs compiled variants no launch runs: without the hints Triton proves no
16-byte access (helper-165), and the masks' and selections' had i64 sizes, a runtime P and one copy tile for every
dtype (helper-200). These tables know the ops' private launchers on purpose: they check exactly what the ops launch.
"""

from __future__ import annotations

import torch

from masksub_kernels._triton import next_power_of_2
from masksub_kernels.ops import _linear_loss_kernels as kernels
from masksub_kernels.ops import grid_mask, linear_masksub_loss, masksub_loss, token_grid_mask, token_select
from masksub_kernels.ops._common import MAX_TOKENS

_META = torch.device("meta")
_TYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SEED = 2**40 + 3  # a drawn seed (an int64; do_not_specialize: its value hints nothing)


def _recorded_specs(names: str | list[str], module, launcher, *args) -> list[tuple]:
    """The launches ``launcher(*args)`` makes with ``module``'s kernels recorded (on meta tensors: no memory, the
    launcher's own grid, tiles and flags), as specs named ``names`` in launch order."""
    from tools.perf_model.capture import recording

    names = [names] if isinstance(names, str) else names
    with recording(module) as launches:
        launcher(*args)
    if len(launches) != len(names):
        raise AssertionError(f"{len(launches)} launches recorded for the specs {names}")
    return [_recorded_spec(launch, name) for launch, name in zip(launches, names)]


def _empty(*shape: int, dtype: str | torch.dtype = "fp32") -> torch.Tensor:
    return torch.empty(shape, dtype=_TYPES.get(dtype, dtype), device=_META)


def _seeds(from_ptr: bool) -> tuple[int, torch.Tensor | None]:
    """(seed, seed_tensor) as resolve_seed passes them: a drawn int64, or 0 (an i32 for the JIT) and a seed tensor."""
    return (0, _empty(1, dtype=torch.int64)) if from_ptr else (_SEED, None)


def _mask(batch: int, keys: int, on: bool) -> torch.Tensor | None:
    return torch.zeros(batch, keys, dtype=torch.bool, device=_META) if on else None


# The masks' and selections' launches, recorded at ViT-B/16's 224 px (196 tokens + the class token, 768 channels),
# batch 64: what the JIT specialises there (P = 1 a constant, the copy's tile per dtype, sizes' and strides'
# divisibility), not constants made by hand (helper-200: those compiled i64 sizes, a runtime P and fp32's copy tile
# for every dtype, variants no launch runs).
_BATCH, _VIT_TOKENS, _VIT_DIM = 64, 196, 768
# keys per sample for each selection block: 16 (a 4 x 4 grid), 196 (ViT-B), 512 (BERT's sequence), 2304 (48 x 48
# at 768 px), MAX_TOKENS
_SELECT_KEYS = {16: 16, 256: _VIT_TOKENS, 512: 512, 4096: 2304, MAX_TOKENS: MAX_TOKENS}


def token_select_specs() -> list[tuple]:
    # (ORDERED, SEED_FROM_PTR, HAS_KEEP, HAS_DROP, WRITE_INVERSE, blocks): the plain selection at the smallest
    # block (16 keys, 4 warps), at 256 and at the largest (MAX_TOKENS, 32 warps: the most shared memory, 32 KiB
    # under Triton 3.8; ~20 s to compile for both targets), and without the inverse (random_keep_indices); ordered
    # and the always-keep / drop-first masks at 256 and 4096 keys; the seed read from a tensor (one scalar load,
    # whatever the block) at 256 only, as the masks ordered (an ordered 4096-key sort with masks takes ~35 s to
    # compile for sm_80)
    variants = (
        (False, False, False, False, False, (16, 256)), (False, False, False, False, True, (512, MAX_TOKENS)),
        (True, False, False, False, False, (256,)), (True, False, False, False, True, (4096,)),
        (False, True, False, False, False, (256,)), (False, False, True, True, False, (512,)),
        (False, False, True, True, True, (4096,)), (True, False, True, False, False, (256,)),
    )  # fmt: skip
    specs = []
    for ordered, from_ptr, keep, drop, inverse, blocks in variants:
        for block in blocks:
            n = _SELECT_KEYS[block]
            name = (f"select[ordered={ordered},seed_ptr={from_ptr},keep={keep},drop={drop},"
                    f"{'' if inverse else 'no_inverse,'}block={block}]")  # fmt: skip
            args = (*_seeds(from_ptr), _BATCH, n, n // 2, _META, ordered, inverse)
            specs += _recorded_specs(
                name, token_select, token_select._select_triton, *args, _mask(_BATCH, n, keep), _mask(_BATCH, n, drop)
            )  # fmt: skip
    kept, copy = _VIT_TOKENS // 2, token_select._copy_rows_triton
    ids, inv = _empty(_BATCH, kept, dtype=torch.int64), _empty(_BATCH, _VIT_TOKENS, dtype=torch.int32)
    for dtype in ("fp32", "fp16", "bf16"):
        tokens = _empty(_BATCH, 1 + _VIT_TOKENS, _VIT_DIM, dtype=dtype)
        specs += _recorded_specs(f"copy_rows[{dtype},gather]", token_select, copy, tokens, ids, 1)
        kept_grad = _empty(_BATCH, 1 + kept, _VIT_DIM, dtype=dtype)  # the gather's backward: a scatter by inv
        specs += _recorded_specs(f"copy_rows[{dtype},scatter]", token_select, copy, kept_grad, inv, 1)
        # the one-launch selection + gather (N <= token_select.FUSED_MAX_TOKENS): plain, ordered with a seed
        # tensor, and with both masks
        for ordered, from_ptr, masks in ((False, False, False), (True, True, False), (False, False, True)):
            specs += _recorded_specs(
                f"select_gather[{dtype},ordered={ordered},seed_ptr={from_ptr},masks={masks}]", token_select,
                token_select._select_gather_triton, tokens, *_seeds(from_ptr), kept, 1,
                ordered, _mask(_BATCH, _VIT_TOKENS, masks), _mask(_BATCH, _VIT_TOKENS, masks),
            )  # fmt: skip
    # a seed the caller gives below 2^31 (seed=42): an i32 for the JIT (drawn seeds are i64)
    specs += _recorded_specs(
        "select_gather[bf16,ordered=False,seed_ptr=False,masks=False,seed=i32]", token_select,
        token_select._select_gather_triton, tokens, 42, None, kept, 1, False, None, None,
    )  # fmt: skip
    # no prefix (the mlm family's gather_tokens(hidden, ids, 0)): P = 0, a runtime size; its backward scatters by
    # the int32 inverse built from the ids
    tokens = _empty(_BATCH, _VIT_TOKENS, _VIT_DIM, dtype="bf16")
    specs += _recorded_specs("copy_rows[bf16,gather,no_prefix]", token_select, copy, tokens, ids, 0)
    kept_grad = _empty(_BATCH, kept, _VIT_DIM, dtype="bf16")
    return specs + _recorded_specs("copy_rows[bf16,scatter,no_prefix]", token_select, copy, kept_grad, inv, 0)


def _images(dtype: str, layout: str, rows: int = 7, cols: int = 7) -> torch.Tensor:
    """Meta images [128, 3, 32 x rows, 32 x cols] (grids of 32-pixel cells; 224 px by default): NCHW, channels_last
    ('nhwc'), or channels_last with pixels of 4 channels of which 3 are read ('nhwc-strided': a view of RGBA)."""
    if layout == "nchw":
        return _empty(128, 3, 32 * rows, 32 * cols, dtype=dtype)
    pixels = _empty(128, 32 * rows, 32 * cols, 3 if layout == "nhwc" else 4, dtype=dtype)
    return pixels[..., :3].permute(0, 3, 1, 2)


def grid_mask_specs() -> list[tuple]:
    specs = []
    # the cell masks alone: 7 x 7 cells (224 px in 32-pixel cells, block 64) with either seed, 28 x 28 (block
    # 1024), 64 x 128 (MAX_TOKENS: the most shared memory, 16 KiB)
    for block, cells, from_ptr in ((64, 49, False), (64, 49, True), (1024, 784, True), (MAX_TOKENS, MAX_TOKENS, False)):
        specs += _recorded_specs(
            f"cell_mask[block={block},seed_ptr={from_ptr}]", grid_mask, grid_mask._cell_mask_triton,
            *_seeds(from_ptr), 128, cells, cells // 2, _META,
        )  # fmt: skip
    cell_mask = torch.zeros(128, 7, 7, dtype=torch.bool, device=_META)
    for dtype in ("fp32", "fp16", "bf16"):
        # NCHW; channels_last with contiguous rows (the usual layout) and with strided ones
        for layout in ("nchw", "nhwc", "nhwc-strided"):
            images = _images(dtype, layout)
            specs += _recorded_specs(
                f"mask_image[{dtype},{layout}]", grid_mask, grid_mask._mask_image_triton, images, cell_mask, 32, 0.0
            )  # fmt: skip
            # the one-launch path (cell mask + masking) at 224 px, 32-pixel cells: 49 cells, 7 per row (and, bf16
            # NCHW, the largest grids it takes, FUSED_RANK_ELEMENTS comparisons: 16 x 16 cells, and wide ones whose
            # rows take a block of 32 or 64 cells: 4 x 32 and 1 x 64)
            grids = [(False, 7, 7)]
            if (dtype, layout) == ("bf16", "nchw"):
                grids += [(True, 7, 7), (False, 16, 16), (False, 4, 32), (False, 1, 64)]
            for from_ptr, rows, cols in grids:
                block_l, per_row = max(16, next_power_of_2(rows * cols)), max(16, next_power_of_2(cols))
                specs += _recorded_specs(
                    f"mask_image_random[{dtype},{layout},seed_ptr={from_ptr},cells={block_l}"
                    f"{'' if per_row == 16 else f',per_row={per_row}'}]",
                    grid_mask, grid_mask._mask_image_random_triton, _images(dtype, layout, rows, cols),
                    *_seeds(from_ptr), 32, rows * cols // 2, 0.0,
                )  # fmt: skip
    return specs


def token_grid_mask_specs() -> list[tuple]:
    """Swin-T's stage 1 (56 x 56 tokens of 96 channels, batch 128) in 8-token cells: the masking, its backward for
    each pair of gradients, and the second level of the mask token's gradient (once per dtype); the backward at a
    batch of 16 (one line per program)."""
    module, backward = token_grid_mask, token_grid_mask._mask_tokens_backward_triton
    cell_mask = torch.zeros(128, 7, 7, dtype=torch.bool, device=_META)
    specs = {}
    for dtype in ("fp32", "fp16", "bf16"):
        tokens, mask_token = _empty(128, 56, 56, 96, dtype=dtype), _empty(96, dtype=dtype)
        recorded = _recorded_specs(
            f"mask_tokens[{dtype}]", module, token_grid_mask._mask_tokens_forward_triton, tokens, mask_token,
            cell_mask, 8,
        )  # fmt: skip
        for dx, dm in ((True, True), (True, False), (False, True)):
            names = [f"mask_tokens_backward[{dtype},dT={dx},dm={dm}]"] + ([f"sum_partials[{dtype}]"] if dm else [])
            recorded += _recorded_specs(names, module, backward, tokens, cell_mask, 8, dx, dm)
        for spec in recorded:
            if specs.setdefault(spec[0], spec) != spec:  # a name must not stand for two compiles
                raise AssertionError(f"two token grid mask specs named {spec[0]} differ")
    # a small batch per GPU (16 x 56 lines <= MAX_PARTIALS): one line per program, a constant 1 for the JIT (its
    # second level is sum_partials[bf16]'s compile: 896 partials, hinted as 1024 are)
    tokens, cell_mask = _empty(16, 56, 56, 96, dtype="bf16"), cell_mask[:16]
    names = ["mask_tokens_backward[bf16,dT=True,dm=True,one_line_per_program]", "sum_partials[bf16]"]
    one_line, second_level = _recorded_specs(names, module, backward, tokens, cell_mask, 8, True, True)
    if second_level[1:] != specs["sum_partials[bf16]"][1:]:
        raise AssertionError("the small batch's second level is not sum_partials[bf16]'s compile")
    return [*specs.values(), one_line]


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
    # few classes (token tagging): a block of 16 in 4 warps, the reduction's own 1024 lanes (helper-245)
    ("fp32,ids,few_classes,reduced_mean", {"dtype": "fp32", "classes": 9, "reduce": True}),
    # helper-245's variants that compiled but were not listed: fp64 logits (fp32 in the kernels), a split of BCE
    # with class ids, a split of rows realigned to 16-byte words (C not a multiple of 8)
    ("fp64,ids", {"dtype": "fp64", "classes": 1000}),
    ("bf16,split,bce,ids", {"rows": 8, "classes": 128256, "bce": True, **_MIXED}),
    ("bf16,split,ids,realigned", {"rows": 8, "classes": 128250, **_MIXED}),
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

    meta, types = torch.device("meta"), {**_TYPES, "fp64": torch.float64}
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
    options = {"num_warps": 4, **{k: v for k, v in launch.kwargs.items() if k not in names}}  # the JIT's default 4
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
# the gradients asked for; STORE_DW / STORE_DB: _dw_kernel's constexprs, which a frozen weight / bias turns off
_LINEAR_GRADS = {"MAIN_GRAD": True, "SUB_GRAD": True, "STORE_DW": True, "STORE_DB": True}


def _linear_launches(dtype: torch.dtype, shape: tuple[int, int, int], variant: dict) -> list:
    """The forward's and backward's launches of linear_masksub_loss (every gradient asked for) at ``shape`` (the
    forward's alone for probability targets, whose backward is the chunk loop's).
    variant: DENSE (probability targets), HAS_BIAS, BCE / BINARISE (DeiT-III's thresholded BCE), HAS_SUB (one branch:
    linear_soft_target_cross_entropy), MAIN_GRAD (False: a backward of the sub term alone), UNIT_T (False: T = 2),
    STORE_DW / STORE_DB (False: a frozen weight / bias, whose gradient _dw_kernel neither computes nor stores)."""
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
            need = (True, flags["STORE_DW"], flags["STORE_DB"] and bias is not None)  # hidden, weight, bias
            args = (grad_main, grad_sub, out, hidden, sub_hidden, weight, bias, target, *need, False)
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
    # a frozen weight (db alone: BitFit) and a frozen bias beside a trained weight: _dw_kernel's other two variants
    cases += [("bf16", _LINEAR_ALIGNED, {"STORE_DW": False}, ""), ("bf16", _LINEAR_ALIGNED, {"STORE_DB": False}, "")]
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
            hidden, torch.empty_like(hidden), weight, b, y, True, *weights, *(True,) * 4, False, True, rows, *loss
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
    """The backward's scaling of the stored gradients (ops/_linear_loss_grads.py) at BERT's shapes: dH in place
    (fp16, bf16, fp32; 16384 x 768), dW from its fp32 accumulator into the weight's fp16 / bf16 (30522 x 768), db
    from its fp32 one into each dtype (a row of 30522: rows = 1, which the JIT makes a constant)."""
    from masksub_kernels.ops import _linear_loss_chunks as chunk_loop
    from masksub_kernels.ops import _linear_loss_grads as grads

    g, weight, bias = _empty(), _empty(30522, 768), _empty(30522)
    specs = []
    for dtype in ("fp16", "bf16", "fp32"):
        hidden = _empty(16384, 768, dtype=dtype)
        specs += _recorded_specs(f"scale[{dtype}->{dtype}]", grads, grads._scaled, hidden, g, True, None, True)
    # with a bias (BERT's decoder) dW is the [C, D] view of the [dW | db | 0...] accumulator: rows of D + pad
    padded = _empty(30522, chunk_loop.padded_depth(768))[:, :768]
    for dtype in ("fp16", "bf16"):
        specs += _recorded_specs(f"scale[fp32->{dtype}]", grads, grads._scaled, weight, g, True, _TYPES[dtype], True)
        specs += _recorded_specs(
            f"scale[fp32->{dtype},padded]", grads, grads._scaled, padded, g, True, _TYPES[dtype], True
        )  # fmt: skip
    for dtype in ("fp16", "bf16", "fp32"):
        specs += _recorded_specs(f"scale[fp32->{dtype},bias]", grads, grads._scaled, bias, g, True, _TYPES[dtype], True)
    return specs


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
