"""Real processes for the worker tests: the API (``fedalign serve``), Celery workers (``fedalign worker``),
``fedalign up``; a recording reverse proxy that sees every byte a node sends; Redis and PostgreSQL
scratch space.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from api_support import POSTGRES_ADMIN_URL, postgres_admin
from sqlalchemy import text

REDIS_URL = os.environ.get("FEDALIGN_TEST_REDIS", "redis://127.0.0.1:6379/11")
# Generous: these tests share two cores with whatever else the machine runs.
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(poll_s)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


@dataclass
class Processes:
    """Child processes with their output in log files; all stopped (SIGTERM, then SIGKILL) at the end."""

    log_dir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child has its own descriptor
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def assert_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.running.items() if p.poll() is not None}
        assert not dead, f"processes exited early: {dead}\n" + "\n".join(
            f"--- {n}\n{self.log(n)[-3000:]}" for n in dead
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        for process in self.running.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def child_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDALIGN_")}
    # One torch thread per process: several processes share two cores here.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(variables)
    return env


def wait_ready(url: str, processes: Processes) -> None:
    def ready() -> bool:
        processes.assert_alive()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, START_TIMEOUT_S, f"the API at {url}", poll_s=0.2)


# --------------------------------------------------------------------------------------- recording proxy


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingProxy:
    """A reverse proxy in front of the API that keeps every request it forwards, body and all.

    Nodes are pointed at it instead of the API, so what it records is what they send over the wire.
    The Host header passes through unchanged, so the URLs the API puts in tasks point back at the proxy.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.records: list[Recorded] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _forward(self) -> None:
                assert "chunked" not in self.headers.get("Transfer-Encoding", ""), "chunked bodies unexpected"
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                with proxy._lock:
                    proxy.records.append(Recorded(self.command, self.path, headers, body))
                forwarded = {
                    k: v for k, v in headers.items() if k.lower() not in ("connection", "keep-alive")
                }
                response = proxy.http.request(
                    self.command, proxy.upstream + self.path, headers=forwarded, content=body
                )
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "date",
                        "server",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.http = httpx.Client(timeout=120)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="proxy", daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


# ---------------------------------------------------------------------------------------- scratch space


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({type(exc).__name__}: {exc})")


def flush_redis() -> None:
    """This test's Redis database (a number of its own) emptied: queues of earlier runs do not leak in."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


@contextlib.contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new PostgreSQL database (skips when the server is unreachable); dropped at the end."""
    admin = postgres_admin()
    name = f"fedalign_workers_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
