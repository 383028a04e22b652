"""``fedalign health``: the probe of the containers' health checks (their images have no curl)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.console import console
from cli.extras import require


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
        require("celery", "`fedalign health --broker`")
        failed += _broker_check(timeout)
    for reason in failed:
        console.print(f"[red]unhealthy:[/] {reason}", soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


def _broker_check(timeout: float) -> list[str]:
    from kombu import Connection

    from messaging.broker import celery_broker
    from workers.settings import WorkerSettings

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
