"""The method improves the target, not only runs: the shipped recipe against the baselines it must beat.

Every served-vs-simulator test shares the method's code, so a deterministic regression in the method (a
term that stops training, a loss with the wrong sign, target terms that no longer reach the target) would
pass them all. This test runs the recipe the project ships (`examples/digits-mnistm.toml`: the
``digits_recipe`` preset) on a small shift of the built-in digits benchmark, MNIST (labelled source) to
MNIST-M (unlabelled target), and asserts that it beats FedAvg and source-only on the target by a margin on
each of three paired seeds (a seed fixes initialisation and batch order in every arm).

The margin comes from a measured run, written down here and not tuned until green
(`python -m pytest tests/test_method_gain.py -s` prints the figures; 200 rounds, batch 32, one torch
thread, on commit 0706590, 2026-12-06):

    seed   recipe   fedavg   source_only   recipe - fedavg   recipe - source_only
    0      81.1     49.7     50.0          +31.4             +31.1
    1      78.7     52.4     47.4          +26.3             +31.3
    2      81.1     46.3     46.3          +34.8             +34.8

The smallest paired gain measured is 26.3 points; the test asks for 10 on every seed, so that noise from a
different BLAS or CPU cannot fail it while losing the target terms (recipe ~ FedAvg) always does. It does
not claim that the adversarial term adds accuracy here: the paired ablation in the benchmarks (docs:
Benchmarks, accuracy) measures that, and on this shift it is within noise.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from fedalign.config import FederationConfig
from fedalign.simulate import simulate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-mnistm.toml"
ROUNDS = 200
BATCH_SIZE = 32
SEEDS = (0, 1, 2)
MARGIN = 0.10  # see the measured run above: smallest paired gain 0.263
BASELINES = ("fedavg", "source_only")


def config(algorithm: str, seed: int) -> FederationConfig:
    raw: dict[str, Any] = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    shipped = raw["hyperparameters"]
    assert raw["algorithm"] == "fedalign" and shipped.get("preset") == "digits_recipe", (
        "the example no longer ships the recipe this test measures: measure the new one and update MARGIN"
    )
    common = {"batch_size": BATCH_SIZE, "lr": shipped["lr"], "eval_every": ROUNDS}
    hyperparameters = {**shipped, **common} if algorithm == "fedalign" else {"local_steps": 1, **common}
    raw |= {
        "name": f"{algorithm}-{seed}",
        "algorithm": algorithm,
        "rounds": ROUNDS,
        "seed": seed,
        "hyperparameters": hyperparameters,
        "nodes": [
            {"name": "mnist", "role": "source", "dataset": "digits:mnist"},
            {"name": "mnistm", "role": "target", "dataset": "digits:mnistm"},
        ],
    }
    return FederationConfig.model_validate(raw)


def target_accuracy(algorithm: str, seed: int) -> float:
    return simulate(config(algorithm, seed)).final_metrics["target_acc"]


@pytest.fixture
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", SEEDS)
def test_recipe_beats_fedavg_and_source_only(seed: int, one_thread: None) -> None:
    recipe = target_accuracy("fedalign", seed)
    baselines = {name: target_accuracy(name, seed) for name in BASELINES}
    print(f"seed {seed}: recipe {recipe:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))
    for name, accuracy in baselines.items():
        assert recipe - accuracy >= MARGIN, (
            f"seed {seed}: the shipped recipe reached {recipe:.3f} on the target, {name} {accuracy:.3f}: "
            f"a gain of {recipe - accuracy:+.3f}, below the {MARGIN} this test asks for"
        )
