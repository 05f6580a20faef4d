"""Where a whole MaskSub training step's time goes, per provider of the train suite (GPU; ``--cpu``: a tiny run).

The 2026-12-04 H200 run timed this library's Swin-T step (sequential 113.7 ms, joint 100.9 ms) slower than the
official code's (81.9 ms), where a CPU profile finds the same heavy ops in both (tests/training/test_swin_step_work.py:
no extra work). helper-235's reading: the steps are host-bound (their GPU work is ~20-40 ms; a CPU runs the same
Python in ~40 / ~80 ms), and that run's host drifted between the suite's one-provider-at-a-time blocks (every train
row slowed by 1.13-1.68x against 2026-11-30, the official step at both ends). This probe tells the causes apart:
- interleaved: every provider's step in turn, round after round (CUDA events): a drifting host favours none; two
  swaps isolate the masking op (this library's step with the official blend, the official step with
  mask_tokens_grid);
then, one provider at a time, in both orders (a gap that flips with the order is a timing artefact):
- events: CUDA events around back-to-back steps (the train suite's measure until 2026-12-06, one provider at a time;
  it now interleaves the providers too: masksub_kernels/bench/train_step.py);
- wall: one step on a drained GPU, synchronised; host: the same step's enqueue time (host-bound when ~ wall);
- syncs: host synchronisations inside one step (torch.cuda.set_sync_debug_mode);
- kernels, kernel ms: the CUDA kernels of one step (torch.profiler), and per kernel name, the largest differences
  between this library's steps and the official one's (a slow kernel of ours shows there).
Equal kernel time with a longer step points to the host (launches, syncs); a kernel far apart, to that kernel.

Run from the repository root: PYTHONPATH=. python3 benchmarks/train_step_probe.py [--cpu] [--model NAME]
"""

import argparse
import collections
import contextlib
import functools
import statistics
import time
import warnings

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import masksub_kernels as mk
from masksub_kernels.bench import train_step
from masksub_kernels.bench.train_step import _step_functions
from masksub_kernels.training import MaskSub

OFFICIAL = "masksub official-style (sequential)"
TINY_SWIN = {"img_size": 64, "window_size": 4, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4)}


def one_step_kernels(fn, sync) -> tuple[collections.Counter, int]:
    """(kernel name -> total ms, number of kernels) of one step (torch.profiler's CUDA events)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    kernels, count = collections.Counter(), 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name[:90]] += event.device_time / 1e3
            count += 1
    return kernels, count


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def with_swaps(steps: dict) -> dict:
    """``steps`` and two swaps of the masking op: this library's sequential step with the official blend in place of
    mask_tokens_grid (training/swin.py calls mk.mask_tokens_grid), the official step with mask_tokens_grid (it calls
    train_step.official_tokens)."""
    ours, official = steps["masksub (sequential)"], steps[OFFICIAL]
    official_blend = lambda tokens, token, ratio, *, cell_size, seed=None: (
        train_step.official_tokens(tokens, token, cell=cell_size),
        None,
    )
    our_mask = lambda tokens, token, cell: mk.mask_tokens_grid(tokens, token, 0.5, cell_size=cell)[0]

    def ours_with_official_mask():
        with _patched(mk, "mask_tokens_grid", official_blend):
            ours()

    def official_with_our_mask():
        with _patched(train_step, "official_tokens", our_mask):
            official()

    return {**steps, "ours+official-mask": ours_with_official_mask, "official+our-mask": official_with_our_mask}


def interleaved(steps: dict, on_gpu: bool, rounds: int) -> None:
    """Each provider's step in turn, ``rounds`` times: the median CUDA-event and host (enqueue) ms per provider."""
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    for fn in steps.values():  # warm-up: compiles, optimizer state, the allocator
        for _ in range(3):
            fn()
    sync()
    events, host = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(rounds):
        for name, fn in steps.items():
            start, end = (
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if on_gpu else (0, 0)
            )
            if on_gpu:
                start.record()
            begun = time.perf_counter()
            fn()
            host[name].append((time.perf_counter() - begun) * 1e3)
            if on_gpu:
                end.record()
                events[name].append((start, end))
    sync()
    print(f"== interleaved, {rounds} rounds\n{'provider':38s} events_ms (p20-p80)   host_ms")
    for name in steps:
        times = [start.elapsed_time(end) for start, end in events[name]] or [float("nan")] * 2
        q = statistics.quantiles(times, n=5) if len(times) > 1 else [float("nan")] * 4
        print(
            f"{name:38s} {statistics.median(times):9.1f} ({q[0]:.1f}-{q[3]:.1f}) {statistics.median(host[name]):9.1f}"
        )


def measure(fn, on_gpu: bool, repeats: int) -> dict:
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    for _ in range(5):
        fn()
    sync()
    result = {"events": float("nan"), "syncs": 0, "kernels": collections.Counter(), "count": 0}
    if on_gpu:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        sync()
        result["events"] = statistics.median(start.elapsed_time(end) for start, end in events)
    wall, host = [], []
    for _ in range(repeats):
        sync()
        begun = time.perf_counter()
        fn()
        host.append(time.perf_counter() - begun)
        sync()
        wall.append(time.perf_counter() - begun)
    result["wall"], result["host"] = statistics.median(wall) * 1e3, statistics.median(host) * 1e3
    if on_gpu:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(1)
            fn()
            torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        result["syncs"] = len(syncs)
        for message in syncs[:3]:
            print(f"   sync: {message[:160]}")
        result["kernels"], result["count"] = one_step_kernels(fn, sync)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="a tiny Swin on the CPU (checks the script runs)")
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20, help="rounds of the interleaved pass")
    args = parser.parse_args()
    on_gpu = not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    kwargs = {} if on_gpu else TINY_SWIN
    batch, side = (args.batch or 64, 224) if on_gpu else (args.batch or 4, 64)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=1000, **kwargs).to(device)
    ms = MaskSub(model, mask_ratio=0.5)
    optimizer = torch.optim.AdamW(ms.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, side, side, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    autocast = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext
    steps = with_swaps(_step_functions(ms, optimizer, images, F.one_hot(labels, 1000).float(), labels, autocast))
    print(f"{torch.cuda.get_device_name() if on_gpu else 'CPU'} | torch {torch.__version__} | {args.model} B={batch}")
    interleaved(steps, on_gpu, args.rounds)
    kernels = {}
    for order in (list(steps), list(steps)[::-1]):
        print(f"{'provider':38s} events_ms wall_ms host_ms syncs kernels kernel_ms")
        for name in order:
            r = measure(steps[name], on_gpu, args.repeats)
            kernels[name] = r["kernels"]
            total = sum(r["kernels"].values())
            print(f"{name:38s} {r['events']:9.1f} {r['wall']:7.1f} {r['host']:7.1f} {r['syncs']:5d} "
                  f"{r['count']:7d} {total:9.1f}", flush=True)  # fmt: skip
    for name in ("masksub (sequential)", "masksub (joint)"):
        if not kernels.get(OFFICIAL):
            break
        ours, official = kernels[name], kernels[OFFICIAL]
        differences = sorted(((ours[k] - official[k], k) for k in set(ours) | set(official)), key=lambda t: -abs(t[0]))
        print(f"== kernel ms, {name} minus official, largest differences")
        for difference, kernel in differences[:12]:
            print(f"   {difference:+8.3f}  {kernel}")


if __name__ == "__main__":
    main()
