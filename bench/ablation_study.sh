#!/bin/bash
# The paired ablation of the adversarial term on the digits benchmark (docs: Benchmarks, accuracy): for
# every target, the recipe (lambda chosen per target on source-only validation tasks), the same pipeline
# with lambda = 0, FedAvg with the same target terms, FedAvg and source-only, five paired seeds (a seed
# fixes the initialisation and every batch order, the same in every arm).
# Resumable: bench.accuracy skips runs already in the log. One torch thread per run.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
  --methods fedalign_im_selected fedalign_im_lambda0 fedavg fedavg_im source_only \
  --json bench/results/ablation.json --log bench/results/ablation.jsonl
