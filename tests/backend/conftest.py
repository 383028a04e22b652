"""The API under test: the real app (real database, real artifact store) behind Starlette's TestClient.

``db_url`` is parametrised over SQLite and PostgreSQL, so every API test runs on both. PostgreSQL gets a
fresh database per test session (``fedalign_test_<random>``, created through the ``postgres`` user and
dropped at the end); tests share it and start from empty tables. Set FEDALIGN_TEST_POSTGRES to another
server's admin URL to use it; an unreachable server skips the PostgreSQL cases, saying why (with CI set,
it fails them: CI starts PostgreSQL first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from api_support import ADMIN_TOKEN, Api, postgres_or_skip, write_vectors
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from backend import migrate
from backend.app import create_app
from backend.settings import Settings
from bench import harness

TABLES = (
    "events",
    "metrics",
    "aggregations",
    "artifacts",
    "steps",
    "nodes",
    "federations",
    "dashboard_sessions",
    "access_tokens",
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this session; dropped at the end."""
    postgres_or_skip()
    with harness.scratch_postgres(harness.POSTGRES_ADMIN_URL, "fedalign_test") as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres(postgres_database: str) -> str:
    migrate.upgrade(postgres_database)
    return postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
        return
    url = request.getfixturevalue("migrated_postgres")
    yield url
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        admin_token=ADMIN_TOKEN,
        # Tests sweep by hand (`services.sweeper.sweep_once`), so the background one stays out of the way.
        sweep_interval_s=3600,
        aggregation_workers=1,
        events_poll_s=0.05,
    )


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def api(app_client: TestClient) -> Api:
    return Api(app_client)


@pytest.fixture
def vector_specs(tmp_path: Path) -> Callable[[], dict[str, str]]:
    def make() -> dict[str, str]:
        return {
            "alpha": write_vectors(tmp_path / "alpha.npz", 1, 0.0),
            "beta": write_vectors(tmp_path / "beta.npz", 2, 0.3),
            "omega": write_vectors(tmp_path / "omega.npz", 3, 1.5),
        }

    return make


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The app served by a real uvicorn on a free loopback port; yields its base URL."""
    port = harness.free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
