"""The orchestrator: feeds what happened to `fedalign.protocol` and carries out its answers as rows.

Feeding one event is one transaction: lock the federation's row, rebuild `Protocol(config, state)` from
it, handle the event, write every action as rows (steps, aggregation jobs, artifacts, metrics, events,
status), save the protocol state, commit. Only then does work leave the process (aggregation jobs are
dispatched, step messages sent to Celery-mode nodes' queues, SSE streams woken). The simulator drives
the same machine in memory (`fedalign.simulate`); this is its database twin, action for action.

A crash before the commit loses nothing that was promised (the event is fed again by whoever retries);
a crash after it leaves rows the sweep resumes from (pending aggregation jobs, expired leases).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.database import Database, lock_blob, lock_federation
from backend.errors import not_found
from backend.models import Aggregation, Artifact, Federation, Metric, Node, Step, StepSpec, utcnow
from backend.observability import logs, metrics
from backend.schemas.events import EventType
from backend.services import events, initial_models, secure
from backend.services.dispatch import AggregationDispatcher, StepDispatcher
from backend.services.events import EventNotifier
from backend.services.messages import StepMessage
from backend.services.store import ArtifactStore, Staged
from fedalign.config import FederationConfig
from fedalign.protocol import (
    Action,
    Aggregate,
    AggregateDone,
    Checkpoint,
    Event,
    Finish,
    InitialiseModels,
    NodeFailed,
    PhaseClosed,
    PrivacyWarning,
    Protocol,
    ProtocolState,
    RecordMetrics,
    RunStep,
    Stall,
)
from messaging.node_api import TERMINAL_STATUSES, SecureSlot

log = logging.getLogger("fedalign.backend")

OPEN_STEP = ("pending", "claimed")
ACTIVE = ("running", "stalled", "paused")
TERMINAL = TERMINAL_STATUSES


def federation_config(federation: Federation) -> FederationConfig:
    return FederationConfig.model_validate(federation.config)


def protocol_state(federation: Federation) -> ProtocolState:
    """The federation's protocol state, as a copy: the machine mutates what it is given, and the ORM must
    still see the column's old value to notice the change."""
    return ProtocolState.from_json(copy.deepcopy(federation.protocol_state or {}))


def open_phase(config: FederationConfig, state: ProtocolState) -> tuple[int, str]:
    protocol = Protocol(config, state)
    return state.round, protocol.phase


@dataclass
class AfterCommit:
    """Work that must wait for the commit: it would be wrong to do it for a transaction that rolls back."""

    aggregations: set[int] = field(default_factory=set)
    # Steps of Celery-mode nodes to send to their queues: a message for a row that rolled back would point
    # at nothing.
    steps: list[StepMessage] = field(default_factory=list)
    # Files that may have lost their last reference.
    garbage: set[str] = field(default_factory=set)
    # Files moved into the store by this transaction: garbage if it rolls back.
    adopted: set[str] = field(default_factory=set)
    notify: bool = False
    # A step became claimable (or the federation's status changed): wake this federation's held task polls.
    steps_ready: bool = False
    # Metrics and log lines about what committed (`backend.observability.metrics`).
    record: list[Callable[[], None]] = field(default_factory=list)


class Transaction:
    """One locked federation inside one database transaction."""

    def __init__(self, orchestrator: Orchestrator, session: Session, federation: Federation) -> None:
        self.orchestrator = orchestrator
        self.session = session
        self.federation = federation
        self.after = AfterCommit()
        self._node_ids: dict[str, str] | None = None
        self._celery_nodes: set[str] | None = None
        self._public_keys: dict[str, str] | None = None
        self._config: FederationConfig | None = None
        # Small averages the protocol asked for in this transaction, to fold before it commits.
        self._to_fold: list[Aggregation] = []
        self._folding = False

    @property
    def store(self) -> ArtifactStore:
        return self.orchestrator.store

    def config(self) -> FederationConfig:
        # Validated once per transaction: a phase's last completion handles several events.
        if self._config is None:
            self._config = federation_config(self.federation)
        return self._config

    def node_ids(self) -> dict[str, str]:
        if self._node_ids is None:
            rows = list(
                self.session.execute(
                    select(Node.name, Node.id, Node.mode).where(Node.federation_id == self.federation.id)
                )
            )
            self._node_ids = {name: node_id for name, node_id, _ in rows}
            self._celery_nodes = {node_id for _, node_id, mode in rows if mode == "celery"}
        return self._node_ids

    def public_keys(self) -> dict[str, str]:
        """The nodes' relayed public keys (secure aggregation); read once per transaction."""
        if self._public_keys is None:
            self._public_keys = secure.public_keys(self.session, self.federation.id)
        return self._public_keys

    def is_celery(self, node_id: str) -> bool:
        self.node_ids()
        assert self._celery_nodes is not None
        return node_id in self._celery_nodes

    def send_after_commit(self, step: Step) -> None:
        """Send ``step`` to its node's queue once this transaction commits (Celery-mode nodes only)."""
        if self.orchestrator.send_steps is not None and self.is_celery(step.node_id):
            self.after.steps.append(StepMessage(step.id, step.node_id, step.federation_id))

    def resend_pending(self) -> None:
        """Send every pending step of this federation's Celery-mode nodes again (after a resume: the
        workers dropped their messages while it was paused)."""
        for step in self.session.scalars(
            select(Step).where(Step.federation_id == self.federation.id, Step.status == "pending")
        ):
            self.send_after_commit(step)

    def event(self, type_: EventType, payload: dict[str, Any]) -> None:
        events.record(self.session, self.federation.id, type_, payload)
        self.after.notify = True

    def set_status(self, status: str, reason: str | None = None) -> None:
        fed = self.federation
        if fed.status == status and fed.stall_reason == reason:
            return
        fed.status = status
        fed.stall_reason = reason
        self.after.steps_ready = True  # a held poll answers "over" at once, or claims after a resume
        if status in TERMINAL:
            fed.finished_at = utcnow()
        self.event("status", {"status": status, "reason": reason})

    def put_artifact(
        self,
        key: str,
        staged: Staged,
        *,
        kind: str,
        model: str,
        round_: int,
        phase: str,
        node: str | None = None,
    ) -> tuple[Artifact, bool]:
        """Store a staged file under ``key``; False when the key already holds these exact bytes."""
        existing = self.session.scalars(
            select(Artifact).where(Artifact.federation_id == self.federation.id, Artifact.key == key)
        ).one_or_none()
        if existing is not None and existing.sha256 == staged.sha256:
            staged.discard()
            return existing, False
        lock_blob(self.session, staged.sha256)
        self.store.adopt(staged)
        self.after.adopted.add(staged.sha256)
        if existing is not None:
            self.after.garbage.add(existing.sha256)
            existing.sha256, existing.size, existing.created_at = staged.sha256, staged.size, utcnow()
            return existing, True
        artifact = Artifact(
            federation_id=self.federation.id,
            key=key,
            sha256=staged.sha256,
            size=staged.size,
            model=model,
            kind=kind,
            round=round_,
            phase=phase,
            node=node,
        )
        self.session.add(artifact)
        return artifact, True

    # ------------------------------------------------------------------------------------------ protocol

    def start(self, config: FederationConfig) -> None:
        """Freeze the config (with its nodes) and run the protocol's start."""
        self.federation.config = config.model_dump(mode="json")
        self._config = config
        protocol = Protocol(config, reveal_steps=True)
        actions = protocol.start()
        self._apply(protocol, actions, before=None)
        self._fold_queued()

    def extend(self, config: FederationConfig) -> None:
        """Continue a finished run under `config`, the same with more rounds (`Protocol.extend`)."""
        protocol = Protocol(config, protocol_state(self.federation), reveal_steps=True)
        actions = protocol.extend()
        self.federation.config = config.model_dump(mode="json")
        self._config = config
        self._apply(protocol, actions, before=None)
        self._fold_queued()

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; `fedalign.protocol.ProtocolError` propagates (and the transaction rolls back).

        The small averages it asks for are folded before the transaction commits, each fed back as
        `AggregateDone`: the completion that closes a phase commits the next phase's steps with it."""
        actions = self._handle_one(event)
        self._fold_queued()
        return actions

    def _fold_queued(self) -> None:
        if self._folding:
            return  # the outermost call folds what the inner events queue
        self._folding = True
        try:
            while self._to_fold:
                self._fold(self._to_fold.pop(0))
        finally:
            self._folding = False

    def _fold(self, job: Aggregation) -> None:
        fold = self.orchestrator.fold
        assert fold is not None  # a job is queued only when there is a folder
        try:
            staged = fold(self, job)
        except Exception:
            # Nothing was written: the job stays pending and goes to the dispatcher after the commit, which
            # retries it and fails the federation if it keeps failing. The completion itself stands.
            log.exception("averaging %s in the completing transaction failed; dispatching it", job.key)
            self.after.aggregations.add(job.id)
            return
        job.status, job.attempts, job.done_at = "done", job.attempts + 1, utcnow()
        self.put_artifact(
            job.key, staged, kind="aggregate", model=job.model, round_=job.round, phase=job.phase
        )
        self.event("aggregate", {"key": job.key, "model": job.model, "round": job.round, "phase": job.phase})
        self._handle_one(AggregateDone(job.key))

    def _handle_one(self, event: Event) -> list[Action]:
        fed = self.federation
        protocol = Protocol(self.config(), protocol_state(fed), reveal_steps=True)
        before = (protocol.state.round, protocol.state.phase_index)
        logs.bind(round=protocol.state.round)
        unmasking_before = protocol.state.unmasking is not None
        actions = protocol.handle(event)
        self._apply(protocol, actions, before=before)
        if protocol.state.unmasking is not None and not unmasking_before:
            # The survivors get a whole phase deadline to reveal, counted from now.
            fed.phase_opened_at = utcnow()
            self.event(
                "unmasking",
                {
                    "round": protocol.state.round,
                    "phase": protocol.phase,
                    "survivors": list(protocol.state.unmasking["survivors"]),
                },
            )
        return actions

    def _apply(self, protocol: Protocol, actions: list[Action], before: tuple[int, int] | None) -> None:
        for action in actions:
            self._carry_out(protocol, action)
        state = protocol.state
        fed = self.federation
        # A JSON round trip: the column must not share (and later see mutated) the machine's objects.
        fed.protocol_state = json.loads(json.dumps(state.to_json()))
        if before is not None and (state.finished or before != (state.round, state.phase_index)):
            closed = metrics.phase_closed(fed.id, protocol.config, before, fed.phase_opened_at)
            self.after.record.append(closed)
        if not state.finished and (before is None or before != (state.round, state.phase_index)):
            fed.phase_opened_at = utcnow()
            self.event("phase", {"round": state.round, "phase": protocol.phase})
        self._cancel_stale_steps(protocol)
        if not state.finished and fed.status == "stalled" and not state.stalled:
            self.set_status("running")

    def _carry_out(self, protocol: Protocol, action: Action) -> None:
        fed = self.federation
        if isinstance(action, InitialiseModels):
            # The federation's initial parameters, split into round 0's aggregates: built by the server for
            # a built-in architecture, uploaded by the creator otherwise (never built here from a plug-in).
            for model, state in initial_models.take(self).models.items():
                staged = self.store.stage_state(state)
                self.put_artifact(
                    action.keys[model], staged, kind="aggregate", model=model, round_=0, phase="init"
                )
        elif isinstance(action, RunStep):
            spec = action.step
            masking: dict[str, SecureSlot] = {}
            if protocol.reveal_steps:
                masking = secure.step_masking(self.session, fed.id, protocol, spec, self.public_keys())
            self._add_step(
                node=spec.node,
                round_=spec.round,
                phase=spec.phase,
                kind=spec.kind,
                model="",
                spec=StepSpec.of_step(spec, masking),
            )
        elif isinstance(action, Aggregate):
            round_, phase = protocol.state.round, protocol.phase
            if action.by == "server":
                job = Aggregation(
                    federation_id=fed.id,
                    key=action.key,
                    model=action.model,
                    round=round_,
                    phase=phase,
                    inputs=dict(action.inputs),
                    weights=dict(action.weights),
                    base=action.base,
                    step=action.step,
                    status="pending",
                    attempts=0,
                )
                self.session.add(job)
                self.session.flush()
                largest = max(
                    self.session.scalars(
                        select(Artifact.size).where(
                            Artifact.federation_id == fed.id, Artifact.key.in_(list(action.inputs.values()))
                        )
                    ),
                    default=0,
                )
                if self.orchestrator.averages_inline(largest):
                    self._to_fold.append(job)
                else:
                    self.after.aggregations.add(job.id)
            else:
                aggregate_masking = None
                if protocol.reveal_steps:
                    aggregate_masking = secure.aggregate_masking(
                        self.session, fed.id, protocol, action, self.public_keys()
                    )
                self._add_step(
                    node=action.by,
                    round_=round_,
                    phase=phase,
                    kind="aggregate",
                    model=action.model,
                    spec=StepSpec.of_aggregate(action, aggregate_masking),
                )
            self.event("aggregation", {"key": action.key, "model": action.model, "by": action.by})
        elif isinstance(action, RecordMetrics):
            self._record_metrics(action)
        elif isinstance(action, NodeFailed):
            self._node_failed(action)
        elif isinstance(action, PhaseClosed):
            self.event(
                "phase_closed",
                {
                    "round": action.round,
                    "phase": action.phase,
                    "missing": action.missing,
                    "reason": action.reason,
                },
            )
        elif isinstance(action, Stall):
            if fed.status in ("running", "stalled"):
                self.set_status("stalled", action.reason)
        elif isinstance(action, Checkpoint):
            fed.checkpoints = {**(fed.checkpoints or {}), str(action.round): action.key}
        elif isinstance(action, Finish):
            fed.final_models = dict(action.models)
            # A run its privacy budget stopped early says why (stall_reason holds a run ending's reason).
            self.set_status("finished", action.reason or None)
        elif isinstance(action, PrivacyWarning):
            payload = {"round": action.round, "kind": action.kind, "message": action.message}
            self.event("privacy_warning", {**payload, "values": action.values})
        else:  # pragma: no cover - the protocol's Action union is closed
            raise TypeError(f"unknown action {action!r}")

    def _node_failed(self, action: NodeFailed) -> None:
        """A node's failed step: an event, and on the node its reason (and "failed" once it is out)."""
        node = self.session.get(Node, self.node_ids()[action.node])
        if node is not None:
            node.failure = action.reason
            if not action.retry:
                node.state = "failed"
        self.event(
            "step_failed",
            {
                "node": action.node,
                "round": action.round,
                "phase": action.phase,
                "aggregate": action.aggregate,
                "reason": action.reason,
                "retryable": action.retryable,
                "failures": action.failures,
                # Offered again; otherwise the phase goes on without the node (a phase_closed event) or the
                # run stalls (a status event), by the quorum rule.
                "retry": action.retry,
            },
        )

    def _add_step(self, *, node: str, round_: int, phase: str, kind: str, model: str, spec: StepSpec) -> None:
        node_id = self.node_ids()[node]
        existing = self.session.scalars(
            select(Step).where(
                Step.federation_id == self.federation.id,
                Step.node_id == node_id,
                Step.round == round_,
                Step.phase == phase,
                Step.kind == kind,
                Step.model == model,
            )
        ).one_or_none()
        if existing is not None:
            if existing.status == "failed":
                # Offered again after a retryable failure: claimable, and sent again to a Celery node.
                existing.status, existing.lease_owner, existing.lease_expires_at = "pending", None, None
                existing.dispatched_at = None
                self.send_after_commit(existing)
                self.after.steps_ready = True
            return
        step = Step(
            federation_id=self.federation.id,
            node_id=node_id,
            round=round_,
            phase=phase,
            kind=kind,
            model=model,
            spec=spec,
            status="pending",
            attempts=0,
        )
        self.session.add(step)
        self.after.steps_ready = True
        if self.orchestrator.send_steps is not None and self.is_celery(node_id):
            self.session.flush()  # the message carries the step's id
            self.send_after_commit(step)

    def _record_metrics(self, action: RecordMetrics) -> None:
        # A later phase of the round may report a name again: the newest value wins, as in the simulator.
        rows = {
            m.name: m
            for m in self.session.scalars(
                select(Metric).where(
                    Metric.federation_id == self.federation.id,
                    Metric.round == action.round,
                    Metric.node.is_(None) if action.node is None else Metric.node == action.node,
                    Metric.name.in_(list(action.metrics)),
                )
            )
        }
        for name, value in action.metrics.items():
            if name in rows:
                rows[name].value = float(value)
            else:
                self.session.add(
                    Metric(
                        federation_id=self.federation.id,
                        round=action.round,
                        node=action.node,
                        name=name,
                        value=float(value),
                    )
                )
        self.event("metrics", {"round": action.round, "node": action.node, "metrics": dict(action.metrics)})

    def _cancel_stale_steps(self, protocol: Protocol) -> None:
        """Steps the protocol no longer waits for: a phase closed without them, or the run ended."""
        state = protocol.state
        wanted = {(s.node, s.round, s.phase) for s in protocol.open_steps()}
        names = {node_id: name for name, node_id in self.node_ids().items()}
        # Runs on every event: the columns it needs, not the rows with their parsed specs. Only a target's
        # aggregate step is judged by its spec (the key of the average it computes).
        open_steps = self.session.execute(
            select(Step.id, Step.node_id, Step.round, Step.phase, Step.kind).where(
                Step.federation_id == self.federation.id, Step.status.in_(OPEN_STEP)
            )
        )
        for step_id, node_id, round_, phase, kind in open_steps.all():
            if kind == "aggregate":
                spec = self.session.get_one(Step, step_id).spec
                stale = state.finished or spec.key not in state.pending
            else:
                stale = (names[node_id], round_, phase) not in wanted
            if stale:
                step = self.session.get_one(Step, step_id)
                step.status = "cancelled"
                step.lease_owner = None
                step.lease_expires_at = None


class Orchestrator:
    """Feeds events to a federation's protocol in locked transactions, then hands on what they produced.

    ``dispatcher`` runs the aggregation jobs a transaction wrote; ``send_steps``, given only when a broker
    is configured, sends Celery-mode nodes' steps to their queues (without it every node polls).

    A job whose largest input is at most ``inline_aggregation_bytes`` is not dispatched: ``fold`` (the
    aggregation service's, set once it is built) averages it inside the transaction that wrote it, which
    stores the result and feeds `AggregateDone` before it commits, so the request that completed a phase's
    last step commits the next phase's steps with it. A small model's average takes less time than a
    message to a worker; a large one goes to the dispatcher, off the request path, as a row claimed, folded
    and stored in transactions of its own, which the sweep dispatches again if this process dies first.
    """

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        notifier: EventNotifier,
        *,
        dispatcher: AggregationDispatcher,
        send_steps: StepDispatcher | None = None,
        inline_aggregation_bytes: int = 0,
        steps_notifier: EventNotifier | None = None,
    ) -> None:
        """``steps_notifier``: woken, per federation, after each commit that made a step claimable (the
        node API's held task polls wait on it)."""
        self.db = db
        self.steps_notifier = steps_notifier or EventNotifier()
        self.store = store
        self.notifier = notifier
        self.dispatcher = dispatcher
        self.send_steps = send_steps
        self.inline_aggregation_bytes = inline_aggregation_bytes
        self.fold: Callable[[Transaction, Aggregation], Staged] | None = None

    def averages_inline(self, largest_input_bytes: int) -> bool:
        """Whether a job whose largest input has this size is averaged in the transaction that writes it."""
        return self.fold is not None and largest_input_bytes <= self.inline_aggregation_bytes

    @contextmanager
    def transaction(self, federation_id: str) -> Iterator[Transaction]:
        """Lock a federation for one transaction; after the commit, dispatch what it produced."""
        tx: Transaction | None = None
        try:
            with self.db.write() as session:
                federation = lock_federation(session, federation_id)
                if federation is None:
                    raise not_found(
                        f"no federation with id {federation_id!r}; list them with GET /api/v1/federations"
                    )
                logs.bind(federation=federation_id)
                tx = Transaction(self, session, federation)
                yield tx
        except BaseException:
            if tx is not None and tx.after.adopted:
                self.collect_garbage(tx.after.adopted)
            raise
        self._after_commit(federation_id, tx.after)

    def _after_commit(self, federation_id: str, after: AfterCommit) -> None:
        if after.aggregations:
            self.dispatcher.dispatch(sorted(after.aggregations))
        if after.steps and self.send_steps is not None:
            self.send_steps(after.steps)
        if after.garbage:
            self.collect_garbage(after.garbage)
        if after.notify:
            self.notifier.notify(federation_id)
        if after.steps_ready:
            self.steps_notifier.notify(federation_id)
        for record in after.record:
            record()

    def collect_garbage(self, shas: Iterable[str]) -> int:
        """Delete the files of ``shas`` that no artifact row references; returns how many were deleted."""
        deleted = 0
        for sha in sorted(set(shas)):
            with self.db.write() as session:
                lock_blob(session, sha)
                referenced = session.scalar(
                    select(func.count()).select_from(Artifact).where(Artifact.sha256 == sha)
                )
                if not referenced:
                    self.store.delete(sha)
                    deleted += 1
        return deleted
