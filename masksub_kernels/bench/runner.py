"""Op benchmark cases and their runner: forward, backward and full (forward + backward) of each provider.

A case names its suite, shape, dtype and provider, builds its inputs, and says how many bytes each mode must move
at least (each input read once, each output written once): achieved GB/s = bytes / median time, and the fraction
of the copy bandwidth measured in the same run is the headline number for these memory-bound ops. Where this
library's design moves more than that (the loss re-reads the logits in its backward), the case also gives the
design's bytes, and the fraction of copy bandwidth on those is reported beside.

Modes: forward (one call), backward (one backward through a graph that an untimed forward built just before it,
as a training step runs it) and full (forward + backward); the train suite's cases have one mode, step (STEP: one
call of a whole training step, forward + backward + optimizer step). A case's ``setup`` may select a backend of this
library: the one selected before the case is restored after it (the choice is process-wide, and a later caller,
e.g. another test in the same pytest process, must not inherit the benchmark's).

A case is timed alone, mode after mode (run_case: the kernel suites), unless it belongs to a group (OpCase.group:
the train suite's providers of one model): a group's cases are timed together, interleaved (run_group: the warm-up
of each, then repeat k of every case before repeat k+1 of any), so that a host that drifts during the group slows
them alike and their ratios hold; timing_groups splits a suite's cases into these units.

A sticky CUDA error (timing.context_lost: an illegal address, a launch failure; every later CUDA call of the process
fails) is recorded as the failure of the case whose call raised it, marked ``context_lost``; the modes and cases
after it are recorded as not run (``not_run``: "CUDA context lost after <case>", not_run_records), never as their
own failures, and the caller (cli.py) runs nothing more in the process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import _backend
from .timing import Call, ContextLost, Timing, context_lost, measure, measure_each

MODES = ("forward", "backward", "full")
STEP = "step"  # the train suite's one mode: ``fn()`` is a whole training step (timed as a forward is: one call)


@dataclass
class OpCase:
    suite: str  # e.g. "token_select"
    shape: str  # e.g. "ViT-S B=256 N=196 D=384"
    dtype: str
    provider: str  # e.g. "masksub[triton]", "official", "timm", "compile(official)"
    make_inputs: Callable[[], Sequence[torch.Tensor]]  # fresh inputs; those to differentiate require grad
    fn: Callable[..., torch.Tensor]  # output tensor (any shape) from the inputs
    bytes: dict[str, int]  # minimal bytes moved per mode
    design_bytes: dict[str, int] | None = None  # bytes this library's design moves per mode, where it differs
    modes: tuple[str, ...] = MODES
    setup: Callable[[], None] | None = None  # e.g. select the backend before timing
    notes: dict = field(default_factory=dict)
    max_repeats: int | None = None  # cap for slow cases (whole training steps)
    cpu_memory: bool = False  # also measure the peak memory on the CPU (torch's profiler: one more call)
    flops: dict[str, int] | None = None  # useful flops per mode, for TFLOP/s (compute-bound ops)
    # positions of the inputs to differentiate (None: every input that requires grad). A provider that does not use
    # some input (Liger's main-branch CE: no sub-branch hidden state) names the ones it uses: autograd.grad refuses
    # an input that is not in the graph, and a zero gradient for it would be work the provider never did.
    grad_inputs: tuple[int, ...] | None = None
    # cases of one group, adjacent in their suite, are timed together, interleaved (run_group: the train suite's
    # providers of one model); None: alone (run_case)
    group: str | None = None

    def __post_init__(self) -> None:
        if self.group is not None and self.setup is not None:
            # a backend choice is process-wide: interleaved calls of cases that select different ones would each
            # need their own selection before every call
            raise ValueError(f"{self.provider}: a case of a timing group ({self.group}) selects no backend (setup)")


def library_first(
    cases: list[OpCase],
    baselines: Sequence[str] = ("official", "compile(official)"),
    is_library: Callable[[str], bool] = lambda provider: provider.startswith("masksub["),
) -> list[OpCase]:
    """The cases in the order a time-capped suite should run them: this library's providers for every shape first,
    then ``baselines`` in that order (each for every shape), then the other references (third-party code); the
    shape order kept within each group. A suite cut by its cap (benchmarks/gpu_bench.sh) then keeps what only this
    run can measure (the kernels as they are now) and loses baselines that an earlier run measured already. The
    report groups the rows by shape whatever the order (report.markdown_table)."""
    rank = {name: index + 1 for index, name in enumerate(baselines)}

    def key(case: OpCase) -> int:
        return 0 if is_library(case.provider) else rank.get(case.provider, len(rank) + 1)

    return sorted(cases, key=key)  # stable: each group keeps the suite's shape order


def _timed_callables(case: OpCase, mode: str) -> tuple[Callable[[], object], Callable[[], None] | None]:
    """(call, prepare): the timed call of ``mode`` and what must run, untimed, before each call (or None)."""
    inputs = list(case.make_inputs())
    if case.grad_inputs is not None:
        differentiable = [inputs[i] for i in case.grad_inputs]
    else:
        differentiable = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode in ("forward", STEP):
        return (lambda: case.fn(*inputs)), None
    output = case.fn(*inputs)
    grad_output = torch.randn_like(output) if output.dim() else torch.ones_like(output)
    del output
    if mode == "backward":
        # A fresh graph per timed backward (built by an untimed forward), never one graph retained and walked again:
        # torch.compile's backward donates its saved buffers and refuses retain_graph=True, and a retained graph is
        # not what training runs. Disabling the donation instead (torch._functorch.config.donated_buffer = False)
        # would time a compiled backward other than the one users get. The same for every provider, so that the
        # speed-ups compare like with like.
        graph = {}

        def forward() -> None:
            graph["output"] = case.fn(*inputs)

        def backward():
            return torch.autograd.grad(graph.pop("output"), differentiable, grad_output)

        return backward, forward

    def full():
        out = case.fn(*inputs)
        return torch.autograd.grad(out, differentiable, grad_output)

    return full, None


def _record(case: OpCase, mode: str) -> dict:
    return {
        "suite": case.suite,
        "shape": case.shape,
        "dtype": case.dtype,
        "provider": case.provider,
        "mode": mode,
        "bytes": case.bytes.get(mode),
        "design_bytes": (case.design_bytes or {}).get(mode),
        **case.notes,
    }


def _error(exc: Exception) -> str:
    if isinstance(exc, ContextLost) and exc.__cause__ is not None:  # the CUDA error itself
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def case_label(case: OpCase, mode: str) -> str:
    """'loss BERT-like 16384 x 30522 bfloat16 masksub[triton] full': a case's mode, as the not-run rows name it."""
    return f"{case.suite} {case.shape} {case.dtype} {case.provider} {mode}"


def not_run_records(case: OpCase, after: str, modes: Sequence[str] | None = None) -> list[dict]:
    """The records of ``case``'s ``modes`` (default: all) that were not run because the CUDA context was lost at
    ``after`` (case_label): no time, no error of their own."""
    modes = case.modes if modes is None else modes
    return [{**_record(case, mode), "not_run": f"CUDA context lost after {after}"} for mode in modes]


def _failed(record: dict, exc: Exception, device: torch.device) -> bool:
    """``record`` given ``exc`` as its error; True (and the record marked ``context_lost``) where it is a sticky
    CUDA error."""
    record["error"] = _error(exc)
    if context_lost(exc, device):
        record["context_lost"] = True
    return record.get("context_lost", False)


def _call(case: OpCase, mode: str, repeats: int, warmup: int) -> Call:
    """``mode`` of ``case`` ready to time (its setup run, its inputs made): the call and how to time it."""
    if case.setup is not None:
        case.setup()
    if case.max_repeats is not None:
        repeats, warmup = min(repeats, case.max_repeats), min(warmup, 3)
    call, prepare = _timed_callables(case, mode)
    # capped cases (whole training steps): no host-time pass
    return Call(call, prepare, warmup, repeats, cpu_memory=case.cpu_memory, host_pass=case.max_repeats is None)


def _fill(record: dict, timing: Timing, case: OpCase, mode: str, copy_gbps: float) -> None:
    """``record`` completed with ``timing`` and what follows from it (GB/s, fraction of copy, TFLOP/s)."""
    record.update(
        median_ms=timing.median_ms,
        p20_ms=timing.p20_ms,
        p80_ms=timing.p80_ms,
        repeats=timing.repeats,
        peak_mem_mb=timing.peak_mem_mb,
    )
    if timing.transient_mem_mb is not None:  # GPU: the peak beyond what the call returned (timing.py)
        record["transient_mem_mb"] = timing.transient_mem_mb
    if timing.host_ms is not None:
        record.update(host_ms=timing.host_ms, host_bound=timing.host_ms >= timing.median_ms)
    if record.get("batch_size"):
        record["images_per_s"] = record["batch_size"] / (timing.median_ms * 1e-3)
    if record["bytes"]:
        record["gbps"] = record["bytes"] / (timing.median_ms * 1e-3) / 1e9
        record["fraction_of_copy"] = record["gbps"] / copy_gbps
    if record["design_bytes"]:
        design_gbps = record["design_bytes"] / (timing.median_ms * 1e-3) / 1e9
        record["fraction_of_copy_design"] = design_gbps / copy_gbps
    if case.flops and case.flops.get(mode):
        record["tflops"] = case.flops[mode] / (timing.median_ms * 1e-3) / 1e12


def run_case(case: OpCase, device: torch.device, *, repeats: int, warmup: int, copy_gbps: float) -> list[dict]:
    """One record per mode, the modes one after the other: timing, GB/s and fraction of copy bandwidth, or the
    error that stopped it."""
    records = []
    backend = _backend.get_backend()  # case.setup may select another: restored below (module docstring)
    for position, mode in enumerate(case.modes):
        record, lost = _record(case, mode), False
        try:
            call = _call(case, mode, repeats, warmup)
            timing = measure(
                call.fn, device, warmup=call.warmup, repeats=call.repeats, cpu_memory=call.cpu_memory,
                prepare=call.prepare, host_pass=call.host_pass,
            )  # fmt: skip
            _fill(record, timing, case, mode, copy_gbps)
        except Exception as exc:  # a provider that fails (e.g. compile unsupported) is recorded, not fatal
            lost = _failed(record, exc, device)
        finally:
            _backend.set_backend(backend)
        records.append(record)
        if lost:  # a sticky CUDA error: the later modes not run (module docstring), no empty_cache (it would raise)
            return records + not_run_records(case, case_label(case, mode), case.modes[position + 1 :])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def timing_groups(cases: list[OpCase]) -> list[list[OpCase]]:
    """``cases`` in the units they are timed in, in order: adjacent cases of one ``group`` together (run_group),
    every other case alone (run_case)."""
    units: list[list[OpCase]] = []
    for case in cases:
        if units and case.group is not None and units[-1][-1].group == case.group:
            units[-1].append(case)
        else:
            units.append([case])
    return units


def run_group(
    cases: list[OpCase], device: torch.device, *, repeats: int, warmup: int, copy_gbps: float
) -> list[list[dict]]:
    """Each case's records (one per mode, as run_case's), every mode of every case timed interleaved
    (timing.measure_each: the warm-up of each, then repeat k of all before repeat k+1 of any), so that a host that
    drifts during the group slows each of its cases alike; their records say so (``timing: "interleaved"``). A case
    that fails is recorded as run_case records it, and the others are timed on. Its cases select no backend
    (OpCase.group). A sticky CUDA error stops the group: the case that raised it records it (``context_lost``),
    every other one is not run (not_run_records: the interleaved rounds of those before it were cut too)."""
    pairs = [(case, mode) for case in cases for mode in case.modes]
    records = [_record(case, mode) for case, mode in pairs]
    if len(pairs) > 1:  # one call alone is timed as run_case times it
        for record in records:
            record["timing"] = "interleaved"
    timed, calls, timings = [], [], []
    for index, (case, mode) in enumerate(pairs):
        try:
            calls.append(_call(case, mode, repeats, warmup))
            timed.append(index)
        except Exception as exc:  # its inputs or graph could not be made: recorded, the others timed
            if _failed(records[index], exc, device):
                return _lost_group(cases, pairs, records)
    try:
        timings = measure_each(calls, device) if calls else []
    except ContextLost as exc:  # one call's sticky CUDA error: nothing else measured
        lost = records[timed[exc.index]]
        _failed(lost, exc, device)
        if len(calls) > 1:  # a fault surfaces at a later launch: the call launched before it (in its round, or
            # the previous round's last) may be the culprit
            before = case_label(*pairs[timed[(exc.index - 1) % len(calls)]])
            lost["error"] += f" (or the call before it, {before}: rerun with CUDA_LAUNCH_BLOCKING=1)"
        return _lost_group(cases, pairs, records)
    except Exception as exc:  # not one call's failure (e.g. the device's synchronize): every timed case's
        if context_lost(exc, device):  # the device lost at the synchronize after the rounds: no one call's
            for index in timed:
                _failed(records[index], exc, device)
            return _lost_group(cases, pairs, records)
        timings = [exc] * len(calls)
    for index, timing in zip(timed, timings):
        case, mode = pairs[index]
        if isinstance(timing, Exception):  # its step failed (timing.measure_each): recorded as run_case does
            records[index]["error"] = _error(timing)
            continue
        try:
            _fill(records[index], timing, case, mode, copy_gbps)
        except Exception as exc:
            records[index]["error"] = _error(exc)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _by_case(cases, pairs, records)


def _by_case(cases: list[OpCase], pairs: list[tuple[OpCase, str]], records: list[dict]) -> list[list[dict]]:
    return [[record for (case, _), record in zip(pairs, records) if case is owner] for owner in cases]


def _lost_group(cases: list[OpCase], pairs: list[tuple[OpCase, str]], records: list[dict]) -> list[list[dict]]:
    """A group's records after a sticky CUDA error: those with an error keep it (the lost case's, marked
    ``context_lost``, and a case's own earlier failure, e.g. inputs it could not make), every other one is not run,
    after the first lost case."""
    first = next(index for index, record in enumerate(records) if record.get("context_lost"))
    after = case_label(*pairs[first])
    kept = [
        record if "error" in record else not_run_records(case, after, [mode])[0]
        for (case, mode), record in zip(pairs, records)
    ]
    return _by_case(cases, pairs, kept)
