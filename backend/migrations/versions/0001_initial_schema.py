"""Initial schema: federations, nodes, steps, artifacts, aggregations, metrics, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def _federation_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["federation_id"],
        ["federations.id"],
        name=f"fk_{table}_federation_id_federations",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "federations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("protocol_state", sa.JSON(), nullable=True),
        sa.Column("join_token_hash", sa.String(64), nullable=False),
        sa.Column("stall_reason", sa.Text(), nullable=True),
        sa.Column("final_models", sa.JSON(), nullable=True),
        sa.Column("phase_opened_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("started_at", When, nullable=True),
        sa.Column("finished_at", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_federations"),
        sa.UniqueConstraint("join_token_hash", name="uq_federations_join_token_hash"),
    )
    op.create_index("ix_federations_status", "federations", ["status"])

    op.create_table(
        "nodes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(1024), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seen", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        _federation_fk("nodes"),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.UniqueConstraint("federation_id", "name", name="uq_nodes_federation_id_name"),
        sa.UniqueConstraint("token_hash", name="uq_nodes_token_hash"),
    )
    op.create_index("ix_nodes_federation_id", "nodes", ["federation_id"])

    op.create_table(
        "steps",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", When, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("claimed_at", When, nullable=True),
        sa.Column("done_at", When, nullable=True),
        _federation_fk("steps"),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_steps_node_id_nodes", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        sa.UniqueConstraint(
            "federation_id",
            "node_id",
            "round",
            "phase",
            "kind",
            "model",
            name="uq_steps_federation_id_node_id_round_phase_kind_model",
        ),
    )
    op.create_index("ix_steps_claim", "steps", ["federation_id", "node_id", "status"])
    op.create_index("ix_steps_lease", "steps", ["status", "lease_expires_at"])

    op.create_table(
        "artifacts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("node", sa.String(64), nullable=True),
        sa.Column("created_at", When, nullable=False),
        _federation_fk("artifacts"),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.UniqueConstraint("federation_id", "key", name="uq_artifacts_federation_id_key"),
    )
    op.create_index("ix_artifacts_sha256", "artifacts", ["sha256"])

    op.create_table(
        "aggregations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("model", sa.String(16), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", When, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("done_at", When, nullable=True),
        _federation_fk("aggregations"),
        sa.PrimaryKeyConstraint("id", name="pk_aggregations"),
        sa.UniqueConstraint("federation_id", "key", name="uq_aggregations_federation_id_key"),
    )
    op.create_index("ix_aggregations_status", "aggregations", ["status"])

    op.create_table(
        "metrics",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(64), nullable=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        _federation_fk("metrics"),
        sa.PrimaryKeyConstraint("id", name="pk_metrics"),
    )
    op.create_index(
        "uq_metrics_node",
        "metrics",
        ["federation_id", "round", "node", "name"],
        unique=True,
        sqlite_where=sa.text("node IS NOT NULL"),
        postgresql_where=sa.text("node IS NOT NULL"),
    )
    op.create_index(
        "uq_metrics_federation",
        "metrics",
        ["federation_id", "round", "name"],
        unique=True,
        sqlite_where=sa.text("node IS NULL"),
        postgresql_where=sa.text("node IS NULL"),
    )

    op.create_table(
        "events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        _federation_fk("events"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_federation", "events", ["federation_id", "id"])


def downgrade() -> None:
    for table in ("events", "metrics", "aggregations", "artifacts", "steps", "nodes", "federations"):
        op.drop_table(table)
