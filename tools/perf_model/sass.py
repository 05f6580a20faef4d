"""Reading a cubin's SASS: instructions, loops (backward branches) and each loop's instruction mix.

``cuobjdump`` and ``nvdisasm`` ship in Triton's wheel (triton/backends/nvidia/bin), so this needs no CUDA toolkit.
Every SASS instruction issues once per warp whatever its predicate, so a static count of the instructions in a
loop body is the warp-instructions that one iteration costs each warp; branches inside the body (rare in Triton
code, common in csrc tails) are counted as if every path ran: an upper bound.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import triton

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_FUNCTION = re.compile(r"Function : (\S+)")
_RESOURCES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_WIDTH = re.compile(r"\.(U8|S8|U16|S16|64|128)\b")

# opcode family -> what the issue budget cares about
CLASSES = {
    "global load": ("LDG", "LD"),
    "global store": ("STG", "ST", "RED", "ATOMG", "ATOM"),
    "shared": ("LDS", "STS", "ATOMS", "LDSM"),
    "sync": ("BAR", "MEMBAR", "WARPSYNC", "BSSY", "BSYNC", "DEPBAR"),
    "fp32": ("FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "FCHK", "FSWZADD"),
    "special fn": ("MUFU",),
    "convert": ("F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "PRMT", "HADD2", "HMUL2", "HFMA2"),
    "warp shuffle": ("SHFL", "VOTE", "REDUX", "MATCH"),
    "control": ("BRA", "EXIT", "CALL", "RET", "BREAK", "BPT", "YIELD"),
}


@dataclass
class Instruction:
    address: int
    opcode: str
    operands: str

    @property
    def family(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def kind(self) -> str:
        family = self.family
        for kind, families in CLASSES.items():
            if family in families:
                return kind
        return "integer/address"

    @property
    def global_bytes(self) -> int:
        """Bytes one lane moves for a global load/store (0 otherwise): .U16 -> 2, default 4, .64 -> 8, .128 -> 16."""
        if self.kind not in ("global load", "global store"):
            return 0
        match = _WIDTH.search(self.opcode)
        return {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}.get(match.group(1) if match else "", 4)


@dataclass
class Loop:
    start: int  # address of the branch target (first instruction of the body)
    end: int  # address of the backward branch
    instructions: list[Instruction]  # the body, nested loops' bodies included
    depth: int = 0
    own: list[Instruction] = field(default_factory=list)  # the body less any nested loop's body

    @property
    def innermost(self) -> bool:
        """No loop nested inside (its own instructions are all of its body)."""
        return len(self.own) == len(self.instructions)

    def mix(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.own))

    def load_bytes_per_warp(self) -> int:
        return 32 * sum(i.global_bytes for i in self.own if i.kind == "global load")

    def access_widths(self) -> list[int]:
        return sorted({i.global_bytes for i in self.own if i.global_bytes})


@dataclass
class Function:
    name: str
    instructions: list[Instruction]
    registers: int
    stack: int
    shared: int
    local: int
    loops: list[Loop]

    def outside_loops(self) -> list[Instruction]:
        inside = set()
        for loop in self.loops:
            inside.update(i.address for i in loop.instructions)
        return [i for i in self.instructions if i.address not in inside]

    def mix(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.instructions))

    def load_bytes_per_warp(self) -> int:
        return 32 * sum(i.global_bytes for i in self.instructions if i.kind == "global load")

    def access_widths(self) -> list[int]:
        return sorted({i.global_bytes for i in self.instructions if i.global_bytes})


def _tool(name: str, *args: str) -> str:
    result = subprocess.run([str(BIN / name), *args], capture_output=True, text=True, check=True)
    return result.stdout


def _loops(instructions: list[Instruction]) -> list[Loop]:
    """Each backward branch closes a loop over [its target, itself]; nesting by interval containment. A branch to
    itself (the trap after EXIT) is no loop."""
    loops = []
    for instruction in instructions:
        if instruction.family != "BRA":
            continue
        target = re.search(r"0x([0-9a-f]+)", instruction.operands)
        if target and int(target.group(1), 16) < instruction.address:
            start = int(target.group(1), 16)
            body = [i for i in instructions if start <= i.address <= instruction.address]
            loops.append(Loop(start, instruction.address, body))
    for loop in loops:
        parents = [o for o in loops if o is not loop and o.start <= loop.start and loop.end <= o.end]
        loop.depth = len(parents)
        children = [o for o in loops if o is not loop and loop.start <= o.start and o.end <= loop.end]
        nested = {i.address for child in children for i in child.instructions}
        loop.own = [i for i in loop.instructions if i.address not in nested]
    return sorted(loops, key=lambda loop: (loop.depth, loop.start))


def loop_layout_problems(function: Function) -> list[str]:
    """Where the loops found by address intervals might not be the real loops: two intervals that overlap without
    nesting, two back edges to one start (the instructions between them would be missed), a branch from outside a
    loop into its body past its start (code placed after the loop that jumps back in). Empty for ptxas's usual
    layouts; a caller counting per-loop instructions fails on any of these rather than miscount."""
    problems = []
    for a in function.loops:
        for b in function.loops:
            if a is b:
                continue
            if a.start == b.start and a.end != b.end:
                problems.append(f"two back edges to {a.start:#x}")
            elif a.start < b.start <= a.end < b.end:
                problems.append(f"loops {a.start:#x}-{a.end:#x} and {b.start:#x}-{b.end:#x} overlap")
    for branch in function.instructions:
        target = re.search(r"0x([0-9a-f]+)", branch.operands) if branch.family in ("BRA", "JMP") else None
        if target is None:
            continue
        address = int(target.group(1), 16)
        for loop in function.loops:
            outside = not loop.start <= branch.address <= loop.end
            if outside and loop.start < address <= loop.end:
                problems.append(f"{branch.address:#x} branches into loop {loop.start:#x}-{loop.end:#x} past its start")
    return sorted(set(problems))


def read_resources(cubin: Path) -> dict[str, tuple[int, int, int, int]]:
    """Each function of a cubin -> (registers, stack frame bytes, static shared bytes, local bytes) per thread."""
    return {
        m.group(1): tuple(map(int, m.groups()[1:]))
        for m in _RESOURCES.finditer(_tool("cuobjdump", "-res-usage", str(cubin)))
    }


def read_cubin(cubin: Path) -> list[Function]:
    """Every function of a cubin: its instructions (NOPs dropped: they never issue), resources and loops."""
    resources = read_resources(cubin)
    functions, current, body = [], None, []

    def close():
        if current is not None:
            registers, stack, shared, local = resources.get(current, (0, 0, 0, 0))
            functions.append(Function(current, body, registers, stack, shared, local, _loops(body)))

    for line in _tool("cuobjdump", "-sass", str(cubin)).splitlines():
        if match := _FUNCTION.search(line):
            close()
            current, body = match.group(1), []
        elif (match := _LINE.search(line)) and current is not None:
            opcode = match.group(3)
            if opcode != "NOP":
                body.append(Instruction(int(match.group(1), 16), opcode, match.group(4)))
    close()
    return functions
