"""Timing, memory and bandwidth measurement shared by every benchmark.

GPU: CUDA events around each repeat, the L2 cache flushed before each one (L2Flush: a read of 256 MiB, at least 4x the
L2, never a write) so that inputs that would fit in L2 are read from HBM; median and 20/80 percentiles.
Beside it, the host time: the median CPU time for the call to return (Python, checks, kernel launches, and any wait
on the GPU inside the call), measured in a pass of its own (HOST_REPEATS calls) that lets the GPU drain before each
call: in the timed calls, back to back, a call that synchronises inside (the fused-linear loss reads a count on the
host) would wait for the previous call's kernels and read as host-bound whatever its own cost. The events time the
GPU from when it reaches the start event, about max(kernels, host time - the flush's duration): the flush (and, for a
backward, its untimed forward, queued before it and not drained) gives the host a head start, and past it the GPU
waits for launches. A record whose host time is >= its median is marked
host-bound: its host work alone takes as long as the timed call, so calls back to back run at the host's pace, and
its median may be launch overhead rather than kernels (its device time is at most the median: torch.profiler gives
it). Both figures are reported, neither replaces the other.
CPU: perf_counter around each repeat. Peak memory: the CUDA caching allocator's peak above what was allocated
before the call; on the CPU, only when asked (``cpu_memory=True``), the peak of the bytes allocated during one more
call as torch's profiler records them, else None. On a GPU also the peak *beyond what the call returned*
(``transient_mem_mb``): the most memory held at once by the call's allocations that it freed before returning, from
the allocator's trace of that same call (transient_peak_bytes). A call that allocates its returned gradients early
(the fused-linear loss writes dH's rows chunk by chunk) holds them at its peak, one that allocates them after its
peak does not: the raw peaks of two such calls differ by outputs both return; this figure compares what each needs
besides them (issue 13's "extra memory of the loss"). ``prepare``: untimed work before each call (the backward's
forward), finished before the flush on a GPU so that every mode gets the same head start.
measure times one callable; measure_each several together, interleaved (round by round, each with its own events
and flush), for calls whose ratios must not depend on when each was timed (the train suite's providers of a model).
A sticky CUDA error (an illegal address, a launch failure, a device-side assert: every later CUDA call of the
process fails with it) stops the measurement at the call that raised it (ContextLost, context_lost): the runner
records it as that case's failure and the cases after it as not run, never as their own failures.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

HOST_REPEATS = 5  # calls of the host-time pass (GPU), each after the GPU drained
L2_FLUSH_BYTES = 256 * 2**20  # the L2 flush's read, at least (L2Flush): 5x the L2 of an H100 or H200 (50 MiB)
# how a CUDA runtime error reads where its type does not say it (torch's releases before torch.AcceleratorError, a
# RuntimeError): torch's C10_CUDA_CHECK and its driver checks, this library's extension (csrc/bindings.h's launch
# check), Triton's launcher, the driver API's names. On a CUDA device any other error is probed too (context_lost).
CUDA_ERROR_MARKERS = ("CUDA error", "CUDA driver error", "kernel launch failed", "Triton Error [CUDA]", "CUDA_ERROR_")
# errors that never lose the context, whatever they say: the caching allocator's out of memory, Triton's refusal of
# a kernel over the card's shared memory or registers (raised before any launch)
NOT_STICKY = ("OutOfMemoryError", "OutOfResources")


class ContextLost(Exception):
    """measure_each stopped: call ``index`` raised a sticky CUDA error (its ``__cause__``): nothing more runs on the
    device in this process. An asynchronous fault surfaces at a later launch or synchronize, maybe of the next call
    (CUDA_LAUNCH_BLOCKING=1 pins it on the call whose kernel faulted)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"CUDA context lost in call {index}")
        self.index = index


def is_cuda_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA runtime error, by its type (torch.AcceleratorError) or its message
    (CUDA_ERROR_MARKERS). An out-of-memory error is not one (torch.OutOfMemoryError: 'CUDA out of memory')."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in CUDA_ERROR_MARKERS)


def device_usable(device: torch.device) -> bool:
    """Whether ``device`` still runs work: a synchronize and a one-element op, read back. After a sticky CUDA
    error both fail (the context is unusable for the rest of the process); after one that is not (an invalid launch
    configuration) they run."""
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except torch.OutOfMemoryError:  # after a synchronize that ran: the device works, its memory is full
        return True
    except Exception:  # the probe's own failure is the answer
        return False


def context_lost(exc: BaseException, device: torch.device) -> bool:
    """Whether ``exc`` is a sticky CUDA error: an error after which ``device`` runs nothing (device_usable), probed
    where it is a CUDA error (is_cuda_error) or, on a CUDA device, any error but NOT_STICKY's (a message this harness
    does not know, e.g. a wrapper's, must not pass a lost context as one case's failure). Every later
    case of the process would fail with it: the runner stops there."""
    if isinstance(exc, ContextLost):
        return True
    if any(cls.__name__ in NOT_STICKY for cls in type(exc).__mro__):
        return False
    return (is_cuda_error(exc) or device.type == "cuda") and not device_usable(device)


def l2_flush_bytes(device: torch.device) -> int:
    """The L2 flush's read: L2_FLUSH_BYTES, or 4x the device's L2 where that is more (a card with a larger one)."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) if device.type == "cuda" else 0
    return max(L2_FLUSH_BYTES, 4 * int(l2 or 0))


class L2Flush:
    """The L2 cache emptied of the timed calls' data before each timed repeat, by a read (one sum over a buffer of
    ``nbytes``, at least 4x the L2): its lines replace every line an earlier call left in L2, and they are clean,
    so that the next timed call starts on an L2 that holds none of its inputs and owes HBM no write-back. A flush
    by a write (triton.testing.do_bench's 256 MB memset) leaves L2 full of its own
    dirty lines: the next timed call's reads evict them, and L2 writes them back to HBM inside its events (up to
    ~12 us on an H100 / H200: 50 MiB at ~4 TB/s). The dirty lines of the previous timed call's outputs
    are written back during this read, before the start event. What it writes: the sum's one element
    (``total``), and the buffer once, when it is made (zeros), which the first flush's read evicts."""

    def __init__(self, device: torch.device, nbytes: int | None = None) -> None:
        nbytes = l2_flush_bytes(device) if nbytes is None else nbytes
        self.buffer = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)
        self.total = torch.zeros((), dtype=torch.float32, device=device)

    def __call__(self) -> None:
        torch.sum(self.buffer, dim=0, out=self.total)  # every byte read, one element written


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int
    peak_mem_mb: float | None  # MiB (2**20 bytes; the name kept: the runs' JSON records use it)
    host_ms: float | None = None  # GPU: median CPU time for a call to return, the GPU drained (docstring); CPU: None
    transient_mem_mb: float | None = None  # GPU: the peak held beyond what the call returned (docstring); CPU: None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_peak_mb(fn: Callable[[], object]) -> float | None:
    """Peak MiB allocated on the CPU during ``fn()`` above what was live before: the running sum of the sizes of
    the allocations (+) and frees (-) that torch's profiler records, in time order. None if this torch's profiler
    does not expose them (its kineto results are not a public API)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        fn()
    try:
        events = profile.profiler.kineto_results.events()
        changes = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]")
    except AttributeError:
        return None
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak / 2**20


def transient_peak_bytes(entries: list[dict]) -> int:
    """The most bytes held at once by blocks allocated and freed within ``entries`` (a CUDA caching allocator's
    trace, torch.cuda.memory._snapshot()'s ``device_traces[i]``: dicts with 'action', 'addr', 'size'). Blocks
    allocated in it and never freed (what the call returned) are left out, and so are frees of blocks allocated
    before it. A block counts from its 'alloc' to its 'free_completed' (a free requested while another stream still
    used it completes later: the allocator's active bytes, not its allocated ones, which drop at the request), or
    its 'free_requested' where the trace ends before that completes; by the sizes the trace records (the requested
    ones: the raw peak counts the allocator's rounded blocks, a few bytes more per tensor)."""
    spans, live = {}, {}  # allocation index -> [start, end, size]; address -> its live allocation's index
    for position, entry in enumerate(entries):
        action, addr = entry.get("action"), entry.get("addr")
        if action == "alloc":
            live[addr] = position
            spans[position] = [position, None, int(entry["size"])]
        elif action in ("free_requested", "free_completed") and addr in live:
            span = spans[live[addr]]
            span[1] = position  # a completion after the request moves the end to it
            if action == "free_completed":
                del live[addr]
    # an allocation still live at the end was returned, unless its free was requested (then it ends there)
    changes = sorted(
        (p, s) for start, end, size in spans.values() if end is not None for p, s in ((start, size), (end, -size))
    )
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak


def _traced_call(fn: Callable[[], object], device: torch.device) -> tuple[list[dict] | None, float]:
    """Calls ``fn()`` once with the CUDA caching allocator's history recorded: (the call's trace entries, or None
    where this torch cannot record them, and the allocator's peak above what was allocated before, MiB). What the
    call returns stays referenced until the trace is taken (so that it reads as returned). The recording is the
    process's (every device's): turned off afterwards, whatever happened, its history cleared (a benchmark's own)."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    memory, recording, start = torch.cuda.memory, False, None
    try:
        for extra in ({"clear_history": True}, {}):  # clear_history: newer torch releases only
            try:
                memory._record_memory_history(
                    "all", context=None, stacks="python", max_entries=2**22, device=index, **extra
                )
                recording = True
                start = len(memory._snapshot(index)["device_traces"][index])  # earlier recordings' entries: not ours
                break
            except TypeError:
                continue
            except (AttributeError, RuntimeError, KeyError, IndexError):  # a torch that cannot: the raw peak only
                start = None
                break
        result = fn()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        entries = None if start is None else memory._snapshot(index)["device_traces"][index][start:]
        del result
    finally:
        if recording:
            memory._record_memory_history(None, device=index)
    return entries, peak


@dataclass
class Call:
    """One callable for measure_each and how to time it (measure's arguments)."""

    fn: Callable[[], object]
    prepare: Callable[[], object] | None = None
    warmup: int = 5
    repeats: int = 30
    cpu_memory: bool = False
    host_pass: bool = True


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 5,
    repeats: int = 30,
    cpu_memory: bool = False,
    prepare: Callable[[], object] | None = None,
    host_pass: bool = True,
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed ones (and one more call that
    measures the CPU peak memory when ``cpu_memory``), each after ``prepare()`` (untimed) when given. On a GPU,
    ``host_pass=False`` leaves out the host-time pass (``host_ms`` None): whole training steps, whose calls take
    tens of milliseconds each, are not compared with the model's host times. What ``fn`` or ``prepare`` raises
    propagates (a sticky CUDA error as ContextLost, from it)."""
    (result,) = measure_each([Call(fn, prepare, warmup, repeats, cpu_memory, host_pass)], device)
    if isinstance(result, Exception):
        raise result
    return result


def measure_each(calls: list[Call], device: torch.device) -> list[Timing | Exception]:
    """Time several callables together, interleaved: the warm-up of each first (in order), then repeat k of every
    call before repeat k+1 of any (a call with fewer repeats leaves the later rounds), so that a host or clock that
    drifts during the measurement slows every call alike; then, call by call, the host-time and memory passes
    (measure). A call that raises leaves the rounds, its exception in its place; the others go on, unless it is a
    sticky CUDA error (context_lost): then nothing more runs, and ContextLost(its index) is raised from it. One
    call: what measure always did, in the same order."""
    on_gpu = device.type == "cuda"
    errors: dict[int, Exception] = {}

    def attempt(index: int, step: Callable[..., object], *args) -> None:
        if index not in errors:
            try:
                step(*args)
            except Exception as exc:  # this call's failure (the caller records it), not the others'
                traceback.clear_frames(exc.__traceback__)  # its frames' tensors (an OOM's activations) let go
                if context_lost(exc, device):  # a sticky CUDA error: every later step would fail with it
                    raise ContextLost(index) from exc
                errors[index] = exc

    def ready(call: Call, drain: bool = True) -> None:
        if call.prepare is not None:
            call.prepare()
            if on_gpu and drain:
                torch.cuda.synchronize(device)

    def warm(call: Call) -> None:
        for _ in range(call.warmup):
            ready(call)
            call.fn()

    def failed() -> list[Timing | Exception] | None:  # every call failed: nothing more to time
        return [errors[index] for index in range(len(calls))] if len(errors) == len(calls) else None

    for index, call in enumerate(calls):
        attempt(index, warm, call)
    if failed():
        return failed()
    rounds = range(max(call.repeats for call in calls))
    times: list[list[float]] = [[] for _ in calls]
    peaks: list[float | None] = [None] * len(calls)
    hosts: list[float | None] = [None] * len(calls)
    transients: list[float | None] = [None] * len(calls)
    if on_gpu:
        torch.cuda.synchronize(device)
        flush = L2Flush(device)
        events = [
            ([torch.cuda.Event(enable_timing=True) for _ in range(call.repeats)],
             [torch.cuda.Event(enable_timing=True) for _ in range(call.repeats)])
            for call in calls
        ]  # fmt: skip

        def timed(call: Call, start, end) -> None:
            # no drain: the prepared forward's kernels, queued before the flush and the start event, give the host
            # its head start into the backward as in training; drained, the GPU idled inside the events while
            # autograd reached its first launch (backward-alone times up to +0.8 ms on the H200, 2026-12-04)
            ready(call, drain=False)
            flush()  # a read: L2 left clean (L2Flush)
            start.record()
            call.fn()
            end.record()

        for repeat in rounds:
            for index, call in enumerate(calls):
                if repeat < call.repeats:
                    attempt(index, timed, call, events[index][0][repeat], events[index][1][repeat])
        if failed():
            return failed()
        torch.cuda.synchronize(device)
        for index, (starts, ends) in enumerate(events):
            if index not in errors:
                times[index] = [start.elapsed_time(end) for start, end in zip(starts, ends)]
        del flush

        def passes(index: int, call: Call) -> None:
            host_times = []  # the host-time pass: each call on a drained GPU (module docstring)
            for _ in range(HOST_REPEATS if call.host_pass else 0):
                ready(call)
                torch.cuda.synchronize(device)
                begun = time.perf_counter()
                call.fn()
                host_times.append((time.perf_counter() - begun) * 1e3)
            hosts[index] = statistics.median(host_times) if host_times else None
            ready(call)
            torch.cuda.synchronize(device)
            entries, peaks[index] = _traced_call(call.fn, device)
            transients[index] = None if entries is None else transient_peak_bytes(entries) / 2**20

        for index, call in enumerate(calls):
            attempt(index, passes, index, call)
    else:

        def timed(call: Call, into: list[float]) -> None:
            ready(call)
            start = time.perf_counter()
            call.fn()
            into.append((time.perf_counter() - start) * 1e3)

        for repeat in rounds:
            for index, call in enumerate(calls):
                if repeat < call.repeats:
                    attempt(index, timed, call, times[index])

        def cpu_memory(index: int, call: Call) -> None:
            ready(call)
            peaks[index] = cpu_peak_mb(call.fn)

        for index, call in enumerate(calls):
            if call.cpu_memory:
                attempt(index, cpu_memory, index, call)
    results: list[Timing | Exception] = []
    for index, call in enumerate(calls):
        if index in errors:
            results.append(errors[index])
            continue
        values = times[index]
        quantiles = (_quantile(values, 0.2), _quantile(values, 0.8))
        results.append(
            Timing(statistics.median(values), *quantiles, call.repeats, peaks[index], hosts[index], transients[index])
        )
    return results


def copy_bandwidth_gbps(device: torch.device, megabytes: int = 1024, repeats: int = 20) -> tuple[float, float, float]:
    """Device-to-device copy bandwidth in GB/s, counting bytes read + written (the roofline of every op here): the
    median copy's, and the p80 and p20 copies' (the low and high figures: their spread shows a shared or throttled
    machine, where every '% of copy' is as uncertain)."""
    numel = megabytes * 2**20 // 4
    if device.type == "cpu":
        numel //= 8  # 128 MB on CPU: still far past any cache
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    timing = measure(lambda: target.copy_(source), device, warmup=3, repeats=repeats)
    gigabytes = 2 * source.numel() * source.element_size() / 1e9
    return tuple(gigabytes / (ms * 1e-3) for ms in (timing.median_ms, timing.p80_ms, timing.p20_ms))


def device_label(device: torch.device) -> str:
    """'GPU: NVIDIA H100 80GB HBM3' or 'CPU: <processor> (N threads)'."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    return f"CPU: {processor} ({torch.get_num_threads()} threads)"


def _driver_version() -> str | None:
    """The NVIDIA driver's version (nvidia-smi), or None where it cannot be read."""
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def source_commit(root: Path | None = None) -> str | None:
    """`git describe --always --dirty` of the source tree this package runs from (an editable install, the
    checkout's tests); where it is not a git checkout, MASKSUB_COMMIT if set (the GPU calls: the device tool copies
    the working tree without its .git, so the command names the commit: benchmarks/gpu_bench.sh), else None (an
    installed wheel) or where git cannot say. ``root``: the source tree (default: this package's)."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    if not (root / ".git").exists():
        return os.environ.get("MASKSUB_COMMIT") or None
    try:
        command = ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def environment(device: torch.device) -> dict:
    """Versions and device facts recorded with every result file, the library's version and commit among them."""
    from .. import __version__

    info = {
        "device": device_label(device),
        "masksub_kernels": __version__,
        "commit": source_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    for name in ("timm", "liger-kernel"):  # the reference points' versions (liger_kernel has no __version__)
        try:
            info[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name.replace("-", "_")] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu_memory_gb"] = round(properties.total_memory / 2**30, 1)  # GiB (the key's name kept for old runs)
        info["sm_count"] = properties.multi_processor_count
        info["capability"] = f"{properties.major}.{properties.minor}"
        info["driver"] = _driver_version()
    return info
