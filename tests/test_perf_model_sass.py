"""The performance model's SASS parse, kernel model, floors and ncu parse, worked by hand (helper-190's mutation
audit of tools/perf_model/{sass, model, predict, floors, ncu}.py). Each test checks against a small hand-written
SASS listing / ncu CSV or figures worked by hand on a made-up card with round rates (the arithmetic in comments).
No kernel is compiled: cuobjdump's output is canned."""

import pytest

from tools.perf_model import floors, ncu, sass
from tools.perf_model.hardware import Card
from tools.perf_model.model import KernelPrediction, Occupancy, OpPrediction, occupancy, predict_kernel

# cuobjdump -res-usage / -sass as they print (the layout of a real sm_90a cubin's listing, instructions made up):
# an outer loop 0x10-0x70 (back edge @P1 BRA 0x10) around an inner loop 0x20-0x40 (@!P0 BRA 0x20), a NOP, and the
# trap after EXIT (BRA to itself: no loop).
RES_USAGE = """
Resource usage:
 Common:
  GLOBAL:0
 Function _k:
  REG:41 STACK:8 SHARED:1024 LOCAL:16 CONSTANT[0]:576 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
_SASS_LINES = [
    ("0000", "S2R R0, SR_TID.X"),
    ("0010", "LDG.E R2, desc[UR4][R6.64]"),
    ("0020", "LDG.E.128 R8, desc[UR4][R4.64]"),
    ("0030", "@!P2 FFMA R3, R8, R9, R3"),
    ("0040", "@!P0 BRA 0x20"),
    ("0050", "IADD3 R6, P3, R6, 0x100, RZ"),
    ("0060", "NOP"),
    ("0070", "IADD3 R7, R7, 0x1, RZ"),
    ("0080", "@P1 BRA 0x10"),
    ("0090", "STG.E.U16 desc[UR4][R6.64], R3"),
    ("00a0", "EXIT"),
    ("00b0", "BRA 0xb0"),
]
SASS = (
    "\n\tcode for sm_90a\n\t\tFunction : _k\n"
    '\t.headerflags\t@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"\n'
    + "".join(
        f"        /*{address}*/                   {text} ;{' ' * 20}/* 0x000fe20000000f00 */\n{' ' * 85}"
        "/* 0x000fe40000000800 */\n"
        for address, text in _SASS_LINES
    )
    + "\t\t..........\n"
)


@pytest.fixture
def function(monkeypatch):
    monkeypatch.setattr(sass, "_tool", lambda name, *args: RES_USAGE if "-res-usage" in args else SASS)
    (parsed,) = sass.read_cubin("k.cubin")
    return parsed


# ---------------------------------------------------------------------------------------------------------------
# sass.py
# ---------------------------------------------------------------------------------------------------------------


def test_a_listing_is_parsed_by_hand(function):
    # kills S01 (a '@!P' predicate no longer parsed: the line is dropped), S03 / S02 (.128 / default widths),
    # S04 (bytes per warp = 32 lanes x bytes per lane), S05 (the trap's BRA to itself made a loop), S06 (the back
    # edge left out of its loop's body), S07 (a loop's own instructions keep its nested loop's), S08 (NOPs never
    # issue), S09 (family = the opcode before its first '.'), S10 (-res-usage's fields in their order), S12 (depth)
    f = function
    assert (f.name, f.registers, f.stack, f.shared, f.local) == ("_k", 41, 8, 1024, 16)
    # 12 lines less the NOP; '@!P2 FFMA' and '@!P0 BRA' parsed with their opcodes
    assert [i.address for i in f.instructions] == [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x70, 0x80, 0x90, 0xA0, 0xB0]
    by_address = {i.address: i for i in f.instructions}
    assert (by_address[0x30].opcode, by_address[0x40].opcode, by_address[0x40].operands.strip()) == (
        "FFMA",
        "BRA",
        "0x20",
    )
    # bytes per lane: LDG.E 4 (no width suffix), LDG.E.128 16, STG.E.U16 2; families and kinds
    assert [(by_address[a].family, by_address[a].kind, by_address[a].global_bytes) for a in (0x10, 0x20, 0x90)] == [
        ("LDG", "global load", 4),
        ("LDG", "global load", 16),
        ("STG", "global store", 2),
    ]
    assert f.access_widths() == [2, 4, 16]
    assert f.load_bytes_per_warp() == 32 * (4 + 16)  # 640: stores are not loads
    # two loops (the trap at 0xb0 is none), sorted by depth: the outer 0x10-0x80 (7 instructions, its own 4: LDG.E,
    # IADD3, IADD3, BRA), the inner 0x20-0x40 (3, its back edge included)
    outer, inner = f.loops
    assert (outer.start, outer.end, outer.depth, len(outer.instructions)) == (0x10, 0x80, 0, 7)
    assert (inner.start, inner.end, inner.depth, len(inner.instructions)) == (0x20, 0x40, 1, 3)
    assert [i.address for i in outer.own] == [0x10, 0x50, 0x70, 0x80] and not outer.innermost
    assert [i.address for i in inner.own] == [0x20, 0x30, 0x40] and inner.innermost
    assert inner.mix() == {"global load": 1, "fp32": 1, "control": 1}
    assert (outer.load_bytes_per_warp(), inner.load_bytes_per_warp()) == (32 * 4, 32 * 16)  # 128, 512
    assert [i.address for i in f.outside_loops()] == [0x00, 0x90, 0xA0, 0xB0]
    assert sass.loop_layout_problems(f) == []


def test_a_branch_to_a_loops_start_from_outside_is_its_entry():
    # kills S11 (a jump to the first instruction of a loop's body, e.g. a guard skipping the preamble, enters the
    # loop as the fall-through does: only a jump past the start skips instructions the count assumes ran)
    ops = {0x00: ("BRA", "0x10"), 0x50: ("BRA", "0x10")}  # a forward branch to the start; the back edge
    code = [sass.Instruction(a, *ops.get(a, ("FADD", "R0, R0, R1"))) for a in range(0, 0x80, 0x10)]
    function = sass.Function("k", code, 32, 0, 0, 0, sass._loops(code))
    assert [(loop.start, loop.end) for loop in function.loops] == [(0x10, 0x50)]
    assert sass.loop_layout_problems(function) == []


# ---------------------------------------------------------------------------------------------------------------
# model.py
# ---------------------------------------------------------------------------------------------------------------

# 4 SMs at 1 GHz, 4 schedulers: 4e9 warp-instructions per second per SM; 1 TB/s; a 1000 ns (1e-6 s) round trip.
T = Card("T", sms=4, clock_ghz=1.0, copy_tbps=1.0, dram_latency_ns=1000.0, launch_us=1.0)


def _function(registers: int, shared: int = 0) -> sass.Function:
    return sass.Function("k", [], registers, 0, shared, 0, [])


def test_occupancy_by_hand():
    # kills M01 (registers allocated per warp by 256), M02 (x warps), M03, M04 (the 1 KB reserved per block)
    # 41 registers x 32 lanes = 1312 -> 1536 a warp; 4 warps = 6144: 65536 // 6144 = 10 blocks (1312: 12; x1: 42)
    # threads 2048 // 128 = 16; blocks 32
    occ = occupancy(T, _function(41), 4, 0, 80)
    assert (occ.resident_blocks, occ.limiter, occ.waves) == (10, "registers", 80 / (4 * 10))
    # 32 registers: 1024 a warp, 4 warps: 16 blocks; shared 38000 + 1024 reserved: 233472 // 39024 = 5 (5.98;
    # without the reserve 233472 // 38000 = 6)
    occ = occupancy(T, _function(32), 4, 38000, 80)
    assert (occ.resident_blocks, occ.limiter) == (5, "shared memory")
    # kills M03 (32 threads a warp): 24 registers = 768 a warp, 16 warps: 65536 // 12288 = 5; threads 2048 // 512 = 4
    occ = occupancy(T, _function(24), 16, 0, 80)
    assert (occ.resident_blocks, occ.limiter) == (4, "threads")


def test_a_nested_loop_kernel_by_hand(function):
    # the listing above: outside its loops S2R, STG, EXIT, trap = 4; the outer loop's own 4, trips 10; the inner's
    # 3, trips 10 x 1. kills M05 (the cubin's static shared memory counts), M06 (a loop's own instructions, not its
    # nested loop's again), M07 / S12 (the steady-state loop is the deepest that loads), M21 (elements per warp)
    k = predict_kernel(T, function, "_k", (8, 1, 1), 4, 0, [10, 1], 1024, 1_638_400, 0)
    assert k.shared == 1024  # max(launch's 0, the cubin's 1024)
    assert k.instructions_per_program == 4 + 4 * 10 + 3 * 10 * 1  # 74 (M06 / S07: 4 + 7 x 10 + 30 = 104)
    assert (k.loop_instructions, k.elements_per_warp_iteration) == (3, 1024 / 4)  # the inner loop, 256 a warp
    assert k.instructions_per_element == 3 / 256
    assert k.loop_mix == {"global load": 1, "fp32": 1, "control": 1} and k.access_widths == [16]
    # 2 programs an SM, both resident (10 fit): issue 2 x 4 warps x 74 / 4e9 = 0.148 us; in flight 4 SMs x 2 x 4
    # warps x 512 B = 16384 B: 1,638,400 B x 1e-6 s / 16384 = 100 us (the roofline: 1.64 us)
    assert k.t_issue_us == pytest.approx(0.148) and k.t_memory_us == pytest.approx(100.0)
    assert k.overlapped and k.t_kernel_us == pytest.approx(100.0)


def test_the_busiest_sm_and_its_resident_blocks_by_hand(function):
    # kills M08 (ceil(10 / 4) = 3 programs on the busiest SM, not 2), M09 (concurrent = min(resident, 3)), M11 (4
    # schedulers), M15 (the latency bound), M23 (ns -> s is 1e-9)
    # 41 registers, 2 warps: 3072 a block, 21 resident; concurrent 3; busy min(1, 3 x 2 / 4) = 1
    k = predict_kernel(T, function, "_k", (10, 1, 1), 2, 0, [10, 1], 256, 1_228_800, 0)
    assert k.occupancy.resident_blocks == 21
    assert k.t_issue_us == pytest.approx(3 * 2 * 74 / 4e9 * 1e6)  # 0.111 us
    # in flight 4 SMs x 3 blocks x 2 warps x 512 B = 12288 B: 1,228,800 B x 1e-6 s / 12288 = 100 us
    assert k.t_memory_us == pytest.approx(100.0) and k.t_kernel_us == pytest.approx(100.0)
    # the roofline 1,228,800 B / 1 TB/s = 1.2 us: the latency sets t_memory, 100 us of it
    assert k.t_latency_us == pytest.approx(100.0)


def _streaming_kernel(latency_ns: float):
    # a loop of one 16-byte load a lane on a 1 TB/s card of 4 SMs: 10 programs of 2 warps, 3e6 B read, 1e6 B written
    card = Card("T0", sms=4, clock_ghz=1.0, copy_tbps=1.0, dram_latency_ns=latency_ns, launch_us=1.0)
    code = [sass.Instruction(0x10 * i, op, "0x10" if op == "BRA" else "") for i, op in
            enumerate(["S2R", "LDG.E.128", "FFMA", "BRA", "EXIT"])]  # fmt: skip
    return predict_kernel(card, sass.Function("k", code, 32, 0, 0, 0, sass._loops(code)), "k", (10, 1, 1), 2, 0,
                          [10], 256, 3_000_000, 1_000_000)  # fmt: skip


def test_the_roofline_counts_bytes_read_and_written():
    # kills M13 (the roofline on the bytes read alone): no latency, 3e6 B read + 1e6 B written at 1 TB/s = 4 us
    k = _streaming_kernel(0.0)
    assert k.t_memory_us == pytest.approx(4.0) and k.t_kernel_us == pytest.approx(4.0) and k.t_latency_us == 0


def test_a_roofline_bound_kernel_has_no_latency_share():
    # the roofline test's kernel on a card with a 10 ns latency: 3 programs an SM, 2 warps, a 16-byte load a lane
    # (512 B a warp): in flight 4 SMs x 3 x 2 x 512 = 12288 B, 3e6 B x 10 ns / 12288 B = 2.44 us under the roofline's
    # 4 us: the bandwidth sets t_memory, so no latency share, and the op's bound is 'memory' (helper-195: with the
    # latency bound's 2.44 us counted as t_latency it read 'latency': 2.44 > 4 - 2.44)
    k = _streaming_kernel(10.0)
    assert k.overlapped and k.t_memory_us == pytest.approx(4.0) and k.t_kernel_us == pytest.approx(4.0)
    assert k.t_latency_us == 0
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", [k], 0, 0, 0.0).bound == "memory"


def _two_loops() -> sass.Function:
    # S2R; loop 0x10-0x40: LDG.E.128, FFMA, IADD3, BRA; loop 0x50-0x70: LDG.E.U16, FFMA, BRA; EXIT (32 registers)
    ops = ["S2R", "LDG.E.128", "FFMA", "IADD3", "BRA 0x10", "LDG.E.U16", "FFMA", "BRA 0x50", "EXIT"]
    code = [sass.Instruction(0x10 * i, op.split()[0], op.split()[1] if " " in op else "") for i, op in enumerate(ops)]
    return sass.Function("k", code, 32, 0, 0, 0, sass._loops(code))


def test_one_block_an_sm_waits_a_round_trip_per_iteration_by_hand():
    # kills M10 (fewer warps than schedulers leave some idle), M14 (in flight on min(SMs, programs) SMs), M16 (one
    # block an SM overlaps nothing), M17 (iterations of every loading loop summed), M18 (the chain's latency),
    # M22 (a tuple of trips: one per loop of that depth, in SASS order)
    # 2 programs on 4 SMs, 1 warp: 1 an SM, busy min(1, 1/4) = 0.25; trips 100 and 50:
    # issue 1 x 1 x (2 + 4 x 100 + 3 x 50 = 552) / 4e9 / 0.25 = 0.552 us
    k = predict_kernel(T, _two_loops(), "k", (2, 1, 1), 1, 0, [(100, 50)], 32, 51_200, 0)
    assert k.instructions_per_program == 552 and k.loop_instructions == 4  # the first loop issues 400 of them
    assert k.t_issue_us == pytest.approx(0.552)
    # in flight: 2 SMs x 1 block x 1 warp x 512 B (the first loop's LDG.E.128) = 1024 B: 51,200 B x 1e-6 / 1024
    assert k.t_memory_us == pytest.approx(50.0)
    # not overlapped: 0.552 us + 1 program x (100 + 50) iterations x 1 us = 150.552 us
    assert not k.overlapped and k.t_kernel_us == pytest.approx(150.552)
    assert k.t_latency_us == pytest.approx(150.0)  # the chain's waits, not the 50 us of t_memory


def _kernel(t_kernel: float, t_memory: float, t_issue: float, t_mufu: float, read: int, written: int,
            t_latency: float = 0.0):  # fmt: skip
    return KernelPrediction("k", (1, 1, 1), 4, 32, 0, Occupancy(1, "blocks", 1.0), 1, 1, 1.0, {}, [4], read,
                            written, t_memory, t_issue, True, t_kernel, t_mufu, t_latency)  # fmt: skip


def test_an_ops_time_and_bound_by_hand():
    # kills M19 (each torch launch costs a launch too) and M20 (the MUFU pipe can bind a kernel)
    kernels = [_kernel(10.0, 4.0, 3.0, 10.0, 0, 0), _kernel(5.0, 5.0, 1.0, 0.0, 0, 0)]
    op = OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5, extra_launches=1)
    assert op.predicted_us == pytest.approx(10 + 5 + 2.5 * 3)  # 22.5 us: two kernels' launches and the torch one's
    assert op.bound == "mufu"  # the slowest (10 us): memory 4 < mufu 10, issue 3 < mufu
    kernels[0] = _kernel(10.0, 4.0, 10.0, 3.0, 0, 0)
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5).bound == "issue"
    kernels[0] = _kernel(10.0, 10.0, 10.0, 3.0, 0, 0)
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5).bound == "memory"
    # latency: t_memory's own (loads in flight too few: 10 us of latency over 3 us of issue) or a chain's waits
    # (8 of 10 us) over its issue (2); not where the issue outweighs it (6 of 10 us issue, 4 of waits)
    kernels[0] = _kernel(10.0, 10.0, 3.0, 0.0, 0, 0, t_latency=10.0)
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5).bound == "latency"
    kernels[0] = _kernel(10.0, 1.0, 2.0, 0.0, 0, 0, t_latency=8.0)
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5).bound == "latency"
    kernels[0] = _kernel(10.0, 1.0, 6.0, 0.0, 0, 0, t_latency=4.0)
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5).bound == "issue"
    # nor 'memory' where t_memory (7 us) is under the chain that sets the time (6 us of issue + 4 of waits:
    # helper-195, the rule compared t_memory with the issue alone)
    kernels[0] = _kernel(10.0, 7.0, 6.0, 0.0, 0, 0, t_latency=4.0)
    assert OpPrediction("loss", "s", "bfloat16", "CE", "full", "triton", kernels, 0, 0, 2.5).bound == "issue"


# ---------------------------------------------------------------------------------------------------------------
# predict.py
# ---------------------------------------------------------------------------------------------------------------


def test_an_ops_record_by_hand(monkeypatch):
    # kills P01 (design bytes = every kernel's bytes read + written), P02 (% of copy on the design bytes, not the
    # minimal ones), P03 (the torch launches of the Triton launcher count)
    from types import SimpleNamespace

    from tools.perf_model import predict

    kernels = {"a": _kernel(10.0, 10.0, 1.0, 0.0, 1_000_000, 250_000), "b": _kernel(5.0, 5.0, 1.0, 0.0, 1_000_000, 0)}
    monkeypatch.setattr(predict, "predict_launch", lambda card, launch: kernels[launch])
    case = SimpleNamespace(op="loss", shape="s", dtype="bfloat16", variant="CE", mode="full", launches=["a", "b"],
                           minimal_bytes=1_125_000, headline=False, torch_launches=1)  # fmt: skip
    op = predict.predict_case(T, case)
    r = predict.record(T, op)
    # 10 + 5 us + 3 launches x 1 us = 18 us; design 2,250,000 B / 18e-6 s / 1e12 B/s = 12.5%; minimal 6.25% -> 6.2
    assert (r["design_bytes"], r["predicted_us"], r["launches"], r["extra_launches"]) == (2_250_000, 18.0, 2, 1)
    assert (r["percent_of_copy_design"], r["percent_of_copy_minimal"]) == (12.5, round(100 * 1_125_000 / 18e6, 1))
    assert r["bound"] == "memory"


# ---------------------------------------------------------------------------------------------------------------
# floors.py
# ---------------------------------------------------------------------------------------------------------------


def test_the_floor_command_fails_below_a_floor(tmp_path, monkeypatch, capsys):
    # kills F03 (python -m tools.perf_model.floors returns 0 whatever the check found)
    import json

    import tools.perf_model.__main__ as entry

    record = {"suite": "loss", "shape": "s", "dtype": "bfloat16", "variant": "CE", "mode": "full"}
    path = tmp_path / "floors.json"
    monkeypatch.setattr(entry, "FLOORS", path)
    monkeypatch.setattr(entry, "run", lambda card: {"records": [{**record, "percent_of_copy_design": 40.0}]})
    path.write_text(json.dumps({"floors": {floors.key(record): 50.0}}))
    assert floors.main([]) == 1 and "predicted 40.0% < floor 50.0%" in capsys.readouterr().out
    path.write_text(json.dumps({"floors": {floors.key(record): 40.0}}))
    assert floors.main([]) == 0


def test_two_variants_of_a_case_have_their_own_floors():
    # kills F04 (the key without its variant: the variants' floors would overwrite one another)
    ce = {"suite": "loss", "shape": "s", "dtype": "bfloat16", "variant": "CE", "mode": "full"}
    kl = {**ce, "variant": "KL"}
    assert floors.key(ce) == "loss | s | bfloat16 [CE] | full" and floors.key(ce) != floors.key(kl)
    committed = {floors.key(ce): 50.0, floors.key(kl): 20.0}
    run = {"records": [{**ce, "percent_of_copy_design": 55.0}, {**kl, "percent_of_copy_design": 30.0}]}
    assert floors.check(run, committed) == []
    assert floors.updated(run, {}) == {floors.key(ce): 49.5, floors.key(kl): 27.0}  # 0.9 x 55, 0.9 x 30


# ---------------------------------------------------------------------------------------------------------------
# ncu.py
# ---------------------------------------------------------------------------------------------------------------

NCU_ALL = """== ncu_csv begin --set detailed
"ID","Kernel Name","gpu__time_duration.sum","dram__bytes_read.sum","dram__bytes_write.sum",\
"dram__throughput.avg.pct_of_peak_sustained_elapsed","lts__t_sector_hit_rate.pct",\
"sm__warps_active.avg.pct_of_peak_sustained_active","launch__registers_per_thread","smsp__inst_executed.sum",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio"
"","","nsecond","byte","byte","%","%","%","register/thread","inst","ratio","ratio","ratio","ratio"
"0","_loss_bwd_kernel","20,000","40,000,000","46,000,000","90.5","12.5","48.25","40","1,234,567","3.5","0.25","1.5","2.5"
"1","_loss_fwd_kernel","10,000"
== ncu_csv end rc=0
""".replace("\\\n", "")


def test_every_ncu_column_is_read_in_its_unit_and_a_cut_row_is_dropped():
    # kills N03 (a row cut short, e.g. by the step's cap, is no kernel) and N04 / N07 (the L2 hit rate's and the
    # achieved occupancy's metric names as ncu's raw page spells them), N01 (ns -> us), N05 (the top 3 stalls)
    (block,) = ncu.tables(NCU_ALL)
    assert [row["Kernel Name"] for row in block] == ["_loss_bwd_kernel"]
    s = ncu.summary(block[0])
    # 20,000 ns = 20 us; 40,000,000 B = 40 MB; 46 MB written
    assert (s["duration_us"], s["dram_read"], s["dram_write"]) == (20.0, 40.0, 46.0)
    assert (s["dram_pct"], s["l2_hit"], s["occupancy"], s["registers"], s["instructions"]) == (
        90.5, 12.5, 48.25, 40.0, 1234567.0)  # fmt: skip
    assert s["stalls"] == [("long_scoreboard", 3.5), ("math_pipe_throttle", 2.5), ("wait", 1.5)]
    # GB/s: (40 + 46) MB / 20 us = 4.3 MB/us = 4300 GB/s
    assert "| 4300 | long_scoreboard 3.5, math_pipe_throttle 2.5, wait 1.5 |" in ncu.markdown([s], None)[2]


def test_the_dram_throughput_column_reads_ncu_2025s_name_and_the_older_one():
    # helper-214: ncu 2025.3's raw page (the 2026-12-04 H200 run's bench.log) names the DRAM throughput
    # gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed; the table read only dram__throughput's, so its
    # 'DRAM % of peak' column was '-' on every row of a real run
    old_name = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
    (block,) = ncu.tables(NCU_ALL.replace(old_name, "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"))
    assert ncu.summary(block[0])["dram_pct"] == 90.5
    (block,) = ncu.tables(NCU_ALL)
    assert ncu.summary(block[0])["dram_pct"] == 90.5
    (block,) = ncu.tables(NCU_ALL.replace(old_name, "some_other_metric"))
    assert ncu.summary(block[0])["dram_pct"] is None


def test_the_model_columns_take_the_card_the_log_names():
    # helper-214: --card defaulted to H200 whatever card ran, so an H100 run's table had the H200's predictions
    line = "gpu_ncu:    9.0 s: warmed up on {}, backend triton\n"
    assert ncu.logged_card("x\n" + line.format("NVIDIA H100 80GB HBM3")) == "H100"
    assert ncu.logged_card(line.format("NVIDIA H200")) == "H200"
    assert ncu.logged_card(line.format("NVIDIA H100 PCIe")) is None  # other figures: no model columns
    assert ncu.logged_card(line.format("the CPU (no CUDA device), unprofiled")) is None
    assert ncu.logged_card("no such line") is None


def test_a_step_with_its_end_marker_was_not_stopped():
    # kills N06 (one begin and one end: the step ended, whatever its rc; only a begin without its end was cut)
    text = "== ncu_csv begin\n==ERROR== ERR_NVGPUCTRPERM\n== ncu_csv end rc=1\n"
    assert ncu.why_no_rows(text) == ": the GPU's performance counters were locked (ERR_NVGPUCTRPERM)"
    assert ncu.why_no_rows("== ncu_csv begin\n== ncu_csv end rc=0\n") == ""
    assert "stopped before" in ncu.why_no_rows("== ncu_csv begin\n==PROF== Profiling\n")


def test_one_block_an_sm_waits_the_round_trips_of_every_program_it_runs():
    # kills M9 (t_waits = iterations x latency: the busiest SM's programs each wait their own round trips; the
    # existing test runs one program an SM). 10 programs on 4 SMs: 3 on the busiest; 200,000 bytes of shared
    # memory + 1 KB reserved leave one block resident (233472 // 201024 = 1), so nothing overlaps
    card = T
    ops = ["S2R", "LDG.E.128", "FFMA", "IADD3", "BRA 0x10", "LDG.E.U16", "FFMA", "BRA 0x50", "EXIT"]
    code = [sass.Instruction(0x10 * i, op.split()[0], op.split()[1] if " " in op else "") for i, op in enumerate(ops)]
    function = sass.Function("k", code, 32, 0, 0, 0, sass._loops(code))
    k = predict_kernel(card, function, "k", (10, 1, 1), 1, 200_000, [(100, 50)], 32, 51_200, 0)
    assert k.occupancy.resident_blocks == 1 and not k.overlapped
    # issue 3 programs x 1 warp x 552 / 4e9 / busy 0.25 = 1.656 us; waits 3 x (100 + 50) x 1 us = 450 us
    assert k.t_issue_us == pytest.approx(1.656)
    assert k.t_kernel_us == pytest.approx(451.656) and k.t_latency_us == pytest.approx(450.0)


def test_the_latency_bound_counts_the_loads_alone():
    # kills M13 (the Little's-law bound on the bytes read + written: stores do not wait for a round trip). The
    # roofline test's kernel (3 programs an SM, 2 warps, 512 B a warp in flight: 12288 B over 4 SMs) on a card of
    # 15 ns: 3e6 B read x 15 ns / 12288 B = 3.66 us, under the roofline's 4 us (the mutant: 4e6 B: 4.88 us)
    card = Card("T0", sms=4, clock_ghz=1.0, copy_tbps=1.0, dram_latency_ns=15.0, launch_us=1.0)
    code = [sass.Instruction(0x10 * i, op, "0x10" if op == "BRA" else "") for i, op in
            enumerate(["S2R", "LDG.E.128", "FFMA", "BRA", "EXIT"])]  # fmt: skip
    k = predict_kernel(card, sass.Function("k", code, 32, 0, 0, 0, sass._loops(code)), "k", (10, 1, 1), 2, 0,
                       [10], 256, 3_000_000, 1_000_000)  # fmt: skip
    assert k.t_memory_us == pytest.approx(4.0) and k.t_latency_us == 0


def test_occupancy_of_a_small_block_is_the_cards_block_limit():
    # kills M14 (33 blocks an SM): 1 warp of 16 registers (512 a warp: 128 blocks by registers), 2048 // 32 = 64 by
    # threads: the 32 resident blocks of sm_90 decide
    card = Card("T", sms=4, clock_ghz=1.0, copy_tbps=1.0)
    occ = occupancy(card, sass.Function("k", [], 16, 0, 0, 0, []), 1, 0, 80)
    assert (occ.resident_blocks, occ.limiter) == (32, "blocks")


def test_the_csrc_kernels_are_read_from_the_built_extension_where_it_is_current(monkeypatch, tmp_path):
    # tools/perf_model/csrc.py built_cubins: the built _C's sm_90a cubin of each csrc/*.cu (setup.py's own compile,
    # the code it runs; the same SASS as the model's nvcc compile on 2026-12-08), else None and the model compiles
    from tools import check_spills
    from tools.perf_model import csrc

    if check_spills.built_extension() is None or check_spills._package_extension_stale() is not None:
        pytest.skip("the CUDA extension is not built from these sources")
    cubins = csrc.built_cubins(tmp_path)
    sources = sorted(check_spills.CSRC.glob("*.cu"))
    assert [c.name for c in cubins] == [f"{s.stem}.sm_90a.cubin" for s in sources]
    assert sorted(p.name for p in cubins[0].parent.iterdir()) == [c.name for c in cubins]  # (sm_80's not kept)
    names = {name for c in cubins for name in sass.read_resources(c)}  # (mangled)
    assert any("select_tokens_kernel" in n for n in names) and any("loss_forward_kernel" in n for n in names)
    assert csrc.built_cubins(tmp_path) == cubins  # from the cache
    monkeypatch.setattr(check_spills, "_package_extension_stale", lambda: "stale")
    assert csrc.built_cubins(tmp_path) is None
    monkeypatch.setattr(check_spills, "built_extension", lambda: None)
    assert csrc.built_cubins(tmp_path) is None
