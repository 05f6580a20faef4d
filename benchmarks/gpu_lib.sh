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
# the printed budget is always the GPU one).

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

write_env() { # card, driver, versions: what the results were measured on
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: none"
  "$PY" - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| torch's CUDA", torch.version.cuda)
cpu = platform.processor() or platform.machine()
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else f"none (CPU, {cpu})")
from importlib import metadata
for name in ("triton", "timm", "pytest", "pytest-xdist", "hypothesis", "liger-kernel"):
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
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}"; then
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
    "$@"
    exit
  fi
  OUT="${1:-benchmarks/results/gpu-$(date -u +%F)}"
  OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  unset TRITON_INTERPRET MASKSUB_BACKEND
  install_wheels
  if [[ -z ${DRY_RUN:-} ]] && "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    HAVE_GPU=1
  else
    HAVE_GPU=0
  fi
  CAP_SCALE="${CAP_SCALE:-$((HAVE_GPU ? 1 : 8))}"
  export OUT HAVE_GPU CAP_SCALE
}
