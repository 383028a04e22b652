"""The label-free validators (bench.validators): what each score says about known predictions, and that a
run's target model is scored from its own data without its labels."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench import validators
from bench.accuracy import FAMILIES, Job, federated_config
from fedalign import data as datasets
from fedalign.data import Split
from fedalign.simulate import simulate

CLASSES = 4
N = 40


def _one_hot(labels: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), CLASSES).float()


def test_confident_balanced_predictions_score_the_most_information() -> None:
    balanced = validators.scores(_one_hot([i % CLASSES for i in range(N)]))
    assert balanced["im"] == pytest.approx(math.log(CLASSES))
    assert balanced["neg_entropy"] == pytest.approx(0.0)
    assert balanced["diversity"] == pytest.approx(math.log(CLASSES))
    assert balanced["bnm"] == pytest.approx(math.sqrt(CLASSES / N))  # C singular values of sqrt(N / C)

    uncertain = validators.scores(torch.full((N, CLASSES), 1 / CLASSES))
    assert uncertain["im"] == pytest.approx(0.0)
    assert uncertain["neg_entropy"] == pytest.approx(-math.log(CLASSES))
    assert uncertain["diversity"] == pytest.approx(math.log(CLASSES))


def test_a_collapse_onto_one_class_loses_diversity_and_information_but_not_density() -> None:
    balanced = validators.scores(_one_hot([i % CLASSES for i in range(N)]))
    collapsed = validators.scores(_one_hot([0] * N))
    assert collapsed["diversity"] == pytest.approx(0.0)
    assert collapsed["im"] == pytest.approx(0.0)
    assert collapsed["neg_entropy"] == pytest.approx(0.0)  # confidence alone cannot see a collapse
    assert collapsed["bnm"] < balanced["bnm"]
    # SND reads one dense cluster as the best neighbourhood: every other prediction is a close neighbour.
    assert collapsed["snd"] == pytest.approx(math.log(N - 1))
    assert balanced["snd"] == pytest.approx(math.log(N / CLASSES - 1))


def test_a_runs_target_model_is_scored_on_its_training_split_without_reading_a_label() -> None:
    family = FAMILIES["signals"]
    job = Job("fedavg", "fast", 0, 20, 32, 0.01, "dann", family.domains, "signals")
    config = federated_config(job)
    result = simulate(config)
    target = datasets.load(family.spec("fast"))
    scored = validators.target_scores(config, result.models["target_model"], target)
    assert set(scored) == {f"validator_{name}" for name in validators.VALIDATORS}

    # The same inputs without their labels: the same scores (no label is read).
    assert isinstance(target.train, Split)
    unlabelled = dataclasses.replace(target, train=Split(target.train.x))
    assert validators.target_scores(config, result.models["target_model"], unlabelled) == scored
    # And the scores are those of the model's own predictions on that split.
    probabilities = validators.predictions(config, result.models["target_model"], target)
    assert probabilities.shape == (len(target.train), 6)
    assert scored["validator_im"] == pytest.approx(validators.scores(probabilities)["im"])
