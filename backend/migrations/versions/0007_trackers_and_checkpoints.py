"""Experiment trackers (how far each federation's metrics have been streamed to MLflow or TensorBoard), the
target's checkpoints, and the join token's limits (expiry, registrations left, roles).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("federations") as batch:
        batch.add_column(sa.Column("trackers_done", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("checkpoints", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("join_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("join_registrations_left", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("join_roles", sa.JSON(), nullable=True))
    op.create_table(
        "tracker_exports",
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("tracker", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=True),
        sa.Column("exported_round", sa.Integer(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_tracker_exports_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("federation_id", "tracker", name=op.f("pk_tracker_exports")),
    )


def downgrade() -> None:
    op.drop_table("tracker_exports")
    with op.batch_alter_table("federations") as batch:
        batch.drop_column("join_roles")
        batch.drop_column("join_registrations_left")
        batch.drop_column("join_expires_at")
        batch.drop_column("checkpoints")
        batch.drop_column("trackers_done")
