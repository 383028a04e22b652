#!/bin/bash
# The second benchmark family (signals: six waveforms, four simulated sensors, the mlp). First lambda is
# chosen per target on source-only validation tasks (the target left out of the pool, seed 0, 750 steps),
# then the paired table runs: the recipe with the chosen lambda, the same pipeline with lambda = 0, FedAvg
# with the same target terms, FedAvg and source-only, five paired seeds, 1500 steps, plus the target-trained
# oracle for reference. Resumable: bench.accuracy skips runs already in its log. One torch thread per run.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DOMAINS="lab field fast smooth"
CANDIDATES="fedalign_im_lambda0.1 fedalign_im_lambda0.3 fedalign_im_lambda1"
for T in $DOMAINS; do
  POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
     --methods $CANDIDATES --json bench/results/signals-validation.json \
     --log bench/results/signals-validation.jsonl
done
$PY -m bench.select --family signals --log bench/results/signals-validation.jsonl --candidates $CANDIDATES \
  --write
$PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
  --methods fedalign_im_selected fedalign_im_lambda0 fedavg_im fedavg source_only target_oracle \
  --json bench/results/signals.json --log bench/results/signals.jsonl
