"""A node's side of the API: claim its next step, fetch what the step needs, store what it uploads,
complete it.

Claiming is a conditional UPDATE (``WHERE status = 'pending' OR the lease expired``) whose row count says
who won, so two pollers never hold one step. Completing feeds `StepDone` (or `AggregateDone` for a
target-aggregator step) to the protocol in the same transaction that marks the step done; repeating it
with the same body is answered as the first time and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from backend.errors import ApiError, conflict, forbidden, not_found
from backend.models import Artifact, Federation, Node, SeedReveal, Step, utcnow
from backend.observability import logs, metrics
from backend.schemas.node_api import (
    CompleteRequest,
    CompleteResult,
    NodeFederation,
    PeerNode,
    PublicKeyIn,
    PublicKeyOut,
    PublicKeys,
    RevealRequest,
    Task,
    UploadResult,
)
from backend.security import Credential
from backend.services import secure
from backend.services.manifests import PUBLISHED_SLOT, slot_manifest
from backend.services.orchestrator import (
    OPEN_STEP,
    TERMINAL,
    Orchestrator,
    federation_config,
    open_phase,
    protocol_state,
)
from backend.services.store import Staged
from fedalign import secagg
from fedalign.config import FederationConfig
from fedalign.manifest import Manifest
from fedalign.protocol import AggregateDone, ProtocolError, RevealDone, StepDone

# How many claimable steps one poll tries before answering "nothing" (others may win the race for each).
CLAIM_CANDIDATES = 5


def _federation(session: Session, credential: Credential) -> Federation:
    federation = session.get(Federation, credential.federation_id)
    if federation is None:  # deleted after the token was resolved
        raise not_found("this node's federation no longer exists")
    logs.bind(federation=federation.id, node=credential.node_name)
    return federation


def node_federation(session: Session, credential: Credential) -> NodeFederation:
    federation = _federation(session, credential)
    nodes = list(session.scalars(select(Node).where(Node.federation_id == federation.id).order_by(Node.name)))
    peers = [
        PeerNode(name=n.name, role=n.role, dataset=n.dataset if n.id == credential.node_id else None)
        for n in nodes
    ]  # type: ignore[arg-type]
    me = next(p for p in peers if p.name == credential.node_name)
    return NodeFederation(
        federation_id=federation.id,
        status=federation.status,  # type: ignore[arg-type]
        node_id=credential.node_id or "",
        node=me,
        config={k: v for k, v in federation.config.items() if k != "nodes"},
        nodes=peers,
    )


# ---------------------------------------------------------------------------------------------- claiming


def claim_next(session: Session, credential: Credential, lease_seconds: float) -> tuple[Step | None, str]:
    """Claim the caller's oldest claimable step; returns it (or None) and the federation's status."""
    now = utcnow()
    federation = _federation(session, credential)
    step = None
    if federation.status in ("running", "stalled"):
        step = _claim(session, credential, federation, now, lease_seconds)
        logs.bind(round=step.round if step else None)
    # Last: the node's row is locked after the step's, in the order a completion locks them.
    _seen(session, credential, federation, now)
    return step, federation.status


def _seen(session: Session, credential: Credential, federation: Federation, now: dt.datetime) -> None:
    node = session.get(Node, credential.node_id)
    if node is None:
        return
    node.last_seen = now
    if federation.status in TERMINAL:
        node.state = "finished"
    elif node.state == "registered" and federation.status != "created":
        node.state = "active"
    session.flush()


def _claim(
    session: Session, credential: Credential, federation: Federation, now: dt.datetime, lease_seconds: float
) -> Step | None:
    claimable = or_(Step.status == "pending", and_(Step.status == "claimed", Step.lease_expires_at < now))
    candidates = list(
        session.scalars(
            select(Step.id)
            .where(Step.federation_id == federation.id, Step.node_id == credential.node_id, claimable)
            .order_by(Step.id)
            .limit(CLAIM_CANDIDATES)
        )
    )
    for step_id in candidates:
        if _take_lease(session, step_id, claimable, credential, now, lease_seconds):
            return session.get(Step, step_id, populate_existing=True)
    return None


def _take_lease(
    session: Session,
    step_id: int,
    condition: Any,
    credential: Credential,
    now: dt.datetime,
    lease_seconds: float,
) -> bool:
    """The conditional UPDATE that claims a step; its row count says whether this caller won it."""
    result = session.execute(
        update(Step)
        .where(Step.id == step_id, condition)
        .values(
            status="claimed",
            lease_owner=f"node:{credential.node_name}",
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            claimed_at=now,
            attempts=Step.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim_step(session: Session, credential: Credential, step_id: int, lease_seconds: float) -> Step:
    """Claim one step by id (what a Celery message points at), with a fresh lease.

    The node's own step is claimable while it is pending or claimed: a claimed one was claimed by this
    node (a worker that restarted, or a retry after a network error), and one node's steps run on that
    node's one worker, whose local state follows them in order. Done and cancelled steps, and steps of a
    federation that is not running, answer 409 with a code the worker acts on (drop the message).
    """
    now = utcnow()
    step = own_step(session, credential, step_id)
    federation = _federation(session, credential)
    if federation.status in TERMINAL:
        raise conflict(
            f"federation_{federation.status}",
            f"the federation is {federation.status}; its steps are not run any more",
        )
    if federation.status == "paused":
        raise conflict(
            "federation_paused",
            "the federation is paused; its pending steps are sent again when it resumes",
        )
    if step.status == "done":
        raise conflict("already_completed", f"step {step_id} is already complete; there is nothing to run")
    if step.status == "cancelled":
        raise conflict(
            "wrong_phase", f"round {step.round} phase {step.phase!r} closed without step {step_id}"
        )
    # Completed or cancelled between the read and the update: nothing to run.
    if not _take_lease(session, step_id, Step.status.in_(OPEN_STEP), credential, now, lease_seconds):
        raise conflict("not_claimable", f"step {step_id} is no longer open; there is nothing to run")
    _seen(session, credential, federation, now)
    claimed = session.get(Step, step_id, populate_existing=True)
    assert claimed is not None
    return claimed


def task_of(step: Step, node_name: str, base_url: str) -> Task:
    api = base_url.rstrip("/") + "/api/v1/node"
    spec: dict[str, Any] = step.spec
    assert step.lease_expires_at is not None
    # A reveal step is answered with the node's seeds, at its own endpoint.
    answer = "reveal" if step.kind == "reveal" else "complete"
    return Task(
        step_id=step.id,
        federation_id=step.federation_id,
        node=node_name,
        round=step.round,
        phase=step.phase,
        kind=step.kind,
        model=step.model,
        seed=int(spec.get("seed", 0)),
        downloads={slot: f"{api}/artifacts/{key}" for slot, key in spec["downloads"].items()},
        uploads={slot: f"{api}/steps/{step.id}/uploads/{slot}" for slot in spec["uploads"]},
        complete_url=f"{api}/steps/{step.id}/{answer}",
        lease_expires_at=step.lease_expires_at,
        inputs={node: f"{api}/artifacts/{key}" for node, key in spec.get("inputs", {}).items()},
        weights={node: float(w) for node, w in spec.get("weights", {}).items()},
        secure=spec.get("secure", {}),
    )


# ----------------------------------------------------------------------------------------------- reading


def own_step(session: Session, credential: Credential, step_id: int) -> Step:
    step = session.get(Step, step_id)
    if step is None or step.federation_id != credential.federation_id:
        raise not_found(f"no step {step_id} in this node's federation; poll GET /api/v1/node/task for work")
    if step.node_id != credential.node_id:
        raise forbidden(
            f"step {step_id} belongs to another node; a node uploads and completes only its own steps"
        )
    logs.bind(federation=step.federation_id, node=credential.node_name, round=step.round)
    return step


def artifact_for_node(session: Session, credential: Credential, key: str) -> Artifact:
    """An artifact the caller's open steps need (their downloads, or an aggregate step's inputs)."""
    steps = session.scalars(
        select(Step).where(
            Step.federation_id == credential.federation_id,
            Step.node_id == credential.node_id,
            Step.status.in_(OPEN_STEP),
        )
    )
    needed = any(
        key in s.spec["downloads"].values() or key in s.spec.get("inputs", {}).values() for s in steps
    )
    if not needed:
        raise forbidden(
            f"none of this node's open steps needs artifact {key!r}; a node downloads only what its "
            "claimed task lists"
        )
    artifact = session.scalars(
        select(Artifact).where(Artifact.federation_id == credential.federation_id, Artifact.key == key)
    ).one_or_none()
    if artifact is None:
        raise not_found(f"artifact {key!r} is not stored (yet); poll GET /api/v1/node/task again later")
    logs.bind(federation=artifact.federation_id, node=credential.node_name)
    metrics.download_served(artifact.kind, artifact.size)
    return artifact


# --------------------------------------------------------------------------------------------- uploading


@dataclass(frozen=True)
class UploadTarget:
    key: str
    kind: str  # artifact kind
    model: str
    round: int
    phase: str
    manifest: Manifest
    # Secure aggregation: the upload is masked (int64 ring elements, `fedalign.secagg.validate_masked`).
    masked: bool = False


def _step_is_open(step: Step, federation: Federation) -> None:
    if federation.status in TERMINAL:
        raise conflict(
            f"federation_{federation.status}",
            f"the federation is {federation.status}; it takes no more uploads or completions",
        )
    if step.status == "cancelled":
        raise conflict(
            "wrong_phase",
            f"round {step.round} phase {step.phase!r} closed without this step; poll GET /api/v1/node/task "
            "for the current one",
        )


def upload_target(session: Session, credential: Credential, step_id: int, slot: str) -> UploadTarget:
    """Checks that need no body: whose step, which slot, still open; and the manifest to validate against."""
    step = own_step(session, credential, step_id)
    federation = _federation(session, credential)
    uploads: dict[str, str] = step.spec["uploads"]
    if slot not in uploads:
        raise not_found(
            f"step {step_id} ({step.kind}, round {step.round} phase {step.phase!r}) has no upload slot "
            f"{slot!r}; its slots are {sorted(uploads)}"
        )
    _step_is_open(step, federation)
    config = federation_config(federation)
    if step.kind == "aggregate":
        kind = "aggregate"
    elif slot == PUBLISHED_SLOT:
        kind = "model"
    else:
        kind = "submission"
    return UploadTarget(
        uploads[slot],
        kind,
        slot,
        step.round,
        step.phase,
        slot_manifest(config, slot),
        masked=secure.is_masked(config, step.kind, slot),
    )


def store_upload(
    orchestrator: Orchestrator, credential: Credential, step_id: int, slot: str, staged: Staged
) -> UploadResult:
    assert credential.federation_id is not None
    with orchestrator.transaction(credential.federation_id) as tx:
        target = upload_target(tx.session, credential, step_id, slot)
        tx.after.record.append(functools.partial(metrics.upload_accepted, slot, staged.size))
        step = own_step(tx.session, credential, step_id)
        existing = tx.session.scalars(
            select(Artifact).where(Artifact.federation_id == tx.federation.id, Artifact.key == target.key)
        ).one_or_none()
        if existing is not None and existing.sha256 == staged.sha256:
            staged.discard()
            return UploadResult(key=target.key, sha256=staged.sha256, size=staged.size, stored=False)
        if step.status == "done":
            raise conflict(
                "already_completed",
                f"step {step_id} is complete and its {slot!r} upload differs from the one it completed with; "
                "an upload cannot change after completion",
            )
        if existing is not None and target.masked:
            raise conflict(
                "masked_upload_frozen",
                f"step {step_id} already uploaded different masked {slot!r} parameters; a masked upload "
                "cannot be replaced, since two different uploads under the same masks would reveal their "
                "difference",
            )
        tx.put_artifact(
            target.key,
            staged,
            kind=target.kind,
            model=target.model,
            round_=target.round,
            phase=target.phase,
            node=credential.node_name,
        )
        tx.event(
            "submission",
            {"node": credential.node_name, "key": target.key, "round": step.round, "phase": step.phase},
        )
        return UploadResult(key=target.key, sha256=staged.sha256, size=staged.size, stored=True)


# -------------------------------------------------------------------------------------------- completing


def complete(
    orchestrator: Orchestrator, credential: Credential, step_id: int, body: CompleteRequest
) -> CompleteResult:
    assert credential.federation_id is not None
    result = body.model_dump(mode="json")
    with orchestrator.transaction(credential.federation_id) as tx:
        step = own_step(tx.session, credential, step_id)
        federation = tx.federation
        if step.status == "done":
            if step.result == result:
                return _completed(step, federation)
            raise conflict(
                "already_completed",
                f"step {step_id} was already completed with different metrics or samples; a step completes "
                "once",
            )
        _step_is_open(step, federation)
        spec: dict[str, Any] = step.spec
        stored = set(
            tx.session.scalars(
                select(Artifact.key).where(
                    Artifact.federation_id == federation.id, Artifact.key.in_(list(spec["uploads"].values()))
                )
            )
        )
        missing = sorted(slot for slot, key in spec["uploads"].items() if key not in stored)
        if missing:
            raise conflict(
                "missing_uploads",
                f"step {step_id} cannot complete before its uploads {missing} are stored; PUT them to the "
                "task's upload URLs first",
                {"missing": missing},
            )
        if step.kind == "setup" and body.samples is None:
            raise ApiError(
                422, "missing_samples", "a setup step completes with its sample counts in 'samples'"
            )
        if step.kind == "reveal":
            raise conflict(
                "reveal_step",
                f"step {step_id} is a reveal step; it completes with the node's seeds at "
                f"POST /api/v1/node/steps/{step_id}/reveal",
            )
        if step.kind == "setup" and federation_config(federation).secure_aggregation:
            node = tx.session.get(Node, credential.node_id)
            if node is None or node.public_key is None:
                raise conflict(
                    "missing_public_key",
                    "this federation uses secure aggregation: PUT the node's X25519 public key to "
                    "/api/v1/node/public-key before completing setup",
                )
        step.status, step.result, step.done_at = "done", result, utcnow()
        timing = (step.kind, credential.node_name or "", step.round, step.claimed_at, step.done_at)
        tx.after.record.append(metrics.step_done(step.federation_id, *timing))
        step.lease_owner, step.lease_expires_at = None, None
        tx.event(
            "step_done",
            {"node": credential.node_name, "round": step.round, "phase": step.phase, "kind": step.kind},
        )
        try:
            if step.kind == "aggregate":
                tx.handle(AggregateDone(spec["key"]))
            else:
                tx.handle(
                    StepDone(
                        node=credential.node_name or "",
                        round=step.round,
                        phase=step.phase,
                        uploads=frozenset(spec["uploads"]),
                        metrics=dict(body.metrics),
                        samples=body.samples.model_dump() if body.samples else None,
                    )
                )
        except ProtocolError as exc:
            raise conflict(exc.code, f"the round schedule refused this completion: {exc}") from exc
        if body.samples is not None:
            node = tx.session.get(Node, credential.node_id)
            if node is not None:
                node.samples = body.samples.model_dump()
        return _completed(step, federation)


def _completed(step: Step, federation: Federation) -> CompleteResult:
    round_: int | None = None
    phase: str | None = None
    state = protocol_state(federation)
    if federation.protocol_state and not state.finished:
        round_, phase = open_phase(FederationConfig.model_validate(federation.config), state)
    return CompleteResult(
        step_id=step.id,
        status=step.status,
        federation_status=federation.status,  # type: ignore[arg-type]
        round=round_,
        phase=phase,
    )


# ------------------------------------------------------------------------------------ secure aggregation


def _secure_federation(federation: Federation) -> FederationConfig:
    config = federation_config(federation)
    if not config.secure_aggregation:
        raise conflict(
            "not_secure_aggregation",
            "this federation does not use secure aggregation; its nodes upload plain parameters and have no "
            "keys to exchange or seeds to reveal",
        )
    return config


def put_public_key(orchestrator: Orchestrator, credential: Credential, body: PublicKeyIn) -> PublicKeyOut:
    """Store the caller's X25519 public key (AdvertiseKeys): the same key again is a no-op, another one
    refused."""
    assert credential.federation_id is not None
    try:
        secagg.check_public_key(secure.unb64(body.public_key))
    except secagg.SecAggError as exc:
        raise ApiError(422, "invalid_public_key", f"the public key is refused: {exc}") from exc
    with orchestrator.transaction(credential.federation_id) as tx:
        federation = tx.federation
        _secure_federation(federation)
        if federation.status in TERMINAL:
            raise conflict(
                f"federation_{federation.status}",
                f"the federation is {federation.status}; it takes no more keys",
            )
        node = tx.session.get(Node, credential.node_id)
        if node is None:
            raise not_found("this node no longer exists")
        if node.public_key == body.public_key:
            return PublicKeyOut(node=node.name, public_key=node.public_key, stored=False)
        if node.public_key is not None:
            raise conflict(
                "key_already_set",
                f"node {node.name!r} already sent another public key, and its peers may have masked against "
                "it; a node keeps one key per federation (its private key lives in the node's state "
                "directory: restore it, or register the node in a new federation)",
            )
        node.public_key = body.public_key
        tx.event("public_key", {"node": node.name})
        return PublicKeyOut(node=node.name, public_key=body.public_key, stored=True)


def public_keys_of(session: Session, credential: Credential) -> PublicKeys:
    federation = _federation(session, credential)
    return PublicKeys(public_keys=secure.public_keys(session, federation.id))


def reveal(
    orchestrator: Orchestrator, credential: Credential, step_id: int, body: RevealRequest
) -> CompleteResult:
    """A survivor's seeds for its reveal step (Unmasking): checked against the step, stored, fed as
    `RevealDone`. The same answer again is answered as the first time; a different one is refused."""
    assert credential.federation_id is not None
    seeds = body.model_dump(mode="json")["seeds"]
    with orchestrator.transaction(credential.federation_id) as tx:
        step = own_step(tx.session, credential, step_id)
        federation = tx.federation
        if step.kind != "reveal":
            raise conflict(
                "not_a_reveal_step",
                f"step {step_id} is a {step.kind} step; seeds are revealed only to a reveal step, which a "
                "node gets after a masked phase closes",
            )
        stored = tx.session.scalars(
            select(SeedReveal).where(
                SeedReveal.federation_id == federation.id,
                SeedReveal.round == step.round,
                SeedReveal.phase == step.phase,
                SeedReveal.node == credential.node_name,
            )
        ).one_or_none()
        if step.status == "done":
            if stored is not None and stored.seeds == seeds:
                return _completed(step, federation)
            raise conflict(
                "already_revealed",
                f"step {step_id} was already answered with other seeds; a survivor reveals once, since two "
                "answers could together unmask its upload",
            )
        _step_is_open(step, federation)
        masking: dict[str, Any] = step.spec.get("secure", {})
        if set(seeds) != set(masking):
            raise ApiError(
                422,
                "invalid_reveal",
                f"the reveal must hold seeds for exactly the models {sorted(masking)} of this step; it holds "
                f"{sorted(seeds)}",
            )
        for model, entry in seeds.items():
            dropped = sorted(masking[model]["dropped"])
            if sorted(entry["pair_seeds"]) != dropped:
                raise ApiError(
                    422,
                    "invalid_reveal",
                    f"the seeds for {model!r} must hold pairwise seeds with exactly the dropped nodes "
                    f"{dropped} (never with a survivor); they hold {sorted(entry['pair_seeds'])}",
                )
        tx.session.add(
            SeedReveal(
                federation_id=federation.id,
                round=step.round,
                phase=step.phase,
                node=credential.node_name or "",
                seeds=seeds,
            )
        )
        step.status, step.result, step.done_at = "done", {"revealed": sorted(seeds)}, utcnow()
        step.lease_owner, step.lease_expires_at = None, None
        tx.event(
            "step_done",
            {"node": credential.node_name, "round": step.round, "phase": step.phase, "kind": step.kind},
        )
        try:
            tx.handle(RevealDone(credential.node_name or "", step.round, step.phase))
        except ProtocolError as exc:
            raise conflict(exc.code, f"the round schedule refused this reveal: {exc}") from exc
        return _completed(step, federation)
