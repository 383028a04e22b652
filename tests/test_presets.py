"""Named hyperparameter presets: one recipe, written once, chosen by name in a TOML file or the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedalign.config import FederationConfig, Hyperparameters, load_config
from fedalign.presets import PRESETS

EXAMPLE = Path(__file__).parent.parent / "examples" / "digits-mnistm.toml"


def test_a_preset_gives_its_values_and_keeps_its_name() -> None:
    hp = Hyperparameters.model_validate({"preset": "digits_recipe"})
    assert hp.preset == "digits_recipe"
    assert {k: getattr(hp, k) for k in PRESETS["digits_recipe"]} == dict(PRESETS["digits_recipe"])
    assert hp.lr == Hyperparameters().lr, "what the preset does not name keeps the schema's default"


def test_explicit_hyperparameters_override_the_preset() -> None:
    hp = Hyperparameters.model_validate({"preset": "digits_recipe", "adv_weight": 0.3, "local_steps": 5})
    assert (hp.adv_weight, hp.local_steps) == (0.3, 5)
    assert hp.entropy_weight == PRESETS["digits_recipe"]["entropy_weight"]


def test_a_validated_config_validates_again_to_itself() -> None:
    """A stored config (every value explicit, the preset's name beside them) reads back unchanged."""
    config = FederationConfig.model_validate({"hyperparameters": {"preset": "digits_recipe", "lr": 0.05}})
    assert FederationConfig.model_validate(config.model_dump(mode="json")) == config


def test_an_unknown_preset_is_refused_with_the_names_there_are() -> None:
    with pytest.raises(ValidationError) as info:
        Hyperparameters.model_validate({"preset": "the_best_one"})
    assert "digits_recipe" in str(info.value)


def test_the_shipped_example_runs_the_digits_recipe() -> None:
    hp = load_config(EXAMPLE).hyperparameters
    assert hp.preset == "digits_recipe"
    assert {k: getattr(hp, k) for k in PRESETS["digits_recipe"]} == dict(PRESETS["digits_recipe"])


def test_every_preset_is_a_valid_set_of_hyperparameters() -> None:
    for name, values in PRESETS.items():
        assert Hyperparameters.model_validate(dict(values)).preset is None, name
