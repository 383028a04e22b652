"""Secure aggregation in the simulator: the same numbers as plain averaging, masked uploads only, refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from fedalign import secagg
from fedalign.aggregate import average_states
from fedalign.architecture_names import BUILTINS
from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig
from fedalign.data import NodeData
from fedalign.manifest import is_floating
from fedalign.models import LOCAL_POLICIES, manifests
from fedalign.node import NodeRuntime
from fedalign.protocol import Action, Aggregate, Deadline, RunStep
from fedalign.simulate import SecureAggregation, Simulator, simulate

Factory = Callable[..., tuple[dict, dict[str, NodeData]]]
F32_HALF_ULP = 2.0**-24  # the decoded float64 average is cast to float32
# Metrics of the runs with and without masks. Aggregates differ by ~1e-7 (the fixed point's rounding) and
# the runs are deterministic (masks cancel exactly in the ring), so a metric may move by as much only:
# a flipped prediction (>= 1/24 here) would fail this, as it should be investigated.
METRIC_TOLERANCE = 1e-4


class Recorder:
    """Plain uploads as the nodes' steps produce them, and every secure aggregate and what it folded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plain: dict[str, dict[str, torch.Tensor]] = {}  # submission key -> plain upload
        self.aggregates: list[tuple[Aggregate, dict[str, torch.Tensor]]] = []
        self.received: dict[str, tuple[dict[str, torch.Tensor], float]] = {}  # key -> masked upload, weight
        self.contexts: list[tuple[str, secagg.MaskContext]] = []
        self._action: Aggregate | None = None
        run, aggregate = NodeRuntime.run, SecureAggregation.aggregate
        add_state, mask_state = secagg.MaskedSum.add_state, secagg.Masker.mask_state
        recorder = self

        def run_step(runtime: NodeRuntime, step: Any, downloads: Any) -> Any:
            result = run(runtime, step, downloads)
            for slot, key in step.uploads.items():
                recorder.plain[key] = {k: v.clone() for k, v in result.uploads[slot].items()}
            return result

        def secure_aggregate(self: SecureAggregation, action: Aggregate, store: Any) -> Any:
            recorder._action = action
            result = aggregate(self, action, store)
            recorder.aggregates.append((action, {k: v.clone() for k, v in result.items()}))
            return result

        def fold(self: secagg.MaskedSum, node: str, state: Any) -> None:
            assert recorder._action is not None
            key = recorder._action.inputs[node]
            recorder.received[key] = ({k: v.clone() for k, v in state.items()}, self.weights[node])
            add_state(self, node, state)

        def mask(self: secagg.Masker, state: Any, manifest: Any) -> Any:
            recorder.contexts.append((self.node, self.context))
            return mask_state(self, state, manifest)

        monkeypatch.setattr(NodeRuntime, "run", run_step)
        monkeypatch.setattr(SecureAggregation, "aggregate", secure_aggregate)
        monkeypatch.setattr(secagg.MaskedSum, "add_state", fold)
        monkeypatch.setattr(secagg.Masker, "mask_state", mask)


def config_of(make: Factory, **overrides: object) -> tuple[FederationConfig, dict[str, NodeData]]:
    raw, data = make(**overrides)
    return FederationConfig.model_validate(raw), data


def assert_weighted_average(
    result: dict[str, torch.Tensor],
    inputs: dict[str, dict[str, torch.Tensor]],
    weights: dict[str, float],
    masked_total: float = 1.0,
) -> None:
    """``result`` is the weighted average of ``inputs`` within secagg's documented bound.

    ``masked_total``: the total of the weights the inputs were masked with (below 1 after a dropout).
    """
    bound = secagg.DEFAULT_FIXED_POINT.error_bound(len(inputs), masked_total)
    assert set(result) == set(next(iter(inputs.values())))
    for name, value in result.items():
        exact = sum(weights[n] * inputs[n][name].double() for n in inputs)
        assert value.dtype == torch.float32
        assert bool(((value.double() - exact).abs() <= bound + exact.abs() * F32_HALF_ULP).all()), name


# ---------------------------------------------------------------------------------------------------------
# 1. The same numbers as without masks


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_secure_aggregation_gives_the_numbers_of_plain_averaging(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch, aggregator: str
) -> None:
    plain_config, data = config_of(vector_federation, aggregator=aggregator)
    secure_config, _ = config_of(vector_federation, aggregator=aggregator, secure_aggregation=True)
    plain = simulate(plain_config, node_data=data)
    with monkeypatch.context() as patch:
        recorder = Recorder(patch)
        secure = simulate(secure_config, node_data=data)

    # Every aggregate of the run is the protocol-weighted average of the nodes' plain uploads, within the
    # fixed point's bound: D in each round's discriminator phase, G and T in its adaptation phase.
    assert [a.key for a, _ in recorder.aggregates] == [
        f"r{r}/{phase}/{m}"
        for r in (1, 2, 3)
        for phase, models in (("disc1", "D"), ("adapt", "GT"))
        for m in models
    ]
    for action, result in recorder.aggregates:
        assert_weighted_average(
            result, {n: recorder.plain[k] for n, k in action.inputs.items()}, action.weights
        )

    # Round 1's discriminator is averaged from identical inputs in both runs: the plain run's D_1 is
    # average_states of the same uploads.
    first = recorder.aggregates[0][1]
    bound = secagg.DEFAULT_FIXED_POINT.error_bound(3) + 2 * F32_HALF_ULP * max(
        float(t.abs().max()) for t in first.values()
    )
    d1 = recorder.aggregates[0][0]
    reference = average_states({n: recorder.plain[k] for n, k in d1.inputs.items()}, d1.weights)
    for name, value in first.items():
        assert float((value - reference[name]).abs().max()) <= bound, name

    # The metrics of every round, and the final models, are those of the plain run.
    plain_json, secure_json = plain.to_json(), secure.to_json()
    assert [r["round"] for r in secure_json["rounds"]] == [1, 2, 3]
    for p, s in zip(plain_json["rounds"], secure_json["rounds"], strict=True):
        assert set(p["metrics"]) == set(s["metrics"]) and set(p["nodes"]) == set(s["nodes"])
        assert s["metrics"] == pytest.approx(p["metrics"], abs=METRIC_TOLERANCE)
        for node, metrics in p["nodes"].items():
            assert s["nodes"][node] == pytest.approx(metrics, abs=METRIC_TOLERANCE)
    assert set(secure.models) == set(plain.models)
    for model in ("G", "T", "D"):
        for name, value in plain.models[model].items():
            assert torch.allclose(secure.models[model][name], value, atol=1e-5), (model, name)

    # Fresh random masks every run, the same numbers every run: the masks cancel exactly.
    assert simulate(secure_config, node_data=data).to_json() == secure_json


def test_both_topologies_give_the_same_numbers_under_masks(vector_federation: Factory) -> None:
    server, data = config_of(vector_federation, secure_aggregation=True, algorithm="fedavg")
    target, _ = config_of(vector_federation, secure_aggregation=True, algorithm="fedavg", aggregator="target")
    assert simulate(server, node_data=data).to_json() == simulate(target, node_data=data).to_json()


# ---------------------------------------------------------------------------------------------------------
# 2. What the aggregator receives


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_the_aggregator_receives_masked_uploads_only(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch, aggregator: str
) -> None:
    config, data = config_of(vector_federation, aggregator=aggregator, secure_aggregation=True, rounds=2)
    recorder = Recorder(monkeypatch)
    simulate(config, node_data=data)

    # Every averaged submission reached the aggregator masked; only the published model travels plain.
    averaged = {k for k in recorder.plain if not k.endswith("/publish/model/omega")}
    assert set(recorder.received) == averaged and len(averaged) == 2 * (3 + 5)  # D x3; G x3, T x2
    fixed_point = secagg.DEFAULT_FIXED_POINT
    for key, (masked, weight) in recorder.received.items():
        plain = recorder.plain[key]
        assert set(masked) == set(plain)
        for name, tensor in masked.items():
            assert tensor.dtype == torch.int64
            encoded = fixed_point.encode(plain[name], weight)
            # Hardly an element of the upload is its plain encoding (a chance match is 2^-64 each)...
            assert float((tensor == encoded).double().mean()) < 0.01, (key, name)
            # ...and the upload decoded on its own is nowhere near the node's parameters: uniform ring
            # elements decode to magnitudes around 2^62 / 2^24, parameters here are below 10.
            decoded = fixed_point.decode(tensor, weight, torch.float64)
            assert float((decoded - plain[name].double()).abs().median()) > 1e6, (key, name)

    # A context masks one upload of one node, never two.
    assert len(set(recorder.contexts)) == len(recorder.contexts) == len(averaged)


def test_a_dropped_node_leaves_the_survivors_average(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source missing at a phase's deadline: the survivors' uploads unmask to their average."""
    raw, data = vector_federation(secure_aggregation=True, min_sources=2, rounds=2)
    raw["nodes"].append({"name": "gamma", "role": "source", "dataset": "vectors:4"})
    data["gamma"] = data["beta"]  # gamma's data matter little: it drops out
    config = FederationConfig.model_validate(raw)

    recorder = Recorder(monkeypatch)
    result = GammaDropsInRound2Adapt(config, node_data=data).run()
    assert result.events == [
        "round 2 adapt: deadline passed without gamma; weights renormalised over the rest"
    ]
    dropped = [(a, r) for a, r in recorder.aggregates if a.key in ("r2/adapt/G", "r2/adapt/T")]
    assert len(dropped) == 2
    for action, aggregate in dropped:
        assert "gamma" not in action.inputs
        # The survivors masked with the weights of the whole roster, gamma's share included...
        masked = {n: recorder.received[k][1] for n, k in action.inputs.items()}
        total = sum(masked.values())
        assert total < 1 - 1e-3
        # ...renormalised over them they are the protocol's weights (G and T weigh by samples).
        assert {n: w / total for n, w in masked.items()} == pytest.approx(action.weights, abs=1e-12)
        plain = {n: recorder.plain[k] for n, k in action.inputs.items()}
        assert_weighted_average(aggregate, plain, action.weights, total)
    assert [r.round for r in result.rounds if r.metrics] == [1, 2]


class GammaDropsInRound2Adapt(Simulator):
    """gamma's adaptation step in round 2 never finishes; once every other node is done, the deadline closes
    the phase without it."""

    def _carry_out(self, action: Action) -> list[Action]:
        if isinstance(action, RunStep) and (action.step.node, action.step.round, action.step.phase) == (
            "gamma",
            2,
            "adapt",
        ):
            return []
        actions = super()._carry_out(action)
        state = self.protocol.state
        others = {n.name for n in self.config.nodes} - {"gamma"}
        if (
            isinstance(action, RunStep)
            and (state.round, self.protocol.phase) == (2, "adapt")
            and set(state.done) == others
        ):
            actions += self.protocol.handle(Deadline(2, "adapt"))
        return actions


def with_sources(make: Factory, names: list[str], **overrides: object) -> tuple[FederationConfig, dict]:
    """The vector federation with more sources (their data copied from alpha's and beta's)."""
    raw, data = make(**overrides)
    for i, name in enumerate(names):
        raw["nodes"].append({"name": name, "role": "source", "dataset": f"vectors:{4 + i}"})
        data[name] = data["alpha" if i % 2 else "beta"]
    return FederationConfig.model_validate(raw), data


def losing(
    monkeypatch: pytest.MonkeyPatch, lost: Callable[[Aggregate, str], bool]
) -> list[tuple[str, list[str]]]:
    """Make the nodes ``lost`` names vanish between their masked upload and the Unmasking round; returns
    (aggregate, holders that answered) for every unmasking."""
    answered: list[tuple[str, list[str]]] = []

    def answering(self: SecureAggregation, action: Aggregate, survivors: list[str]) -> list[str]:
        holders = [n for n in survivors if not lost(action, n)]
        answered.append((action.key, holders))
        return holders

    monkeypatch.setattr(SecureAggregation, "answering", answering)
    return answered


def test_a_survivor_lost_after_masking_leaves_the_numbers_unchanged(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gamma uploads every masked model of round 2, then never answers: t of the others unmask each sum,
    and the run is the run where everyone answers, bit for bit (the masks cancel exactly either way)."""
    config, data = with_sources(vector_federation, ["gamma"], secure_aggregation=True, rounds=2)
    everyone = simulate(config, node_data=data).to_json()
    plain_config, _ = with_sources(vector_federation, ["gamma"], rounds=2)
    plain = simulate(plain_config, node_data=data).to_json()
    with monkeypatch.context() as patch:
        recorder = Recorder(patch)
        answered = losing(patch, lambda action, node: action.key.startswith("r2/") and node == "gamma")
        lost = simulate(config, node_data=data).to_json()
    assert lost == everyone
    round_2 = [(key, holders) for key, holders in answered if key.startswith("r2/")]
    assert [key for key, _ in round_2] == ["r2/disc1/D", "r2/adapt/G", "r2/adapt/T"]
    assert all("gamma" not in holders for _, holders in round_2)
    for action, result in recorder.aggregates:  # gamma's upload is in every sum, unmasked
        assert "gamma" in action.inputs
        assert_weighted_average(
            result, {n: recorder.plain[k] for n, k in action.inputs.items()}, action.weights
        )
    for p, s in zip(plain["rounds"], lost["rounds"], strict=True):
        assert s["metrics"] == pytest.approx(p["metrics"], abs=METRIC_TOLERANCE)


def test_dropouts_before_masking_and_after_masking_in_one_phase(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 2's adaptation: gamma never finishes its step (it masks nothing), beta uploads and then is
    lost before the Unmasking round. The sum holds beta's upload and not gamma's, and unmasks to the
    weighted average of the uploads in it."""
    config, data = with_sources(
        vector_federation, ["gamma", "delta", "epsilon"], secure_aggregation=True, min_sources=2, rounds=2
    )

    recorder = Recorder(monkeypatch)
    calls = losing(monkeypatch, lambda action, node: action.key.startswith("r2/adapt") and node == "beta")
    result = GammaDropsInRound2Adapt(config, node_data=data).run()
    answered = dict(calls)
    assert result.events == [
        "round 2 adapt: deadline passed without gamma; weights renormalised over the rest"
    ]
    assert answered["r2/adapt/G"] == ["alpha", "delta", "epsilon", "omega"]  # t = 4 of 6
    assert answered["r2/adapt/T"] == ["alpha", "delta", "epsilon"]  # t = 3 of 5
    adapted = [(a, r) for a, r in recorder.aggregates if a.key in ("r2/adapt/G", "r2/adapt/T")]
    assert len(adapted) == 2
    for action, aggregate in adapted:
        assert "gamma" not in action.inputs and "beta" in action.inputs
        masked = {n: recorder.received[k][1] for n, k in action.inputs.items()}
        plain = {n: recorder.plain[k] for n, k in action.inputs.items()}
        assert_weighted_average(aggregate, plain, action.weights, sum(masked.values()))
    assert [r.round for r in result.rounds if r.metrics] == [1, 2]


def test_fewer_than_t_answers_stop_the_unmasking_with_the_reason(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, data = with_sources(vector_federation, ["gamma"], secure_aggregation=True, rounds=1)
    losing(monkeypatch, lambda action, node: node in ("beta", "gamma"))
    with pytest.raises(secagg.SecAggError, match="unmasking needs 3 of the survivors"):
        simulate(config, node_data=data)


def test_a_higher_threshold_needs_more_answers(
    vector_federation: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, data = with_sources(
        vector_federation, ["gamma"], secure_aggregation=True, secure_aggregation_threshold=0.75, rounds=1
    )
    assert config.secure_threshold(4) == 4
    losing(monkeypatch, lambda action, node: node == "gamma")
    with pytest.raises(secagg.SecAggError, match="unmasking needs 4"):
        simulate(config, node_data=data)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secure_aggregation": True, "secure_aggregation_threshold": 0.4}, "greater than or equal to 0.5"),
        ({"secure_aggregation": True, "secure_aggregation_threshold": 1.0}, "less than 1"),
        ({"secure_aggregation_threshold": 0.6}, "secure_aggregation is off"),
    ],
)
def test_thresholds_outside_their_bounds_are_refused_at_creation(
    vector_federation: Factory, overrides: dict, message: str
) -> None:
    raw, _ = vector_federation(**overrides)
    with pytest.raises(ValidationError, match=message):
        FederationConfig.model_validate(raw)


# ---------------------------------------------------------------------------------------------------------
# 3. Settings that cannot work are refused


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm": "source_only"}, "algorithm 'source_only'"),
        ({"hyperparameters": {"local_params": "none"}}, "local_params 'none'"),
        ({"min_sources": 1}, "min_sources of at least 2"),
    ],
)
def test_settings_that_cannot_be_masked_are_refused(
    vector_federation: Factory, overrides: dict[str, Any], message: str
) -> None:
    raw, _ = vector_federation(secure_aggregation=True, **overrides)
    with pytest.raises(ValidationError, match=message):
        FederationConfig.model_validate(raw)
    del raw["nodes"]  # as the API creates a federation, before nodes register
    with pytest.raises(ValidationError, match=message):
        FederationConfig.model_validate(raw)
    raw["secure_aggregation"] = False
    FederationConfig.model_validate(raw)


def test_a_single_source_is_refused(vector_federation: Factory) -> None:
    raw, _ = vector_federation(secure_aggregation=True)
    raw["nodes"] = [n for n in raw["nodes"] if n["name"] != "beta"]
    with pytest.raises(ValidationError, match="at least two source nodes, got 1"):
        FederationConfig.model_validate(raw)
    del raw["nodes"]
    FederationConfig.model_validate(raw)  # the API checks again when the federation starts


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_both_topologies_are_allowed(vector_federation: Factory, aggregator: str) -> None:
    raw, _ = vector_federation(secure_aggregation=True, aggregator=aggregator, min_sources=2)
    assert FederationConfig.model_validate(raw).secure_aggregation
    assert FederationConfig.model_validate({}).secure_aggregation is False


def test_the_refused_local_policy_is_exactly_the_one_that_shares_integer_tensors() -> None:
    """The config's static rule agrees with every architecture's manifests (a new one must keep it true)."""
    inputs = {"digits_cnn": (3, 28, 28), "mlp": (8,)}
    for architecture in BUILTINS:
        for conditional in (False, True):
            input_shape = inputs.get(architecture, (3, 32, 32))  # the torchvision backbones: 32x32 and up
            shape = ArchitectureContext(input_shape, num_classes=3, hidden=8, conditional=conditional)
            for policy in LOCAL_POLICIES:
                integral = [
                    spec.name
                    for manifest in manifests(architecture, shape, policy).values()
                    for spec in manifest.shared()
                    if not is_floating(spec.dtype)
                ]
                assert bool(integral) == (policy == "none"), (architecture, conditional, policy, integral)
