"""What the benchmarks and the tests share: scratch PostgreSQL databases and Redis database numbers, free
ports, child processes (each in a session of its own, its output in a log file, stopped with SIGTERM and
then SIGKILL), and results written with the date, commit and command that produced them.

Only the standard library is imported at module level: the aggregation benchmark's Flower worker imports
the `bench` package under a virtualenv of its own, and the database and Redis clients load only when a
scratch database is asked for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# The PostgreSQL server on which scratch databases are created (through its admin database) and dropped.
POSTGRES_ADMIN_URL = os.environ.get(
    "FEDALIGN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# How long a child process has to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_S = 20.0


class ServiceUnavailable(RuntimeError):
    """PostgreSQL or Redis did not answer; the message says which, where, and how to point elsewhere."""


# ------------------------------------------------------------------------------------------- PostgreSQL


def postgres_admin_engine(admin_url: str = POSTGRES_ADMIN_URL, connect_timeout_s: int = 3) -> Any:
    """An AUTOCOMMIT SQLAlchemy engine on the server's admin database, checked with one query.

    Raises `ServiceUnavailable` when the server does not answer.
    """
    from sqlalchemy import create_engine, text

    engine = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": connect_timeout_s}
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        raise ServiceUnavailable(
            f"PostgreSQL at {admin_url} is unreachable ({type(exc).__name__}: {exc}); start it, or set "
            "FEDALIGN_TEST_POSTGRES (or the benchmark's --postgres-url) to a server's admin database URL"
        ) from exc
    return engine


@contextlib.contextmanager
def scratch_postgres(admin_url: str = POSTGRES_ADMIN_URL, prefix: str = "fedalign_scratch") -> Iterator[str]:
    """A new, empty database on the server; yields its URL and drops it at the end, even after a failure.

    Raises `ServiceUnavailable` when the server does not answer.
    """
    from sqlalchemy import text

    engine = postgres_admin_engine(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------ Redis


def check_redis(url: str) -> None:
    """Raises `ServiceUnavailable` unless Redis answers at `url`."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        raise ServiceUnavailable(
            f"Redis at {url} is unreachable ({type(exc).__name__}: {exc}); start it, or point the URL "
            "(FEDALIGN_TEST_REDIS, or the benchmark's --redis-url) at another server"
        ) from exc
    finally:
        client.close()


def flush_redis(url: str) -> None:
    """Empties the Redis database that `url` names (its number only), so no earlier run's queue leaks in."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


@contextlib.contextmanager
def scratch_redis(url: str) -> Iterator[str]:
    """A Redis database number of one's own, checked, emptied before and after; yields its URL."""
    check_redis(url)
    flush_redis(url)
    try:
        yield url
    finally:
        flush_redis(url)


# -------------------------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def fedalign_command(*args: str) -> list[str]:
    """The `fedalign` command beside this interpreter (what `make setup` installs), with `args`."""
    script = Path(sys.executable).parent / "fedalign"
    if not script.exists():
        raise FileNotFoundError(
            f"no `fedalign` command beside {sys.executable}: run `make setup` (it installs the project into "
            ".venv), and run this with .venv/bin/python"
        )
    return [str(script), *args]


def child_env(**variables: str) -> dict[str, str]:
    """This process's environment without any FEDALIGN_ setting, one torch thread, then `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDALIGN_")}
    # One torch thread per process: several processes share the machine's cores, and both arms of a
    # comparison must compute alike.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(variables)
    return env


class ChildExited(RuntimeError):
    """A child process ended while something waited for it."""


@dataclass
class Child:
    """A child process in a session of its own, its output (stdout and stderr) in one log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ChildExited(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")


def start_child(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None
) -> Child:
    """Starts `argv` in a new session (so that stopping it reaches its own children), logging to
    `log_dir/<name>.log`."""
    log = log_dir / f"{name}.log"
    with open(log, "wb") as fh:  # the child keeps its own descriptor
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Child(name, process, log)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to each process's group, then SIGKILL to those still running after `timeout_s` (shared)."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stop_child(child: Child, timeout_s: float = STOP_TIMEOUT_S) -> None:
    stop_processes([child.process], timeout_s)


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout_s: float,
    poll_s: float = 0.1,
    children: Iterable[Child] = (),
) -> None:
    """Polls `condition` until it holds; raises `ChildExited` if one of `children` ends first and
    `TimeoutError` after `timeout_s`."""
    children = list(children)
    deadline = time.monotonic() + timeout_s
    while not condition():
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def api_ready(url: str) -> bool:
    """Whether the API at `url` answers its readiness probe (database reachable, migrations done)."""
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_ready(url: str, children: Iterable[Child], timeout_s: float) -> None:
    """Waits until the API at `url` is ready, failing at once if one of `children` (its process) ends."""
    wait_until(lambda: api_ready(url), f"the API at {url}", timeout_s, poll_s=0.2, children=children)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (its threads included); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------------------- results


def git_commit() -> str | None:
    """The checkout's commit, with `-dirty` when tracked files differ from it; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def command_line() -> str:
    """How this process was started, as one would type it: `python -m bench.<name> <args>`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def provenance() -> dict[str, Any]:
    """When, at which commit and by which command a result was produced: the fields every results
    file carries beside its figures."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": command_line(),
    }


def machine(loadavg_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """The machine a timing ran on: its CPUs, its load when the timing started and now, the platform and
    torch's version (imported here: the callers time torch anyway)."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg_at_start,
        "loadavg_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def stamped(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with `provenance()`'s fields (they replace any of the same name)."""
    return {**payload, **provenance()}


def write_json(path: Path | str, payload: Any, allow_nan: bool = False) -> Path:
    """Writes `payload` as indented JSON, creating the folder. NaN is refused unless `allow_nan` (JSON has
    none; the accuracy logs may hold a diverged run's NaN loss, written as Python's json writes it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=allow_nan) + "\n")
    return path
