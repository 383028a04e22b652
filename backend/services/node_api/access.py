"""The guards every node request passes, in one place: whose federation, whose step, still open.

A node's token (`backend.security.NodeCredential`) reaches its own federation and its own steps only. A
federation that is over takes nothing more, and a step whose phase closed without it is refused with
``wrong_phase``; each refusal says what to do instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import conflict, forbidden, not_found
from backend.models import Federation, Node, Step
from backend.observability import logs
from backend.security import NodeCredential
from backend.services.manifests import federation_manifest, manifest_out
from backend.services.orchestrator import TERMINAL, Orchestrator, Transaction, federation_config
from messaging.node_api import FederationManifest, NodeFederation, PeerNode


def federation_of(session: Session, node: NodeCredential) -> Federation:
    federation = session.get(Federation, node.federation_id)
    if federation is None:  # deleted after the token was resolved
        raise not_found("this node's federation no longer exists")
    logs.bind(federation=federation.id, node=node.node_name)
    return federation


def own_step(session: Session, node: NodeCredential, step_id: int) -> Step:
    step = session.get(Step, step_id)
    if step is None or step.federation_id != node.federation_id:
        raise not_found(f"no step {step_id} in this node's federation; poll GET /api/v1/node/task for work")
    if step.node_id != node.node_id:
        raise forbidden(
            f"step {step_id} belongs to another node; a node uploads and completes only its own steps"
        )
    logs.bind(federation=step.federation_id, node=node.node_name, round=step.round)
    return step


@contextmanager
def step_transaction(
    orchestrator: Orchestrator, node: NodeCredential, step_id: int
) -> Iterator[tuple[Transaction, Step]]:
    """The node's federation locked for one transaction, with the node's own step ``step_id``."""
    with orchestrator.transaction(node.federation_id) as tx:
        yield tx, own_step(tx.session, node, step_id)


def refuse_if_over(federation: Federation, what_stops: str) -> None:
    """409 ``federation_<status>`` once the federation is over; ``what_stops`` completes the sentence."""
    if federation.status in TERMINAL:
        raise conflict(
            f"federation_{federation.status}", f"the federation is {federation.status}; {what_stops}"
        )


def refuse_if_cancelled(step: Step) -> None:
    """409 ``wrong_phase`` for a step whose phase closed without it (a result that came too late)."""
    if step.status == "cancelled":
        raise conflict(
            "wrong_phase",
            f"round {step.round} phase {step.phase!r} closed without step {step.id}; poll GET "
            "/api/v1/node/task for the current one",
        )


def refuse_if_closed(step: Step, federation: Federation) -> None:
    """A step takes uploads and its completion only while it and its federation are open."""
    refuse_if_over(federation, "it takes no more uploads or completions")
    refuse_if_cancelled(step)
    if step.status == "failed":
        raise conflict(
            "step_failed",
            f"this node reported step {step.id} failed ({step.failure}); the phase goes on without it",
        )


def mark_seen(session: Session, node: NodeCredential, federation: Federation, now: dt.datetime) -> None:
    """Note that the node asked for work: when, and (as its federation stands) whether it is active."""
    row = session.get(Node, node.node_id)
    if row is None:
        return
    row.last_seen = now
    if federation.status in TERMINAL:
        row.state = "finished"
    elif row.state == "registered" and federation.status != "created":
        row.state = "active"
    session.flush()


def node_federation(session: Session, node: NodeCredential) -> NodeFederation:
    """What the node may see of its federation: the config, itself, the others' names and roles."""
    federation = federation_of(session, node)
    rows = session.scalars(select(Node).where(Node.federation_id == federation.id).order_by(Node.name))
    peers = [
        PeerNode(name=n.name, role=n.role, dataset=n.dataset if n.id == node.node_id else None)  # type: ignore[arg-type]
        for n in rows
    ]
    me = next(p for p in peers if p.name == node.node_name)
    return NodeFederation(
        federation_id=federation.id,
        status=federation.status,  # type: ignore[arg-type]
        node_id=node.node_id,
        node=me,
        config={k: v for k, v in federation.config.items() if k != "nodes"},
        nodes=peers,
    )


def node_manifest(session: Session, node: NodeCredential) -> FederationManifest:
    """The federation's model manifest, as its nodes read it before and at setup."""
    federation = federation_of(session, node)
    return manifest_out(federation_manifest(federation), federation_config(federation))
