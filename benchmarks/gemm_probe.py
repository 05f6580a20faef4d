"""The fused-linear loss's chunk matmuls at BERT's shape, alone (GPU): median time, TFLOP/s and cuBLAS's kernel,
for the class extent unaligned (C = 30522) and padded to 8 (30528, W copied with zero rows: the loop's way on
2026-12-04), with an fp32 or a bf16 output, and dW's fp32-accumulating addmm; and the chunk loop's matmuls as it
runs them per chunk ("loop:" rows, ops/_linear_loss_chunks.py): each over the aligned head of C (30520, views of W;
the loss launch takes the 2-class tail), dH of both branches in one matmul added (beta = 1) into an fp32 product.
What the chunk loop's matmuls reach (issue 13); tools/perf_model/linear_loss_measured.py reads the "loop:" rows.
Run from the repository root: PYTHONPATH=. python3 benchmarks/gemm_probe.py"""

import torch
from torch.profiler import ProfilerActivity, profile

from masksub_kernels.ops import _linear_loss_matmuls as matmuls

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
    dh2 = torch.empty(R, D, device=dev, dtype=bf)
    dw = torch.zeros(C, D + 8, device=dev, dtype=torch.float32)
    dw8 = torch.zeros(C8, D + 8, device=dev, dtype=torch.float32)
    xw = torch.randn(R, D + 8, device=dev, dtype=bf)
    product = torch.zeros(R, D, device=dev, dtype=torch.float32)  # the loop's dH product (the tail's share in it)
    cases = {  # the loop's own first: what the perf model's calibration reads (a step cut at its cap keeps them)
        # the loop's, per chunk (its helpers over C's aligned head, views of W)
        "loop: logits head": (lambda: matmuls.fp32_logits(x, w, buf[:, :C], (HEAD,)), 2 * R * D * HEAD.stop),
        "loop: dH both, head, beta 1": (
            lambda: matmuls.add_matmul(product, g16[:, HEAD], w[HEAD]),
            2 * R * D * HEAD.stop,
        ),
        "loop: dW head": (lambda: matmuls.add_matmul(dw[HEAD], g16[:, HEAD].T, xw), 2 * R * (D + 8) * HEAD.stop),
        "logits fp32 out, C": (lambda: torch.mm(x, w.T, out_dtype=torch.float32, out=buf[:, :C]), 2 * R * D * C),
        "logits fp32 out, C8": (lambda: torch.mm(x, w8.T, out_dtype=torch.float32, out=buf[:, :C8]), 2 * R * D * C8),
        "logits bf16 out, C8": (lambda: torch.mm(x, w8.T), 2 * R * D * C8),
        "dH, K=C": (lambda: torch.mm(g16[: R // 2, :C], w, out=dh), R * D * C),  # one branch: R / 2 rows
        "dH, K=C8": (lambda: torch.mm(g16[: R // 2, :C8], w8, out=dh), R * D * C8),
        "dH both branches, K=C8": (lambda: torch.mm(g16[:, :C8], w8, out=dh2), 2 * R * D * C8),  # one matmul, 2R rows
        "dW addmm fp32, M=C": (
            lambda: torch.addmm(dw, g16[:, :C].T, xw, out_dtype=torch.float32, out=dw),
            2 * R * (D + 8) * C,
        ),
        "dW addmm fp32, M=C8": (
            lambda: torch.addmm(dw8, g16[:, :C8].T, xw, out_dtype=torch.float32, out=dw8),
            2 * R * (D + 8) * C8,
        ),
        "dW mm bf16 out, M=C8": (lambda: torch.mm(g16[:, :C8].T, xw), 2 * R * (D + 8) * C8),
    }
    g16[:, :C8].normal_()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    for name, (fn, flops) in cases.items():
        try:
            ms = timed(fn)
            print(f"{name:24s} {ms * 1e3:8.1f} us {flops / ms / 1e9:7.1f} TFLOP/s  {kernel(fn)}")
        except Exception as exc:  # a probe: report and go on
            print(f"{name:24s} failed: {type(exc).__name__}: {str(exc)[:200]}")


if __name__ == "__main__":
    main()
