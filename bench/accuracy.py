"""Accuracy benchmark: leave-one-domain-out on the built-in digits benchmark. Not a test.

For each target domain, the other three are labelled sources. Every method gets the same budget: `--steps`
optimiser steps of G and T per node (a federated run of k local steps per round has steps/k rounds), batch
`--batch-size`. The target's labels are read only to report `target_acc` on its test split; no method
trains on them or chooses a setting with them (except `target_oracle`, the upper bound, which is its
purpose).

    python -m bench.accuracy --seeds 0 1 --json bench/out/accuracy.json

Results go to a JSON-lines log as each run finishes (`--log`, default beside `--json`); a rerun skips the
runs already logged with the same budget, so a long benchmark can be resumed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import git_commit, stamped, write_json
from bench.logs import read_runs
from fedalign.presets import PRESETS

if TYPE_CHECKING:  # bench.references imports torch: workers import it, the parser need not
    from bench.references import Normalisation

DOMAINS = ("mnist", "mnistm", "optdigits", "syn")


@dataclass(frozen=True)
class Family:
    """A multi-domain benchmark: its domains (the dataset spec is ``<name>:<domain>``) and the model."""

    name: str
    domains: tuple[str, ...]
    architecture: str
    model: dict[str, Any]

    def spec(self, domain: str) -> str:
        return f"{self.name}:{domain}"

    def shape(self, normalization: str = "batch") -> Any:
        from fedalign.models import ModelShape

        return ModelShape(
            tuple(self.model["input_shape"]), self.model["num_classes"], normalization=normalization
        )


FAMILIES: dict[str, Family] = {
    "digits": Family("digits", DOMAINS, "digits_cnn", {"input_shape": [3, 28, 28], "num_classes": 10}),
    # fedalign.data.signals: six waveforms recorded by four simulated sensors, a vector task.
    "signals": Family(
        "signals", ("lab", "field", "fast", "smooth"), "mlp", {"input_shape": [64], "num_classes": 6}
    ),
    # fedalign.data.clinics: five diagnoses from 24 measurements at four simulated clinics, a tabular task.
    "clinics": Family(
        "clinics", ("city", "rural", "units", "legacy"), "mlp", {"input_shape": [24], "num_classes": 5}
    ),
}

# The method's defaults (docs/method.md): the schema's defaults, nothing added.
PATENT: dict[str, Any] = {}

# The recipe this benchmark arrived at, written once as a preset of the package (`fedalign.presets`, which
# says where each value came from); its earlier forms below are the recipe less some of its parts.
RECIPE = "digits_recipe"
# Information maximisation on the target: the entropy terms of the recipe.
IM: dict[str, Any] = {k: PRESETS[RECIPE][k] for k in ("entropy_weight", "diversity_weight")}
# The recipe this benchmark first proposed for `fedalign`, fixed before the full run from the method's own
# analysis (docs/method.md, "Why the discriminator is exchanged often"), not tuned on target accuracy: one
# discriminator step per exchange and one extractor step per round, so that averaging the copies is one
# centralised step on the balanced union; sources restart from the aggregates; lambda ramps up as in DANN
# (to the schema's 1); the target adds its own confident predictions (pseudo-labels above 0.95) to the
# adversarial loss.
FEDALIGN: dict[str, Any] = {k: v for k, v in PRESETS[RECIPE].items() if k not in {*IM, "adv_weight"}}
BASE: dict[str, Any] = {k: v for k, v in FEDALIGN.items() if k != "pseudo_label_threshold"}

STEPPED: dict[str, Any] = {"server_step": "target_share"}  # what a SERVER_STEP_FORM form changes
# The target's copy carrying half of G's average, with the server step that keeps the sources' step at its
# full size (eta 2): the target's own step then reaches G_agg at its full size too, as in one network.
BALANCED_STEP: dict[str, Any] = {"extractor_weighting": "balanced", **STEPPED}
# BatchNorm shared whole (its statistics averaged over the nodes) instead of its statistics kept per node.
SHARED_BN: dict[str, Any] = {"local_params": "none"}

# name -> (algorithm, hyperparameters); the budget's rounds follow from local_steps.
FEDERATED: dict[str, tuple[str, dict[str, Any]]] = {
    "source_only": ("source_only", {"local_steps": 1}),
    "fedavg": ("fedavg", {"local_steps": 1}),
    "fedalign": ("fedalign", FEDALIGN),
    # Ablations: one change each against `fedalign`, and the method's defaults.
    "fedalign_no_pseudo_labels": ("fedalign", BASE),
    "fedalign_no_adversarial": ("fedalign", {**FEDALIGN, "adv_weight": 0.0}),
    "fedalign_patent_defaults": ("fedalign", PATENT),
    "fedalign_confusion": ("fedalign", {**FEDALIGN, "adv_loss": "confusion"}),
    "fedalign_conditional": ("fedalign", {**FEDALIGN, "conditional": True}),
    "fedalign_target_local": ("fedalign", {**FEDALIGN, "target_extractor": "local"}),
    "fedalign_target_none": ("fedalign", {**FEDALIGN, "target_extractor": "none"}),
    # A diagnostic of the pipeline's own cost against FedAvg: at lambda 0 nothing trains the target's
    # extractor, so averaging it into G_agg only damps the sources' updates; here it stays out.
    "fedalign_no_adversarial_target_none": (
        "fedalign",
        {**FEDALIGN, "adv_weight": 0.0, "target_extractor": "none"},
    ),
    # A diagnostic of the same cost: FedAvg with its step scaled by the sources' share of G_agg on the signals
    # family (three of four equal-sized domains), the step the sources' task gets once the target's copy,
    # which takes no labelled step, is averaged in (LR_SCALE).
    "fedavg_lr_x0.75": ("fedavg", {"local_steps": 1}),
    "fedalign_shared_bn": ("fedalign", {**FEDALIGN, **SHARED_BN}),
    # A diagnostic: FedAvg with BatchNorm shared too (its statistics averaged, the target normalised with
    # them, as `source_only` and centralised DANN normalise it), against its statistics kept per node.
    "fedavg_shared_bn": ("fedavg", {"local_steps": 1, **SHARED_BN}),
    "fedavg_group_norm": ("fedavg", {"local_steps": 1}),  # GroupNorm in G (MODEL_OVERRIDES)
    # The method at centralised DANN's lambda with GroupNorm in G (MODEL_OVERRIDES), and its lambda-0 twin:
    # the federated counterparts of dann_central_group_norm and its twin.
    "fedalign_group_norm": ("fedalign", FEDALIGN),
    "fedalign_group_norm_no_adversarial": ("fedalign", {**FEDALIGN, "adv_weight": 0.0}),
    # With GroupNorm, one change each: the confusion loss; no pseudo-labels (and its twin); and each side's
    # adversarial gradient at centralised DANN's size, as a mixed batch's loss weighs them: the target's copy
    # carrying half of G's average with the server step (eta 2, so the sources' task step keeps its size)
    # and lambda 0.5 (the target's side then 0.5 x 2 x 1/2 of its own loss's gradient, as in a mixed batch).
    "fedalign_group_norm_confusion": ("fedalign", {**FEDALIGN, "adv_loss": "confusion"}),
    "fedalign_group_norm_no_pseudo_labels": ("fedalign", BASE),
    "fedalign_group_norm_no_pseudo_labels_no_adversarial": ("fedalign", {**BASE, "adv_weight": 0.0}),
    "fedalign_group_norm_balanced": ("fedalign", {**FEDALIGN, **BALANCED_STEP, "adv_weight": 0.5}),
    # The same weighting with BatchNorm per node (no MODEL_OVERRIDES): the other half of the two-by-two.
    "fedalign_balanced": ("fedalign", {**FEDALIGN, **BALANCED_STEP, "adv_weight": 0.5}),
    "fedalign_balanced_no_adversarial": ("fedalign", {**FEDALIGN, **BALANCED_STEP, "adv_weight": 0.0}),
    "fedalign_group_norm_balanced_no_adversarial": (
        "fedalign",
        {**FEDALIGN, **BALANCED_STEP, "adv_weight": 0.0},
    ),
    "fedalign_k5": ("fedalign", {**FEDALIGN, "local_steps": 5, "disc_steps": 5}),
    "fedalign_keep": ("fedalign", {**FEDALIGN, "source_extractor": "keep"}),
    # The adversarial weight's ceiling under the DANN ramp: candidates for choosing lambda on the
    # source-only validation tasks (bench.select), never on the target.
    "fedalign_lambda0.1": ("fedalign", {**FEDALIGN, "adv_weight": 0.1}),
    "fedalign_lambda0.3": ("fedalign", {**FEDALIGN, "adv_weight": 0.3}),
    # Information maximisation on the target (SHOT, Liang et al. 2020: the fixed task model, the target's
    # extractor trained to confident and diverse predictions), weights 1 and 1 as in that paper, fixed
    # before any run; on top of the lambda chosen per target (bench/im_study.sh decides per target on the
    # source-only validation tasks whether it is used).
    "fedalign_im_lambda0.1": ("fedalign", {"preset": RECIPE}),
    "fedalign_im_lambda0.3": ("fedalign", {"preset": RECIPE, "adv_weight": 0.3}),
    "fedalign_im_lambda1": ("fedalign", {"preset": RECIPE, "adv_weight": 1.0}),
    # The paired ablation of the adversarial term: the same pipeline with lambda = 0 (the discriminator
    # still trains, nothing reads it), and FedAvg with the same unlabelled target terms (no discriminator).
    "fedalign_im_lambda0": ("fedalign", {"preset": RECIPE, "adv_weight": 0.0}),
    "fedavg_im": (
        "fedavg",
        {"local_steps": 1, "pseudo_label_threshold": FEDALIGN["pseudo_label_threshold"], **IM},
    ),
    # Candidates for making the alignment add accuracy, each one change to the recipe at lambda 0.1, chosen
    # between on the source-only validation tasks (bench/variants_study.sh): class-conditional alignment with
    # entropy conditioning (CDAN+E), three discriminator exchanges per extractor step, source-side alignment
    # only, and the target's extractor kept out of G_agg for the first tenth of the rounds.
    "fedalign_im_cdane": (
        "fedalign",
        {"preset": RECIPE, "adv_weight": 0.1, "conditional": True, "entropy_conditioning": True},
    ),
    "fedalign_im_x3": ("fedalign", {"preset": RECIPE, "adv_weight": 0.1, "disc_exchanges": 3}),
    "fedalign_im_sources": ("fedalign", {"preset": RECIPE, "adv_weight": 0.1, "adv_sides": "sources"}),
    "fedalign_im_warmup": ("fedalign", {"preset": RECIPE, "adv_weight": 0.1, "target_warmup_rounds": "10%"}),
}
# The recipe's candidates with the target's copy kept out of G_agg (the target does not train G, the
# sources' adversarial term does all the aligning): the procedure's last step (bench.select --target-out)
# adopts a target's form when it validates better than the choice recorded for the target.
TARGET_OUT = "_target_none"
KEEP_TARGET_OUT: dict[str, Any] = {"target_extractor": "none"}  # what a TARGET_OUT form changes
RECIPE_CANDIDATES = (
    *("fedalign_lambda0.1", "fedalign_lambda0.3", "fedalign"),
    *("fedalign_im_lambda0.1", "fedalign_im_lambda0.3", "fedalign_im_lambda1"),
)
FEDERATED |= {  # `fedalign_target_none`, the ablation arm, is already the form of `fedalign`
    f"{name}{TARGET_OUT}": (FEDERATED[name][0], {**FEDERATED[name][1], **KEEP_TARGET_OUT})
    for name in RECIPE_CANDIDATES
    if f"{name}{TARGET_OUT}" not in FEDERATED
}
# Their forms with the server step on G's average (hyperparameters.server_step): the procedure's step after
# that (bench.select --server-step) adopts a target's form when it validates better than the choice so far.
SERVER_STEP_FORM = "_server_step"
FEDERATED |= {
    f"{name}{SERVER_STEP_FORM}": (FEDERATED[name][0], {**FEDERATED[name][1], **STEPPED})
    for name in RECIPE_CANDIDATES
}
# Arms whose learning rate is the job's times a factor (every other arm runs at the job's lr).
LR_SCALE = {"fedavg_lr_x0.75": 0.75}
SELECTIONS = Path(__file__).resolve().parent / "results" / "selected-lambda.json"  # bench.select --write
# The candidate recipes for making the alignment add accuracy (bench/variants_study.sh), the recipe at
# lambda 0.1 first: bench.select breaks ties towards the first listed.
VARIANTS = (
    "fedalign_im_lambda0.1",
    "fedalign_im_cdane",
    "fedalign_im_x3",
    "fedalign_im_sources",
    "fedalign_im_warmup",
)
# The candidate chosen per target on the source-only validation tasks (bench.select --write-variant), never
# on the target; `fedalign_im_variant` runs it, `fedalign_im_variant_lambda0` the same pipeline with lambda 0.
VARIANT_SELECTIONS = SELECTIONS.with_name("selected-variant.json")
# The recipe's whole procedure per target (bench.select --im --write-recipe): lambda chosen among the plain
# candidates, then information maximisation on the target adopted or not, on the same validation tasks
# (`fedalign_recipe_3seeds`: the same procedure on three validation seeds instead of one).
RECIPE_SELECTIONS = SELECTIONS.with_name("selected-recipe.json")
# An arm that runs, per target, the FEDERATED method recorded for it in its file; its `<arm>_lambda0` twin
# runs the same pipeline with lambda 0 (the paired ablation of the adversarial term).
CHOICE_FILES: dict[str, Path] = {
    "fedalign_im_variant": VARIANT_SELECTIONS,
    "fedalign_recipe": RECIPE_SELECTIONS,
    "fedalign_recipe_3seeds": SELECTIONS.with_name("selected-recipe-3seeds.json"),
    # Candidates tried after the recipe's choices were made, on those same choices (the same record), each
    # keeping the target's copy out of G_agg so that it no longer damps the sources' labelled step: its own
    # training kept as an offset on G_agg (bench.residual), or no training of the target's G at all (the
    # sources' adversarial term does all the aligning).
    "fedalign_recipe_residual": RECIPE_SELECTIONS,
    "fedalign_recipe_target_none": RECIPE_SELECTIONS,
    # The same choices with the target's copy kept in G_agg and a server step on G's average that restores
    # the sources' step to its full size (hyperparameters.server_step "target_share").
    "fedalign_recipe_server_step": RECIPE_SELECTIONS,
    # The recipe's procedure with its last step: the target's copy kept out where that validates better.
    "fedalign_recipe_target": SELECTIONS.with_name("selected-recipe-target.json"),
    # That procedure's choices with the server step on G's average (which changes nothing where the
    # target's copy is kept out).
    "fedalign_recipe_target_server_step": SELECTIONS.with_name("selected-recipe-target.json"),
    # The procedure with a step after its last: the server step adopted where that validates better.
    "fedalign_recipe_stepped": SELECTIONS.with_name("selected-recipe-stepped.json"),
    # And one more step (bench.select --then): GroupNorm with each side's adversarial gradient at
    # centralised DANN's size (fedalign_group_norm_balanced) adopted where that validates better.
    "fedalign_recipe_stepped_gn": SELECTIONS.with_name("selected-recipe-stepped-gn.json"),
    # Or that step with the same weighting and BatchNorm per node (fedalign_balanced).
    "fedalign_recipe_stepped_balanced": SELECTIONS.with_name("selected-recipe-stepped-balanced.json"),
    # A diagnostic on the recipe's choices: BatchNorm shared (statistics averaged over every node, the target
    # normalised with them) instead of its statistics kept per node.
    "fedalign_recipe_shared_bn": RECIPE_SELECTIONS,
    # And with GroupNorm in G instead of BatchNorm (MODEL_OVERRIDES): no batch statistics at all, so a node's
    # batch of one domain is normalised as centralised training's batch of several is.
    "fedalign_recipe_group_norm": RECIPE_SELECTIONS,
    # The target's copy carrying half of G's average (extractor_weighting "balanced") with the server step,
    # whose eta is then 2: G_agg moves by the sources' mean step plus the target's whole step, as one step of
    # centralised DANN moves its one network by the sources' and the target's gradients together.
    "fedalign_recipe_full_step": RECIPE_SELECTIONS,
}
# What an arm (and its lambda-0 twin) changes in the family's model table.
GROUP_NORM: dict[str, Any] = {"normalization": "group"}
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "fedavg_group_norm": GROUP_NORM,
    "fedalign_recipe_group_norm": GROUP_NORM,
    "dann_central_group_norm": GROUP_NORM,
    "fedalign_group_norm": GROUP_NORM,
    "fedalign_group_norm_no_adversarial": GROUP_NORM,
    "fedalign_group_norm_confusion": GROUP_NORM,
    "fedalign_group_norm_no_pseudo_labels": GROUP_NORM,
    "fedalign_group_norm_no_pseudo_labels_no_adversarial": GROUP_NORM,
    "fedalign_group_norm_balanced": GROUP_NORM,
    "fedalign_group_norm_balanced_no_adversarial": GROUP_NORM,
}
# What such an arm (and its lambda-0 twin) changes in the recorded choice.
ARM_OVERRIDES: dict[str, dict[str, Any]] = {
    "fedalign_recipe_residual": {"target_warmup_rounds": "100%"},
    "fedalign_recipe_target_none": KEEP_TARGET_OUT,
    "fedalign_recipe_server_step": STEPPED,
    "fedalign_recipe_target_server_step": STEPPED,
    "fedalign_recipe_shared_bn": SHARED_BN,
    "fedalign_recipe_full_step": BALANCED_STEP,
}
# Such arms (and their lambda-0 twins) that run a candidate's own simulator: the module of bench whose
# `simulate(config)` runs them (bench.residual: the target's runtime swapped).
SIMULATORS = {"fedalign_recipe_residual": "residual"}


def _choices(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


CHOSEN: dict[str, dict[str, str]] = {arm: _choices(path) for arm, path in CHOICE_FILES.items()}
SELECTED_VARIANT = CHOSEN["fedalign_im_variant"]
SELECTED_RECIPE = CHOSEN["fedalign_recipe"]


def adv_weight(method: str) -> float:
    """A FEDERATED method's lambda as its config has it (a preset's, or set beside it)."""
    from fedalign.config import Hyperparameters

    # A warm-up given as a share of the rounds is resolved per job (federated_config): not needed here.
    settings = {k: v for k, v in FEDERATED[method][1].items() if k != "target_warmup_rounds"}
    return Hyperparameters.model_validate(settings).adv_weight


# `fedalign_im_selected`: the recipe (information maximisation on) at the lambda chosen per target on the
# source-only validation tasks, never on the target. Digits: the lambda of the recipe's procedure
# (bench/lambda_study.sh, bench/im_study.sh), which keeps IM on every digits target, so that on digits the arm
# runs exactly `fedalign_recipe`'s configurations (its logged runs carry this older name). Signals: the first
# signals study's choice (bench.select --write on bench/results/signals-validation.jsonl), IM everywhere.
SELECTED_LAMBDA = {t: adv_weight(m) for t, m in SELECTED_RECIPE.items() if t in DOMAINS}
SELECTED_LAMBDA |= {t: w for t, w in _choices(SELECTIONS).items() if t not in DOMAINS}
# The recipe with lambda set from the domain gap measured at the start of training (bench.gap) in place of
# the lambda chosen on validation tasks; its lambda-0 twin is fedalign_recipe_lambda0.
GAP_ARM = "fedalign_recipe_gap"
FEDERATED_PER_TARGET = {"fedalign_im_selected", *CHOSEN, *(f"{arm}_lambda0" for arm in CHOSEN), GAP_ARM}
# Centralised DANN on pooled data (not private), by the ceiling of its adversarial weight's ramp: 1 as in
# Ganin et al.; 0, the same network, batches and normalisation over source and target together without
# alignment; 0.1 and 0.3, the federated recipe's candidates. `_group_norm`: GroupNorm in G (MODEL_OVERRIDES),
# each example normalised on its own, as it is at a node. `_node_bn`, `_shared_stats`: BatchNorm otherwise
# (NORMALISATION_CENTRAL).
DANN_CENTRAL = {
    "dann_central": 1.0,
    "dann_central_lambda0": 0.0,
    "dann_central_lambda0.1": 0.1,
    "dann_central_lambda0.3": 0.3,
    "dann_central_group_norm": 1.0,
    "dann_central_group_norm_lambda0": 0.0,
    "dann_central_node_bn": 1.0,
    "dann_central_node_bn_lambda0": 0.0,
    "dann_central_shared_stats": 1.0,
    "dann_central_shared_stats_lambda0": 0.0,
}
# Centralised DANN's arms that normalise otherwise than by the mixed batch (references.dann_central's
# normalisation), looked up like MODEL_OVERRIDES so that a `_lambda0` twin normalises as its arm: as a node
# does (each domain's batch through G alone, with its own batch and running statistics), or every batch by
# one set of running statistics that both domains' batches move.
NORMALISATION_CENTRAL: dict[str, Normalisation] = {
    "dann_central_node_bn": "per_domain",
    "dann_central_shared_stats": "shared_running",
}
CENTRAL = ("target_oracle", *DANN_CENTRAL)
DEFAULT_METHODS = (
    "target_oracle",
    "source_only",
    "fedavg",
    "dann_central",
    "fedalign",
    "fedalign_no_adversarial",
)


@dataclass(frozen=True)
class Job:
    method: str
    target: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    lr_schedule: str
    domains: tuple[str, ...] = DOMAINS
    family: str = "digits"

    @property
    def sources(self) -> list[str]:
        return [d for d in self.domains if d != self.target]

    @property
    def key(self) -> str:
        parts = [self.method, self.target, self.seed, self.steps, self.batch_size, self.lr, self.lr_schedule]
        if self.domains != DOMAINS:
            parts.append(",".join(self.domains))
        return "|".join(str(v) for v in parts)


def federated_config(job: Job, adv_weight: float | None = None) -> Any:
    """The job's federation; ``adv_weight``: the gap arm's lambda, measured for this job (bench.gap)."""
    from fedalign.config import FederationConfig, Hyperparameters

    resolved = job.method  # the FEDERATED method the job runs (a chosen one, for an arm that reads choices)
    if job.method == GAP_ARM:
        if adv_weight is None:
            raise ValueError(f"{GAP_ARM} needs the lambda measured for its job (bench.gap)")
        algorithm, overrides = FEDERATED[SELECTED_RECIPE[job.target]]
        overrides = {**overrides, "adv_weight": adv_weight}
    elif job.method == "fedalign_im_selected":
        algorithm, overrides = "fedalign", {"preset": RECIPE, "adv_weight": SELECTED_LAMBDA[job.target]}
    elif job.method.removesuffix("_lambda0") in CHOSEN:
        arm = job.method.removesuffix("_lambda0")
        resolved = CHOSEN[arm][job.target]
        algorithm, overrides = FEDERATED[resolved]
        if job.method != arm:
            overrides = {**overrides, "adv_weight": 0.0}
    else:
        algorithm, overrides = FEDERATED[job.method]
    overrides = {**overrides, **ARM_OVERRIDES.get(job.method.removesuffix("_lambda0"), {})}
    lr_scale = LR_SCALE.get(job.method, 1.0)
    hp: dict[str, Any] = {
        "batch_size": job.batch_size,
        "lr": job.lr * lr_scale,
        "disc_lr": job.lr * lr_scale,
        "lr_schedule": job.lr_schedule,
        **overrides,
    }
    local_steps = Hyperparameters.model_validate(
        {k: v for k, v in hp.items() if k != "target_warmup_rounds"}
    ).local_steps  # the preset's, or the schema's default
    rounds = max(1, job.steps // local_steps)
    warmup = hp.get("target_warmup_rounds")
    if isinstance(warmup, str) and warmup.endswith("%"):  # a share of the budget's rounds
        hp["target_warmup_rounds"] = rounds * int(warmup.removesuffix("%")) // 100
    hp["eval_every"] = max(1, job.steps // local_steps)  # evaluate once, at the end
    family = FAMILIES[job.family]
    nodes = [{"name": d, "role": "source", "dataset": family.spec(d)} for d in job.sources]
    nodes.append({"name": job.target, "role": "target", "dataset": family.spec(job.target)})
    return FederationConfig.model_validate(
        {
            "name": f"{job.method}-{job.target}",
            "algorithm": algorithm,
            "architecture": family.architecture,
            # The chosen method's model table, then the arm's own changes to it.
            "model": {
                **family.model,
                **MODEL_OVERRIDES.get(resolved, {}),
                **MODEL_OVERRIDES.get(job.method.removesuffix("_lambda0"), {}),
            },
            "rounds": rounds,
            "seed": job.seed,
            "hyperparameters": hp,
            "nodes": nodes,
        }
    )


def run_platform() -> dict[str, str]:
    """What decides a run's floating-point results beside its code and seed: the torch build and the CPU
    kernels it dispatches to. AVX2 and AVX-512 kernels round differently, and a digits run that starts from
    the same seed ends a point or more apart on two such machines, so a log row says where it ran."""
    import torch

    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def run_job(job: Job) -> dict[str, Any]:
    import torch

    from fedalign import data as datasets

    torch.set_num_threads(1)
    start = time.perf_counter()
    extra: dict[str, float] = {}
    if job.method in CENTRAL:
        from bench import references

        family = FAMILIES[job.family]
        overrides = MODEL_OVERRIDES.get(job.method.removesuffix("_lambda0"), {})
        model = (family.architecture, family.shape(**overrides))
        target = datasets.load(family.spec(job.target))
        if job.method == "target_oracle":
            acc = references.target_oracle(
                target, job.steps, job.batch_size, job.lr, job.lr_schedule, job.seed, model
            )
        else:
            sources = [datasets.load(family.spec(d)) for d in job.sources]
            weight = DANN_CENTRAL[job.method]
            acc = references.dann_central(
                sources,
                target,
                job.steps,
                job.batch_size,
                job.lr,
                job.lr_schedule,
                weight,
                job.seed,
                model,
                normalisation=NORMALISATION_CENTRAL.get(job.method.removesuffix("_lambda0"), "mixed"),
            )
    else:
        from bench import validators
        from fedalign.simulate import simulate

        gap: dict[str, float] = {}
        adv_weight = None
        if job.method == GAP_ARM:
            from bench import gap as gap_rule  # here: bench.gap imports this module

            gap = gap_rule.measure(job)
            adv_weight = gap_rule.weight(gap["gap_pad"])
        candidate = SIMULATORS.get(job.method.removesuffix("_lambda0"))
        config = federated_config(job, adv_weight)
        if candidate is not None:
            # Imported here: a candidate's module imports torch and the simulator.
            result = importlib.import_module(f"bench.{candidate}").simulate(config)
        else:
            result = simulate(config)
        final = result.final_metrics
        acc = final["target_acc"]
        extra = {k: v for k, v in final.items() if k != "target_acc"} | gap
        if "target_model" in result.models:  # label-free scores, for choosing between pipelines
            target_data = datasets.load(FAMILIES[job.family].spec(job.target))
            extra |= validators.target_scores(config, result.models["target_model"], target_data)
    return {
        "key": job.key,
        "method": job.method,
        "target": job.target,
        "seed": job.seed,
        "steps": job.steps,
        "batch_size": job.batch_size,
        "lr": job.lr,
        "lr_schedule": job.lr_schedule,
        "target_acc": acc,
        "seconds": time.perf_counter() - start,
        "final_metrics": extra,
        "platform": run_platform(),
    }


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (1 seed)"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(results: list[dict[str, Any]], methods: list[str], targets: list[str]) -> str:
    header = "| method | " + " | ".join(targets) + " | average |"
    lines = [header, "|" + "---|" * (len(targets) + 2)]
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        cells = [_cell([r["target_acc"] for r in rows if r["target"] == t]) for t in targets]
        seeds = sorted({r["seed"] for r in rows})
        # The average over targets is taken per seed, then its spread is over seeds.
        per_seed = []
        for s in seeds:
            accs = [r["target_acc"] for r in rows if r["seed"] == s]
            if len(accs) == len(targets):
                per_seed.append(statistics.fmean(accs))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_cell(per_seed)} |")
    return "\n".join(lines)


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above 0, refused before any run starts."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=[*CENTRAL, *FEDERATED, *FEDERATED_PER_TARGET],
    )
    parser.add_argument(
        "--family",
        choices=list(FAMILIES),
        default="digits",
        help="The benchmark family: digits (images, digits_cnn), signals (vectors, mlp) or clinics (tabular "
        "records, mlp).",
    )
    every_domain = [d for f in FAMILIES.values() for d in f.domains]
    parser.add_argument(
        "--targets", nargs="+", default=None, choices=every_domain, help="Default: every domain."
    )
    parser.add_argument(
        "--domains",
        nargs="+",
        default=None,
        choices=every_domain,
        help="The pool: each target's sources are the others. Leaving the real target out of the pool makes "
        "a validation task from sources alone (each of them in turn a pseudo-target with labels), the "
        "way to choose settings without target labels. Default: every domain of the family.",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=_positive(int), default=1500)
    parser.add_argument("--batch-size", type=_positive(int), default=64)
    parser.add_argument("--lr", type=_positive(float), default=0.01)
    parser.add_argument(
        "--lr-schedule",
        choices=["dann", "constant"],
        default="dann",
        help="For every method alike; 'dann' is Ganin et al.'s lr / (1 + 10 p)^0.75.",
    )
    parser.add_argument(
        "--workers", type=_positive(int), default=2, help="Parallel processes, one torch thread each."
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/accuracy.json"))
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)

    family = FAMILIES[args.family]
    args.domains = args.domains or list(family.domains)
    if not set(args.domains) <= set(family.domains):
        parser.error(f"the {family.name} family's domains are {', '.join(family.domains)}")
    args.targets = args.targets or [d for d in family.domains if d in args.domains]
    if not set(args.targets) <= set(args.domains) or len(args.domains) < 2:
        parser.error("every target must be in --domains, and the pool needs at least two domains")
    missing = [t for t in args.targets if t not in SELECTED_LAMBDA]
    if "fedalign_im_selected" in args.methods and missing:
        parser.error(f"no lambda has been selected for {', '.join(missing)} (SELECTED_LAMBDA)")
    for arm, choices in [*CHOSEN.items(), (GAP_ARM, SELECTED_RECIPE)]:
        unchosen = [t for t in args.targets if t not in choices]
        if {arm, f"{arm}_lambda0"} & set(args.methods) and unchosen:
            file = CHOICE_FILES.get(arm, RECIPE_SELECTIONS).name
            parser.error(
                f"{arm}: nothing has been chosen for {', '.join(unchosen)} yet: run its validation tasks and "
                f"bench.select, which writes {file}"
            )
    log: Path = args.log or args.json.with_suffix(".jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    done = read_runs([log]) if log.exists() else {}
    jobs = [
        Job(m, t, s, args.steps, args.batch_size, args.lr, args.lr_schedule, tuple(args.domains), family.name)
        for s in args.seeds
        for t in args.targets
        for m in args.methods
    ]
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already logged in {log}", flush=True)

    from fedalign import data as datasets

    for d in args.domains:  # build the caches once, before the workers race for them
        datasets.load(family.spec(d))

    run: Callable[[Job], dict[str, Any]] = run_job
    commit = git_commit()
    failed: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool, log.open("a") as out:
        futures = {pool.submit(run, j): j for j in todo}
        for future in as_completed(futures):
            if (error := future.exception()) is not None:
                # Said at once, and the other runs go on (each is logged as it ends): a failing arm must
                # not leave the pool working for its whole queue with nothing said and nothing logged.
                failed[futures[future].key] = f"{type(error).__name__}: {error}"
                print(f"FAILED {futures[future].key}: {failed[futures[future].key]}", flush=True)
                continue
            record = future.result() | {"commit": commit}
            done[record["key"]] = record
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(
                f"{record['method']:>26} {record['target']:>9} seed {record['seed']}: "
                f"{100 * record['target_acc']:.1f}%  ({record['seconds']:.0f} s)",
                flush=True,
            )

    if failed:
        raise SystemExit(
            f"{len(failed)} of {len(todo)} runs failed (the others are logged in {log}):\n"
            + "\n".join(f"  {key}: {error}" for key, error in failed.items())
        )
    results = [done[j.key] for j in jobs]
    text = table(results, args.methods, args.targets)
    print(
        f"\nTarget test accuracy (%), mean ± sd over seeds {args.seeds}; {args.steps} steps of batch "
        f"{args.batch_size} per node:\n"
    )
    print(text)
    write_json(
        args.json,
        stamped({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results, "table": text}),
        allow_nan=True,
    )


if __name__ == "__main__":
    main()
