"""Schema migrations (Alembic), run under a lock so that several starting replicas do not race.

PostgreSQL: a session advisory lock. SQLite: an exclusive ``flock`` on a file beside the database (one
machine by nature). Alembic is configured here in code, so an installed package needs no alembic.ini.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection, make_url

from backend.database import is_sqlite, make_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# One cluster-wide key for "migrating the fedalign schema"; any stable 64-bit number does.
ADVISORY_LOCK_KEY = zlib.crc32(b"fedalign:migrate")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    if is_sqlite(engine):
        database = make_url(str(engine.url)).database
        lock_path = Path(f"{database}.migrate-lock") if database and database != ":memory:" else None
        with _file_lock(lock_path), engine.connect() as connection:
            yield connection
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()
        try:
            yield connection
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _migration_engine(url: str) -> Engine:
    # Batch mode rebuilds SQLite tables by copy-drop-rename; with foreign keys on, the drop would
    # cascade-delete child rows.
    return make_engine(url, foreign_keys=False)


def upgrade(url: str, revision: str = "head") -> None:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = _migration_engine(url)
    try:
        with _locked(engine) as connection:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    engine = _migration_engine(url)
    try:
        with _locked(engine) as connection:
            command.downgrade(alembic_config(connection), revision)
            connection.commit()
    finally:
        engine.dispose()


def is_at_head(engine: Engine) -> bool:
    with engine.connect() as connection:
        return current_revision(connection) == head_revision()
