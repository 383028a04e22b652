"""The server step of an aggregation (hyperparameters.server_step): the aggregate its average is stepped
past, and by how much. Existing jobs are plain averages: no base, step 1.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("aggregations") as batch:
        batch.add_column(sa.Column("base", sa.String(255), nullable=True))
        batch.add_column(
            sa.Column("step", sa.Float(precision=53), nullable=False, server_default=sa.text("1"))
        )


def downgrade() -> None:
    with op.batch_alter_table("aggregations") as batch:
        batch.drop_column("step")
        batch.drop_column("base")
