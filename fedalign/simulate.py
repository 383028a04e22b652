"""A whole federation in one process: the protocol machine, every node's runtime, and the aggregation.

The simulator is the reference for what a served federation computes: it drives the same
`fedalign.protocol.Protocol` and runs the same `NodeRuntime` steps and the same `fedalign.aggregate`
code, so a served run of the same config and seed gives the same numbers.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedalign import data as datasets
from fedalign.aggregate import average_states
from fedalign.config import FederationConfig
from fedalign.node import NodeRuntime, State, initial_models
from fedalign.protocol import (
    Action,
    Aggregate,
    AggregateDone,
    Finish,
    InitialiseModels,
    PhaseClosed,
    Protocol,
    RecordMetrics,
    RunStep,
    Stall,
    StepDone,
)
from fedalign.steps import CPU, Device


@dataclass
class RoundRecord:
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "metrics": self.metrics, "nodes": self.nodes}


@dataclass
class SimulationResult:
    config: FederationConfig
    rounds: list[RoundRecord]
    models: dict[str, State]
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"rounds": [r.to_json() for r in self.rounds if r.round > 0], "events": self.events}

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @property
    def final_metrics(self) -> dict[str, float]:
        for record in reversed(self.rounds):
            if "target_acc" in record.metrics or "source_val_acc" in record.metrics:
                return record.metrics
        return {}


RoundCallback = Callable[[RoundRecord], None]


class Simulator:
    def __init__(
        self,
        config: FederationConfig,
        device: Device = CPU,
        node_data: dict[str, datasets.NodeData] | None = None,
    ) -> None:
        self.config = config
        self.protocol = Protocol(config)
        node_data = node_data or {}
        self.nodes = {
            n.name: NodeRuntime(n.name, config, node_data.get(n.name) or datasets.load(n.dataset), device)
            for n in config.nodes
        }
        self.store: dict[str, State] = {}
        self.records: dict[int, RoundRecord] = {}
        self.events: list[str] = []
        self.final: dict[str, str] = {}

    def record(self, round_: int) -> RoundRecord:
        return self.records.setdefault(round_, RoundRecord(round_))

    def run(self, on_round: RoundCallback | None = None) -> SimulationResult:
        queue: deque[Action] = deque(self.protocol.start())
        last_reported = 0
        while queue:
            action = queue.popleft()
            queue.extend(self._carry_out(action))
            done_round = (
                self.protocol.state.round - 1 if not self.protocol.state.finished else self.config.rounds
            )
            while on_round and last_reported < done_round:
                last_reported += 1
                on_round(self.record(last_reported))
        rounds = [self.records[r] for r in sorted(self.records)]
        models = {m: self.store[k] for m, k in self.final.items() if k in self.store}
        return SimulationResult(self.config, rounds, models, self.events)

    def _carry_out(self, action: Action) -> list[Action]:
        if isinstance(action, InitialiseModels):
            for model, state in initial_models(self.config).items():
                self.store[action.keys[model]] = state
            return []
        if isinstance(action, RunStep):
            step = action.step
            runtime = self.nodes[step.node]
            result = runtime.run(step, {slot: self.store[key] for slot, key in step.downloads.items()})
            for slot, key in step.uploads.items():
                self.store[key] = result.uploads[slot]
            return self.protocol.handle(
                StepDone(
                    node=step.node,
                    round=step.round,
                    phase=step.phase,
                    uploads=frozenset(result.uploads),
                    metrics=result.metrics,
                    samples=result.samples,
                )
            )
        if isinstance(action, Aggregate):
            self.store[action.key] = average_states(
                {node: self.store[key] for node, key in action.inputs.items()}, action.weights
            )
            for key in action.inputs.values():
                del self.store[key]  # a submission is needed once
            actions = self.protocol.handle(AggregateDone(action.key))
            self._prune()
            return actions
        if isinstance(action, RecordMetrics):
            record = self.record(action.round)
            if action.node is None:
                record.metrics.update(action.metrics)
            else:
                record.nodes.setdefault(action.node, {}).update(action.metrics)
            return []
        if isinstance(action, PhaseClosed):
            self.events.append(f"round {action.round} {action.phase}: {action.reason}")
            return []
        if isinstance(action, Stall):
            raise RuntimeError(f"simulation stalled in round {action.round} {action.phase}: {action.reason}")
        if isinstance(action, Finish):
            self.final = dict(action.models)
            return []
        raise TypeError(f"unknown action {action!r}")

    def _prune(self) -> None:
        """Drop aggregates nothing can download any more."""
        live = set(self.protocol.state.latest.values())
        for key in [k for k in self.store if k.count("/") == 2 and k not in live]:
            del self.store[key]


def simulate(
    config: FederationConfig,
    device: Device = CPU,
    on_round: RoundCallback | None = None,
    node_data: dict[str, datasets.NodeData] | None = None,
) -> SimulationResult:
    with torch.random.fork_rng(devices=[]):
        return Simulator(config, device, node_data).run(on_round)
