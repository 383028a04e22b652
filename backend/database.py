"""Engine, sessions and the locks that make a federation's state changes one at a time.

SQLite: WAL mode so readers never wait for the writer, a busy timeout so writers queue instead of failing,
and ``BEGIN IMMEDIATE`` for every transaction that may write: a deferred transaction that reads and then
writes can fail at once with SQLITE_BUSY when another writer committed in between, and SQLite ignores
``SELECT ... FOR UPDATE``. Read-only sessions (``Database.reader``) begin deferred.

PostgreSQL: a federation's row is locked with ``SELECT ... FOR UPDATE`` by every transaction that changes
that federation's state, so its events are fed to the protocol one at a time and its event ids commit in
order (which SSE replay relies on).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from backend.models import Federation

DEFERRED_OPTION = "fedalign_deferred"


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def _create_private(url: str) -> None:
    """Create a SQLite file that does not exist yet as readable by this user only (0600): it holds dataset
    specs and token hashes. SQLite gives its -wal and -shm files the database's permissions."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another process created it first: it made it 0600 too
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, foreign_keys: bool = True) -> Engine:
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    _create_private(url)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so the "begin" hook below decides how each one begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        deferred = conn.get_execution_options().get(DEFERRED_OPTION, False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


class Database:
    """An engine with its two kinds of session: ``writer`` (may write, locks) and ``reader``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = is_sqlite(engine)
        self.writer = sessionmaker(engine, expire_on_commit=False)
        self.reader = sessionmaker(
            engine.execution_options(**{DEFERRED_OPTION: True}), expire_on_commit=False
        )

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends normally, rolled back otherwise."""
        with self.writer() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.reader() as session, session.begin():
            yield session

    def connect(self) -> Connection:
        """A plain connection for read-only checks (deferred on SQLite: it takes no write lock)."""
        return self.engine.execution_options(**{DEFERRED_OPTION: True}).connect()

    def dispose(self) -> None:
        self.engine.dispose()


def lock_federation(session: Session, federation_id: str) -> Federation | None:
    """The federation's row, locked until the transaction ends (SQLite: the whole database already is)."""
    return session.scalars(
        select(Federation).where(Federation.id == federation_id).with_for_update()
    ).one_or_none()


def lock_blob(session: Session, sha256: str) -> None:
    """Serialise writing and deleting one content-addressed file with its rows (PostgreSQL; no-op on SQLite).

    A store write happens with this lock held and before its row commits; a garbage collection checks
    that no row references the file and deletes it with the same lock held. So a file is never deleted
    under a row that a concurrent upload is about to commit.
    """
    bind = session.get_bind()
    if is_sqlite(bind):  # type: ignore[arg-type]
        return
    key = int.from_bytes(hashlib.sha256(b"blob:" + sha256.encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
