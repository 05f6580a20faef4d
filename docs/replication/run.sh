#!/usr/bin/env bash
# The small replication of docs/replication (README, "Training"): a tiny ViT on the embedded digits set, trained
# plainly and with MaskSub, ten seeds (0-9) each, same recipe; then the table, the plot and the logs in
# docs/replication. Each seed's two runs go side by side, one thread each (the numbers were measured on a shared
# 2-core CPU, where one thread a run is the steady setting). A smoke run: SEEDS="0" EPOCHS=2 RUNS=/tmp/smoke and a
# scratch OUT=/tmp/smoke-out (OUT defaults to docs/replication, whose table it would overwrite).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-/tmp/masksub-replication}   # checkpoints and logs of each run (checkpoints stay out of the repository)
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9}
EPOCHS=${EPOCHS:-40}
OUT=${OUT:-docs/replication}
if ! "$PY" -c "import masksub_kernels.train, timm, torchvision, matplotlib" 2>/dev/null; then   # before any rm
    echo "run.sh: $PY cannot import masksub_kernels.train or its train extra: run 'make install' first, or set" \
         "PYTHON=/path/to/python (an environment with the package and its train extra)" >&2
    exit 2
fi
rm -rf "$RUNS"/baseline-seed? "$RUNS"/masksub-seed?   # fresh runs: the commands refuse to start over another run
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--model vit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=8 embed_dim=64 depth=4 num_heads=4
        --epochs "$EPOCHS" --warmup-epochs 3 --lr 2e-3 --batch-size 32 --no-progress)
for seed in $SEEDS; do
    "$PY" -m masksub_kernels.train "${COMMON[@]}" --seed "$seed" --baseline --output "$RUNS/baseline-seed$seed" &
    baseline=$!
    "$PY" -m masksub_kernels.train "${COMMON[@]}" --seed "$seed" --output "$RUNS/masksub-seed$seed"
    wait "$baseline"   # its exit status: a failed baseline fails the script
done
"$PY" -m masksub_kernels.training.replication "$RUNS" "$OUT"
