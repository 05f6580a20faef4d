"""The fused-linear loss's chunk matmuls at BERT's shape, alone (GPU): median time, TFLOP/s and cuBLAS's kernel,
for the chunk loop's matmuls as it runs them per chunk ("loop:" rows, ops/_linear_loss_chunks.py: each over the
aligned head of C, 30520, views of W; the loss launch takes the 2-class tail; dH of both branches in one matmul added,
beta = 1, into an fp32 product), then over C padded to 8 (30528, W copied with zero rows: the loop's way on
2026-12-04, the calibration's fallback); tools/perf_model/linear_loss_measured.py reads those rows.

Then the loss launch beside the matmuls on a second stream ("overlap:" rows, overlap_cases): issue 13's one lever
left (the loop's ~3.4 ms of loss launches between its matmuls on one stream, 2026-12-04), and whether cuBLAS's
kernels leave the SMs room for it, which only a GPU can say:
- halves (no more memory): the chunk's stacked rows as [z_a; s_a; z_b; s_b], the loss launch of half b on a second
  stream beside dH's matmul of half a, then dH of half b and dW of both; against the loop as it is, and against the
  halves on one stream (the overlap's own gain). Each half's loss is one launch, as the chunk's: planned without the
  class split that the forward's rule gives 192 rows (two launches each; helper-240);
- two buffers (a second chunk buffer: +89 MiB at R = 384, over issue 13's memory goal unless R halves): one chunk's
  loss launch beside the other chunk's dH, dW and logits matmuls.
Each with the side stream at normal and at high priority (queued first either way), and the halves also with the
matmuls' stream at high priority instead (helper-240: the memory-bound loss then fills what the matmuls leave); the
rows' times are the streams' span. Each section prints its seconds since the start (the step's cap: 23 s).
Run from the repository root: PYTHONPATH=. python3 benchmarks/gemm_probe.py"""

import time

START = time.perf_counter()

import torch  # noqa: E402 (after the clock: the import is part of what the step's cap pays)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from masksub_kernels.ops import _linear_loss_matmuls as matmuls  # noqa: E402

R, D, C, C8 = 768, 768, 30522, 30528  # 2 x 384 stacked rows per chunk


def timed(fn, repeats=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in events)[repeats // 2]


def kernel(fn):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    return "; ".join(n[:90] for n in names)


HEAD = matmuls.class_parts(C)[0]  # the aligned head of C: the chunk loop's matmuls' classes
STEP_ROWS = 16384  # BERT's step: its chunks per step (the overlap's saving per step)

# the overlap rows (overlap_cases), in their order
LOSS, LOSS_HALF = "loss launch, the chunk's rows", "loss launch, half the rows"
DH, DH_HALF, DW, LOGITS = "dH, the chunk's rows", "dH, half the rows", "dW", "logits"
NOW = "now, one stream: loss, dH, dW"
HALVES = "halves, one stream: loss a, loss b, dH a, dH b, dW"
HALVES_BESIDE = "halves, two streams: loss b beside dH a"
HALVES_BESIDE_HIGH = "halves, two streams: loss b beside dH a, high priority"
HALVES_BESIDE_MATMULS_HIGH = "halves, two streams: loss b beside dH a, dH at high priority"
TWO_BUFFERS = "two buffers, one stream: loss, dH, dW, logits"
TWO_BUFFERS_BESIDE = "two buffers, two streams: loss beside dH, dW, logits"
TWO_BUFFERS_BESIDE_HIGH = "two buffers, two streams: loss beside dH, dW, logits, high priority"


def _sibling(name: str):
    """benchmarks/<name>.py, loaded by its path: ``benchmarks`` is a namespace package (no __init__.py), which a
    regular package of that name anywhere on sys.path would shadow (helper-240 L3), and the step would print its
    overlap rows as failed."""
    import importlib.util
    import sys
    from pathlib import Path

    key = f"_gemm_probe_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]  # not a half-loaded module for the next call (helper-247)
            raise
    return sys.modules[key]


def overlap_cases(device, stacked_rows: int, depth: int, classes: int) -> dict:
    """name -> call of the overlap rows (module docstring) for a chunk of ``stacked_rows`` = 2R rows ([z; s], R per
    branch), D = ``depth``, C = ``classes``, bf16 operands, fp32 logits: the loop's helpers (_linear_loss_matmuls)
    and its loss launch (benchmarks/gpu_ncu.chunk_loss_launch: no class tail, so every class in it, the matmuls over
    C's head). The second stream is the device's (torch.cpu's streams on the CPU: the same lines, run in order)."""
    chunk_loss_launch = _sibling("gpu_ncu").chunk_loss_launch

    bf, head, streams = torch.bfloat16, matmuls.class_parts(classes)[0], torch.get_device_module(device)
    half, quarter = stacked_rows // 2, stacked_rows // 4
    padded = -(-classes // 64) * 64  # the loop's buffer rows (_linear_loss_chunks.aligned_classes)
    w = (torch.randn(classes, depth, device=device) / 30).to(bf)
    wide = depth + 8  # the loop's stacked rows with their ones column and dW's [dW | db | 0...] (padded_depth)
    x_wide = torch.randn(stacked_rows, wide, device=device).to(bf)
    x = x_wide[:, :depth]  # the logits' operand: a view of row stride D + 8, as the loop's
    buffer, other = (torch.randn(stacked_rows, padded, device=device) * 3 for _ in range(2))
    grads = buffer.view(bf)  # the bf16 gradients over their logits rows (over_rows)
    product = torch.zeros(stacked_rows, depth, device=device)
    dw = torch.zeros(classes, wide, device=device)

    def dh(rows: slice):
        return lambda: matmuls.add_matmul(product[rows], grads[rows, head], w[head])

    def dw_call():
        matmuls.add_matmul(dw[head], grads[:, head].T, x_wide)

    def logits():
        matmuls.fp32_logits(x, w, buffer[:, :classes], (head,))

    # halves: rows [z_a; s_a; z_b; s_b] (quarter rows each), each half a loss launch of its own
    loss = chunk_loss_launch(buffer, half, classes, derive_each_call=False)
    loss_a, loss_b = (chunk_loss_launch(buffer[r], quarter, classes, derive_each_call=False, split=False)
                      for r in (slice(0, half), slice(half, None)))  # fmt: skip
    loss_other = chunk_loss_launch(other, half, classes, derive_each_call=False)
    dh_all, dh_a, dh_b = dh(slice(None)), dh(slice(0, half)), dh(slice(half, None))

    def one_stream(*calls):
        def run():
            for call in calls:
                call()

        return run

    def beside(side_call, calls, side_priority: int, calls_priority: int | None = None):
        """side_call on a stream of its own beside calls: on the current stream, or on one at calls_priority."""
        side = streams.Stream(priority=side_priority)  # lower is higher (CUDA's range clamps it)
        own = [] if calls_priority is None else [streams.Stream(priority=calls_priority)]

        def run():
            current = streams.current_stream()
            main = own[0] if own else current
            for stream in [side, *own]:
                stream.wait_stream(current)  # the launches after what came before them (their inputs)
            with streams.stream(side):
                side_call()
            with streams.stream(main):
                for call in calls:
                    call()
            for stream in [side, *own]:
                current.wait_stream(stream)  # what comes after waits for both streams

        return run

    return {
        LOSS: loss,
        LOSS_HALF: loss_a,
        DH: dh_all,
        DH_HALF: dh_a,
        DW: dw_call,
        LOGITS: logits,
        NOW: one_stream(loss, dh_all, dw_call),
        HALVES: one_stream(loss_a, loss_b, dh_a, dh_b, dw_call),
        HALVES_BESIDE: one_stream(loss_a, beside(loss_b, [dh_a], 0), dh_b, dw_call),
        HALVES_BESIDE_HIGH: one_stream(loss_a, beside(loss_b, [dh_a], -1), dh_b, dw_call),
        HALVES_BESIDE_MATMULS_HIGH: one_stream(loss_a, beside(loss_b, [dh_a], 0, calls_priority=-1), dh_b, dw_call),
        TWO_BUFFERS: one_stream(loss_other, dh_all, dw_call, logits),
        TWO_BUFFERS_BESIDE: beside(loss_other, [dh_all, dw_call, logits], 0),
        TWO_BUFFERS_BESIDE_HIGH: beside(loss_other, [dh_all, dw_call, logits], -1),
    }


def overlap_summary(us: dict[str, float], chunks: int) -> list[str]:
    """What the overlap rows' medians (us by name; a failed row absent) say: the halves' saving per chunk against the
    loop as it is (and over ``chunks`` chunks: a step), and how much of the loss launch two buffers hide."""
    lines = []
    for name in (HALVES, HALVES_BESIDE, HALVES_BESIDE_HIGH, HALVES_BESIDE_MATMULS_HIGH):
        if NOW in us and name in us:
            saved = us[NOW] - us[name]
            lines.append(f"overlap: {name}: saves {saved:+.1f} us a chunk against now, {saved * chunks / 1e3:+.2f} "
                         f"ms over {chunks} chunks")  # fmt: skip
    for name in (
        HALVES_BESIDE,
        HALVES_BESIDE_HIGH,
        HALVES_BESIDE_MATMULS_HIGH,
    ):  # the second stream's own gain, the split's cost left out
        if HALVES in us and name in us:
            lines.append(f"overlap: {name}: {us[HALVES] - us[name]:+.1f} us a chunk against the halves on one stream")
    for name in (TWO_BUFFERS_BESIDE, TWO_BUFFERS_BESIDE_HIGH):
        if TWO_BUFFERS in us and LOSS in us and name in us:
            hidden = us[TWO_BUFFERS] - us[name]
            lines.append(f"overlap: {name}: hides {hidden:.1f} us of the loss launch's {us[LOSS]:.1f} us "
                         f"({100 * hidden / us[LOSS]:.0f}%)")  # fmt: skip
    return lines


def main():
    if not torch.cuda.is_available():  # a skip, not a failure: gpu_bench.sh runs the same steps on a CPU too
        print("gemm_probe: skipped: no CUDA device")
        return
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(R, D + 8, device=dev, dtype=bf)[:, :D]  # the stacked rows' view (row stride 776)
    w = torch.randn(C, D, device=dev, dtype=bf) / 30
    w8 = torch.zeros(C8, D, device=dev, dtype=bf)
    w8[:C] = w
    buf = torch.empty(R, 30528, device=dev, dtype=torch.float32)
    g16 = buf.view(bf)  # [R, 2 x 30528]
    dh = torch.empty(R // 2, D, device=dev, dtype=bf)
    dw = torch.zeros(C, D + 8, device=dev, dtype=torch.float32)
    dw8 = torch.zeros(C8, D + 8, device=dev, dtype=torch.float32)
    xw = torch.randn(R, D + 8, device=dev, dtype=bf)
    product = torch.zeros(R, D, device=dev, dtype=torch.float32)  # the loop's dH product (the tail's share in it)
    loop = {  # the loop's own first: what the perf model's calibration reads (a step cut at its cap keeps them)
        # the loop's, per chunk (its helpers over C's aligned head, views of W)
        "loop: logits head": (lambda: matmuls.fp32_logits(x, w, buf[:, :C], (HEAD,)), 2 * R * D * HEAD.stop),
        "loop: dH both, head, beta 1": (
            lambda: matmuls.add_matmul(product, g16[:, HEAD], w[HEAD]),
            2 * R * D * HEAD.stop,
        ),
        "loop: dW head": (lambda: matmuls.add_matmul(dw[HEAD], g16[:, HEAD].T, xw), 2 * R * (D + 8) * HEAD.stop),
    }
    padded = {  # over C padded to 8 (the calibration's fallback for logs without the loop's rows); C's own
        # unaligned extent (sm_80 kernels, ~2x slower) was measured on 2026-12-04 (results/gpu-2026-12-04)
        "logits fp32 out, C8": (lambda: torch.mm(x, w8.T, out_dtype=torch.float32, out=buf[:, :C8]), 2 * R * D * C8),
        "dH, K=C8": (lambda: torch.mm(g16[: R // 2, :C8], w8, out=dh), R * D * C8),  # one branch: R / 2 rows
        "dW addmm fp32, M=C8": (
            lambda: torch.addmm(dw8, g16[:, :C8].T, xw, out_dtype=torch.float32, out=dw8),
            2 * R * (D + 8) * C8,
        ),
    }
    g16[:, :C8].normal_()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    for section, rows in (("the loop's rows", lambda: matmul_rows(loop)), ("the overlap rows", overlap_rows),
                          ("the padded rows", lambda: matmul_rows(padded))):  # fmt: skip
        rows()
        print(f"gemm_probe: {time.perf_counter() - START:5.1f} s: {section} done", flush=True)


def matmul_rows(cases: dict) -> None:
    for name, (fn, flops) in cases.items():
        try:
            ms = timed(fn)
            print(f"{name:24s} {ms * 1e3:8.1f} us {flops / ms / 1e9:7.1f} TFLOP/s  {kernel(fn)}")
        except Exception as exc:  # a probe: report and go on
            print(f"{name:24s} failed: {type(exc).__name__}: {str(exc)[:200]}")


def overlap_rows() -> None:
    """The overlap rows at BERT's chunk (2 x 384 rows), their medians and what they say (overlap_summary)."""
    print(f"overlap: a chunk of 2 x {R // 2} rows, D = {D}, C = {C}, bf16; the two streams' span (us, median)")
    us = {}
    try:
        cases = overlap_cases(torch.device("cuda"), R, D, C)
    except Exception as exc:  # a probe: report and go on (a second chunk buffer's memory, say)
        print(f"overlap: failed: {type(exc).__name__}: {str(exc)[:200]}")
        return
    for name, call in cases.items():
        try:
            us[name] = timed(call) * 1e3
            print(f"overlap: {name:70s} {us[name]:8.1f} us")
        except Exception as exc:
            print(f"overlap: {name} failed: {type(exc).__name__}: {str(exc)[:200]}")
    for line in overlap_summary(us, -(-STEP_ROWS // (R // 2))):
        print(line)


if __name__ == "__main__":
    main()
