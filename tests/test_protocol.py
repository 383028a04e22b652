"""The round schedule as a state machine, driven with made-up step results (no training)."""

from __future__ import annotations

from typing import Any

import pytest

from fedalign.config import FederationConfig
from fedalign.phases import round_phases
from fedalign.protocol import (
    Action,
    Aggregate,
    AggregateDone,
    Deadline,
    Finish,
    InitialiseModels,
    NodeFailed,
    PhaseClosed,
    Protocol,
    ProtocolError,
    ProtocolState,
    RecordMetrics,
    RunStep,
    Stall,
    StepDone,
    StepFailed,
)

SAMPLES = {"s1": 100, "s2": 300, "t": 200}


def make_config(**overrides: Any) -> FederationConfig:
    hp = overrides.pop("hyperparameters", {})
    return FederationConfig.model_validate(
        {
            "algorithm": "fedalign",
            "rounds": 2,
            "seed": 7,
            "hyperparameters": {"disc_exchanges": 2, **hp},
            "nodes": [
                {"name": "t", "role": "target", "dataset": "digits:mnistm"},
                {"name": "s2", "role": "source", "dataset": "digits:syn"},
                {"name": "s1", "role": "source", "dataset": "digits:mnist"},
            ],
            **overrides,
        }
    )


def metrics_for(step_node: str, kind: str) -> dict[str, float]:
    if kind == "evaluate":
        acc = 0.9 if step_node == "t" else 0.7
        return {"disc_acc_own": acc, "disc_n": 10.0, "target_acc": 0.5, "source_val_acc": 0.8}
    if kind == "adapt":
        return {"task_loss": 1.0, "adv_loss": 0.5, "fresh_disc_acc_own": 0.6}
    return {}


def complete(proto: Protocol, step_action: RunStep) -> list[Action]:
    s = step_action.step
    samples = {"train": SAMPLES[s.node], "val": 10, "test": 10} if s.kind == "setup" else None
    return proto.handle(
        StepDone(s.node, s.round, s.phase, frozenset(s.uploads), metrics_for(s.node, s.kind), samples)
    )


def drive(proto: Protocol) -> list[Action]:
    """Run a whole federation, answering every action at once; returns every action seen."""
    seen: list[Action] = []
    queue = proto.start()
    while queue:
        action = queue.pop(0)
        seen.append(action)
        if isinstance(action, RunStep):
            queue += complete(proto, action)
        elif isinstance(action, Aggregate):
            queue += proto.handle(AggregateDone(action.key))
    return seen


@pytest.mark.parametrize("algorithm", ["fedalign", "fedavg", "source_only"])
@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_every_algorithm_and_topology_runs_to_finish(algorithm: str, aggregator: str) -> None:
    proto = Protocol(make_config(algorithm=algorithm, aggregator=aggregator))
    actions = drive(proto)
    assert isinstance(actions[0], InitialiseModels)
    assert isinstance(actions[-1], Finish)
    assert proto.state.finished
    expected_by = "server" if aggregator == "server" else "t"
    assert {a.by for a in actions if isinstance(a, Aggregate)} == {expected_by}
    phases = [(a.step.round, a.step.phase) for a in actions if isinstance(a, RunStep)]
    expected = [p for r in range(3) for p in round_phases(proto.config, r)]
    assert list(dict.fromkeys(phases)) == [(r, p) for r in range(3) for p in round_phases(proto.config, r)]
    assert len(expected) == len(dict.fromkeys(phases))


def test_fedalign_round_is_discriminator_exchanges_then_adaptation_then_evaluation() -> None:
    config = make_config()
    assert round_phases(config, 0) == ["setup"]
    assert round_phases(config, 1) == ["disc1", "disc2", "adapt", "eval"]


def test_eval_every_skips_evaluation_but_never_in_the_last_round() -> None:
    config = make_config(rounds=5, hyperparameters={"eval_every": 2})
    assert [("eval" in round_phases(config, r)) for r in range(1, 6)] == [False, True, False, True, True]


def test_discriminator_is_averaged_with_balanced_weights_and_extractor_by_samples() -> None:
    actions = drive(Protocol(make_config()))
    d = next(a for a in actions if isinstance(a, Aggregate) and a.model == "D")
    assert d.weights == pytest.approx({"t": 0.5, "s1": 0.5 * 100 / 400, "s2": 0.5 * 300 / 400})
    g = next(a for a in actions if isinstance(a, Aggregate) and a.model == "G")
    assert g.weights == pytest.approx({"s1": 100 / 600, "s2": 300 / 600, "t": 200 / 600})
    t = next(a for a in actions if isinstance(a, Aggregate) and a.model == "T")
    assert set(t.inputs) == {"s1", "s2"}, "the target trains no task model by default"


def test_steps_download_the_newest_aggregates_and_upload_only_their_own_slots() -> None:
    actions = drive(Protocol(make_config(hyperparameters={"source_extractor": "restart"})))
    steps = [a.step for a in actions if isinstance(a, RunStep)]
    disc2 = next(s for s in steps if s.round == 2 and s.phase == "disc2" and s.node == "s1")
    assert disc2.downloads == {"D": "r2/disc1/D", "G": "r1/adapt/G", "T": "r1/adapt/T"}
    assert disc2.uploads == {"D": "r2/disc2/D/s1"}
    adapt = next(s for s in steps if s.round == 1 and s.phase == "adapt" and s.node == "t")
    assert adapt.downloads == {"D": "r1/disc2/D", "G": "r0/init/G", "T": "r0/init/T"}
    assert adapt.uploads == {"G": "r1/adapt/G/t"}


def test_sources_keeping_their_extractor_download_only_the_discriminator() -> None:
    actions = drive(Protocol(make_config()))  # source_extractor "keep" is the method's default
    steps = [a.step for a in actions if isinstance(a, RunStep) and a.step.round == 2]
    assert all(set(s.downloads) == {"D"} for s in steps if s.node != "t")


def test_target_extractor_local_and_none_change_who_uploads_g() -> None:
    local = drive(Protocol(make_config(hyperparameters={"target_extractor": "local"})))
    g = next(a for a in local if isinstance(a, Aggregate) and a.model == "G")
    assert set(g.inputs) == {"s1", "s2"}
    none = drive(Protocol(make_config(hyperparameters={"target_extractor": "none"})))
    adapt_nodes = {a.step.node for a in none if isinstance(a, RunStep) and a.step.phase == "adapt"}
    assert adapt_nodes == {"s1", "s2"}


def test_fedavg_target_trains_and_enters_g_agg_only_with_target_terms() -> None:
    plain = drive(Protocol(make_config(algorithm="fedavg")))
    g = next(a for a in plain if isinstance(a, Aggregate) and a.model == "G")
    assert set(g.inputs) == {"s1", "s2"}, "plain FedAvg: the target only refreshes its statistics"
    terms = drive(Protocol(make_config(algorithm="fedavg", hyperparameters={"entropy_weight": 1.0})))
    g = next(a for a in terms if isinstance(a, Aggregate) and a.model == "G")
    assert set(g.inputs) == {"s1", "s2", "t"}
    assert not any(isinstance(a, Aggregate) and a.model == "D" for a in terms), "no discriminator"


def test_round_metrics_balance_source_and_target_discriminator_accuracy() -> None:
    actions = drive(Protocol(make_config()))
    records = [a for a in actions if isinstance(a, RecordMetrics) and a.node is None]
    round1 = {k: v for a in records if a.round == 1 for k, v in a.metrics.items()}
    assert round1["disc_acc_source"] == pytest.approx(0.7)
    assert round1["disc_acc_target"] == pytest.approx(0.9)
    assert round1["disc_acc"] == pytest.approx(0.8)
    assert round1["target_acc"] == pytest.approx(0.5)
    # round 1's fresh accuracy is measured by round 2's discriminator, at round 2's adaptation
    assert round1["disc_acc_fresh"] == pytest.approx(0.6)
    assert round1["pad"] == pytest.approx(2 * (1 - 2 * 0.4))


def _open_setup(proto: Protocol) -> list[RunStep]:
    return [a for a in proto.start() if isinstance(a, RunStep)]


def test_a_node_submitting_twice_is_refused() -> None:
    proto = Protocol(make_config())
    steps = _open_setup(proto)
    complete(proto, steps[0])
    with pytest.raises(ProtocolError) as info:
        complete(proto, steps[0])
    assert info.value.code == "duplicate"


def test_a_submission_out_of_phase_is_refused() -> None:
    proto = Protocol(make_config())
    _open_setup(proto)
    with pytest.raises(ProtocolError) as info:
        proto.handle(StepDone("s1", 1, "disc1", frozenset({"D"})))
    assert info.value.code == "wrong_phase"


def test_wrong_uploads_and_unknown_nodes_are_refused() -> None:
    proto = Protocol(make_config())
    _open_setup(proto)
    with pytest.raises(ProtocolError) as info:
        proto.handle(StepDone("s1", 0, "setup", frozenset({"G"}), samples={"train": 5}))
    assert info.value.code == "wrong_uploads"
    with pytest.raises(ProtocolError) as info:
        proto.handle(StepDone("intruder", 0, "setup", samples={"train": 5}))
    assert info.value.code == "unknown_node"


def test_events_before_start_or_after_finish_are_refused() -> None:
    proto = Protocol(make_config())
    with pytest.raises(ProtocolError):
        proto.handle(AggregateDone("r1/disc1/D"))
    drive(proto)
    with pytest.raises(ProtocolError) as info:
        proto.handle(AggregateDone("r1/disc1/D"))
    assert info.value.code == "finished"


def _to_round1_disc(proto: Protocol) -> list[RunStep]:
    for step in _open_setup(proto):
        actions = complete(proto, step)
    return [a for a in actions if isinstance(a, RunStep)]


def test_deadline_closes_a_phase_without_a_missing_source_and_renormalises() -> None:
    proto = Protocol(make_config(min_sources=1))
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    complete(proto, steps["s1"])
    complete(proto, steps["t"])
    actions = proto.handle(Deadline(1, "disc1"))
    closed = [a for a in actions if isinstance(a, PhaseClosed)]
    assert closed and closed[0].missing == ["s2"]
    (agg,) = [a for a in actions if isinstance(a, Aggregate)]
    assert agg.weights == pytest.approx({"s1": 0.5, "t": 0.5})
    with pytest.raises(ProtocolError):  # the late submission finds the phase closed
        complete(proto, steps["s2"])


def test_missing_target_stalls_instead_of_finishing_on_a_wrong_basis() -> None:
    proto = Protocol(make_config(min_sources=1))
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    complete(proto, steps["s1"])
    complete(proto, steps["s2"])
    actions = proto.handle(Deadline(1, "disc1"))
    assert len(actions) == 1 and isinstance(actions[0], Stall)
    assert "target" in actions[0].reason
    assert proto.state.stalled
    assert complete(proto, steps["t"]), "the target arriving late un-stalls the phase"
    assert proto.state.stalled is None


def test_too_few_sources_at_the_deadline_stall() -> None:
    proto = Protocol(make_config())  # min_sources defaults to all
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    complete(proto, steps["t"])
    complete(proto, steps["s1"])
    (stall,) = proto.handle(Deadline(1, "disc1"))
    assert isinstance(stall, Stall) and "s2" in stall.reason


def test_a_source_that_never_joins_is_left_out_of_the_whole_run_at_setups_deadline() -> None:
    proto = Protocol(make_config(min_sources=1))
    setup = {a.step.node: a for a in _open_setup(proto)}
    complete(proto, setup["s1"])
    complete(proto, setup["t"])
    actions = proto.handle(Deadline(0, "setup"))
    (closed,) = [a for a in actions if isinstance(a, PhaseClosed)]
    assert closed.missing == ["s2"] and "no part in this run" in closed.reason
    assert proto.state.excluded == ["s2"]
    restored = Protocol(make_config(min_sources=1), ProtocolState.from_json(proto.state.to_json()))
    assert restored.state.excluded == ["s2"], "the exclusion survives a restart"
    # Every later step goes to the others, and the run finishes without another deadline.
    queue, seen = [a for a in actions if not isinstance(a, PhaseClosed)], []
    while queue:
        action = queue.pop(0)
        seen.append(action)
        if isinstance(action, RunStep):
            queue += complete(proto, action)
        elif isinstance(action, Aggregate):
            queue += proto.handle(AggregateDone(action.key))
    assert proto.state.finished
    assert not any(isinstance(a, RunStep) and a.step.node == "s2" for a in seen)
    assert all(set(a.weights) <= {"s1", "t"} for a in seen if isinstance(a, Aggregate))


def test_setup_still_waits_for_the_target_and_for_min_sources() -> None:
    proto = Protocol(make_config(min_sources=2))
    setup = {a.step.node: a for a in _open_setup(proto)}
    complete(proto, setup["s1"])
    complete(proto, setup["t"])
    (stall,) = proto.handle(Deadline(0, "setup"))
    assert isinstance(stall, Stall) and "s2" in stall.reason and not proto.state.excluded


def test_state_survives_a_json_round_trip_mid_run() -> None:
    """A restarted orchestrator rebuilds the machine from its stored state and carries on identically."""
    config = make_config()
    a, b = Protocol(config), Protocol(config)
    steps_a = _to_round1_disc(a)
    _to_round1_disc(b)
    complete(a, steps_a[0])
    complete(b, steps_a[0])
    import json

    restored = Protocol(config, ProtocolState.from_json(json.loads(json.dumps(b.state.to_json()))))
    assert [complete(a, s) for s in steps_a[1:]] == [complete(restored, s) for s in steps_a[1:]]
    assert restored.open_steps() == a.open_steps()


def test_open_steps_lists_what_a_sweep_must_resend() -> None:
    proto = Protocol(make_config())
    steps = _to_round1_disc(proto)
    complete(proto, steps[0])
    assert [s.node for s in proto.open_steps()] == [s.step.node for s in steps[1:]]


def test_step_seeds_depend_on_node_round_and_phase_not_on_order() -> None:
    actions = drive(Protocol(make_config()))
    seeds = [a.step.seed for a in actions if isinstance(a, RunStep)]
    assert len(set(seeds)) == len(seeds)
    again = drive(Protocol(make_config()))
    assert seeds == [a.step.seed for a in again if isinstance(a, RunStep)]


def test_the_run_ends_with_the_target_publishing_its_model_when_configured() -> None:
    actions = drive(Protocol(make_config()))
    last_step = [a.step for a in actions if isinstance(a, RunStep)][-1]
    assert (last_step.node, last_step.kind, last_step.uploads) == (
        "t",
        "publish",
        {"model": "r2/publish/model/t"},
    )
    finish = actions[-1]
    assert isinstance(finish, Finish) and finish.models["target_model"] == "r2/publish/model/t"
    private = drive(Protocol(make_config(publish_model=False)))
    assert not any(isinstance(a, RunStep) and a.step.kind == "publish" for a in private)
    assert "target_model" not in private[-1].models


# ------------------------------------------------------------------------------------------- failed steps


def fail(
    proto: Protocol, step_action: RunStep, reason: str = "RuntimeError: CUDA out of memory", **kw: Any
) -> list[Action]:
    s = step_action.step
    return proto.handle(StepFailed(s.node, s.round, s.phase, reason, **kw))


def test_a_retryable_failure_offers_the_step_again_up_to_max_step_retries() -> None:
    proto = Protocol(make_config(min_sources=1, max_step_retries=2))
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    for attempt in (1, 2):
        failed, again = fail(proto, steps["s2"], retryable=True)
        assert isinstance(failed, NodeFailed) and failed.retry and failed.failures == attempt
        assert isinstance(again, RunStep) and again.step == steps["s2"].step, "the same step, offered again"
    complete(proto, steps["s1"])
    complete(proto, steps["t"])
    actions = fail(proto, steps["s2"], retryable=True)
    assert isinstance(actions[0], NodeFailed) and not actions[0].retry and actions[0].failures == 3
    (closed,) = [a for a in actions if isinstance(a, PhaseClosed)]
    assert closed.missing == ["s2"] and "CUDA out of memory" in closed.reason
    (agg,) = [a for a in actions if isinstance(a, Aggregate)]
    assert agg.weights == pytest.approx({"s1": 0.5, "t": 0.5}), "renormalised over the rest"


def test_a_retry_that_succeeds_changes_nothing_else() -> None:
    proto = Protocol(make_config())
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    fail(proto, steps["s1"], retryable=True)
    for node in ("s1", "s2", "t"):
        actions = complete(proto, steps[node])
    (agg,) = [a for a in actions if isinstance(a, Aggregate)]
    assert set(agg.inputs) == {"s1", "s2", "t"}
    proto.handle(AggregateDone(agg.key))
    assert proto.state.failures == {} and proto.state.failed == {}, "counted per phase"


def test_a_failure_that_is_not_retryable_takes_the_source_out_of_the_phase_at_once() -> None:
    proto = Protocol(make_config(min_sources=1))
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    complete(proto, steps["s1"])
    (failed,) = fail(proto, steps["s2"], "StepError: the data set has 5 classes", retryable=False)
    assert isinstance(failed, NodeFailed) and not failed.retry
    assert proto.state.failed == {"s2": "StepError: the data set has 5 classes"}
    assert "s2" not in {s.node for s in proto.open_steps()}, "a sweep does not send it again"
    actions = complete(proto, steps["t"])  # the last one in closes the phase without s2
    (closed,) = [a for a in actions if isinstance(a, PhaseClosed)]
    assert closed.missing == ["s2"] and "5 classes" in closed.reason
    with pytest.raises(ProtocolError):
        complete(proto, steps["s2"])
    # The next phase offers s2 a step again.
    for action in [a for a in actions if isinstance(a, Aggregate)]:
        following = proto.handle(AggregateDone(action.key))
    assert "s2" in {a.step.node for a in following if isinstance(a, RunStep)}


def test_a_failed_target_stalls_the_run_with_its_reason() -> None:
    proto = Protocol(make_config(min_sources=1))
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    complete(proto, steps["s1"])
    complete(proto, steps["s2"])
    failed, stall = fail(proto, steps["t"], "ManifestMismatch: tensor G.0.weight has shape [12, 8]")
    assert isinstance(failed, NodeFailed) and isinstance(stall, Stall)
    assert "target node 't' failed" in stall.reason and "G.0.weight" in stall.reason
    assert proto.state.stalled == stall.reason
    assert proto.handle(Deadline(1, "disc1")) == [Stall(1, "disc1", stall.reason)], "never closes without it"


def test_a_failure_that_leaves_too_few_sources_stalls_at_once() -> None:
    proto = Protocol(make_config())  # min_sources defaults to all
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    _, stall = fail(proto, steps["s1"], "KeyError: 'row 17'")
    assert isinstance(stall, Stall) and "1 of 2 required sources" in stall.reason and "row 17" in stall.reason
    assert complete(proto, steps["s2"]) == [] and complete(proto, steps["t"]) == [], "stalled, said once"


def test_a_source_that_fails_its_setup_takes_no_part_in_the_run() -> None:
    proto = Protocol(make_config(min_sources=1))
    setup = {a.step.node: a for a in _open_setup(proto)}
    complete(proto, setup["s1"])
    fail(proto, setup["s2"], "ManifestMismatch: tensor G.0.weight has shape [12, 8] in the federation")
    actions = complete(proto, setup["t"])
    (closed,) = [a for a in actions if isinstance(a, PhaseClosed)]
    assert closed.missing == ["s2"] and "no part in this run" in closed.reason
    assert proto.state.excluded == ["s2"]
    assert all(a.step.node != "s2" for a in actions if isinstance(a, RunStep))


def test_failures_of_nodes_outside_the_phase_or_after_finishing_are_refused() -> None:
    proto = Protocol(make_config())
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    complete(proto, steps["s1"])
    with pytest.raises(ProtocolError) as info:
        fail(proto, steps["s1"])
    assert info.value.code == "duplicate"
    with pytest.raises(ProtocolError) as info:
        proto.handle(StepFailed("s2", 1, "adapt", "late"))
    assert info.value.code == "wrong_phase"
    with pytest.raises(ProtocolError) as info:
        proto.handle(StepFailed("intruder", 1, "disc1", "?"))
    assert info.value.code == "unknown_node"


def test_a_target_that_fails_to_aggregate_is_offered_it_again_then_stalls() -> None:
    proto = Protocol(make_config(aggregator="target", max_step_retries=1))
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    for node in ("s1", "s2"):
        complete(proto, steps[node])
    (agg,) = [a for a in complete(proto, steps["t"]) if isinstance(a, Aggregate)]
    failed, again = proto.handle(StepFailed("t", 1, "disc1", "OSError: disk full", True, aggregate=agg.key))
    assert isinstance(failed, NodeFailed) and failed.retry and again == agg
    with pytest.raises(ProtocolError) as info:
        proto.handle(StepFailed("s1", 1, "disc1", "?", aggregate=agg.key))
    assert info.value.code == "not_the_aggregator"
    failed, stall = proto.handle(StepFailed("t", 1, "disc1", "OSError: disk full", True, aggregate=agg.key))
    assert not failed.retry and isinstance(stall, Stall) and agg.key in stall.reason


def test_failure_counts_survive_a_json_round_trip() -> None:
    config = make_config(min_sources=1)
    proto = Protocol(config)
    steps = {a.step.node: a for a in _to_round1_disc(proto)}
    fail(proto, steps["s1"], retryable=True)
    fail(proto, steps["s2"])
    restored = Protocol(config, ProtocolState.from_json(proto.state.to_json()))
    assert restored.state.failures == {"s1": 1, "s2": 1} and restored.state.failed == proto.state.failed
