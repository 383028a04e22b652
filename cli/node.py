"""``fedalign node``: a partner's node. ``register`` joins a federation (base install); ``run`` runs the node
outside Celery, polling the API for its steps (`workers.client`, the ``node`` extra)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from backend.schemas.nodes import NodeCreate, NodeMode
from cli import exit_codes
from cli.client_config import JsonOption, UrlOption, client_settings, no_token_message
from cli.client_config import TokenOption as ClientTokenOption
from cli.console import console
from cli.extras import needs
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
from fedalign.config import Role

app = typer.Typer(
    no_args_is_help=True,
    help="A partner's node: register it in a federation, or run it outside Celery (it polls the API).",
)


@app.command("run")
@needs("node run", "node")
def node_run(
    token: TokenOption = None,
    api: ApiOption = None,
    dataset: DatasetOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 1,
    poll_interval: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Seconds before trying again when the API cannot be reached (a poll itself waits on the "
            "server for the next step).",
        ),
    ] = 1.0,
) -> None:
    """Run one node outside Celery: poll the API for its steps, run them on its own data, upload the results,
    until its federation ends. Its local state persists under the data directory between steps."""
    use_data_dir(data_dir)
    set_threads(threads)
    from fedalign.device import Device
    from workers.audit import AuditLog
    from workers.client import ClientError, NodeClient, run_node
    from workers.settings import WorkerSettings

    if token is None:
        console.print("[red]error:[/] give the node's --token (or FEDALIGN_NODE_TOKEN)")
        raise typer.Exit(2)
    settings = WorkerSettings()
    api_url = api or settings.api_url
    try:
        with NodeClient(api_url, token, audit=AuditLog(settings.audit_path)) as client:
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


@app.command("audit")
@needs("node audit", "node")
def node_audit(
    data_dir: DataDirOption = None,
    verify_only: Annotated[
        bool,
        typer.Option("--verify", help="Only verify: the chain intact and nothing but parameters/metrics."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Show and verify this machine's record of everything its nodes sent: each request with its size,
    sha256 and what it held (tensor names, JSON fields, metrics). Exits 1 when the record was altered or
    something other than parameters and the protocol's metrics was sent."""
    use_data_dir(data_dir)
    from cli.output import print_json
    from workers import audit
    from workers.settings import WorkerSettings

    path = WorkerSettings().audit_path
    if not path.exists():
        console.print(
            f"[red]error:[/] no audit log at {path}: no node has sent anything from this data directory"
        )
        raise typer.Exit(exit_codes.USAGE)
    checked = audit.verify(path)
    if json_output:
        entries = [] if verify_only else audit.read(path)
        print_json({"path": str(path), "ok": checked.ok, **asdict(checked), "entries": entries})
    else:
        if not verify_only:
            console.print(audit_table(audit.read(path)))
        console.print(f"{checked.entries} requests, {checked.sent_bytes} bytes sent, recorded in {path}")
        if checked.chain_broken_at is not None:
            console.print(
                f"[red]the record was altered: the chain breaks at line {checked.chain_broken_at}[/]"
            )
        for line in checked.undeclared:
            console.print(f"[red]not parameters or declared metrics: {line}[/]")
        if checked.ok:
            console.print("[green]verified: the record is intact, and only parameters and metrics left[/]")
    if not checked.ok:
        raise typer.Exit(1)


def audit_table(entries: list[dict[str, Any]]) -> Table:
    table = Table("time", "request", "status", "bytes", "sha256", "what")
    for e in entries:
        body = e.get("body", {})
        if body.get("kind") == "multipart":  # a combined submission: each part, named by its slot
            what = "; ".join(f"{p.get('name')}: {_body_what(p.get('body', {}))}" for p in body["parts"])
        else:
            what = _body_what(body)
        table.add_row(
            e.get("time", "")[:19],
            f"{e.get('method')} {escape(e.get('url', ''))}",
            str(e.get("status", e.get("error", ""))),
            str(e.get("bytes", 0)),
            e.get("sha256", "")[:12],
            escape(what),
        )
    return table


def _body_what(body: dict[str, Any]) -> str:
    kind = body.get("kind", "?")
    if kind == "safetensors":
        return f"parameters: {len(body['tensors'])} tensors"
    if kind == "json":
        metrics = body.get("metrics")
        return "metrics: " + ", ".join(sorted(metrics)) if metrics else "json: " + ", ".join(body["fields"])
    return str(kind)


@app.command("register")
def node_register(
    federation: Annotated[str, typer.Argument(metavar="FEDERATION", help="The federation's id.")],
    name: Annotated[str, typer.Option(help="The node's name, unique in the federation.")],
    role: Annotated[Role, typer.Option(help="source (labelled data) or target (the unlabelled domain).")],
    dataset: Annotated[
        str, typer.Option(help="The dataset spec on the node's own machine (the server never reads it).")
    ],
    mode: Annotated[
        NodeMode, typer.Option(help="rest: the node polls the API; celery: steps are sent to its worker.")
    ] = "rest",
    url: UrlOption = None,
    token: ClientTokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register a node with the federation's join token (or the admin token); print the node's own token
    (shown once) and the command that runs it."""
    from cli.api_client import ApiClient
    from cli.output import error, failures, print_json

    with failures():
        settings = client_settings(url, token)
        if settings.token is None:
            raise error(no_token_message("`fedalign node register`"), exit_codes.USAGE)
        with ApiClient(settings.url, settings.token) as api:
            created = api.register_node(
                federation, NodeCreate(name=name, role=role, dataset=dataset, mode=mode)
            )
    if json_out:
        print_json(created)
        return
    console.print(
        f"registered node [bold]{created.name}[/] ({created.role}, {created.mode}), id {created.id}"
    )
    console.print(f"its token (shown once; keep it on the node's machine): {created.token}")
    console.print(f"run it on that machine with:\n  {created.run_command}", soft_wrap=True, highlight=False)
