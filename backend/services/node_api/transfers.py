"""A node's downloads (the artifacts its open steps need) and uploads (its steps' results).

An upload is checked in two parts: `upload_target` before the body is read (whose step, which slot,
still open; the manifest to validate against), and `store_upload` after it was validated, under the
federation's lock. The same bytes again are a no-op; different bytes after completion, or for a masked
slot, are refused.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import conflict, forbidden, not_found
from backend.models import Artifact, Federation, Step
from backend.observability import logs, metrics
from backend.security import NodeCredential
from backend.services import secure
from backend.services.manifests import PUBLISHED_SLOT, federation_manifest, slot_manifest
from backend.services.node_api.access import federation_of, own_step, refuse_if_closed, step_transaction
from backend.services.orchestrator import OPEN_STEP, Orchestrator, Transaction, federation_config
from backend.services.store import ArtifactStore, Staged
from fedalign.manifest import Manifest
from messaging.node_api import Task, UploadResult

# What one task carries inline at most, in all, in units of the per-artifact limit: an aggregate step of
# many nodes lists many small inputs, and past this they are fetched as before.
INLINE_BUDGET_ARTIFACTS = 8


def artifact_for_node(session: Session, node: NodeCredential, key: str) -> Artifact:
    """An artifact the caller's open steps need (their downloads, or an aggregate step's inputs)."""
    steps = session.scalars(
        select(Step).where(
            Step.federation_id == node.federation_id,
            Step.node_id == node.node_id,
            Step.status.in_(OPEN_STEP),
        )
    )
    needed = any(key in s.spec.downloads.values() or key in s.spec.inputs.values() for s in steps)
    if not needed:
        raise forbidden(
            f"none of this node's open steps needs artifact {key!r}; a node downloads only what its "
            "claimed task lists"
        )
    artifact = session.scalars(
        select(Artifact).where(Artifact.federation_id == node.federation_id, Artifact.key == key)
    ).one_or_none()
    if artifact is None:
        raise not_found(f"artifact {key!r} is not stored (yet); poll GET /api/v1/node/task again later")
    logs.bind(federation=artifact.federation_id, node=node.node_name)
    metrics.download_served(artifact.kind, artifact.size)
    return artifact


@dataclass(frozen=True)
class InlineFile:
    url: str
    kind: str  # artifact kind
    size: int
    path: Path


@dataclass(frozen=True)
class InlinePlan:
    """A claimed task and the artifacts to carry inline with it: chosen inside the claim's transaction from
    the metadata, read after its commit (`with_inline_downloads`), so that no file is read while the
    database's write lock is held."""

    task: Task
    files: tuple[InlineFile, ...] = ()


def plan_inline_downloads(
    session: Session, store: ArtifactStore, step: Step, task: Task, max_bytes: int
) -> InlinePlan:
    """Which of the artifacts ``step`` downloads (and folds) go inline: those of at most ``max_bytes``, up to
    a budget of `INLINE_BUDGET_ARTIFACTS` times that in all; larger ones stay URLs."""
    spec = step.spec
    urls = {key: task.downloads[slot] for slot, key in spec.downloads.items()}
    urls |= {key: task.inputs[node] for node, key in spec.inputs.items()}
    if max_bytes <= 0 or not urls:
        return InlinePlan(task)
    rows = session.scalars(
        select(Artifact)
        .where(Artifact.federation_id == step.federation_id, Artifact.key.in_(list(urls)))
        .order_by(Artifact.key)
    )
    files: list[InlineFile] = []
    budget = max_bytes * INLINE_BUDGET_ARTIFACTS
    for artifact in rows:
        if artifact.size > max_bytes or artifact.size > budget:
            continue
        budget -= artifact.size
        path = store.path(artifact.sha256)
        files.append(InlineFile(urls[artifact.key], artifact.kind, artifact.size, path))
    return InlinePlan(task, tuple(files))


def with_inline_downloads(plan: InlinePlan) -> Task:
    """The planned task with its small downloads inline, base64 in the JSON, keyed by their download URL.

    Base64 in the task's JSON rather than a multipart answer: one response type, which the OpenAPI document,
    the generated clients and `messaging.node_api.Task` already describe, and no multipart parser on the
    node; a third more bytes is nothing for the small models (a discriminator: tens of KB) this is for.
    Artifacts are content-addressed and never rewritten, so reading them after the commit reads what the
    transaction saw; one that retention removed meanwhile just stays a URL."""
    if not plan.files:
        return plan.task
    inline: dict[str, str] = {}
    for file in plan.files:
        try:
            data = file.path.read_bytes()
        except FileNotFoundError:
            continue
        inline[file.url] = base64.b64encode(data).decode("ascii")
        metrics.download_served(file.kind, file.size)
    return plan.task.model_copy(update={"inline": inline})


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


def upload_target(session: Session, node: NodeCredential, step_id: int, slot: str) -> UploadTarget:
    """Checks that need no body: whose step, which slot, still open; and the manifest to validate against."""
    step = own_step(session, node, step_id)
    return target_of(step, federation_of(session, node), slot)


def target_of(step: Step, federation: Federation, slot: str) -> UploadTarget:
    uploads = step.spec.uploads
    if slot not in uploads:
        raise not_found(
            f"step {step.id} ({step.kind}, round {step.round} phase {step.phase!r}) has no upload slot "
            f"{slot!r}; its slots are {sorted(uploads)}"
        )
    refuse_if_closed(step, federation)
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
        slot_manifest(federation_manifest(federation), slot),
        masked=secure.is_masked(config, step.kind, slot),
    )


def store_upload(
    orchestrator: Orchestrator, node: NodeCredential, step_id: int, slot: str, staged: Staged
) -> UploadResult:
    """Store a validated upload under its slot's key (checked again under the lock)."""
    with step_transaction(orchestrator, node, step_id) as (tx, step):
        return store_in(tx, step, node, slot, staged)


def store_in(tx: Transaction, step: Step, node: NodeCredential, slot: str, staged: Staged) -> UploadResult:
    """`store_upload` inside the caller's transaction (a submission stores several, then completes)."""
    step_id = step.id
    target = target_of(step, tx.federation, slot)
    tx.after.record.append(functools.partial(metrics.upload_accepted, slot, staged.size))
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
        node=node.node_name,
    )
    tx.event(
        "submission",
        {"node": node.node_name, "key": target.key, "round": step.round, "phase": step.phase},
    )
    return UploadResult(key=target.key, sha256=staged.sha256, size=staged.size, stored=True)
