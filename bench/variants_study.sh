#!/bin/bash
# Candidates for making the alignment add accuracy (docs: Benchmarks, accuracy, "Candidate recipes for the
# adversarial term"): each one change to the recipe at lambda 0.1 (CDAN+E, three discriminator exchanges,
# source-side alignment only, the target's warm-up; bench.accuracy VARIANTS), run beside the recipe itself on
# the source-only validation tasks (each real target left out of the pool: its labels are never read), seed
# 0, 750 steps. bench.select then chooses, per real target, the candidate with the best mean validation
# accuracy (--write-variant), and the chosen candidate runs on the real target with five paired seeds beside
# the same pipeline with lambda = 0. Then the recipe with lambda set from the domain gap (bench.gap).
# Resumable; one torch thread per run.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CANDIDATES=$($PY -c "from bench.accuracy import VARIANTS; print(*VARIANTS)")
for FAMILY in ${FAMILIES:-signals digits}; do
  DOMAINS=$($PY -c "from bench.accuracy import FAMILIES; print(*FAMILIES['$FAMILY'].domains)")
  for T in $DOMAINS; do
    POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
    $PY -m bench.accuracy --family $FAMILY --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
       --methods $CANDIDATES --json bench/results/variants-validation.json \
       --log bench/results/variants-validation.jsonl
  done
  $PY -m bench.select --family $FAMILY --log bench/results/variants-validation.jsonl --candidates $CANDIDATES \
    --write-variant
  $PY -m bench.accuracy --family $FAMILY --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_im_variant fedalign_im_variant_lambda0 \
    --json bench/results/variants.json --log bench/results/variants.jsonl
done
# Lambda from the domain gap measured at the start of each run (bench.gap) instead of validation tasks: the
# recipe with that lambda, paired with the recipe's runs (bench/signals_study.sh, bench/ablation_study.sh).
for FAMILY in ${FAMILIES:-signals digits}; do
  LOG=bench/results/signals.jsonl
  if [ $FAMILY = digits ]; then LOG=bench/results/ablation.jsonl; fi
  $PY -m bench.accuracy --family $FAMILY --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_gap --json bench/results/gap-$FAMILY.json --log $LOG
  $PY -m bench.gap --family $FAMILY --seeds ${SEEDS:-0 1 2 3 4} --log $LOG
done
# Signals only (four domains of equal size): FedAvg with its step scaled as averaging the target's copy scales
# the sources' (a diagnostic), and two candidates that keep the target's copy out of G_agg on the recipe's
# recorded choices: its training kept as an offset on G_agg (bench.residual), or none at all. Then the
# recipe's procedure with a last step on the same validation tasks: per target, the choice's form with the
# target's copy out, adopted where it validates better (bench.select --target-out), and its paired runs. Last,
# a server step on G's average (hyperparameters.server_step).
if [[ " ${FAMILIES:-signals digits} " == *" signals "* ]]; then
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedavg_lr_x0.75 fedalign_recipe_residual fedalign_recipe_residual_lambda0 \
    fedalign_recipe_target_none fedalign_recipe_target_none_lambda0 \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  SELECT="$PY -m bench.select --family signals --log bench/results/signals-validation.jsonl
    --candidates fedalign_lambda0.1 fedalign_lambda0.3 fedalign --im"
  DOMAINS="lab field fast smooth"
  for T in $DOMAINS; do
    POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
    $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
      --methods "$($SELECT --target $T)_target_none" --json bench/results/signals-validation.json \
      --log bench/results/signals-validation.jsonl
  done
  $SELECT --target-out --write-recipe fedalign_recipe_target
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_target fedalign_recipe_target_lambda0 \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  # The target's copy averaged in and a server step on G's average that gives the sources' step its full size
  # (hyperparameters.server_step), on the recipe's choices and on those of the procedure with its last step.
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_server_step fedalign_recipe_server_step_lambda0 \
    fedalign_recipe_target_server_step fedalign_recipe_target_server_step_lambda0 \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  # The procedure with a step after its last, on the same validation tasks: where a target's choice keeps its
  # copy averaged in, the form with the server step is adopted when it validates better (--server-step).
  for T in $DOMAINS; do
    POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
    CHOICE=$($SELECT --target-out --target $T)
    if [[ $CHOICE != *_target_none ]]; then
      $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
        --methods "${CHOICE}_server_step" --json bench/results/signals-validation.json \
        --log bench/results/signals-validation.jsonl
    fi
  done
  $SELECT --target-out --server-step --write-recipe fedalign_recipe_stepped
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_stepped fedalign_recipe_stepped_lambda0 \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  # Diagnostics: centralised DANN against its lambda-0 twin (is the shift one alignment helps?), and the
  # federated recipe's alignment with BatchNorm shared, with GroupNorm, and with the target's whole step.
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods dann_central dann_central_lambda0 dann_central_lambda0.1 dann_central_lambda0.3 \
    dann_central_group_norm dann_central_group_norm_lambda0 fedavg_shared_bn fedalign_recipe_shared_bn \
    fedalign_recipe_shared_bn_lambda0 fedavg_group_norm fedalign_recipe_group_norm \
    fedalign_recipe_group_norm_lambda0 fedalign_recipe_full_step fedalign_recipe_full_step_lambda0 fedalign \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  # Then centralised DANN normalising as a node does, and by running statistics both domains share, and the
  # federated pipeline at centralised DANN's lambda with GroupNorm.
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods dann_central_node_bn dann_central_node_bn_lambda0 dann_central_shared_stats \
    dann_central_shared_stats_lambda0 fedalign_group_norm fedalign_group_norm_no_adversarial \
    fedalign_group_norm_balanced fedalign_group_norm_balanced_no_adversarial fedalign_group_norm_confusion \
    fedalign_group_norm_no_pseudo_labels fedalign_group_norm_no_pseudo_labels_no_adversarial \
    fedalign_balanced fedalign_balanced_no_adversarial \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  # The procedure with one more step: GroupNorm with each side's adversarial gradient at centralised DANN's
  # size, adopted per target where it validates better than the choice so far (bench.select --then).
  for T in $DOMAINS; do
    POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
    $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
      --methods fedalign_group_norm_balanced fedalign_group_norm_balanced_no_adversarial fedalign_balanced \
      fedalign_balanced_no_adversarial \
      --json bench/results/signals-validation.json --log bench/results/signals-validation.jsonl
  done
  $SELECT --target-out --server-step --then fedalign_balanced --write-recipe fedalign_recipe_stepped_balanced
  $SELECT --target-out --server-step --then fedalign_group_norm_balanced --write-recipe fedalign_recipe_stepped_gn
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_stepped_gn fedalign_recipe_stepped_gn_lambda0 \
    --json bench/results/signals-pipeline.json --log bench/results/signals.jsonl
  # The normalisation chosen on the target's own unlabelled data instead (bench.validators): each candidate
  # pipeline, its lambda-0 twin and FedAvg in both normalisations rerun with the target model's label-free
  # scores logged (the same runs as above: one seed is one run on one platform); bench.paired --chosen reads
  # them.
  $PY -m bench.accuracy --family signals --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_stepped fedalign_group_norm_balanced fedalign_balanced fedavg fedavg_group_norm \
    fedalign_recipe_stepped_lambda0 fedalign_group_norm_balanced_no_adversarial fedalign_balanced_no_adversarial \
    --json bench/results/signals-pipeline.json --log bench/results/signals-validators.jsonl
fi
# Digits: the server step on the recipe's choices (bench/results/ablation.jsonl) paired with the recipe and
# FedAvg rerun on one platform (bench/results/digits-step.jsonl; the digits ablation's own runs were made on
# other CPU kernels, where a seed gives other numbers). Then the procedure's server-step step on the same
# validation tasks: each target's choice and its form with the step, both run here (the earlier validation
# runs came from other kernels too), and the procedure's paired runs.
if [[ " ${FAMILIES:-signals digits} " == *" digits "* ]]; then
  $PY -m bench.accuracy --family digits --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_server_step --json bench/results/digits-step.json --log bench/results/ablation.jsonl
  $PY -m bench.accuracy --family digits --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe fedavg --json bench/results/digits-step.json --log bench/results/digits-step.jsonl
  VALIDATION="bench/results/lambda-validation.jsonl bench/results/digits-step-validation.jsonl"
  touch bench/results/digits-step-validation.jsonl  # read by bench.select before its first run
  SELECT="$PY -m bench.select --family digits --log $VALIDATION
    --candidates fedalign_lambda0.1 fedalign_lambda0.3 fedalign --im"
  DOMAINS="mnist mnistm optdigits syn"
  for T in $DOMAINS; do
    POOL=$(for d in $DOMAINS; do if [ $d != $T ]; then echo -n "$d "; fi; done)
    CHOICE=$($SELECT --target $T)
    $PY -m bench.accuracy --family digits --workers "${WORKERS:-1}" --seeds 0 --steps 750 --domains $POOL \
      --methods "$CHOICE" "${CHOICE}_server_step" --json bench/results/digits-step-validation.json \
      --log bench/results/digits-step-validation.jsonl
  done
  $SELECT --server-step --write-recipe fedalign_recipe_stepped
  $PY -m bench.accuracy --family digits --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_recipe_stepped fedalign_recipe_stepped_lambda0 \
    --json bench/results/digits-step.json --log bench/results/digits-step.jsonl
fi
# Digits: the label-free normalisation choice declared on signals, run unchanged on digits, where neither
# candidate had run: the balanced pipeline with BatchNorm per node and with GroupNorm, the higher target
# information (bench.validators' `im`) deployed per target and seed; the two candidates first (against FedAvg,
# bench/results/digits-step.jsonl), then their lambda-0 twins (the paired ablation of the adversarial term).
if [[ " ${FAMILIES:-signals digits} " == *" digits "* ]]; then
  $PY -m bench.accuracy --family digits --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_balanced fedalign_group_norm_balanced \
    --json bench/results/digits-validators.json --log bench/results/digits-validators.jsonl
  $PY -m bench.accuracy --family digits --workers "${WORKERS:-1}" --seeds ${SEEDS:-0 1 2 3 4} \
    --methods fedalign_balanced_no_adversarial fedalign_group_norm_balanced_no_adversarial \
    --json bench/results/digits-validators.json --log bench/results/digits-validators.jsonl
fi
