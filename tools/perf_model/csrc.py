"""The CUDA extension's kernels (csrc/) in the model: their sm_90a code (the built extension's, or compiled as
setup.py builds it), their SASS read with sass.py, their launches recorded from csrc's own launchers
(csrc_launches.py), predicted with the same model.py as the Triton kernels, and compared per op with the Triton rows.

Each csrc/*.cu has a cubin: the built extension's (masksub_kernels._C, where it is current with csrc/ and holds
sm_90a: extracted with cuobjdump, the very code it runs, as setup.py built it; their SASS was the same as compiled on
2026-12-08), else its own compile (``nvcc -cubin -arch=sm_90a`` with tools/check_spills.py's flags, which are
setup.py's plus those torch's BuildExtension adds; ~60 s for all on 2 cores). Either is cached under
build/perf_model/csrc/ (by a hash of the library, or of csrc/ and the flags). A launch finds its function in the
cubin by name: the recorder's spelling of the instantiation and the demangled symbol, both normalised
(csrc_launches.normalise).

Limits, stated where the numbers are used: a loop body's branches are counted as if every path ran (sass.py), which
for csrc's loss kernels (one instance per variant: CE / BCE, target kind, sub term, T = 1) leaves the dense targets'
per-dtype load paths (one runs) and nvcc's duplicated scalar loops counted in full: an upper bound there;
``KERNELS`` below gives trip counts per loop as nvcc laid them out (a loop the compiler unrolled 4x runs a quarter
of the iterations, its remainder is straight code of the enclosing loop).
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import check_spills, cuda_emulator
from ..cuda_home import find_cuda_home
from .csrc_launches import CACHE, ELEMENT_BYTES, CsrcLaunch, normalise, record
from .hardware import Card
from .model import KernelPrediction, OpPrediction, predict_kernel
from .sass import BIN, Function, read_cubin
from .workloads import MASK_RATIO, Case

ARCH = "90a"
_FUNCTIONS: dict[str, Function] = {}  # normalised kernel name -> its SASS, over every csrc cubin
CSRC = Path(__file__).resolve().parents[2] / "csrc"


def source_constant(file: str, name: str, folder: Path = CSRC) -> int:
    """The value of ``constexpr <int type> name = <integer>;`` in csrc/``file``: the kernels' tuning constants are
    read from the sources, not copied here (a copy drifted silently). ValueError where it is not such a line."""
    definition = rf"^\s*(?:static\s+)?constexpr\s+\w+\s+{re.escape(name)}\s*=\s*(\d+)\s*;"
    found = re.findall(definition, (folder / file).read_text(), re.MULTILINE)
    if len(found) != 1:
        raise ValueError(f"csrc/{file}: {len(found)} integer definitions of constexpr {name} (expected 1)")
    return int(found[0])


def radix_passes(folder: Path = CSRC) -> int:
    """The passes of token_select.cu's cub::BlockRadixSort over its whole keys: the key's bits over the radix bits
    (its 5th template argument, else cub's default RADIX_BITS = 4): 32 / 4 = 8."""
    sorts = re.findall(r"cub::BlockRadixSort<([^>]*)>", (folder / "token_select.cu").read_text())
    if len(sorts) != 1:
        raise ValueError(f"csrc/token_select.cu: {len(sorts)} cub::BlockRadixSort types (expected 1)")
    args = [a.strip() for a in sorts[0].split(",")]
    key_bits = re.fullmatch(r"u?int(\d+)_t", args[0])
    if key_bits is None or (len(args) > 4 and not args[4].isdigit()):
        raise ValueError(f"csrc/token_select.cu: cub::BlockRadixSort<{sorts[0]}>: key or radix bits not read")
    return math.ceil(int(key_bits.group(1)) / (int(args[4]) if len(args) > 4 else 4))


# the sources' constants that the trip counts and elements below rest on
LOSS_UNROLL = source_constant("masksub_loss.cuh", "kLossUnroll")  # vectors of each operand per thread per iteration
COPY_THREADS = source_constant("row_copy.cuh", "kCopyThreads")
COPY_UNROLL = source_constant("row_copy.cuh", "kCopyUnroll")  # words per lane per iteration of the word loop
MASK_THREADS = source_constant("grid_mask.cu", "kMaskThreads")
MASK_UNROLL = source_constant("grid_mask.cu", "kMaskUnroll")  # rows a thread loads before storing them
RADIX_PASSES = radix_passes()  # token_select.cu's sort over the 32-bit draws


def missing() -> str | None:
    """Why the csrc rows cannot be predicted here (no nvcc, no host compiler or CUDA headers for the recorder)."""
    if find_cuda_home() is None:
        return "no CUDA toolkit (nvcc) found"
    if shutil.which("c++") is None or cuda_emulator.cuda_include_dir() is None:
        return "the launch recorder needs a host C++ compiler and the CUDA toolkit's headers"
    return None


def built_cubins(cache: Path = CACHE) -> list[Path] | None:
    """The built extension's sm_90a cubin of each csrc/*.cu, or None where there is none to read (not built, stale,
    built without sm_90a)."""
    library = check_spills.built_extension()
    if library is None or check_spills._package_extension_stale() is not None:
        return None
    folder = cache / f"built-{hashlib.sha256(library.read_bytes()).hexdigest()[:16]}"
    if not folder.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache))  # then renamed: another process may read the cache
        command = [str(BIN / "cuobjdump"), "-xelf", "all", str(library)]
        subprocess.run(command, cwd=staging, check=True, capture_output=True)
        for other in staging.glob("*.cubin"):
            if not other.name.endswith(f".sm_{ARCH}.cubin"):
                other.unlink()  # (the other archs' cubins: not modelled)
        try:
            staging.rename(folder)
        except OSError:  # another process extracted it first
            shutil.rmtree(staging)
    cubins = [folder / f"{source.stem}.sm_{ARCH}.cubin" for source in sorted(check_spills.CSRC.glob("*.cu"))]
    return cubins if all(cubin.is_file() for cubin in cubins) else None


def compile_cubins(cache: Path = CACHE) -> list[Path]:
    """One sm_90a cubin per csrc/*.cu: the built extension's where current (built_cubins), else compiled (cached by
    the sources' and flags' hash)."""
    built = built_cubins(cache)
    if built is not None:
        return built
    home = find_cuda_home()
    if home is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found: the csrc kernels cannot be compiled")
    sources = sorted(check_spills.CSRC.glob("*.cu"))
    headers = sorted(check_spills.CSRC.glob("*.cuh")) + sorted(check_spills.CSRC.glob("*.h"))
    flags = [f"-arch=sm_{ARCH}", *check_spills.NVCC_FLAGS, f"-I{check_spills.CSRC}"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources + headers) + " ".join(flags).encode())
    cubins = [cache / f"{source.stem}-{digest.hexdigest()[:16]}.cubin" for source in sources]
    missing = [(source, cubin) for source, cubin in zip(sources, cubins) if not cubin.exists()]
    cache.mkdir(parents=True, exist_ok=True)
    running = [
        subprocess.Popen([str(home / "bin" / "nvcc"), "-cubin", *flags, str(s), "-o", str(c)], stderr=subprocess.PIPE)
        for s, c in missing
    ]
    for process in running:
        if process.wait() != 0:
            raise RuntimeError(f"nvcc failed: {process.args}\n{process.stderr.read().decode()[-4000:]}")
    return cubins


def functions() -> dict[str, Function]:
    """Every csrc kernel's SASS by normalised name (compiled and parsed once per process)."""
    if not _FUNCTIONS:
        parsed = [f for cubin in compile_cubins() for f in read_cubin(cubin)]
        records = [{"symbol": f.name, "name": f.name} for f in parsed]
        check_spills.demangle(records, find_cuda_home())
        _FUNCTIONS.update({normalise(r["name"]): f for r, f in zip(records, parsed)})
    return _FUNCTIONS


# ------------------------------------------------------------------------------------------------------------
# Per kernel: (trips per loop depth, elements per program per innermost iteration, bytes read, bytes written),
# from the launcher's arguments (launch.call.named) and the kernel's own (launch.args, in its parameter order)
# ------------------------------------------------------------------------------------------------------------


def _copy_rows(launch: CsrcLaunch) -> tuple:
    # args: dst, total_rows, words_per_row, lanes_log2, source. A group of `lanes` threads per row, kCopyUnroll
    # words per lane per iteration of the word loop (the source's unroll: one SASS loop of 4 loads, 4 stores)
    _, rows, words, lanes_log2, _ = launch.args
    lanes, per_block = 1 << lanes_log2, COPY_THREADS >> lanes_log2
    a, e = launch.call.named, ELEMENT_BYTES[launch.call.dtype]
    token_rows = ("gather_tokens", "scatter_tokens", "select_gather_tokens")
    word_elements = a.get("D") if launch.call.launcher in token_rows else a.get("C")
    word_elements /= words
    trips = [math.ceil(rows / (launch.grid[0] * per_block)), math.ceil(words / (COPY_UNROLL * lanes))]
    elements = per_block * min(words, COPY_UNROLL * lanes) * word_elements
    row_bytes = words * word_elements * e
    if launch.call.launcher in ("gather_tokens", "select_gather_tokens"):  # every output row copied; the ids read
        return trips, elements, rows * row_bytes + a["B"] * a["K"] * 8, rows * row_bytes
    if launch.call.launcher == "scatter_tokens":  # the prefix and kept rows read, the dropped written as zeros
        return trips, elements, a["B"] * (a["P"] + a["K"]) * row_bytes + a["B"] * a["N"] * 4, rows * row_bytes
    # token masks: the kept tokens read (forward: the mask token for the others, cached), one cell byte per token
    return trips, elements, int(rows * row_bytes * (1 - MASK_RATIO)) + rows, rows * row_bytes


def _mask_image(launch: CsrcLaunch) -> tuple:
    # args: x, xs, y, ys, cells, draw, fill, units, G_h, G_w, planes, S, row_words, cell_words, lanes. A grid-stride
    # loop over units (b, cell row); per unit (SELECT, <...,true>) the Lc Philox draws (one per thread), then threads
    # g < G_w count the keys before their cell (one warp in ceil(G_w / 32) of kWarps runs that loop: its trips are
    # the average over the block's 8 warps), then each thread's word columns, planes and rows, kMaskUnroll rows
    # of `groups` row groups per trip of the innermost loop
    *_, units, grid_h, grid_w, planes, cell, row_words, _, lanes = launch.args
    groups, per_word = MASK_THREADS // lanes, {"uint4": 16, "uint2": 8, "unsignedint": 4, "unsignedshort": 2}
    e = ELEMENT_BYTES[launch.call.dtype]
    word = per_word[normalise(launch.kernel).split("<")[1].split(",")[0]] // e  # elements per word
    unit_trips = math.ceil(units / launch.grid[0])
    columns = math.ceil(row_words / lanes)
    rows = math.ceil(cell / (MASK_UNROLL * groups))
    size = units * planes * cell * row_words * word * e
    if "true" in launch.kernel:
        cells = grid_h * grid_w
        # depth 1 in SASS order: the draws, the cell loop for Lc = 0 (never), the cell loop, the word columns;
        # depth 2: the count over the keys (unrolled 4x), the planes
        count = math.ceil(grid_w / 32) / 8
        trips = [unit_trips, (math.ceil(cells / 256), 0, count, columns), (cells / 4, planes), rows]
        written = size + units // grid_h * cells
    else:
        trips, written = [unit_trips, columns, planes, rows], size
    elements = MASK_UNROLL * groups * min(lanes, row_words) * word
    return trips, elements, int(size * (1 - MASK_RATIO)) + units * grid_w, written


def _select(launch: CsrcLaunch) -> tuple:
    # one block per sample: 8 radix passes of 4 bits over the 32-bit draws (cub's default), then a strided loop
    # over the N positions storing inv / removed; the kept ids (int64), inverse (int32), removed bytes written
    a = launch.call.named
    threads = launch.block[0]
    per_row = (8 * a["K"] if a["ids"] else 0) + (4 * a["N"] if a["inv"] else 0) + a["N"] * bool(a.get("removed"))
    written = a["B"] * per_row
    return [(RADIX_PASSES, math.ceil(a["N"] / threads)), 1], a["N"], 0, written


def _select_gather(launch: CsrcLaunch) -> tuple:
    # block (sample, split): the selection as _select's (8 radix passes; depth-0 loops after the first are the
    # divergent-warp fallback of cub's warp scan, laid out as a backward branch: once), its per-position stores
    # (depth-1 loops without a nested loop, ceil(N / threads) at most), then the row loop (the depth-1 loop holding
    # the word loop): rows P + K by groups of `lanes`, each a kCopyUnroll-word iteration of the word loop.
    # args: select args, x, stride_b, stride_s, y, prefix, words_per_row, split_words, lanes_log2
    a, threads = launch.call.named, launch.block[0]
    *_, words_per_row, split_words, lanes_log2 = launch.args
    lanes, rows_at_once = 1 << lanes_log2, threads >> lanes_log2
    rows = a["P"] + a["K"]
    function = functions()[normalise(launch.kernel)]
    trips = []
    for depth in range(max(loop.depth for loop in function.loops) + 1):
        at_depth = [loop for loop in function.loops if loop.depth == depth]
        if depth == 0:
            trips.append(tuple(RADIX_PASSES if i == 0 else 1 for i in range(len(at_depth))))
        elif depth == 1:
            holds_copy = [any(o.depth == 2 and loop.start <= o.start and o.end <= loop.end for o in function.loops)
                          for loop in at_depth]  # fmt: skip
            per_row = math.ceil(rows / rows_at_once)
            trips.append(tuple(per_row if copy else math.ceil(a["N"] / threads) for copy in holds_copy))
        else:
            trips.append(math.ceil(split_words / (COPY_UNROLL * lanes)))
    word_elements = a["D"] / words_per_row if words_per_row else 0
    elements = rows_at_once * min(split_words, COPY_UNROLL * lanes) * word_elements
    row_bytes = a["D"] * ELEMENT_BYTES[launch.call.dtype]
    written = a["B"] * (rows * row_bytes + 8 * a["K"] + 4 * a["N"])
    return trips, elements, a["B"] * rows * row_bytes, written


TARGET_BYTES = {1: 8, 2: 4, 3: 4, 4: 2, 5: 2, 6: 8}  # per TargetKind (csrc_launches.TARGET_KINDS)


def _loss(launch: CsrcLaunch) -> tuple:
    # one block per row (64-256 threads: loss_threads; each kernel an instance of its variant: CE / BCE, target
    # kind, sub, T = 1), or for few rows each row's vectors over `splits` blocks (grid (M, splits); the forward's
    # split instance: 128 threads). The vector loop first: kLossUnroll 16-byte vectors of each operand per thread per
    # iteration, from the row's first 16-byte boundary; then the scalar loop over the classes before that boundary
    # and after the last whole vector (one iteration where there are any, fewer than 256; split 0 alone), which nvcc
    # may duplicate per case (e.g. with or without a gradient): every such copy and every split is charged that
    # iteration, an upper bound. The forward's block merge is straight code (outside the loops), and so is its
    # split instance's merge of a row's split states, which only the row's last block runs: charged to every block,
    # an upper bound too. The reduced forward's reduction (reduce_rows) runs in the grid's last block alone: its
    # row loop (the one of __ldcg loads, LDG.E.STRONG) and the loops after it in SASS order (the last block's tail
    # that nvcc lays out behind a backward branch) count ~0 per block; its straight code, every block.
    a = launch.call.named
    m, c, e = a["rows"], a["classes"], ELEMENT_BYTES[launch.call.dtype]
    width = 16 // e
    aligned = (a["stride_logits"] * e) % 16 == 0 and c % width == 0
    threads, splits = launch.block[0], launch.grid[1]
    vector_trips = math.ceil(math.ceil((c // width) / splits) / (threads * LOSS_UNROLL))
    trips = [(vector_trips, 0 if aligned else 1)]
    elements = threads * LOSS_UNROLL * width
    target = m * TARGET_BYTES[a["target_kind"]] * (1 if a["target_kind"] <= 2 else c)  # class ids: one per row
    if launch.name == "loss_forward_kernel":
        loops = functions()[normalise(launch.kernel)].loops
        reduction = next((i for i, loop in enumerate(loops) if any("STRONG" in x.opcode for x in loop.own)), None)
        if reduction is not None:
            trips = [(vector_trips, *(trips[0][1] if i < reduction else 0 for i in range(1, len(loops))))]
        states = m * splits * 13 * 4 if splits > 1 else 0  # the split states (13 fp32), written and read; a ticket
        # reduced: the two loss rows (and the class ids) read back, [4], d and the grid's ticket written
        reduced = launch.call.launcher == "masksub_loss_reduced_forward"
        read = 2 * m * c * e + target + states + reduced * (8 * m + (target if a["target_kind"] <= 2 else 0))
        return trips, elements, read, 9 * m * 4 + states + (m * 4 if splits > 1 else 0) + 24 * reduced
    return trips, elements, 2 * m * c * e + target + 9 * m * 4 + 2 * m * 4, 2 * m * c * e


def _token_grad(launch: CsrcLaunch) -> tuple:
    # args: grad, gs, cells, grad_tokens, partials, units, units_per_part, parts, G_h, G_w, S, W, token_words,
    # chunk_words, lanes. Grid (parts, channel chunks); per part its units (cell rows), per unit each thread's
    # (token, channel word) columns, kMaskUnroll rows of `groups` row groups per trip; then the part's sums: threads
    # t < chunk_words (ceil(chunk_words / 32) of 8 warps) add the groups x lanes / chunk_words sums of their word,
    # one loop per element of the word (depth 1, after the unit loop)
    _, _, _, grad_tokens, _, units, per_part, parts, _, _, cell, w, token_words, chunk, lanes = launch.args
    groups, e, c = MASK_THREADS // lanes, ELEMENT_BYTES[launch.call.dtype], launch.call.named["C"]
    reduce = math.ceil(chunk / 32) / 8 * (groups * lanes // chunk - 1)
    trips = [
        math.ceil(parts / launch.grid[0]),
        (per_part, reduce),
        math.ceil(w * chunk / lanes),
        math.ceil(cell / MASK_UNROLL / groups),
    ]
    elements = MASK_UNROLL * groups * lanes * c // token_words
    size = units * cell * w * c * e
    read = size if grad_tokens else int(size * MASK_RATIO)
    return trips, elements, read + units * w, size * bool(grad_tokens) + parts * c * 4


def _sum_partials(launch: CsrcLaunch) -> tuple:
    # a block per channel (grid-stride): every part loaded at once (4 per thread), a butterfly, 8 warp sums in order
    _, parts, c, _ = launch.args
    return [math.ceil(c / launch.grid[0])], min(parts, 1024), parts * c * 4, c * ELEMENT_BYTES[launch.call.dtype]


KERNELS: dict[str, Callable[[CsrcLaunch], tuple]] = {
    "copy_rows_kernel": _copy_rows,
    "mask_image_kernel": _mask_image,
    "select_tokens_kernel": _select,
    "select_gather_kernel": _select_gather,
    "loss_forward_kernel": _loss,
    "loss_backward_kernel": _loss,
    "mask_token_grad_kernel": _token_grad,
    "sum_partials_kernel": _sum_partials,
}


def predict_launch(card: Card, launch: CsrcLaunch) -> KernelPrediction:
    """One csrc launch: its kernel's SASS, the recorded grid and block, the model."""
    function = functions()[normalise(launch.kernel)]
    trips, elements, bytes_read, bytes_written = KERNELS[launch.name](launch)
    return predict_kernel(
        card, function, normalise(launch.kernel), launch.grid, launch.warps, 0, trips, elements,
        int(bytes_read), int(bytes_written),
    )  # fmt: skip


def predict_cases(card: Card, cases: list[Case]) -> dict[int, OpPrediction]:
    """The cuda prediction of every case with csrc calls, by the case's index (one recorder run for them all)."""
    calls = [call for case in cases for call in case.cuda]
    launches = iter(record(calls))
    predictions = {}
    for index, case in enumerate(cases):
        per_call = [next(launches) for _ in case.cuda]
        if not case.cuda:
            continue
        kernels = [predict_launch(card, launch) for recorded in per_call for launch in recorded]
        torch_launches = sum(call.launches_around(recorded) for call, recorded in zip(case.cuda, per_call))
        design = sum(k.bytes_read + k.bytes_written for k in kernels)
        note = f"+{torch_launches} torch launch(es) in the binding" if torch_launches else ""
        prediction = OpPrediction(
            case.op, case.shape, case.dtype, case.variant, case.mode, "cuda", kernels, design, case.minimal_bytes,
            card.launch_us, note, extra_launches=torch_launches,
        )  # fmt: skip
        predictions[index] = prediction
    return predictions


def comparison(records: list[dict]) -> list[dict]:
    """Per op, shape, dtype, variant and mode: the cuda and Triton predicted times and their ratio (cuda / triton:
    above 1.10 misses the issue's 'within 10%', below 1 is faster)."""
    triton, rows = {}, []
    for r in records:
        key = (r["suite"], r["shape"], r["dtype"], r["variant"], r["mode"])
        if r["provider"] == "masksub[triton]":
            triton[key] = r
        elif r["provider"] == "masksub[cuda]" and key in triton:
            t = triton[key]
            slowest = max(r["kernels"], key=lambda k: k["kernel_us"])
            rows.append({
                "suite": key[0], "shape": key[1], "dtype": key[2], "variant": key[3], "mode": key[4],
                "cuda_us": r["predicted_us"], "triton_us": t["predicted_us"],
                "ratio": round(r["predicted_us"] / t["predicted_us"], 2),
                "cuda_bound": r["bound"], "cuda_launches": r["launches"] + r.get("extra_launches", 0),
                "triton_launches": t["launches"] + t.get("extra_launches", 0), "cuda_slowest": slowest["kernel"],
            })  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> list[str]:
    """The comparison as markdown lines (for predict.markdown)."""
    if not rows:
        return []
    within = sum(r["ratio"] <= 1.10 for r in rows)
    faster = sum(r["ratio"] < 1.0 for r in rows)
    lines = [
        "",
        "## CUDA extension (csrc) vs Triton, predicted (PREDICTIONS)",
        "",
        f"ratio = cuda / triton predicted time: {within} of {len(rows)} cases within 10% (ratio <= 1.10), "
        f"{faster} faster (< 1). The csrc loss kernels' issue time with probability targets is an "
        "upper bound (the load paths of every target dtype counted).",
        "",
        "| suite | shape | dtype | variant | mode | cuda us | triton us | ratio | cuda bound | launches cuda/triton "
        "| slowest cuda kernel |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['suite']} | {r['shape']} | {r['dtype']} | {r['variant'] or '-'} | {r['mode']} | {r['cuda_us']:.1f} "
            f"| {r['triton_us']:.1f} | {r['ratio']:.2f} | {r['cuda_bound']} | {r['cuda_launches']}/"
            f"{r['triton_launches']} | {r['cuda_slowest']} |"
        )
    return lines
