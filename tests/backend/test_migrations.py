"""Migrations build the schema the models describe, on SQLite and PostgreSQL, and take it away again."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from api_support import tiny_settings
from sqlalchemy import JSON, column, create_engine, inspect, select, table, text
from typer.testing import CliRunner

from backend import migrate
from backend.models import Base
from cli.main import app
from fedalign.config import MAX_DEADLINE_S, MAX_NODES, FederationConfig

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


def test_stored_settings_beyond_the_new_bounds_are_brought_within_them(empty_database: str) -> None:
    """Revision 0005: a federation stored with a deadline of 1e308 s (which overflowed the sweep) and other
    values beyond issue 18's bounds reads as a valid config after the upgrade; others are untouched."""
    migrate.upgrade(empty_database, "0004")
    unbounded = {
        **tiny_settings(model={"num_classes": 3, "input_shape": [8], "hidden": 8, "normalization": "group"}),
        "phase_deadline_s": 1e308,
        "setup_deadline_s": 1e300,
        "min_sources": 10**15,
        "privacy": {"noise_multiplier": 1.0, "epsilon_budget": 1e200},
    }
    healthy = {**tiny_settings(), "phase_deadline_s": 30.0}
    engine = create_engine(empty_database)
    federations = table("federations", column("id"), column("config", JSON))
    now = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as connection:
            for fid, config in (("unbounded", unbounded), ("healthy", healthy)):
                connection.execute(
                    text(
                        "INSERT INTO federations (id, name, config, status, join_token_hash, created_at, "
                        "updated_at) VALUES (:id, 'f', :config, 'created', :hash, :now, :now)"
                    ),
                    {"id": fid, "config": json.dumps(config), "hash": fid * 4, "now": now},
                )
        migrate.upgrade(empty_database)
        with engine.connect() as connection:
            stored = dict(connection.execute(select(federations.c.id, federations.c.config)).all())
    finally:
        engine.dispose()
    bounded = FederationConfig.model_validate(stored["unbounded"])
    assert (bounded.phase_deadline_s, bounded.setup_deadline_s) == (MAX_DEADLINE_S, MAX_DEADLINE_S)
    assert bounded.min_sources == MAX_NODES and bounded.privacy.epsilon_budget == 1e6
    assert stored["healthy"] == healthy
