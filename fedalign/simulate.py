"""A whole federation in one process: the protocol machine, every node's runtime, and the aggregation.

The simulator is the reference for what a served federation computes: it drives the same
`fedalign.protocol.Protocol` and runs the same `NodeRuntime` steps and the same `fedalign.aggregate`
code, so a served run of the same config and seed gives the same numbers.

With ``secure_aggregation`` on, every average of nodes' submissions goes through `fedalign.secagg`
(`SecureAggregation`): a node masks its uploads as its step ends, the store holds only masked uploads,
and the aggregator folds them, collects the seed shares of t survivors (`fedalign.secagg_shares`), and
decodes the weighted average.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedalign import data as datasets
from fedalign import secagg, secagg_shares
from fedalign.aggregate import average_states, step_past
from fedalign.config import FederationConfig
from fedalign.device import CPU, Device
from fedalign.failures import failure_reason, is_retryable
from fedalign.initial_parameters import InitialParameters, build_initial
from fedalign.manifest import Manifest
from fedalign.metrics import selected_checkpoint
from fedalign.node import NodeRuntime, State, load_node_data
from fedalign.protocol import (
    Action,
    Aggregate,
    AggregateDone,
    Checkpoint,
    Finish,
    InitialiseModels,
    NodeFailed,
    PhaseClosed,
    PrivacyWarning,
    Protocol,
    RecordMetrics,
    RunStep,
    Stall,
    StepDone,
    StepFailed,
    StepSpec,
    aggregate_key,
    submission_key,
)


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
    # The target's model after each publishing round (checkpoint_every, and the last), by round.
    checkpoints: dict[int, State] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rounds": [r.to_json() for r in self.rounds if r.round > 0], "events": self.events}

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @property
    def selected_checkpoint(self) -> int | None:
        """The checkpoint a label-free rule picks (`fedalign.metrics.selected_checkpoint`)."""
        by_round = {r.round: r.metrics.get("source_val_acc") for r in self.rounds}
        return selected_checkpoint({r: by_round.get(r) for r in self.checkpoints})

    @property
    def final_metrics(self) -> dict[str, float]:
        for record in reversed(self.rounds):
            if "target_acc" in record.metrics or "source_val_acc" in record.metrics:
                return record.metrics
        return {}


RoundCallback = Callable[[RoundRecord], None]


class SecureAggregation:
    """Both sides of `fedalign.secagg` for a simulated federation, with threshold recovery.

    Node side: every node's X25519 key pair for this federation (only the public keys are "relayed"),
    and, per submission, its masked upload and its encrypted seed shares for every node of the roster
    (`fedalign.secagg_shares`). Aggregator side: one `MaskedSum` per aggregate, unmasked with the seeds
    that t of the survivors' answers reconstruct (t from ``secure_aggregation_threshold``), so a survivor
    that masked and then never answers (:meth:`answering`) does not stop the run. The weights a node
    pre-multiplies by are fixed when the phase opens (`Protocol.roster_weights`); the aggregate is the
    survivors' average under them.
    """

    def __init__(
        self,
        config: FederationConfig,
        protocol: Protocol,
        manifests: Mapping[str, Manifest],
        federation: str | None = None,
    ) -> None:
        self.config = config
        self.protocol = protocol
        # Served federations use their id; the simulator's keys are fresh per run, so no context repeats.
        self.federation = federation or config.name
        self.manifests = manifests
        for manifest in self.manifests.values():
            secagg.masked_manifest(manifest)  # refuses a shared integer tensor before any training
        self._keys = {n.name: secagg.KeyPair.generate() for n in config.nodes}
        self.public_keys = {node: keys.public_bytes for node, keys in self._keys.items()}
        # submission key -> holder -> that submission's encrypted seed shares for the holder
        self._shares: dict[str, dict[str, bytes]] = {}

    def mask(self, step: StepSpec, uploads: dict[str, State]) -> dict[str, State]:
        """A node's side at the end of its step: each upload that is averaged weighted, encoded, masked,
        and its seeds shared with the roster (the shares travel with the upload).

        Uploads that are not averaged (the target's published model, uploaded by its own setting) travel
        as they are.
        """
        rosters = self.protocol.roster_weights(step.round, step.phase)
        masked: dict[str, State] = {}
        for model, state in uploads.items():
            roster = rosters.get(model)
            if roster is None:
                masked[model] = state
                continue
            masker = secagg.Masker(
                step.node,
                self._keys[step.node],
                {node: self.public_keys[node] for node in roster},
                roster[step.node],
                self.context(step.round, step.phase, model),
            )
            masked[model] = masker.mask_state(state, self.manifests[model])
            self._shares[step.uploads[model]] = secagg_shares.share_seeds(
                masker, self.config.secure_threshold(len(roster))
            )
        return masked

    def context(self, round_: int, phase: str, model: str) -> secagg.MaskContext:
        return secagg.MaskContext.of_phase(
            self.federation, round_, self.protocol.phase_of(round_, phase), model
        )

    def answering(self, action: Aggregate, survivors: list[str]) -> list[str]:
        """The survivors that answer the Unmasking round of ``action``: all of them in a simulation.

        A test overrides it to lose a node after it masked, as a served node that crashes between its
        upload and its reveal.
        """
        return survivors

    def aggregate(self, action: Aggregate, store: dict[str, State]) -> State:
        """The aggregator folds the masked submissions, collects t survivors' shares, unmasks, decodes."""
        round_, phase = self.protocol.state.round, self.protocol.phase
        if action.key != aggregate_key(round_, phase, action.model):
            raise RuntimeError(f"aggregate {action.key!r} is not of the open phase {round_} {phase!r}")
        roster = self.protocol.roster_weights(round_, phase)[action.model]
        total = secagg.MaskedSum(self.manifests[action.model], roster)
        for node in sorted(action.inputs):
            total.add_state(node, store[action.inputs[node]])
        dropped = total.missing
        if not dropped:
            # The protocol's weights are the ones every node masked with (with dropouts, the protocol
            # renormalises over those present, and so does the unmasking).
            effective = total.effective_weights()
            if any(abs(effective[n] - w) > 1e-12 for n, w in action.weights.items()):
                raise RuntimeError(f"aggregate {action.key!r}: weights {action.weights} were not masked with")
        # When a node aggregates, it knows its own upload: count it, so at least two others stay hidden.
        min_survivors = secagg.MIN_SURVIVORS + (action.by in roster)
        context = self.context(round_, phase, action.model)
        public_keys = {node: self.public_keys[node] for node in roster}
        shares = {node: self._shares.pop(action.inputs[node]) for node in total.folded}
        for node in dropped:  # a dropped node's shares, had they arrived, stay sealed
            self._shares.pop(submission_key(round_, phase, action.model, node), None)
        answers = {
            holder: secagg_shares.reveal_shares(
                holder,
                self._keys[holder],
                public_keys,
                context,
                {sender: held[holder] for sender, held in shares.items()},
                dropped,
                min_survivors=min_survivors,
            )
            for holder in self.answering(action, total.folded)
        }
        seeds = secagg_shares.recover(roster, dropped, answers, self.config.secure_threshold(len(roster)))
        return total.unmask(seeds)


class Simulator:
    def __init__(
        self,
        config: FederationConfig,
        device: Device = CPU,
        node_data: dict[str, datasets.NodeData] | None = None,
        initial: InitialParameters | None = None,
    ) -> None:
        self.config = config
        self.protocol = Protocol(config)
        # Round 0, built as `fedalign init-model` builds it (or read from the file it wrote).
        self.initial = initial if initial is not None else build_initial(config)
        node_data = node_data or {}
        self.nodes = {
            n.name: NodeRuntime(
                n.name, config, node_data.get(n.name) or load_node_data(config, n.name), device
            )
            for n in config.nodes
        }
        self.secure = (
            SecureAggregation(config, self.protocol, self.initial.manifest.models)
            if config.secure_aggregation
            else None
        )
        self.store: dict[str, State] = {}
        self.records: dict[int, RoundRecord] = {}
        self.events: list[str] = []
        self.final: dict[str, str] = {}
        self.checkpoints: dict[int, State] = {}

    def record(self, round_: int) -> RoundRecord:
        return self.records.setdefault(round_, RoundRecord(round_))

    def run(self, on_round: RoundCallback | None = None) -> SimulationResult:
        return self._run(self.protocol.start(), on_round, last_reported=0)

    def continue_for(self, rounds: int, on_round: RoundCallback | None = None) -> SimulationResult:
        """Go on for `rounds` more rounds after a finished run, from its last state (as a served federation
        continued with POST .../continue)."""
        finished_round = self.protocol.state.round
        self.config = self.config.model_copy(update={"rounds": self.config.rounds + rounds})
        self.protocol = Protocol(self.config, self.protocol.state)
        for runtime in self.nodes.values():
            runtime.extend_to(self.config.rounds)
        return self._run(self.protocol.extend(), on_round, last_reported=finished_round)

    def _run(
        self, start: list[Action], on_round: RoundCallback | None, last_reported: int
    ) -> SimulationResult:
        queue: deque[Action] = deque(start)
        while queue:
            action = queue.popleft()
            queue.extend(self._carry_out(action))
            # A finished run's last round is its open one (earlier than config.rounds when its privacy
            # budget stopped it).
            done_round = self.protocol.state.round - (0 if self.protocol.state.finished else 1)
            while on_round and last_reported < done_round:
                last_reported += 1
                on_round(self.record(last_reported))
        rounds = [self.records[r] for r in sorted(self.records)]
        models = {m: self.store[k] for m, k in self.final.items() if k in self.store}
        return SimulationResult(self.config, rounds, models, self.events, dict(self.checkpoints))

    def _carry_out(self, action: Action) -> list[Action]:
        if isinstance(action, InitialiseModels):
            for model, state in self.initial.models.items():
                self.store[action.keys[model]] = dict(state)
            return []
        if isinstance(action, RunStep):
            step = action.step
            runtime = self.nodes[step.node]
            try:
                if step.kind == "setup":
                    # As at a served node's setup: its own models must match round 0's manifest.
                    runtime.check_manifest(self.initial.manifest)
                result = runtime.run(step, {slot: self.store[key] for slot, key in step.downloads.items()})
            except Exception as exc:
                # As a served node reports it; the federation's rules decide (a retry, the phase without
                # it). When the run cannot go on, the node's own error is the simulation's.
                failed = StepFailed(
                    step.node, step.round, step.phase, failure_reason(exc), retryable=is_retryable(exc)
                )
                actions = self.protocol.handle(failed)
                if any(isinstance(a, Stall) for a in actions):
                    self._record_failures(actions)
                    raise
                return actions
            uploads = self.secure.mask(step, result.uploads) if self.secure else result.uploads
            for slot, key in step.uploads.items():
                self.store[key] = uploads[slot]
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
            if self.secure:
                result = self.secure.aggregate(action, self.store)
            else:
                result = average_states(
                    {node: self.store[key] for node, key in action.inputs.items()}, action.weights
                )
            if action.base is not None:
                result = step_past(self.store[action.base], result, action.step)
            self.store[action.key] = result
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
        if isinstance(action, NodeFailed):
            self._record_failures([action])
            return []
        if isinstance(action, Stall):
            raise RuntimeError(f"simulation stalled in round {action.round} {action.phase}: {action.reason}")
        if isinstance(action, Checkpoint):
            self.checkpoints[action.round] = self.store[action.key]
            return []
        if isinstance(action, Finish):
            self.final = dict(action.models)
            if action.reason:  # ended before its last round (its privacy budget)
                self.events.append(action.reason)
            return []
        if isinstance(action, PrivacyWarning):
            self.events.append(f"round {action.round}: {action.message}")
            return []
        raise TypeError(f"unknown action {action!r}")

    def _record_failures(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, NodeFailed):
                then = "offered again" if action.retry else "out of the phase"
                self.events.append(
                    f"round {action.round} {action.phase}: node {action.node} failed "
                    f"({action.failures}x, {then}): {action.reason}"
                )

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
    initial: InitialParameters | None = None,
) -> SimulationResult:
    """Run a federation in this process; `initial` is round 0 (default: built from the config, as
    ``fedalign init-model`` builds it)."""
    with torch.random.fork_rng(devices=[]):
        return Simulator(config, device, node_data, initial).run(on_round)
