"""PREDICTIONS for the fused-linear MaskSub loss at issue 13's BERT shape, against the materialised composite.

The op is compute-bound, so the SASS-and-roofline model of the memory-bound kernels (model.py) covers only its
loss kernels. Each figure here is a prediction, built from:

- matmuls: units of 2 M D C flops at ``card.matmul_flops_per_s`` (an ASSUMED cuBLAS efficiency of the dense bf16
  peak, hardware.py), each matmul at the slower of that and its bytes at copy bandwidth (a roofline per matmul);
- the masksub_loss Triton kernels (forward and backward) on each chunk's fp32 logits [R, C]: their launches
  recorded on meta tensors and predicted by the SASS model (predict.py), times the number of chunks; the chunks run
  them as one launch (ops/_loss_fwd_bwd.py, where no class split is configured: checked here), whose time is
  modelled as theirs (it runs both kernels' loops, with the same elements per warp-instruction: its num_warps is
  the larger of the two, CE's forward blocks then spread over twice its warps; BCE's, which the model does not
  take, are widened to a 16-byte word per thread: fused_constexprs) and its launches as one;
- elementwise passes of the composites over [M, C] at copy bandwidth, counted per op below;
- ``card.launch_us`` per device launch: the forward's as its code makes them (recorded on meta tensors:
  recorded_forward), cuBLAS's own beside its matmul kernels (CUBLAS_EXTRA_PER_CHUNK) and the backward's;
- every chunk at its own rows (the last one is shorter: BERT's 256 of 384).

Providers (the benchmark's, masksub_kernels/bench/linear_loss.py; bf16, class ids, a bias, main + sub, forward +
backward):
- fused: gradients in the forward (ops/_linear_loss_chunks.py; the backward scales them in fp32, _linear_loss_grads.py):
  6 matmul units in chunks of R rows, every row
  counted (the benchmark's labels: slices, no gathers); per chunk one logits matmul of both branches' stacked rows
  [2R, D] with fp32 output, without the bias (the loss kernels add it as they read the logits), the loss kernels
  (one launch; the backward writes dz, ds in bf16 over the logits' rows), one gradient matmul of both terms'
  [2R, C] gradients into an fp32 [2R, D] temporary (copied into dH's and dHs's rows, one launch) and one dW matmul
  over the chunk's [2R, C] gradients accumulated into the one fp32 accumulator with beta = 1 (its
  [C, D] fp32 read and written once per chunk: the price of small chunks), db in the same matmul (a ones column in
  the stacked rows: [C, D + pad], dW returned as its view); where C is not a multiple of 8 each of the three
  matmuls runs over C's aligned head (class_parts), the loss launch takes the tail's < 8 classes for the logits and
  dH (ClassTail: bytes of O(R D), not modelled) and keeps the tail's gradient columns for dW's tail, one small
  matmul per branch once per call (launches, their time not modelled);
- official (eager): F.linear per branch, then the eager ops of the official composite; its [M, C] passes, in units
  of one bf16 [M, C] (L = M C 2 bytes; an fp32 copy is 2L), read + write:
    forward: main.float() 3, softmax 4, sub.float() 3, log_softmax 4, neg 4, mul 6, sum 2, main.float() for
             cross_entropy 3, its log_softmax 4                                                       = 33 L
    backward: mul 4, log_softmax backward 6, sub.float() backward 3, nll_loss backward (zeros + scatter) 2,
              log_softmax backward 6, main.float() backward 3, F.linear's bias gradients (a column sum of
              each branch's bf16 gradient) 2                                                          = 26 L
- compile(official): ASSUMED fully fused by inductor into one forward pass reading both bf16 logits (2 L) and one
  backward pass reading both and writing both bf16 gradients (4 L), the bias gradients' column sums fused into it:
  6 L, the fewest any materialising implementation moves (the measured compiled graph may move more; the sums in
  passes of their own would be 8 L).

Beside the predictions, MEASUREMENTS where a GPU run of the card is committed (measured_reference, built by
linear_loss_measured.py): the composites' measured times at SHAPE, and the fused op's prediction with its loss
kernels calibrated by that run, a range over the calibration's sources.
"""

from __future__ import annotations

from unittest import mock

import torch

from masksub_kernels.bench.linear_loss import CHUNK_SWEEP, chunking, modelled_extra_mb, sweep_provider
from masksub_kernels.bench.report import MODEL_VARIANTS
from masksub_kernels.ops import _linear_loss_chunks as chunk_loop
from masksub_kernels.ops import _linear_loss_grads as linear_grads
from masksub_kernels.ops import _loss_fwd_bwd, _loss_layout, masksub_loss

from . import linear_loss_host
from . import linear_loss_measured as measured
from .capture import recording
from .hardware import Card
from .predict import predict_launch
from .workloads import kernel_terms

HOST_ROWS = [192, 384, 512, 768]  # rows per chunk of the host prediction (the benchmark's sweep and its default)

SHAPE = ("BERT-base MLM", 16384, 768, 30522)  # the benchmark's GPU shape (issue 13)
EAGER_PASSES = 33 + 26  # bf16 [M, C] units of the official eager composite (module docstring)
EAGER_LAUNCHES = 34
COMPILED_PASSES = 2 + 4  # the assumed fused passes of torch.compile(official)
META = torch.device("meta")


def _matmul_us(card: Card, flops: float, nbytes: float) -> float:
    return max(flops / card.matmul_flops_per_s, nbytes / card.copy_bytes_per_s) * 1e6


def _loss_kernels_us(card: Card, rows: int, classes: int) -> tuple[float, int, list[dict]]:
    """(us, launches, kernel summaries) of the loss kernels on one chunk's fp32 logits, dz and ds in bf16 over their
    rows; the launches include the torch ops of their launchers that launch a kernel (a fill). The operands are the
    op's: views of its chunk buffer, whose rows are padded to aligned_classes (16-byte aligned rows: the kernels'
    ALIGNED variant, not the realigning one that unpadded rows of C = 30522 would take)."""
    padded = chunk_loop.aligned_classes(classes)
    buffer = torch.empty(2 * rows, padded, dtype=torch.float32, device=META)
    logits, grads = buffer[:, :classes], buffer.view(torch.bfloat16)[:, :classes]
    z, s = logits[:rows], logits[rows:]
    y = torch.empty(rows, dtype=torch.int64, device=META)
    bias = torch.empty(classes, dtype=torch.bfloat16, device=META)
    options = (False, 0.0, -100, 1.0, None)
    g = torch.empty(rows, device=META)
    into = (grads[:rows], grads[rows:])
    stats = torch.empty(masksub_loss.NUM_OUT, 4 * rows, device=META)  # the op's [9, M]: a chunk's columns
    tickets = torch.zeros(rows, dtype=torch.int32, device=META)  # the op's one buffer (zeroed once, not per chunk)
    with recording(masksub_loss) as launches:
        out = masksub_loss._forward_triton(z, s, y, *options, bias=bias, out=stats[:, rows : 2 * rows], tickets=tickets)
        masksub_loss._backward_triton(g, g, out, z, s, y, *options, into=into, bias=bias, over_rows=True)
    with recording(_loss_fwd_bwd, masksub_loss) as chunk_launches:  # what the chunk loop launches: one, or these two
        _loss_fwd_bwd.forward_backward_triton(
            g, g, z, s, y, *options, out=stats[:, rows : 2 * rows], tickets=tickets, into=into, bias=bias,
            over_rows=True,
        )  # fmt: skip
    total, kernels = 0.0, []
    for launch in launches:
        trips, elements, read, written = kernel_terms(launch)
        k = predict_launch(card, launch, (trips, elements, read, written))
        total += k.t_kernel_us
        kernels.append({"kernel": k.kernel, "kernel_us": round(k.t_kernel_us, 2), "bytes": read + written})
    return total, len(chunk_launches) + len(chunk_launches.torch_ops), kernels  # the launchers' torch fills too


# cuBLAS's own device operations per chunk beside its matmul kernels, as the 2026-12-04 probe log lists them
# (gpu-2026-12-04/after-gemm.log): a Memset before each cooperative nvjet kernel (the logits', dW's) and a
# splitKreduce kernel after dH's split-K matmul. Each is charged a launch's gap (ASSUMED: not timed apart; the probed
# matmul times include them)
CUBLAS_EXTRA_PER_CHUNK = 3
# the backward's launches (ops/_linear_loss_grads._grads_backward): one _scale_kernel per stored gradient (dH, dHs,
# dW, db) and the scalar ops of their factor (factor and scale to fp64, their product, back to fp32)
BACKWARD_LAUNCHES = 4 + 4


def recorded_forward(shape: tuple, rows_per_chunk: int) -> dict[str, int]:
    """{"torch": n, "triton": n}: the device launches of the op's forward at ``shape`` (name, M, D, C), bf16, class
    ids, a bias, both branches, with ``rows_per_chunk``: the benchmark's eager call (ops/_linear_loss_grads's
    triton implementation; the gradients in the forward, every row counted) run on meta tensors under
    capture.recording, so that the count is the code's own lines, not a count of them kept by hand (helper-152 found
    the hand count 6 short). counted_rows' nonzero has no meta kernel (its output's size is the data's): an arange
    stands in, one launch for its one or more and its host sync (host time, not charged here)."""
    _, m, d, c = shape
    meta = dict(dtype=torch.bfloat16, device=META)
    hidden, sub_hidden = torch.empty(m, d, **meta), torch.empty(m, d, **meta)
    weight, bias = torch.empty(c, d, **meta), torch.empty(c, **meta)
    target = torch.empty(m, dtype=torch.int64, device=META)

    def counted_rows(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
        _ = target != ignore_index  # the real one's comparison
        return torch.arange(target.shape[0], device=target.device)

    options = (False, 0.0, -100, 1.0, None)  # CE, no smoothing, ignore_index, T = 1, no threshold
    with mock.patch.object(chunk_loop, "counted_rows", counted_rows):
        with recording(chunk_loop, linear_grads, _loss_fwd_bwd, masksub_loss) as launches:
            linear_grads._grads_triton(
                hidden, sub_hidden, weight, bias, target, True, 0.5, 0.5, *(True,) * 4, True, True, rows_per_chunk,
                *options,
            )  # fmt: skip
    return {"torch": len(launches.torch_ops), "triton": len(launches)}


def _chunk_us(card: Card, rows: int, d: int, c: int, splits: bool) -> tuple[float, float, list[dict]]:
    """(matmuls us, loss kernels us, the loss kernels' summaries) of one chunk of ``rows`` rows per branch.
    ``splits``: its loss forward splits the classes (then dH's product is written, not added to)."""
    chunk_unit = 2 * rows * d * c
    logits = _matmul_us(card, 2 * chunk_unit, 2 * rows * c * 4 + c * d * 2 + 2 * rows * d * 2)  # [2R, C] fp32 out
    # dz and ds (bf16) and W read, one fp32 [2R, D] written, and read first where it adds to the tail's share that
    # the loss launch wrote (beta = 1; a chunk whose forward splits writes it afresh)
    d_hidden = _matmul_us(card, 2 * chunk_unit, 2 * rows * c * 2 + c * d * 2 + 2 * rows * d * 4 * (2 - splits))
    # dW and db in one matmul per chunk: the stacked rows carry a ones column ([2R, D + pad]), the fp32 accumulator
    # is [dW | db | 0...] [C, D + pad], read and written per matmul (beta = 1)
    wide = chunk_loop.padded_depth(d)
    k = 2 * rows  # the rows of a chunk's gradients
    d_weight = _matmul_us(card, 2 * k * wide * c, k * c * 2 + k * wide * 2 + 2 * c * wide * 4)
    loss_us, _, loss_kernels = _loss_kernels_us(card, rows, c)
    return logits + d_hidden + d_weight, loss_us, loss_kernels


def _fused(card: Card, shape: tuple = SHAPE) -> dict:
    """The fused op's predicted time (us) and its parts at ``shape`` (name, M, D, C), with the chunk rows in force
    (chunk_loop.grads_chunk_rows: the benchmark's `chunking` changes them)."""
    name, m, d, c = shape
    r = chunk_loop.grads_chunk_rows(c, m)
    chunks = -(-m // r)
    last = m - (chunks - 1) * r  # the last chunk's rows (BERT's: 256 of 384), charged at its own rows
    split_block = masksub_loss._launch_config(c, masksub_loss._split_max_block())[0]

    def splits(rows: int) -> bool:  # the chunk's loss forward splits the classes (fewer rows than 2 per SM, ...)
        return masksub_loss.class_splits(rows, c, split_block, _loss_layout.DEFAULT_SMS)[0] > 1

    full_matmuls, full_loss, loss_kernels = _chunk_us(card, r, d, c, splits(r))
    last_matmuls, last_loss, last_kernels = _chunk_us(card, last, d, c, splits(last))
    matmuls_us = (chunks - 1) * full_matmuls + last_matmuls
    loss_us = (chunks - 1) * full_loss + last_loss
    loss_by_kernel = {k["kernel"]: (chunks - 1) * k["kernel_us"] for k in loss_kernels}
    for k in last_kernels:
        loss_by_kernel[k["kernel"]] = loss_by_kernel.get(k["kernel"], 0.0) + k["kernel_us"]
    # the launches, as the forward's code makes them (recorded: per chunk, the two copies of the rows into the
    # stacked buffer, the three matmuls over C's aligned head, one loss launch that also takes C's tail, one
    # multi-tensor copy of dH's rows; a chunk whose loss forward splits runs the loss's two launches and the tail's
    # matmuls itself; once: the buffers, dW's tail, the reductions), cuBLAS's own per chunk, the backward's
    forward = recorded_forward(shape, r)
    one_more = recorded_forward((name, m + r, d, c), r)  # a chunk of r rows more: one chunk's launches
    per_chunk = {kind: one_more[kind] - forward[kind] for kind in forward}
    device_launches = sum(forward.values()) + chunks * CUBLAS_EXTRA_PER_CHUNK + BACKWARD_LAUNCHES
    launches_us = card.launch_us * device_launches
    # the backward scales the stored gradients in fp32 (ops/_linear_loss_grads._scaled, the triton backend's eager
    # backward): one _scale_kernel launch each, dH and dHs in place (read 2, write 2 bytes per element), dW from its
    # fp32 accumulator into bf16 (read 4, write 2), db likewise; their time at copy bandwidth (launches above)
    scaling_bytes = 2 * m * d * 4 + c * d * 6 + c * 6
    scaling_us = scaling_bytes / card.copy_bytes_per_s * 1e6
    # the forward's copies beside the matmuls (their launches above), at copy bandwidth: dW's fp32 accumulator
    # [C, D + pad] zeroed once (written), each chunk's hidden rows copied into the stacked buffer (read and written,
    # 2 bytes each, both branches: 8 M D over the chunks) and dH's rows from the fp32 product (read 4, written 2,
    # both branches: 12 M D) (helper-210: launched, and until 2026-12-06 not charged)
    copies_bytes = c * chunk_loop.padded_depth(d) * 4 + 20 * m * d
    copies_us = copies_bytes / card.copy_bytes_per_s * 1e6
    fused_us = matmuls_us + loss_us + launches_us + scaling_us + copies_us
    return {
        "us": fused_us,
        "chunk_rows": r,
        "chunks": chunks,
        "last_chunk_rows": last,
        "dw_matmuls": chunks,
        # the chunks' matmul time in full chunks (the probe's calibration: a probed full chunk times this)
        "chunk_equivalents": matmuls_us / full_matmuls,
        # the host's launches per chunk (linear_loss_host.py): the loss's own are Triton's
        "launches_per_chunk": per_chunk,
        "device_launches": device_launches,
        # cuBLAS's own operations' gaps (in "launches"): a probed matmul time holds them (linear_loss_measured)
        "cublas_extra_us": card.launch_us * chunks * CUBLAS_EXTRA_PER_CHUNK,
        "extra_mib": modelled_extra_mb(m, d, c, 2)["fused"],
        "breakdown": {
            "matmuls": round(matmuls_us, 1),
            "loss_kernels": round(loss_us, 1),
            "launches": round(launches_us, 1),
            "backward_scaling": round(scaling_us, 1),
            "forward_copies": round(copies_us, 1),
            "loss_kernels_per_chunk": loss_kernels,  # a full chunk's
            "loss_kernels_by_kernel": {kernel: round(us, 2) for kernel, us in loss_by_kernel.items()},
        },
    }


# Other heads than BERT's, where the budget alone would give few rows per chunk (GRADS_CHUNK_MIN_ROWS of
# ops/_linear_loss_chunks.py): RoBERTa's vocabulary (the MLM family's other tokenizer) and a large language model's
VOCABULARIES = [("RoBERTa-base MLM", 16384, 768, 50265), ("a 128k-vocabulary head", 16384, 4096, 128256)]


def _matmul_bound_us(card: Card, shape: tuple) -> float:
    """The composite's 6 matmul units at the assumed efficiency: what any implementation of the head spends."""
    _, m, d, c = shape
    return 6 * 2 * m * d * c / card.matmul_flops_per_s * 1e6


def _compiled_us(card: Card, shape: tuple) -> float:
    """torch.compile of the official composite, ASSUMED fully fused (COMPILED_PASSES bf16 [M, C] passes)."""
    _, m, _, c = shape
    passes = COMPILED_PASSES * m * c * 2 / card.copy_bytes_per_s * 1e6
    return _matmul_bound_us(card, shape) + passes + card.launch_us * 8


def vocabularies(card: Card) -> list[dict]:
    """The fused op at VOCABULARIES' shapes: its chunk rule (the budget, at least GRADS_CHUNK_MIN_ROWS rows) against
    the budget alone (the rule before 2026-12-02). PREDICTIONS."""
    result = []
    for shape in VOCABULARIES:
        name, m, d, c = shape
        rule = _fused(card, shape)
        with chunking(chunk_loop.GRADS_CHUNK_BYTES / 2**20):
            budget = _fused(card, shape)
        composite_mib = modelled_extra_mb(m, d, c, 2)["composite"]
        compiled = _compiled_us(card, shape)
        result.append({
            "shape": f"{name} M={m} D={d} C={c}",
            "compiled_us": round(compiled, 1),
            **{
                f"{key}_{field}": value
                for key, fused in (("rule", rule), ("budget", budget))
                for field, value in (
                    ("rows", fused["chunk_rows"]),
                    ("us", round(fused["us"], 1)),
                    ("ratio_vs_compiled", round(compiled / fused["us"], 2)),
                    ("extra_mib", round(fused["extra_mib"], 1)),
                    ("percent_of_composite", round(100 * fused["extra_mib"] / composite_mib, 1)),
                )
            },
        })  # fmt: skip
    return result


def predict(card: Card, records: list[dict] | None = None) -> dict:
    """The three providers' predicted times, TFLOP/s, ratios and extra memory at SHAPE, and the fused op at the
    benchmark's other chunk sizes (CHUNK_SWEEP): PREDICTIONS; beside them, under measured_reference, what the
    card's newest committed GPU run MEASURED (linear_loss_measured.py). ``records``: today's predictions of the
    other ops (__main__.run), whose loss case at the op's C is one of the calibration sources."""
    name, m, d, c = SHAPE
    unit = 2 * m * d * c  # flops of one [M, D] x [D, C] matmul
    useful = 6 * unit
    big = m * c * 2  # one bf16 [M, C]: L
    fused = _fused(card)
    matmul_us = _matmul_bound_us(card, SHAPE)
    # its launches: the device ops the official composite's forward and backward make at this shape (34, counted
    # by helper-210 under a dispatch mode on the CPU; 30 before 2026-12-06)
    eager_us = matmul_us + EAGER_PASSES * big / card.copy_bytes_per_s * 1e6 + card.launch_us * EAGER_LAUNCHES
    compiled_us = _compiled_us(card, SHAPE)
    composite_mib = modelled_extra_mb(m, d, c, 2)["composite"]  # extra memory beyond inputs and gradients
    today = {
        r["mode"]: r["predicted_us"] / 1e3
        for r in records or []
        if (r["suite"], r["shape"], r["dtype"], r["provider"]) == measured.LOSS_KEY
        and r["variant"] in MODEL_VARIANTS
    }  # fmt: skip
    _, _, profiled = _loss_kernels_us(card, measured.PROFILE["rows"], c)
    profiled_today = {k["kernel"]: k["kernel_us"] for k in profiled}
    shape = f"{name} M={m} D={d} C={c}"
    reference = measured.measured_reference(card, fused, shape, today, profiled_today)
    peak = card.bf16_dense_tflops

    def entry(provider: str, us: float) -> dict:
        tflops = useful / (us * 1e-6) / 1e12
        return {
            "provider": provider,
            "predicted_us": round(us, 1),
            "tflops": round(tflops, 1),
            "percent_of_bf16_peak": round(100 * tflops / peak, 1),
        }

    providers = [entry("masksub[triton] (grads in forward)", fused["us"]), entry("official (eager)", eager_us)]
    providers.append(entry("compile(official) (assumed fused)", compiled_us))
    sweep = []
    launches_by_rows = {fused["chunk_rows"]: fused["launches_per_chunk"]}  # the host's launches of each chunk size
    for mib, programs in CHUNK_SWEEP:
        with chunking(mib, programs):
            swept = _fused(card)
        if programs == masksub_loss.SPLIT_PROGRAMS_PER_SM:
            launches_by_rows.setdefault(swept["chunk_rows"], swept["launches_per_chunk"])
        sweep.append({
            **entry(sweep_provider(mib, programs, c), swept["us"]),
            "budget_mib": mib,
            "programs_per_sm": programs,
            "chunk_rows": swept["chunk_rows"],
            "extra_mib": round(swept["extra_mib"], 1),
            "percent_of_composite": round(100 * swept["extra_mib"] / composite_mib, 1),
            "ratio_vs_compiled": round(compiled_us / swept["us"], 2),
        })  # fmt: skip
    return {
        "label": "PREDICTIONS (assumed matmul efficiency + SASS model of the loss kernels), not measurements",
        "shape": f"{name} M={m} D={d} C={c}",
        "dtype": "bfloat16",
        "mode": "full",
        "assumptions": {
            "bf16_dense_tflops": peak,
            "matmul_efficiency": card.matmul_efficiency,
            "eager_mc_passes": EAGER_PASSES,
            "compiled_mc_passes": COMPILED_PASSES,
            "chunk_rows": fused["chunk_rows"],
            "chunks": fused["chunks"],
            "dw_matmuls": fused["dw_matmuls"],
            # rows per chunk from which dW's matmul (4 R D C flops) outlasts its accumulator's pass (C D 8 bytes)
            "dw_ridge_rows": round(2 * card.matmul_flops_per_s / card.copy_bytes_per_s),
        },
        "providers": providers,
        "chunk_sweep": sweep,
        "vocabularies": vocabularies(card),
        "fused_breakdown_us": fused["breakdown"],
        "ratio_vs_eager": round(eager_us / fused["us"], 2),
        "ratio_vs_compiled": round(compiled_us / fused["us"], 2),
        "extra_memory_mib": {
            "fused": round(fused["extra_mib"], 1),
            "composite_lower_bound": round(composite_mib, 1),
            "percent": round(100 * fused["extra_mib"] / composite_mib, 1),
        },
        "measured_reference": reference,
        "host": linear_loss_host.predict_host(
            fused["launches_per_chunk"], HOST_ROWS, launches_by_rows=launches_by_rows
        ),
    }


def markdown(result: dict) -> list[str]:
    """The section of model-sm90*.md."""
    a = result["assumptions"]
    lines = [
        "",
        f"## Fused-linear MaskSub loss, {result['shape']}, {result['dtype']}, forward + backward: {result['label']}",
        "",
        f"Assumed: cuBLAS at {100 * a['matmul_efficiency']:.0f}% of the {a['bf16_dense_tflops']:.0f} TFLOP/s dense "
        f"bf16 peak (to calibrate on a GPU); eager composite {a['eager_mc_passes']} bf16 [M, C] passes, compiled "
        f"{a['compiled_mc_passes']} (fully fused); fused op in {a['chunks']} chunks of {a['chunk_rows']} rows, "
        f"dW's matmul once per chunk ({a['dw_matmuls']}), the gradients written over the chunk's logits. "
        "TFLOP/s count the composite's 6 useful matmuls.",
        "",
        "| provider | predicted us | predicted TFLOP/s | % of bf16 peak |",
        "|---|---|---|---|",
    ]
    for p in result["providers"]:
        lines.append(
            f"| {p['provider']} | {p['predicted_us']:.0f} | {p['tflops']:.0f} | {p['percent_of_bf16_peak']:.1f} |"
        )
    b, mem = result["fused_breakdown_us"], result["extra_memory_mib"]
    lines += [
        "",
        f"Predicted ratio (composite time / fused time): {result['ratio_vs_eager']:.2f}x vs eager, "
        f"{result['ratio_vs_compiled']:.2f}x vs compiled. Fused breakdown: matmuls {b['matmuls']:.0f} us, loss "
        f"kernels {b['loss_kernels']:.0f} us (the bias added as they read; db in dW's matmul), launches "
        f"{b['launches']:.0f} us, the backward's scaling of the stored gradients (in fp32) "
        f"{b['backward_scaling']:.0f} us, the forward's copies (dW's accumulator zeroed, the rows stacked, dH's rows "
        f"from the fp32 product) {b['forward_copies']:.0f} us. "
        f"Extra memory (model): fused "
        f"{mem['fused']:.0f} MiB = {mem['percent']:.1f}% of the composite's lower bound "
        f"({mem['composite_lower_bound']:.0f} MiB: 4 bf16 [M, C]).",
    ]
    lines += measured.markdown(result.get("measured_reference"), b["loss_kernels"])
    device_ms = {p["chunk_rows"]: p["predicted_us"] / 1e3 for p in result.get("chunk_sweep", [])}
    device_ms[a["chunk_rows"]] = result["providers"][0]["predicted_us"] / 1e3  # the default's (not P=5's)
    reference = result.get("measured_reference") or {}
    probed = [c["fused_us_probed"] / 1e3 for c in reference.get("calibrated", []) if "fused_us_probed" in c]
    lines += linear_loss_host.markdown(result.get("host"), device_ms, (a["chunk_rows"], probed))
    if result.get("chunk_sweep"):
        lines += [
            "",
            "Other chunk sizes (the benchmark's sweep, `CHUNK_SWEEP` in masksub_kernels/bench/linear_loss.py: a GPU "
            "run measures each, to calibrate what memory buys; and the default chunks with the loss forward's rows "
            "split over more programs per SM, which the model, memory-bound at 650 ns of latency, predicts alike: "
            "the GPU says whether more loads in flight close the loss kernels' gap to it):",
            "",
            "| provider | chunk budget MiB | SPLIT_PROGRAMS_PER_SM (target) | predicted us | x compiled | extra MiB "
            "(model) | % of composite |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in result["chunk_sweep"]:
            lines.append(
                f"| {p['provider']} | {p['budget_mib']} | {p['programs_per_sm']} | {p['predicted_us']:.0f} | "
                f"{p['ratio_vs_compiled']:.2f} | {p['extra_mib']:.0f} | {p['percent_of_composite']:.1f} |"
            )
    if result.get("vocabularies"):
        lines += [
            "",
            "Other heads, where the chunk budget alone would give few rows (each chunk's dW matmul reads and writes "
            f"the fp32 accumulator [C, D]: below ~{result['assumptions']['dw_ridge_rows']} rows those passes outlast "
            "the matmul on this card): the op's rule, "
            "the budget with at least `GRADS_CHUNK_MIN_ROWS` rows (ops/_linear_loss_chunks.py), against the budget "
            "alone (the rule before 2026-12-02). PREDICTIONS, loss kernels uncalibrated; x compiled = the assumed "
            "fully fused torch.compile's time / the fused time:",
            "",
            "| shape | rows (rule / budget) | predicted us (rule / budget) | x compiled (rule / budget) | extra MiB "
            "(rule / budget) | % of composite (rule / budget) |",
            "|---|---|---|---|---|---|",
        ]
        for v in result["vocabularies"]:
            lines.append(
                f"| {v['shape']} | {v['rule_rows']} / {v['budget_rows']} | {v['rule_us']:.0f} / {v['budget_us']:.0f} | "
                f"{v['rule_ratio_vs_compiled']:.2f} / {v['budget_ratio_vs_compiled']:.2f} | "
                f"{v['rule_extra_mib']:.0f} / {v['budget_extra_mib']:.0f} | "
                f"{v['rule_percent_of_composite']:.1f} / {v['budget_percent_of_composite']:.1f} |"
            )
    return lines
