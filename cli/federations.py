"""``fedalign federations``: the coordinator's commands, against a running API with the admin token.

``list``, ``show``, ``create`` (from the TOML file ``fedalign simulate`` reads, with a plug-in
architecture's initial parameters), ``start``, ``pause``, ``resume``, ``cancel`` and ``watch`` (the run's
live events, until it ends). Every command that prints data takes ``--json``; where the server refuses,
its error code and message are printed and the exit status says what happened (`cli.exit_codes`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backend.schemas.federations import FederationOut, JoinTokenLimits
from backend.schemas.nodes import NodeCreate, NodeMode
from backend.schemas.rounds import RoundSummary
from cli import exit_codes
from cli.api_client import ApiClient, ApiError, Transition, Unreachable
from cli.client_config import JsonOption, TokenOption, UrlOption, client_settings, no_token_message
from cli.console import console, err_console
from cli.extras import require
from cli.options import SetOption
from cli.output import error, failures, number, print_json, when
from cli.simulate import TABLE_METRICS
from fedalign.config import Role
from messaging.node_api import TERMINAL_STATUSES

app = typer.Typer(
    no_args_is_help=True,
    help="Federations on a running server (the admin token): list, create, show, start, pause, resume, "
    "cancel, watch.",
)

FederationArgument = Annotated[
    str,
    typer.Argument(metavar="FEDERATION", help="The federation's id (or a unique id prefix, or its name)."),
]
# How `watch` ends: the exit status for each way a run can end.
END_STATUS = {"finished": exit_codes.OK, "cancelled": exit_codes.CANCELLED, "failed": exit_codes.FAILED}
# `watch`: how often the display asks the server for the federation's state while events arrive, and how
# long it keeps trying to reconnect a broken event stream.
REFRESH_S = 0.5
RECONNECT_FOR_S = 120.0


def admin_client(url: str | None, token: str | None, what: str) -> ApiClient:
    settings = client_settings(url, token)
    if settings.token is None:
        raise error(no_token_message(what), exit_codes.USAGE)
    return ApiClient(settings.url, settings.token)


# ----------------------------------------------------------------------------------------------- list


@app.command("list")
def list_federations(url: UrlOption = None, token: TokenOption = None, json_out: JsonOption = False) -> None:
    """Every federation on the server, newest first."""
    with failures(), admin_client(url, token, "`fedalign federations list`") as api:
        listed = api.federations()
    if json_out:
        print_json(listed)
        return
    if not listed.items:
        console.print("no federations yet: create one with `fedalign federations create CONFIG.toml`")
        return
    table = Table(title="federations")
    table.add_column("id", no_wrap=True, min_width=36)  # whole: commands take it
    for column in ("name", "status", "rounds", "phase", "D acc", "target acc", "created"):
        table.add_column(column, justify="right" if column in ("rounds", "D acc", "target acc") else "left")
    for f in listed.items:
        table.add_row(
            f.id,
            escape(f.name),
            _status(f),
            f"{f.progress.rounds_done}/{f.config.get('rounds', '?')}",
            f.phase or "",
            number(f.progress.disc_acc),
            number(f.progress.target_acc),
            when(f.created_at),
        )
    console.print(table)


def _status(f: FederationOut) -> str:
    colour = {
        "finished": "green",
        "running": "cyan",
        "stalled": "yellow",
        "failed": "red",
        "cancelled": "red",
    }
    return f"[{colour.get(f.status, 'default')}]{f.status}[/]"


# ----------------------------------------------------------------------------------------------- show


@app.command("show")
def show(
    federation: FederationArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """One federation: its status and progress, its nodes, and its metrics round by round."""
    with failures(), admin_client(url, token, "`fedalign federations show`") as api:
        found = api.find_federation(federation)
        nodes = api.nodes(found.id).items
        rounds = api.rounds(found.id).items
    if json_out:
        print_json({"federation": found, "nodes": nodes, "rounds": rounds})
        return
    console.print(_summary(found))
    if nodes:
        table = Table(title="nodes")
        for column in ("name", "role", "mode", "state", "train", "val", "test", "last seen"):
            table.add_column(column, justify="right" if column in ("train", "val", "test") else "left")
        for n in nodes:
            samples = n.samples or {}
            counts = [str(samples[s]) if s in samples else "" for s in ("train", "val", "test")]
            table.add_row(n.name, n.role, n.mode, n.state, *counts, when(n.last_seen))
        console.print(table)
    else:
        console.print("no nodes registered yet: `fedalign node register` (with the join token) adds one")
    metrics = rounds_table(rounds)
    if metrics is not None:
        console.print(metrics)


def _summary(f: FederationOut) -> str:
    config = f.config
    lines = [
        f"[bold]{escape(f.name)}[/] ({f.id})",
        f"  status: {_status(f)}" + (f" ({escape(f.stall_reason)})" if f.stall_reason else ""),
        f"  {config.get('algorithm')} on {config.get('architecture')}, seed {config.get('seed')}, "
        f"aggregator {config.get('aggregator')}",
        f"  rounds done: {f.progress.rounds_done} of {config.get('rounds')}"
        + (f", now round {f.round} phase {f.phase}" if f.round is not None and f.phase else ""),
    ]
    if f.progress.round_of_metrics is not None:
        lines.append(
            f"  round {f.progress.round_of_metrics}: D acc {number(f.progress.disc_acc)}, target acc "
            f"{number(f.progress.target_acc) or 'not measured'}"
        )
    if f.model_published:
        lines.append("  the target's model is published (GET .../model)")
    return "\n".join(lines)


def rounds_table(rounds: list[RoundSummary]) -> Table | None:
    """The federation's metrics per round (the columns `fedalign simulate` prints), or None before any."""
    measured = [r for r in rounds if r.metrics]
    shown = [(k, label) for k, label in TABLE_METRICS if any(k in r.metrics for r in measured)]
    if not measured or not shown:
        return None
    table = Table(title="per-round metrics")
    table.add_column("round", justify="right")
    for _, label in shown:
        table.add_column(label, justify="right")
    for r in measured:
        table.add_row(str(r.round), *(number(r.metrics.get(k)) for k, _ in shown))
    return table


# --------------------------------------------------------------------------------------------- create


@app.command("create")
def create(
    config_path: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG", help="Federation config (TOML): the file `fedalign simulate` reads."
        ),
    ],
    initial: Annotated[
        Path | None,
        typer.Option(
            help="The initial parameters `fedalign init-model` wrote (safetensors): needed for a plug-in "
            "architecture, or with model.init_checkpoint."
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="Their manifest document (default: beside --initial, as init-model names it)."),
    ] = None,
    register_nodes: Annotated[
        bool,
        typer.Option(
            "--register-nodes",
            help="Also register the config's [[nodes]] (one trust domain); their tokens are printed once. "
            "Otherwise each organisation registers its own node with the join token.",
        ),
    ] = False,
    mode: Annotated[NodeMode, typer.Option(help="With --register-nodes: the nodes' mode.")] = "rest",
    overrides: SetOption = None,
    start: Annotated[bool, typer.Option("--start", help="Start the federation once it is created.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a federation from a config file; print its id and join token (shown once)."""
    from fedalign.architecture_names import BUILTINS
    from fedalign.config import ConfigError, load_config

    try:
        config = load_config(config_path, overrides or ())
    except ConfigError as exc:
        raise error(str(exc), exit_codes.USAGE) from exc
    upload = _initial_files(initial, manifest)
    if start and not register_nodes:
        raise error(
            "--start needs --register-nodes: a federation starts with its nodes registered", exit_codes.USAGE
        )
    # The file's own settings; the server fills in the same defaults (one schema for both).
    settings = config.model_dump(mode="json", exclude_unset=True, exclude={"nodes"})
    with failures(), admin_client(url, token, "`fedalign federations create`") as api:
        created = api.create_federation(settings)
        if upload is not None:
            api.put_initial_manifest(created.id, upload[1])
            api.put_initial_parameters(created.id, upload[0])
        registered = []
        if register_nodes:
            for n in config.nodes:
                node = NodeCreate(name=n.name, role=n.role, dataset=n.dataset, mode=mode)
                registered.append(api.register_node(created.id, node))
        current = api.transition(created.id, "start") if start else api.federation(created.id)
    document = {**current.model_dump(mode="json"), "join_token": created.join_token}
    if register_nodes:
        document["node_tokens"] = [n.model_dump(mode="json") for n in registered]
    if json_out:
        print_json(document)
        return
    console.print(
        f"created federation [bold]{escape(created.name)}[/] ({created.id}), status {current.status}"
    )
    console.print(f"join token (shown once; registers nodes in this federation only): {created.join_token}")
    if upload is not None:
        console.print(f"initial parameters uploaded from {upload[0]}")
    elif config.architecture not in BUILTINS or config.model.init_checkpoint:
        checkpoint = ", with model.init_checkpoint" if config.model.init_checkpoint else ""
        err_console.print(
            f"[yellow]note:[/] the server cannot build this federation's initial parameters "
            f"({config.architecture}{checkpoint}): "
            f"run `fedalign init-model {config_path} -o init.safetensors` and create it with --initial "
            "init.safetensors",
            soft_wrap=True,
        )
    for n in registered:
        console.print(f"node [bold]{n.name}[/] ({n.role}) token (shown once): {n.token}")
        console.print(f"  run it with: {n.run_command}", soft_wrap=True, highlight=False, markup=False)
    if not register_nodes and config.nodes:
        console.print(
            f"the config's {len(config.nodes)} nodes are not registered: each registers with `fedalign node "
            f"register {created.id} --name NAME --role ROLE --dataset SPEC` and the join token "
            "(or create with --register-nodes)"
        )


def _initial_files(initial: Path | None, manifest: Path | None) -> tuple[Path, dict[str, Any]] | None:
    """The initial parameters' file and its manifest document, read before anything is created."""
    if initial is None:
        if manifest is not None:
            raise error("--manifest goes with --initial (the parameters it describes)", exit_codes.USAGE)
        return None
    if manifest is None:
        require("node", "finding the manifest beside --initial (or pass --manifest)")
        from fedalign.initial_parameters import manifest_path_for

        manifest = manifest_path_for(initial)
    for path in (initial, manifest):
        if not path.is_file():
            raise error(f"{path} does not exist; `fedalign init-model` writes both files", exit_codes.USAGE)
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{manifest} is not a JSON manifest document: {exc}", exit_codes.USAGE) from exc
    return initial, document


# ---------------------------------------------------------------------------------------- transitions


def _transition(
    action: Transition, federation: str, url: str | None, token: str | None, json_out: bool
) -> None:
    with failures(), admin_client(url, token, f"`fedalign federations {action}`") as api:
        found = api.find_federation(federation)
        after = api.transition(found.id, action)
    if json_out:
        print_json(after)
    else:
        console.print(f"federation [bold]{escape(after.name)}[/] ({after.id}) is {_status(after)}")


@app.command("start")
def start_federation(
    federation: FederationArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Start the run with the nodes registered so far."""
    _transition("start", federation, url, token, json_out)


@app.command("pause")
def pause_federation(
    federation: FederationArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop handing out steps (those already claimed may complete)."""
    _transition("pause", federation, url, token, json_out)


@app.command("resume")
def resume_federation(
    federation: FederationArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Hand out steps again."""
    _transition("resume", federation, url, token, json_out)


@app.command("cancel")
def cancel_federation(
    federation: FederationArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """End the run for good."""
    _transition("cancel", federation, url, token, json_out)


@app.command("continue")
def continue_federation(
    federation: FederationArgument,
    rounds: Annotated[int, typer.Option(min=1, max=100_000, help="How many more rounds to run.")],
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run a finished federation for more rounds, from where it ended. REST nodes that left when it finished
    are started again (`fedalign node run`, same data directory)."""
    with failures(), admin_client(url, token, "`fedalign federations continue`") as api:
        found = api.find_federation(federation)
        after = api.continue_for(found.id, rounds)
    if json_out:
        print_json(after)
    else:
        console.print(f"federation [bold]{escape(after.name)}[/] ({after.id}) is {_status(after)}")


# ---------------------------------------------------------------------------------------------- tokens

# The config's roles as a choice typer can list (it takes an Enum, not a Literal).
RoleChoice = Enum("RoleChoice", {r: r for r in get_args(Role)}, type=str)  # type: ignore[misc]

RevokeOption = Annotated[
    bool,
    typer.Option("--revoke", help="Revoke it instead: it stops working at once, and nothing replaces it."),
]


@app.command("join-token")
def join_token(
    federation: FederationArgument,
    revoke: RevokeOption = False,
    expires_in: Annotated[
        int | None,
        typer.Option(
            metavar="SECONDS",
            min=60,
            max=366 * 24 * 3600,
            help="The new token stops working this long from now.",
        ),
    ] = None,
    max_nodes: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="The new token registers at most this many nodes.")
    ] = None,
    role: Annotated[
        list[RoleChoice] | None, typer.Option(help="A role the new token may register (repeat it for both).")
    ] = None,
    organisation: Annotated[
        str | None, typer.Option(help="Every node the new token registers belongs to this organisation.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Rotate the federation's join token (a new one, shown once; the old one stops working at once), or
    revoke it."""
    with failures(), admin_client(url, token, "`fedalign federations join-token`") as api:
        found = api.find_federation(federation)
        if revoke:
            api.revoke_join_token(found.id)
        else:
            roles = [r.value for r in role or ()] or None
            limits = JoinTokenLimits(
                expires_in_s=expires_in, max_registrations=max_nodes, roles=roles, organisation=organisation
            )
            rotated = api.rotate_join_token(found.id, limits)
    if revoke:
        if json_out:
            print_json({"federation_id": found.id, "revoked": "join_token"})
        else:
            console.print(
                f"the join token of [bold]{escape(found.name)}[/] is revoked: registering needs a new one"
            )
    elif json_out:
        print_json(rotated)
    else:
        console.print(
            f"the new join token of [bold]{escape(found.name)}[/] (shown once): {rotated.join_token}"
        )
        limits_said = [
            f"expires {rotated.expires_at:%Y-%m-%d %H:%M} UTC" if rotated.expires_at else "",
            f"registers {rotated.registrations_left} node(s)" if rotated.registrations_left else "",
            f"only {' or '.join(rotated.roles)} nodes" if rotated.roles else "",
            f"registers nodes of {escape(rotated.organisation)}" if rotated.organisation else "",
        ]
        if any(limits_said):
            console.print("it " + ", ".join(x for x in limits_said if x))


@app.command("node-token")
def node_token(
    federation: FederationArgument,
    node: Annotated[str, typer.Argument(metavar="NODE", help="The node's name.")],
    revoke: RevokeOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Rotate a node's token (a new one, shown once, with the command that runs the node; the old one stops
    working at once), or revoke it (until it is rotated)."""
    with failures(), admin_client(url, token, "`fedalign federations node-token`") as api:
        found = api.find_federation(federation)
        if revoke:
            api.revoke_node_token(found.id, node)
        else:
            rotated = api.rotate_node_token(found.id, node)
    if revoke:
        if json_out:
            print_json({"federation_id": found.id, "node": node, "revoked": "token"})
        else:
            console.print(
                f"node [bold]{escape(node)}[/]'s token is revoked: rotate it to let the node back in"
            )
    elif json_out:
        print_json(rotated)
    else:
        console.print(f"node [bold]{escape(node)}[/]'s new token (shown once): {rotated.token}")
        console.print(f"run it with:\n  {rotated.run_command}", soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------------------------- watch


@app.command("watch")
def watch(
    federation: FederationArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Follow the run live until it ends; the exit status says how: 0 finished, 5 cancelled, 6 failed.

    A stalled or paused run is watched on (it may go on). With --json, nothing is shown while it runs and
    the federation as it ended is printed."""
    with failures(), admin_client(url, token, "`fedalign federations watch`") as api:
        found = api.find_federation(federation)
        final = found if found.status in TERMINAL_STATUSES else _follow(api, found, show=not json_out)
    if json_out:
        print_json(final)
    else:
        console.print(_ending(final))
    raise typer.Exit(END_STATUS.get(final.status, exit_codes.ERROR))


def _ending(f: FederationOut) -> str:
    rounds = f.config.get("rounds")
    text = (
        f"federation [bold]{escape(f.name)}[/] {_status(f)} after {f.progress.rounds_done} of {rounds} rounds"
    )
    if f.progress.round_of_metrics is not None:
        text += f" (round {f.progress.round_of_metrics}: D acc {number(f.progress.disc_acc)}"
        text += f", target acc {number(f.progress.target_acc)})" if f.progress.target_acc is not None else ")"
    return text + (f": {escape(f.stall_reason)}" if f.stall_reason else "")


def _follow(api: ApiClient, federation: FederationOut, *, show: bool) -> FederationOut:
    """Follow the federation's event stream (reconnecting after the last event seen) until a terminal status;
    the federation as it ended."""
    started = dt.datetime.now(dt.UTC)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[where]}"),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    )
    current = federation
    last_id, refreshed, broken_since = 0, 0.0, None
    with progress:
        rounds = federation.config.get("rounds")
        task = progress.add_task(escape(federation.name), total=rounds, where="", metrics="")
        _show(progress, task, current)
        while True:
            try:
                for sse in api.events(federation.id, after=last_id):
                    broken_since = None
                    last_id = sse.id
                    event = sse.event
                    if event.type == "status" and event.created_at >= started and show:
                        reason = event.payload.get("reason")
                        progress.console.print(  # markup off: the reason is the server's text
                            f"status: {event.payload.get('status')}" + (f" ({reason})" if reason else ""),
                            markup=False,
                        )
                    terminal = event.type == "status" and event.payload.get("status") in TERMINAL_STATUSES
                    if terminal or time.monotonic() - refreshed > REFRESH_S:
                        current = api.federation(federation.id)
                        refreshed = time.monotonic()
                        _show(progress, task, current)
                    # A continued federation's stream replays its earlier ending: only the present one counts.
                    if terminal and current.status in TERMINAL_STATUSES:
                        return current
                # The server closed the stream (it restarts, or the federation is gone: this says which).
                current = api.federation(federation.id)
                if current.status in TERMINAL_STATUSES:
                    return current
            except Unreachable:
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > RECONNECT_FOR_S:
                    raise
                time.sleep(min(5.0, 0.5 + (time.monotonic() - broken_since) / 4))
            except ApiError as exc:
                if exc.status < 500:
                    raise
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > RECONNECT_FOR_S:
                    raise
                time.sleep(1.0)


def _show(progress: Progress, task: Any, f: FederationOut) -> None:
    where = f"round {f.round} {f.phase}" if f.round is not None and f.phase else f.status
    if f.status in ("paused", "stalled"):
        where = f"[yellow]{f.status}[/]"
    metrics = []
    if f.progress.disc_acc is not None:
        metrics.append(f"D acc {f.progress.disc_acc:.3f}")
    if f.progress.target_acc is not None:
        metrics.append(f"target acc {f.progress.target_acc:.3f}")
    progress.update(task, completed=f.progress.rounds_done, where=where, metrics="  ".join(metrics))
