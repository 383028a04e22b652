"""Completing a step: its uploads stored, its metrics (and sample counts) recorded, the protocol fed.

Completing feeds `StepDone` (or `AggregateDone` for a target-aggregator step) to the protocol in the same
transaction that marks the step done; repeating it with the same body is answered as the first time and
changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from backend.errors import ApiError, conflict
from backend.models import Artifact, Federation, Node, Step, utcnow
from backend.observability import metrics
from backend.security import NodeCredential
from backend.services.node_api.access import refuse_if_closed, step_transaction
from backend.services.node_api.share_checks import check_sealed_shares
from backend.services.orchestrator import (
    Orchestrator,
    Transaction,
    federation_config,
    open_phase,
    protocol_state,
)
from fedalign.protocol import AggregateDone, ProtocolError, StepDone
from messaging.node_api import CompleteRequest, CompleteResult


def complete(
    orchestrator: Orchestrator, node: NodeCredential, step_id: int, body: CompleteRequest
) -> CompleteResult:
    with step_transaction(orchestrator, node, step_id) as (tx, step):
        return complete_in(tx, step, node, body)


def complete_in(tx: Transaction, step: Step, node: NodeCredential, body: CompleteRequest) -> CompleteResult:
    """`complete` inside the caller's transaction (after a combined submission stored its uploads)."""
    result = body.model_dump(mode="json")
    step_id = step.id
    federation = tx.federation
    if step.status == "done":
        if step.result == result:
            return answer(step, federation)
        raise conflict(
            "already_completed",
            f"step {step_id} was already completed with different metrics or samples; a step completes once",
        )
    refuse_if_closed(step, federation)
    spec = step.spec
    stored = set(
        tx.session.scalars(
            select(Artifact.key).where(
                Artifact.federation_id == federation.id, Artifact.key.in_(list(spec.uploads.values()))
            )
        )
    )
    missing = sorted(slot for slot, key in spec.uploads.items() if key not in stored)
    if missing:
        raise conflict(
            "missing_uploads",
            f"step {step_id} cannot complete before its uploads {missing} are stored; PUT them to the "
            "task's upload URLs first",
            {"missing": missing},
        )
    if step.kind == "setup" and body.samples is None:
        raise ApiError(422, "missing_samples", "a setup step completes with its sample counts in 'samples'")
    if step.kind == "reveal":
        raise conflict(
            "reveal_step",
            f"step {step_id} is a reveal step; it completes with the node's seeds at "
            f"POST /api/v1/node/steps/{step_id}/reveal",
        )
    check_sealed_shares(step, result["shares"])
    if step.kind == "setup" and federation_config(federation).secure_aggregation:
        row = tx.session.get(Node, node.node_id)
        if row is None or row.public_key is None:
            raise conflict(
                "missing_public_key",
                "this federation uses secure aggregation: PUT the node's X25519 public key to "
                "/api/v1/node/public-key before completing setup",
            )
    mark_done(tx, step, node, result)
    timing = (step.kind, node.node_name, step.round, step.claimed_at, step.done_at)
    tx.after.record.append(metrics.step_done(step.federation_id, *timing))
    try:
        if step.kind == "aggregate":
            tx.handle(AggregateDone(spec.aggregate_key))
        else:
            tx.handle(
                StepDone(
                    node=node.node_name,
                    round=step.round,
                    phase=step.phase,
                    uploads=frozenset(spec.uploads),
                    metrics=dict(body.metrics),
                    samples=body.samples.model_dump() if body.samples else None,
                )
            )
    except ProtocolError as exc:
        raise conflict(exc.code, f"the round schedule refused this completion: {exc}") from exc
    row = tx.session.get(Node, node.node_id)
    if row is not None:
        if body.samples is not None:
            row.samples = body.samples.model_dump()
        if row.state == "failed":  # out of an earlier phase, back in this one (its reason stays)
            row.state = "active"
    return answer(step, federation)


def mark_done(tx: Transaction, step: Step, node: NodeCredential, result: dict[str, Any]) -> None:
    """The step done with ``result`` (kept to recognise a repeated answer), its lease released."""
    step.status, step.result, step.done_at = "done", result, utcnow()
    step.lease_owner, step.lease_expires_at = None, None
    tx.event(
        "step_done", {"node": node.node_name, "round": step.round, "phase": step.phase, "kind": step.kind}
    )


def answer(step: Step, federation: Federation) -> CompleteResult:
    """What a completion (or a reveal) is answered with: the step's status and the federation's open phase."""
    round_: int | None = None
    phase: str | None = None
    state = protocol_state(federation)
    if federation.protocol_state and not state.finished:
        round_, phase = open_phase(federation_config(federation), state)
    return CompleteResult(
        step_id=step.id,
        status=step.status,
        federation_status=federation.status,  # type: ignore[arg-type]
        round=round_,
        phase=phase,
    )
