#!/bin/bash
# Choose lambda per target on source-only validation tasks (the target left out of the pool), then run
# the choice on the real target with two seeds. Resumable: bench.accuracy skips logged runs.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PLAIN="fedalign_lambda0.1 fedalign_lambda0.3 fedalign"
for T in mnist mnistm optdigits syn; do
  POOL=$(for d in mnist mnistm optdigits syn; do if [ $d != $T ]; then echo -n "$d "; fi; done)
  $PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
     --methods $PLAIN \
     --json bench/results/lambda-validation.json --log bench/results/lambda-validation.jsonl
  CH=$($PY -m bench.select --family digits --log bench/results/lambda-validation.jsonl --candidates $PLAIN --target $T)
  echo "CHOSEN $T $CH"
  if [ "$CH" != "fedalign" ]; then
    $PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds 0 1 --targets $T --methods $CH \
       --json bench/results/lambda-final.json --log bench/results/lambda-final.jsonl
  fi
done
$PY -m bench.select --family digits --log bench/results/lambda-validation.jsonl --candidates $PLAIN
