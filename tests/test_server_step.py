"""The server step on G's average (hyperparameters.server_step = "target_share"): G_agg = G_prev + eta
(average - G_prev), eta = 1 / (1 - the target's share of the average), so that averaging in the target's copy
does not shrink the sources' step."""

from __future__ import annotations

import pytest
import torch

from bench import accuracy
from fedalign.aggregate import step_past
from fedalign.config import FederationConfig
from fedalign.node import State
from fedalign.protocol import Action, Aggregate
from fedalign.simulate import Simulator, simulate
from fedalign.weighting import AggregationError, target_share_step

SIGNALS = accuracy.FAMILIES["signals"].domains


def config(method: str, **hyperparameters: object) -> FederationConfig:
    """A short signals federation (lab the target, three sources of the same size) with settings changed."""
    job = accuracy.Job(method, "lab", 1, 24, 32, 0.01, "dann", SIGNALS, family="signals")
    federation = accuracy.federated_config(job)
    return federation.model_copy(
        update={"hyperparameters": federation.hyperparameters.model_copy(update=hyperparameters)}
    )


class Recording(Simulator):
    """Keeps, for every aggregate, the aggregate of its model it started from, the plain average and the
    result."""

    def __init__(self, federation: FederationConfig) -> None:
        super().__init__(federation)
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


def test_each_g_aggregate_steps_past_the_g_agg_its_copies_started_from() -> None:
    federation = config("fedalign", server_step="target_share")  # the target's copy is averaged in
    run = Recording(federation)
    run.run()
    g_steps = 0
    for action, base, average, result in run.seen:
        share = action.weights.get("lab", 0.0)
        if action.model != "G" or share == 0.0:  # the task model and the discriminator: the plain average
            assert action.base is None and action.step == 1.0
            for name, value in average.items():
                torch.testing.assert_close(result[name], value, rtol=1e-5, atol=1e-6)
            continue
        g_steps += 1
        # Four domains of equal size: the target holds a quarter of G's average, the step is 4/3.
        assert share == pytest.approx(0.25, abs=0.02)
        assert action.step == 1 / (1 - share)
        for name, value in average.items():
            torch.testing.assert_close(result[name], base[name] + action.step * (value - base[name]))
    assert g_steps == federation.rounds
    plain = federation.model_copy(
        update={"hyperparameters": federation.hyperparameters.model_copy(update={"server_step": "none"})}
    )
    assert simulate(federation).final_metrics != simulate(plain).final_metrics


@pytest.mark.parametrize("method", ["fedavg", "fedalign_target_none"])
def test_without_the_target_copy_in_g_agg_the_step_is_one_and_the_run_unchanged(method: str) -> None:
    stepped, plain = config(method, server_step="target_share"), config(method)
    assert simulate(stepped).final_metrics == simulate(plain).final_metrics


def test_sources_that_keep_their_own_extractor_are_refused() -> None:
    federation = config("fedalign").model_dump(mode="json")
    federation["hyperparameters"] |= {"server_step": "target_share", "source_extractor": "keep"}
    with pytest.raises(ValueError, match="needs source_extractor 'restart'"):
        FederationConfig.model_validate(federation)


def test_the_step_gives_the_sources_step_back_its_full_size() -> None:
    assert target_share_step(0.25) == pytest.approx(4 / 3)
    assert target_share_step(0.0) == 1.0
    for share in (1.0, -0.1, float("nan")):
        with pytest.raises(AggregationError, match="share"):
            target_share_step(share)


def test_step_past_moves_floats_keeps_counters_and_refuses_a_bad_step() -> None:
    base = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16)}
    average = {
        "w": torch.tensor([2.0, 2.0]),
        "h": torch.tensor([3.0], dtype=torch.float16),
        "count": torch.tensor(7),
    }
    base["count"] = torch.tensor(3)
    moved = step_past(base, average, 1.5)
    assert torch.equal(moved["w"], torch.tensor([2.5, 2.0]))
    assert moved["h"].dtype == torch.float16 and moved["h"].item() == 4.0
    assert moved["count"].item() == 7  # a counter is the average's (its maximum), not extrapolated
    for step in (0.5, float("inf")):
        with pytest.raises(AggregationError, match="at least 1"):
            step_past(base, average, step)
    with pytest.raises(AggregationError, match="lacks tensors"):
        step_past({"w": base["w"]}, average, 1.5)
