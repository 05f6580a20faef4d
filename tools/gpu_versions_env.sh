#!/usr/bin/env bash
# The GPU machine's versions, on this CPU machine: so that a lent GPU's 15 minutes are not spent finding that the
# code uses something its torch or Triton does not have.
#
# The device machine (../.library/device/README.md; benchmarks/results/gpu-2026-11-30/check-env.txt) runs Python
# 3.12, torch 2.11.0 and the Triton 3.6.0 that torch pins, while .venv (requirements-dev.txt) has torch 2.14.1 and
# Triton 3.8. This script
#   1. makes a venv (default /tmp/masksub-gpu-versions) with torch==$TORCH, its Triton, torchvision==$TORCHVISION,
#      numpy==$NUMPY, timm==$TIMM, transformers==$TRANSFORMERS and requirements-dev.txt's other pins, from PyPI (~5 GB: torch's CUDA libraries; minutes);
#   2. clones the checkout's HEAD into $VENV/checkout and installs it there with the CUDA extension
#      (MASKSUB_BUILD_CUDA=1: built against that torch's headers with warnings as errors, as the GPU run builds it);
#   3. runs the test suite in it as CI does (the Triton kernels on the interpreter and compiled for sm_80 / sm_90 by
#      that Triton, the extension's sources on the CUDA emulator), or the pytest arguments given.
#
#   bash tools/gpu_versions_env.sh                         # everything (~30 min on 2 cores)
#   bash tools/gpu_versions_env.sh tests/ops -x            # pytest arguments replace the default "all, -n auto"
#   TORCH=2.11.0 TORCHVISION=0.26.0 NUMPY=2.3.5 PY=python3.12 VENV=/tmp/v bash tools/gpu_versions_env.sh
#
# Nothing here is used by the package, the tests or CI (CI's 30 minutes have no room for a second suite).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TORCH="${TORCH:-2.11.0}"
TORCHVISION="${TORCHVISION:-0.26.0}" # the torchvision release built for that torch
# NumPy below 2.4 for Triton 3.6's interpreter (the tests' CPU stand-in; a GPU compiles instead): it converts
# one-element arrays to Python ints (a range() bound, an index), which NumPy 2.4 refuses ("only 0-dimensional arrays
# can be converted to Python scalars": 315 tests failed so on 2026-12-02); Triton 3.8's interpreter does not.
NUMPY="${NUMPY:-2.3.5}"
# timm and transformers as the device's image has them (../.library/device/KINDS.md; helper-106 on 2026-12-03: timm
# 1.0.29 returned None for an unknown scheduler and selected no repeated-augmentation samples below 256 images)
TIMM="${TIMM:-1.0.29}"
TRANSFORMERS="${TRANSFORMERS:-5.17.0}"
if [[ -z ${PY:-} ]]; then # the first that starts: a pyenv shim of a version not selected is found but fails,
  # so pyenv's own 3.12 installs are tried next (this machine's shim did not start on 2026-12-05)
  for PY in python3.12 "$(pyenv root 2> /dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12 python3; do
    "$PY" -c "" 2> /dev/null && break
  done
fi
VENV="${VENV:-/tmp/masksub-gpu-versions}"

if [[ ! -x $VENV/bin/python ]]; then
  "$PY" -m venv "$VENV"
fi # (an existing venv keeps its Python: another PY needs another VENV)
requirements="$VENV/requirements.txt"
{
  grep -viE '^(torch|torchvision|numpy|triton|timm|transformers)([^a-z0-9_.-]|$)|^#' "$ROOT/requirements-dev.txt" # set here
  echo "torch==$TORCH"
  echo "timm==$TIMM"
  echo "transformers==$TRANSFORMERS"
  echo "torchvision==$TORCHVISION"
  echo "numpy==$NUMPY"
} > "$requirements"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
"$VENV/bin/python" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__)'

checkout="$VENV/checkout"
rm -rf "$checkout"
git clone --quiet "$ROOT" "$checkout"
git -C "$checkout" log -1 --format='checkout: %h %s'
cd "$checkout"
MASKSUB_BUILD_CUDA=1 MASKSUB_CUDA_ARCHS="80;90" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-build-isolation -e .

export CI=true MASKSUB_CUDA_EMULATOR="${MASKSUB_CUDA_EMULATOR:-1}"
export TRITON_CACHE_DIR="$VENV/triton-cache" TORCHINDUCTOR_CACHE_DIR="$VENV/inductor-cache"
if (($# == 0)); then
  set -- -n auto --dist loadfile --no-loadscope-reorder --durations=30
fi
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
