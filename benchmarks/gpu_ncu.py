"""The fused-linear op's kernels for Nsight Compute: what benchmarks/gpu_bench.sh profiles with `ncu` (its ncu_linear
step), so that the GPU run says why the loss kernels ran ~2x slower than the performance model on the H200
(2026-11-30): DRAM throughput, L2 hits, occupancy, warp stall reasons and instructions executed per kernel, beside
the model's bytes and SASS counts (tools/perf_model).

    ncu --profile-from-start off ... python benchmarks/gpu_ncu.py     (gpu_bench.sh's ncu_linear: the flags)
    python benchmarks/gpu_ncu.py                                      (the same calls, unprofiled)

Two calls at BERT-base MLM's shape (D = 768, C = 30522, bf16, class ids, a bias), each run once to compile and warm
up, then once between cudaProfilerStart and cudaProfilerStop (ncu --profile-from-start off profiles only those):
- the gradients-in-forward path (reduction 'mean', the default) on one chunk's rows (grads_chunk_rows = 384:
  the kernels and launch configurations of the 42 full chunks of a 16384-row step; its last, of 256 rows, splits
  the loss forward's rows over 2 programs): the logits matmul, the loss forward and backward kernels on the
  chunk's fp32 logits, the dH and dW matmuls;
- the recompute op (reduction 'none', then the mean) on 4096 rows (RECOMPUTE_ROWS: ncu replays each kernel once per
  section group, and the step's cap must hold them all; a quarter of the step's rows, every one counted): its
  forward, dH and dW Triton kernels;
- last, the chunk's loss launch alone (ops/_loss_fwd_bwd.py: fp32 logits in rows padded to 64 classes, a bias, the
  bf16 gradients written over their rows; all C classes from the logits, no class tail), its forward's blocks
  descending (FORWARD_DESCENDING, the default), then ascending: the A/B of that order in one kernel's DRAM bytes
  and L2 hit rate, which the host's pace does not blur as it may the suite's `masksub[triton]:ascending` row.
ncu flushes the caches before each replay of a kernel (its default): L2 hit rates are a cold cache's (a chunk's 94 MB
of logits exceed the H200's 50 MB of L2 anyway), within a kernel they are its own (the loss launch's backward
re-reading what its forward read). Each phase prints its time since the start (the log says where the
step's cap went). Without a GPU, the calls run on the CPU at a tiny shape (the torch backend), unprofiled: the CPU
tests run this file.
"""

from __future__ import annotations

import argparse
import sys
import time

START = time.perf_counter()

import torch  # noqa: E402 (after the clock: the import is part of what the step's cap pays)

import masksub_kernels as mk  # noqa: E402
from masksub_kernels.ops._linear_loss_chunks import grads_chunk_rows  # noqa: E402

SHAPE = (16384, 768, 30522)  # BERT-base MLM (issue 13)
RECOMPUTE_ROWS = 4096  # the recompute op's rows under ncu: its kernels replayed per section must fit the step's cap
TINY = (8, 16, 40)  # the CPU's check of the calls


def calls(rows: int, depth: int, classes: int, device: torch.device) -> list[tuple[str, object]]:
    """(name, call) pairs: each call runs one forward + backward of the op (fresh gradients each time)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape, scale=1.0):
        x = torch.randn(*shape, generator=generator, device=device) * scale
        return x.to(torch.bfloat16).requires_grad_(True)

    weight, bias = leaf(classes, depth, scale=depth**-0.5), leaf(classes)
    chunk = min(rows, grads_chunk_rows(classes, rows))

    def head(n):
        labels = torch.randint(0, classes, (n,), generator=generator, device=device)
        return leaf(n, depth), leaf(n, depth), weight, bias, labels

    one_chunk, every_row = head(chunk), head(min(rows, RECOMPUTE_ROWS))

    def run(inputs, reduction):
        for t in inputs[:4]:
            t.grad = None
        out = mk.linear_masksub_loss(*inputs, reduction=reduction).loss
        (out if reduction == "mean" else out.mean()).backward()

    return [
        (f"gradients in the forward, one chunk: M={chunk} D={depth} C={classes}", lambda: run(one_chunk, "mean")),
        (f"recompute (reduction='none'): M={len(every_row[0])} D={depth} C={classes}", lambda: run(every_row, "none")),
    ]


def chunk_loss_launch(logits: torch.Tensor, rows: int, classes: int, *, derive_each_call: bool = True, split=True):
    """A call of the chunk loop's loss launch (ops/_loss_fwd_bwd.py) on ``logits``, fp32 [2 rows, C padded to 64]
    (the loop's buffer: main's rows over sub's): class ids, a bias, a mean's row grads, the bf16 gradients written
    over their rows (over_rows), every class from the logits (no class tail). A call reads what the last one wrote
    (the gradients over the first half of each row's bytes: small finite logits): copy fresh logits in first where
    their values matter. derive_each_call: the launch's configuration derived at each call (FORWARD_DESCENDING as it
    is then); else once, here, as the chunk loop does (its host time then left out of the call). split=False (a
    configuration derived once): planned without a class split of the forward's rows (masksub_loss's
    SPLIT_PROGRAMS_PER_SM 0 while planning): one launch where few rows would split (the two launches otherwise)."""
    from masksub_kernels.ops import _loss_fwd_bwd
    from masksub_kernels.ops import masksub_loss as loss_ops

    generator = torch.Generator(device=logits.device).manual_seed(2)
    labels = torch.randint(0, classes, (rows,), generator=generator, device=logits.device)
    bias = (torch.randn(classes, generator=generator, device=logits.device) * 0.1).bfloat16()
    row_grads = torch.full((rows,), 1.0 / rows, device=logits.device)
    stats = logits.new_empty(9, rows)
    tickets = torch.zeros(rows, dtype=torch.int32, device=logits.device)
    narrow = logits.view(torch.bfloat16)
    z, s = logits[:rows, :classes], logits[rows : 2 * rows, :classes]
    into = (narrow[:rows, :classes], narrow[rows : 2 * rows, :classes])
    options = (False, 0.0, -100, 1.0, None)  # bce, label smoothing, ignore_index, temperature, threshold
    planned = {}
    if not derive_each_call:
        fixed = (options[0], options[1], options[3], options[4])  # one_launch's: no ignore_index
        saved = loss_ops.SPLIT_PROGRAMS_PER_SM
        loss_ops.SPLIT_PROGRAMS_PER_SM = saved if split else 0  # (a key of the cached configurations: none stale)
        try:
            planned["launch"] = _loss_fwd_bwd.one_launch(row_grads, row_grads, z, s, labels, *fixed, into, bias, True)
        finally:
            loss_ops.SPLIT_PROGRAMS_PER_SM = saved

    def call():
        _loss_fwd_bwd.forward_backward_triton(
            row_grads, row_grads, z, s, labels, *options, out=stats, tickets=tickets, into=into, bias=bias,
            over_rows=True, **planned,
        )  # fmt: skip

    call.launch = planned.get("launch", "derived at each call")  # the plan (None: the two launches of a split)
    return call


def loss_launch_orders(rows: int, classes: int, device: torch.device) -> list[tuple[str, object]]:
    """(name, call) pairs: the chunk's loss launch alone on ``rows`` rows per branch, its forward's blocks descending,
    then ascending (the A/B of ops/_loss_fwd_bwd.py's FORWARD_DESCENDING); each call first copies the logits back
    (the gradients overwrite them; a torch copy, outside ncu's kernel filter)."""
    from masksub_kernels.ops import _loss_fwd_bwd

    generator = torch.Generator(device=device).manual_seed(1)
    padded = -(-classes // 64) * 64  # the chunk loop's rows (_linear_loss_chunks)
    source = torch.randn(2 * rows, padded, generator=generator, device=device) * 3
    logits = torch.empty_like(source)
    launch = chunk_loss_launch(logits, rows, classes)

    def run(descending: bool):
        logits.copy_(source)
        saved, _loss_fwd_bwd.FORWARD_DESCENDING = _loss_fwd_bwd.FORWARD_DESCENDING, descending
        try:
            launch()
        finally:
            _loss_fwd_bwd.FORWARD_DESCENDING = saved

    shape = f"M={rows} C={classes}"
    return [
        (f"the chunk's loss launch alone, blocks descending: {shape}", lambda: run(True)),
        (f"the chunk's loss launch alone, blocks ascending: {shape}", lambda: run(False)),
    ]


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    work = calls(*(SHAPE if on_gpu else TINY), device)
    if on_gpu or mk.triton_interpreted():  # the Triton kernel itself: a GPU's, or the interpreter's (the tests)
        rows, _, classes = SHAPE if on_gpu else TINY
        work += loss_launch_orders(min(rows, grads_chunk_rows(classes, rows)), classes, device)
    _say("imports and inputs ready")
    for _name, call in work:  # compile and warm up, outside the profiled range
        call()
    if on_gpu:
        torch.cuda.synchronize()
    _say(f"warmed up on {torch.cuda.get_device_name() if on_gpu else 'the CPU (no CUDA device), unprofiled'}, "
         f"backend {mk.last_backend('linear_masksub_loss')}")  # fmt: skip
    if on_gpu:
        torch.cuda.profiler.start()
    for name, call in work:
        _say(f"profiled: {name}")
        call()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    _say("done")
    return 0


def _say(what: str) -> None:
    print(f"gpu_ncu: {time.perf_counter() - START:6.1f} s: {what}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
