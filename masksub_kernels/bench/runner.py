"""Op benchmark cases and their runner: forward, backward and full (forward + backward) of each provider.

A case names its suite, shape, dtype and provider, builds its inputs, and says how many bytes each mode must move
at least (each input read once, each output written once): achieved GB/s = bytes / median time, and the fraction
of the copy bandwidth measured in the same run is the headline number for these memory-bound ops. Where this
library's design moves more than that (the loss re-reads the logits in its backward), the case also gives the
design's bytes, and the fraction of copy bandwidth on those is reported beside.

Modes: forward (one call), backward (one backward through a graph that an untimed forward built just before it,
as a training step runs it) and full (forward + backward). A case's ``setup`` may select a backend of this
library: the one selected before the case is restored after it (the choice is process-wide, and a later caller,
e.g. another test in the same pytest process, must not inherit the benchmark's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import _backend
from .timing import measure

MODES = ("forward", "backward", "full")


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
    if mode == "forward":
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


def run_case(case: OpCase, device: torch.device, *, repeats: int, warmup: int, copy_gbps: float) -> list[dict]:
    """One record per mode: timing, GB/s and fraction of copy bandwidth, or the error that stopped it."""
    records = []
    backend = _backend.get_backend()  # case.setup may select another: restored below (module docstring)
    for mode in case.modes:
        record = {
            "suite": case.suite,
            "shape": case.shape,
            "dtype": case.dtype,
            "provider": case.provider,
            "mode": mode,
            "bytes": case.bytes.get(mode),
            "design_bytes": (case.design_bytes or {}).get(mode),
            **case.notes,
        }
        try:
            if case.setup is not None:
                case.setup()
            if case.max_repeats is not None:
                repeats, warmup = min(repeats, case.max_repeats), min(warmup, 3)
            call, prepare = _timed_callables(case, mode)
            timing = measure(
                call, device, warmup=warmup, repeats=repeats, cpu_memory=case.cpu_memory, prepare=prepare,
                host_pass=case.max_repeats is None,  # capped cases (whole training steps): no host-time pass
            )  # fmt: skip
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
        except Exception as exc:  # a provider that fails (e.g. compile unsupported) is recorded, not fatal
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        finally:
            _backend.set_backend(backend)
        records.append(record)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records
