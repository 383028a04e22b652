"""Issue 13 and failed steps: a federation's model manifest document, and the reasons of failed steps.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("federations") as batch:
        batch.add_column(sa.Column("model_manifest", sa.JSON(), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("failure", sa.Text(), nullable=True))
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("failure", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("failure")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("failure")
    with op.batch_alter_table("federations") as batch:
        batch.drop_column("model_manifest")
