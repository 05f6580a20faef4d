"""tools/perf_model/ncu.py: the ncu report of a GPU run's bench.log (rows read between their markers, the report's
header, each block's rc, the A/B rows' labels, --card)."""

import pytest

from tools.perf_model import ncu

NCU_LOG = """== bench.log: earlier steps' lines
== ncu_csv begin --section SpeedOfLight
==PROF== Connected to process 123
gpu_ncu:    9.0 s: profiled: gradients in the forward, one chunk: M=384 D=768 C=30522
"ID","Kernel Name","Grid Size","Block Size","gpu__time_duration.sum","dram__bytes_read.sum","dram__bytes_write.sum",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio"
"","","","","ns","byte","byte","",""
"0","_loss_fwd_kernel","(384, 1, 1)","(256, 1, 1)","44,000","93,780,480","0","7.5","0.5"
"1","void cutlass::Kernel2<cutlass_80_tensorop_s16816gemm_bf16_128x256_32x3_nn_align8>(Params)","(240, 1, 1)",\
"(256, 1, 1)","50,000","n/a","1000","1.0","2.0"
==PROF== Disconnected from process 123
== ncu_csv end rc=0
"not","a","row"
"""


def test_ncu_rows_are_read_between_their_markers(tmp_path, monkeypatch, capsys):
    # tools/perf_model/ncu.py: the raw page's CSV in bench.log (base units, thousands separators, a units row, ncu's
    # and the workload's own lines in between), one row per kernel beside the model's loss kernels
    text = NCU_LOG.replace("\\\n", "")
    (block,) = ncu.tables(text)
    assert [row["Kernel Name"][:16] for row in block] == ["_loss_fwd_kernel", "void cutlass::Ke"]
    fwd, gemm = (ncu.summary(row) for row in block)
    assert (fwd["duration_us"], fwd["dram_read"], fwd["dram_write"]) == (44.0, 93.78048, 0.0)
    assert fwd["stalls"] == [("long_scoreboard", 7.5), ("barrier", 0.5)] and fwd["l2_hit"] is None
    assert gemm["dram_read"] is None and ncu.short(gemm["kernel"]) == (
        "cutlass::Kernel2<cutlass_80_tensorop_s16816gemm_bf16_128x256_32x3_nn_align8>"  # which GEMM ran
    )
    table = ncu.markdown([fwd, gemm], {"_loss_fwd_kernel": {"kernel_us": 21.8, "bytes": 93780480}})
    assert "| _loss_fwd_kernel | (384, 1, 1) | (256, 1, 1) | 44 | 93.78 | 0 | - |" in table[2]
    assert table[2].endswith("| 2131 | long_scoreboard 7.5, barrier 0.5 | 21.8 | 93.8 |")  # GB/s: 93.78 MB / 44 us
    assert table[3].endswith("| barrier 2.0, long_scoreboard 1.0 | - | - |")
    log = tmp_path / "bench.log"
    log.write_text(text)
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: {})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert ncu.main([str(log)]) == 0 and "2 kernels (MEASURED)" in capsys.readouterr().out
    # under the interpreter the model cannot compile its kernels: the measured table alone, no traceback
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: pytest.fail("the model compiles kernels"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ncu.main([str(log)]) == 0 and "2 kernels (MEASURED)" in capsys.readouterr().out
    log.write_text("== ncu_csv begin\n==ERROR== ERR_NVGPUCTRPERM\n== ncu_csv end rc=1\n")
    assert ncu.main([str(log)]) == 1 and "counters were locked" in capsys.readouterr().out
    log.write_text("== ncu_csv begin --set detailed\n==PROF== Profiling ...\n== stopped by its cap of 30 s\n")
    assert ncu.main([str(log)]) == 1 and "stopped before ncu printed its tables" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's usage error: not a traceback
        ncu.main([str(tmp_path / "missing.log")])
    assert "is not a file" in capsys.readouterr().err


# helper-322: the ncu report named no card, date or ncu version; --card A100 / h200 was a KeyError traceback; a block
# ending rc=9 showed as complete; the A/B calls' three loss launches got the op's launch's prediction, unlabelled
NCU_AB = """Device: GPU: NVIDIA H200 | torch 2.11.0+cu130 | triton 3.6.0 | date 2026-12-09 | copy bandwidth 4226 GB/s
== ncu_csv begin --section SpeedOfLight
gpu_ncu:    9.0 s: warmed up on NVIDIA H200, backend triton
gpu_ncu:    9.0 s: profiled: gradients in the forward, one chunk: M=384 D=768 C=30522
gpu_ncu:   11.0 s: profiled: the chunk's loss launch alone, blocks descending: M=384 C=30522
gpu_ncu:   12.0 s: profiled: the chunk's loss launch alone, blocks ascending: M=384 C=30522
"ID","Kernel Name","Block Size","Grid Size","gpu__time_duration.sum"
"","","","","nsecond"
"0","_loss_fwd_bwd_kernel","(256, 1, 1)","(384, 1, 1)","60,000"
"1","_loss_fwd_bwd_kernel","(256, 1, 1)","(384, 1, 1)","55,000"
"2","_loss_fwd_bwd_kernel","(256, 1, 1)","(384, 1, 1)","57,000"
== ncu_csv end rc=9
"""


def test_ncu_report_names_its_sources_flags_rc_and_labels_the_ab_rows(tmp_path, monkeypatch, capsys):
    log = tmp_path / "bench.log"
    log.write_text(NCU_AB)
    cards = []
    predicted = {"_loss_fwd_bwd_kernel": {"kernel_us": 50.0, "bytes": 2e8}}
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: cards.append(card) or predicted)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the model's columns (tests/conftest.py sets it on the CPU)
    assert ncu.main([str(log), "--card", "h200"]) == 0 and cards == ["H200"]  # any case
    out = capsys.readouterr().out
    assert "Ran on: NVIDIA H200; run date: 2026-12-09; ncu version: not in the log." in out
    assert "Model columns: PREDICTIONS of today's model (" in out and ") for the H200, per chunk" in out
    assert "3 kernels (MEASURED), **ncu rc=9: ncu failed or was stopped" in out
    rows = [line for line in out.splitlines() if line.startswith("| _loss_fwd_bwd_kernel")]
    assert rows[0].startswith("| _loss_fwd_bwd_kernel | gradients in the forward, one chunk: M=384 D=768 C=30522 |")
    assert rows[0].endswith("| 50.0 | 200.0 |")  # the op's launch: the model's prediction
    assert rows[1].startswith("| _loss_fwd_bwd_kernel | the chunk's loss launch alone, blocks descending: M=384")
    assert rows[2].startswith("| _loss_fwd_bwd_kernel | the chunk's loss launch alone, blocks ascending: M=384")
    assert rows[1].endswith("| - | - |") and rows[2].endswith("| - | - |")  # another launch: no prediction
    assert "have no model columns: that launch reads logits without a class tail" in out
    for card in ("A100", "h100 pcie"):  # a card the model lacks: argparse's refusal, status 2, no traceback
        with pytest.raises(SystemExit) as refused:
            ncu.main([str(log), "--card", card])
        assert refused.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# kills ncu.py's rc=(\d+) (helper-327's N1): a signal's negative status (ncu killed) was read as no rc, unflagged
def test_a_negative_rc_is_read():
    text = "== ncu_csv begin\n== ncu_csv end rc=-9\n== ncu_csv begin\n== ncu_csv end\n"
    assert [b["rc"] for b in ncu.blocks_info(text)] == [-9, None]


# helper-349's mutation audit of tools/perf_model/ncu.py: each test names the mutant (the code change) it kills.


# kills tables(): `if rows is not None: blocks.append(rows)` -> `blocks.append(rows)` (an end marker without its
# begin, a stray or doubled one, was a TypeError traceback), and `if not parsed: result.append([])` -> `continue` (an
# empty block dropped: tables() and blocks_info() no longer pair up, main's zip(strict=True) a ValueError traceback)
def test_an_empty_block_is_kept_in_order_and_a_stray_end_marker_is_ignored(tmp_path, monkeypatch, capsys):
    row = '"ID","Kernel Name","gpu__time_duration.sum"\n"0","_loss_fwd_kernel","2,000"\n'
    text = f"== ncu_csv end rc=0\n== ncu_csv begin\n== ncu_csv end rc=1\n== ncu_csv begin\n{row}== ncu_csv end rc=0\n"
    assert [len(block) for block in ncu.tables(text)] == [0, 1]
    assert [info["rc"] for info in ncu.blocks_info(text)] == [1, 0]
    log = tmp_path / "bench.log"
    log.write_text(text)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the measured table alone
    assert ncu.main([str(log)]) == 0
    out = capsys.readouterr().out
    # kills `## ncu block {index + 1}` -> `{index}`: the blocks are numbered from 1
    assert "## ncu block 1: 0 kernels (MEASURED), **ncu rc=1: ncu failed or was stopped" in out
    assert "## ncu block 2: 1 kernels (MEASURED), ncu rc=0;" in out


# kills main(): `status = "ncu rc=0" if rc == 0` -> `if not rc` (and the same in `status += ...`): an end marker
# without its status (an older gpu_bench.sh) showed as ncu's success, not as unknown
def test_a_block_without_its_rc_is_flagged_as_unknown(tmp_path, monkeypatch, capsys):
    log = tmp_path / "bench.log"
    log.write_text('== ncu_csv begin\n"ID","Kernel Name"\n"0","k"\n== ncu_csv end\n')
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ncu.main([str(log)]) == 0
    out = capsys.readouterr().out
    assert "1 kernels (MEASURED), **ncu rc=?: ncu failed or was stopped, kernels or metrics may be missing**" in out
    assert "ncu rc=0" not in out


# kills call_labels(): `others[0] if len(others) == 1` -> `if others` (several calls' kernels, not told apart, all
# labelled with the first call), `len(alone) <= len(rows)` -> `<` (a block of the A/B calls' launches alone left
# unlabelled), `all(short(...) in LOSS_KERNELS ...)` -> `any(...)` or dropped (a GEMM row labelled as a loss launch)
def test_call_labels_name_a_call_only_where_the_log_tells_its_rows_apart():
    loss, gemm = {"kernel": "_loss_fwd_bwd_kernel"}, {"kernel": "void cutlass::Kernel2<sm90_gemm>(Params)"}
    a, b = "the chunk's loss launch alone, blocks descending", "the chunk's loss launch alone, blocks ascending"
    assert ncu.call_labels([gemm, loss], ["op forward", "op backward"]) == ["-", "-"]
    assert ncu.call_labels([gemm, loss], ["op forward"]) == ["op forward", "op forward"]
    assert ncu.call_labels([loss, loss], [a, b]) == [a, b]  # every row one of the A/B calls' launches
    assert ncu.call_labels([loss, loss, loss], ["op", a, b]) == ["op", a, b]
    # the last rows are not all loss launches: the log's calls do not match its rows, none is labelled alone
    assert ncu.call_labels([loss, gemm, loss], ["op", a, b]) == ["op", "op", "op"]
    assert ncu.call_labels([loss, loss, gemm], ["op", a, b]) == ["op", "op", "op"]
    assert ncu.call_labels([loss], ["op", a, b]) == ["op"]  # more A/B calls than rows


# kills why_no_rows(): `begins > ends` -> `>=` (a log whose every block ended was said to be stopped), the
# "ncu: not found" reason dropped, and `"; ".join(found)` -> the first reason alone
def test_why_no_rows_names_every_reason_the_log_shows_and_no_other():
    assert ncu.why_no_rows("== ncu_csv begin\n== ncu_csv end rc=0\n") == ""
    assert ncu.why_no_rows("no markers at all") == ""
    text = "== ncu_csv begin\nbash: line 3: ncu: not found\n==ERROR== LibraryNotLoaded\n"
    assert ncu.why_no_rows(text) == (
        ": ncu could not load its library on this machine (LibraryNotLoaded: a sandboxed runtime?); ncu was not on "
        "the machine; the step was stopped before ncu printed its tables (a begin marker without its end: the cap?)"
    )


# kills short(): `[:60]` -> `[:30]` (a long kernel name cut shorter), and `re.sub(r"^void ", ...)` -> `r"void "`
# (a 'void ' inside the name's first template argument dropped too)
def test_short_keeps_60_characters_of_the_name_and_only_drops_a_leading_void():
    long = "triton_red_fused_native_layer_norm_backward_0123456789_abcdefghij"  # 65 characters
    assert ncu.short(long) == long[:60]
    assert ncu.short(f"void {long}(float*)") == long[:60]
    assert ncu.short("void k<void fn, 4>(int)") == "k<void fn>"
    # helper-349's edge case: an anonymous namespace's parentheses read as a parameter list cut the name
    named = "void at::native::(anonymous namespace)::fused_dropout_kernel<float, float, 4>(at::TensorInfo<float>)"
    assert ncu.short(named) == "at::native::{anon}::fused_dropout_kernel<float>"


# kills predicted_loss_kernels(): the one launch of both modelled as `sum` of their times -> `max`, its bytes as the
# sum -> the first kernel's alone, and the chunk's shape 384 x 30522 -> another C (the header says C = 30522)
def test_the_one_launch_of_both_loss_kernels_is_modelled_as_their_sum(monkeypatch):
    from tools.perf_model import linear_loss
    from tools.perf_model.hardware import CARDS

    calls = []
    kernels = [{"kernel": "_loss_fwd_kernel", "kernel_us": 20.0, "bytes": 100}, {"kernel": "_loss_bwd_kernel",
               "kernel_us": 30.0, "bytes": 250}]  # fmt: skip
    monkeypatch.setattr(linear_loss, "_loss_kernels_us", lambda *args: calls.append(args) or (50.0, 2, kernels))
    predicted = ncu.predicted_loss_kernels("H100")
    assert calls == [(CARDS["H100"], 384, 30522)]
    assert predicted["_loss_fwd_bwd_kernel"] == {"kernel": "_loss_fwd_bwd_kernel", "kernel_us": 50.0, "bytes": 350}
    assert predicted["_loss_fwd_kernel"] is kernels[0] and predicted["_loss_bwd_kernel"] is kernels[1]


# kills markdown(): `"---|" * (len(heads) + 7 + labelled)` -> `+ 6` (the separator row one cell short of the header:
# no Markdown table), `moved = read + write` -> read alone, `if r["duration_us"] and moved` -> without `and moved`
# (a row without DRAM metrics showed 0 GB/s, not '-'), and the A/B note printed without model columns
# (`if labels and predicted and ...` -> without `predicted`)
def test_markdown_rows_match_their_header_and_gbps_counts_reads_and_writes():
    row = ncu.summary({"Kernel Name": "k", "gpu__time_duration.sum": "10,000", "dram__bytes_read.sum": "1,000,000",
                       "dram__bytes_write.sum": "3,000,000"})  # fmt: skip
    bare = ncu.summary({"Kernel Name": "gemm", "gpu__time_duration.sum": "10,000"})
    for labels in (None, ["op", "op"], ["op", "x loss launch alone"]):
        lines = ncu.markdown([row, bare], None, labels)
        cells = [line.count("|") for line in lines]
        assert cells[0] == cells[1] == cells[2] == cells[3], labels
        assert lines[2].split(" | ")[-4] == "400"  # GB/s: (1 + 3) MB in 10 us
        assert lines[3].split(" | ")[-4] == "-"  # no DRAM bytes measured: no rate
        assert len(lines) == 4  # no note on the A/B rows' model columns: there are none
    lines = ncu.markdown([row, bare], {"k": {"kernel_us": 1.0, "bytes": 2e6}}, ["op", "x loss launch alone"])
    assert lines[2].endswith("| 1.0 | 2.0 |") and "have no model columns" in lines[-1]


# kills main(): `print(sorted(block[0]))` -> the columns in the log's order (--columns lists them sorted), and
# header(): the run's date and ncu's version read only where they start the log (re.M / re.S dropped: ncu prints
# its version on a line of its own after its banner; the benchmark's header is not the log's first line)
def test_columns_are_listed_sorted_and_the_header_finds_date_and_version_anywhere(tmp_path, monkeypatch, capsys):
    log = tmp_path / "bench.log"
    log.write_text(
        "== gpu_bench.sh\nDevice: GPU: NVIDIA H200 | torch 2.11 | date 2026-12-09 | copy bandwidth 4226 GB/s\n"
        "==PROF== NVIDIA (R) Nsight Compute Command Line Profiler\nCopyright (c) 2018-2025 NVIDIA Corporation\n"
        'Version 2025.3.0.0 (build 36273991)\n== ncu_csv begin\n"ID","b_metric","Kernel Name","a_metric"\n'
        '"0","1","k","2"\n== ncu_csv end rc=0\n'
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ncu.main([str(log), "--columns"]) == 0
    out = capsys.readouterr().out
    assert "\nID\nKernel Name\na_metric\nb_metric\n" in out
    assert "run date: 2026-12-09; ncu version: 2025.3.0.0 (build 36273991)." in out


# kills main(): header(..., card if predicted is not None else None) -> header(..., args.card): with the card taken
# from the log (no --card), the header said the model columns were 'none' beside a table that has them
def test_the_header_names_the_card_the_log_gave_the_model(tmp_path, monkeypatch, capsys):
    log = tmp_path / "bench.log"
    log.write_text(NCU_AB)
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: {})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert ncu.main([str(log)]) == 0
    assert ") for the H200, per chunk (384 rows, C = 30522, bf16)." in capsys.readouterr().out


# kills summary(): a stall metric that is not a number kept (`and number(v) is not None` dropped: 'n/a' made the
# sort a TypeError traceback), and a row without a kernel name named '' (`row.get("Kernel Name", "?")` -> "")
def test_a_stall_that_is_not_a_number_is_left_out_and_a_nameless_kernel_is_a_question_mark():
    stall = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
    row = ncu.summary({stall.format("wait"): "n/a", stall.format("barrier"): "1.5", stall.format("branch"): ""})
    assert row["stalls"] == [("barrier", 1.5)] and row["kernel"] == "?"


# kills main(): TRITON_INTERPRET="" taken for the interpreter (`not in ("", "0")` -> `!= "0"`: no model columns
# where the variable is set but empty, as Triton reads it), and header()'s 'not named in the log' where the log has
# no gpu_ncu line naming the card
def test_an_empty_triton_interpret_keeps_the_model_and_an_unnamed_card_is_said_so(tmp_path, monkeypatch, capsys):
    log = tmp_path / "bench.log"
    log.write_text('== ncu_csv begin\n"ID","Kernel Name"\n"0","_loss_fwd_bwd_kernel"\n== ncu_csv end rc=0\n')
    cards = []
    monkeypatch.setattr(ncu, "predicted_loss_kernels", lambda card: cards.append(card) or {})
    monkeypatch.setenv("TRITON_INTERPRET", "")
    assert ncu.main([str(log), "--card", "H100"]) == 0 and cards == ["H100"]
    out = capsys.readouterr().out
    assert "Ran on: not named in the log; run date: not in the log; ncu version: not in the log." in out
