"""The residual-target candidate (bench.residual): the target's training kept as its own offset on G_agg,
its copy out of G_agg, the protocol unchanged."""

from __future__ import annotations

import pytest
import torch

from bench import accuracy, residual
from fedalign.node import shared_state
from fedalign.simulate import simulate

SIGNALS = accuracy.FAMILIES["signals"].domains


def config(method: str, steps: int = 24) -> object:
    job = accuracy.Job(method, "lab", 1, steps, 32, 0.01, "dann", SIGNALS, family="signals")
    return accuracy.federated_config(job)


def test_the_residual_arm_is_the_recipe_choice_with_the_target_kept_out_of_g_agg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe"], "lab", "fedalign_im_lambda0.1")
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe_residual"], "lab", "fedalign_im_lambda0.1")
    plain = config("fedalign_recipe").model_dump(mode="json")
    kept_out = config("fedalign_recipe_residual").model_dump(mode="json")
    assert kept_out["hyperparameters"] == {
        **plain["hyperparameters"],
        "target_warmup_rounds": plain["rounds"],
    }
    assert {**kept_out, "hyperparameters": None, "name": None} == {
        **plain,
        "hyperparameters": None,
        "name": None,
    }


def test_a_target_that_takes_no_step_runs_exactly_as_the_plain_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # lambda 0 and no term on the target's own predictions: its offset stays zero, so nothing may differ.
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe_residual"], "lab", "fedalign_no_pseudo_labels")
    federation = config("fedalign_recipe_residual_lambda0")
    assert residual.simulate(federation).final_metrics == simulate(federation).final_metrics


def test_the_target_runs_g_agg_plus_its_own_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe_residual"], "lab", "fedalign_im_lambda0.1")
    federation = config("fedalign_recipe_residual")
    run = residual.simulator(federation)
    result = run.run()
    target = run.nodes["lab"]
    assert isinstance(target, residual.ResidualTarget)
    g_agg = result.models["G"]
    own = shared_state(target.models.G, target.local["G"])
    assert set(target.offset) <= set(own) and any(d.abs().sum() > 0 for d in target.offset.values())
    for name, tensor in own.items():
        expected = g_agg[name] + target.offset[name] if name in target.offset else g_agg[name]
        assert torch.equal(tensor, expected), name


def test_a_target_copy_that_enters_g_agg_is_refused() -> None:
    with pytest.raises(ValueError, match="target_warmup_rounds"):
        residual.simulator(config("fedalign_recipe"))
