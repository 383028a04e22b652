"""The server-step candidate (bench.server_step): G's average followed by a step of 1 / (1 − the target's
share) from the previous G_agg, so that the sources' step reaches G_agg at its full size."""

from __future__ import annotations

import pytest
import torch

from bench import accuracy, server_step
from fedalign.node import State
from fedalign.protocol import Action, Aggregate
from fedalign.simulate import simulate

SIGNALS = accuracy.FAMILIES["signals"].domains


def config(method: str, steps: int = 24) -> object:
    job = accuracy.Job(method, "lab", 1, steps, 32, 0.01, "dann", SIGNALS, family="signals")
    return accuracy.federated_config(job)


def test_the_server_step_arm_is_the_recipe_choice_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe"], "lab", "fedalign_im_lambda0.1")
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe_server_step"], "lab", "fedalign_im_lambda0.1")
    plain = config("fedalign_recipe").model_dump(mode="json")
    stepped = config("fedalign_recipe_server_step").model_dump(mode="json")
    assert {**stepped, "name": None} == {**plain, "name": None}


@pytest.mark.parametrize("method", ["fedavg", "fedalign_target_none"])
def test_without_the_target_copy_in_g_agg_the_run_is_the_plain_one(method: str) -> None:
    federation = config(method)
    assert server_step.simulate(federation).final_metrics == simulate(federation).final_metrics


class Recording(server_step.ServerStepSimulator):
    """Keeps, for every aggregate, the previous aggregate of its model, the plain average and the result."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[Aggregate, State, State, State]] = []

    def _carry_out(self, action: Action) -> list[Action]:
        if not isinstance(action, Aggregate):
            return super()._carry_out(action)
        base = self.store[self.protocol.state.latest[action.model]]
        inputs = {n: self.store[k] for n, k in action.inputs.items()}
        average = {
            name: sum(w * inputs[n][name] for n, w in sorted(action.weights.items()))
            for name, value in next(iter(inputs.values())).items()
            if value.is_floating_point()
        }
        actions = super()._carry_out(action)
        self.seen.append((action, base, average, self.store[action.key]))
        return actions


def test_each_g_aggregate_steps_from_the_previous_one_by_the_target_share() -> None:
    federation = config("fedalign")  # the target's copy is averaged into G_agg
    run = Recording(federation)
    run.run()
    g_steps = 0
    for action, base, average, result in run.seen:
        share = action.weights.get("lab", 0.0)
        if action.model != "G" or share == 0.0:
            for name, value in average.items():  # the task model and discriminator: the plain average
                torch.testing.assert_close(result[name], value, rtol=1e-5, atol=1e-6)
            continue
        g_steps += 1
        # Four domains of equal size: the target holds a quarter of G's average, the step is 4/3.
        assert share == pytest.approx(0.25, abs=0.02)
        step = 1 / (1 - share)
        for name, value in average.items():
            torch.testing.assert_close(result[name], base[name] + step * (value - base[name]))
    assert g_steps == federation.rounds
    assert server_step.simulate(federation).final_metrics != simulate(federation).final_metrics
