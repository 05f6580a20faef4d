"""Where the GPU time goes: torch.profiler tables of the library's ops at the benchmark shapes (a GPU run's third
call, after benchmarks/gpu_check.sh and benchmarks/gpu_bench.sh, when time is left; ~30 s on an H200).

    python benchmarks/gpu_profile.py [OUT.txt] [--only linear]

--only linear: the fused-linear loss alone (~15 s with a process start; benchmarks/gpu_bench.sh runs it right after
the linear_loss suite, so its table is in the benchmarks' call: which cuBLAS kernels ran and at what time, the loss
kernels' time per chunk, and wall against device time: host-bound or not).

Per case: wall ms per call (host included), device ms per call (the kernels' sum), and the kernels sorted by
device time. A case whose wall time is far above its device time is host-bound (Python, checks, custom-op and
autograd layers, launches); one whose device time is far above the model's prediction has a slow kernel, named in
its table (the first run found cuBLAS's sm_80 kernels on unaligned rows this way).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import masksub_kernels as mk

HOST_WAITS = ("aten::nonzero", "aten::item", "aten::_local_scalar_dense")  # ops whose CPU time may be a GPU wait


def profiled(name: str, call, leaves, out, iters: int = 10, rows: int = 15, host: bool = False) -> None:
    """host: also the host side, the ops by their own CPU time and the host time that no op holds (Python and
    Triton's launches, which record no op), per call: what makes a call host-bound."""

    def fn():  # no .grad accumulation from the second call on: every call's backward as the first one's
        for leaf_tensor in leaves:
            leaf_tensor.grad = None
        call()

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / iters * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    device = sum(e.self_device_time_total for e in kernels) / iters / 1e3
    print(f"\n## {name}: wall {wall:.3f} ms per call, kernels {device:.3f} ms per call", file=out, flush=True)
    print(events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=80), file=out)
    if host:
        cpu_ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        in_ops = sum(e.self_cpu_time_total for e in cpu_ops) / iters / 1e3
        # ops that wait for the GPU (the fused-linear op's count of rows, torch.nonzero): their CPU time holds the
        # previous call's kernels, back to back here
        waits = sum(e.self_cpu_time_total for e in cpu_ops if e.key in HOST_WAITS) / iters / 1e3
        launches = sum(e.count for e in kernels) / iters
        print(f"\n### host side: {in_ops:.3f} ms per call in ops (their own CPU time, under the profiler: more "
              f"than without; {waits:.3f} ms of it in ops that wait for the GPU: {', '.join(HOST_WAITS)}), "
              f"{wall - in_ops:.3f} ms of the wall time in none (Python, Triton's launches; the two measured in "
              f"different runs: an estimate); {launches:.0f} kernels per call", file=out)  # fmt: skip
        print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=80), file=out)


def leaf(*shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype).requires_grad_(True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="write the tables here (default: standard output)")
    parser.add_argument("--only", choices=["linear"], help="profile the fused-linear loss alone")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():  # a skip, not a failure: gpu_bench.sh runs the same steps on a CPU too
        print("gpu_profile: skipped: no CUDA device")
        return 0
    out = open(args.out, "w") if args.out else sys.stdout
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | backend {mk.get_backend()}", file=out)
    m, d, c = 16384, 768, 30522  # BERT-base MLM (issue 13)
    head = (leaf(m, d), leaf(m, d), leaf(c, d, scale=d**-0.5), leaf(c), torch.randint(0, c, (m,), device="cuda"))
    profiled("linear_masksub_loss fwd + bwd, M=16384 D=768 C=30522 bf16",
             lambda a=head: mk.linear_masksub_loss(*a).loss.backward(), head[:4], out, host=True)  # fmt: skip
    del head
    if args.only == "linear":
        return _close(out)
    for rows, classes in ((16384, 30522), (1024, 1000)):
        logits = (leaf(rows, classes, scale=3.0), leaf(rows, classes, scale=3.0))
        logits += (torch.randint(0, classes, (rows,), device="cuda"),)
        profiled(f"masksub_loss fwd + bwd, {rows} x {classes} bf16",
                 lambda a=logits: mk.masksub_loss(*a).loss.backward(), logits[:2], out)  # fmt: skip
    for tokens in (196, 1024):
        x, grad = leaf(256, tokens + 1, 768), torch.randn(256, tokens // 2 + 1, 768, device="cuda").bfloat16()
        profiled(f"random_token_select fwd + bwd, ViT-B B=256 N={tokens} bf16",
                 lambda x=x, g=grad: mk.random_token_select(x, 0.5)[0].backward(g), [x], out)  # fmt: skip
    return _close(out)


def _close(out) -> int:
    if out is not sys.stdout:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
