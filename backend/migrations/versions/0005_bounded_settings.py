"""Issue 18: settings got upper bounds; stored configs beyond them are brought within.

A deadline of more than a year (up to 1e308 s, which overflowed the sweep's date arithmetic) becomes a
year, which waits as long in practice; min_sources and an epsilon budget beyond their bounds become the
bound (no deployment reaches either). The bounds are written out as they were at this revision: a later
change of `fedalign.config` must not change what this migration did.

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_DEADLINE_S = 366 * 24 * 3600
MAX_NODES = 10_000
MAX_EPSILON = 1e6


def _bounded(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    for field in ("phase_deadline_s", "setup_deadline_s"):
        if isinstance(config.get(field), (int, float)) and config[field] > MAX_DEADLINE_S:
            config[field] = float(MAX_DEADLINE_S)
    if isinstance(config.get("min_sources"), int) and config["min_sources"] > MAX_NODES:
        config["min_sources"] = MAX_NODES
    privacy = config.get("privacy")
    if isinstance(privacy, dict):
        budget = privacy.get("epsilon_budget")
        if isinstance(budget, (int, float)) and budget > MAX_EPSILON:
            config["privacy"] = {**privacy, "epsilon_budget": MAX_EPSILON}
    return config


def upgrade() -> None:
    federations = sa.table("federations", sa.column("id", sa.String), sa.column("config", sa.JSON))
    connection = op.get_bind()
    for federation_id, config in connection.execute(sa.select(federations.c.id, federations.c.config)):
        if not isinstance(config, dict):
            continue
        bounded = _bounded(config)
        if bounded != config:
            connection.execute(
                federations.update().where(federations.c.id == federation_id).values(config=bounded)
            )


def downgrade() -> None:
    pass  # the values brought within the bounds work under the older code too
