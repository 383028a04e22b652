#!/bin/bash
# The second benchmark family (signals: six waveforms, four simulated sensors, the mlp), with the recipe's
# whole procedure as on digits: per target, on source-only validation tasks (the target left out of the
# pool, seed 0, 750 steps), lambda is chosen among the plain candidates, then information maximisation on
# the target joins it only where it validates better (`bench.select --im`, recorded for fedalign_recipe).
# The IM candidates also run for the earlier choice that always added IM (`bench.select --write`,
# fedalign_im_selected). Then the paired table: the recipe, the same pipeline with lambda = 0, the earlier
# arms, FedAvg with the target terms, FedAvg and source-only, five paired seeds, 1500 steps, plus the
# target-trained oracle for reference. Resumable: bench.accuracy skips runs already in its log. One torch
# thread per run. Last, the same procedure on three validation seeds (below).
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DOMAINS="lab field fast smooth"
PLAIN="fedalign_lambda0.1 fedalign_lambda0.3 fedalign"
WITH_IM="fedalign_im_lambda0.1 fedalign_im_lambda0.3 fedalign_im_lambda1"
LOG=bench/results/signals-validation.jsonl
for T in $DOMAINS; do
  POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
     --methods $PLAIN $WITH_IM --json bench/results/signals-validation.json --log $LOG
done
$PY -m bench.select --family signals --log $LOG --candidates $WITH_IM --write
$PY -m bench.select --family signals --log $LOG --candidates $PLAIN --im --write-recipe
$PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
  --methods fedalign_recipe fedalign_recipe_lambda0 fedalign_im_selected fedalign_im_lambda0 fedavg_im fedavg \
  source_only target_oracle --json bench/results/signals.json --log bench/results/signals.jsonl
# The same procedure on three validation seeds instead of one (the choices above are often within a point):
# seeds 1 and 2 in a log of their own, so that the one-seed choice stays reproducible from its log; recorded
# for fedalign_recipe_3seeds, then run with five paired seeds beside its lambda-0 twin.
SEEDS_LOG=bench/results/signals-validation-seeds.jsonl
for T in $DOMAINS; do
  POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds 1 2 --steps 750 --domains $POOL \
     --methods $PLAIN $WITH_IM --json bench/results/signals-validation-seeds.json --log $SEEDS_LOG
done
$PY -m bench.select --family signals --log $LOG $SEEDS_LOG --candidates $PLAIN --im \
  --write-recipe fedalign_recipe_3seeds
$PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
  --methods fedalign_recipe_3seeds fedalign_recipe_3seeds_lambda0 \
  --json bench/results/signals-3seeds.json --log bench/results/signals.jsonl
