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
# up to 410 s, so that after the benchmarks' call (340 s at most) one start-up and the transfers fit: send this call
# as soon as the benchmarks' returns (a machine idle for 30 s is given back, and a second start-up would cost its
# phase 3); a step stopped by its cap keeps the outcomes of the tests it ran (-v). Run it second: the numbers come first. The order is what
# a GPU alone can tell, most wanted first: the kernels most changed since the only GPU run (2026-11-30) and never
# run on one (the loss's reduced and realigned kernels; the fused-linear op, whose fp16 / bf16 gradients are
# written over its fp32 chunk logits behind a barrier), then the CUDA extension (its refusals crashed the process
# then: the libstdc++ fix is not yet run on a GPU) under the sanitizers, then the rest of the suite.
#   env             15  card, driver, versions, kernel and ncu's (9 s on the H200 on 2026-11-30)
#   phase 1        150  in parallel on the 16 cores (Triton compiles on one core per process, nvcc on a few):
#     build.log         nvcc, sm_90 only (gpu_lib.sh's build_extension): 50 s on the H200 machine (2026-11-30),
#                       more since masksub_loss.cu grew; seconds when the benchmarks' call built on this machine
#     tests-select.log  tests/ops/test_token_select.py (99 s in one process on the H200, 2026-11-30)
#     tests-loss.log    every loss test file of tests/ops (the fused loss, its reduced op, the fused-linear op),
#                       in 4 pytest-xdist workers (where xdist is installed: the GPU machine has it)
#   cuda.log        50  after the build: the cuda backend's tests (tests/cuda_extension, the cuda
#                       parametrisations of tests/ops, tests/test_backend.py; ~750 tests) in 8 xdist workers
#                       (41 s on the H200 in 12, 2026-11-30)
#                   75  compute-sanitizer --tool memcheck, kernels of csrc/ only (--kernel-name kns=masksub), on the
#                       fp32 and one-index-dtype cases of every kernel test of tests/cuda_extension (133 tests; the
#                       refusals are in the step before, the 2^32-counter one left out: 4.3e9 draws), token
#                       selection first (the 8192-key sort); PyTorch's caching allocator off, so a read past a
#                       tensor is past an allocation
#                   25  compute-sanitizer --tool racecheck (shared-memory hazards) on the kernels that use shared
#                       memory (selection, cell masks, mask-token gradient, loss), small and largest blocks (below):
#                       20 s on the H200
#   phase 3         95  in parallel: the other op tests (masks, token grid masks, autograd edges, inputs; 4 workers)
#     tests-masks.log   and the rest of the suite (training on timm and transformers models, benchmarks' harness;
#     tests-rest.log    4 workers); both were stopped by 200 s caps at ~2/3 on 2026-11-30 in one process each
# Timed on the CPU here before this order (2 shared cores, no GPU, CAP_SCALE 12): env 8 s; the test processes 272,
# 331, 369, 404 s; cuda tests 52 s; memcheck and racecheck selections 26 s and 11 s, uninstrumented (no
# compute-sanitizer without a GPU).
#
# Where the run differs from CI, on purpose: the build goes to build/gpu-lib and is copied into the package only
# when phase 1 is over (an in-place build would appear under the feet of the tests importing the package), and the
# developer tools' own tests (compile_kernels, check_spills, cuda_emulator, perf_model) are left to the CPU CI: they
# run the same there as here (compile_kernels alone is ~170 s of Triton compilation; the performance model compiles
# ~76 cubins and checks floors set from the CI's Triton release, not the GPU machine's).
source "$(dirname "$0")/gpu_lib.sh"

# jit_census: under the CPU interpreter, the count of Triton specialisations each step would compile on a GPU
# -v: a test's outcome is on its own line as it ends; failures_now: its traceback (a property test's falsifying
# example) too, so that a step stopped by its cap still says why its tests failed
PYTEST=("$PY" -m pytest -v -p no:cacheprovider -rfEs --durations=10 -p benchmarks.jit_census -p benchmarks.failures_now)
# pytest-xdist where installed (the GPU machine has it); one file per worker (--dist loadfile), so that each file's
# Triton specialisations compile once
XDIST=()
XDIST8=()
"$PY" -c 'import xdist' 2> /dev/null && XDIST=(-n 4 --dist loadfile) && XDIST8=(-n 8 --dist loadfile)
DEV_TOOLS=(--ignore-glob='*test_compile_kernels.py' --ignore-glob='*test_cuda_spills.py'
  --ignore-glob='*test_check_spills.py' --ignore-glob='*test_cuda_emulator.py' --ignore-glob='*test_perf_model.py')
CUDA_TESTS=(tests/cuda_extension tests/test_backend.py)
# memcheck: every kernel test's fp32 (and first index dtype) cases, token selection's file first (pytest runs the
# files in the order given)
MEMCHECK_FILES=(tests/cuda_extension/test_cuda_token_select.py tests/cuda_extension/test_cuda_loss.py
  tests/cuda_extension/test_cuda_grid_mask.py tests/cuda_extension/test_cuda_module.py)
MEMCHECK_K='not past_two_to_the_32 and not refus and not dtype1 and not dtype2 and not dtype3 and not index_dtype1
  and not (select_matches_reference and True-) and not (select_gather_matches_reference and True-)'
MEMCHECK_K="$(echo $MEMCHECK_K)" # one line
# racecheck: a block of each shared-memory kernel at small and at the largest capacities (8192 sort keys)
RACECHECK_K='(test_select_matches_reference and (4-10-5 or 3-257-100 or 1-8192-4096))
  or test_grid_cell_mask_matches_reference or test_mask_token_grad_adds_every_token
  or (test_mask_token_grad_narrow_rows and contiguous) or (test_mask_tokens_grid_matches_reference and 16-24-40-8)
  or (test_masksub_loss_matches_reference and (5-3 or 7-1000) and dtype0) or test_masksub_loss_single_terms'
RACECHECK_K="$(echo $RACECHECK_K)" # one line

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
  # grep reads a process substitution, not a pipe: under pipefail a pipe's writer, stopped by SIGPIPE when
  # grep -q quits early, would make the test fail and drop the filter
  grep -q -- '--kernel-name' <(compute-sanitizer --help 2>&1) && only_ours=(--kernel-name kns=masksub)
  compute-sanitizer --tool "$tool" "${only_ours[@]}" --error-exitcode 99 --print-limit 50 "${PYTEST[@]}" "$@"
}

setup_run "$@" # (from here in the repository's root: the globs below are its files)
LOSS_TESTS=(tests/ops/test_*loss*.py)
step env.txt 15 write_env

# phase 1: the build beside the tests of the kernels that changed most (a _C left by an earlier run on this machine
# would give these tests a cuda backend: gone, and rebuilt, incrementally when nothing changed)
[[ -z ${DRY_RUN:-} ]] && rm -f masksub_kernels/_C*.so build/gpu-lib/masksub_kernels/_C*.so
MAX_JOBS=8 step_bg build.log 150 build_extension
step_bg tests-select.log 150 "${PYTEST[@]}" tests/ops/test_token_select.py
step_bg tests-loss.log 150 "${PYTEST[@]}" "${XDIST[@]}" "${LOSS_TESTS[@]}"
wait_steps

# phase 2: the cuda backend, with the extension just built
if [[ -n ${DRY_RUN:-} ]] || install_extension; then
  step cuda.log 50 "${PYTEST[@]}" "${XDIST8[@]}" "${CUDA_TESTS[@]}" tests/ops -k 'cuda or test_backend'
  step cuda.log 75 sanitize memcheck "${MEMCHECK_FILES[@]}" -k "$MEMCHECK_K"
  step cuda.log 25 sanitize racecheck tests/cuda_extension -k "$RACECHECK_K"
else
  note "no CUDA extension built (see build.log): the cuda backend's tests and the sanitizers did not run"
fi

# phase 3: the rest of the suite (the other op files' cuda parametrisations ran in phase 2: the complement of its -k)
OTHER_OPS=(--ignore=tests/ops/test_token_select.py "${LOSS_TESTS[@]/#/--ignore=}")
step_bg tests-masks.log 95 "${PYTEST[@]}" "${XDIST[@]}" tests/ops "${OTHER_OPS[@]}" -k 'not (cuda or test_backend)'
step_bg tests-rest.log 95 "${PYTEST[@]}" "${XDIST[@]}" tests --ignore=tests/ops "${CUDA_TESTS[@]/#/--ignore=}" \
  "${DEV_TOOLS[@]}"
wait_steps
finish
