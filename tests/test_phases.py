"""The round schedule as values: what each phase of a round asks of each role, and the optimiser steps it
gives them, which differential privacy's accounting sums."""

from __future__ import annotations

from typing import Any

from fedalign.config import FederationConfig
from fedalign.phases import Schedule, round_phases
from fedalign.privacy_accounting import cumulative_dp_steps, dp_steps


def make_config(algorithm: str = "fedalign", rounds: int = 3, **hp: Any) -> FederationConfig:
    return FederationConfig.model_validate(
        {
            "algorithm": algorithm,
            "rounds": rounds,
            "model": {"normalization": "group"},
            "privacy": {"noise_multiplier": 1.0},
            "hyperparameters": hp,
            "nodes": [
                {"name": "s", "role": "source", "dataset": "digits:mnist"},
                {"name": "t", "role": "target", "dataset": "digits:mnistm"},
            ],
        }
    )


def test_a_fedalign_round_is_its_exchanges_then_adaptation_then_evaluation() -> None:
    phases = Schedule.of(make_config(disc_exchanges=2)).round(1)
    assert [(p.name, p.kind, p.exchange) for p in phases] == [
        ("disc1", "discriminator", 1),
        ("disc2", "discriminator", 2),
        ("adapt", "adapt", 0),
        ("eval", "evaluate", 0),
    ]
    assert round_phases(make_config(disc_exchanges=2), 1) == [p.name for p in phases]


def test_every_node_uploads_d_in_an_exchange_and_the_sources_g_and_t_in_adaptation() -> None:
    disc, adapt, evaluation = Schedule.of(make_config()).round(1)
    assert {role: part.uploads for role, part in disc.parts.items()} == {"source": ("D",), "target": ("D",)}
    assert {role: part.uploads for role, part in adapt.parts.items()} == {
        "source": ("G", "T"),
        "target": ("G",),
    }
    assert all(part.uploads == () for part in evaluation.parts.values())


def test_the_last_round_ends_with_the_target_publishing_its_model() -> None:
    publish = Schedule.of(make_config()).round(3)[-1]
    assert (publish.name, list(publish.parts), publish.parts["target"].uploads) == (
        "publish",
        ["target"],
        ("model",),
    )


def test_source_only_trains_the_sources_alone() -> None:
    (train, _) = Schedule.of(make_config("source_only")).round(1)
    assert list(train.parts) == ["source"]


def test_each_phase_gives_its_roles_their_optimiser_steps() -> None:
    config = make_config(disc_exchanges=2, disc_steps=3, local_steps=5)
    assert dp_steps(config, "source", 2) == 2 * 3 + 5
    assert dp_steps(config, "target", 2) == 2 * 3 + 5


def test_the_target_takes_no_step_while_lambda_is_zero_and_nothing_else_trains_it() -> None:
    """Under the DANN ramp lambda is 0 in round 1: the target's adaptation loss has no gradient then."""
    config = make_config(disc_steps=3, local_steps=5, adv_schedule="dann")
    assert [dp_steps(config, "target", r) for r in (1, 2, 3)] == [3, 8, 8]
    assert cumulative_dp_steps(config, "target", 3) == 19
    with_terms = make_config(disc_steps=3, local_steps=5, adv_schedule="dann", entropy_weight=1.0)
    assert dp_steps(with_terms, "target", 1) == 8


def test_a_fedavg_target_trains_only_on_terms_of_its_own_predictions() -> None:
    assert dp_steps(make_config("fedavg", local_steps=4), "target", 1) == 0
    assert dp_steps(make_config("fedavg", local_steps=4), "source", 1) == 4
    assert dp_steps(make_config("fedavg", local_steps=4, entropy_weight=1.0), "target", 1) == 4


def test_during_the_targets_warm_up_its_extractor_stays_out_of_g_agg() -> None:
    schedule = Schedule.of(make_config(rounds=4, target_warmup_rounds=2))
    adapt = {r: next(p for p in schedule.round(r) if p.kind == "adapt") for r in (1, 2, 3, 4)}
    assert [adapt[r].parts["target"].uploads for r in (1, 2, 3, 4)] == [(), (), ("G",), ("G",)]
    # It still starts each round from G_agg and trains.
    assert all("G" in adapt[r].parts["target"].downloads for r in (1, 2, 3, 4))
    assert dp_steps(make_config(rounds=4, target_warmup_rounds=2), "target", 1) == 10 + 10


def test_with_source_side_alignment_only_the_target_trains_only_on_its_own_predictions() -> None:
    sources_only = make_config(adv_sides="sources", local_steps=5, disc_steps=3)
    assert dp_steps(sources_only, "target", 2) == 3, "no adversarial term and no other term: no G step"
    with_terms = make_config(adv_sides="sources", local_steps=5, disc_steps=3, entropy_weight=1.0)
    assert dp_steps(with_terms, "target", 2) == 3 + 5
    assert dp_steps(sources_only, "source", 2) == 3 + 5
