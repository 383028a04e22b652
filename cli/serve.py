"""``fedalign serve`` and ``fedalign openapi``: the API service, and the document that describes it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.console import console
from cli.db import safe_url
from cli.extras import needs


@needs("serve", "server")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the API service (migrating its database first). Settings come from FEDALIGN_* variables."""
    import uvicorn

    from backend import migrate
    from backend.app import create_app
    from backend.http_limits import bounded_h11_protocol
    from backend.observability.logs import logging_config
    from backend.settings import ADMIN_TOKEN_FILE, SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from exc
    migrate.upgrade(settings.sqlalchemy_url)
    if settings.admin_token is None:
        settings.admin_secret  # noqa: B018 - created now, so its location is printed before serving
        console.print(f"admin token: in {(settings.data_dir / ADMIN_TOKEN_FILE).resolve()}")
    console.print(
        f"FedAlign API on http://{host}:{port} (docs at /docs); database {safe_url(settings.sqlalchemy_url)}"
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        # Slow clients cannot hold connections: headers within header_timeout_s (bodies: the app's own
        # limit), at most max_connections at once.
        http=bounded_h11_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        log_level=log_level,
        log_config=logging_config(settings.log_format, log_level),
    )


@needs("openapi", "server")
def openapi(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of to standard output.")
    ] = None,
) -> None:
    """The API's OpenAPI document as JSON (the dashboard's typed client is generated from it)."""
    from backend.app import create_app

    # The schema keeps its fields in declaration order: the dashboard's forms follow it.
    text = json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
