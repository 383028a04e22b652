"""Database tables (SQLAlchemy 2.0 typed ORM). Request and response shapes live in `backend.schemas`.

The database is the source of truth: a step is a row, not a message, and a federation's whole protocol
state is one JSON column, so a restarted server carries on from what it finds here.

``nodes`` rows are a node's *membership* of one federation. A node that outlives its federations (one
organisation's identity across many) can come later as its own table referenced from here, without
changing how steps, artifacts and metrics point at memberships.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from messaging.node_api import BASE_SLOT, SecureSlot

if TYPE_CHECKING:
    from fedalign.protocol import Aggregate
    from fedalign.protocol import StepSpec as ProtocolStep

# Constraint names fixed by convention, so Alembic can alter them on SQLite (batch mode) and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Autoincrement that SQLite also honours with a 64-bit type on PostgreSQL.
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive and would return them so)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class StepSpec(BaseModel):
    """What one step reads and writes, by artifact key: `Step.spec`, from which its node's task is made.

    The stored form of `fedalign.protocol.StepSpec` (the artifacts to start from and to upload, the seed)
    and of a target's aggregate step (``key``, ``inputs``, ``weights``); ``secure`` is a masked phase's
    masking per slot (`backend.services.secure`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    downloads: dict[str, str]  # slot -> the key of the aggregate to load first
    uploads: dict[str, str]  # slot -> the key its upload is stored under
    seed: int
    # A target's aggregate step: the key of the average it computes (fed back as `AggregateDone`), and
    # the phase's submissions (node -> key) with their normalised weights.
    key: str | None = None
    inputs: dict[str, str] = {}
    weights: dict[str, float] = {}
    # With a server step: how far past its base (the download in slot BASE_SLOT) the average is stepped
    # (`fedalign.protocol.Aggregate`).
    step: float = 1.0
    secure: dict[str, SecureSlot] = {}

    @property
    def aggregate_key(self) -> str:
        """An aggregate step's ``key``; a ValueError for any other step."""
        if self.key is None:
            raise ValueError("this step spec has no aggregate key: it is not an aggregate step")
        return self.key

    @classmethod
    def of_step(cls, step: ProtocolStep, secure: dict[str, SecureSlot]) -> StepSpec:
        """A node's own step (setup, training, evaluation, publishing, reveal); ``secure``: its masking."""
        # Fields are set only where they apply, so the stored JSON holds only those (`StepSpecJSON`).
        if secure:
            return cls(downloads=step.downloads, uploads=step.uploads, seed=step.seed, secure=secure)
        return cls(downloads=step.downloads, uploads=step.uploads, seed=step.seed)

    @classmethod
    def of_aggregate(cls, action: Aggregate, secure: dict[str, SecureSlot] | None) -> StepSpec:
        """A target's aggregate step: average the phase's submissions into ``action.key``."""
        fields: dict[str, Any] = {
            "downloads": {},
            "uploads": {action.model: action.key},
            "seed": 0,
            "key": action.key,
            "inputs": dict(action.inputs),
            "weights": dict(action.weights),
        }
        if action.base is not None:
            fields |= {"downloads": {BASE_SLOT: action.base}, "step": action.step}
        if secure is not None:
            fields["secure"] = secure
        return cls(**fields)


class StepSpecJSON(TypeDecorator[StepSpec]):
    """`StepSpec` in a JSON column, parsed once when the row loads.

    Written as the fields that were set (``exclude_unset``): exactly the JSON the orchestrator wrote before
    this type existed, so old rows and new ones have one format and no migration is needed.
    """

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: StepSpec | None, dialect: Dialect) -> dict[str, Any] | None:
        return None if value is None else value.model_dump(mode="json", exclude_unset=True)

    def process_result_value(self, value: dict[str, Any] | None, dialect: Dialect) -> StepSpec | None:
        return None if value is None else StepSpec.model_validate(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}


class Federation(Base):
    __tablename__ = "federations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # FederationConfig as JSON: without nodes until start, with the registered nodes from then on.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    protocol_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    join_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Limits of the join token, set when it is rotated with them (none: it registers any node until revoked).
    join_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    join_registrations_left: Mapped[int | None] = mapped_column(Integer, default=None)
    join_roles: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # The organisation a join token fixes for the nodes it registers (none: each node names its own).
    join_organisation: Mapped[str | None] = mapped_column(String(64), default=None)
    # The organisation that owns the federation (its creator's): its owner tokens manage it. None: only the
    # coordinator does (a federation the coordinator created for no organisation).
    owner_organisation: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    stall_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Final artifact keys per model (Finish action); "target_model" is the published model.
    final_models: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The model manifest document of its initial parameters (`fedalign.model_manifest`): built by the
    # server for a built-in architecture, uploaded by the creator otherwise. Every upload is checked
    # against it; the server never builds a plug-in's models.
    # Deferred: it can be large (a ResNet's lists hundreds of tensors) and most requests never read it.
    model_manifest: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), default=None, deferred=True
    )
    phase_opened_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The target's checkpoints (checkpoint_every, and the final model): round (as text) -> artifact key.
    checkpoints: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Every experiment tracker it streams to has its whole run (`backend.services.trackers`).
    trackers_done: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Node(Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("federation_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    # The organisation that runs the node (set at registration; a join token may fix it): its viewer
    # tokens see the federations the node takes part in.
    organisation: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    dataset: Mapped[str] = mapped_column(String(1024))
    mode: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    samples: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # registered -> active (claimed a step) -> finished; failed when it is out of a phase after a step it
    # reported failed (`failure` says why).
    state: Mapped[str] = mapped_column(String(16), default="registered")
    # The reason of the node's last failed step (`POST /api/v1/node/steps/{id}/fail`).
    failure: Mapped[str | None] = mapped_column(Text, default=None)
    last_seen: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Secure aggregation: the node's X25519 public key (base64), relayed to its peers; set once. The private
    # key never leaves the node.
    public_key: Mapped[str | None] = mapped_column(String(44), default=None)


class Step(Base):
    """One node's instruction for one phase; ``kind`` "aggregate" is the target averaging ``model``.

    The target has both its own training step and, when it aggregates, one aggregate step per model in
    the same phase, so the key is (federation, node, round, phase, kind, model) with ``model`` "" for
    training steps.
    """

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("federation_id", "node_id", "round", "phase", "kind", "model"),
        Index("ix_steps_claim", "federation_id", "node_id", "status"),
        Index("ix_steps_lease", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(16), default="")
    spec: Mapped[StepSpec] = mapped_column(StepSpecJSON)
    # pending -> claimed -> done; cancelled when its phase closed without it or the federation ended;
    # failed when its node reported it failed (pending again when it is offered again).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Why it last failed, as its node reported it.
    failure: Mapped[str | None] = mapped_column(Text, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # What the node reported on completion, kept to recognise a repeated completion.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    done_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Celery-mode nodes: when the message pointing at this step was last sent (None: not yet, or its lease
    # expired). The sweep sends again what is pending and unsent, or sent long ago.
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Artifact(Base):
    """Metadata of one stored parameter file; the bytes live in the content-addressed store by sha256."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("federation_id", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(16))
    # aggregate | submission | model | initial (the federation's initial parameters, key "initial")
    kind: Mapped[str] = mapped_column(String(16))
    round: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(32))
    node: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Aggregation(Base):
    """A server-side average to compute (Aggregate action with by="server"), claimed with a lease."""

    __tablename__ = "aggregations"
    __table_args__ = (UniqueConstraint("federation_id", "key"), Index("ix_aggregations_status", "status"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(16))
    round: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(32))
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The aggregate the average is stepped past, and by how much (`fedalign.protocol.Aggregate`).
    base: Mapped[str | None] = mapped_column(String(255), default=None)
    step: Mapped[float] = mapped_column(Float(precision=53), default=1.0, server_default="1")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|done|failed
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class SeedReveal(Base):
    """A survivor's answer to a masked phase's Unmasking round (secure aggregation).

    ``seeds`` maps each model the node uploaded masked to its answer as a holder of threshold shares
    (`messaging.node_api.ShareAnswer`): its shares of every survivor's self seed and of their pairwise seeds
    with the dropped nodes only; t answers rebuild those seeds. Kept after the unmasking: with a survivor's
    self seed its upload is still hidden by its pairwise masks with the other survivors.
    """

    __tablename__ = "seed_reveals"
    __table_args__ = (UniqueConstraint("federation_id", "round", "phase", "node"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(32))
    node: Mapped[str] = mapped_column(String(64))
    seeds: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """A scalar per round: ``node`` NULL for the federation's own metrics (disc_acc, pad, ...)."""

    __tablename__ = "metrics"
    __table_args__ = (
        # NULLs are distinct in a plain unique constraint, so each scope gets its own partial index.
        Index(
            "uq_metrics_node",
            "federation_id",
            "round",
            "node",
            "name",
            unique=True,
            sqlite_where=text("node IS NOT NULL"),
            postgresql_where=text("node IS NOT NULL"),
        ),
        Index(
            "uq_metrics_federation",
            "federation_id",
            "round",
            "name",
            unique=True,
            sqlite_where=text("node IS NULL"),
            postgresql_where=text("node IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(64), default=None)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float(precision=53))


class Event(Base):
    """What happened to a federation, in order: the SSE stream's source and its replay log."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_federation", "federation_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TrackerExport(Base):
    """How far a federation's metrics have been streamed to one experiment tracker (`fedalign.trackers`).

    Rounds up to ``exported_round`` are in the tracker's run ``run_id``; ``finished`` once the run is closed
    with the federation's final status. ``error`` holds the last failure (the tracker unreachable, ...),
    cleared by the next success: the export retries, and the federation itself never waits for it.
    """

    __tablename__ = "tracker_exports"

    federation_id: Mapped[str] = mapped_column(
        ForeignKey("federations.id", ondelete="CASCADE"), primary_key=True
    )
    tracker: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(200), default=None)
    exported_round: Mapped[int] = mapped_column(Integer, default=0)
    finished: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DashboardSessionRecord(Base):
    """A signed-in dashboard session (`backend.sessions`): the cookie is valid only while its row exists,
    so signing out ends it on the server at once. Only the session id's sha256 is kept."""

    __tablename__ = "dashboard_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The access token it signed in with; None: the environment's bootstrap admin token. Revoking or
    # rotating the token deletes its sessions (ON DELETE CASCADE covers a deleted token).
    access_token_id: Mapped[str | None] = mapped_column(
        ForeignKey("access_tokens.id", ondelete="CASCADE"), default=None, index=True
    )


class AccessToken(Base):
    """A person's or a service's token with a role (`backend.access.Role`) and an organisation: issued by
    the coordinator, shown once, kept only as its sha256. Revoked tokens stay listed (who had access)."""

    __tablename__ = "access_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    organisation: Mapped[str | None] = mapped_column(String(64), default=None)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
