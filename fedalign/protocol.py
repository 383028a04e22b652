"""The round schedule as a pure state machine: events in, actions out, no I/O.

One machine serves the in-process simulator and the backend's orchestrator. A caller feeds it what happened
(`StepDone`, `StepFailed`, `AggregateDone`, `RevealDone`, `Deadline`) and carries out what it answers
(`InitialiseModels`, `RunStep`, `Aggregate`, `RecordMetrics`, `NodeFailed`, `PhaseClosed`, `PrivacyWarning`,
`Finish`, `Stall`). Its whole
state is a small JSON-able value, so a server that is killed at any point rebuilds the machine from its
database and carries on.

The round's schedule is `fedalign.phases`: each phase a value that says which roles take part and which
models each role downloads and uploads; the machine reads those values and fixes every average's weights
(`fedalign.weighting`). Two stages have small modules of their own: secure aggregation's unmasking of a
masked phase before its aggregates (`fedalign.unmasking`, with ``Protocol(..., reveal_steps=True)``) and
differential privacy's checks before a round opens (`fedalign.privacy_accounting`). The federation-level
metrics it records are `fedalign.metrics`' formulas over what the nodes report.

A node that cannot run its step says so (`StepFailed`, with its reason and whether a retry can help). A
retryable failure is offered to the node again, up to ``max_step_retries`` times; past that, or at once when
it is not retryable, the node is out of the phase and the quorum rule that a deadline applies decides:
the phase closes without it (a source, with ``min_sources`` still met), or the run stalls with the node's
reason (the target, or too few sources left). A source that fails its setup takes no part in the run.

Artifacts are named by key: ``r{round}/{phase}/{model}`` for an aggregate (``r0/init/G`` for the initial
models) and ``r{round}/{phase}/{model}/{node}`` for one node's submission.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedalign import unmasking
from fedalign.config import FederationConfig, NodeSpec
from fedalign.metrics import fresh_metrics, round_metrics
from fedalign.model_names import MODELS
from fedalign.phases import PUBLISHED_MODEL, Phase, PhaseKind, Schedule
from fedalign.privacy_accounting import check_before_round
from fedalign.unmasking import Unmasking
from fedalign.weighting import Contribution, target_share_step, weights

# A node runs its phase's kind of step, an aggregate step when it aggregates for the federation (the target
# as aggregator), or a reveal step (secure aggregation's unmasking).
StepKind = PhaseKind | Literal["aggregate", "reveal"]


class ProtocolError(ValueError):
    """An event the machine cannot accept in its state; `code` says which kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one random choice, from the federation's seed and what the choice is for.

    Derived by hashing, never from process or arrival order, so a served run and a simulated run of the
    same config draw the same numbers.
    """
    text = "/".join([str(seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def aggregate_key(round_: int, phase: str, model: str) -> str:
    return f"r{round_}/{phase}/{model}"


def submission_key(round_: int, phase: str, model: str, node: str) -> str:
    return f"r{round_}/{phase}/{model}/{node}"


def initial_keys() -> dict[str, str]:
    return {m: aggregate_key(0, "init", m) for m in MODELS}


def effective_local_policy(config: FederationConfig) -> str:
    """`source_only` is the pure source model: the target applies it with the sources' statistics."""
    return "none" if config.algorithm == "source_only" else config.hyperparameters.local_params


# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class StepSpec:
    """One node's instruction: what to download into which slot, what to run, what to upload where."""

    node: str
    round: int
    phase: str
    kind: StepKind
    downloads: dict[str, str]
    uploads: dict[str, str]
    seed: int
    # For an aggregation run by the target node: the submissions to fold and their weights.
    inputs: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    # For a reveal step (secure aggregation): model -> the roster's nodes whose uploads are not in the sum.
    dropped: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunStep:
    step: StepSpec


@dataclass(frozen=True)
class Aggregate:
    """Average `inputs` (node -> submission key) with `weights` into `key`; `by` is "server" or a node.

    With a `base` (the aggregate every averaged copy started from), the result is the average stepped past
    it: base + step * (average - base) (`fedalign.aggregate.step_past`; hyperparameters.server_step).
    """

    key: str
    model: str
    inputs: dict[str, str]
    weights: dict[str, float]
    by: str
    base: str | None = None
    step: float = 1.0


@dataclass(frozen=True)
class InitialiseModels:
    keys: dict[str, str]
    seed: int


@dataclass(frozen=True)
class RecordMetrics:
    round: int
    metrics: dict[str, float]
    node: str | None = None


@dataclass(frozen=True)
class PhaseClosed:
    round: int
    phase: str
    missing: list[str]
    reason: str


@dataclass(frozen=True)
class Checkpoint:
    """The target's model after round `round` is stored under `key` (every publish phase, the last too)."""

    round: int
    key: str


@dataclass(frozen=True)
class Finish:
    models: dict[str, str]
    # Why the run ended before its last round (its privacy budget); empty when it ran every round.
    reason: str = ""


@dataclass(frozen=True)
class PrivacyWarning:
    """Differential privacy: a node's setting or spending the federation should know of; the run goes on.

    `kind` is "budget" (the next round takes a node past `privacy.epsilon_budget`, with `budget_action`
    "warn") or "delta" (delta is not below 1 / n_train of a node); `values` maps each node concerned to
    its projected epsilon ("budget") or its training examples ("delta").
    """

    round: int
    kind: Literal["budget", "delta"]
    message: str
    values: dict[str, float]


@dataclass(frozen=True)
class Stall:
    round: int
    phase: str
    reason: str


@dataclass(frozen=True)
class NodeFailed:
    """A node reported its step failed (`StepFailed`): the reason to record and show on the node.

    `failures` counts the node's failures of this step so far; `retry` says whether the step is offered
    again (a `RunStep`, or an `Aggregate` for an aggregate step, follows), otherwise the node is out of the
    phase. `aggregate` is the key of the aggregate step that failed (a target aggregating), else None.
    """

    node: str
    round: int
    phase: str
    reason: str
    retryable: bool
    failures: int
    retry: bool
    aggregate: str | None = None


Action = (
    RunStep
    | Aggregate
    | InitialiseModels
    | RecordMetrics
    | NodeFailed
    | PhaseClosed
    | Finish
    | Checkpoint
    | Stall
    | PrivacyWarning
)


@dataclass(frozen=True)
class StepDone:
    node: str
    round: int
    phase: str
    uploads: frozenset[str] = frozenset()
    metrics: Mapping[str, float] = field(default_factory=dict)
    samples: Mapping[str, int] | None = None


@dataclass(frozen=True)
class StepFailed:
    """A node could not run its step of the open phase: why (`fedalign.failures.failure_reason`), and
    whether running it again may help (`fedalign.failures.is_retryable`). ``aggregate``: the key of the
    aggregate step that failed, when the node is the target aggregating."""

    node: str
    round: int
    phase: str
    reason: str
    retryable: bool = False
    aggregate: str | None = None


@dataclass(frozen=True)
class AggregateDone:
    key: str


@dataclass(frozen=True)
class Deadline:
    """The phase's deadline passed: close it with whoever is in, if the quorum rule allows."""

    round: int
    phase: str


@dataclass(frozen=True)
class RevealDone:
    """A survivor's seeds for the closed masked phase are in (secure aggregation's Unmasking round)."""

    node: str
    round: int
    phase: str


Event = StepDone | StepFailed | AggregateDone | Deadline | RevealDone


@dataclass
class ProtocolState:
    round: int = 0
    phase_index: int = 0
    started: bool = False
    finished: bool = False
    stalled: str | None = None
    # node -> {"train": n, "val": n, ...}, reported by the setup step
    samples: dict[str, dict[str, int]] = field(default_factory=dict)
    # nodes that finished the open phase, with the slots they uploaded
    done: dict[str, list[str]] = field(default_factory=dict)
    # aggregates of the open phase not yet reported done
    pending: list[str] = field(default_factory=list)
    # the newest aggregate of each model
    latest: dict[str, str] = field(default_factory=dict)
    # per-node metrics of the open round, merged over its phases
    node_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    # sources that had not finished setup at its deadline: they take no part in the run
    excluded: list[str] = field(default_factory=list)
    # differential privacy: the kinds of PrivacyWarning already given (each is given once)
    privacy_warned: list[str] = field(default_factory=list)
    # secure aggregation (reveal steps): the closed phase's survivors and those that revealed their seeds
    unmasking: dict[str, list[str]] | None = None
    # failed steps of the open phase: how often each failed (by node, or "aggregate <key>"), and the nodes
    # that are out of the phase, with their reasons
    failures: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.__dict__))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProtocolState:
        # A copy: handling events mutates the state, and the caller's value (a database column, say)
        # must not change under it.
        return cls(**copy.deepcopy({k: v for k, v in data.items() if k in cls.__dataclass_fields__}))


# ---------------------------------------------------------------------------------------------- machine


class Protocol:
    def __init__(
        self, config: FederationConfig, state: ProtocolState | None = None, *, reveal_steps: bool = False
    ) -> None:
        if not config.nodes:
            raise ProtocolError("no_nodes", "a federation cannot run without nodes")
        self.config = config
        self.hp = config.hyperparameters
        self.schedule = Schedule.of(config)
        self.state = state or ProtocolState()
        self.nodes: dict[str, NodeSpec] = {n.name: n for n in config.nodes}
        # Masked phases unmask through reveal steps (a served federation with secure aggregation).
        self.reveal_steps = reveal_steps and config.secure_aggregation

    # ----------------------------------------------------------------------------------- queries

    @property
    def phase(self) -> str:
        """The open phase's name."""
        return self.current.name

    @property
    def current(self) -> Phase:
        """The open phase."""
        return self.schedule.round(self.state.round)[self.state.phase_index]

    def phase_of(self, round_: int, name: str) -> Phase:
        """Round `round_`'s phase called `name`."""
        for phase in self.schedule.round(round_):
            if phase.name == name:
                return phase
        raise ProtocolError("unknown_phase", f"round {round_} has no phase {name!r}")

    def participants(self, round_: int, phase: str) -> list[str]:
        """Nodes that run a step in a phase, in fixed (name) order."""
        parts = self.phase_of(round_, phase).parts
        return sorted(
            n.name for n in self.config.nodes if n.role in parts and n.name not in self.state.excluded
        )

    def uploads(self, node: str, round_: int, phase: str) -> dict[str, str]:
        part = self.phase_of(round_, phase).part(self.nodes[node].role)
        return {m: submission_key(round_, phase, m, node) for m in (part.uploads if part else ())}

    def downloads(self, node: str, round_: int, phase: str) -> dict[str, str]:
        """The newest aggregates of the models a node's step starts from."""
        part = self.phase_of(round_, phase).part(self.nodes[node].role)
        wanted = part.downloads if part else ()
        return {m: self.state.latest[m] for m in wanted if m in self.state.latest}

    def open_steps(self) -> list[StepSpec]:
        """The steps of the open phase that no node has finished yet (what a sweep re-sends)."""
        if self.state.finished or not self.state.started or self.state.pending:
            return []
        if self.state.unmasking is not None:
            return [self._reveal_step(n) for n in Unmasking.from_json(self.state.unmasking).waiting]
        r, phase = self.state.round, self.phase
        answered = {*self.state.done, *self.state.failed}
        return [self._step(n, r, phase) for n in self.participants(r, phase) if n not in answered]

    def _step(self, node: str, round_: int, phase: str) -> StepSpec:
        return StepSpec(
            node=node,
            round=round_,
            phase=phase,
            kind=self.phase_of(round_, phase).kind,
            downloads=self.downloads(node, round_, phase),
            uploads=self.uploads(node, round_, phase),
            seed=derive_seed(self.config.seed, node, round_, phase),
        )

    # ----------------------------------------------------------------------------------- events

    def start(self) -> list[Action]:
        if self.state.started:
            raise ProtocolError("already_started", "the run has already started")
        self.state.started = True
        self.state.latest = initial_keys()
        init = InitialiseModels(keys=dict(self.state.latest), seed=derive_seed(self.config.seed, "init"))
        return [init, *self._open_phase()]

    def extend(self) -> list[Action]:
        """Go on after a finished run, whose config now has more rounds: the next round opens as it would
        have in a run that long. A run its privacy budget ended is not extended (its budget is spent)."""
        state = self.state
        if not state.finished:
            raise ProtocolError("not_finished", "only a finished run can be continued")
        if state.round >= self.config.rounds:
            raise ProtocolError("no_more_rounds", f"the run already has {self.config.rounds} rounds")
        state.finished = False
        return self._next_round()

    def handle(self, event: Event) -> list[Action]:
        if not self.state.started:
            raise ProtocolError("not_started", "the run has not started")
        if self.state.finished:
            raise ProtocolError("finished", "the run has finished; it takes no more events")
        if isinstance(event, StepDone):
            return self._on_step_done(event)
        if isinstance(event, StepFailed):
            return self._on_step_failed(event)
        if isinstance(event, AggregateDone):
            return self._on_aggregate_done(event)
        if isinstance(event, RevealDone):
            return self._on_reveal_done(event)
        return self._on_deadline(event)

    def _check_open(self, round_: int, phase: str, what: str) -> None:
        if (round_, phase) != (self.state.round, self.phase):
            raise ProtocolError(
                "wrong_phase",
                f"{what} is for round {round_} phase {phase!r}, but round {self.state.round} "
                f"phase {self.phase!r} is open",
            )

    def _on_step_done(self, event: StepDone) -> list[Action]:
        node = event.node
        if node not in self.nodes:
            raise ProtocolError("unknown_node", f"no node named {node!r} in this federation")
        self._check_open(event.round, event.phase, f"node {node!r}'s step")
        if self.state.pending or self.state.unmasking is not None:
            raise ProtocolError("phase_closed", f"phase {self.phase!r} is closed and being aggregated")
        if node not in self.participants(event.round, event.phase):
            raise ProtocolError("not_a_participant", f"node {node!r} has no step in phase {self.phase!r}")
        if node in self.state.done:
            raise ProtocolError("duplicate", f"node {node!r} already finished phase {self.phase!r}")
        if node in self.state.failed:
            raise ProtocolError(
                "step_failed",
                f"node {node!r} reported its step of phase {self.phase!r} failed "
                f"({self.state.failed[node]}); the phase goes on without it",
            )
        expected = set(self.uploads(node, event.round, event.phase))
        if set(event.uploads) != expected:
            raise ProtocolError(
                "wrong_uploads",
                f"phase {self.phase!r} expects uploads {sorted(expected)} from {node!r}, "
                f"got {sorted(event.uploads)}",
            )
        if self.current.kind == "setup":
            if not event.samples or event.samples.get("train", 0) < 1:
                raise ProtocolError("no_samples", f"node {node!r} reported no training samples")
            self.state.samples[node] = {k: int(v) for k, v in event.samples.items()}
        self.state.done[node] = sorted(event.uploads)
        self.state.node_metrics.setdefault(node, {}).update({k: float(v) for k, v in event.metrics.items()})
        actions: list[Action] = []
        if event.metrics:
            actions.append(RecordMetrics(event.round, dict(event.metrics), node=node))
        return actions + self._settle()

    # ----------------------------------------------------------------------------------- failures

    def _on_step_failed(self, event: StepFailed) -> list[Action]:
        node = event.node
        if node not in self.nodes:
            raise ProtocolError("unknown_node", f"no node named {node!r} in this federation")
        self._check_open(event.round, event.phase, f"node {node!r}'s failed step")
        if event.aggregate is not None:
            return self._on_aggregate_failed(event, event.aggregate)
        if self.state.pending or self.state.unmasking is not None:
            raise ProtocolError("phase_closed", f"phase {self.phase!r} is closed and being aggregated")
        if node not in self.participants(event.round, event.phase):
            raise ProtocolError("not_a_participant", f"node {node!r} has no step in phase {self.phase!r}")
        if node in self.state.done:
            raise ProtocolError("duplicate", f"node {node!r} already finished phase {self.phase!r}")
        if node in self.state.failed:
            raise ProtocolError("duplicate", f"node {node!r} is already out of phase {self.phase!r}")
        failures = self.state.failures.get(node, 0) + 1
        self.state.failures[node] = failures
        retry = event.retryable and failures <= self.config.max_step_retries
        r, phase = self.state.round, self.phase
        actions: list[Action] = [
            NodeFailed(node, r, phase, event.reason, event.retryable, failures, retry=retry)
        ]
        if retry:
            return [*actions, RunStep(self._step(node, r, phase))]
        self.state.failed[node] = event.reason
        return actions + self._settle()

    def _on_aggregate_failed(self, event: StepFailed, key: str) -> list[Action]:
        """The target, aggregating, could not compute ``key``: offered again, or the run stalls (nobody else
        may compute the target's averages)."""
        if key not in self.state.pending:
            raise ProtocolError("unexpected_aggregate", f"no aggregation {key!r} is pending")
        aggregator = self.config.target.name if self.config.aggregator == "target" else None
        if event.node != aggregator:
            raise ProtocolError("not_the_aggregator", f"node {event.node!r} does not aggregate {key!r}")
        slot = f"aggregate {key}"
        failures = self.state.failures.get(slot, 0) + 1
        self.state.failures[slot] = failures
        retry = event.retryable and failures <= self.config.max_step_retries
        r, phase = self.state.round, self.phase
        actions: list[Action] = [
            NodeFailed(event.node, r, phase, event.reason, event.retryable, failures, retry, aggregate=key)
        ]
        if retry:
            return actions + [a for a in self._aggregates() if a.key == key]
        return actions + self._stall(
            f"the target node {event.node!r} failed to aggregate {key}: {event.reason}"
        )

    def _settle(self) -> list[Action]:
        """After a node finished or gave up: stall when the phase cannot close any more (its target failed,
        or too few sources can still finish), close it once every participant has answered."""
        r, phase = self.state.round, self.phase
        expected = self.participants(r, phase)
        failed = [n for n in expected if n in self.state.failed]
        target = self.config.target.name
        if target in failed:
            return self._stall(self._target_failed(phase))
        if failed:
            sources = [n for n in expected if self.nodes[n].role == "source" and n not in self.state.failed]
            needed = self.config.min_sources or len(self.config.sources)
            if len(sources) < needed:
                why = "; ".join(f"{n}: {self.state.failed[n]}" for n in failed)
                return self._stall(
                    f"only {len(sources)} of {needed} required sources can finish phase {phase!r}; "
                    f"failed: {why}"
                )
        if not set(expected) <= {*self.state.done, *failed}:
            return []
        if not failed:
            return self._close_phase(missing=[], reason="")
        why = "; ".join(f"{n}: {self.state.failed[n]}" for n in failed)
        if self.current.kind == "setup":
            # As a source that missed setup's deadline: no sample counts, no weight, no later step.
            self.state.excluded = sorted({*self.state.excluded, *failed})
            return self._close_phase(
                missing=failed,
                reason=f"setup failed on {', '.join(failed)} ({why}); they take no part in this run",
            )
        return self._close_phase(
            missing=failed,
            reason=f"{', '.join(failed)} failed ({why}); weights renormalised over the rest",
        )

    def _target_failed(self, phase: str) -> str:
        target = self.config.target.name
        return f"the target node {target!r} failed its step of phase {phase!r}: {self.state.failed[target]}"

    def _stall(self, reason: str) -> list[Action]:
        if self.state.stalled == reason:
            return []  # said already
        self.state.stalled = reason
        return [Stall(self.state.round, self.phase, reason)]

    def _on_deadline(self, event: Deadline) -> list[Action]:
        self._check_open(event.round, event.phase, "the deadline")
        if self.state.unmasking is not None:
            return self._unmasking_deadline()
        if self.state.pending:
            return []
        expected = self.participants(self.state.round, self.phase)
        missing = [n for n in expected if n not in self.state.done]
        if not missing:
            return []
        target = self.config.target.name
        present_sources = [n for n in self.state.done if self.nodes[n].role == "source"]
        needed = self.config.min_sources or len(self.config.sources)
        reason = ""
        if target in self.state.failed:
            reason = self._target_failed(self.phase)
        elif target in missing:
            reason = f"the target node {target!r} has not finished phase {self.phase!r}; waiting for it"
        elif len(present_sources) < needed:
            reason = (
                f"{len(present_sources)} of {needed} required sources finished phase {self.phase!r}; "
                f"missing: {', '.join(missing)}"
            )
        if reason:
            self.state.stalled = reason
            return [Stall(self.state.round, self.phase, reason)]
        if self.current.kind == "setup":
            # No sample counts, no weight: a source that never joined stays out of every later phase
            # instead of making each of them wait for its deadline.
            self.state.excluded = sorted({*self.state.excluded, *missing})
            return self._close_phase(
                missing=missing,
                reason=f"setup's deadline passed without {', '.join(missing)}; they take no part in this run",
            )
        return self._close_phase(
            missing=missing,
            reason=f"deadline passed without {', '.join(missing)}; weights renormalised over the rest",
        )

    def _close_phase(self, missing: list[str], reason: str) -> list[Action]:
        self.state.stalled = None
        actions: list[Action] = []
        if missing:
            actions.append(PhaseClosed(self.state.round, self.phase, missing, reason))
        if self.reveal_steps:
            survivors = unmasking.survivors(
                self.roster_weights(self.state.round, self.phase), self.state.done
            )
            if survivors:
                return actions + self._start_unmasking(survivors)
        aggregates = self._aggregates()
        self.state.pending = [a.key for a in aggregates]
        actions += aggregates
        if not aggregates:
            actions += self._advance()
        return actions

    def _aggregates(self) -> list[Aggregate]:
        r, phase = self.state.round, self.phase
        by = "server" if self.config.aggregator == "server" else self.config.target.name
        result: list[Aggregate] = []
        for model in MODELS:
            contributors = sorted(n for n, slots in self.state.done.items() if model in slots)
            if not contributors:
                continue
            node_weights = self.model_weights(model, contributors)
            result.append(
                Aggregate(
                    key=aggregate_key(r, phase, model),
                    model=model,
                    inputs={n: submission_key(r, phase, model, n) for n in contributors},
                    weights=node_weights,
                    by=by,
                    **self._server_step(model, node_weights),
                )
            )
        return result

    def _server_step(self, model: str, node_weights: dict[str, float]) -> dict[str, Any]:
        """An aggregate's `base` and `step` under hyperparameters.server_step (none: the plain average).

        The target's share is read from the weights of the uploads present, so that with a source missing
        the step still gives the present sources' step its full size.
        """
        share = node_weights.get(self.config.target.name, 0.0)
        # Without the target, or with no source present, there is no damped sources' step to restore.
        if model != "G" or self.hp.server_step == "none" or not 0.0 < share < 1.0:
            return {}
        return {"base": self.state.latest[model], "step": target_share_step(share)}

    def model_weights(self, model: str, nodes: list[str]) -> dict[str, float]:
        """Normalised weights of ``nodes``' submissions of ``model``, under the model's weighting scheme."""
        scheme = {"D": self.hp.disc_weighting, "G": self.hp.extractor_weighting}.get(model, "samples")
        return weights(
            scheme, [Contribution(n, self.nodes[n].role, self.state.samples[n]["train"]) for n in nodes]
        )

    def roster_weights(self, round_: int, phase: str) -> dict[str, dict[str, float]]:
        """model -> {node: weight} over every node that a phase expects a submission of the model from.

        These are the weights fixed when the phase opens, before anyone uploads: secure aggregation has
        each node pre-multiply its upload by its weight before masking. With every node in, they are the
        phase's `Aggregate` weights; with nodes missing, an `Aggregate` renormalises over those present.
        """
        rosters: dict[str, list[str]] = {}
        for node in self.participants(round_, phase):
            for model in self.uploads(node, round_, phase):
                rosters.setdefault(model, []).append(node)
        return {m: self.model_weights(m, sorted(rosters[m])) for m in MODELS if m in rosters}

    # ------------------------------------------------------------------ secure aggregation: unmasking

    def _reveal_step(self, node: str) -> StepSpec:
        r, phase = self.state.round, self.phase
        dropped = unmasking.dropped(self.roster_weights(r, phase), self.state.done, node)
        return StepSpec(node, r, phase, "reveal", downloads={}, uploads={}, seed=0, dropped=dropped)

    def _start_unmasking(self, survivors: list[str]) -> list[Action]:
        self.state.unmasking = Unmasking(survivors).to_json()
        return [RunStep(self._reveal_step(n)) for n in survivors]

    def _on_reveal_done(self, event: RevealDone) -> list[Action]:
        self._check_open(event.round, event.phase, f"node {event.node!r}'s reveal")
        if self.state.unmasking is None:
            raise ProtocolError("not_unmasking", f"phase {self.phase!r} is not waiting for seed reveals")
        stage = Unmasking.from_json(self.state.unmasking)
        if event.node not in stage.survivors:
            raise ProtocolError(
                "not_a_survivor",
                f"node {event.node!r} has no masked upload in the sum of phase {self.phase!r}",
            )
        if event.node in stage.revealed:
            raise ProtocolError("duplicate", f"node {event.node!r} already revealed its seeds")
        stage.reveal(event.node)
        self.state.unmasking = stage.to_json()
        if stage.complete:
            return self._unmasked()
        if self.state.stalled is not None:  # past the deadline: enough answers now unmask the sum
            return self._unmasking_deadline()
        return []

    def _unmasked(self) -> list[Action]:
        """The unmasking stage is over (every survivor answered, or t of them by the deadline)."""
        self.state.unmasking = None
        self.state.stalled = None
        aggregates = self._aggregates()
        self.state.pending = [a.key for a in aggregates]
        return list(aggregates)

    def _unmasking_deadline(self) -> list[Action]:
        assert self.state.unmasking is not None
        stage = Unmasking.from_json(self.state.unmasking)
        if not stage.waiting:
            return []
        r = self.state.round
        short = unmasking.short_of_threshold(
            self.roster_weights(r, self.phase), self.state.done, stage.revealed, self.config.secure_threshold
        )
        if short:
            reason = stage.stall_reason(self.phase, short)
            self.state.stalled = reason
            return [Stall(r, self.phase, reason)]
        # t survivors' shares rebuild the silent survivors' seeds: their uploads stay in the sum.
        closed = PhaseClosed(r, self.phase, stage.waiting, stage.recovered_reason())
        return [closed, *self._unmasked()]

    # ----------------------------------------------------------------------------------- advancing

    def _on_aggregate_done(self, event: AggregateDone) -> list[Action]:
        if event.key not in self.state.pending:
            raise ProtocolError("unexpected_aggregate", f"no aggregation {event.key!r} is pending")
        self.state.pending.remove(event.key)
        model = event.key.rsplit("/", 1)[1]
        self.state.latest[model] = event.key
        if self.state.pending:
            return []
        return self._advance()

    def _advance(self) -> list[Action]:
        actions: list[Action] = []
        r, phase = self.state.round, self.current
        if phase.kind == "adapt" and r > 1:
            # Nodes measured the previous round's features with this round's D_all before adapting.
            fresh = fresh_metrics(self.config, self.state.node_metrics, self.state.samples)
            if fresh:
                actions.append(RecordMetrics(r - 1, fresh))
        if phase.kind == "evaluate":
            round_level = round_metrics(self.config, self.state.node_metrics, self.state.samples, r)
            if round_level:
                actions.append(RecordMetrics(r, round_level))
        if phase.kind == "publish":
            actions.append(
                Checkpoint(r, submission_key(r, phase.name, PUBLISHED_MODEL, self.config.target.name))
            )
        self.state.done = {}
        self.state.failures = {}
        self.state.failed = {}
        if self.state.phase_index + 1 < len(self.schedule.round(r)):
            self.state.phase_index += 1
        elif r == self.config.rounds:
            self.state.finished = True
            models = dict(self.state.latest)
            if phase.kind == "publish":
                models["target_model"] = submission_key(
                    r, phase.name, PUBLISHED_MODEL, self.config.target.name
                )
            actions.append(Finish(models=models))
            return actions
        else:
            return actions + self._next_round()
        return actions + self._open_phase()

    def _next_round(self) -> list[Action]:
        """Open the round after the current one, unless the privacy budget allows no further round (then the
        run finishes, with the reason)."""
        actions = self._privacy_before(self.state.round + 1)
        if self.state.finished:  # stopped by the privacy budget
            return actions
        self.state.round += 1
        self.state.phase_index = 0
        self.state.node_metrics = {}
        return actions + self._open_phase()

    def _privacy_before(self, round_: int) -> list[Action]:
        """Differential privacy's checks before round `round_` opens (every node's sigma, q and DP steps
        per round are known since setup, so its epsilon after the round is too)."""
        nodes = {n: (self.nodes[n].role, s["train"]) for n, s in sorted(self.state.samples.items())}
        check = check_before_round(self.config, round_, nodes, given=self.state.privacy_warned)
        actions: list[Action] = []
        for notice in check.notices:
            self.state.privacy_warned.append(notice.kind)
            actions.append(PrivacyWarning(round_, notice.kind, notice.message, notice.values))
        if check.stop is not None:
            self.state.finished = True
            actions.append(Finish(models=dict(self.state.latest), reason=check.stop))
        return actions

    def _open_phase(self) -> list[Action]:
        r, phase = self.state.round, self.phase
        return [RunStep(self._step(n, r, phase)) for n in self.participants(r, phase)]
