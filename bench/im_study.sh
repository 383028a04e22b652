#!/bin/bash
# Information maximisation on top of the lambda chosen per target: decided per target on the same
# source-only validation tasks as lambda (the target left out of the pool), then the choice and, for the
# record, the IM variant run on the real target with two seeds. Resumable: bench.accuracy skips
# logged runs. Needs bench/lambda_study.sh's validation runs first.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for T in mnist mnistm optdigits syn; do
  POOL=$(for d in mnist mnistm optdigits syn; do if [ $d != $T ]; then echo -n "$d "; fi; done)
  LAM=$($PY -m bench.select_im --target $T --lambda-only)
  IM=${LAM/fedalign_/fedalign_im_}
  $PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL --methods $IM \
     --json bench/results/im-validation.json --log bench/results/lambda-validation.jsonl
  echo "CHOSEN $T $($PY -m bench.select_im --target $T)"
done
$PY -m bench.select_im
for T in mnist mnistm optdigits syn; do
  LAM=$($PY -m bench.select_im --target $T --lambda-only)
  $PY -m bench.accuracy --workers "${WORKERS:-1}" --seeds 0 1 --targets $T --methods ${LAM/fedalign_/fedalign_im_} \
     --json bench/results/im-final.json --log bench/results/im-final.jsonl
done
