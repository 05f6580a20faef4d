"""The prediction for one kernel launch, and for an op (a sequence of launches).

Per launch, with P programs of W warps, I warp-instructions per program (the SASS: instructions outside loops once,
each loop's own body times its trip count), R bytes read and B bytes moved in all:

    resident   blocks per SM = min(registers, threads, shared memory, 32 blocks) limits
    n_sm       = ceil(P / SMs): programs the busiest SM runs;  concurrent = min(resident, n_sm) blocks at a time
    t_issue    = n_sm * W * I / (schedulers * clock) / min(1, concurrent * W / schedulers)
    t_mufu     = n_sm * W * U * 32 / (MUFU lanes * clock) / min(1, concurrent * W / schedulers)
                 U of the I warp-instructions are MUFU (exp2, log2, reciprocal): 16 lanes per SM and clock, a
                 quarter of the issue rate, so a kernel of many exponentials per element waits on that pipe
    t_compute  = max(t_issue, t_mufu)
    t_memory   = max(B / copy bandwidth,                       the roofline
                     R / (min(SMs, P) * concurrent * W * L / latency))
                 the second term is Little's law: a warp keeps L bytes of loads in flight (those of one iteration
                 of its innermost loop: none of these loops is software-pipelined), so few resident warps cannot
                 cover the memory latency
    t_chain    = t_compute + n_sm * iterations * latency    with one block per SM at a time: none of these loops
                                           is software-pipelined, so each iteration's loads wait a full round trip
                                           with no other block to fill it (with two or more blocks: t_compute)
    t_kernel   = max(t_memory, t_chain)
    t_launch   = launch cost (card.launch_us) per launch

An op's predicted time is the sum over its launches (they run one after another on a stream). % of copy bandwidth
= bytes / t / copy bandwidth, on the bytes the design moves and on the minimal bytes (each input read once, each
output written once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .hardware import Card
from .sass import Function


@dataclass
class Occupancy:
    resident_blocks: int  # blocks one SM can hold
    limiter: str  # what limits it
    waves: float  # P / (SMs * resident)


def occupancy(card: Card, function: Function, warps: int, shared: int, programs: int) -> Occupancy:
    per_warp = math.ceil(max(function.registers, 1) * 32 / 256) * 256  # registers are allocated per warp, by 256
    limits = {
        "registers": card.registers_per_sm // (per_warp * warps),
        "threads": card.threads_per_sm // (32 * warps),
        "blocks": card.blocks_per_sm,
    }
    if shared:
        limits["shared memory"] = card.shared_per_sm // (shared + card.shared_reserved_per_block)
    limiter = min(limits, key=limits.get)
    resident = max(0, limits[limiter])
    return Occupancy(resident, limiter, programs / (card.sms * max(resident, 1)))


@dataclass
class KernelPrediction:
    kernel: str
    grid: tuple[int, int, int]
    warps: int
    registers: int
    shared: int
    occupancy: Occupancy
    instructions_per_program: int  # warp-instructions each warp issues
    loop_instructions: int  # the steady-state (innermost) loop body, per warp per iteration
    elements_per_warp_iteration: float  # elements a warp handles per iteration of that loop
    loop_mix: dict
    access_widths: list[int]  # bytes per lane of the global accesses of that loop (or of the kernel)
    bytes_read: int
    bytes_written: int
    t_memory_us: float
    t_issue_us: float
    overlapped: bool
    t_kernel_us: float
    t_mufu_us: float = 0.0  # the special-function pipe's time (exp2, log2, reciprocal): model docstring
    # the memory latency's share: t_memory's where the loads in flight cannot cover it (else 0), or the one-block
    # chain's waits (no second resident block), whichever set t_kernel
    t_latency_us: float = 0.0

    @property
    def instructions_per_element(self) -> float | None:
        if not self.elements_per_warp_iteration:
            return None
        return self.loop_instructions / self.elements_per_warp_iteration


def _mufu(instructions) -> int:
    return sum(1 for i in instructions if i.kind == "special fn")


def _per_loop_trips(function: Function, trips: list) -> dict[int, list[float]]:
    """For each loop (by id): the trip counts of it and its enclosing loops, from predict_kernel's ``trips`` (a
    tuple entry of depth k is indexed by the position, among the depth-k loops, of the loop of depth k concerned)."""
    position: dict[int, int] = {}  # id -> its index among the loops of its depth, in SASS order
    seen: dict[int, int] = {}
    for loop in function.loops:
        position[id(loop)] = seen.get(loop.depth, 0)
        seen[loop.depth] = position[id(loop)] + 1
    result = {}
    for loop in function.loops:
        counts = []
        for depth, entry in enumerate(trips[: loop.depth + 1]):
            if isinstance(entry, tuple):
                at = (
                    loop
                    if depth == loop.depth
                    else next(
                        o for o in function.loops if o.depth == depth and o.start <= loop.start and loop.end <= o.end
                    )
                )
                entry = entry[min(position[id(at)], len(entry) - 1)]
            counts.append(entry)
        result[id(loop)] = counts or [1]
    return result


def predict_kernel(
    card: Card,
    function: Function,
    name: str,
    grid: tuple[int, int, int],
    warps: int,
    shared: int,
    trips: list[int],
    elements_per_iteration: int,
    bytes_read: int,
    bytes_written: int,
) -> KernelPrediction:
    """``trips[d]``: iterations of the loops at nesting depth d per entry of their enclosing loop (a loop absent
    from ``trips`` counts once), or a tuple of them for the loops of depth d in SASS order (e.g. a loop that one
    program of many runs: its average per program, ~0); ``elements_per_iteration``: elements one program handles
    per iteration of its innermost loop (per program when it has none)."""
    programs = math.prod(grid)
    shared = max(shared, function.shared)
    occ = occupancy(card, function, warps, shared, programs)
    outside = function.outside_loops()
    executed, executed_mufu = len(outside), _mufu(outside)
    trips = _per_loop_trips(function, trips)
    for loop in function.loops:
        executed += len(loop.own) * math.prod(trips[id(loop)])
        executed_mufu += _mufu(loop.own) * math.prod(trips[id(loop)])
    # the steady-state loop: the deepest that loads (a nested loop of index arithmetic alone, e.g. csrc's carry of
    # a token index into (h, b), is not where the warp waits on memory); of those, the one that issues the most (a
    # loop that runs ~0 times, e.g. the loss's reduction in one program of M, is not it, however long its body)
    loading = [loop for loop in function.loops if loop.load_bytes_per_warp()] or function.loops
    innermost = max(
        loading,
        key=lambda loop: (loop.depth, len(loop.own) * math.prod(trips[id(loop)]), len(loop.own)),
        default=None,
    )
    loop_instructions = len(innermost.own) if innermost else len(function.instructions)
    loads_in_flight = innermost.load_bytes_per_warp() if innermost else function.load_bytes_per_warp()
    widths = innermost.access_widths() if innermost else function.access_widths()

    per_sm = math.ceil(programs / card.sms)
    concurrent = max(1, min(occ.resident_blocks, per_sm))
    busy = min(1.0, concurrent * warps / card.schedulers_per_sm)  # fewer warps than schedulers leave some idle
    t_issue = per_sm * warps * executed / (card.schedulers_per_sm * card.clock_ghz * 1e9) / busy
    t_mufu = per_sm * warps * executed_mufu * 32 / (card.mufu_per_sm_per_clock * card.clock_ghz * 1e9) / busy
    t_compute = max(t_issue, t_mufu)
    roofline = (bytes_read + bytes_written) / card.copy_bytes_per_s
    in_flight = min(card.sms, programs) * concurrent * warps * max(loads_in_flight, 1)
    latency_bound = bytes_read * card.dram_latency_ns * 1e-9 / in_flight
    t_memory = max(roofline, latency_bound)
    overlapped = concurrent >= 2  # another resident block computes while one waits on memory
    # only loops that load wait on memory (a store-only loop, e.g. Liger's ignored-row path, does not)
    waiting = [loop for loop in function.loops if loop.load_bytes_per_warp()]
    iterations = sum(math.prod(trips[id(loop)]) for loop in waiting) or 1
    t_waits = 0.0 if overlapped else per_sm * iterations * card.dram_latency_ns * 1e-9
    t_chain = t_compute + t_waits
    t_kernel = max(t_memory, t_chain)
    t_latency = (latency_bound if latency_bound > roofline else 0.0) if t_memory >= t_chain else t_waits
    return KernelPrediction(
        name,
        grid,
        warps,
        function.registers,
        shared,
        occ,
        executed,
        loop_instructions,
        elements_per_iteration / warps,
        innermost.mix() if innermost else function.mix(),
        widths,
        bytes_read,
        bytes_written,
        t_memory * 1e6,
        t_issue * 1e6,
        overlapped,
        t_kernel * 1e6,
        t_mufu * 1e6,
        t_latency * 1e6,
    )


@dataclass
class OpPrediction:
    op: str
    shape: str
    dtype: str
    variant: str  # e.g. "CE, class ids"
    mode: str  # forward / backward / full
    backend: str  # triton / cuda
    kernels: list[KernelPrediction]
    design_bytes: int
    minimal_bytes: int
    launch_us: float
    note: str = ""
    extra_launches: int = 0  # launches of no kernel modelled here (a torch fill in a binding): launch cost only

    @property
    def predicted_us(self) -> float:
        return sum(k.t_kernel_us for k in self.kernels) + self.launch_us * (len(self.kernels) + self.extra_launches)

    def fraction_of_copy(self, card: Card, on: str = "design") -> float:
        nbytes = self.design_bytes if on == "design" else self.minimal_bytes
        return nbytes / (self.predicted_us * 1e-6) / card.copy_bytes_per_s

    @property
    def bound(self) -> str:
        """What the slowest launch is limited by: its launch, memory latency (loads in flight too few to cover it,
        or one resident block waiting on each load), memory bandwidth, or its instruction issue / MUFU pipe."""
        if not self.kernels:
            return "-"
        slowest = max(self.kernels, key=lambda k: k.t_kernel_us)
        compute = max(slowest.t_issue_us, slowest.t_mufu_us)
        if slowest.t_kernel_us < self.launch_us:
            return "launch"
        if slowest.t_latency_us > max(compute, slowest.t_kernel_us - slowest.t_latency_us):
            return "latency"
        if slowest.t_memory_us >= slowest.t_kernel_us:  # (not where a one-block chain of issue and waits outlasts it)
            return "memory"
        return "issue" if slowest.t_issue_us >= slowest.t_mufu_us else "mufu"
