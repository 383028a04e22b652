"""Migrations build the schema the models describe, on SQLite and PostgreSQL, and take it away again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from backend import migrate
from backend.models import Base
from cli.main import app

TABLES = {"federations", "nodes", "steps", "artifacts", "aggregations", "metrics", "events"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    # A schema of its own in the session's database (dropping a schema is quick; a database is not).
    database = request.getfixturevalue("postgres_database")
    schema = f"migrations_{uuid.uuid4().hex[:12]}"
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{database}?options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def test_migrations_upgrade_an_empty_database_and_downgrade_it_back(empty_database: str) -> None:
    engine = create_engine(empty_database)
    try:
        assert not migrate.is_at_head(engine)
        migrate.upgrade(empty_database)
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert migrate.is_at_head(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == [], "the models and the migrations disagree"
        migrate.upgrade(empty_database)  # already at head: nothing to do, no error
        migrate.downgrade(empty_database, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            assert migrate.current_revision(connection) is None
    finally:
        engine.dispose()


def test_the_db_commands_migrate_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FEDALIGN_DATABASE_URL", url)
    runner = CliRunner()
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    engine = create_engine(url)
    try:
        assert migrate.is_at_head(engine)
        downgraded = runner.invoke(app, ["db", "downgrade", "base"])
        assert downgraded.exit_code == 0 and "downgraded to base" in downgraded.output
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
