#!/usr/bin/env bash
# The prepared GPU run: card and versions, the CUDA extension build, the test suite on CUDA tensors, then every
# benchmark. Works from the source tree with the machine's own Python (torch, triton, timm, pytest), no network.
#
#   benchmarks/gpu_suite.sh [OUTDIR]        (default benchmarks/results/gpu-<date>)
#
# Budget: about 7 minutes on one H100 (build ~1 min, tests ~2-3 min, benchmarks ~3-4 min); each step is capped
# (BUILD_TIMEOUT 180 s, TEST_TIMEOUT 240 s, BENCH_TIMEOUT 300 s) so that the worst case stays under 12 minutes of
# the 15 of GPU time. BENCH_ARGS="--suites token_select loss" narrows a rerun. Files written (8 at most, for the device tool): env.txt,
# build.log, tests.log, bench.log and the benchmark's .json/.md/.png.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu-$(date +%F)}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET MASKSUB_BACKEND

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda); print("device", torch.cuda.get_device_name())'
  "$PY" -c 'import triton; print("triton", triton.__version__)' || true
  "$PY" -c 'import timm; print("timm", timm.__version__)' || true
  nvcc --version 2>/dev/null | tail -1 || echo "nvcc: not found"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== CUDA extension build (sm_90) =="
if timeout "${BUILD_TIMEOUT:-180}" env MASKSUB_BUILD_CUDA=1 MASKSUB_CUDA_ARCHS="${MASKSUB_CUDA_ARCHS:-90}" \
    "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  echo "built masksub_kernels._C"
else
  echo "CUDA extension not built (see build.log): the cuda backend is skipped"
fi
"$PY" -c 'import masksub_kernels as mk; print("backends:", mk.available_backends())' | tee -a "$OUT/env.txt"

echo "== tests on CUDA tensors =="
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest tests -q -p no:cacheprovider --durations=15 \
  --ignore=tests/test_compile_kernels.py > "$OUT/tests.log" 2>&1
echo "tests exit code: $?" | tee -a "$OUT/tests.log"
tail -5 "$OUT/tests.log"

echo "== benchmarks =="
timeout "${BENCH_TIMEOUT:-300}" "$PY" -m masksub_kernels.bench --out "$OUT" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
echo "bench exit code: $?" | tee -a "$OUT/bench.log"
tail -40 "$OUT/bench.log"
