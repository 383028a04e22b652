"""``fedalign worker``: a Celery worker for nodes' steps (`workers.celery_app`), the server's aggregations
(`backend.celery_app`), or both in one process (``fedalign up``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.console import console
from cli.extras import needs, require
from cli.options import (
    ApiOption,
    DataDirOption,
    DatasetOption,
    DeviceOption,
    StepsOption,
    ThreadsOption,
    TokenOption,
    set_threads,
    use_data_dir,
)


@needs("worker", "node")
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
    loglevel: Annotated[
        str, typer.Option(help="Log level of the worker's own records (Celery's show from WARNING up).")
    ] = "INFO",
    steps: StepsOption = None,
) -> None:
    """A Celery worker: one node's steps (consuming only its queue node.<id>), and/or the aggregator."""
    if aggregator:  # the server's aggregations: the server's code and its Celery
        require("server", "`fedalign worker --aggregator`")
    else:
        require("celery", "`fedalign worker`")
    use_data_dir(data_dir)
    set_threads(threads)
    from cli.node import load_steps_option
    from fedalign.device import Device
    from messaging.celery_contract import aggregator_queue, node_queue
    from workers import celery_app

    node_steps = load_steps_option(steps)  # a bad path stops the worker before it connects anywhere
    if steps is not None:
        console.print(f"its nodes run their own steps: {steps}", soft_wrap=True, markup=False)
    if aggregator:  # the server's code, only in a worker that aggregates
        from backend import celery_app as server_app
        from backend.settings import Settings

    settings = celery_app.WorkerSettings()
    # The app this process runs: the server's for the aggregator alone, else the nodes' (which the server's
    # task joins when this worker aggregates too, as `fedalign up`'s does).
    aggregator_only = aggregator and credentials is None and token is None and node is None
    try:
        if aggregator_only:
            server_app.configure(Settings())
        else:
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
                audit_path=settings.audit_path,
                steps=node_steps,
                state_fsync=settings.node_state_fsync,
                submit_in_background=settings.submits_in_background,
            )
            for n in nodes
        ]
    )
    queues = [node_queue(settings.queue_prefix, n.node_id) for n in nodes]
    start = celery_app.start
    if aggregator:
        queues.append(aggregator_queue(settings.queue_prefix))
        if aggregator_only:
            start = server_app.start
        else:
            server_app.add_server_tasks(celery_app.app)
        _serve_aggregator_metrics(Settings().metrics_addr)
    name = nodes[0].name if len(nodes) == 1 and not aggregator else "fedalign"
    console.print(f"worker for {', '.join([n.name for n in nodes] + (['aggregator'] if aggregator else []))}")
    start(queues, hostname=f"{name}-{os.getpid()}@%h", loglevel=loglevel)


def _serve_aggregator_metrics(address: str | None) -> None:
    """Phases closed by this worker's aggregations are timed here: serve them at FEDALIGN_METRICS_ADDR."""
    from backend.observability.exposition import serve_worker_metrics

    if address:
        serve_worker_metrics(address)
        console.print(f"metrics on http://{address}/metrics")
