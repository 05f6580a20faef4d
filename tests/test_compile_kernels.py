"""Every Triton kernel compiles for sm_80 and sm_90 without a GPU (what the CPU interpreter cannot check)."""

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    report = tmp_path / "compile.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.compile_kernels",
            "--arch",
            "80",
            "90",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],  # tools/ is a folder of the checkout
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert report.exists() and "FAILED" not in result.stdout
    records = json.loads(report.read_text())
    assert all(r["registers"] > 0 and r["stack_bytes"] >= 0 for r in records)
    spilling = sum(1 for r in records if r["stack_bytes"])  # listed, not failed (some kernels spill today)
    assert (f"{spilling} kernel/arch pairs spill registers" in result.stdout) == (spilling > 0), result.stdout[-2000:]


_OVER_THE_LIMIT = """
import json, sys
from tools import compile_kernels
from tools.kernel_specs import kernel_specs
# 2 KiB of shared memory
spec = "token_select.select[ordered=False,seed_ptr=False,keep=False,drop=False,no_inverse,block=256]"
name, kernel, signature, constexprs, options = next(s for s in kernel_specs() if s[0] == spec)
result = {}
for arch in (90, 80):
    shared = compile_kernels.compile_one(kernel, signature, constexprs, options, arch)["shared_bytes"]
    result[arch] = {"shared": shared, "errors": []}
    for limit in (shared, shared - 1):  # as if the card had exactly what the kernel needs, then a byte less
        compile_kernels.SHARED_LIMIT[arch] = limit
        try:
            compile_kernels.compile_one(kernel, signature, constexprs, options, arch)
            result[arch]["errors"].append(None)
        except ValueError as exc:
            result[arch]["errors"].append(str(exc))
json.dump(result, sys.stdout)
"""


def test_shared_memory_over_the_cards_limit_fails():
    # Triton compiles a kernel whatever shared memory it needs and refuses it only at its first launch on a GPU
    # (OutOfResources): the tool compares each kernel's shared memory with the target's limit itself
    result = _json_from_script(_OVER_THE_LIMIT)
    for arch, held in (("90", ""), ("80", " (sm_86 / sm_89's limit; sm_80 itself allows 166912)")):
        shared, errors = result[arch]["shared"], result[arch]["errors"]
        assert shared > 0
        message = f"needs {shared} bytes of shared memory; the sm_{arch} compile allows {shared - 1}{held}"
        assert errors == [None, message]


def _json_from_script(script: str):
    """What ``script`` prints as JSON, run by Python in the checkout without the interpreter (the real compiler)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


_ACCESS_WIDTHS = """
import json, re, sys, torch, triton
from masksub_kernels.ops import masksub_loss
from tools.perf_model.capture import recording, specialise, _target
result = {}
for dtype in (torch.bfloat16, torch.float32):
    z = torch.empty(64, 1000, dtype=dtype, device="meta")
    y = torch.empty(64, dtype=torch.int64, device="meta")
    with recording(masksub_loss) as launches:
        out = masksub_loss._forward_triton(z, z.clone(), y, False, 0.0, -100, 2.0, None)
        masksub_loss._backward_triton(out[0], out[1], out, z, z.clone(), y, False, 0.0, -100, 2.0, None)
    for launch in launches:
        signature, constexprs, attrs, options = specialise(launch)
        source = triton.compiler.ASTSource(launch.kernel, signature, constexprs, attrs)
        ptx = triton.compile(source, target=_target(), options=options).asm["ptx"]
        accesses = re.findall(r"(?:ld|st)[.]global[.a-z0-9]*", ptx)
        flags = {k: launch.bound[k] for k in ("GROUP", "ALIGNED", "EVEN")}
        result[f"{launch.name} {dtype}"] = {"flags": flags, "accesses": accesses}
json.dump(result, sys.stdout)
"""


def test_aligned_rows_load_16_byte_words():
    # C = 1000: rows of 16 bytes (2000 / 4000) whose stride is not the multiple of 16 elements Triton infers; the
    # launchers' ALIGNED / EVEN hints must make every access of the logits and gradients, the masked last block's
    # included, a 16-byte word (PTX as the JIT specialises the launch: tools/perf_model/capture.py). Only the label's
    # logit (one scalar per row) and the stats stay narrow.
    kernels = _json_from_script(_ACCESS_WIDTHS)
    assert len(kernels) == 4
    for name, info in kernels.items():
        assert info["flags"]["ALIGNED"] and info["flags"]["EVEN"], name
        accesses = info["accesses"]
        logits_word = "ld.global.v4.b32"
        narrow = [a for a in accesses if a in ("ld.global.b16", "st.global.b16")]
        assert accesses.count(logits_word) >= 4 and len(narrow) <= 1, (name, accesses)  # 1: the label's logit
        if "bwd" in name:
            assert "st.global.v4.b32" in accesses and not narrow, (name, accesses)


# A BERT step's chunk on meta tensors: its fp32 logits' buffer, the bf16 gradients over its rows, the labels, the
# row grads and the bias (the scripts below record its launches as the JIT specialises them)
_BERT_CHUNK = """
import json, sys, torch, triton
from masksub_kernels.ops import _linear_loss_chunks as chunks
from masksub_kernels.ops import _linear_loss_matmuls as matmuls
from masksub_kernels.ops import masksub_loss
from tools.perf_model.capture import recording, specialise, _target
rows, classes = 384, 30522  # a BERT step's chunk
buffer = torch.empty(2 * rows, chunks.aligned_classes(classes), device="meta")
logits, narrow = buffer[:, :classes], buffer.view(torch.bfloat16)[:, :classes]
y = torch.empty(rows, dtype=torch.int64, device="meta")
g, bias = torch.empty(rows, device="meta"), torch.empty(classes, dtype=torch.bfloat16, device="meta")
"""

_OVER_ROWS = (
    _BERT_CHUNK
    + """
result = {}
for over_rows in (True, False):  # False: the same buffers without the kernel's barrier (what the test must catch)
    with recording(masksub_loss) as launches:
        masksub_loss._backward_triton(g, g, torch.empty(9, rows, device="meta"), logits[:rows], logits[rows:], y,
                                      False, 0.0, -100, 1.0, None, into=(narrow[:rows], narrow[rows:]), bias=bias,
                                      over_rows=over_rows)
    (launch,) = launches
    signature, constexprs, attrs, options = specialise(launch)
    asm = triton.compile(triton.compiler.ASTSource(launch.kernel, signature, constexprs, attrs), target=_target(),
                         options=options).asm
    result[str(over_rows)] = {"grid": list(launch.grid), "split": launch.bound["SPLIT"],
                              **{ir: [line.strip() for line in asm[ir].splitlines()] for ir in ("ttgir", "ptx")}}
json.dump(result, sys.stdout)
"""
)

PTX = {"load": "ld.global", "store": "st.global", "barrier": "bar.sync"}
TTGIR = {"load": "tt.load", "store": "tt.store", "barrier": ("ttg.barrier", "gpu.barrier")}  # Triton 3.8, earlier


def test_gradients_over_the_logits_rows_store_behind_a_barrier():
    # the fused-linear op's chunks write bf16 dz, ds over their fp32 logits' rows (ops/_masksub_loss_blocks.py,
    # OVER_ROWS): gradient c lands on logit c / 2, which another warp may have loaded. As the JIT specialises a BERT
    # chunk's launch: one program per row; in the kernel's TTGIR the barrier the kernel asks for sits between its
    # loads and its stores; in the PTX every global store comes after a bar.sync that comes after the last global
    # load before it, the masked last block's included (a GPU's order, which the interpreter, one program at a time
    # with whole blocks, cannot show). Triton's own layout conversion also puts a bar.sync before the stores: the
    # kernel's barrier is what guarantees the order whatever Triton's layouts, so the TTGIR is checked without it too
    kernels = _json_from_script(_OVER_ROWS)
    kernel = kernels["True"]
    assert kernel["grid"][1] == 1 and not kernel["split"]
    for ir, names in (("ttgir", TTGIR), ("ptx", PTX)):
        lines = kernel[ir]
        assert any(_op(line).startswith(names["store"]) for line in lines), ir
        assert not _stores_before_a_barrier(lines, **names), ir
    without = kernels["False"]["ttgir"]
    assert _stores_before_a_barrier(without, **TTGIR), "the TTGIR check passes without the kernel's barrier"
    # the loads it sees before the barrier are the blocks' (tensors of logits), not only the row's scalars
    first_barrier = next(i for i, line in enumerate(map(_op, kernel["ttgir"])) if line.startswith(TTGIR["barrier"]))
    assert any(_op(line).startswith("tt.load") and "tensor<" in line for line in kernel["ttgir"][:first_barrier])
    # the masked last block's predicated stores are among those checked (C = 30522 is no multiple of the block)
    assert any(re.match(r"@!?%p\d+\s+st\.global", line) for line in kernel["ptx"]), "the masked block was not seen"
    # the whole blocks' bf16 gradients go out in 16-byte words: their rows hinted in their own elements (D_GROUP 8),
    # not in the fp32 logits' GROUP of 4, which promised 8 bytes (st.global.v2: twice the stores, helper-165)
    stores = [line for line in kernel["ptx"] if "st.global" in line]
    assert any("st.global.v4.b32" in line for line in stores) and not any("st.global.v2" in line for line in stores)
    # the check itself: a store right after the loads, or after a barrier that precedes the last load, is caught
    load, store, barrier = (
        "ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];",
        "@%p26 st.global.b16 [%rd2], {%rs5};",
        "bar.sync 0;",
    )
    check = functools.partial(_stores_before_a_barrier, **PTX)
    assert check([load, store]) == [1] and check([barrier, load, store]) == [2] and check([load, barrier, store]) == []
    assert check(["@!%p3 ld.global.b32 %r1, [%rd1];", store]) == [1]


_FWD_BWD = (
    _BERT_CHUNK
    + """
from masksub_kernels.ops import _loss_fwd_bwd as fused
stats, tickets = torch.empty(9, 4 * rows, device="meta"), torch.zeros(rows, dtype=torch.int32, device="meta")
stacked = torch.empty(2 * rows, chunks.padded_depth(768), dtype=torch.bfloat16, device="meta")[:, :768]
weight = torch.empty(classes, 768, dtype=torch.bfloat16, device="meta")
head = matmuls.class_parts(classes)[0].stop
products = (torch.empty(rows, 768, device="meta"), torch.empty(rows, 768, device="meta"))
kept = tuple(torch.empty(16384, 8, dtype=torch.bfloat16, device="meta") for _ in range(2))  # dW's tail columns
result = {}
for with_tail in (True, False):  # the chunk loop's launch (C's tail of 2 classes in it), and without the tail
    tail = fused.ClassTail(head, weight[head:], stacked[:rows], stacked[rows:], products, kept, rows)
    tail = tail if with_tail else None
    with recording(fused) as launches:
        fused.forward_backward_triton(g, g, logits[:rows], logits[rows:], y, False, 0.0, -100, 1.0, None,
                                      out=stats[:, rows : 2 * rows], tickets=tickets,
                                      into=(narrow[:rows], narrow[rows:]), bias=bias, over_rows=True, tail=tail)
    (launch,) = launches
    signature, constexprs, attrs, options = specialise(launch)
    asm = triton.compile(triton.compiler.ASTSource(launch.kernel, signature, constexprs, attrs), target=_target(),
                         options=options).asm
    result[str(with_tail)] = {"name": launch.name, "grid": list(launch.grid), "tail": launch.bound["TAIL_DW"],
                              **{ir: [line.strip() for line in asm[ir].splitlines()] for ir in ("ttgir", "ptx")}}
json.dump(result, sys.stdout)
"""
)


def test_the_chunks_one_launch_reads_its_stats_behind_a_barrier():
    # the fused-linear chunks' loss forward and backward in one program per row (ops/_loss_fwd_bwd.py): the
    # backward reads the row's stats that the forward stored, some by other threads; a barrier must sit between
    # those stores (the program's first) and the loads after them, in the TTGIR and the PTX, as the JIT specialises
    # a BERT chunk's launch (which takes the one launch: no class split)
    # a BERT chunk's launch, as the JIT specialises it (no class split), which also takes C's tail of 2 classes:
    # their logits stored before the forward reads the row, dH's share read from the gradients after the backward
    # stored them: a barrier each, 2 more than the same launch without the tail has in its TTGIR
    kernels = _json_from_script(_FWD_BWD)
    kernel, without = kernels["True"], kernels["False"]
    assert kernel["name"] == "_loss_fwd_bwd_kernel" and kernel["grid"][1:] in ([], [1], [1, 1]) and kernel["tail"]
    for launch in (kernel, without):
        for ir, names in (("ttgir", TTGIR), ("ptx", PTX)):
            assert not _loads_after_the_first_store_unfenced(launch[ir], **names), ir

    def barriers(lines):
        return sum(_op(line).startswith(TTGIR["barrier"]) for line in lines)

    assert barriers(kernel["ttgir"]) == barriers(without["ttgir"]) + 2
    # the tail's products and kept columns read the gradients that the backward stored last: after its last store
    # (the tail launch's stores: the tail logits' 2, the launch without the tail's, then the tail's own), the first
    # load has a barrier before it (helper-128: a barrier moved before the backward passed the checks above)
    for ir, names in (("ttgir", TTGIR), ("ptx", PTX)):
        stores = [i for i, line in enumerate(map(_op, kernel[ir])) if line.startswith(names["store"])]
        backward_stores = sum(_op(line).startswith(names["store"]) for line in without[ir])
        last_backward_store = stores[2 + backward_stores - 1]
        assert not _loads_after_the_first_store_unfenced(kernel[ir][last_backward_store:], **names), ir
    check = functools.partial(_loads_after_the_first_store_unfenced, **PTX)  # the check catches a missing barrier
    load, store, barrier = "ld.global.b32 %r1, [%rd1];", "@%p2 st.global.b32 [%rd2], {%r3};", "bar.sync 0;"
    assert check([load, store, load]) and check([store, store, load]) and not check([load, store, barrier, load])
    assert not check([load, load])  # no store: nothing to fence (the test's script would fail on the name first)


_ORDERS = """
import json, re, sys, triton
from tools import kernel_specs
from tools.perf_model.capture import _target
result = {}
for name, kernel, types, constants, options in kernel_specs.chunk_step_specs():
    if name not in ("fwd_bwd[bf16,tail]", "fwd_bwd[bf16,bce,tail]", "fwd_bwd[fp32,tail]"):
        continue
    options = dict(options)
    index = {n: i for i, n in enumerate(kernel.arg_names)}
    attrs = {(index[n],): [["tt.divisibility", 16]] for n in options.pop("divisible_by_16", ())}
    for descending in (False, True):
        signature = {**types, **{n: "constexpr" for n in constants}}
        source = triton.compiler.ASTSource(kernel, signature, {**constants, "DESCENDING": descending}, attrs)
        ptx = triton.compile(source, target=_target(), options=options).asm["ptx"]
        result[f"{name} {descending}"] = re.findall(r"(?:ld|st)[.]global[.a-z0-9]*", ptx)
json.dump(result, sys.stdout)
"""


def test_the_one_launch_descending_forward_keeps_its_16_byte_words():
    # the one launch's forward reads a row's whole blocks from the last down (ops/_loss_fwd_bwd.py's
    # FORWARD_DESCENDING): each block's start must still be provably a multiple of BLOCK_C past the row's first (its
    # 16-byte words), else the compiler splits the loads and only the PTX shows it (helper-195: the same values from
    # `at - BLOCK_C - (start - first)`, whose `at` has C's divisibility, 1 at C = 30522, took 6 of the 8 chunk
    # launches off ld.global.v4): as the chunk loop launches it (BERT's class ids with C's tail, BCE's around the
    # label block, fp32 gradients), the descending launch has exactly the ascending one's global accesses
    accesses = _json_from_script(_ORDERS)
    assert len(accesses) == 6
    for name in {key.rsplit(" ", 1)[0] for key in accesses}:
        ascending, descending = accesses[f"{name} False"], accesses[f"{name} True"]
        assert "ld.global.v4.b32" in ascending, name
        assert sorted(descending) == sorted(ascending), name


def _loads_after_the_first_store_unfenced(lines, load, store, barrier) -> bool:
    """Whether the first load after the first store has no barrier before it (after that store); False without
    a store or a load after it."""
    ops = list(map(_op, lines))
    first_store = next((i for i, line in enumerate(ops) if line.startswith(store)), None)
    if first_store is None:
        return False
    for line in ops[first_store + 1 :]:
        if line.startswith(barrier):
            return False
        if line.startswith(load):
            return True
    return False


def _op(line: str) -> str:
    """A PTX or TTGIR line from its operation on: without a predicate guard (@%p1: the same access, masked) or the
    value it defines (%x = )."""
    return re.sub(r"^(@!?%p\d+\s+|%[\w.#]+ = )", "", line)


def _stores_before_a_barrier(lines: list[str], load: str, store: str, barrier: str | tuple[str, ...]) -> list[int]:
    """The stores (their line numbers) with no barrier between them and the last load before them."""
    offending, last_load, fenced = [], None, False
    for i, line in enumerate(map(_op, lines)):
        if line.startswith(load):
            last_load, fenced = i, False
        elif line.startswith(barrier):
            fenced = True
        elif line.startswith(store) and last_load is not None and not fenced:
            offending.append(i)
    return offending


def test_spill_ratchet_fails_on_growth_and_new_spillers(tmp_path):
    # tools/spill_baseline.json holds each spilling pair's stack frame and its local loads / stores in innermost
    # loops and in any loop; the tool fails a pair over any of them (a pair not listed: over 0), only under the
    # baseline's Triton version and for its arches; an update never raises a figure unless allowed
    triton = pytest.importorskip("triton")
    from tools import compile_kernels, spill_ratchet

    def record(kernel, stack, inner, loops, arch="sm_90", status="ok"):
        spills = {"stack_bytes": stack, "spills_in_inner_loops": inner, "spills_in_loops": loops}
        return {"kernel": kernel, "arch": arch, "status": status, **spills}

    path = tmp_path / "spill_baseline.json"
    first = [record("a", 96, 0, 4), record("b", 0, 0, 0), record("c", 40, 3, 9, arch="sm_80")]
    assert spill_ratchet.update(first, [90, 80], allow_more=False, path=path) == []
    written = json.loads(path.read_text())
    assert (written["triton"], written["arches"]) == (triton.__version__, [80, 90])
    assert set(written["pairs"]) == {"sm_90 a", "sm_80 c"}
    same = [*first, record("d", 0, 0, 0)]
    assert spill_ratchet.compare(same, complete=True, path=path) == ([], [])
    better = [record("a", 32, 0, 4), record("c", 40, 1, 9, arch="sm_80")]
    failures, notes = spill_ratchet.compare(better, complete=True, path=path)
    assert failures == [] and notes == ["spilling less than the baseline (--update-spill-baseline tightens it): "
                                        "sm_90 a, sm_80 c"]  # fmt: skip
    worse = [record("a", 104, 1, 4), record("b", 8, 0, 0), record("c", 40, 3, 12, arch="sm_80"),
             record("e", 8, 0, 0, arch="sm_86"), record("f", 8, 0, 0, status="FAILED")]  # fmt: skip
    failures, notes = spill_ratchet.compare(worse, complete=False, path=path)
    assert failures == [
        "sm_90 a: stack_bytes 104 > 96 in the baseline",
        "sm_90 a: spills_in_inner_loops 1 > 0 in the baseline",
        "sm_90 b: stack_bytes 8 > 0 in the baseline",
        "sm_80 c: spills_in_loops 12 > 9 in the baseline",
    ]  # the failed compile is reported by the tool; sm_86 is no arch of the baseline's:
    assert notes == ["sm_86: not in the spill baseline (arches [80, 90]), not compared"]
    _, notes = spill_ratchet.compare([record("a", 96, 0, 4), record("x", 0, 0, 0, "sm_80")], complete=True, path=path)
    assert notes == ["in the baseline but not compiled (--update-spill-baseline drops them): sm_80 c"]
    assert spill_ratchet.compare([record("a", 96, 0, 4)], complete=True, path=path) == ([], [])  # sm_80 not compiled
    # an update may lower figures and drop pairs, not raise them unless allowed
    assert spill_ratchet.update(worse[:3], [80, 90], allow_more=False, path=path) == [
        "sm_90 a: stack_bytes 104 > 96", "sm_90 a: spills_in_inner_loops 1 > 0", "sm_90 b: stack_bytes 8 > 0",
        "sm_80 c: spills_in_loops 12 > 9",
    ]  # fmt: skip
    assert json.loads(path.read_text()) == written
    assert spill_ratchet.update(better, [80, 90], allow_more=False, path=path) == []
    assert spill_ratchet.update(worse[:3], [80, 90], allow_more=True, path=path) == []
    # another Triton version's register allocation: reported, not compared
    path.write_text(json.dumps({**written, "triton": "0.0.0"}))
    assert spill_ratchet.compare(worse, complete=True, path=path)[0] == []
    missing = tmp_path / "none.json"
    assert spill_ratchet.compare(same, complete=True, path=missing)[0] == [
        f"no baseline at {missing}: run with --update-spill-baseline"
    ]
    for partial in (["--only", "linear"], ["--arch", "90"]):  # a partial run must not rewrite the baseline
        with pytest.raises(SystemExit):
            compile_kernels.main([*partial, "--update-spill-baseline"])
    with pytest.raises(SystemExit):
        compile_kernels.main(["--allow-more-spills"])


def test_loops_that_address_intervals_cannot_tell_apart_are_refused():
    # the spill counts per loop rest on loops being address intervals (a back edge to its start); layouts where
    # they are not (overlap, two back edges to one start, a jump into a body past its start) are refused
    pytest.importorskip("triton")
    from tools.perf_model import sass

    def function(*branches):  # (address, target) of each branch; other addresses hold one FADD each
        ops = {a: ("BRA", f"0x{t:x}") for a, t in branches}
        code = [sass.Instruction(a, *ops.get(a, ("FADD", "R0, R0, R1"))) for a in range(0, 0x100, 0x10)]
        return sass.Function("k", code, 32, 8, 0, 8, sass._loops(code))

    assert sass.loop_layout_problems(function((0x30, 0x10), (0x80, 0x50), (0x90, 0x40))) == []  # nested, disjoint
    assert "loops 0x10-0x50 and 0x30-0x70 overlap" in sass.loop_layout_problems(function((0x50, 0x10), (0x70, 0x30)))
    assert "two back edges to 0x10" in sass.loop_layout_problems(function((0x30, 0x10), (0x50, 0x10)))
    assert sass.loop_layout_problems(function((0x50, 0x10), (0x00, 0x30))) == [
        "0x0 branches into loop 0x10-0x50 past its start"
    ]


_LINEAR_SPECS = """
import json, sys
from tools.kernel_specs import linear_masksub_loss_specs
json.dump({name: {"hinted": options["divisible_by_16"], "warps": options["num_warps"],
                  "blocks": [constexprs.get(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")],
                  "unit_strides": sorted(k for k, v in constexprs.items() if k.startswith("stride") and v == 1)}
           for name, kernel, signature, constexprs, options in linear_masksub_loss_specs()}, sys.stdout)
"""


def test_linear_specs_are_the_launchers_launches_as_the_jit_specialises_them():
    # the fused-linear kernels are compiled as their launchers launch them (recorded on meta tensors) and as the JIT
    # specialises those launches: at BERT's shape the hidden size and row strides carry the divisibility hints that
    # widen the loads (without them the kernels spill several times more), at D = 100 they do not
    specs = _json_from_script(_LINEAR_SPECS)
    assert len(specs) == 28 and len({name.split("[")[0] for name in specs}) == 4
    # probability targets: the forward's kernel only (their backward is the chunk loop's, since 2026-12-05)
    assert sorted(name.split("[")[0] for name in specs if "dense" in name) == ["fwd_kernel", "fwd_kernel"]
    # a head of C D >= 2^31 elements: the int64 offsets into W (WIDE_W), each kernel that reads W once
    assert sorted(name for name in specs if "wide_w" in name) == [
        "dh_kernel[bf16,wide_w]", "dw_kernel[bf16,wide_w]", "fwd_kernel[bf16,wide_w]",
    ]  # fmt: skip
    # a frozen weight (db alone) and a frozen bias: _dw_kernel's STORE_DW / STORE_DB variants, compiled too
    assert {"dw_kernel[bf16,no_store_dw]", "dw_kernel[bf16,no_store_db]"} <= set(specs)
    # dH's sum of its slabs: once per dtype, and unaligned
    sums = {name: specs.pop(name) for name in list(specs) if name.startswith("dh_sum_kernel")}
    kinds = ("bf16,unaligned", "bf16", "fp16", "fp32")
    assert sorted(sums) == [f"dh_sum_kernel[{t}]" for t in kinds]
    for name, spec in sums.items():
        assert ({"D", "stride_dh", "slab_ptr", "dh_ptr"} <= set(spec["hinted"])) == ("unaligned" not in name), name
    for name, spec in specs.items():
        aligned = "unaligned" not in name
        assert ({"D", "stride_h", "stride_w", "h_ptr", "w_ptr"} <= set(spec["hinted"])) == aligned, name
        assert "stride_gm" in spec["unit_strides"] or name.startswith("fwd"), name
        assert spec["warps"] == 8, name
        assert spec["blocks"] == ([64, 64, 16] if "[fp32" in name else [64, 128, 64]), name


_RECORDED_SPECS = """
import json, sys
from tools.kernel_specs import {specs}
specs = list({specs}())
assert len({{s[0] for s in specs}}) == len(specs), "two specs of one name"
json.dump({{name: {{"hinted": options["divisible_by_16"], "warps": options["num_warps"], "constants": constexprs}}
           for name, kernel, signature, constexprs, options in specs}}, sys.stdout)
"""
_CHUNK_STEP_SPECS = _RECORDED_SPECS.format(specs="chunk_step_specs")


def test_loss_specs_are_the_launchers_launches_as_the_jit_specialises_them():
    # masksub_loss's own launches are compiled as its launchers make them at realistic shapes (recorded on meta
    # tensors) and as the JIT specialises them: hand-made constants compiled variants without the 16-byte accesses
    # (helper-165). Each spec's name says its case; the configurations are the launchers' own
    specs = _json_from_script(_RECORDED_SPECS.format(specs="masksub_loss_specs"))
    assert len(specs) >= 50 and all(name.startswith(("fwd[", "bwd[")) for name in specs)
    ids = specs["bwd[bf16,ids]"]
    assert {"z_ptr", "s_ptr", "dz_ptr", "ds_ptr", "stride_z", "stride_s", "stride_d"} <= set(ids["hinted"])
    assert ids["warps"] == 16 and ids["constants"]["BLOCK_C"] == 4096 and ids["constants"]["D_GROUP"] == 8
    assert specs["fwd[bf16,ids]"]["warps"] == 8 and specs["fwd[bf16,bce,ids]"]["constants"]["BLOCK_C"] == 1024
    assert specs["fwd[bf16,bert]"]["constants"]["VEC"] == 8  # 30522 bf16: realigned rows
    imagenet = specs["bwd[bf16,imagenet]"]["constants"]  # 1000 bf16: 16-byte rows, hinted by the launcher
    assert imagenet["ALIGNED"] and imagenet["EVEN"] and "stride_z" not in specs["bwd[bf16,imagenet]"]["hinted"]
    assert all(specs[f"{k}[bf16,split,ids]"]["constants"]["SPLIT"] for k in ("fwd", "bwd"))
    chunk = specs["bwd[chunk,bf16]"]["constants"]  # bf16 gradients over the fp32 logits' rows
    assert chunk["OVER_ROWS"] and chunk["D_GROUP"] == 8 and chunk["GROUP"] == 4 and chunk["HAS_BIAS"]
    assert (
        specs["fwd[chunk,bf16,split]"]["constants"]["SPLIT"]
        and not specs["bwd[chunk,bf16,split]"]["constants"]["SPLIT"]
    )
    assert (
        specs["fwd[bf16,ids,reduced_mean]"]["constants"]["REDUCE"]
        and specs["bwd[bf16,ids,reduced_mean]"]["constants"]["REDUCED"]
    )
    assert specs["fwd[fp32,one_class]"]["constants"]["C"] == 1  # Triton's constant for an argument of 1


def test_chunk_step_specs_are_the_chunk_loops_launches_as_the_jit_specialises_them():
    # the chunks' one loss launch is compiled as the chunk loop makes it (recorded on meta tensors) and as the JIT
    # specialises it (helper-165: the merged hand-made constants carried no divisibility hints, so the compile
    # checks ran a kernel without the 16-byte accesses the launches get): the logits' and gradients' pointers and
    # row strides hinted, one program per row in the backward's warps (16 at BERT's C, the forward's 8 raised)
    specs = _json_from_script(_CHUNK_STEP_SPECS)
    assert sorted(specs) == sorted(
        ["fwd_bwd[bf16,tail]", "fwd_bwd[bf16]", "fwd_bwd[fp16,tail]", "fwd_bwd[bf16,dense,no_bias]",
         "fwd_bwd[bf16,bce,binarise,tail]", "fwd_bwd[bf16,bce,tail]", "fwd_bwd[fp32,tail]",
         "fwd_bwd[bf16,sub_only,tail]"]
    )  # fmt: skip
    for name, spec in specs.items():
        assert {"z_ptr", "s_ptr", "dz_ptr", "ds_ptr", "stride_z", "stride_s", "stride_d"} <= set(spec["hinted"]), name
        assert spec["constants"]["TAIL"] == name.endswith(",tail]"), name
        assert spec["constants"]["OVER_ROWS"] == ("fp32" not in name), name  # fp16 / bf16 over the fp32 rows
    assert specs["fwd_bwd[bf16,tail]"]["warps"] == 16 and specs["fwd_bwd[bf16,dense,no_bias]"]["warps"] == 4
    assert not specs["fwd_bwd[bf16,sub_only,tail]"]["constants"]["WRITE_DZ"]
    # BCE's forward block (1024 classes, 4 warps of its own) widened to a 16-byte word per thread of the 16 warps
    # where its rows are aligned (class ids), not with unaligned probability rows (words of one element)
    bce_ids, bce_probs = specs["fwd_bwd[bf16,bce,tail]"], specs["fwd_bwd[bf16,bce,binarise,tail]"]
    assert bce_ids["warps"] == 16 and bce_ids["constants"]["F_BLOCK_C"] == 2048
    assert bce_probs["warps"] == 16 and bce_probs["constants"]["F_BLOCK_C"] == 1024
    # the bf16 gradients' rows hinted in their own elements (D_GROUP: 16 bytes), the fp32 ones' in theirs
    assert specs["fwd_bwd[bf16,tail]"]["constants"]["D_GROUP"] == 8
    assert specs["fwd_bwd[fp32,tail]"]["constants"]["D_GROUP"] == 4


_SEEDED_KERNELS = """
import importlib, json, pkgutil, sys
import triton
import masksub_kernels.ops as ops
found = {}
for info in pkgutil.iter_modules(ops.__path__):
    module = importlib.import_module(f"masksub_kernels.ops.{info.name}")
    for name, value in vars(module).items():
        if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
            for param in value.params:
                if param.name == "seed":
                    found[f"{info.name}.{name}"] = bool(param.do_not_specialize)
json.dump(found, sys.stdout)
"""


def test_a_per_call_seed_never_specialises_a_kernel():
    # Triton compiles a variant of a kernel for an int argument equal to 1 or divisible by 16: a random seed per call
    # would compile the kernel again at the first such seed (one call in 16), ~1 s at a random training step. Every
    # launched kernel with a seed argument declares it do_not_specialize (helper-126's finding, 2026-12-04)
    found = _json_from_script(_SEEDED_KERNELS)
    assert len(found) >= 4 and all(found.values()), found


# helper-187: the ratchet's messages


def _record(kernel, stack, inner, loops, arch="sm_90", status="ok"):
    spills = {"stack_bytes": stack, "spills_in_inner_loops": inner, "spills_in_loops": loops}
    return {"kernel": kernel, "arch": arch, "status": status, **spills}


def test_spill_ratchet_a_pair_over_one_figure_and_under_another_is_no_better(tmp_path):
    # S12 (drop `not over and`: a failing pair also listed as "spilling less than the baseline")
    from tools import spill_ratchet

    path = tmp_path / "spill_baseline.json"
    assert spill_ratchet.update([_record("a", 96, 2, 4)], [90], allow_more=False, path=path) == []
    failures, notes = spill_ratchet.compare([_record("a", 104, 0, 4)], complete=True, path=path)
    assert failures == ["sm_90 a: stack_bytes 104 > 96 in the baseline"]
    assert notes == []


def test_spill_ratchet_a_partial_run_reports_no_stale_pairs(tmp_path):
    # S15 (`complete and stale` -> `stale`: a --only run would call every pair it skipped stale)
    from tools import spill_ratchet

    path = tmp_path / "spill_baseline.json"
    assert spill_ratchet.update([_record("a", 96, 0, 4)], [90], allow_more=False, path=path) == []
    assert spill_ratchet.compare([_record("b", 0, 0, 0)], complete=False, path=path) == ([], [])
    _, notes = spill_ratchet.compare([_record("b", 0, 0, 0)], complete=True, path=path)
    assert notes == ["in the baseline but not compiled (--update-spill-baseline drops them): sm_90 a"]


@pytest.mark.parametrize(("value", "status"), [("false", 0), ("1", 2)])
def test_compile_kernels_reads_triton_interpret_as_triton_does(value, status):
    # helper-187: "false" (off for Triton) was refused as interpreted; "1" is refused (nothing compiles there)
    env = {**os.environ, "TRITON_INTERPRET": value}
    command = [sys.executable, "-m", "tools.compile_kernels", "--only", "no kernel has this name", "--arch", "90"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == status, result.stderr[-2000:]
    assert ("unset TRITON_INTERPRET" in result.stderr) == (status == 2)
