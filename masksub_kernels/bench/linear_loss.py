"""Benchmark cases for the fused-linear MaskSub loss (``mk.linear_masksub_loss``) against the materialised composite.

Providers (class-id targets, a bias, the paper's defaults):
- masksub[<backend>]: this library's fused op (the classifier head and the loss; logits never materialised);
- official: the eager composite as MaskSub's code writes it on top of a linear head: F.linear per branch,
  F.cross_entropy(main, y) + soft cross-entropy of sub against the detached softmax(main), halves;
- linear+masksub_loss: F.linear per branch + this library's masksub_loss (the logits materialised, the loss fused);
- compile(official): torch.compile of the official composite (GPU, or --full);
- liger(main CE only): Liger-Kernel's fused linear cross-entropy of the main branch alone, a reference point
  (hard labels, CE only: it cannot do the sub term), where liger_kernel imports. It reads h, W and b only (not hs):
  only those are differentiated, and its bytes and flops are those of its one branch (half the composite's work);
- masksub[<backend>] recompute: the same op with reduction='none' then the mean over rows: the recompute op
  (ops/linear_masksub_loss.py: tl.dot tiles, the logits recomputed in the backward, 10 matmul units for the 6
  useful ones), the path class ids take under torch.compile and CUDA graphs; its forward computes no gradient;
- masksub[<backend>] recompute mlm15 (GPU): the recompute op on MLM-like labels, 15% of the rows counted (the others
  ignore_index), 'full' only (the path of an MLM's class ids under torch.compile): its forward and dH choose their
  class splits on the device from the count, so the counted rows' tiles still fill the GPU;
- masksub[triton]:2 launches (GPU): the same op with its chunks' loss in masksub_loss's two launches and the class
  tail by matmuls (ops/_loss_fwd_bwd.py's ONE_LAUNCH off): the A/B of the one launch.
- masksub[triton]:ascending (GPU): the same op with the loss forward reading each row's blocks from the first class
  up (ops/_loss_fwd_bwd.py's FORWARD_DESCENDING off): the A/B of the descending order, by which the one launch's
  backward, reading the row again from its first class, should find those bytes in L2.
- masksub[triton]:R=<rows>[,P=<programs>] (GPU): the same op with other chunk sizes (CHUNK_SWEEP: the chunk
  buffer's memory budget), so that one GPU run measures what memory buys in speed and calibrates the model's
  trade-off (tools/perf_model/linear_loss.py predicts each; the default is the plain masksub[triton] row);
  P: the default chunks with the loss forward's rows split for more programs per SM (SPLIT_PROGRAMS_PER_SM of
  ops/masksub_loss.py, 2 by default; P=5 gives a 384-row chunk 2 class splits per row instead of 1: 768 programs,
  5.8 per SM, not 2.9; the backward keeps one program per row): twice the loads in flight, the test of one
  explanation of the loss kernels' 2x gap to the model on the H200 (a memory latency above the model's 650 ns,
  which ~3 programs per SM barely cover even at 650).
The op is compute-bound: TFLOP/s count the useful flops of the composite (2 M D C per matmul: 2 forward, 4
backward). With inputs that require grad and a scalar reduction (as here) the fused op computes its gradients in
the forward (ops/_linear_loss_chunks.py: the same 6 matmuls, all in the forward; the backward scales them).
Peak memory: the CUDA allocator's on a GPU, torch's profiler's on the CPU (extra memory above the inputs).
GPU_SHAPES are the issue's BERT-base MLM step; on the CPU a reduced shape runs. Last on a GPU, FLOOR_SHAPES: RoBERTa's
vocabulary with the op's default chunks (the floor of 384 rows) and the 96 MiB budget alone (192 rows), 'full' only,
the measurement beside the performance model's 'other heads' table.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch
import torch.nn.functional as F

import masksub_kernels as mk

from .runner import OpCase
from .token_select import library_providers

GPU_SHAPES = [("BERT-base MLM", 16384, 768, 30522, (torch.bfloat16,))]
CPU_SHAPES = [("BERT-like reduced (CPU)", 1024, 128, 8192, (torch.float32,))]
TINY_SHAPES = [("tiny", 8, 16, 32, (torch.float32,))]
# (chunk buffer's budget in MiB, the loss kernels' split programs per SM) besides the default (96, 2): half the
# memory (192-row chunks), then 4/3 and twice the memory (over issue 13's 5% goal: the figures say what that goal
# costs), then the default chunks with more class splits in the loss forward (P=5: 2 splits of a 384-row chunk's
# rows instead of 1; the backward keeps one program per row, as its gradients are written over the logits' rows)
CHUNK_SWEEP = [(48, 2), (128, 2), (192, 2), (96, 5)]
# The chunk floor's pair (GPU, bf16, 'full' only, after everything else): RoBERTa's vocabulary, where the 96 MiB
# budget alone gives 192 rows per chunk and the op's floor 384 (GRADS_CHUNK_MIN_ROWS of ops/_linear_loss_chunks.py:
# predicted 21.4 -> 16.4 ms on an H200, tools/perf_model); masksub[triton] (the floor) and masksub[triton]:R=192
FLOOR_SHAPES = [("RoBERTa-base MLM", 16384, 768, 50265, (torch.bfloat16,))]
MLM_COUNTED = (3, 20)  # rows i with i % 20 < 3 count: 15%, BERT's share of predicted positions (fused_recompute_mlm)


@contextlib.contextmanager
def chunking(budget_mib: float, programs: int | None = None):
    """The fused op's kernels' path with another chunk budget (GRADS_CHUNK_BYTES, which alone decides the rows inside
    the block: no GRADS_CHUNK_MIN_ROWS) and, if given, split programs per SM of the loss kernels
    (SPLIT_PROGRAMS_PER_SM) inside the block: the benchmark's sweep and the performance model's (module globals: not
    thread-safe)."""
    from masksub_kernels.ops import _linear_loss_chunks as chunks
    from masksub_kernels.ops import masksub_loss

    saved = chunks.GRADS_CHUNK_BYTES, chunks.GRADS_CHUNK_MIN_ROWS, masksub_loss.SPLIT_PROGRAMS_PER_SM
    chunks.GRADS_CHUNK_BYTES, chunks.GRADS_CHUNK_MIN_ROWS = int(budget_mib * 2**20), 0
    masksub_loss.SPLIT_PROGRAMS_PER_SM = programs or saved[2]
    try:
        yield
    finally:
        chunks.GRADS_CHUNK_BYTES, chunks.GRADS_CHUNK_MIN_ROWS, masksub_loss.SPLIT_PROGRAMS_PER_SM = saved


def sweep_provider(budget_mib: int, programs: int, classes: int) -> str:
    """The sweep's provider name, with the rows per chunk that budget gives, and the programs per SM where they are
    not the default: masksub[triton]:R=192, masksub[triton]:R=384,P=5."""
    from masksub_kernels.ops._linear_loss_chunks import grads_chunk_rows
    from masksub_kernels.ops.masksub_loss import SPLIT_PROGRAMS_PER_SM

    with chunking(budget_mib):
        name = f"masksub[triton]:R={grads_chunk_rows(classes, 0)}"  # the budget alone decides: any M
    return name if programs == SPLIT_PROGRAMS_PER_SM else f"{name},P={programs}"


def _fused_with(module, setting: str, value, h, hs, weight, bias, labels):
    """The fused op with ``module.setting`` (a tunable read at call time) set to ``value`` for the call: an A/B arm."""
    saved = getattr(module, setting)
    setattr(module, setting, value)
    try:
        return fused(h, hs, weight, bias, labels)
    finally:
        setattr(module, setting, saved)


def fused_two_launches(h, hs, weight, bias, labels):
    """The fused op with its chunks' loss in two launches and the class tail by matmuls (ONE_LAUNCH off): the A/B
    of the one launch (ops/_loss_fwd_bwd.py), until a GPU has measured both."""
    from masksub_kernels.ops import _loss_fwd_bwd

    return _fused_with(_loss_fwd_bwd, "ONE_LAUNCH", False, h, hs, weight, bias, labels)


def fused_ascending(h, hs, weight, bias, labels):
    """The fused op with the loss forward's blocks read from each row's first class up (FORWARD_DESCENDING off): the
    A/B of the descending order, whose point is that the one launch's backward finds the row's first blocks in L2."""
    from masksub_kernels.ops import _loss_fwd_bwd

    return _fused_with(_loss_fwd_bwd, "FORWARD_DESCENDING", False, h, hs, weight, bias, labels)


def fused_chunked(budget_mib, programs, h, hs, weight, bias, labels):
    with chunking(budget_mib, programs):  # the gradients are computed in this forward: the backward scales
        return fused(h, hs, weight, bias, labels)


def official_composite(h, hs, weight, bias, labels):
    main, sub = F.linear(h, weight, bias), F.linear(hs, weight, bias)
    teacher = F.softmax(main.detach().float(), dim=-1)
    loss_sub = torch.sum(-teacher * F.log_softmax(sub.float(), dim=-1), dim=-1).mean()
    return 0.5 * F.cross_entropy(main.float(), labels) + 0.5 * loss_sub


def linear_then_masksub_loss(h, hs, weight, bias, labels):
    return mk.masksub_loss(F.linear(h, weight, bias), F.linear(hs, weight, bias), labels).loss


def fused(h, hs, weight, bias, labels):
    return mk.linear_masksub_loss(h, hs, weight, bias, labels).loss


def fused_recompute(h, hs, weight, bias, labels):
    # per-row losses (reduction='none') take the recompute op; their mean is the 'mean' reduction (no ignored rows)
    return mk.linear_masksub_loss(h, hs, weight, bias, labels, reduction="none").loss.mean()


def fused_recompute_mlm(h, hs, weight, bias, labels):
    # the recompute op on MLM-like labels: MLM_COUNTED of the rows count, the others are ignore_index. Its kernels
    # take the counted rows first (a row tile of ignored rows costs no class tile) and split the classes of the
    # counted tiles over more programs (chosen on the device): the GPU says how close to 15% of the row above
    rows = torch.arange(labels.shape[0], device=labels.device)
    counted = rows % MLM_COUNTED[1] < MLM_COUNTED[0]
    out = mk.linear_masksub_loss(h, hs, weight, bias, torch.where(counted, labels, -100), reduction="none")
    return out.loss.sum() / counted.sum()  # the mean over counted rows, on the device


def liger_provider():
    """Liger's fused linear CE (dW accumulated in fp32, as this library's), or None where it does not import or
    construct: a reference point whose failure must not stop the suite (a failure in its call, e.g. a Liger built
    for another Triton, is recorded by the runner as the case's error)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        try:
            liger = LigerFusedLinearCrossEntropyLoss(accum_dtype=torch.float32)
        except TypeError:  # a Liger before accum_dtype
            liger = LigerFusedLinearCrossEntropyLoss()
    except Exception as exc:  # any import-time failure of a third-party reference point
        print(f"liger(main CE only) left out: {type(exc).__name__}: {exc}")
        return None
    return lambda h, hs, weight, bias, labels: liger(weight, h, labels, bias)


def modelled_extra_mb(rows: int, depth: int, classes: int, element: int) -> dict[str, float]:
    """Extra memory of one forward + backward beyond the inputs and the returned gradients, by the model (MiB).

    fused (gradients in the forward, the Triton flavour: ops/_linear_loss_chunks.py, with a bias): one chunk's
    buffers (2 R C fp32 logits, rows padded to aligned_classes, the fp16 / bf16 gradients written over them, and the
    stacked rows [2R, D + pad] with their ones column), the per-row stats (9 fp32 per row) and, for fp16 / bf16
    weights, the fp32 accumulator [dW | db | 0...] [C, D + pad] of both terms (dW is returned as its view, db as a
    copy of its column). For fp32 weights dW and db are the returned gradients (scaled in place, as dH and dHs
    always are), and the logits' operand [2R, D] a cat of the chunk's rows. dH's and dHs's rows of a chunk come
    from one matmul into an fp32 [2R, D] temporary. (The matmuls take views of W where C is not a multiple of 8, no
    padded copy of it, 45 MiB at BERT's head: class_parts.) Also the ids of
    the counted rows (int64 [M]) and, where C is not a multiple of 8, the tail's gradient columns kept for dW's tail
    ([2, M, 8] in the inputs' dtype).
    composite: both logits and both logit gradients in the inputs' dtype (4 [M, C]), the least any materialising
    implementation holds at its peak (the eager official composite holds more: its fp32 copies)."""
    from masksub_kernels.ops._linear_loss_chunks import aligned_classes, grads_chunk_rows, padded_depth

    chunk = min(rows, grads_chunk_rows(classes, rows))
    logits = 2 * chunk * aligned_classes(classes) * 4
    stats = rows * 9 * 4
    if element < 4:
        width = padded_depth(depth)
        fused_bytes = logits + 2 * chunk * width * element + stats + classes * width * 4
    else:
        fused_bytes = logits + 2 * chunk * depth * element + stats
    fused_bytes += 2 * chunk * depth * 4  # dH's fp32 temporary
    fused_bytes += rows * 8 + (2 * rows * 8 * element if classes % 8 else 0)  # the row ids; the kept tail columns
    composite_bytes = 4 * rows * classes * element
    return {"fused": fused_bytes / 2**20, "composite": composite_bytes / 2**20}


def cases(device: torch.device, *, full: bool = False, tiny: bool = False) -> list[OpCase]:
    on_gpu = device.type == "cuda"
    shapes = TINY_SHAPES if tiny else GPU_SHAPES if on_gpu else CPU_SHAPES
    liger = liger_provider() if on_gpu else None
    result, compiled_last = [], []  # the compiled MLM rows last: an Inductor compile a capped suite may not finish
    for name, rows, depth, classes, dtypes in shapes:
        for dtype in dtypes:
            shape = _Shape(device, name, rows, depth, classes, dtype)
            notes = shape.notes
            backends = [b for b in library_providers(device) if b != "cuda"]
            providers = [(f"masksub[{b}]", fused, b, notes) for b in backends]
            providers += [(f"masksub[{b}] recompute", fused_recompute, b, notes) for b in backends]
            providers += [
                ("official", official_composite, None, notes),
                ("linear+masksub_loss", linear_then_masksub_loss, None, notes),
            ]
            if on_gpu or full:
                compiled = torch.compile(official_composite, dynamic=False)
                providers.append(("compile(official)", compiled, None, notes))
            if liger is not None:
                providers.append(("liger(main CE only)", liger, None, notes))
            if on_gpu and not tiny and dtype != torch.float32:  # the sweep (late: a capped suite drops it early)
                providers.append(("masksub[triton]:2 launches", fused_two_launches, "triton", notes))
                providers.append(("masksub[triton]:ascending", fused_ascending, "triton", notes))
                providers += _swept(shape, CHUNK_SWEEP)
            result += [shape.case(*provider) for provider in providers]
            if on_gpu and not tiny:  # the recompute op on MLM-like labels: 'full' only, no TFLOP/s (15% of the work)
                # eager: its backward on the chunk loop (counted rows, one host sync); compiled: class ids take its
                # own kernels there (no sync), the path of an MLM under torch.compile
                compiled_mlm = torch.compile(fused_recompute_mlm, dynamic=False)
                for b in backends:
                    for suffix, fn in (("", fused_recompute_mlm), (" compiled", compiled_mlm)):
                        name = f"masksub[{b}] recompute mlm15{suffix}"
                        mlm = shape.case(name, fn, b, notes, modes=("full",))
                        counted = MLM_COUNTED[0] / MLM_COUNTED[1]  # other labels than the baseline's: no speed-up
                        mlm.flops, mlm.notes = None, {**notes, "counted_rows": counted, "labels_differ": True}
                        (compiled_last if suffix else result).append(mlm)
    if on_gpu and not tiny:  # the chunk floor's pair, after the rest but the compiled MLM rows (a cap drops them first)
        for name, rows, depth, classes, dtypes in FLOOR_SHAPES:
            shape = _Shape(device, name, rows, depth, classes, dtypes[0])
            floor = [("masksub[triton]", fused, "triton", {**shape.notes, "chunk_rows": shape.chunk_rows})]
            result += [shape.case(*provider, modes=("full",)) for provider in floor + _swept(shape, [(96, None)])]
    return result + compiled_last  # (last: before the floor, ~95-110 s of the suite's 100 s cap estimated with it)


def _swept(shape: _Shape, sweep: list[tuple[float, int | None]]) -> list[tuple]:
    """The fused op's providers with other chunk budgets / split programs (chunking), each with its own modelled
    memory and rows per chunk."""
    from masksub_kernels.ops._linear_loss_chunks import grads_chunk_rows
    from masksub_kernels.ops.masksub_loss import SPLIT_PROGRAMS_PER_SM

    providers = []
    for mib, programs in sweep:
        with chunking(mib, programs):
            swept = modelled_extra_mb(shape.rows, shape.depth, shape.classes, shape.element)["fused"]
            rows = grads_chunk_rows(shape.classes, shape.rows)
        provider = sweep_provider(mib, programs or SPLIT_PROGRAMS_PER_SM, shape.classes)
        chunked = functools.partial(fused_chunked, mib, programs)
        notes = {**shape.notes, "modelled_extra_mb_fused": swept, "chunk_rows": rows}
        providers.append((provider, chunked, "triton", notes))
    return providers


class _Shape:
    """One shape and dtype of the suite: its inputs' maker, flops, bytes and memory notes, and its cases."""

    def __init__(self, device, name: str, rows: int, depth: int, classes: int, dtype: torch.dtype):
        from masksub_kernels.ops._linear_loss_chunks import grads_chunk_rows

        self.device, self.rows, self.depth, self.classes, self.dtype = device, rows, depth, classes, dtype
        self.element = element = torch.tensor([], dtype=dtype).element_size()
        matmul = 2 * rows * depth * classes
        self.flops = {"forward": 2 * matmul, "backward": 4 * matmul, "full": 6 * matmul}
        self.inputs_bytes = (2 * rows + classes) * depth * element + classes * element + rows * 8  # h, hs, W, b, ids
        self.nbytes = {"forward": self.inputs_bytes, "backward": 2 * self.inputs_bytes, "full": 2 * self.inputs_bytes}
        model = modelled_extra_mb(rows, depth, classes, element)
        self.notes = {"modelled_extra_mb_fused": model["fused"], "modelled_extra_mb_composite": model["composite"]}
        # the measured peak (the allocator's, above the inputs) holds the returned gradients too (dH, dHs, dW,
        # db in the inputs' dtype): the model's extra plus this is what it should read
        self.notes["returned_grads_mb"] = (2 * rows * depth + classes * depth + classes) * element / 2**20
        self.chunk_rows = min(rows, grads_chunk_rows(classes, rows))  # the fused op's, by default
        self.label = f"{name} M={rows} D={depth} C={classes}"
        self.dtype_name = str(dtype).removeprefix("torch.")

    def make(self) -> list[torch.Tensor]:
        m, d, c, dt = self.rows, self.depth, self.classes, self.dtype
        generator = torch.Generator(device=self.device).manual_seed(0)
        h = torch.randn(m, d, device=self.device, dtype=dt, generator=generator).requires_grad_(True)
        noise = torch.randn(m, d, device=self.device, generator=generator).to(dt)  # the same hs for every provider
        hs = (h.detach() + 0.1 * noise).requires_grad_(True)
        weight = (torch.randn(c, d, device=self.device, generator=generator) / d**0.5).to(dt).requires_grad_(True)
        bias = torch.zeros(c, device=self.device, dtype=dt, requires_grad=True)
        return [h, hs, weight, bias, torch.randint(0, c, (m,), device=self.device, generator=generator)]

    def case(self, provider: str, fn, backend: str | None, notes: dict, modes: tuple | None = None) -> OpCase:
        on_gpu = self.device.type == "cuda"
        setup = None if backend is None else (lambda b=backend: mk.set_backend(b))
        case = OpCase("linear_loss", self.label, self.dtype_name, provider, self.make, fn, self.nbytes, setup=setup)
        case.notes = notes
        case.cpu_memory, case.flops, case.max_repeats = not on_gpu, self.flops, None if on_gpu else 3
        if provider.startswith("liger"):
            one_branch = self.inputs_bytes - self.rows * self.depth * self.element  # no hs
            case.grad_inputs = (0, 2, 3)  # h, W, b: hs is not in its graph
            case.flops = {mode: value // 2 for mode, value in self.flops.items()}
            case.bytes = {"forward": one_branch, "backward": 2 * one_branch, "full": 2 * one_branch}
        if (backend is not None and "recompute" not in provider) or provider.startswith("liger"):
            # gradients in the forward (this library's fused op and Liger's alike): the backward only scales them,
            # so a backward alone would time that scaling; their gradient work is timed within 'full'. Their
            # forward does that work too: its TFLOP/s count the 6 matmuls, and the report gives it no speed-up
            # against the official forward (which computes no gradient)
            case.modes = ("forward", "full")
            case.flops = {mode: case.flops["full"] for mode in case.modes}
            case.notes = {**notes, "forward_computes_gradients": True}
            if ":" in provider:  # the chunk sweep: 'full' only (its forward is most of it; device time)
                case.modes = ("full",)
        if provider.startswith("liger"):  # half the composite's work: no speed-up against it (report.py)
            case.notes = {**case.notes, "one_branch": True}
        if modes is not None:
            case.modes = modes
            case.flops = {mode: case.flops[mode] for mode in modes}
        return case
