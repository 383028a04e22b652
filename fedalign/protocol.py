"""The round schedule as a pure state machine: events in, actions out, no I/O.

One machine serves the in-process simulator and the backend's orchestrator. A caller feeds it what happened
(`StepDone`, `AggregateDone`, `Deadline`) and carries out what it answers (`RunStep`, `Aggregate`,
`RecordMetrics`, `PhaseClosed`, `Finish`, `Stall`). Its whole state is a small JSON-able value, so a
server that is killed at any point rebuilds the machine from its database and carries on.

A run is: round 0 with one ``setup`` phase (every node starts from the initial models and reports its
sample counts), then rounds 1..R, each a fixed list of phases (`round_phases`):

* ``fedalign``: ``disc1`` .. ``discE`` (every node trains D on its own domain from the last D_all, D_all is
  the average of the uploads), ``adapt`` (every node trains against the fixed D_all; G and T are
  averaged), ``eval`` (every node reports scalar metrics of its model on its own held-out data).
* ``fedavg``: ``train`` (sources train G and T on labels; the target only refreshes its local
  normalisation statistics, or, with target terms on (entropy, diversity, pseudo-labels), trains its G
  on them as in ``fedalign`` without the discriminator), ``eval``.
* ``source_only``: ``train`` over the sources alone, ``eval``; the target applies the sources' model.

``eval`` runs every ``eval_every`` rounds and in the last round.

Secure aggregation, served (``Protocol(..., reveal_steps=True)``; `fedalign.secagg` for the method): a
phase whose uploads are masked closes into an *unmasking* stage instead of straight into its aggregates.
Every survivor (a node that finished the phase with a masked upload) gets a ``reveal`` step carrying the
one dropout list of the phase (per model: the roster's nodes whose uploads are not in the sum); when every
survivor reported `RevealDone`, the aggregates follow as usual. A survivor that never reveals stalls the run
at the deadline: without secret sharing its masks cannot be removed. The simulator collects the reveals
in-process (`fedalign.simulate.SecureAggregation`) and keeps ``reveal_steps`` off.

Artifacts are named by key: ``r{round}/{phase}/{model}`` for an aggregate (``r0/init/G`` for the initial
models) and ``r{round}/{phase}/{model}/{node}`` for one node's submission.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedalign.aggregate import Contribution, weights
from fedalign.config import FederationConfig, NodeSpec
from fedalign.privacy import projected_epsilon

StepKind = Literal["setup", "discriminator", "adapt", "evaluate", "publish", "aggregate", "reveal"]
MODELS = ("G", "T", "D")


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


def target_trains(config: FederationConfig) -> bool:
    """Whether the target trains its G in the adaptation phase: always under ``fedalign`` (unless its
    extractor is ``none``), under ``fedavg`` when it has terms on its own predictions (FedAvg plus the
    same unlabelled target terms: the baseline that isolates what the discriminator adds)."""
    if config.hyperparameters.target_extractor == "none" or config.algorithm == "source_only":
        return False
    return config.algorithm == "fedalign" or config.hyperparameters.target_terms


def evaluates(config: FederationConfig, round_: int) -> bool:
    return round_ == config.rounds or round_ % config.hyperparameters.eval_every == 0


def round_phases(config: FederationConfig, round_: int) -> list[str]:
    if round_ == 0:
        return ["setup"]
    if config.algorithm == "fedalign":
        phases = [f"disc{e}" for e in range(1, config.hyperparameters.disc_exchanges + 1)] + ["adapt"]
    else:
        phases = ["train"]
    if evaluates(config, round_):
        phases.append("eval")
    if round_ == config.rounds and config.publish_model:
        phases.append("publish")
    return phases


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
    """Average `inputs` (node -> submission key) with `weights` into `key`; `by` is "server" or a node."""

    key: str
    model: str
    inputs: dict[str, str]
    weights: dict[str, float]
    by: str


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


Action = (
    RunStep | Aggregate | InitialiseModels | RecordMetrics | PhaseClosed | Finish | Stall | PrivacyWarning
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


Event = StepDone | AggregateDone | Deadline | RevealDone


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
        self.state = state or ProtocolState()
        self.nodes: dict[str, NodeSpec] = {n.name: n for n in config.nodes}
        # Masked phases unmask through reveal steps (a served federation with secure aggregation).
        self.reveal_steps = reveal_steps and config.secure_aggregation

    # ----------------------------------------------------------------------------------- queries

    @property
    def phase(self) -> str:
        return round_phases(self.config, self.state.round)[self.state.phase_index]

    def participants(self, round_: int, phase: str) -> list[str]:
        """Nodes that run a step in a phase, in fixed (name) order."""
        target = self.config.target.name
        sources = [n.name for n in self.config.sources if n.name not in self.state.excluded]
        if phase == "adapt" and self.hp.target_extractor == "none":
            return sources
        if phase == "train" and self.config.algorithm == "source_only":
            return sources
        if phase == "publish":
            return [target]
        return sorted([*sources, target])

    def uploads(self, node: str, round_: int, phase: str) -> dict[str, str]:
        role = self.nodes[node].role
        if phase.startswith("disc"):
            models: list[str] = ["D"]
        elif phase in ("adapt", "train"):
            if role == "source":
                models = ["G", "T"]
            elif target_trains(self.config) and self.hp.target_extractor == "average":
                models = ["G"]
            else:
                models = []
        elif phase == "publish":
            models = ["model"]
        else:
            models = []
        return {m: submission_key(round_, phase, m, node) for m in models}

    def downloads(self, node: str, phase: str) -> dict[str, str]:
        """The newest aggregates a node's step starts from.

        Sources that keep their own G and T between rounds download only D; everyone else also takes the
        newest G_agg and T_agg (loading the same aggregate twice is a no-op, so the rule needs no
        per-phase exceptions). A target that keeps its own extractor never takes G_agg.
        """
        if phase == "setup":
            return dict(self.state.latest)
        fedalign = self.config.algorithm == "fedalign"
        wanted = ["D"] if fedalign else []
        if self.nodes[node].role == "source":
            if not (fedalign and self.hp.source_extractor == "keep"):
                wanted += ["G", "T"]
        else:
            if not (target_trains(self.config) and self.hp.target_extractor == "local"):
                wanted.append("G")
            wanted.append("T")
        return {m: self.state.latest[m] for m in wanted if m in self.state.latest}

    def step_kind(self, phase: str) -> StepKind:
        if phase == "setup":
            return "setup"
        if phase.startswith("disc"):
            return "discriminator"
        if phase in ("adapt", "train"):
            return "adapt"
        if phase == "publish":
            return "publish"
        return "evaluate"

    def open_steps(self) -> list[StepSpec]:
        """The steps of the open phase that no node has finished yet (what a sweep re-sends)."""
        if self.state.finished or not self.state.started or self.state.pending:
            return []
        if self.state.unmasking is not None:
            revealed = set(self.state.unmasking["revealed"])
            return [self._reveal_step(n) for n in self.state.unmasking["survivors"] if n not in revealed]
        r, phase = self.state.round, self.phase
        return [self._step(n, r, phase) for n in self.participants(r, phase) if n not in self.state.done]

    def _step(self, node: str, round_: int, phase: str) -> StepSpec:
        return StepSpec(
            node=node,
            round=round_,
            phase=phase,
            kind=self.step_kind(phase),
            downloads=self.downloads(node, phase),
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

    def handle(self, event: Event) -> list[Action]:
        if not self.state.started:
            raise ProtocolError("not_started", "the run has not started")
        if self.state.finished:
            raise ProtocolError("finished", "the run has finished; it takes no more events")
        if isinstance(event, StepDone):
            return self._on_step_done(event)
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
        expected = set(self.uploads(node, event.round, event.phase))
        if set(event.uploads) != expected:
            raise ProtocolError(
                "wrong_uploads",
                f"phase {self.phase!r} expects uploads {sorted(expected)} from {node!r}, "
                f"got {sorted(event.uploads)}",
            )
        if self.phase == "setup":
            if not event.samples or event.samples.get("train", 0) < 1:
                raise ProtocolError("no_samples", f"node {node!r} reported no training samples")
            self.state.samples[node] = {k: int(v) for k, v in event.samples.items()}
        self.state.done[node] = sorted(event.uploads)
        self.state.node_metrics.setdefault(node, {}).update({k: float(v) for k, v in event.metrics.items()})
        actions: list[Action] = []
        if event.metrics:
            actions.append(RecordMetrics(event.round, dict(event.metrics), node=node))
        if set(self.state.done) >= set(self.participants(self.state.round, self.phase)):
            actions += self._close_phase(missing=[], reason="")
        return actions

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
        if target in missing:
            reason = f"the target node {target!r} has not finished phase {self.phase!r}; waiting for it"
        elif len(present_sources) < needed:
            reason = (
                f"{len(present_sources)} of {needed} required sources finished phase {self.phase!r}; "
                f"missing: {', '.join(missing)}"
            )
        if reason:
            self.state.stalled = reason
            return [Stall(self.state.round, self.phase, reason)]
        if self.phase == "setup":
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
        if self.reveal_steps and self._masked_survivors():
            return actions + self._start_unmasking()
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
            result.append(
                Aggregate(
                    key=aggregate_key(r, phase, model),
                    model=model,
                    inputs={n: submission_key(r, phase, model, n) for n in contributors},
                    weights=self.model_weights(model, contributors),
                    by=by,
                )
            )
        return result

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

    def _masked_survivors(self) -> list[str]:
        """Nodes that finished the open phase with an upload that is averaged (so masked), sorted."""
        masked = set(self.roster_weights(self.state.round, self.phase))
        return sorted(n for n, slots in self.state.done.items() if masked & set(slots))

    def _reveal_step(self, node: str) -> StepSpec:
        r, phase = self.state.round, self.phase
        done = self.state.done
        # One dropout list per phase, derived from the saved state: every survivor is told the same.
        dropped = {
            model: [n for n in sorted(roster) if n not in done]
            for model, roster in self.roster_weights(r, phase).items()
            if model in done[node]
        }
        return StepSpec(node, r, phase, "reveal", downloads={}, uploads={}, seed=0, dropped=dropped)

    def _start_unmasking(self) -> list[Action]:
        survivors = self._masked_survivors()
        self.state.unmasking = {"survivors": survivors, "revealed": []}
        return [RunStep(self._reveal_step(n)) for n in survivors]

    def _on_reveal_done(self, event: RevealDone) -> list[Action]:
        self._check_open(event.round, event.phase, f"node {event.node!r}'s reveal")
        unmasking = self.state.unmasking
        if unmasking is None:
            raise ProtocolError("not_unmasking", f"phase {self.phase!r} is not waiting for seed reveals")
        if event.node not in unmasking["survivors"]:
            raise ProtocolError(
                "not_a_survivor",
                f"node {event.node!r} has no masked upload in the sum of phase {self.phase!r}",
            )
        if event.node in unmasking["revealed"]:
            raise ProtocolError("duplicate", f"node {event.node!r} already revealed its seeds")
        unmasking["revealed"] = sorted([*unmasking["revealed"], event.node])
        if unmasking["revealed"] != unmasking["survivors"]:
            return []
        self.state.unmasking = None
        self.state.stalled = None
        aggregates = self._aggregates()
        self.state.pending = [a.key for a in aggregates]
        return list(aggregates)

    def _unmasking_deadline(self) -> list[Action]:
        assert self.state.unmasking is not None
        waiting = [n for n in self.state.unmasking["survivors"] if n not in self.state.unmasking["revealed"]]
        if not waiting:
            return []
        reason = (
            f"{', '.join(waiting)} uploaded masked parameters in phase {self.phase!r} but did not reveal "
            "their seeds: without them the phase's sum cannot be unmasked (this secure aggregation has no "
            "secret sharing to recover them), so the run waits for them; cancel it to give up"
        )
        self.state.stalled = reason
        return [Stall(self.state.round, self.phase, reason)]

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
        r, phase = self.state.round, self.phase
        if phase == "adapt" and r > 1:
            fresh = fresh_metrics(self.config, self.state.node_metrics, self.state.samples)
            if fresh:
                actions.append(RecordMetrics(r - 1, fresh))
        if phase == "eval":
            round_level = round_metrics(self.config, self.state.node_metrics, self.state.samples)
            if round_level:
                actions.append(RecordMetrics(r, round_level))
        self.state.done = {}
        phases = round_phases(self.config, r)
        if self.state.phase_index + 1 < len(phases):
            self.state.phase_index += 1
        elif r == self.config.rounds:
            self.state.finished = True
            models = dict(self.state.latest)
            if phase == "publish":
                models["target_model"] = submission_key(r, phase, "model", self.config.target.name)
            actions.append(Finish(models=models))
            return actions
        else:
            actions += self._privacy_before(r + 1)
            if self.state.finished:  # stopped by the privacy budget
                return actions
            self.state.round += 1
            self.state.phase_index = 0
            self.state.node_metrics = {}
        return actions + self._open_phase()

    def _privacy_before(self, round_: int) -> list[Action]:
        """Differential privacy's checks before round `round_` opens (every node's sigma, q and DP steps
        per round are known since setup, so its epsilon after the round is too; `fedalign.privacy`)."""
        p = self.config.privacy
        if not p.enabled:
            return []
        actions: list[Action] = []
        samples = {n: s["train"] for n, s in sorted(self.state.samples.items())}
        if round_ == 1 and "delta" not in self.state.privacy_warned:
            large = {n: float(k) for n, k in samples.items() if p.delta * k >= 1}
            if large:
                self.state.privacy_warned.append("delta")
                listed = ", ".join(f"{n} ({int(k)})" for n, k in large.items())
                actions.append(
                    PrivacyWarning(
                        round_,
                        "delta",
                        f"privacy.delta {p.delta:g} is not below 1 / n_train of {listed}: at that delta the "
                        "guarantee allows leaking one whole example outright; choose delta well below "
                        "1 / n_train",
                        large,
                    )
                )
        if p.epsilon_budget is None:
            return actions
        projected = {
            n: projected_epsilon(self.config, self.nodes[n].role, k, round_) for n, k in samples.items()
        }
        over = {n: e for n, e in projected.items() if e > p.epsilon_budget}
        if not over:
            return actions
        spent = ", ".join(f"{n} to {e:.3g}" for n, e in over.items())
        what = f"round {round_} would take {spent}, above the budget of {p.epsilon_budget:g}"
        what += f" (epsilon at delta {p.delta:g})"
        if p.budget_action == "stop":
            self.state.finished = True
            reason = f"privacy budget: {what}; the run stopped after round {round_ - 1}"
            reason += f" of {self.config.rounds}"
            return [*actions, Finish(models=dict(self.state.latest), reason=reason)]
        if "budget" not in self.state.privacy_warned:
            self.state.privacy_warned.append("budget")
            actions.append(PrivacyWarning(round_, "budget", f"privacy budget: {what}; going on", over))
        return actions

    def _open_phase(self) -> list[Action]:
        r, phase = self.state.round, self.phase
        return [RunStep(self._step(n, r, phase)) for n in self.participants(r, phase)]


# ---------------------------------------------------------------------------------------------- metrics


def _weighted(values: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else None


def _disc_parts(
    config: FederationConfig, node_metrics: Mapping[str, Mapping[str, float]], key: str
) -> tuple[float, float] | None:
    """Source-side (pooled, by held-out sample count) and target-side accuracy of D_all."""
    target = config.target.name
    src = [(m[key], m.get("disc_n", 1.0)) for n, m in node_metrics.items() if n != target and key in m]
    tgt = node_metrics.get(target, {}).get(key)
    acc_source = _weighted(src)
    if acc_source is None or tgt is None:
        return None
    return acc_source, tgt


def round_metrics(
    config: FederationConfig,
    node_metrics: Mapping[str, Mapping[str, float]],
    samples: Mapping[str, Mapping[str, int]],
) -> dict[str, float]:
    """A round's federation-level metrics from what each node reported (DESIGN.md section 1)."""
    out: dict[str, float] = {}
    parts = _disc_parts(config, node_metrics, "disc_acc_own")
    if parts:
        out["disc_acc_source"], out["disc_acc_target"] = parts
        out["disc_acc"] = 0.5 * (parts[0] + parts[1])
    target = config.target.name
    if "target_acc" in node_metrics.get(target, {}):
        out["target_acc"] = node_metrics[target]["target_acc"]
    sources = [n.name for n in config.sources]
    for name in ("source_val_acc", "task_loss"):
        value = _weighted(
            [
                (node_metrics[n][name], samples.get(n, {}).get("val", 1))
                for n in sources
                if name in node_metrics.get(n, {})
            ]
        )
        if value is not None:
            out[name] = value
    adv = [m["adv_loss"] for m in node_metrics.values() if "adv_loss" in m]
    if adv:
        out["adv_loss"] = sum(adv) / len(adv)
    return out


def fresh_metrics(
    config: FederationConfig,
    node_metrics: Mapping[str, Mapping[str, float]],
    samples: Mapping[str, Mapping[str, int]],
) -> dict[str, float]:
    """`disc_acc_fresh` and proxy A-distance of the previous round, measured by this round's D_all."""
    parts = _disc_parts(config, node_metrics, "fresh_disc_acc_own")
    if not parts:
        return {}
    acc = 0.5 * (parts[0] + parts[1])
    return {
        "disc_acc_fresh": acc,
        "disc_acc_fresh_source": parts[0],
        "disc_acc_fresh_target": parts[1],
        "pad": 2.0 * (1.0 - 2.0 * (1.0 - acc)),
    }
