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
