"""The round schedule's unmasking stage (secure aggregation, served): reveal steps between a masked phase's
close and its aggregates, one dropout list for every survivor, and a stall when a survivor never reveals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedalign.config import FederationConfig
from fedalign.protocol import (
    Action,
    Aggregate,
    AggregateDone,
    Deadline,
    PhaseClosed,
    Protocol,
    ProtocolError,
    ProtocolState,
    RevealDone,
    RunStep,
    Stall,
    StepDone,
)

SAMPLES = {"s1": 100, "s2": 300, "s3": 200, "t": 200}


def secure_config(**overrides: Any) -> FederationConfig:
    return FederationConfig.model_validate(
        {
            "algorithm": "fedalign",
            "rounds": 1,
            "seed": 7,
            "secure_aggregation": True,
            "nodes": [
                {"name": "t", "role": "target", "dataset": "digits:mnistm"},
                {"name": "s1", "role": "source", "dataset": "digits:mnist"},
                {"name": "s2", "role": "source", "dataset": "digits:syn"},
                {"name": "s3", "role": "source", "dataset": "digits:usps"},
            ],
            **overrides,
        }
    )


def steps_of(actions: list[Action]) -> list[RunStep]:
    return [a for a in actions if isinstance(a, RunStep)]


def done(proto: Protocol, run: RunStep) -> list[Action]:
    s = run.step
    samples = {"train": SAMPLES[s.node], "val": 10} if s.kind == "setup" else None
    return proto.handle(StepDone(s.node, s.round, s.phase, frozenset(s.uploads), {}, samples))


def through_setup(proto: Protocol) -> list[RunStep]:
    """Start and finish setup; returns round 1's first steps (disc1)."""
    opened: list[RunStep] = []
    for run in steps_of(proto.start()):
        opened += steps_of(done(proto, run))
    return opened


def test_a_masked_phase_unmasks_through_reveal_steps_before_it_aggregates() -> None:
    proto = Protocol(secure_config(), reveal_steps=True)
    disc1 = through_setup(proto)
    assert sorted(r.step.node for r in disc1) == ["s1", "s2", "s3", "t"]
    actions: list[Action] = []
    for run in disc1:
        actions += done(proto, run)
    # Closed into the unmasking stage: a reveal step per survivor, no aggregate yet.
    reveals = steps_of(actions)
    assert not [a for a in actions if isinstance(a, Aggregate)]
    assert [(r.step.node, r.step.kind, r.step.dropped) for r in reveals] == [
        (n, "reveal", {"D": []}) for n in ("s1", "s2", "s3", "t")
    ]
    assert all(r.step.uploads == {} and r.step.downloads == {} for r in reveals)
    # What a sweep re-sends, and what the server keeps open, are the reveal steps still unanswered.
    assert [s.node for s in proto.open_steps()] == ["s1", "s2", "s3", "t"]
    with pytest.raises(ProtocolError, match="closed") as late:
        proto.handle(StepDone("s1", 1, "disc1", frozenset({"D"})))
    assert late.value.code == "phase_closed"

    for node in ("s1", "s2", "s3"):
        assert proto.handle(RevealDone(node, 1, "disc1")) == []
    assert [s.node for s in proto.open_steps()] == ["t"]
    aggregates = proto.handle(RevealDone("t", 1, "disc1"))
    assert [(a.key, sorted(a.inputs)) for a in aggregates if isinstance(a, Aggregate)] == [
        ("r1/disc1/D", ["s1", "s2", "s3", "t"])
    ]
    assert proto.state.unmasking is None and proto.state.pending == ["r1/disc1/D"]
    adapt = steps_of(proto.handle(AggregateDone("r1/disc1/D")))
    assert {r.step.phase for r in adapt} == {"adapt"}


def test_every_survivor_gets_the_same_dropout_list_per_model() -> None:
    proto = Protocol(secure_config(min_sources=2, phase_deadline_s=10), reveal_steps=True)
    for run in through_setup(proto):
        done(proto, run)  # disc1: everyone
    for node in ("s1", "s2", "s3", "t"):
        proto.handle(RevealDone(node, 1, "disc1"))
    adapt = steps_of(proto.handle(AggregateDone("r1/disc1/D")))
    actions: list[Action] = []
    for run in adapt:
        if run.step.node != "s3":  # s3 falls silent after the discriminator exchange
            actions += done(proto, run)
    assert actions == []
    closed = proto.handle(Deadline(1, "adapt"))
    assert [a.missing for a in closed if isinstance(a, PhaseClosed)] == [["s3"]]
    reveals = {r.step.node: r.step.dropped for r in steps_of(closed)}
    # G is averaged over every node, T over the sources: s3 is dropped from both, and nobody else is.
    assert reveals == {"s1": {"G": ["s3"], "T": ["s3"]}, "s2": {"G": ["s3"], "T": ["s3"]}, "t": {"G": ["s3"]}}
    with pytest.raises(ProtocolError) as dropped:
        proto.handle(RevealDone("s3", 1, "adapt"))
    assert dropped.value.code == "not_a_survivor"
    proto.handle(RevealDone("s1", 1, "adapt"))
    with pytest.raises(ProtocolError) as twice:
        proto.handle(RevealDone("s1", 1, "adapt"))
    assert twice.value.code == "duplicate"
    proto.handle(RevealDone("s2", 1, "adapt"))
    aggregates = [a for a in proto.handle(RevealDone("t", 1, "adapt")) if isinstance(a, Aggregate)]
    assert {a.model: sorted(a.inputs) for a in aggregates} == {"G": ["s1", "s2", "t"], "T": ["s1", "s2"]}


def test_a_silent_survivor_is_unmasked_from_t_others_shares_at_the_deadline() -> None:
    """D's roster is 4 nodes, so t = 3: s1, t and s3 answer, s2 never does; its upload stays in the sum."""
    proto = Protocol(secure_config(phase_deadline_s=10), reveal_steps=True)
    for run in through_setup(proto):
        done(proto, run)
    for node in ("s1", "t", "s3"):
        proto.handle(RevealDone(node, 1, "disc1"))
    actions = proto.handle(Deadline(1, "disc1"))
    (closed,) = [a for a in actions if isinstance(a, PhaseClosed)]
    assert closed.missing == ["s2"] and "unmasked from the other survivors' shares" in closed.reason
    (aggregate,) = [a for a in actions if isinstance(a, Aggregate)]
    assert sorted(aggregate.inputs) == ["s1", "s2", "s3", "t"]
    assert proto.state.unmasking is None and proto.open_steps() == []
    with pytest.raises(ProtocolError) as late:
        proto.handle(RevealDone("s2", 1, "disc1"))
    assert late.value.code == "not_unmasking"


def test_too_few_answers_stall_the_run_until_enough_arrive() -> None:
    proto = Protocol(secure_config(phase_deadline_s=10), reveal_steps=True)
    for run in through_setup(proto):
        done(proto, run)
    for node in ("s1", "t"):
        proto.handle(RevealDone(node, 1, "disc1"))
    (stall,) = proto.handle(Deadline(1, "disc1"))
    assert isinstance(stall, Stall) and "s2, s3 uploaded masked parameters" in stall.reason
    assert "did not reveal" in stall.reason and "D: 2 of the 3 needed" in stall.reason
    assert proto.state.stalled == stall.reason
    # The machine, restored from its saved state, still waits for s2 and s3; one late reveal makes t and
    # resumes the run, with s3's upload in the sum.
    saved = json.loads(json.dumps(proto.state.to_json()))
    restored = Protocol(proto.config, ProtocolState.from_json(saved), reveal_steps=True)
    assert [s.node for s in restored.open_steps()] == ["s2", "s3"]
    actions = restored.handle(RevealDone("s2", 1, "disc1"))
    assert [a.missing for a in actions if isinstance(a, PhaseClosed)] == [["s3"]]
    (aggregate,) = [a for a in actions if isinstance(a, Aggregate)]
    assert (aggregate.key, sorted(aggregate.inputs)) == ("r1/disc1/D", ["s1", "s2", "s3", "t"])
    assert restored.state.stalled is None


def test_phases_without_masked_uploads_and_the_simulator_skip_the_reveals() -> None:
    proto = Protocol(secure_config(), reveal_steps=True)
    kinds: list[str] = []
    queue: list[Action] = list(proto.start())
    while queue:
        action = queue.pop(0)
        if isinstance(action, RunStep):
            kinds.append(f"{action.step.phase}:{action.step.kind}")
            if action.step.kind == "reveal":
                queue += proto.handle(RevealDone(action.step.node, action.step.round, action.step.phase))
            else:
                queue += done(proto, action)
        elif isinstance(action, Aggregate):
            queue += proto.handle(AggregateDone(action.key))
    assert proto.state.finished
    # Setup, evaluation and the published model carry nothing that is averaged: no reveal after them.
    assert {k for k in kinds if k.endswith(":reveal")} == {"disc1:reveal", "adapt:reveal"}
    # Off (the simulator, which collects reveals in-process) or without secure aggregation: no reveal step.
    simulator = Protocol(secure_config())
    for plain in (simulator, Protocol(secure_config(secure_aggregation=False), reveal_steps=True)):
        assert not plain.reveal_steps
        disc1 = through_setup(plain)
        actions = [a for run in disc1 for a in done(plain, run)]
        assert [a.key for a in actions if isinstance(a, Aggregate)] == ["r1/disc1/D"]
