"""The harness the benchmarks and the tests share: scratch databases are dropped whatever happens, child
processes are stopped with their own children, and results say when, where and how they were made."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from bench import harness


def databases(prefix: str) -> set[str]:
    engine = harness.postgres_admin_engine()
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{prefix}%"}
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()


@pytest.fixture
def postgres() -> None:
    try:
        harness.postgres_admin_engine().dispose()
    except harness.ServiceUnavailable as exc:
        pytest.skip(str(exc))  # under CI, tests/conftest.py turns a skip into a failure


@pytest.mark.usefixtures("postgres")
def test_a_scratch_database_exists_inside_the_block_and_is_dropped_after_a_failure() -> None:
    prefix = f"fedalign_harness_{os.getpid()}"
    with pytest.raises(RuntimeError, match="the run failed"), harness.scratch_postgres(prefix=prefix) as url:
        name = url.rsplit("/", 1)[1]
        assert name in databases(prefix)
        raise RuntimeError("the run failed")
    assert databases(prefix) == set()


def test_an_unreachable_postgres_says_where_and_what_to_set() -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{harness.free_port()}/postgres"
    with pytest.raises(harness.ServiceUnavailable, match="FEDALIGN_TEST_POSTGRES") as caught:
        harness.postgres_admin_engine(closed, connect_timeout_s=1)
    assert closed in str(caught.value)


def test_stopping_a_child_stops_the_processes_it_started(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(grandchild_pid)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    child = harness.start_child("sleeper", [sys.executable, "-c", script], harness.child_env(), tmp_path)
    harness.wait_until(grandchild_pid.exists, "the grandchild", timeout_s=30, children=[child])
    harness.wait_until(lambda: grandchild_pid.read_text() != "", "the grandchild's pid", timeout_s=30)
    pid = int(grandchild_pid.read_text())
    harness.stop_child(child, timeout_s=10)
    assert child.process.returncode is not None
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the grandchild outlived its stopped parent"
        time.sleep(0.05)


def test_waiting_on_a_child_that_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('cannot start: no config'); raise SystemExit(3)"]
    child = harness.start_child("broken", argv, harness.child_env(), tmp_path)
    with pytest.raises(harness.ChildExited, match="cannot start: no config"):
        harness.wait_until(lambda: False, "something that never happens", timeout_s=60, children=[child])


def test_results_carry_their_date_commit_and_command(tmp_path: Path) -> None:
    path = harness.write_json(tmp_path / "out" / "result.json", harness.stamped({"figure": 1.5}))
    result = json.loads(path.read_text())
    assert result["figure"] == 1.5
    assert result["date"].endswith("+00:00")
    assert result["commit"] is None or len(result["commit"].removesuffix("-dirty")) == 40
    assert result["command"].startswith("python ")


def test_results_refuse_nan_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        harness.write_json(tmp_path / "nan.json", {"loss": float("nan")})
    harness.write_json(tmp_path / "nan.json", {"loss": float("nan")}, allow_nan=True)
    assert "NaN" in (tmp_path / "nan.json").read_text()
