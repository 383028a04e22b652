"""Claiming a node's steps with a lease, renewing it by heartbeat, and the task a claimed step is answered
with.

Claiming is a conditional UPDATE (``WHERE status = 'pending' OR the lease expired``) whose row count says
who won, so two pollers never hold one step. A lease is short (``lease_seconds``): whoever runs the step
renews it with a heartbeat every third of it, so a step may take as long as it needs while a worker that
died holding one loses it within a lease, and the sweep hands it out again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from backend.errors import conflict, not_found
from backend.models import Federation, Step, utcnow
from backend.observability import logs
from backend.security import NodeCredential
from backend.services.node_api.access import (
    federation_of,
    mark_seen,
    own_step,
    refuse_if_cancelled,
    refuse_if_over,
)
from backend.services.orchestrator import OPEN_STEP
from messaging.node_api import HEARTBEATS_PER_LEASE, HeartbeatResult, Task

# How many claimable steps one poll tries before answering "nothing" (others may win the race for each).
CLAIM_CANDIDATES = 5


def claim_next(session: Session, node: NodeCredential, lease_seconds: float) -> tuple[Step | None, str]:
    """Claim the caller's oldest claimable step; returns it (or None) and the federation's status."""
    now = utcnow()
    federation = federation_of(session, node)
    step = None
    if federation.status in ("running", "stalled"):
        step = _claim(session, node, federation, now, lease_seconds)
        logs.bind(round=step.round if step else None)
    # Last: the node's row is locked after the step's, in the order a completion locks them.
    mark_seen(session, node, federation, now)
    return step, federation.status


def _claim(
    session: Session, node: NodeCredential, federation: Federation, now: dt.datetime, lease_seconds: float
) -> Step | None:
    claimable = or_(Step.status == "pending", and_(Step.status == "claimed", Step.lease_expires_at < now))
    candidates = list(
        session.scalars(
            select(Step.id)
            .where(Step.federation_id == federation.id, Step.node_id == node.node_id, claimable)
            .order_by(Step.id)
            .limit(CLAIM_CANDIDATES)
        )
    )
    for step_id in candidates:
        if _take_lease(session, step_id, claimable, node, now, lease_seconds):
            return _claimed(session, step_id)
    return None


def _take_lease(
    session: Session,
    step_id: int,
    condition: Any,
    node: NodeCredential,
    now: dt.datetime,
    lease_seconds: float,
) -> bool:
    """The conditional UPDATE that claims a step; its row count says whether this caller won it."""
    result = session.execute(
        update(Step)
        .where(Step.id == step_id, condition)
        .values(
            status="claimed",
            lease_owner=f"node:{node.node_name}",
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            claimed_at=now,
            attempts=Step.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _claimed(session: Session, step_id: int) -> Step:
    """The step just claimed, read again: the UPDATE bypassed the session's copy."""
    step = session.get(Step, step_id, populate_existing=True)
    if step is None:  # its federation was deleted since: nothing to run
        raise not_found(f"step {step_id} no longer exists; poll GET /api/v1/node/task for work")
    return step


def claim_step(session: Session, node: NodeCredential, step_id: int, lease_seconds: float) -> Step:
    """Claim one step by id (what a Celery message points at), with a fresh lease.

    The node's own step is claimable while it is pending or claimed: a claimed one was claimed by this
    node (a worker that restarted, or a retry after a network error), and one node's steps run on that
    node's one worker, whose local state follows them in order. Done and cancelled steps, and steps of a
    federation that is not running, answer 409 with a code the worker acts on (drop the message).
    """
    now = utcnow()
    step = own_step(session, node, step_id)
    federation = federation_of(session, node)
    refuse_if_over(federation, "its steps are not run any more")
    if federation.status == "paused":
        raise conflict(
            "federation_paused",
            "the federation is paused; its pending steps are sent again when it resumes",
        )
    if step.status == "done":
        raise conflict("already_completed", f"step {step_id} is already complete; there is nothing to run")
    if step.status == "failed":
        raise conflict(
            "step_failed", f"this node reported step {step_id} failed ({step.failure}); it is not run again"
        )
    refuse_if_cancelled(step)
    # Completed or cancelled between the read and the update: nothing to run.
    if not _take_lease(session, step_id, Step.status.in_(OPEN_STEP), node, now, lease_seconds):
        raise conflict("not_claimable", f"step {step_id} is no longer open; there is nothing to run")
    mark_seen(session, node, federation, now)
    return _claimed(session, step_id)


def renew(session: Session, node: NodeCredential, step_id: int, lease_seconds: float) -> HeartbeatResult:
    """Renew the lease of the node's own open step ``step_id`` (a heartbeat) for ``lease_seconds`` from now.

    A step the sweep released (its heartbeats were late) is taken back: the node that sends them is still
    running it, and one node's steps run one at a time on that node. A step that is done, failed or
    cancelled, or a federation that is over, answers 409 with a code that says which: the step's result is
    not wanted any more (or, done, already had), so the node may stop. A paused federation's step in flight
    keeps its lease: its result is still taken.
    """
    now = utcnow()
    step = own_step(session, node, step_id)
    refuse_if_over(federation_of(session, node), "its steps are not run any more")
    if step.status == "done":
        raise conflict("already_completed", f"step {step_id} is already complete; its lease is over")
    if step.status == "failed":
        raise conflict("step_failed", f"this node reported step {step_id} failed ({step.failure})")
    refuse_if_cancelled(step)
    expires = now + dt.timedelta(seconds=lease_seconds)
    result = session.execute(
        update(Step)
        .where(Step.id == step_id, Step.status.in_(OPEN_STEP))
        .values(status="claimed", lease_owner=f"node:{node.node_name}", lease_expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # completed or cancelled between the read and the update
        raise conflict("not_claimable", f"step {step_id} is no longer open; its lease is over")
    return HeartbeatResult(step_id=step_id, lease_expires_at=expires)


def task_of(step: Step, node: NodeCredential, base_url: str, lease_seconds: float) -> Task:
    """The claimed ``step`` as its node gets it: the URLs to download from, upload to and answer at."""
    api = base_url.rstrip("/") + "/api/v1/node"
    spec = step.spec
    if step.lease_expires_at is None:  # pragma: no cover - a claim always sets the lease
        raise ValueError(f"step {step.id} is not claimed; only a claimed step is a task")
    # A reveal step is answered with the node's seeds, at its own endpoint.
    answer = "reveal" if step.kind == "reveal" else "complete"
    return Task(
        step_id=step.id,
        federation_id=step.federation_id,
        node=node.node_name,
        round=step.round,
        phase=step.phase,
        kind=step.kind,
        model=step.model,
        seed=spec.seed,
        downloads={slot: f"{api}/artifacts/{key}" for slot, key in spec.downloads.items()},
        uploads={slot: f"{api}/steps/{step.id}/uploads/{slot}" for slot in spec.uploads},
        complete_url=f"{api}/steps/{step.id}/{answer}",
        fail_url=f"{api}/steps/{step.id}/fail",
        lease_expires_at=step.lease_expires_at,
        heartbeat_url=f"{api}/steps/{step.id}/heartbeat",
        heartbeat_s=round(lease_seconds / HEARTBEATS_PER_LEASE, 3),  # a readable number on the wire
        inputs={name: f"{api}/artifacts/{key}" for name, key in spec.inputs.items()},
        weights=dict(spec.weights),
        step=spec.step,
        secure=dict(spec.secure),
        submit_url=None if step.kind == "reveal" else f"{api}/steps/{step.id}/submit",
    )
