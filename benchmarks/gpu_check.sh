#!/usr/bin/env bash
# GPU call 2 of 2: build the CUDA extension for sm_90, run the test suite on CUDA tensors, then compute-sanitizer
# memcheck and racecheck over the CUDA extension's kernel tests. Results land in OUTDIR as each step ends.
#
#   benchmarks/gpu_check.sh OUTDIR        (after benchmarks/gpu_bench.sh OUTDIR2: the benchmarks, call 1 of 2)
#   DRY_RUN=1 benchmarks/gpu_check.sh X   prints the steps, their caps and the result files; runs nothing
#
# Works from the source tree with the machine's own Python (torch, triton, timm, pytest), no network, no install.
# Files (8): env.txt, summary.txt (one line per step), build.log, tests-select.log, tests-loss.log,
# tests-masks.log, tests-rest.log, cuda.log.
#
# Budget: GPU caps (s) and what fills them. The device gives 15 minutes with start-up, 10 per command; the caps add
# up to 355 s, so that after the benchmarks' call (475 s at most) and a start-up both fit in most sessions; a step
# stopped by its cap keeps the outcomes of the tests it ran (-v). Run it second: the numbers come first.
#   env             15  card, driver, versions
#   phase 1        200  in parallel on the 16 cores (Triton compiles on one core per process, nvcc on a few):
#     build.log         nvcc, sm_90 only: 50 s on the H200 machine (2026-11-30)
#     tests-*.log       the test suite on CUDA tensors, torch and triton backends. The census (benchmarks/jit_census.py,
#                       CPU interpreter) counts 234 Triton specialisations and 98 C launchers for the whole run:
#                       token_select 78, masksub_loss 74, grid and token-grid masks 83, the rest 5. On the H200
#                       (2026-11-30, 200 s caps, one process each): token select 99 s, loss 51 s; the other ops' tests
#                       and the rest (training: timm and transformers models) were stopped by their caps at ~2/3, so
#                       those two now run in 3 pytest-xdist workers each (where xdist is installed) under 200 s caps
#   cuda.log        50  after the build: the cuda backend's tests (tests/cuda_extension, the cuda
#                       parametrisations of tests/ops, tests/test_backend.py; 751 tests): 41 s on the H200 in 12
#                       xdist workers, here in 3 (one process took longer than its cap)
#                   60  compute-sanitizer --tool memcheck, kernels of csrc/ only (--kernel-name kns=masksub), on
#                       every kernel test of tests/cuda_extension except the 2^32-counter one (4.3e9
#                       draws); PyTorch's caching allocator off, so a read past a tensor is past an allocation
#                   30  compute-sanitizer --tool racecheck (shared-memory hazards) on the kernels that use shared
#                       memory (selection, cell masks, mask-token gradient, loss), small and largest blocks (below):
#                       20 s on the H200
# Timed on the CPU here (2 shared cores, no GPU, CAP_SCALE 12): env 8 s; phase 1 404 s (build 74 s, incremental;
# test processes 272, 331, 369, 404 s; census per process 78, 74, 80, 5 specialisations); cuda tests 52 s;
# memcheck and racecheck selections 26 s and 11 s, uninstrumented (no compute-sanitizer without a GPU); total
# 503 s, every step exit 0. An earlier run at load 5-9, tests/ops in 1 process, build from scratch: 27.6 min.
#
# Where the run differs from CI, on purpose: the build goes to build/gpu-lib and is copied into the package only
# when phase 1 is over (an in-place build would appear under the feet of the tests importing the package), and the
# developer tools' own tests (compile_kernels, check_spills, cuda_emulator, perf_model) are left to the CPU CI: they
# run the same there as here (compile_kernels alone is ~170 s of Triton compilation; the performance model compiles
# ~76 cubins and checks floors set from the CI's Triton release, not the GPU machine's).
source "$(dirname "$0")/gpu_lib.sh"

# jit_census: under the CPU interpreter, the count of Triton specialisations each step would compile on a GPU
# -v: a test's outcome is on its own line as it ends (a step stopped by its cap still names its failures)
PYTEST=("$PY" -m pytest -v -p no:cacheprovider -rfEs --durations=10 -p benchmarks.jit_census)
# the two largest selections in 3 workers each where pytest-xdist is installed (the GPU machine has it); one file
# per worker (--dist loadfile), so that each file's Triton specialisations compile once
XDIST=()
"$PY" -c 'import xdist' 2> /dev/null && XDIST=(-n 3 --dist loadfile)
DEV_TOOLS=(--ignore-glob='*test_compile_kernels.py' --ignore-glob='*test_cuda_spills.py'
  --ignore-glob='*test_check_spills.py' --ignore-glob='*test_cuda_emulator.py' --ignore-glob='*test_perf_model.py')
CUDA_TESTS=(tests/cuda_extension tests/test_backend.py)
# racecheck: a block of each shared-memory kernel at small and at the largest capacities (8192 sort keys)
RACECHECK_K='(test_select_matches_reference and (4-10-5 or 3-257-100 or 1-8192-4096))
  or test_grid_cell_mask_matches_reference or test_mask_token_grad_adds_every_token
  or (test_mask_token_grad_narrow_rows and contiguous) or (test_mask_tokens_grid_matches_reference and 16-24-40-8)
  or (test_masksub_loss_matches_reference and (5-3 or 7-1000) and dtype0) or test_masksub_loss_single_terms'
RACECHECK_K="$(echo $RACECHECK_K)" # one line

build_extension() {
  if ! "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' || ! command -v nvcc > /dev/null; then
    echo "skipped: no CUDA build of torch or no nvcc here"
    return 0
  fi
  MASKSUB_BUILD_CUDA=1 MASKSUB_CUDA_ARCHS=90 "$PY" setup.py build_ext --build-lib build/gpu-lib --build-temp build/gpu-temp
}

sanitize() { # TOOL PYTEST-ARGS...: compute-sanitizer on csrc/'s kernels; without a GPU, the same tests uninstrumented
  local tool=$1
  shift
  if ((!HAVE_GPU)); then
    echo "no GPU: the same tests run without compute-sanitizer (the cuda backend on the CUDA emulator)"
    "${PYTEST[@]}" "$@"
    return
  fi
  # without PyTorch's caching allocator every tensor is an allocation of its own: a read past it is caught
  [[ $tool == memcheck ]] && export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  local only_ours=()
  compute-sanitizer --help | grep -q -- '--kernel-name' && only_ours=(--kernel-name kns=masksub)
  compute-sanitizer --tool "$tool" "${only_ours[@]}" --error-exitcode 99 --print-limit 50 "${PYTEST[@]}" "$@"
}

setup_run "$@"
step env.txt 15 write_env

# phase 1: the build beside the tests that do not need it (a _C left by an earlier run on this machine would give
# these tests a cuda backend: gone, and rebuilt, incrementally when nothing changed)
[[ -z ${DRY_RUN:-} ]] && rm -f masksub_kernels/_C*.so build/gpu-lib/masksub_kernels/_C*.so
step_bg build.log 200 build_extension
step_bg tests-select.log 200 "${PYTEST[@]}" tests/ops/test_token_select.py
step_bg tests-loss.log 200 "${PYTEST[@]}" tests/ops/test_masksub_loss.py
step_bg tests-masks.log 200 "${PYTEST[@]}" "${XDIST[@]}" tests/ops --ignore=tests/ops/test_token_select.py \
  --ignore=tests/ops/test_masksub_loss.py
step_bg tests-rest.log 200 "${PYTEST[@]}" "${XDIST[@]}" tests --ignore=tests/ops "${CUDA_TESTS[@]/#/--ignore=}" "${DEV_TOOLS[@]}"
wait_steps

# phase 2: the cuda backend, with the extension just built
if [[ -n ${DRY_RUN:-} ]] || cp build/gpu-lib/masksub_kernels/_C*.so masksub_kernels/ 2> /dev/null; then
  step cuda.log 50 "${PYTEST[@]}" "${XDIST[@]}" "${CUDA_TESTS[@]}" tests/ops -k 'cuda or test_backend'
  step cuda.log 60 sanitize memcheck tests/cuda_extension -k 'not past_two_to_the_32'
  step cuda.log 30 sanitize racecheck tests/cuda_extension -k "$RACECHECK_K"
else
  note "no CUDA extension built (see build.log): the cuda backend's tests and the sanitizers did not run"
fi
finish
