#!/bin/bash
# Candidates for making the alignment add accuracy (docs: Benchmarks, "Does the alignment help?"): each one
# change to the recipe at lambda 0.1 (CDAN+E, three discriminator exchanges, source-side alignment only, the
# target's warm-up), run beside the recipe itself on the source-only validation tasks of both families (each
# real target left out of the pool: its labels are never read), seed 0, 750 steps. bench.select then prints,
# per real target, the candidate with the best mean validation accuracy. Resumable; one torch thread per run.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CANDIDATES="fedalign_im_lambda0.1 fedalign_im_cdane fedalign_im_x3 fedalign_im_sources fedalign_im_warmup"
for FAMILY in ${FAMILIES:-signals digits}; do
  case $FAMILY in
    digits) DOMAINS="mnist mnistm optdigits syn" ;;
    signals) DOMAINS="lab field fast smooth" ;;
  esac
  for T in $DOMAINS; do
    POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
    $PY -m bench.accuracy --family $FAMILY --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
       --methods $CANDIDATES --json bench/results/variants-validation.json \
       --log bench/results/variants-validation.jsonl
  done
  $PY -m bench.select --family $FAMILY --log bench/results/variants-validation.jsonl --candidates $CANDIDATES
done
