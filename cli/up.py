"""``fedalign up``: the whole product on one machine, with nothing to install or configure.

It runs the API (``fedalign serve``) and one Celery worker (``fedalign worker``) that serves every node of
a demo federation (`cli.demo`) and the server's aggregations, as supervised child processes
(`cli.supervisor`): a child that dies is started again, and Ctrl-C or SIGTERM stops them all. By default
everything lives under one data directory (``FEDALIGN_DATA_DIR``, default ``./.fedalign``): a SQLite
database, the artifacts, the datasets, the node state, and the broker's queues as folders (kombu's
filesystem transport, which needs no server). ``FEDALIGN_BROKER_URL=redis://...`` and a PostgreSQL
``FEDALIGN_DATABASE_URL`` make the same command run on those instead.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer

from cli.console import console
from cli.demo import DEMO_FILE, DEMO_ROUNDS, ensure_demo
from cli.extras import needs
from cli.options import ThreadsOption
from cli.supervisor import Child, Supervisor, UpError, command

READY_TIMEOUT_S = 120.0


@dataclass
class UpOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 1
    demo_rounds: int = DEMO_ROUNDS
    start_demo: bool = False
    log_level: str = "warning"


@needs("up", "server")
def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where everything lives (default: FEDALIGN_DATA_DIR, else ./.fedalign)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The API's TCP port.")] = 8000,
    threads: ThreadsOption = 1,
    demo_rounds: Annotated[
        int, typer.Option(min=1, envvar="FEDALIGN_DEMO_ROUNDS", help="Rounds of the demo federation.")
    ] = 100,
    start: Annotated[bool, typer.Option("--start", help="Start the demo federation right away.")] = False,
) -> None:
    """Run the whole product on this machine: the API, one worker, a demo federation.

    The worker serves the demo federation's nodes and the aggregator; everything is kept under the data
    directory (SQLite, artifacts, the broker's queues as folders) unless FEDALIGN_DATABASE_URL and
    FEDALIGN_BROKER_URL say otherwise. Ctrl-C stops it all."""
    root = data_dir or Path(os.environ.get("FEDALIGN_DATA_DIR", ".fedalign"))
    options = UpOptions(
        data_dir=root, host=host, port=port, threads=threads, demo_rounds=demo_rounds, start_demo=start
    )
    try:
        run(options, lambda message: console.print(message, soft_wrap=True, highlight=False, markup=False))
    except UpError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc


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


def run(options: UpOptions, say: Callable[[str], None]) -> None:
    """Run the product until SIGINT or SIGTERM; raises UpError when it cannot."""
    from backend import migrate  # the server's own schema and settings: loaded by this command only
    from backend.settings import SettingsError, load_settings

    data_dir = options.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{options.host}:{options.port}"
    # Every child (and this process's own Settings) reads the same variables.
    os.environ["FEDALIGN_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("FEDALIGN_BROKER_URL", "filesystem://")
    os.environ["FEDALIGN_API_URL"] = api_url
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise UpError(str(exc)) from exc
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
                command(
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
                command(
                    "worker",
                    "--credentials",
                    str(data_dir / DEMO_FILE),
                    "--aggregator",
                    "--threads",
                    str(options.threads),
                    # The API's level: the worker's lines are then its warnings and errors only.
                    "--loglevel",
                    options.log_level.upper(),
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
