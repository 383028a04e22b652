"""``fedalign node``: a partner's node. ``register`` joins a federation (base install); ``run`` runs the node
outside Celery, polling the API for its steps (`workers.client`, the ``node`` extra); ``check`` compares a
node's own steps with FedAlign's (`workers.conformance`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    StepsOption,
    ThreadsOption,
    TokenOption,
    set_threads,
    use_data_dir,
)
from fedalign.config import Role

if TYPE_CHECKING:
    from workers.steps import StepsFactory

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
    steps: StepsOption = None,
) -> None:
    """Run one node outside Celery: poll the API for its steps, run them on its own data, upload the results,
    until its federation ends. Its local state persists under the data directory between steps."""
    use_data_dir(data_dir)
    set_threads(threads)
    node_steps = load_steps_option(steps)
    from fedalign.device import Device
    from workers.audit import AuditLog
    from workers.client import ClientError, NodeClient, run_node
    from workers.settings import WorkerSettings

    if token is None:
        console.print("[red]error:[/] give the node's --token (or FEDALIGN_NODE_TOKEN)")
        raise typer.Exit(2)
    settings = WorkerSettings()
    api_url = api or settings.api_url
    if steps is not None:
        console.print(f"this node runs its own steps: {escape(steps)}", soft_wrap=True)
    try:
        with NodeClient(api_url, token, audit=AuditLog(settings.audit_path)) as client:
            ran = run_node(
                client,
                dataset,
                device=Device.pick(device),
                poll_interval_s=poll_interval,
                state_dir=settings.state_dir,
                state_fsync=settings.node_state_fsync,
                steps=node_steps,
            )
            status = client.federation_status
    except ClientError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"ran {ran} steps; the federation is {status}")


def load_steps_option(path: str | None) -> StepsFactory:
    """The steps a ``--steps`` option names (FedAlign's own without one); exits with a usage error that says
    what is wrong with the path."""
    import os
    import sys

    from workers.reference_steps import ReferenceSteps
    from workers.step_runtime import StepsError, load_steps

    if path is None:
        return ReferenceSteps
    if os.getcwd() not in sys.path:  # as `python -m` would: a module beside the user is found
        sys.path.append(os.getcwd())
    try:
        return load_steps(path)
    except StepsError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(exit_codes.USAGE) from exc


@app.command("check")
@needs("node check", "node")
def node_check(
    steps: Annotated[
        str,
        typer.Option(
            "--steps",
            help="The steps to check: package.module:ClassName, a subclass of workers.steps.Steps.",
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="A federation config (TOML) whose settings the scratch federation takes (its nodes are "
            "replaced by synthetic ones); default: the method's defaults on a small network."
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(min=0.0, help="Relative and absolute tolerance on every tensor value and metric."),
    ] = 1e-5,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = 1,
    json_output: JsonOption = False,
) -> None:
    """Run your steps beside FedAlign's reference steps in a scratch federation on synthetic data (same step,
    same downloads) and say, per step kind, whether their uploads and metrics agree. Exits 1 on a
    disagreement."""
    set_threads(threads)
    node_steps = load_steps_option(steps)
    from cli.output import print_json
    from fedalign.device import Device
    from workers.conformance import check_steps, scratch_config

    try:
        scratch = scratch_config(_read_settings(config) if config is not None else None)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError and TOML's errors are ValueErrors
        console.print(f"[red]error:[/] --config {config}: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(exit_codes.USAGE) from exc
    try:
        report = check_steps(node_steps, scratch, name=steps, tolerance=tolerance, device=Device.pick(device))
    except Exception as exc:  # the user's class cannot even be built for the scratch federation
        console.print(f"[red]error:[/] cannot run {escape(steps)}: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(exit_codes.ERROR) from exc
    if json_output:
        print_json(report.to_json())
    else:
        console.print(conformance_table(report.to_json()))
        verdict = "[green]agrees with[/]" if report.ok else "[red]disagrees with[/]"
        console.print(f"{escape(steps)} {verdict} FedAlign's reference steps (tolerance {tolerance:g})")
        if report.first is not None:
            first = report.first
            console.print(f"first disagreement ({first['kind']} step): {escape(first['disagreement'])}")
    if not report.ok:
        raise typer.Exit(exit_codes.ERROR)


def _read_settings(path: Path) -> dict[str, Any]:
    """A federation config's settings, without its nodes (the scratch federation has its own)."""
    import tomllib

    settings = tomllib.loads(path.read_text(encoding="utf-8"))
    settings.pop("nodes", None)
    # A relative init_checkpoint names a file beside the config (as `fedalign simulate` reads it).
    model = settings.get("model")
    if isinstance(model, dict) and isinstance(model.get("init_checkpoint"), str):
        checkpoint = Path(model["init_checkpoint"]).expanduser()
        model["init_checkpoint"] = str(checkpoint if checkpoint.is_absolute() else path.parent / checkpoint)
    return settings


def conformance_table(report: dict[str, Any]) -> Table:
    table = Table("step kind", "steps", "uploads", "metrics", "first disagreements")
    for kind in report["kinds"]:
        if not kind["steps"]:
            table.add_row(kind["kind"], "0", "", "", "not run in the scratch federation")
            continue
        shown = [*kind["errors"], *kind["uploads"], *kind["metrics"]][:3]
        table.add_row(
            kind["kind"],
            str(kind["steps"]),
            "[green]agree[/]" if kind["uploads_agree"] else "[red]differ[/]",
            "[green]agree[/]" if kind["metrics_agree"] else "[red]differ[/]",
            escape("\n".join(shown)),
        )
    return table


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
    organisation: Annotated[
        str | None,
        typer.Option(
            help="The organisation that runs the node (a join token may fix it); its viewers see it."
        ),
    ] = None,
    url: UrlOption = None,
    token: ClientTokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register a node with the federation's join token (or a manager's token); print the node's own token
    (shown once) and the command that runs it."""
    from cli.api_client import ApiClient
    from cli.output import error, failures, print_json

    with failures():
        settings = client_settings(url, token)
        if settings.token is None:
            raise error(no_token_message("`fedalign node register`"), exit_codes.USAGE)
        with ApiClient(settings.url, settings.token) as api:
            created = api.register_node(
                federation,
                NodeCreate(name=name, role=role, dataset=dataset, mode=mode, organisation=organisation),
            )
    if json_out:
        print_json(created)
        return
    console.print(
        f"registered node [bold]{created.name}[/] ({created.role}, {created.mode}), id {created.id}"
    )
    console.print(f"its token (shown once; keep it on the node's machine): {created.token}")
    console.print(f"run it on that machine with:\n  {created.run_command}", soft_wrap=True, highlight=False)
