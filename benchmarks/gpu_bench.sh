#!/usr/bin/env bash
# GPU call 1 of 2: the benchmarks (python -m masksub_kernels.bench), one suite per process under its own cap, then
# the cuda backend's tests and compute-sanitizer (gpu_lib.sh's cuda_steps) on the extension built meanwhile. The
# JSON is rewritten after each case and the .md after each suite, so a suite cut short (a cap, a crash) keeps its
# finished cases (a sticky CUDA error stops its suite's process, rc 1 in summary.txt, its later cases "not run",
# the next suite runs in a fresh process); each kernel suite times this library's kernels of every shape before its
# baselines (runner.library_first), so a cap drops baselines measured before; the train suite times model after model, each
# with its plain step, so a cap drops whole models (their ratios need the plain step of the same run). No .png here (--no-plot: drawing it after each suite took capped GPU
# time, and a 9th file would not come back): `python -m masksub_kernels.bench --report-only OUT/<device>-<date>.json`
# draws it afterwards on the CPU machine, and rewrites the .md with the model's predictions on every row (the JSON
# left as it is).
#
#   benchmarks/gpu_bench.sh "$OUT"        (first; then benchmarks/gpu_check.sh "$OUT", call 2 of 2: the other tests)
#                                         (no argument: the device tool's $OUT, else benchmarks/results/gpu-<date>)
# The device calls, as sent (the .whl folder: Liger-Kernel's wheel, git-ignored, so carried; the H200 is the card of
# every committed run, so its figures compare: ask for it where one is lent, an H100's ratios are valid too):
#   run(command='MASKSUB_COMMIT=<git describe --always --dirty here> benchmarks/gpu_bench.sh "$OUT"',
#       carry=[".whl"], timeout_s=540, kind="nvidia-h200")
#   run(command='MASKSUB_COMMIT=<the same> benchmarks/gpu_check.sh "$OUT"', timeout_s=min(300, budget_left_s - 30))
#   then give_back (the copy has no .git: MASKSUB_COMMIT names the code in env.txt and the results' JSON)
#   DRY_RUN=1 benchmarks/gpu_bench.sh X   prints the steps, their caps and the result files; runs nothing
#   SUITES="token_select loss" ...        a narrower rerun (default: every suite, then cuda, in the order below;
#                                         SUITES=cuda: the build, the cuda backend's tests and the sanitizers alone)
#
# Files (8, the device tool's most): env.txt, summary.txt, bench.log, gemm.log, cuda.log (the extension's build, then
# the cuda steps), the benchmark's <device>-<date>.json and .md, linear-loss-numerics.json.
#
# Budget, GPU caps (s); they add up to 479 s (the build runs beside the steps after the fused-linear suite; the test asserts < 480 s a
# call), so this call ends inside 8 minutes even if every step runs to its cap (send it with timeout_s 540: the
# set-up outside the steps is ~15 s, 60 s a command at most), leaving the tests' call (260 s, sent at once after
# this one: a machine idle for 30 s is given back) and a machine's start-up room in the device's 15 minutes. Run it
# first: it holds what only a GPU gives, so that the call most likely cut (the second) holds the least (helper-122,
# finding 1). tools.perf_model.measured then runs on the CPU machine, on the files that came back (no GPU needed).
# The order puts the open question first (issue 13: the fused-linear loss against torch.compile), so that a call
# cut short still brings it back; the suites with a masksub[cuda] provider and the cuda steps come after the build.
#   env             9  card, driver, versions (Liger-Kernel's too: carry its wheel in .whl/, below); 7 s on the H200
#                      (5 s on 2026-12-04)
#   linear_loss   100  the fused-linear loss at BERT-base MLM's shape, bf16, against the composite, its
#                      torch.compile and Liger-Kernel's main-branch CE (where liger_kernel imports), then the op's
#                      chunk sweep (3 other chunk sizes and the loss forward's rows in twice the class splits,
#                      'full' only, ~1 s each), the recompute op on MLM-like labels (15% of rows counted: how
#                      much of its grid idles), and last RoBERTa's head with the op's floor of 384 rows per chunk
#                      against the budget's 192 (~2 s each: the loss kernels' specialisations are BERT's), and
#                      after them the recompute op's compiled MLM row (an Inductor compile never run on a GPU), so
#                      that a cap drops those first. Cold Triton and Inductor caches
#                      (34 s on 2026-11-30 as the 4th suite, after the loss suite had compiled the loss kernels;
#                      80 s, its cap, on 2026-12-04 with 13 cases: 16 now, helper-163; the two A/B rows,
#                      one launch and descending blocks, 'full' only, before the sweep)
#   build         130  in the background from the end of the fused-linear suite (its host times, issue 13's
#                      question, measured without nvcc beside them: helper-163), into cuda.log (nice, MAX_JOBS=6
#                      nvcc processes of the 16 cores), only when masksub_kernels._C does not import: nvcc for sm_90,
#                      50 s on the H200 machine's 16 cores (2026-11-30), 77 s (2026-12-04). The 137 s of caps
#                      before the first suite with a masksub[cuda] provider (loss, token_select, grid_mask) or cuda
#                      cover it; waited for there
#   profile        25  benchmarks/gpu_profile.py --only linear, into bench.log: torch.profiler's table of the
#                      fused-linear loss (the chunk matmuls' cuBLAS kernels and times: the assumed 70% efficiency
#                      calibrated; the loss kernels per chunk; wall against device time: host-bound or not; 18 s
#                      of 20 on 2026-12-04 without the build beside it, which now starts before it: 3 s more;
#                      its tables print at the end, so a cap kill loses them)
#   gemm           23  benchmarks/gemm_probe.py into gemm.log: the chunk's matmuls alone as the loop runs them
#                      ("loop:" rows) and over a padded W, cuBLAS's kernels named (tools/perf_model reads the
#                      newest gpu-<date>/*gemm*.log: the model's matmuls calibrated; ~20 s on 2026-12-04 with 11
#                      rows); between them since 2026-12-06 the "overlap:" rows (issue 13's second stream: the loss
#                      launch beside the matmuls; 13 rows of ~0.1-0.5 ms x 23, no profiler; their loss launches' one-launch
#                      variant without a class tail compiled, ~3 s, as ncu's warm-up measured on 2026-12-04), paid for
#                      by 6 settled rows dropped (C's unaligned extent, bf16 outputs: each with its profiler pass);
#                      each section prints its seconds since the start (helper-240 estimated 14-22 s in all)
#   ncu            41  Nsight Compute on the fused-linear op's kernels (benchmarks/gpu_ncu.py: one 384-row chunk of
#                      the gradients-in-forward path, the recompute op on 4096 rows, RECOMPUTE_ROWS; cuBLAS's and the Triton
#                      kernels only), raw metrics in base units as CSV lines into bench.log between '== ncu_csv'
#                      markers (DRAM throughput and bytes, L2 hit rate, occupancy, warp stall reasons,
#                      instructions executed): why the loss kernels ran ~2x the model's time on 2026-11-30.
#                      Kernels compiled by the suite before (the Triton cache); one ncu run (its tables print at
#                      the end: a cap kill loses them), ~11 kernels replayed ~30 times each, 23.4 s on
#                      2026-12-04 (9.5 s of it the chunk's kernels, 7 s the imports); since 2026-12-06 the chunk's
#                      loss launch alone in both orders last (the A/B of FORWARD_DESCENDING: two kernels, their
#                      no-tail variants compiled in the warm-up, ~3 s each): ~30-35 s estimated, the cap raised
#                      from 32 s by the 9 s the steps around it had to spare (env, profile, gemm, numerics)
#                      Skipped where ncu is missing; says so where the performance counters are locked
#   numerics       10  benchmarks/linear_loss_numerics.py: the fused-linear loss's gradient error against float64
#                      where the branches agree, the Triton path compiled (on the CPU: the interpreter's truncating
#                      bf16), against the bf16-logit composites; M = 128, without torch.compile (8 s, 2026-12-04)
#   train          38  whole training steps of Swin-T, ResNet-50, ViT-B, ViT-S (10 repeats each, no host-time pass),
#                      model after model, plain first (a cut keeps whole models: each ratio's plain row; they were
#                      library-first, helper-214); 12 of 16 cases in its 38 s cap on 2026-12-04 (~8 s a model with
#                      its build): ViT-S, measured then, is last and the likeliest cut; 3 s from profile's cap
#   loss           58  ImageNet, BERT-like and LLM-like rows x classes (54 s on the H200, 2026-12-04: 3 s from env's
#                      cap for an H100's lower bandwidth, helper-214)
#   token_select   40  4 ViT shapes, bf16; providers masksub[triton], masksub[cuda], official, torch.compile(official)
#                      (its Inductor compilation, 6-9 s a shape, is most of the time) and timm; stopped by its 45 s
#                      cap before the last compile(official) row on 2026-12-04 (helper-122, finding 2: 20 cases)
#   grid_mask      20  images (fp32, bf16) and Swin tokens, same providers: the 6 kernel rows first (~2 s each with
#                      their Triton compilation), official, then three Inductor compilations (>15 s each): on
#                      2026-12-04 the cap stopped it in the first of them, after 3 rows, the kernels' bf16 and Swin
#                      rows not reached (finding 3); now a cap drops the compile(official) rows, measured before
#   cuda           70  the cuda backend's tests, then compute-sanitizer (gpu_lib.sh's cuda_steps, their selections
#   memcheck       25  and timings): the libstdc++ fix and the kernels under the sanitizers, in this call since
#   racecheck      20  helper-122's review (finding 1: the second call is the one a late send or start-up cuts)
# The backward mode's untimed forward per repeat adds a few seconds to loss and linear_loss. Each suite prints the
# seconds of every case (`[12.3 s, 40 s in]`), so a capped step's log says where its time went.
# Liger-Kernel is not on the GPU machine's image (no network there): `python3 -m pip download --no-deps -d .whl
# liger-kernel` here (a pure-Python wheel), then the device call carries `.whl` (git-ignored); gpu_lib.sh installs
# it into a folder of its own on PYTHONPATH. Without it the Liger rows are left out (the suites say so).
# Without a GPU the same steps time the PyTorch reference on the CPU, as `make bench` does.
source "$(dirname "$0")/gpu_lib.sh"

build_if_missing() {
  # a _C that imports but was built from other sources (a warm machine's, before csrc/ changed) is refused by the
  # package as stale (_backend.stale_extension): built again then, as one that does not import (helper-333)
  if "$PY" -c 'import sys; from masksub_kernels._backend import _compiled_extension_missing as m; sys.exit(m() is not None)' 2> /dev/null; then
    echo "masksub_kernels._C imports and matches csrc/: no build needed"
  else
    MAX_JOBS=6 nice -n 10 bash "$SCRIPT" __call build_extension || return
    if install_extension; then
      note "the build ran beside the steps after the fused-linear suite (nice, 6 nvcc jobs): their host times shared the CPU"
    else
      echo "no extension built: the masksub[cuda] provider is left out"
    fi
  fi
}

ncu_linear() { # benchmarks/gpu_ncu.py under Nsight Compute: one CSV row of raw metrics per profiled kernel
  if ! command -v ncu > /dev/null; then
    echo "ncu: not found: the kernels' metrics are left out"
    return 0
  fi
  # one ncu run (its tables print when the process ends: a second run would not fit the cap); the sections this
  # ncu lists, else its 'detailed' set. Base units (no auto-scaled ones), between markers for the parsing later
  local wanted=(SpeedOfLight MemoryWorkloadAnalysis MemoryWorkloadAnalysis_Chart Occupancy LaunchStats
    WarpStateStats InstructionStats) listed name sections=() log rc
  listed="$(ncu --list-sections 2>&1)"
  for name in "${wanted[@]}"; do grep -qw -- "$name" <<< "$listed" && sections+=(--section "$name"); done
  if ((${#sections[@]} != 2 * ${#wanted[@]})); then
    echo "ncu lists not all of ${wanted[*]}: its 'detailed' set instead"
    sections=(--set detailed)
  fi
  log="$(mktemp)"
  echo "== ncu_csv begin ${sections[*]}"
  ncu --profile-from-start off --clock-control none --csv --page raw --print-units base \
    --kernel-name-base demangled \
    --kernel-name 'regex:^_(loss_fwd_bwd|loss_fwd|loss_bwd|scale|fwd|dh|dh_sum|dw)_kernel|gemm|nvjet|xmma|cutlass|splitK' \
    "${sections[@]}" "$PY" benchmarks/gpu_ncu.py 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  echo "== ncu_csv end rc=$rc"
  grep -q ERR_NVGPUCTRPERM "$log" && echo "ncu: no access to the GPU's performance counters (ERR_NVGPUCTRPERM)"
  grep -q LibraryNotLoaded "$log" && echo "ncu: could not load its library here (LibraryNotLoaded: a sandboxed runtime?)"
  rm -f "$log"
  return "$rc"
}

setup_run "$@"
export MASKSUB_BENCH_DATE="${MASKSUB_BENCH_DATE:-$(date -u +%F)}"  # one date in every suite's file names (helper-106)
declare -A CAP=([linear_loss]=100 [train]=38 [loss]=58 [token_select]=40 [grid_mask]=20 [cuda]=115)

suites="${SUITES:-linear_loss train loss token_select grid_mask cuda}"
for suite in $suites; do
  [[ -v CAP[$suite] ]] || { echo "gpu_bench.sh: unknown suite '$suite' (known: ${!CAP[*]})" >&2; exit 2; }
done
NEEDS_BUILD='^(loss|token_select|grid_mask|cuda)$' # a masksub[cuda] provider, or the cuda backend's tests
step env.txt 9 write_env
needs_build=
for suite in $suites; do [[ $suite =~ $NEEDS_BUILD ]] && needs_build=1; done
start_build() { # once: beside the steps that do not need it (the fused-linear suite's profile, probe, ncu and
  # numerics, train), after the fused-linear suite's host times; into cuda.log, written by the cuda steps after it
  [[ -n $needs_build && -z $build_started ]] && step_bg cuda.log 130 build_if_missing
  build_started=1
}
waited= build_started=
for suite in $suites; do
  [[ $suite != linear_loss ]] && start_build
  if [[ $suite =~ $NEEDS_BUILD && -z $waited ]]; then
    wait_steps
    waited=1
  fi
  if [[ $suite == cuda ]]; then
    cuda_steps # 70 + 25 + 20 s (gpu_lib.sh)
    continue
  fi
  step bench.log "${CAP[$suite]}" "$PY" -m masksub_kernels.bench --out "$OUT" --append --no-plot --suites "$suite"
  if [[ $suite == linear_loss ]]; then
    start_build
    step bench.log 25 "$PY" benchmarks/gpu_profile.py --only linear
    step gemm.log 23 "$PY" benchmarks/gemm_probe.py
    step bench.log 41 ncu_linear  # its tables print only when the workload ends: no partial result to keep
    step bench.log 10 "$PY" benchmarks/linear_loss_numerics.py --no-compile --out "$OUT/linear-loss-numerics.json"
    output linear-loss-numerics.json
  fi
done
if [[ ${suites//cuda/} =~ [a-z] ]]; then # a benchmark suite ran: its files
  output "<device>-<date>.json"
  output "<device>-<date>.md"
fi
finish
