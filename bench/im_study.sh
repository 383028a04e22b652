#!/bin/bash
# Information maximisation on top of the lambda chosen per target: decided per target on the same
# source-only validation tasks as lambda (the target left out of the pool), then the choice and, for the
# record, the IM variant run on the real target with two seeds. Resumable: bench.accuracy skips
# logged runs. Needs bench/lambda_study.sh's validation runs first.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PLAIN="fedalign_lambda0.1 fedalign_lambda0.3 fedalign"
SELECT="$PY -m bench.select --family digits --log bench/results/lambda-validation.jsonl --candidates $PLAIN"
for T in mnist mnistm optdigits syn; do
  POOL=$(for d in mnist mnistm optdigits syn; do if [ $d != $T ]; then echo -n "$d "; fi; done)
  IM=$($SELECT --im --im-form --target $T)
  $PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL --methods $IM \
     --json bench/results/im-validation.json --log bench/results/lambda-validation.jsonl
  echo "CHOSEN $T $($SELECT --im --target $T)"
done
$SELECT --im --write-recipe
for T in mnist mnistm optdigits syn; do
  IM=$($SELECT --im --im-form --target $T)
  $PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds 0 1 --targets $T --methods $IM \
     --json bench/results/im-final.json --log bench/results/im-final.jsonl
done
