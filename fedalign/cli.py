"""The `fedalign` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedalign.config import ConfigError, load_config

if TYPE_CHECKING:
    from fedalign.simulate import RoundRecord

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Federated transfer learning with adversarial domain alignment: only parameters travel.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets of the built-in benchmark.")
app.add_typer(data_app, name="data")
db_app = typer.Typer(no_args_is_help=True, help="The API service's database schema (FEDALIGN_DATABASE_URL).")
app.add_typer(db_app, name="db")
node_app = typer.Typer(no_args_is_help=True, help="A node outside Celery: it polls the API for its steps.")
app.add_typer(node_app, name="node")
console = Console()

# Columns of the per-round table, in order; a column shows only when some round has it.
TABLE_METRICS = (
    ("disc_acc", "D acc"),
    ("disc_acc_source", "D acc src"),
    ("disc_acc_target", "D acc tgt"),
    ("disc_acc_fresh", "D fresh"),
    ("pad", "PAD"),
    ("task_loss", "task loss"),
    ("adv_loss", "adv loss"),
    ("source_val_acc", "src val acc"),
    ("target_acc", "target acc"),
)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


@app.command()
def simulate(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Federation config (TOML).")],
    rounds: Annotated[int | None, typer.Option(help="Override the config's number of rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write per-round metrics as JSON.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Run a whole federation in this process and print its metrics round by round."""
    from fedalign.device import Device
    from fedalign.simulate import simulate as run_simulation

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    updates: dict[str, int] = {}
    if rounds is not None:
        updates["rounds"] = rounds
    if seed is not None:
        updates["seed"] = seed
    if updates:
        config = config.model_validate({**config.model_dump(), **updates})
    _set_threads(threads)
    console.print(
        f"[bold]{config.name}[/]: {config.algorithm} on {config.architecture}, {config.rounds} rounds, "
        f"seed {config.seed}, aggregator {config.aggregator}, nodes: "
        + ", ".join(f"{n.name} ({n.role}, {n.dataset})" for n in config.nodes)
    )
    records: list[RoundRecord] = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("rounds", total=config.rounds, last="")

        def on_round(record: RoundRecord) -> None:
            records.append(record)
            last = "  ".join(
                f"{label} {record.metrics[k]:.3f}"
                for k, label in TABLE_METRICS[:1] + TABLE_METRICS[-1:]
                if k in record.metrics
            )
            progress.update(task, advance=1, last=last)

        try:
            result = run_simulation(config, device=Device.pick(device), on_round=on_round)
        except (ValueError, RuntimeError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    console.print(metrics_table(result.rounds))
    for event in result.events:
        console.print(f"[yellow]{event}[/]")
    if json_path:
        result.write_json(json_path)
        console.print(f"metrics written to {json_path}")


def metrics_table(rounds: list[RoundRecord]) -> Table:
    shown = [(k, label) for k, label in TABLE_METRICS if any(k in r.metrics for r in rounds)]
    table = Table(title="per-round metrics")
    table.add_column("round", justify="right")
    for _, label in shown:
        table.add_column(label, justify="right")
    for record in rounds:
        if record.round == 0 or not record.metrics:
            continue
        table.add_row(
            str(record.round),
            *(f"{record.metrics[k]:.3f}" if k in record.metrics else "" for k, _ in shown),
        )
    return table


@data_app.command("build")
def data_build() -> None:
    """Build (or verify the cache of) every domain of the built-in digits benchmark."""
    from fedalign import data as datasets

    for domain in datasets.digits_domains():
        d = datasets.load(f"digits:{domain}")
        console.print(f"digits:{domain}: train {len(d.train)}, val {len(d.val)}, test {len(d.test)}")


# The service's commands import `backend` only when they run: `fedalign` itself never depends on it.


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the API service (migrating its database first). Settings come from FEDALIGN_* variables."""
    import uvicorn

    from backend import migrate
    from backend.app import create_app
    from backend.observability.logs import logging_config
    from backend.settings import ADMIN_TOKEN_FILE, Settings

    settings = Settings()
    migrate.upgrade(settings.sqlalchemy_url)
    if settings.admin_token is None:
        settings.admin_secret  # noqa: B018 - created now, so its location is printed before serving
        console.print(f"admin token: in {(settings.data_dir / ADMIN_TOKEN_FILE).resolve()}")
    console.print(
        f"FedAlign API on http://{host}:{port} (docs at /docs); database {_safe_url(settings.sqlalchemy_url)}"
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        log_config=logging_config(settings.log_format, log_level),
    )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def openapi(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of to standard output.")
    ] = None,
) -> None:
    """The API's OpenAPI document as JSON (the dashboard's typed client is generated from it)."""
    import json

    from backend.app import create_app

    # The schema keeps its fields in declaration order: the dashboard's forms follow it.
    text = json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    from backend import migrate
    from backend.settings import Settings

    settings = Settings()
    migrate.upgrade(settings.sqlalchemy_url, revision)
    console.print(f"database {_safe_url(settings.sqlalchemy_url)} upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes every table.")] = "-1",
) -> None:
    """Migrate the database down to REVISION (default: one step back)."""
    from backend import migrate
    from backend.settings import Settings

    settings = Settings()
    migrate.downgrade(settings.sqlalchemy_url, revision)
    console.print(f"database {_safe_url(settings.sqlalchemy_url)} downgraded to {revision}")


# Workers and nodes import `workers` only when they run; `backend` only where they are the server's.

ApiOption = Annotated[
    str | None,
    typer.Option("--api", help="The API's base URL (default: FEDALIGN_API_URL, else http://127.0.0.1:8000)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDALIGN_NODE_TOKEN",
        help="The node's own token, returned when it registered (or FEDALIGN_NODE_TOKEN, which `ps` does not "
        "show).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="This machine's data directory: datasets, node state (default FEDALIGN_DATA_DIR)."
    ),
]
DatasetOption = Annotated[
    str | None,
    typer.Option(
        "--dataset", "--data", help="The node's dataset spec on this machine; default: the one it registered."
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ThreadsOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Torch CPU threads. Set explicitly: on a shared CPU, two-thread training was measured 20-40x "
        "slower when another process competed for the cores.",
    ),
]


def _use_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        # Read by the dataset cache and by every settings class of this process.
        os.environ["FEDALIGN_DATA_DIR"] = str(data_dir.expanduser().resolve())


@app.command()
def worker(
    node: Annotated[
        str | None, typer.Option(help="This worker's node, by name or id (checked against the token).")
    ] = None,
    token: TokenOption = None,
    api: ApiOption = None,
    data_dir: DataDirOption = None,
    dataset: DatasetOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 1,
    aggregator: Annotated[
        bool,
        typer.Option(
            "--aggregator", help="Also run the server's aggregations (needs the server's database and store)."
        ),
    ] = False,
    credentials: Annotated[
        Path | None,
        typer.Option(help="A JSON file of node tokens (`fedalign up` writes one): serve every node in it."),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """A Celery worker: one node's steps (consuming only its queue node.<id>), and/or the aggregator."""
    _use_data_dir(data_dir)
    _set_threads(threads)
    from fedalign.device import Device
    from workers import celery_app

    settings = celery_app.WorkerSettings()
    try:
        celery_app.configure(settings)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    api_url = (api or settings.api_url).rstrip("/")
    nodes: list[celery_app.NodeCredential] = []
    if credentials is not None:
        listed = celery_app.CredentialsFile.model_validate_json(credentials.read_text(encoding="utf-8"))
        api_url = (api or listed.api).rstrip("/")
        nodes += listed.nodes
    if token is not None:
        try:
            nodes.append(celery_app.resolve_node(api_url, token, node))
        except Exception as exc:
            console.print(f"[red]error:[/] cannot use this node token at {api_url}: {exc}")
            raise typer.Exit(2) from exc
    elif node is not None:
        console.print("[red]error:[/] --node needs the node's --token (or FEDALIGN_NODE_TOKEN)")
        raise typer.Exit(2)
    if not nodes and not aggregator:
        console.print(
            "[red]error:[/] nothing to serve: give --node and --token, --credentials, or --aggregator"
        )
        raise typer.Exit(2)
    picked = Device.pick(device)
    celery_app.serve(
        [
            celery_app.ServedNode(
                node_id=n.node_id,
                name=n.name,
                token=n.token,
                api_url=api_url,
                state_dir=settings.state_dir,
                # --dataset is this one node's data; nodes from --credentials use their registered specs.
                data=dataset if n.token == token else None,
                device=picked,
            )
            for n in nodes
        ]
    )
    queues = [celery_app.node_queue(settings.queue_prefix, n.node_id) for n in nodes]
    if aggregator:
        queues.append(celery_app.aggregator_queue(settings.queue_prefix))
        _serve_aggregator_metrics()
    name = nodes[0].name if len(nodes) == 1 and not aggregator else "fedalign"
    console.print(f"worker for {', '.join([n.name for n in nodes] + (['aggregator'] if aggregator else []))}")
    celery_app.start(queues, hostname=f"{name}-{os.getpid()}@%h", loglevel=loglevel)


def _serve_aggregator_metrics() -> None:
    """Phases closed by this worker's aggregations are timed here: serve them at FEDALIGN_METRICS_ADDR."""
    from backend.observability.exposition import serve_worker_metrics
    from backend.settings import Settings

    address = Settings().metrics_addr
    if address:
        serve_worker_metrics(address)
        console.print(f"metrics on http://{address}/metrics")


@app.command()
def health(
    url: Annotated[
        str | None,
        typer.Option(help="Answer 0 when a GET of this URL answers 2xx (e.g. the API's /healthz)."),
    ] = None,
    broker: Annotated[
        bool,
        typer.Option("--broker", help="Answer 0 when FEDALIGN_BROKER_URL's broker accepts a connection."),
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for each answer.")] = 5.0,
) -> None:
    """A health probe for containers (their images have no curl): exit 0 if every check passes, else 1."""
    if url is None and not broker:
        console.print("[red]error:[/] give --url, --broker, or both")
        raise typer.Exit(2)
    failed: list[str] = []
    if url is not None:
        import httpx

        try:
            response = httpx.get(url, timeout=timeout)
            if not response.is_success:
                failed.append(f"{url} answered {response.status_code}")
        except httpx.HTTPError as exc:
            failed.append(f"{url}: {type(exc).__name__}")
    if broker:
        failed += _broker_check(timeout)
    for reason in failed:
        console.print(f"[red]unhealthy:[/] {reason}", soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


def _broker_check(timeout: float) -> list[str]:
    from kombu import Connection

    from workers.broker import celery_broker
    from workers.celery_app import WorkerSettings

    settings = WorkerSettings()
    if not settings.broker_url:
        return ["FEDALIGN_BROKER_URL is not set"]
    options = celery_broker(settings.broker_url, settings.data_dir)
    connection = Connection(
        options["broker_url"],
        transport=options.get("broker_transport"),
        transport_options=options["broker_transport_options"],
        connect_timeout=timeout,
    )
    try:
        # Opens a channel: kombu's Redis channel PINGs on opening, so a wrong password fails here too.
        connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        return [f"the broker is unreachable ({type(exc).__name__})"]
    finally:
        connection.release()
    return []


@node_app.command("run")
def node_run(
    token: TokenOption = None,
    api: ApiOption = None,
    dataset: DatasetOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 1,
    poll_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls when idle.")] = 1.0,
) -> None:
    """Run one node outside Celery: poll the API for its steps, run them on its own data, upload the results,
    until its federation ends. Its local state persists under the data directory between steps."""
    _use_data_dir(data_dir)
    _set_threads(threads)
    from fedalign.device import Device
    from workers.celery_app import WorkerSettings
    from workers.client import ClientError, NodeClient, run_node

    if token is None:
        console.print("[red]error:[/] give the node's --token (or FEDALIGN_NODE_TOKEN)")
        raise typer.Exit(2)
    settings = WorkerSettings()
    api_url = api or settings.api_url
    try:
        with NodeClient(api_url, token) as client:
            steps = run_node(
                client,
                dataset,
                device=Device.pick(device),
                poll_interval_s=poll_interval,
                state_dir=settings.state_dir,
            )
            status = client.federation_status
    except ClientError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"ran {steps} steps; the federation is {status}")


@app.command()
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
    import os

    from backend.embedded import UpError, UpOptions
    from backend.embedded import up as run_up

    root = data_dir or Path(os.environ.get("FEDALIGN_DATA_DIR", ".fedalign"))
    options = UpOptions(
        data_dir=root, host=host, port=port, threads=threads, demo_rounds=demo_rounds, start_demo=start
    )
    try:
        run_up(options, lambda message: console.print(message, soft_wrap=True, highlight=False, markup=False))
    except UpError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc


if __name__ == "__main__":
    app()
