#!/bin/bash
# A label-free guard against negative transfer: on the same source-only validation tasks that chose the
# recipe's settings (each real target left out of the pool, each other domain in turn a labelled
# pseudo-target, seed 0, 750 steps), FedAvg and FedAvg with the target terms run too; per real target the
# guarded pipeline is whichever of the recipe (with its chosen lambda), fedavg_im and fedavg has the best
# mean pseudo-target accuracy (`python -m bench.guard`). Both families. Resumable: bench.accuracy skips runs
# already logged. One torch thread per run. Needs the lambda and IM validation runs (lambda_study.sh,
# im_study.sh, signals_study.sh) first.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
run_family() {  # family, log, domains...
  local family=$1 log=$2; shift 2
  for T in "$@"; do
    POOL=$(for d in "$@"; do if [ "$d" != "$T" ]; then echo -n "$d "; fi; done)
    $PY -m bench.accuracy --family "$family" --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
      --methods fedavg fedavg_im --json "bench/results/guard-$family.json" --log "$log"
  done
}
run_family signals bench/results/signals-validation.jsonl lab field fast smooth
run_family digits bench/results/lambda-validation.jsonl mnist mnistm optdigits syn
