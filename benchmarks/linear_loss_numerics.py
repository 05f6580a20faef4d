"""Measured accuracy of the fused-linear MaskSub loss's gradients where the branches nearly agree, bf16 inputs,
against the materialised composites that round the logits to bf16 (issue 13's numerics goal, and what a
comparison of speed with them leaves out).

    python benchmarks/linear_loss_numerics.py                 # M=128 D=256 C=30522, softmaxes ~0.98 similar
    python benchmarks/linear_loss_numerics.py --no-compile    # without torch.compile of the official composite
    python benchmarks/linear_loss_numerics.py --gpu-math      # CPU: the interpreter with a GPU's arithmetic

On a machine with a GPU the tensors are CUDA tensors and the Triton path is compiled (benchmarks/gpu_bench.sh runs
it); without one, the Triton interpreter runs it on the CPU.

The sub-branch gradient is softmax(s) - softmax(z / T): it cancels as the branches agree, so the logits' own
rounding, not the loss's arithmetic, sets its error. bf16 logits carry a relative error of 2^-9 of the logit
itself (0.02 at a logit of 10), comparable with the differences between the branches' logits there; the fused op's
fp32 chunk logits carry 2^-24. Each provider runs one forward + backward of ``.loss`` (torch.autograd.grad with
respect to h, h_s, W and b) on the same bf16 inputs; the reference is linear + masksub_loss in float64 on those
values (the PyTorch backend). Errors are norm-wise relative: |g - g64| / |g64| per gradient. Providers:

- masksub[triton]: the op's Triton path, which a GPU runs (fp32 chunk logits, dz and ds rounded once to bf16 for the
  matmuls, as the composite's gradients are); on the CPU the Triton interpreter's, whose fp32 -> bf16 conversion
  truncates where a GPU rounds to nearest (twice the rounding error: a pessimistic figure for the GPU); with
  ``--gpu-math`` (CPU only) masksub[triton, GPU math]: the interpreter with a GPU's fp32 exp / exp2 / division and
  bf16 rounding emulated (tools/gpu_math.py), the closest the CPU comes to the GPU's figure;
- masksub[torch]: the op's PyTorch path (the reference flavour: fp32 throughout), the CPU path;
- linear+masksub_loss: F.linear per branch in bf16 (bf16 logits), then this library's masksub_loss;
- official: the eager composite of MaskSub's code on a linear head (bf16 logits, upcast to fp32 by the loss);
- compile(official): torch.compile of it (Inductor; its matmuls are library calls with bf16 outputs, cuBLAS on a
  GPU, the CPU's BLAS here).

Writes benchmarks/results/linear-loss-numerics-<CPU|GPU>-<date>.json (after every provider, "complete" false
until the last: a run stopped by a time cap keeps what it measured) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # before triton is imported (torch does not): the Triton path on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import masksub_kernels as mk
from masksub_kernels.bench.linear_loss import fused, linear_then_masksub_loss, official_composite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's tools/ (run as a script)
from tools import gpu_math

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("d hidden", "d sub_hidden", "d weight", "d bias")


def inputs(rows: int, depth: int, classes: int, logit_std: float, noise: float, device: str, seed: int = 0):
    """bf16 h, h_s = h + noise (the masked branch), W scaled to logits of std ``logit_std``, a small bias, ids."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, depth, generator=gen)
    hs = h + noise * torch.randn(rows, depth, generator=gen)
    weight = torch.randn(classes, depth, generator=gen) * (logit_std / depth**0.5)
    bias = 0.1 * torch.randn(classes, generator=gen)
    target = torch.randint(0, classes, (rows,), generator=gen)
    return (*(t.to(device, torch.bfloat16) for t in (h, hs, weight, bias)), target.to(device))


def similarity(h, hs, weight, bias) -> float:
    """The mean cosine similarity of the two branches' softmaxes, in float64."""
    p, q = (torch.softmax(F.linear(x.double(), weight.double(), bias.double()), 1) for x in (h, hs))
    return float(F.cosine_similarity(p, q, dim=1).mean())


def gradients(fn, tensors, target, backend: str):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    with mk.use_backend(backend):
        loss = fn(*leaves, target)
        return loss.detach(), torch.autograd.grad(loss, leaves)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--classes", type=int, default=30522)
    parser.add_argument("--logit-std", type=float, default=4.0, help="the logits' standard deviation")
    parser.add_argument("--noise", type=float, default=0.08, help="h_s = h + noise * N(0, 1)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--gpu-math", action="store_true", help="CPU: add the interpreter with a GPU's arithmetic")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="the json file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    if args.gpu_math and (on_gpu or not mk.triton_interpreted()):
        parser.error("--gpu-math emulates a GPU's arithmetic in the Triton interpreter: CPU tensors only")
    machine = torch.cuda.get_device_name(args.device) if on_gpu else platform.processor() or platform.machine()
    *tensors, target = inputs(args.rows, args.depth, args.classes, args.logit_std, args.noise, args.device)
    sim = similarity(*tensors)
    # the reference: the composite in float64 throughout (the official one casts its logits to fp32)
    _, expected = gradients(linear_then_masksub_loss, [t.double() for t in tensors], target, "torch")
    providers = [
        ("masksub[triton]", fused, "triton"),
        ("masksub[torch]", fused, "torch"),
        ("linear+masksub_loss", linear_then_masksub_loss, "torch"),
        ("official", official_composite, "torch"),
    ]
    if not args.no_compile:
        providers.append(("compile(official)", torch.compile(official_composite), "torch"))
    if args.gpu_math:
        providers.insert(1, ("masksub[triton, GPU math]", fused, "triton"))
    date = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"linear-loss-numerics-{'GPU' if on_gpu else 'CPU'}-{date}.json"
    meta = {"device": machine, "date": date, "torch": torch.__version__, "triton": _triton_version()}
    meta.update({k: v for k, v in vars(args).items() if k != "out"}, softmax_similarity=round(sim, 4))
    records = []

    def save(complete: bool, lines: list[str]) -> None:
        # after every provider: a run stopped by a time cap (the GPU scripts' 30 s) keeps what it measured
        run = {"meta": meta, "complete": complete, "records": records, "table": lines}
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(run, indent=1) + "\n")
        os.replace(partial, out)  # whole files only, should the cap's signal come during a write

    for name, fn, backend in providers:
        start = time.perf_counter()
        if "GPU math" in name:
            gpu_math.install()
        try:
            _, got = gradients(fn, tensors, target, backend)
        finally:
            gpu_math.uninstall()
        errors = {n: float((g.double() - e).norm() / e.norm()) for n, g, e in zip(NAMES, got, expected)}
        records.append({"provider": name, "relative_error": errors, "seconds": round(time.perf_counter() - start, 1)})
        save(False, [])
    lines = [
        f"{machine}: M={args.rows} D={args.depth} C={args.classes}, bf16 inputs, logits std {args.logit_std}, softmax "
        f"similarity {sim:.3f}; |g - g64| / |g64| against the float64 composite",
        "",
        "| provider | " + " | ".join(NAMES) + " |",
        "|---|" + "---|" * len(NAMES),
    ]
    for r in records:
        lines.append(f"| {r['provider']} | " + " | ".join(f"{100 * r['relative_error'][n]:.2f}%" for n in NAMES) + " |")
    print("\n".join(lines))
    save(True, lines)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
