"""``fedalign up``: the whole product on one machine, with nothing to install or configure.

It runs the API (``fedalign serve``) and one Celery worker (``fedalign worker``) that serves every node of
a demo federation and the server's aggregations, as supervised child processes: a child that dies is
started again, and Ctrl-C or SIGTERM stops them all. By default everything lives under one data
directory (``FEDALIGN_DATA_DIR``, default ``./.fedalign``): a SQLite database, the artifacts, the
datasets, the node state, and the broker's queues as folders (kombu's filesystem transport, which needs
no server). ``FEDALIGN_BROKER_URL=redis://...`` and a PostgreSQL ``FEDALIGN_DATABASE_URL`` make the same
command run on those instead.

The demo federation is the recipe of ``examples/digits-mnistm.toml`` (three labelled digit domains as
sources, unlabelled MNIST-M as target) with 100 rounds, registered with its nodes in mode ``celery`` and
ready to start. Its nodes' tokens go to ``demo-nodes.json`` in the data directory (mode 0600), which the
worker reads (the format of `workers.celery_app.CredentialsFile`). This module starts the worker as a
command and never imports `workers`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backend import migrate
from backend.settings import Settings

DEMO_FILE = "demo-nodes.json"
DEMO_ROUNDS = 100
# The recipe of examples/digits-mnistm.toml (the preset fedalign.presets names), evaluated every 10 rounds.
DEMO_SETTINGS: dict[str, Any] = {
    "name": "digits to MNIST-M (demo)",
    "algorithm": "fedalign",
    "architecture": "digits_cnn",
    "seed": 0,
    "aggregator": "server",
    "hyperparameters": {"preset": "digits_recipe", "batch_size": 64, "lr": 0.01, "eval_every": 10},
}
DEMO_NODES = (
    ("mnist", "source", "digits:mnist"),
    ("optdigits", "source", "digits:optdigits"),
    ("syn", "source", "digits:syn"),
    ("mnistm", "target", "digits:mnistm"),
)
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
# A child that dies more often than this within the window is not started again: everything stops.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
PR_SET_PDEATHSIG = 1


class UpError(RuntimeError):
    """Something `fedalign up` cannot get past, said so that a user can act on it."""


@dataclass
class UpOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 1
    demo_rounds: int = DEMO_ROUNDS
    start_demo: bool = False
    log_level: str = "warning"


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Child processes in their own session (Ctrl-C reaches only the supervisor, which then stops them in
    order); one that dies is started again, unless it keeps dying."""

    def __init__(self, env: dict[str, str], say: Callable[[str], None]) -> None:
        self.env = env
        self.say = say
        self.children: list[Child] = []

    def start(self, child: Child) -> Child:
        child.process = subprocess.Popen(
            child.argv,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if child not in self.children:
            self.children.append(child)
        return child

    def check(self) -> None:
        """Start again what died; raise UpError for a child that keeps dying."""
        now = time.monotonic()
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(child.restarts) > MAX_RESTARTS:
                raise UpError(f"the {child.name} process keeps exiting (last exit status {code}); stopping")
            self.say(f"the {child.name} process exited with status {code}; starting it again")
            self.start(child)

    def alive(self, child: Child) -> bool:
        return child.process is not None and child.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to every child, newest first (the worker before the API it talks to), then SIGKILL to
        what is still running after STOP_TIMEOUT_S."""
        for child in reversed(self.children):
            if self.alive(child):
                assert child.process is not None
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in reversed(self.children):
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedalign.cli", *args]


def wait_ready(api_url: str, supervisor: Supervisor, api: Child) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not supervisor.alive(api):
            raise UpError(
                f"the API process exited before it was ready ({last}); is {api_url} already in use? "
                "Pass --port to use another"
            )
        try:
            response = httpx.get(f"{api_url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = response.text[:200]
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise UpError(f"the API at {api_url} was not ready after {READY_TIMEOUT_S:.0f} s ({last})")


def demo_settings(rounds: int) -> dict[str, Any]:
    return {**DEMO_SETTINGS, "rounds": rounds}


def ensure_demo(api_url: str, admin_token: str, data_dir: Path, rounds: int) -> dict[str, Any]:
    """The demo federation of this data directory: the one recorded in ``demo-nodes.json`` while it has not
    run yet (or still runs), else a new one, registered and ready to start. Returns the file's content."""
    path = data_dir / DEMO_FILE
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30.0) as http:
        if path.exists():
            demo = json.loads(path.read_text(encoding="utf-8"))
            response = http.get(f"/api/v1/federations/{demo['federation_id']}")
            if response.status_code == 200 and response.json()["status"] not in (
                "finished",
                "cancelled",
                "failed",
            ):
                if demo.get("api") != api_url:
                    demo["api"] = api_url
                    _write_private(path, demo)
                return demo
        created = http.post("/api/v1/federations", json=demo_settings(rounds))
        _expect(created, 201, "create the demo federation")
        federation_id = created.json()["id"]
        nodes = []
        for name, role, dataset in DEMO_NODES:
            registered = http.post(
                f"/api/v1/federations/{federation_id}/nodes",
                json={"name": name, "role": role, "dataset": dataset, "mode": "celery"},
            )
            _expect(registered, 201, f"register the demo node {name!r}")
            body = registered.json()
            nodes.append({"node_id": body["id"], "name": name, "token": body["token"], "dataset": dataset})
    demo = {"api": api_url, "federation_id": federation_id, "nodes": nodes}
    _write_private(path, demo)
    return demo


def _expect(response: httpx.Response, status: int, doing: str) -> None:
    if response.status_code != status:
        raise UpError(f"could not {doing}: {response.status_code} {response.text[:500]}")


def _write_private(path: Path, content: dict[str, Any]) -> None:
    """Tokens: readable by this user only (mkstemp's mode 0600), replaced atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(content, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def up(options: UpOptions, say: Callable[[str], None]) -> None:
    """Run the product until SIGINT or SIGTERM; raises UpError when it cannot."""
    data_dir = options.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{options.host}:{options.port}"
    # Every child (and this process's own Settings) reads the same variables.
    os.environ["FEDALIGN_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("FEDALIGN_BROKER_URL", "filesystem://")
    os.environ["FEDALIGN_API_URL"] = api_url
    settings = Settings()
    migrate.upgrade(settings.sqlalchemy_url)
    admin_token = settings.admin_secret

    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    supervisor = Supervisor(dict(os.environ), say)
    try:
        api = supervisor.start(
            Child(
                "API",
                _command(
                    "serve",
                    "--host",
                    options.host,
                    "--port",
                    str(options.port),
                    "--log-level",
                    options.log_level,
                ),
            )
        )
        wait_ready(api_url, supervisor, api)
        demo = ensure_demo(api_url, admin_token, data_dir, options.demo_rounds)
        supervisor.start(
            Child(
                "worker",
                _command(
                    "worker",
                    "--credentials",
                    str(data_dir / DEMO_FILE),
                    "--aggregator",
                    "--threads",
                    str(options.threads),
                ),
            )
        )
        federation_id = demo["federation_id"]
        if options.start_demo:
            response = httpx.post(
                f"{api_url}/api/v1/federations/{federation_id}/start",
                headers={"Authorization": f"Bearer {admin_token}"},
                timeout=30.0,
            )
            if response.status_code not in (200, 409):  # 409: it was started before
                raise UpError(f"could not start the demo federation: {response.text[:500]}")
        say(banner(api_url, admin_token, data_dir, federation_id, started=options.start_demo))
        while not stopping["signal"]:
            supervisor.check()
            time.sleep(0.5)
        say("stopping")
    finally:
        supervisor.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def banner(api_url: str, admin_token: str, data_dir: Path, federation_id: str, *, started: bool) -> str:
    page = f"{api_url}/federations/{federation_id}"
    start = (
        "the demo federation is running"
        if started
        else "start the demo federation with Start on its page, or:\n  curl -X POST -H "
        f"'Authorization: Bearer {admin_token}' {api_url}/api/v1/federations/{federation_id}/start"
    )
    return (
        f"FedAlign is up: the dashboard on {api_url}/ (API docs: {api_url}/docs)\n"
        f"sign in with the admin token {admin_token}\n"
        f"  (kept in {data_dir / 'admin_token'})\n"
        f"demo federation {federation_id}: digits -> MNIST-M, 3 sources and 1 target, nodes in Celery mode\n"
        f"{start}\n"
        f"follow it live: {page}\n"
        "Ctrl-C stops everything."
    )
