"""Alembic environment: runs on the connection `backend.migrate` hands over, or on the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from backend.models import Base

target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    from backend.database import make_engine
    from backend.settings import Settings

    engine = make_engine(Settings().sqlalchemy_url, foreign_keys=False)
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_online()
