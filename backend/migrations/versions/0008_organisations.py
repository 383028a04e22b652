"""Organisations and roles. Access tokens (coordinator, federation owner, viewer) kept hashed,
the organisation of each node and of each federation's owner, the organisation a join token fixes, and
which access token each dashboard session signed in with (so that revoking a token ends its sessions).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("organisation", sa.String(64), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("revoked_at", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_access_tokens_token_hash"),
    )
    with op.batch_alter_table("federations") as batch:
        batch.add_column(sa.Column("join_organisation", sa.String(64), nullable=True))
        batch.add_column(sa.Column("owner_organisation", sa.String(64), nullable=True))
        batch.create_index("ix_federations_owner_organisation", ["owner_organisation"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("organisation", sa.String(64), nullable=True))
        batch.create_index("ix_nodes_organisation", ["organisation"])
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.add_column(sa.Column("access_token_id", sa.String(36), nullable=True))
        batch.create_index("ix_dashboard_sessions_access_token_id", ["access_token_id"])
        batch.create_foreign_key(
            "fk_dashboard_sessions_access_token_id_access_tokens",
            "access_tokens",
            ["access_token_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.drop_constraint("fk_dashboard_sessions_access_token_id_access_tokens", type_="foreignkey")
        batch.drop_index("ix_dashboard_sessions_access_token_id")
        batch.drop_column("access_token_id")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_index("ix_nodes_organisation")
        batch.drop_column("organisation")
    with op.batch_alter_table("federations") as batch:
        batch.drop_index("ix_federations_owner_organisation")
        batch.drop_column("owner_organisation")
        batch.drop_column("join_organisation")
    op.drop_table("access_tokens")
