"""Secure aggregation: nodes' public keys, and survivors' seed reveals.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("public_key", sa.String(44), nullable=True))
    op.create_table(
        "seed_reveals",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("federation_id", sa.String(36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name="fk_seed_reveals_federation_id_federations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_seed_reveals"),
        sa.UniqueConstraint(
            "federation_id", "round", "phase", "node", name="uq_seed_reveals_federation_id_round_phase_node"
        ),
    )


def downgrade() -> None:
    op.drop_table("seed_reveals")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("public_key")
