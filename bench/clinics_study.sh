#!/bin/bash
# The third benchmark family (clinics: five diagnoses from 24 measurements at four simulated clinics, the
# mlp), run as a confirmation declared before any of its runs: the label-free normalisation choice that the
# signals study arrived at, unchanged. Per target and seed, the balanced pipeline with BatchNorm per node
# (fedalign_balanced) and with GroupNorm (fedalign_group_norm_balanced) both run, and the one whose final
# model has the higher information on the target's own unlabelled training split (bench.validators' `im`:
# class balance minus mean entropy) is deployed. Beside them: their lambda-0 twins (the same procedure
# without the adversarial term), FedAvg in both normalisations, source-only and the target-trained oracle
# for reference; five paired seeds, 1500 steps, the signals study's settings, nothing chosen on this family.
# Resumable: bench.accuracy skips runs already in its log. One torch thread per run. Then the tables.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=bench/results/clinics.jsonl
CANDIDATES=fedalign_balanced,fedalign_group_norm_balanced
TWINS=fedalign_balanced_no_adversarial,fedalign_group_norm_balanced_no_adversarial
$PY -m bench.accuracy --family clinics --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
  --methods fedavg fedalign_balanced fedalign_group_norm_balanced fedalign_balanced_no_adversarial \
  fedalign_group_norm_balanced_no_adversarial fedavg_group_norm source_only target_oracle \
  --json bench/results/clinics.json --log $LOG
# The declared comparison: the choice against the same choice without alignment, against the picked
# pipeline's own twin (the choice held fixed), against FedAvg, and against each candidate alone.
$PY -m bench.paired --log $LOG --targets city rural units legacy \
  --arms norm_by_im norm_by_im_lambda0 picked_twin fedalign_balanced fedalign_group_norm_balanced fedavg \
  fedavg_group_norm source_only target_oracle \
  --chosen norm_by_im=$CANDIDATES@im norm_by_im_lambda0=$TWINS@im --twin picked_twin=norm_by_im:$TWINS \
  --pairs norm_by_im:norm_by_im_lambda0 norm_by_im:picked_twin norm_by_im:fedavg norm_by_im:fedalign_balanced \
  norm_by_im:fedalign_group_norm_balanced
# Every other validator on the same pair, reported beside the declared one.
for V in neg_entropy diversity bnm snd; do
  $PY -m bench.paired --log $LOG --targets city rural units legacy --arms "by_$V" "by_${V}_lambda0" fedavg \
    --chosen "by_$V=$CANDIDATES@$V" "by_${V}_lambda0=$TWINS@$V" \
    --pairs "by_$V:by_${V}_lambda0" "by_$V:fedavg"
done
