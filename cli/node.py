"""``fedalign node``: a node outside Celery, polling the API for its steps (`workers.client`)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.console import console
from cli.options import (
    ApiOption,
    DataDirOption,
    DatasetOption,
    DeviceOption,
    ThreadsOption,
    TokenOption,
    set_threads,
    use_data_dir,
)

app = typer.Typer(no_args_is_help=True, help="A node outside Celery: it polls the API for its steps.")


@app.command("run")
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
    use_data_dir(data_dir)
    set_threads(threads)
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
