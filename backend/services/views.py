"""Read models for the management API: rounds, metric series, aggregations, the published model."""

from __future__ import annotations

import csv
import io
from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.errors import conflict, not_found
from backend.models import Aggregation, Artifact, Event, Federation, Metric, Node, Step
from backend.schemas.aggregations import AggregationOut
from backend.schemas.metrics import MetricPoint, MetricSeries, MetricSeriesList
from backend.schemas.published import CheckpointOut, PublishedModel, TensorOut
from backend.schemas.rounds import (
    ArtifactOut,
    LeftOut,
    MetricsOut,
    PhaseOut,
    RoundList,
    RoundOut,
    RoundSummary,
    StepOut,
)
from backend.services.manifests import federation_manifest, manifest_out, published_manifest
from backend.services.orchestrator import federation_config, protocol_state
from fedalign.metrics import selected_checkpoint
from fedalign.model_card import ModelCard
from fedalign.phases import round_phases
from fedalign.protocol import Protocol, ProtocolState
from messaging.node_api import FederationManifest

INIT_PHASE = "init"


def _progress(federation: Federation) -> tuple[ProtocolState, int]:
    """The protocol state and the last round that has begun."""
    state = protocol_state(federation)
    config = federation_config(federation)
    return state, config.rounds if state.finished else state.round


def _started(federation: Federation) -> None:
    if federation.status == "created" or not federation.protocol_state:
        raise conflict(
            "not_started",
            f"federation {federation.name!r} has not started, so it has no rounds yet; "
            f"start it with POST /api/v1/federations/{federation.id}/start",
        )


def round_list(session: Session, federation: Federation) -> RoundList:
    if federation.status == "created" or not federation.protocol_state:
        return RoundList(items=[])
    config = federation_config(federation)
    state, last = _progress(federation)
    open_phase = None if state.finished else Protocol(config, state).phase
    by_round: dict[int, dict[str, float]] = defaultdict(dict)
    for m in session.scalars(
        select(Metric).where(Metric.federation_id == federation.id, Metric.node.is_(None))
    ):
        by_round[m.round][m.name] = m.value
    left_out: dict[int, list[LeftOut]] = defaultdict(list)
    for e in session.scalars(
        select(Event)
        .where(Event.federation_id == federation.id, Event.type == "phase_closed")
        .order_by(Event.id)
    ):
        if e.payload.get("missing"):
            left_out[int(e.payload["round"])].append(
                LeftOut(
                    phase=e.payload["phase"], nodes=list(e.payload["missing"]), reason=e.payload["reason"]
                )
            )
    items = []
    for r in range(last + 1):
        current = r == state.round and not state.finished
        items.append(
            RoundSummary(
                round=r,
                state="open" if current else "done",
                phases=round_phases(config, r),
                open_phase=open_phase if current else None,
                metrics=by_round.get(r, {}),
                left_out=left_out.get(r, []),
            )
        )
    return RoundList(items=items)


def round_detail(session: Session, federation: Federation, round_: int) -> RoundOut:
    _started(federation)
    config = federation_config(federation)
    if not 0 <= round_ <= config.rounds:
        raise not_found(f"round {round_} does not exist; this federation has rounds 0..{config.rounds}")
    state, _ = _progress(federation)
    names = dict(session.execute(select(Node.id, Node.name).where(Node.federation_id == federation.id)).all())
    steps = list(
        session.scalars(
            select(Step).where(Step.federation_id == federation.id, Step.round == round_).order_by(Step.id)
        )
    )
    artifacts = list(
        session.scalars(
            select(Artifact)
            .where(Artifact.federation_id == federation.id, Artifact.round == round_)
            .order_by(Artifact.key)
        )
    )
    phases = []
    for index, phase in enumerate(round_phases(config, round_)):
        in_phase = {phase, INIT_PHASE} if round_ == 0 else {phase}
        phases.append(
            PhaseOut(
                name=phase,
                state=_phase_state(state, round_, index),
                steps=[_step_out(s, names) for s in steps if s.phase == phase],
                submissions=[
                    _artifact_out(a) for a in artifacts if a.phase in in_phase and a.kind != "aggregate"
                ],
                aggregates=[
                    _artifact_out(a) for a in artifacts if a.phase in in_phase and a.kind == "aggregate"
                ],
            )
        )
    metrics = MetricsOut(federation={}, nodes={})
    for m in session.scalars(
        select(Metric).where(Metric.federation_id == federation.id, Metric.round == round_)
    ):
        if m.node is None:
            metrics.federation[m.name] = m.value
        else:
            metrics.nodes.setdefault(m.node, {})[m.name] = m.value
    if state.finished or round_ < state.round:
        round_state = "done"
    elif round_ == state.round:
        round_state = "open"
    else:
        round_state = "upcoming"
    return RoundOut(round=round_, state=round_state, phases=phases, metrics=metrics)  # type: ignore[arg-type]


def _phase_state(state: ProtocolState, round_: int, index: int) -> str:
    if state.finished or round_ < state.round:
        return "closed"
    if round_ > state.round or index > state.phase_index:
        return "upcoming"
    if index < state.phase_index:
        return "closed"
    return "aggregating" if state.pending else "open"


def _step_out(step: Step, names: dict[str, str]) -> StepOut:
    return StepOut(
        id=step.id,
        node=names.get(step.node_id, "?"),
        kind=step.kind,
        model=step.model,
        status=step.status,  # type: ignore[arg-type]
        attempts=step.attempts,
        failure=step.failure,
        lease_expires_at=step.lease_expires_at,
        claimed_at=step.claimed_at,
        done_at=step.done_at,
    )


def _artifact_out(artifact: Artifact) -> ArtifactOut:
    return ArtifactOut(
        key=artifact.key,
        model=artifact.model,
        kind=artifact.kind,  # type: ignore[arg-type]
        node=artifact.node,
        sha256=artifact.sha256,
        size=artifact.size,
        created_at=artifact.created_at,
    )


def metric_series(
    session: Session, federation: Federation, node: str | None, name: str | None
) -> MetricSeriesList:
    # Read first: a metric recorded after this read comes with a later event, so a client that follows the
    # stream from here may see a point twice (it replaces its round) but never misses one.
    last_event = session.scalar(select(func.max(Event.id)).where(Event.federation_id == federation.id))
    query = select(Metric).where(Metric.federation_id == federation.id)
    if node is not None:
        query = query.where(Metric.node == node)
    if name is not None:
        query = query.where(Metric.name == name)
    series: dict[tuple[str | None, str], list[MetricPoint]] = defaultdict(list)
    for m in session.scalars(query.order_by(Metric.round)):
        series[(m.node, m.name)].append(MetricPoint(round=m.round, value=m.value))
    ordered = sorted(series.items(), key=lambda item: (item[0][0] is not None, item[0][0] or "", item[0][1]))
    return MetricSeriesList(
        federation_id=federation.id,
        series=[MetricSeries(name=n, node=nd, points=points) for (nd, n), points in ordered],
        last_event_id=last_event or 0,
    )


def metrics_csv(session: Session, federation: Federation) -> str:
    rows: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
    names: set[str] = set()
    for m in session.scalars(select(Metric).where(Metric.federation_id == federation.id)):
        rows[(m.round, m.node or "")][m.name] = m.value
        names.add(m.name)
    columns = sorted(names)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["round", "node", *columns])
    # The federation's own row first in each round (its node is empty), then nodes by name.
    for (round_, node), values in sorted(rows.items()):
        writer.writerow([round_, node, *(repr(values[c]) if c in values else "" for c in columns)])
    return out.getvalue()


def aggregations(session: Session, federation: Federation) -> list[AggregationOut]:
    out = [
        AggregationOut(
            key=job.key,
            model=job.model,
            round=job.round,
            phase=job.phase,
            by="server",
            status=job.status,
            attempts=job.attempts,
            error=job.error,
            created_at=job.created_at,
            done_at=job.done_at,
        )
        for job in session.scalars(
            select(Aggregation).where(Aggregation.federation_id == federation.id).order_by(Aggregation.id)
        )
    ]
    names = dict(session.execute(select(Node.id, Node.name).where(Node.federation_id == federation.id)).all())
    out += [
        AggregationOut(
            key=step.spec.aggregate_key,
            model=step.model,
            round=step.round,
            phase=step.phase,
            by=names.get(step.node_id, "?"),
            status=step.status,
            attempts=step.attempts,
            error=None,
            created_at=step.created_at,
            done_at=step.done_at,
        )
        for step in session.scalars(
            select(Step)
            .where(Step.federation_id == federation.id, Step.kind == "aggregate")
            .order_by(Step.id)
        )
    ]
    return out


def published_artifact(session: Session, federation: Federation) -> Artifact:
    config = federation_config(federation)
    if not config.publish_model:
        raise not_found(
            f"federation {federation.name!r} does not publish its model (publish_model = false); the model "
            "stays on the target node"
        )
    key = (federation.final_models or {}).get("target_model")
    if federation.status != "finished" or key is None:
        raise conflict(
            "not_published",
            f"federation {federation.name!r} is {federation.status}; its target publishes the model when the "
            "last round ends",
        )
    artifact = session.scalars(
        select(Artifact).where(Artifact.federation_id == federation.id, Artifact.key == key)
    ).one_or_none()
    if artifact is None:
        raise not_found(f"the published model {key!r} is no longer stored")
    return artifact


def target_model_card(federation: Federation, round_: int | None = None) -> ModelCard:
    """The card of the federation's target model (or of its checkpoint of `round_`), derived from its config
    and model manifest (nodes never send one: their uploads carry tensors only)."""
    # The stored manifest document: the server never builds a plug-in's models.
    config = federation_config(federation)
    return ModelCard.of(config, federation_manifest(federation), federation_id=federation.id, round_=round_)


def model_card(session: Session, federation: Federation) -> PublishedModel:
    artifact = published_artifact(session, federation)
    config = federation_config(federation)
    metrics = {
        m.name: m.value
        for m in session.scalars(
            select(Metric).where(
                Metric.federation_id == federation.id, Metric.round == config.rounds, Metric.node.is_(None)
            )
        )
    }
    return PublishedModel(
        federation_id=federation.id,
        federation=federation.name,
        algorithm=config.algorithm,
        architecture=config.architecture,
        model=config.model.model_dump(mode="json"),
        round=config.rounds,
        target=config.target.name,
        sha256=artifact.sha256,
        size=artifact.size,
        metrics=metrics,
        manifest=[
            TensorOut(name=t.name, shape=list(t.shape), dtype=t.dtype)
            for t in published_manifest(federation_manifest(federation))
        ],
        card=target_model_card(federation),
    )


def federation_manifest_out(federation: Federation) -> FederationManifest:
    """The federation's models before a run (the admin's view; a node's is the same)."""
    return manifest_out(federation_manifest(federation), federation_config(federation))


def checkpoints(session: Session, federation: Federation) -> list[tuple[CheckpointOut, Artifact]]:
    """The federation's checkpoints so far, by round, each with its stored file; the selected one marked."""
    keys = {int(round_): key for round_, key in (federation.checkpoints or {}).items()}
    if not keys:
        return []
    artifacts = {
        a.key: a
        for a in session.scalars(
            select(Artifact).where(
                Artifact.federation_id == federation.id, Artifact.key.in_(list(keys.values()))
            )
        )
    }
    accuracy = dict(
        session.execute(
            select(Metric.round, Metric.value).where(
                Metric.federation_id == federation.id,
                Metric.node.is_(None),
                Metric.name == "source_val_acc",
                Metric.round.in_(list(keys)),
            )
        ).all()
    )
    stored = {r: k for r, k in keys.items() if k in artifacts}
    chosen = selected_checkpoint({r: accuracy.get(r) for r in stored})
    return [
        (
            CheckpointOut(
                round=r,
                source_val_acc=accuracy.get(r),
                selected=r == chosen,
                sha256=artifacts[k].sha256,
                size=artifacts[k].size,
            ),
            artifacts[k],
        )
        for r, k in sorted(stored.items())
    ]


def checkpoint(session: Session, federation: Federation, round_: int) -> Artifact:
    for out, artifact in checkpoints(session, federation):
        if out.round == round_:
            return artifact
    kept = ", ".join(str(r) for r in sorted(int(r) for r in (federation.checkpoints or {}))) or "none yet"
    raise not_found(
        f"federation {federation.name!r} has no checkpoint of round {round_} (checkpoints: {kept})"
    )
