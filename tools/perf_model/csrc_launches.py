"""The CUDA extension's launches at the benchmark shapes, from csrc's own launch code, without a GPU.

csrc's launchers (csrc/masksub_kernels.h) choose each kernel's grid, block and template instantiation (word size of
the row copies, NCHW or channels_last image kernel, the sort's block shape, ...). Rather than re-derive those rules,
the very launchers run on the host: the csrc sources are staged as the CUDA emulator stages them
(tools/cuda_emulator.py: kernel bodies compile on the host with csrc/emulator/emulator.h), but each launch is
rewritten into csrc_recorder/record_launches.h's recorder, which prints the launch instead of running it.
csrc_recorder/driver.cpp calls the launchers with fake device addresses whose alignment is the tensors' own. The
build (~6 s, the host compiler) is cached under build/perf_model/ by a hash of every source it compiles.

What is mirrored here instead of run: the bindings' (csrc/bindings_*.cpp) choice of launcher and arguments for each
op (the functions at the end of this file, one per binding the ops call). They are short and read off those files by
hand: nothing checks them against it automatically (a changed binding needs them changed); the launch configuration
itself always comes from the C++ (tests/test_perf_model.py checks a few of its branches through the recorder).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import cuda_emulator

ROOT = Path(__file__).resolve().parents[2]
RECORDER = Path(__file__).parent / "csrc_recorder"
CACHE = ROOT / "build" / "perf_model" / "csrc"
RECORD_CALL = "::masksub_record::launch<{kernel}>({config})"
FAKE_BASE = 1 << 40  # fake device addresses: this plus the tensor's byte offset (fresh allocations are 512-aligned)
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass
class Call:
    """One launcher call as a binding of csrc/bindings_*.cpp makes it: ``named`` in driver.cpp's argument order."""

    launcher: str
    dtype: str
    named: dict
    torch_launches: int = 0  # launches the binding makes through torch around it (a fill, a conversion)
    split_fills: int = 0  # more of them where the launcher splits rows over blocks (grid.y > 1): a zeroed workspace

    def launches_around(self, launches: list[CsrcLaunch]) -> int:
        """The torch launches around this call, given the launches the launcher made."""
        split = any(launch.grid[1] > 1 for launch in launches)
        return self.torch_launches + (self.split_fills if split else 0)

    def line(self) -> str:
        return " ".join([self.launcher, self.dtype, *(str(int(v)) for v in self.named.values())])


@dataclass
class CsrcLaunch:
    """One kernel launch the launcher made: the kernel as GCC spells it, grid, block, integer/pointer arguments."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list
    call: Call = field(repr=False)

    @property
    def name(self) -> str:
        """The kernel without namespaces or template arguments: ``copy_rows_kernel``."""
        return re.match(r"\w+", normalise(self.kernel)).group(0)

    @property
    def warps(self) -> int:
        return self.block[0] * self.block[1] * self.block[2] // 32


def normalise(name: str) -> str:
    """One spelling for GCC's ``__PRETTY_FUNCTION__`` and binutils' demangling of nvcc's symbol of the same kernel:
    no namespaces, no parameter list, no spaces, the integer types spelled alike."""
    name = re.sub(r"\((anonymous namespace)\)::|\{anonymous\}::|\b\w+::", "", name)
    name = name.removeprefix("void ").strip()
    name = re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", name)  # a demangled symbol's parameter list
    for long, short in (("short unsigned int", "unsigned short"), ("long int", "long"), ("long long", "long")):
        name = name.replace(long, short)
    return name.replace(" ", "")


def _digest() -> str:
    sources = sorted((ROOT / "csrc").rglob("*")) + sorted(RECORDER.iterdir())
    sources.append(Path(cuda_emulator.__file__))  # how the sources are staged (their launches rewritten)
    text = b"".join(p.read_bytes() for p in sources if p.is_file()) + RECORD_CALL.encode()
    return hashlib.sha256(text).hexdigest()[:16]


def build(cache: Path = CACHE) -> Path:
    """The recorder executable (built once per source digest)."""
    executable = cache / f"record-launches-{_digest()}"
    if executable.exists():
        return executable
    if cuda_emulator.cuda_include_dir() is None:
        raise RuntimeError("the launch recorder needs the CUDA toolkit's headers (cuda_fp16.h): none found")
    build_dir = cache / "recorder"
    staged = cuda_emulator.stage_sources(build_dir, RECORD_CALL)
    units = [u for u in staged if not u.name.startswith("bindings")]  # the bindings need torch
    command = [
        "c++",
        "-std=c++17",
        "-O0",  # nothing runs but the launchers: compile time is what matters
        "-Wno-unknown-pragmas",
        "-include",
        str(cuda_emulator.EMULATOR / "emulator.h"),
        "-include",
        str(RECORDER / "record_launches.h"),
        f"-I{cuda_emulator.EMULATOR}",
        f"-I{cuda_emulator.cuda_include_dir()}",
        f"-I{build_dir / 'src'}",
        str(RECORDER / "driver.cpp"),
        *map(str, units),
        "-o",
        str(executable),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the launch recorder failed:\n{result.stderr[-4000:]}")
    return executable


def record(calls: list[Call]) -> list[list[CsrcLaunch]]:
    """Per call, the launches csrc's launcher makes (one recorder process for all calls)."""
    stdin = "".join(call.line() + "\n" for call in calls)
    result = subprocess.run([str(build())], input=stdin, capture_output=True, text=True, check=True)
    launches: list[list[CsrcLaunch]] = [[]]
    for line in result.stdout.splitlines():
        entry, call = json.loads(line), calls[len(launches) - 1]
        if "status" in entry:  # the call's launches are complete
            if entry["status"] != 0:
                raise RuntimeError(f"{call.launcher} refused its arguments (cudaError {entry['status']}): {call}")
            launches.append([])
            continue
        kernel = entry["kernel"].split("Kernel = ", 1)[1].removesuffix("]")
        launches[-1].append(CsrcLaunch(kernel, tuple(entry["grid"]), tuple(entry["block"]), entry["args"], call))
    return launches[:-1]


# ------------------------------------------------------------------------------------------------------------
# the bindings' launcher calls, one per binding the ops' cuda implementations call (the same tensors as the
# Triton cases: meta tensors give the strides and byte offsets)
# ------------------------------------------------------------------------------------------------------------


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else FAKE_BASE + tensor.data_ptr()


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _empty(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def select_tokens(batch: int, num_tokens: int, num_keep: int, write_inverse: bool) -> Call:
    """bindings select_tokens: ids int64 [B, K] and (write_inverse) inv int32 [B, N], unordered."""
    ids, inv = _empty(batch, num_keep, dtype=torch.int64), _empty(batch, num_tokens, dtype=torch.int32)
    named = {"B": batch, "N": num_tokens, "K": num_keep, "ordered": 0, "ids": _address(ids)}
    return Call("select_tokens", "-", {**named, "inv": _address(inv) if write_inverse else 0, "removed": 0})


def grid_cell_mask(batch: int, num_cells: int, num_keep: int) -> Call:
    """bindings grid_cell_mask: the removed-cell bytes only."""
    removed = _address(_empty(batch, num_cells, dtype=torch.bool))
    return Call("select_tokens", "-", {"B": batch, "N": num_cells, "K": num_keep, "ordered": 0, "ids": 0, "inv": 0,
                                       "removed": removed})  # fmt: skip


def gather_tokens(x: torch.Tensor, num_keep: int, prefix: int) -> Call:
    """bindings gather_tokens (int64 ids, as select_tokens returns them) into a fresh contiguous y."""
    b, s, d = x.shape
    ids, y = _empty(b, num_keep, dtype=torch.int64), _empty(b, prefix + num_keep, d, dtype=x.dtype)
    return Call("gather_tokens", _dtype(x), {"x": _address(x), "sxb": x.stride(0), "sxs": x.stride(1),
        "ids": _address(ids), "sib": ids.stride(0), "sik": ids.stride(1), "y": _address(y), "B": b, "P": prefix,
        "N": s - prefix, "K": num_keep, "D": d})  # fmt: skip


def select_gather_tokens(x: torch.Tensor, num_keep: int, prefix: int) -> Call:
    """bindings select_gather_tokens (unordered, no position flags): fresh contiguous y, ids and inv."""
    b, s, d = x.shape
    y, ids = _empty(b, prefix + num_keep, d, dtype=x.dtype), _empty(b, num_keep, dtype=torch.int64)
    inv = _empty(b, s - prefix, dtype=torch.int32)
    return Call("select_gather_tokens", _dtype(x), {"x": _address(x), "sxb": x.stride(0), "sxs": x.stride(1),
        "y": _address(y), "ids": _address(ids), "inv": _address(inv), "B": b, "P": prefix, "N": s - prefix,
        "K": num_keep, "D": d, "ordered": 0})  # fmt: skip


def scatter_tokens(grad_y: torch.Tensor, num_tokens: int, prefix: int) -> Call:
    """bindings scatter_tokens from the select's inv [B, N] into a fresh contiguous grad_x."""
    b, rows, d = grad_y.shape
    inv, grad_x = _empty(b, num_tokens, dtype=torch.int32), _empty(b, prefix + num_tokens, d, dtype=grad_y.dtype)
    return Call("scatter_tokens", _dtype(grad_y), {"gy": _address(grad_y), "sgb": grad_y.stride(0),
        "sgs": grad_y.stride(1), "inv": _address(inv), "svb": inv.stride(0), "svn": inv.stride(1),
        "gx": _address(grad_x), "B": b, "P": prefix, "N": num_tokens, "K": rows - prefix, "D": d})  # fmt: skip


def mask_image_grid(images: torch.Tensor, cell: int) -> Call:
    """bindings mask_image_grid: out = empty_like(images), the input's layout."""
    out, (b, c, h, w) = torch.empty_like(images), images.shape
    cells = _empty(b, h // cell, w // cell, dtype=torch.bool)
    named = {"x": _address(images), **{f"x{i}": s for i, s in enumerate(images.stride())}, "y": _address(out)}
    named.update({f"y{i}": s for i, s in enumerate(out.stride())})
    return Call("mask_image_grid", _dtype(images), {**named, "cells": _address(cells), "B": b, "C": c, "H": h,
                                                    "W": w, "S": cell})  # fmt: skip


def mask_image_grid_random(images: torch.Tensor, cell: int, num_keep: int) -> Call:
    """bindings mask_image_grid_random: out = empty_like(images), a fresh bool cell mask, an int seed."""
    call = mask_image_grid(images, cell)
    return Call("mask_image_grid_random", call.dtype, {**call.named, "num_keep": num_keep})


def mask_tokens_grid_forward(tokens: torch.Tensor, cell: int) -> Call:
    """bindings mask_tokens_grid_forward into a fresh contiguous out."""
    b, h, w, c = tokens.shape
    token, cells, out = (
        _empty(c, dtype=tokens.dtype),
        _empty(b, h // cell, w // cell, dtype=torch.bool),
        _empty(b, h, w, c, dtype=tokens.dtype),
    )
    return Call("mask_tokens_grid_forward", _dtype(tokens), {"tokens": _address(tokens), "sb": tokens.stride(0),
        "sh": tokens.stride(1), "sw": tokens.stride(2), "mask_token": _address(token), "cells": _address(cells),
        "out": _address(out), "B": b, "H": h, "W": w, "C": c, "S": cell})  # fmt: skip


def mask_tokens_grid_random(tokens: torch.Tensor, cell: int, num_keep: int) -> Call:
    """bindings mask_tokens_grid_random: a fresh contiguous out and bool cell mask, an int seed."""
    call = mask_tokens_grid_forward(tokens, cell)
    return Call("mask_tokens_grid_random", call.dtype, {**call.named, "num_keep": num_keep})


def mask_tokens_grid_backward(grad: torch.Tensor, cell: int) -> Call:
    """bindings mask_tokens_grid_backward, both gradients wanted (the partials workspace fp32)."""
    b, h, w, c = grad.shape
    cells, gt, gm = _empty(b, h // cell, w // cell, dtype=torch.bool), torch.empty_like(grad), _empty(c)
    return Call("mask_tokens_grid_backward", _dtype(grad), {"grad": _address(grad), "sb": grad.stride(0),
        "sh": grad.stride(1), "sw": grad.stride(2), "cells": _address(cells), "grad_tokens": _address(gt),
        "grad_mask": _address(gm), "partials": FAKE_BASE, "B": b, "H": h, "W": w, "C": c, "S": cell})  # fmt: skip


# TargetKind of masksub_kernels.h, by the target's dtype
TARGET_KINDS = {"int64": 1, "int32": 2, "float32": 3, "float16": 4, "bfloat16": 5, "float64": 6}


def _problem(z: torch.Tensor, sub: torch.Tensor, target: torch.Tensor, bce: bool) -> dict:
    named = {"logits": _address(z), "rows": z.shape[0], "classes": z.shape[1], "stride_logits": z.stride(0)}
    named.update({"sub": _address(sub), "stride_sub": sub.stride(0), "target": _address(target)})
    return {**named, "stride_target": target.stride(0), "target_kind": TARGET_KINDS[_dtype(target)], "bce": int(bce)}


def masksub_loss_forward(z: torch.Tensor, sub: torch.Tensor, target: torch.Tensor, bce: bool) -> Call:
    """bindings masksub_loss_forward: at::empty of the fp32 [9, M] output (the kernel writes all of it), then the
    kernel; where the launcher splits rows (masksub_loss_forward_splits > 1) also an at::empty workspace and
    at::zeros int32 tickets (one fill launch)."""
    out = _address(_empty(9, z.shape[0]))
    named = {**_problem(z, sub, target, bce), "out": out, "workspace": FAKE_BASE, "tickets": FAKE_BASE}
    return Call("masksub_loss_forward", _dtype(z), named, split_fills=1)


def masksub_loss_backward(z: torch.Tensor, sub: torch.Tensor, target: torch.Tensor, bce: bool) -> Call:
    """bindings masksub_loss_backward, both gradients wanted (fp32 row gradients: no conversion launch)."""
    m = z.shape[0]
    grads = _empty(2, m)
    named = {**_problem(z, sub, target, bce), "out": _address(_empty(9, m)), "gm": _address(grads[0]), "sgm": 1}
    named.update({"gs": _address(grads[1]), "sgs": 1, "dz": _address(torch.empty_like(z))})
    return Call("masksub_loss_backward", _dtype(z), {**named, "ds": _address(torch.empty_like(z))})


def masksub_loss_reduced_forward(z: torch.Tensor, sub: torch.Tensor, target: torch.Tensor, bce: bool) -> Call:
    """bindings masksub_loss_reduced_forward ('mean'): at::empty of out [9, M], reduced [4] and d [1], then the
    kernel (the reduction in its launch); at::zeros int32 tickets, one per row where the launcher splits rows and
    the grid's: one fill launch always."""
    m = z.shape[0]
    reduced, d = _empty(4), _empty(1)
    named = {**_problem(z, sub, target, bce), "out": _address(_empty(9, m)), "workspace": FAKE_BASE}
    named.update({"tickets": FAKE_BASE, "reduced": _address(reduced), "d": _address(d), "ticket": FAKE_BASE})
    return Call("masksub_loss_reduced_forward", _dtype(z), named, torch_launches=1)


def masksub_loss_reduced_backward(z: torch.Tensor, sub: torch.Tensor, target: torch.Tensor, bce: bool) -> Call:
    """bindings masksub_loss_reduced_backward, both gradients wanted (an fp32 gradient [4]: no conversion launch);
    each block computes its row gradients from it and d."""
    m, grad = z.shape[0], _empty(4)
    named = {**_problem(z, sub, target, bce), "out": _address(_empty(9, m)), "gm": _address(grad), "sgm": 1}
    named.update({"gs": _address(grad), "sgs": 1, "dz": _address(torch.empty_like(z))})
    named.update({"ds": _address(torch.empty_like(z)), "d": _address(_empty(1))})
    return Call("masksub_loss_reduced_backward", _dtype(z), named)
