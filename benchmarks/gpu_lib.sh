# Shared by benchmarks/gpu_check.sh and benchmarks/gpu_bench.sh (sourced, not run): time-capped steps whose
# results are on disk as soon as each step ends, so that a run cut short by the device's time limit still
# returns everything finished before it.
#
#   step FILE CAP CMD...     run CMD under `timeout CAP` (seconds), appending its output to $OUT/FILE; one line
#                            per step in $OUT/summary.txt (file, exit code, seconds, cap, command)
#   step_bg FILE CAP CMD...  the same in the background; wait_steps waits for all of them (their caps overlap
#                            each other and the foreground steps run meanwhile: the budget counts the largest,
#                            less those foreground caps)
#   output FILE              declare a result file that a step writes itself (e.g. the benchmark's .json)
#   finish                   the budget line; the exit code is that of the first step that failed on its own (a
#                            command's own 124 / 137 before its cap: 1 / 9), else 75 where a step was stopped by its
#                            cap (its results so far are kept; summary.txt says which), else 0. Not 124: the device
#                            tool reads 124 / 137 as the whole call timed out; not 1-5: pytest's own codes
#
# DRY_RUN=1 runs nothing: each function prints what it would do, then `finish` prints the budget (the caps of the
# foreground steps plus what background steps add beyond them, 480 s at most) and the result files (8 at most); tests/test_gpu_scripts.py checks both.
# CAP_SCALE multiplies every cap (default 1 on a GPU, 8 without one: the same flow on the CPU interpreter is slower;
# the printed budget is always the GPU one). The set-up outside the steps (the wheels' pip install, the CUDA and
# plugin probes) runs under `timeout $SETUP_S` each: a hang there (CUDA's initialisation) costs a minute, not the
# device call's whole limit with no summary.txt.

set -uo pipefail
SCRIPT="$(realpath "$0")" # the script that sourced this file: `timeout` runs its shell functions through it
export PYTHONUNBUFFERED=1 # logs on disk line by line: a step killed by its cap keeps its output
PY="${PYTHON:-python3}"
BUDGET=0      # seconds of caps, GPU scale
BG_CAP=0      # the largest cap among the background steps not yet waited for
BG_FROM=0     # BUDGET when the first of them started (foreground caps since then overlap them)
BG_PIDS=()
FAILED=0      # exit code of the first step that failed on its own (not stopped by its cap)
CAPPED=0      # 1 once a step was stopped by its cap
FILES=("summary.txt")
SETUP_S="${SETUP_S:-60}" # seconds for each set-up command outside the steps

_declare() {
  local file
  for file in "${FILES[@]}"; do [[ $file == "$1" ]] && return; done
  FILES+=("$1")
}

_run() { # FILE CAP CMD...: the step itself (foreground or background)
  local file=$1 cap=$2 start=$SECONDS rc
  shift 2
  echo "== $* (cap ${cap} s x ${CAP_SCALE})" >> "$OUT/$file"
  local command=("$@")
  declare -F "$1" > /dev/null && command=(bash "$SCRIPT" __call "$@") # timeout runs programs, not functions
  timeout -k 10 "$((cap * CAP_SCALE))" "${command[@]}" >> "$OUT/$file" 2>&1
  rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    if ((SECONDS - start >= cap * CAP_SCALE)); then
      echo "== stopped by its cap of $((cap * CAP_SCALE)) s" >> "$OUT/$file"
    else # the command's own 124 / 137 (an OOM kill, say) before the cap: a failure, not a cap
      echo "== exited with $rc on its own, before its cap" >> "$OUT/$file"
      rc=$((rc == 124 ? 1 : 9))
    fi
  fi
  printf '%-14s rc=%-3s %4s s (cap %s s x %s)  %s\n' "$file" "$rc" "$((SECONDS - start))" "$cap" "$CAP_SCALE" "$*" \
    >> "$OUT/summary.txt"
  echo "[$file] exit code $rc after $((SECONDS - start)) s"
  return "$rc"
}

step() {
  _declare "$1"
  BUDGET=$((BUDGET + $2))
  if [[ -n ${DRY_RUN:-} ]]; then echo "step $(printf "%q " "$@")"; return 0; fi
  _run "$@" || { local rc=$?; _failed "$rc"; return "$rc"; }
}

_failed() { # RC of a step: a cap's 124 / 137 counts as capped, anything else as the step's own failure
  if [[ $1 == 124 || $1 == 137 ]]; then
    CAPPED=1
  elif [[ $FAILED == 0 ]]; then
    FAILED=$1
  fi
}

step_bg() {
  _declare "$1"
  ((${#BG_PIDS[@]} == 0 && BG_CAP == 0)) && BG_FROM=$BUDGET
  ((BG_CAP < $2)) && BG_CAP=$2
  if [[ -n ${DRY_RUN:-} ]]; then echo "step_bg $(printf "%q " "$@")"; return 0; fi
  _run "$@" &
  BG_PIDS+=($!)
}

wait_steps() {
  local overlapped=$((BUDGET - BG_FROM))
  ((BG_CAP > overlapped)) && BUDGET=$((BUDGET + BG_CAP - overlapped))
  BG_CAP=0
  [[ -n ${DRY_RUN:-} ]] && { echo "wait_steps"; return 0; }
  local pid rc
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid"
    rc=$?
    [[ $rc != 0 ]] && _failed "$rc"
  done
  BG_PIDS=()
}

output() {
  _declare "$1"
  [[ -n ${DRY_RUN:-} ]] && echo "output $1"
  return 0
}

note() { # a line in summary.txt that is not a step (e.g. why one was skipped)
  [[ -n ${DRY_RUN:-} ]] && { echo "note $*"; return 0; }
  echo "$*" | tee -a "$OUT/summary.txt"
}

finish() {
  echo "budget ${BUDGET} s; files (${#FILES[@]}): ${FILES[*]}"
  [[ -n ${DRY_RUN:-} ]] && return 0
  rm -f "$OUT"/*.partial  # a write cut by a cap (the whole previous file is kept): not one of the call's files
  echo "budget ${BUDGET} s (GPU caps; x ${CAP_SCALE} here); total $SECONDS s" >> "$OUT/summary.txt"
  cat "$OUT/summary.txt"
  ((FAILED == 0 && CAPPED)) && return 75
  return "$FAILED"
}

write_env() { # card, driver, versions, the code: what the results were measured on
  date -u
  # the code: git's where the copy has its .git, else MASKSUB_COMMIT, which the device command sets (the tool copies
  # the working tree without .git: helper-163)
  echo "commit $(git describe --always --dirty --abbrev=12 2> /dev/null || echo "${MASKSUB_COMMIT:-unknown (no .git, MASKSUB_COMMIT unset)}")"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: none"
  # the card's state at the start (a compute-bound TFLOP/s depends on the sustained clock: helper-252), its own line
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| torch's CUDA", torch.version.cuda)
cpu = platform.processor() or platform.machine()
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else f"none (CPU, {cpu})")
from importlib import metadata
for name in ("triton", "timm", "pytest", "pytest-xdist", "pytest-timeout", "hypothesis", "liger-kernel"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
EOF
  nvcc --version 2>/dev/null | tail -1 || echo "nvcc: not found"
  compute-sanitizer --version 2>/dev/null | head -2 || echo "compute-sanitizer: not found"
  ncu --version 2>/dev/null | tail -1 || echo "ncu: not found"
  echo "kernel $(uname -r)" # a sandboxed runtime (gVisor) shows here: ncu and compute-sanitizer fail on one
  nproc
}

# The CUDA extension for sm_90 into build/gpu-lib (objects in build/gpu-temp: a second build on the same machine, the
# other call's, recompiles nothing that did not change). MAX_JOBS: nvcc processes (ninja). install_extension then
# copies it into the package under a temporary name and renames it (a process importing the package meanwhile never
# sees half a file); false when there is none.
build_extension() {
  if ! "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' || ! command -v nvcc > /dev/null; then
    echo "skipped: no CUDA build of torch or no nvcc here"
    return 0
  fi
  MASKSUB_BUILD_CUDA=1 MASKSUB_CUDA_ARCHS=90 "$PY" setup.py build_ext --build-lib build/gpu-lib \
    --build-temp build/gpu-temp || return
  # the C++ runtime _C links (setup.py's shared_cxx_runtime): a copy of its own crashed every refusal (2026-11-30,
  # 2026-12-04); the link line above names the library
  local built
  for built in build/gpu-lib/masksub_kernels/_C*.so; do
    [[ -e $built ]] || continue
    command -v readelf > /dev/null || break
    if readelf -Ws "$built" | grep -q ' [0-9][0-9]* _ZNSo9_M_insertIlEERSoT_'; then
      echo "WARNING: $built defines libstdc++'s std::ostream itself (a static C++ runtime: refusals will crash)"
    else
      echo "$built: the process's shared libstdc++ ($(readelf -d "$built" | grep -o 'libstdc++[^]]*'))"
    fi
  done
}

install_extension() {
  local built name
  for built in build/gpu-lib/masksub_kernels/_C*.so; do
    [[ -e $built ]] || return 1
    name="$(basename "$built")"
    cp "$built" "masksub_kernels/.$name.tmp" && mv "masksub_kernels/.$name.tmp" "masksub_kernels/$name" || return
  done
}

# Wheels carried in .whl/ (git-ignored; the device tool's `carry`: packages the GPU machine lacks, e.g. Liger-Kernel
# for the benchmarks' reference rows; it has no network) are installed into a folder on PYTHONPATH, never into the
# machine's Python. Without .whl/ nothing happens.
install_wheels() {
  local wheels=(.whl/*.whl)
  [[ -e ${wheels[0]} ]] || return 0
  if [[ -n ${DRY_RUN:-} ]]; then echo "note install_wheels ${wheels[*]}"; return 0; fi
  local site=/tmp/masksub-wheels
  if timeout -k 5 "$SETUP_S" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}"; then
    export PYTHONPATH="$PYTHONPATH:$site"
    echo "installed into $site: ${wheels[*]}"
  else
    echo "pip could not install ${wheels[*]}: going on without them"
  fi
}

# Common set-up: the output folder, the package from this checkout, the GPU or not. Or, called as
# `SCRIPT __call FUNCTION ARGS...` (by _run, under timeout), run one of the script's functions and exit.
setup_run() {
  cd "$(dirname "$SCRIPT")/.." || exit 2
  if [[ ${1:-} == __call ]]; then
    shift
    pytest_command # (a function that runs pytest: sanitize)
    "$@"
    exit
  fi
  # the argument, else the device tool's $OUT (what comes back: helper-163, a call without the argument wrote into
  # the repository's copy, lost), else a folder of the results
  OUT="${1:-${OUT:-benchmarks/results/gpu-$(date -u +%F)}}"
  if [[ -n ${DRY_RUN:-} ]]; then # a dry run makes no folder (helper-166: the default one in the checkout)
    OUT="$(realpath -m "$OUT")"
  else
    OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  unset TRITON_INTERPRET MASKSUB_BACKEND
  install_wheels
  local probe='import sys, torch; sys.exit(not torch.cuda.is_available())'
  if [[ -z ${DRY_RUN:-} ]] && timeout -k 5 "$SETUP_S" "$PY" -c "$probe" 2> /dev/null; then
    HAVE_GPU=1
  else
    HAVE_GPU=0
  fi
  CAP_SCALE="${CAP_SCALE:-$((HAVE_GPU ? 1 : 8))}"
  export OUT HAVE_GPU CAP_SCALE
  pytest_setup
}

# pytest as the test steps run it. jit_census: under the CPU interpreter, the count of Triton specialisations each
# step would compile on a GPU; -v: a test's outcome is on its own line as it ends; failures_now: its traceback (a
# property test's falsifying example) too, so that a step stopped by its cap still says why its tests failed.
# pytest-timeout where installed (the GPU machine has it): a hung test fails after 60 s (x CAP_SCALE; the slowest
# test on the H200 took 14 s, 2026-12-04) instead of taking the rest of its step's cap. pytest-xdist where
# installed: one file per worker (--dist loadfile), so that each file's Triton specialisations compile once.
pytest_setup() { # the probes, once per call (PYTEST_TIMEOUT_S exported: the steps' `SCRIPT __call` shells read it)
  unset PYTEST_TIMEOUT_S
  if timeout -k 5 "$SETUP_S" "$PY" -c 'import pytest_timeout' 2> /dev/null; then
    export PYTEST_TIMEOUT_S=$((60 * CAP_SCALE))
  fi
  pytest_command
  XDIST=()
  XDIST8=()
  timeout -k 5 "$SETUP_S" "$PY" -c 'import xdist' 2> /dev/null && XDIST=(-n 4 --dist loadfile) &&
    XDIST8=(-n 8 --dist loadfile)
  return 0
}

pytest_command() {
  PYTEST=("$PY" -m pytest -v -p no:cacheprovider -rfEs --durations=10 -p benchmarks.jit_census
    -p benchmarks.failures_now ${PYTEST_TIMEOUT_S:+--timeout "$PYTEST_TIMEOUT_S"})
}

# The cuda backend's tests and compute-sanitizer (gpu_bench.sh's last steps, after the suites and the build):
# cuda.log    70  the cuda backend's tests (tests/cuda_extension, the cuda parametrisations of tests/ops,
#                 tests/test_backend.py; 987 tests on 2026-12-06, 808 on 2026-12-04) in 8 xdist workers (41 s on
#                 the H200 in 12, 2026-11-30; on 2026-12-04 330 of 808 in 26 s, when the first refusal ended the
#                 session: the libstdc++ fix is not yet run on one; ~60-75 s extrapolated, helper-214: 20 s from the
#                 sanitizers' caps, which used 14 of 40 and 16 of 25 s; a cut loses the last files'
#                 outcomes only: -v has printed the rest, and the sanitizers run after it)
#             25  compute-sanitizer --tool memcheck, kernels of csrc/ only (--kernel-name kns=masksub), on the fp32
#                 and one-index-dtype cases of every kernel test of tests/cuda_extension (133 tests: 14 s on the
#                 H200, 2026-12-04; 159 on 2026-12-06, ~17 s; the refusals are in the step before, the 2^32-counter one left out: 4.3e9
#                 draws), token selection first (the 8192-key sort); PyTorch's caching allocator off, so a read
#                 past a tensor is past an allocation
#             20  compute-sanitizer --tool racecheck (shared-memory hazards) on the kernels that use shared memory
#                 (selection, cell masks, mask-token gradient, loss), small and largest blocks (below): 16 s on the
#                 H200, 2026-12-04
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

cuda_steps() { # the three steps above, with the extension built and installed (else a note)
  if [[ -z ${DRY_RUN:-} ]] && ! "$PY" -c 'import sys; from masksub_kernels._backend import _compiled_extension_missing as m; sys.exit(m() is not None)' 2> /dev/null; then
    note "no CUDA extension built, or a stale one (see the build's lines in cuda.log): the cuda backend's tests and the sanitizers did not run"
    return 0
  fi
  step cuda.log 70 "${PYTEST[@]}" "${XDIST8[@]}" "${CUDA_TESTS[@]}" tests/ops -k 'cuda or test_backend'
  step cuda.log 25 sanitize memcheck "${MEMCHECK_FILES[@]}" -k "$MEMCHECK_K"
  step cuda.log 20 sanitize racecheck tests/cuda_extension -k "$RACECHECK_K"
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
  # grep reads a process substitution, not a pipe: under pipefail a pipe's writer, stopped by SIGPIPE when
  # grep -q quits early, would make the test fail and drop the filter
  grep -q -- '--kernel-name' <(compute-sanitizer --help 2>&1) && only_ours=(--kernel-name kns=masksub)
  compute-sanitizer --tool "$tool" "${only_ours[@]}" --error-exitcode 99 --print-limit 50 "${PYTEST[@]}" "$@"
}
