#!/usr/bin/env bash
# GPU call 1 of 2: the benchmarks (python -m masksub_kernels.bench), one suite per process under its own cap; the
# result files are rewritten after each suite and the JSON after each case, so a suite cut short (a cap, a crash)
# keeps its finished cases.
#
#   benchmarks/gpu_bench.sh OUTDIR        (first; then benchmarks/gpu_check.sh, call 2 of 2: the tests)
#   DRY_RUN=1 benchmarks/gpu_bench.sh X   prints the steps, their caps and the result files; runs nothing
#   SUITES="token_select loss" ...        a narrower rerun (default: every suite, in the order below)
#
# Files (8): env.txt, summary.txt, build.log, bench.log, the benchmark's <device>-<date>.json, .md and .png, and
# linear-loss-numerics.json.
#
# Budget, GPU caps (s); they add up to 475 s, so this call ends inside 8 minutes even if every step runs to its cap.
# Expected: ~6 minutes on a fresh machine (the build). Run it first: the numbers are what only a GPU gives.
# tools.perf_model.measured then runs on the CPU machine, on the files that came back (no GPU needed).
# The order puts the open question first (issue 13: the fused-linear loss against torch.compile), so that a call cut
# short still brings it back.
#   env            15  card, driver, versions
#   linear_loss    50  the fused-linear loss at BERT-base MLM's shape, bf16, against the composite, its
#                      torch.compile and Liger-Kernel's main-branch CE (where liger_kernel imports: carry it),
#                      then the op's chunk sweep (3 other chunk sizes and the loss forward's rows in twice the
#                      class splits, 'full' only, ~1 s each; last, so that a cap drops it first)
#   profile        20  benchmarks/gpu_profile.py --only linear, into bench.log: torch.profiler's table of the
#                      fused-linear loss (the chunk matmuls' cuBLAS kernels and times: the assumed 70% efficiency
#                      calibrated; the loss kernels per chunk; wall against device time: host-bound or not)
#   build         130  only when masksub_kernels._C does not import: a fresh machine (50-140 s for sm_90: 50 s on
#                      the H200 machine's 16 cores, 2026-11-30); once, before the first suite with a masksub[cuda]
#                      provider (loss, token_select, grid_mask): after the fused-linear steps, which do not need it
#   loss           55  ImageNet, BERT-like and LLM-like rows x classes
#   token_select   50  3 ViT shapes, bf16; providers masksub[triton], masksub[cuda], official, timm and
#                      torch.compile(official), whose Inductor compilation is most of the time (41 s on the H200)
#   grid_mask      85  images (fp32, bf16) and Swin tokens, same providers: three Inductor compilations (images in
#                      two dtypes, the Swin token composite with its backward); stopped by a 55 s cap before the Swin
#                      compile(official) rows on the H200 (2026-11-30), so 25 s from train and 5 from token_select
#   train          40  whole training steps of ViT-S, ViT-B, Swin-T, ResNet-50 (10 repeats each; 30 s on the H200)
#   numerics       30  benchmarks/linear_loss_numerics.py: the fused-linear loss's gradient error against float64
#                      where the branches agree, the Triton path compiled (on the CPU: the interpreter's truncating
#                      bf16), against the bf16-logit composites; M = 128, without torch.compile (seconds, plus
#                      a process start, ~8 s, and Triton compilations the linear_loss suite may not have done)
# H200 (2026-11-30), whole steps: token_select 41 s, loss 41, linear_loss 34, train 30; the backward mode's
# untimed forward per repeat adds a few seconds to loss and linear_loss. Each suite prints the seconds of every case
# (`[12.3 s, 40 s in]`), so a capped step's log says where its time went.
# Without a GPU the same steps time the PyTorch reference on the CPU, as `make bench` does.
# Timed on the CPU here (2 cores shared with other jobs, CAP_SCALE 8): env 18 s, build 6 s (_C present),
# token_select 47 s, grid_mask 75 s, loss 86 s, train stopped by its cap (720 s) with the other suites' files
# intact; see the GPU run section of the README.
source "$(dirname "$0")/gpu_lib.sh"

build_if_missing() {
  if "$PY" -c 'import masksub_kernels._C' 2> /dev/null; then
    echo "masksub_kernels._C imports: no build needed"
  elif ! "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' || ! command -v nvcc > /dev/null; then
    echo "skipped: no CUDA build of torch or no nvcc here (the cuda provider is left out)"
  else
    MASKSUB_BUILD_CUDA=1 MASKSUB_CUDA_ARCHS=90 "$PY" setup.py build_ext --inplace
  fi
}

setup_run "$@"
declare -A CAP=([token_select]=50 [grid_mask]=85 [loss]=55 [linear_loss]=50 [train]=40)

suites="${SUITES:-linear_loss loss token_select grid_mask train}"
for suite in $suites; do
  [[ -v CAP[$suite] ]] || { echo "gpu_bench.sh: unknown suite '$suite' (known: ${!CAP[*]})" >&2; exit 2; }
done
step env.txt 15 write_env
built= # the build runs once, just before the first suite with a masksub[cuda] provider (the fused-linear suite,
# its profile and train have none: a call cut short after them still brings their numbers back)
for suite in $suites; do
  if [[ $suite =~ ^(loss|token_select|grid_mask)$ && -z $built ]]; then
    step build.log 130 build_if_missing
    built=1
  fi
  step bench.log "${CAP[$suite]}" "$PY" -m masksub_kernels.bench --out "$OUT" --append --suites "$suite"
  if [[ $suite == linear_loss ]]; then
    step bench.log 20 "$PY" benchmarks/gpu_profile.py --only linear
  fi
done
step bench.log 30 "$PY" benchmarks/linear_loss_numerics.py --no-compile --out "$OUT/linear-loss-numerics.json"
output linear-loss-numerics.json
output "<device>-<date>.json"
output "<device>-<date>.md"
output "<device>-<date>.png"
finish
