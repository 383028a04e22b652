"""Real processes for the worker tests: the API (``fedalign serve``), Celery workers (``fedalign worker``),
``fedalign up``; a recording reverse proxy that sees every byte a node sends; Redis and PostgreSQL
scratch space. Ports, child processes and scratch space come from `bench.harness`, which the benchmarks
share; what is here adds the tests' choices (skip or fail when a service is down, the tests' Redis
database number).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from api_support import postgres_or_skip

from bench import harness
from bench.harness import api_ready, start_child, stop_processes

# Shared with the benchmarks; the tests import them from here.
from bench.harness import child_env as child_env
from bench.harness import free_port as free_port

REDIS_URL = os.environ.get("FEDALIGN_TEST_REDIS", "redis://127.0.0.1:6379/11")
# Generous: these tests share two cores with whatever else the machine runs.
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 240.0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    harness.wait_until(condition, what, timeout_s, poll_s)


def cli(*args: str) -> list[str]:
    """The `fedalign` command beside this interpreter, with `args`."""
    return harness.fedalign_command(*args)


@dataclass
class Processes:
    """Child processes with their output in log files; all stopped (SIGTERM, then SIGKILL) at the end."""

    log_dir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = start_child(name, argv, env, self.log_dir).process
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def assert_alive(self, may_finish: Collection[str] = ()) -> None:
        """Every process still runs, but those named in `may_finish`, which may also have exited cleanly
        (a REST node leaves with status 0 once its federation is finished)."""
        dead = {
            n: p.returncode
            for n, p in self.running.items()
            if p.poll() is not None and not (n in may_finish and p.returncode == 0)
        }
        assert not dead, f"processes exited early: {dead}\n" + "\n".join(
            f"--- {n}\n{self.log(n)[-3000:]}" for n in dead
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_processes(self.running.values(), timeout_s)


def wait_ready(url: str, processes: Processes) -> None:
    def ready() -> bool:
        processes.assert_alive()
        return api_ready(url)

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
    try:
        harness.check_redis(REDIS_URL)
    except harness.ServiceUnavailable as exc:
        pytest.skip(str(exc))


def flush_redis() -> None:
    """This test's Redis database (a number of its own) emptied: queues of earlier runs do not leak in."""
    harness.flush_redis(REDIS_URL)


@contextlib.contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new PostgreSQL database (skips when the server is unreachable, fails under CI); dropped at the
    end."""
    postgres_or_skip()
    with harness.scratch_postgres(harness.POSTGRES_ADMIN_URL, "fedalign_workers") as url:
        yield url
