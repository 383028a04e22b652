"""Federation lifecycle: create, register nodes, start / pause / resume / cancel, delete.

Every change to one federation runs in `Orchestrator.transaction`, with its row locked, so a transition
and a node's completion never interleave.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.access import BOOTSTRAP_COORDINATOR, AccessCredential
from backend.errors import ApiError, conflict, forbidden, not_found, unauthorized
from backend.models import Aggregation, Artifact, Federation, Metric, Node, Step, TrackerExport, utcnow
from backend.observability import logs
from backend.schemas.federations import (
    FederationOut,
    InitialModelOut,
    JoinToken,
    JoinTokenLimits,
    Progress,
    TrackerExportOut,
)
from backend.schemas.nodes import NodeCreate, NodeCreated, NodeOut
from backend.security import (
    JOIN_PREFIX,
    NODE_PREFIX,
    Credential,
    JoinCredential,
    new_token,
    token_hash,
)
from backend.services import events, initial_models
from backend.services.node_commands import run_command
from backend.services.orchestrator import (
    OPEN_STEP,
    TERMINAL,
    Orchestrator,
    federation_config,
    open_phase,
    protocol_state,
)
from backend.settings import Settings
from fedalign.architecture_names import BUILTINS
from fedalign.config import FederationConfig
from fedalign.trackers import Destinations

ROUTES = "list them with GET /api/v1/federations"


PROGRESS_METRICS = ("target_acc", "disc_acc")


Latest = dict[str, tuple[int, float]]  # metric name -> (round, value) of its latest record


def latest_metrics(session: Session, federation_ids: list[str]) -> dict[str, Latest]:
    """The latest target and discriminator accuracy of each federation, in one query."""
    latest: dict[str, Latest] = {fid: {} for fid in federation_ids}
    if federation_ids:
        rows = session.execute(
            select(Metric.federation_id, Metric.name, Metric.round, Metric.value).where(
                Metric.federation_id.in_(federation_ids),
                Metric.node.is_(None),
                Metric.name.in_(PROGRESS_METRICS),
            )
        )
        for federation_id, name, round_, value in rows:
            seen = latest[federation_id].get(name)
            if seen is None or round_ > seen[0]:
                latest[federation_id][name] = (round_, value)
    return latest


def tracker_exports_of(session: Session, federation_ids: list[str]) -> dict[str, list[TrackerExportOut]]:
    exports: dict[str, list[TrackerExportOut]] = {fid: [] for fid in federation_ids}
    if federation_ids:
        rows = session.scalars(
            select(TrackerExport)
            .where(TrackerExport.federation_id.in_(federation_ids))
            .order_by(TrackerExport.tracker)
        )
        for row in rows:
            exports[row.federation_id].append(
                TrackerExportOut(
                    tracker=row.tracker,  # type: ignore[arg-type]
                    run_id=row.run_id,
                    exported_round=row.exported_round,
                    finished=row.finished,
                    error=row.error,
                )
            )
    return exports


def federation_out(
    federation: Federation,
    node_names: list[str],
    latest: Latest,
    initial_model: InitialModelOut,
    trackers: list[TrackerExportOut],
) -> FederationOut:
    round_: int | None = None
    phase: str | None = None
    done = 0
    if federation.protocol_state and federation.status != "created":
        state = protocol_state(federation)
        config = federation_config(federation)
        if state.finished:
            done = config.rounds
        else:
            round_, phase = open_phase(config, state)
            done = max(0, state.round - 1)
    target, disc = latest.get("target_acc"), latest.get("disc_acc")
    measured = [m[0] for m in (target, disc) if m is not None]
    return FederationOut(
        id=federation.id,
        name=federation.name,
        status=federation.status,  # type: ignore[arg-type]
        stall_reason=federation.stall_reason,
        owner_organisation=federation.owner_organisation,
        config={k: v for k, v in federation.config.items() if k != "nodes"},
        nodes=node_names,
        round=round_,
        phase=phase,
        progress=Progress(
            rounds_done=done,
            target_acc=target[1] if target else None,
            disc_acc=disc[1] if disc else None,
            round_of_metrics=max(measured) if measured else None,
        ),
        model_published=(
            federation.status == "finished"
            and bool(federation.config.get("publish_model", True))
            and "target_model" in (federation.final_models or {})
        ),
        initial_model=initial_model,
        trackers=trackers,
        created_at=federation.created_at,
        updated_at=federation.updated_at,
        started_at=federation.started_at,
        finished_at=federation.finished_at,
    )


# Which nodes a caller may see, by the node's organisation (`backend.access.sees_node`); None: every node.
NodeFilter = Callable[[str | None], bool] | None


def view(session: Session, federation: Federation, sees_node: NodeFilter = None) -> FederationOut:
    latest = latest_metrics(session, [federation.id])[federation.id]
    initial = initial_models.initial_models_of(session, [federation.id])[federation.id]
    trackers = tracker_exports_of(session, [federation.id])[federation.id]
    names = node_names(session, federation.id, sees_node)
    return federation_out(federation, names, latest, initial, trackers)


def views_of(
    session: Session, federations: list[Federation], sees_node: NodeFilter = None
) -> list[FederationOut]:
    ids = [f.id for f in federations]
    latest = latest_metrics(session, ids)
    names: dict[str, list[str]] = {fid: [] for fid in ids}
    if ids:
        rows = session.execute(
            select(Node.federation_id, Node.name, Node.organisation)
            .where(Node.federation_id.in_(ids))
            .order_by(Node.name)
        )
        for federation_id, name, organisation in rows:
            if sees_node is None or sees_node(organisation):
                names[federation_id].append(name)
    initial = initial_models.initial_models_of(session, ids)
    trackers = tracker_exports_of(session, ids)
    return [federation_out(f, names[f.id], latest[f.id], initial[f.id], trackers[f.id]) for f in federations]


def node_out(node: Node, federation_status: str | None = None) -> NodeOut:
    # A Celery-mode node never polls after the last step, so its row alone would stay "active"; a node that
    # failed stays failed.
    state = "finished" if federation_status in TERMINAL and node.state != "failed" else node.state
    return NodeOut(
        id=node.id,
        federation_id=node.federation_id,
        name=node.name,
        role=node.role,  # type: ignore[arg-type]
        organisation=node.organisation,
        dataset=node.dataset,
        mode=node.mode,  # type: ignore[arg-type]
        state=state,
        samples=node.samples,
        failure=node.failure,
        last_seen=node.last_seen,
        created_at=node.created_at,
    )


def node_created(node: Node, token: str, api_url: str, settings: Settings) -> NodeCreated:
    """A node just registered: its view, its token (shown once) and the command its machine runs."""
    command = run_command(node.mode, node.name, token, api_url, settings)
    return NodeCreated(**node_out(node).model_dump(), token=token, run_command=command)


def node_names(session: Session, federation_id: str, sees_node: NodeFilter = None) -> list[str]:
    rows = session.execute(
        select(Node.name, Node.organisation).where(Node.federation_id == federation_id).order_by(Node.name)
    )
    return [name for name, organisation in rows if sees_node is None or sees_node(organisation)]


def nodes_of(session: Session, federation_id: str) -> list[Node]:
    return list(session.scalars(select(Node).where(Node.federation_id == federation_id).order_by(Node.name)))


def all_federations(session: Session) -> list[Federation]:
    return list(session.scalars(select(Federation).order_by(Federation.created_at.desc(), Federation.id)))


def create(
    orchestrator: Orchestrator,
    settings: dict[str, Any],
    max_upload_bytes: int,
    trackers: Destinations | None = None,
    owner_organisation: str | None = None,
) -> tuple[Federation, str]:
    """A new federation (owned by `owner_organisation`, if any); for a built-in architecture (without
    init_checkpoint) with its initial parameters and their manifest document, built here when its settings
    allow (otherwise the start says what is wrong); for a plug-in, its creator uploads them."""
    db = orchestrator.db
    try:
        config = FederationConfig.model_validate(settings)
    except ValidationError as exc:
        # The request's schema checks each field; rules across fields (secure aggregation's) are checked here.
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise ApiError(422, "invalid_request", f"the federation's settings are invalid: {problems}") from exc
    unavailable = [t for t in config.trackers or () if t not in (trackers or Destinations()).configured()]
    if unavailable:
        raise ApiError(
            422,
            "invalid_request",
            f"the federation streams to {', '.join(unavailable)}, which this deployment does not configure "
            "(FEDALIGN_MLFLOW_TRACKING_URI, FEDALIGN_TENSORBOARD_DIR); leave trackers unset for what it has",
        )
    initial = None
    if initial_models.server_builds(config):
        # Settings the architecture cannot take (an input shape it cannot read, a model too large to upload)
        # are refused here, with what is wrong (422), checked on the meta device before anything is built.
        initial = initial_models.build(config, max_upload_bytes)
    elif config.architecture in BUILTINS:
        # A built-in started from a checkpoint: the server does not build its parameters, but its document
        # is the server's own to check (a plug-in's is checked when its creator uploads it).
        initial_models.check_size(initial_models.builtin_manifest(config), max_upload_bytes)
    token = new_token(JOIN_PREFIX)
    federation = Federation(
        id=str(uuid.uuid4()),
        name=config.name,
        config=config.model_dump(mode="json", exclude={"nodes"}),
        status="created",
        join_token_hash=token_hash(token),
        owner_organisation=owner_organisation,
    )
    with db.write() as session:
        session.add(federation)
        session.flush()
        events.record(session, federation.id, "status", {"status": "created", "reason": None})
    if initial is not None:
        # Should this fail, the start builds them (`initial_models.ensure_ready`).
        initial_models.attach_built(orchestrator, federation.id, initial)
    return federation, token


def get(session: Session, federation_id: str) -> Federation:
    federation = session.get(Federation, federation_id)
    if federation is None:
        raise not_found(f"no federation with id {federation_id!r}; {ROUTES}")
    logs.bind(federation=federation.id)
    return federation


def delete(orchestrator: Orchestrator, federation_id: str) -> None:
    with orchestrator.transaction(federation_id) as tx:
        shas = set(tx.session.scalars(select(Artifact.sha256).where(Artifact.federation_id == federation_id)))
        # Rows of steps, artifacts, metrics, events, nodes and jobs go with it (ON DELETE CASCADE).
        tx.session.delete(tx.federation)
        tx.after.garbage |= shas


def clone(
    orchestrator: Orchestrator,
    source_id: str,
    overrides: dict[str, Any],
    with_nodes: bool,
    max_upload_bytes: int,
    trackers: Destinations | None = None,
    by: AccessCredential | None = None,
) -> tuple[Federation, str, list[tuple[Node, str]]]:
    """A new federation with the same config (and, with_nodes, the same nodes under new tokens). An uploaded
    initial model comes along when the copy's models are the same (same architecture, model settings, seed
    and local-parameter policy); otherwise the copy needs its own upload before it starts. The copy has the
    original's owner organisation, and its nodes their organisations; `by` registers them."""
    db = orchestrator.db
    with db.read() as session:
        original = get(session, source_id)
        settings = {k: v for k, v in original.config.items() if k != "nodes"}
        name = overrides.pop("name", None) or f"{original.name} (copy)"[:200]
        owner = original.owner_organisation
        nodes = [
            NodeCreate(
                name=n.name,
                role=n.role,  # type: ignore[arg-type]
                dataset=n.dataset,
                mode=n.mode,  # type: ignore[arg-type]
                organisation=n.organisation,
            )
            for n in nodes_of(session, source_id)
        ]
    try:
        federation, join_token = create(
            orchestrator, {**settings, **overrides, "name": name}, max_upload_bytes, trackers, owner
        )
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise ApiError(422, "invalid_request", f"the copy's settings are invalid: {problems}") from exc
    if not initial_models.server_builds(federation_config(federation)):
        initial_models.copy(orchestrator, source_id, federation.id)
    registered = []
    if with_nodes:
        registrar = by or BOOTSTRAP_COORDINATOR
        try:
            registered = [register_node(orchestrator, federation.id, n, registrar) for n in nodes]
        except ApiError:
            delete(orchestrator, federation.id)  # all or nothing: no half-copied federation stays behind
            raise
    return federation, join_token, registered


# ------------------------------------------------------------------------------------------------ nodes


def register_node(
    orchestrator: Orchestrator, federation_id: str, body: NodeCreate, credential: Credential
) -> tuple[Node, str]:
    """`credential`: a manager the route let through (`backend.access`), or a join token, which registers
    only in its own federation, within its limits, and in the organisation it fixes."""
    if not isinstance(credential, AccessCredential | JoinCredential) or (
        isinstance(credential, JoinCredential) and credential.federation_id != federation_id
    ):
        raise forbidden(
            "this token cannot register nodes here; use a manager's token or this federation's join token"
        )
    with orchestrator.transaction(federation_id) as tx:
        fed = tx.federation
        if fed.status != "created":
            raise conflict(
                "already_started",
                f"federation {fed.name!r} is {fed.status}; nodes register before it starts, so create a "
                "new federation to add this node",
            )
        existing = list(tx.session.scalars(select(Node).where(Node.federation_id == federation_id)))
        if body.mode == "celery" and orchestrator.send_steps is None:
            raise conflict(
                "no_broker",
                "a node in mode 'celery' gets its steps as messages, and this server has no broker "
                "(FEDALIGN_BROKER_URL); register it in mode 'rest' (it polls GET /api/v1/node/task) or "
                "configure a broker",
            )
        organisation = body.organisation
        if isinstance(credential, JoinCredential):
            _check_join_limits(fed, body.role)
            organisation = _join_organisation(fed, body.organisation)
        if any(n.name == body.name for n in existing):
            raise conflict(
                "duplicate_name", f"a node named {body.name!r} is already registered; choose another name"
            )
        if body.role == "target":
            target = next((n for n in existing if n.role == "target"), None)
            if target is not None:
                raise conflict(
                    "second_target",
                    f"node {target.name!r} is already this federation's target and a federation has exactly "
                    "one; register this node as a source or delete the other first",
                )
        token = new_token(NODE_PREFIX)
        node = Node(
            id=str(uuid.uuid4()),
            federation_id=federation_id,
            name=body.name,
            role=body.role,
            organisation=organisation,
            dataset=body.dataset,
            mode=body.mode,
            token_hash=token_hash(token),
            state="registered",
        )
        tx.session.add(node)
        if isinstance(credential, JoinCredential) and fed.join_registrations_left is not None:
            fed.join_registrations_left -= 1
        tx.session.flush()
        tx.event(
            "node_registered",
            {"node": node.name, "role": node.role, "mode": node.mode, "organisation": node.organisation},
        )
    return node, token


def get_node(session: Session, federation_id: str, name: str) -> Node:
    get(session, federation_id)
    node = session.scalars(
        select(Node).where(Node.federation_id == federation_id, Node.name == name)
    ).one_or_none()
    if node is None:
        raise not_found(
            f"federation {federation_id!r} has no node named {name!r}; "
            f"list them with GET /api/v1/federations/{federation_id}/nodes"
        )
    return node


def rotate_node_token(orchestrator: Orchestrator, federation_id: str, name: str) -> tuple[Node, str]:
    """A new token for the node; its old one stops working at once (the node runs on with the new one)."""
    token = new_token(NODE_PREFIX)
    with orchestrator.transaction(federation_id) as tx:
        node = get_node(tx.session, federation_id, name)
        node.token_hash = token_hash(token)
        tx.session.flush()
    return node, token


def revoke_node_token(orchestrator: Orchestrator, federation_id: str, name: str) -> None:
    """The node's token stops working at once; it has none until rotated (a new one is issued)."""
    with orchestrator.transaction(federation_id) as tx:
        node = get_node(tx.session, federation_id, name)
        # The hash of a token nobody was ever shown: no bearer token matches it.
        node.token_hash = token_hash(new_token(NODE_PREFIX))


def rotate_join_token(orchestrator: Orchestrator, federation_id: str, limits: JoinTokenLimits) -> JoinToken:
    """A new join token for the federation, within `limits`; the old one stops working at once."""
    token = new_token(JOIN_PREFIX)
    expires_at = (
        utcnow() + dt.timedelta(seconds=limits.expires_in_s) if limits.expires_in_s is not None else None
    )
    with orchestrator.transaction(federation_id) as tx:
        fed = tx.federation
        fed.join_token_hash = token_hash(token)
        fed.join_expires_at = expires_at
        fed.join_registrations_left = limits.max_registrations
        fed.join_roles = list(limits.roles) if limits.roles is not None else None
        fed.join_organisation = limits.organisation
    return JoinToken(
        join_token=token,
        expires_at=expires_at,
        registrations_left=limits.max_registrations,
        roles=limits.roles,
        organisation=limits.organisation,
    )


def revoke_join_token(orchestrator: Orchestrator, federation_id: str) -> None:
    """The federation's join token stops working at once: no more registrations until it is rotated."""
    with orchestrator.transaction(federation_id) as tx:
        tx.federation.join_token_hash = token_hash(new_token(JOIN_PREFIX))


def _check_join_limits(fed: Federation, role: str) -> None:
    """A join token's limits (`rotate_join_token`), before it registers a node in role `role`."""
    if fed.join_expires_at is not None and utcnow() >= fed.join_expires_at:
        raise unauthorized(
            f"this join token expired at {fed.join_expires_at.isoformat()}; ask the coordinator for a new one"
        )
    if fed.join_registrations_left is not None and fed.join_registrations_left <= 0:
        raise forbidden(
            "this join token has registered all the nodes it may; ask the coordinator for a new one"
        )
    if fed.join_roles is not None and role not in fed.join_roles:
        allowed = " or ".join(fed.join_roles)
        raise forbidden(f"this join token registers only {allowed} nodes, not a {role}")


def _join_organisation(fed: Federation, asked: str | None) -> str | None:
    """The organisation of a node a join token registers: the one the token fixes, if it fixes one."""
    fixed = fed.join_organisation
    if fixed is None:
        return asked
    if asked is not None and asked != fixed:
        raise forbidden(
            f"this join token registers nodes of organisation {fixed!r} only, not {asked!r}; leave "
            "organisation out or ask the coordinator for your organisation's join token"
        )
    return fixed


def delete_node(orchestrator: Orchestrator, federation_id: str, name: str) -> None:
    with orchestrator.transaction(federation_id) as tx:
        node = get_node(tx.session, federation_id, name)
        if tx.federation.status != "created":
            raise conflict(
                "already_started",
                f"federation {tx.federation.name!r} is {tx.federation.status}; nodes can only be removed "
                "before it starts (cancel it instead)",
            )
        tx.session.delete(node)
        tx.event("node_removed", {"node": name})


# ------------------------------------------------------------------------------------------- transitions


def _illegal(federation: Federation, action: str, allowed: str) -> ApiError:
    return conflict(
        "illegal_transition",
        f"cannot {action} federation {federation.name!r} while it is {federation.status}; "
        f"{action} applies to a federation that is {allowed}",
        {"status": federation.status},
    )


def start(orchestrator: Orchestrator, federation_id: str, max_upload_bytes: int) -> None:
    with orchestrator.transaction(federation_id) as tx:
        fed = tx.federation
        if fed.status != "created":
            raise _illegal(fed, "start", "created")
        nodes = list(tx.session.scalars(select(Node).where(Node.federation_id == fed.id).order_by(Node.name)))
        if not any(n.role == "target" for n in nodes):
            raise conflict(
                "no_target", "the federation has no target node; register one (role 'target') before starting"
            )
        if not any(n.role == "source" for n in nodes):
            raise conflict(
                "no_source", "the federation has no source node; register at least one before starting"
            )
        try:
            config = FederationConfig.model_validate(
                {
                    **fed.config,
                    "nodes": [{"name": n.name, "role": n.role, "dataset": n.dataset} for n in nodes],
                }
            )
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            raise conflict("invalid_federation", f"the federation cannot start: {problems}") from exc
        initial_models.ensure_ready(tx, config, max_upload_bytes)
        fed.started_at = utcnow()
        tx.set_status("running")
        tx.start(config)


def continue_for(orchestrator: Orchestrator, federation_id: str, rounds: int) -> None:
    """A finished federation goes on for `rounds` more rounds from its last state (its nodes' too: a REST
    node that left when the run finished is started again with the same data directory)."""
    with orchestrator.transaction(federation_id) as tx:
        fed = tx.federation
        if fed.status != "finished":
            raise _illegal(fed, "continue", "finished")
        if fed.stall_reason:  # a run its privacy budget ended says so here
            raise conflict("cannot_continue", f"the federation cannot go on: {fed.stall_reason}")
        config = federation_config(fed)
        try:
            longer = FederationConfig.model_validate({**fed.config, "rounds": config.rounds + rounds})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ApiError(422, "invalid_request", f"the federation cannot go on: {problems}") from exc
        fed.finished_at = None
        tx.set_status("running", None)
        tx.extend(longer)


def pause(orchestrator: Orchestrator, federation_id: str) -> None:
    with orchestrator.transaction(federation_id) as tx:
        if tx.federation.status not in ("running", "stalled"):
            raise _illegal(tx.federation, "pause", "running or stalled")
        tx.set_status("paused")


def resume(orchestrator: Orchestrator, federation_id: str) -> None:
    with orchestrator.transaction(federation_id) as tx:
        fed = tx.federation
        if fed.status != "paused":
            raise _illegal(fed, "resume", "paused")
        state = protocol_state(fed)
        # Time spent paused does not count against the phase deadline.
        fed.phase_opened_at = utcnow()
        tx.set_status("stalled" if state.stalled else "running", state.stalled)
        tx.resend_pending()


def cancel(orchestrator: Orchestrator, federation_id: str) -> None:
    with orchestrator.transaction(federation_id) as tx:
        fed = tx.federation
        if fed.status in TERMINAL:
            raise _illegal(fed, "cancel", "created, running, paused or stalled")
        for step in tx.session.scalars(
            select(Step).where(Step.federation_id == fed.id, Step.status.in_(OPEN_STEP))
        ):
            step.status, step.lease_owner, step.lease_expires_at = "cancelled", None, None
        for job in tx.session.scalars(
            select(Aggregation).where(Aggregation.federation_id == fed.id, Aggregation.status == "pending")
        ):
            job.status = "cancelled"
        tx.set_status("cancelled")
