"""``fedalign tokens``: access tokens (the coordinator's commands): ``create`` one with a role and an
organisation, ``list`` them, ``rotate`` or ``revoke`` one. Rotating the coordinator's own token this way
needs no restart; every command takes ``--json``."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, get_args

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from backend.operations import Role
from backend.schemas.access_tokens import AccessTokenCreate, AccessTokenCreated
from cli import exit_codes
from cli.client_config import JsonOption, TokenOption, UrlOption
from cli.console import console
from cli.federations import admin_client
from cli.output import error, failures, print_json, when

app = typer.Typer(
    no_args_is_help=True,
    help="Access tokens on a running server (a coordinator's token): create, list, rotate, revoke.",
)

RoleChoice = Enum("RoleChoice", {r: r for r in get_args(Role)}, type=str)  # type: ignore[misc]
TokenIdArgument = Annotated[
    str, typer.Argument(metavar="TOKEN_ID", help="The access token's id (`fedalign tokens list`).")
]


def _show_created(created: AccessTokenCreated, json_out: bool, what: str) -> None:
    if json_out:
        print_json(created)
        return
    scope = f" of organisation {escape(created.organisation)}" if created.organisation else ""
    console.print(f"{what} {created.role} token [bold]{escape(created.name)}[/]{scope} (id {created.id})")
    console.print(f"the token (shown once): {created.token}", soft_wrap=True, highlight=False)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A label: whom or what it is for.")],
    role: Annotated[RoleChoice, typer.Option(help="coordinator, owner or viewer.")],
    organisation: Annotated[
        str | None,
        typer.Option(help="An owner or viewer token's organisation (none for a coordinator)."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Issue an access token; it is shown once (the server keeps only its hash)."""
    try:
        body = AccessTokenCreate(name=name, role=role.value, organisation=organisation)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise error(f"fedalign tokens create: {problems}", exit_codes.USAGE) from exc
    with failures(), admin_client(url, token, "`fedalign tokens create`") as api:
        created = api.create_access_token(body)
    _show_created(created, json_out, "issued the")


@app.command("list")
def list_tokens(url: UrlOption = None, token: TokenOption = None, json_out: JsonOption = False) -> None:
    """Every access token issued, revoked ones included (never the tokens themselves)."""
    with failures(), admin_client(url, token, "`fedalign tokens list`") as api:
        listed = api.access_tokens()
    if json_out:
        print_json(listed)
        return
    if not listed.items:
        console.print("no access tokens yet: issue one with `fedalign tokens create NAME --role viewer ...`")
        return
    table = Table(title="access tokens")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("name", "role", "organisation", "created", "revoked"):
        table.add_column(column)
    for t in listed.items:
        table.add_row(t.id, t.name, t.role, t.organisation or "", when(t.created_at), when(t.revoked_at))
    console.print(table)


@app.command("rotate")
def rotate(
    token_id: TokenIdArgument, url: UrlOption = None, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """A new secret for the token (shown once); the old one and its dashboard sessions end at once."""
    with failures(), admin_client(url, token, "`fedalign tokens rotate`") as api:
        rotated = api.rotate_access_token(token_id)
    _show_created(rotated, json_out, "rotated the")


@app.command("revoke")
def revoke(
    token_id: TokenIdArgument, url: UrlOption = None, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """The token and its dashboard sessions stop working at once."""
    with failures(), admin_client(url, token, "`fedalign tokens revoke`") as api:
        api.revoke_access_token(token_id)
    if json_out:
        print_json({"id": token_id, "revoked": True})
    else:
        console.print(f"access token {escape(token_id)} is revoked; its dashboard sessions have ended")
