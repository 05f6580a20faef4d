#!/usr/bin/env bash
# The BERT replication of the README ("BERT"): a 4-layer, width-128 BERT trained from scratch on the docstrings of
# the Python standard library, plainly and with MaskSub, 3 seeds each, everything else identical; then the table,
# the plot and the logs in docs/replication/mlm. The six runs share one WordPiece vocabulary (tokenizer.json, kept
# here: training a vocabulary is not deterministic). Each seed's two runs go side by side, one thread each (a
# 2-core CPU); about 27 minutes in all on the machine of the README's table. A smoke run: SEEDS="0" STEPS=20
# EVAL_EVERY=10 RUNS=/tmp/smoke and a scratch OUT=/tmp/smoke-out (OUT defaults to docs/replication/mlm).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-/tmp/masksub-mlm-replication}   # checkpoints and logs of each run (checkpoints stay out of the repository)
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-800}
EVAL_EVERY=${EVAL_EVERY:-100}
OUT=${OUT:-docs/replication/mlm}
if ! "$PY" -c "import masksub_kernels.training.mlm_cli, transformers, tokenizers, matplotlib" 2>/dev/null; then
    echo "run.sh: $PY cannot import masksub_kernels.training.mlm_cli with transformers, tokenizers and matplotlib" \
         "(the plot): run 'make install' first, or set PYTHON=/path/to/python (an environment with the package's" \
         "text extra and matplotlib)" >&2
    exit 2
fi
rm -rf "$RUNS"/baseline-seed? "$RUNS"/masksub-seed?   # fresh runs: the commands refuse to start over another run
TOKENIZER=docs/replication/mlm/tokenizer.json
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$TOKENIZER" ] || "$PY" -m masksub_kernels.training.text_data "$TOKENIZER" --vocab-size 4096
COMMON=(--tokenizer "$TOKENIZER" --layers 4 --width 128 --heads 2 --seq-len 64 --batch-size 32 --steps "$STEPS"
        --warmup-steps 80 --lr 1e-3 --eval-every "$EVAL_EVERY" --eval-blocks 256 --device cpu)
for seed in $SEEDS; do
    "$PY" -m masksub_kernels.training.mlm_cli "${COMMON[@]}" --seed "$seed" --baseline --output "$RUNS/baseline-seed$seed" &
    baseline=$!
    "$PY" -m masksub_kernels.training.mlm_cli "${COMMON[@]}" --seed "$seed" --output "$RUNS/masksub-seed$seed"
    wait "$baseline"   # its exit status: a failed baseline fails the script
done
"$PY" -m masksub_kernels.training.replication "$RUNS" "$OUT"
