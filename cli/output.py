"""How the client commands answer: one JSON document on standard output with ``--json``, Rich tables
otherwise, and every failure as a message on standard error with its own exit status (`cli.exit_codes`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from typing import Any

import typer
from pydantic import BaseModel
from rich.markup import escape

from cli import exit_codes
from cli.api_client import ApiError, Unreachable
from cli.client_config import ConfigProblem
from cli.console import err_console


def print_json(document: BaseModel | dict[str, Any] | list[Any]) -> None:
    """One JSON document: a model as the API writes it (``mode="json"``), or plain data."""
    data = document.model_dump(mode="json") if isinstance(document, BaseModel) else document
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=_default) + "\n")
    sys.stdout.flush()


def _default(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def error(message: str, status: int = exit_codes.ERROR) -> typer.Exit:
    """Print ``message`` as an error; the `typer.Exit` to raise with ``status``."""
    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(status)


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """Turn what can go wrong talking to the server into a message and an exit status."""
    try:
        yield
    except ApiError as exc:
        raise error(f"the server answered {exc.status} {exc.code}: {exc.message}") from exc
    except Unreachable as exc:
        raise error(
            f"{exc}; is the server running? Pass --url or set FEDALIGN_URL", exit_codes.UNREACHABLE
        ) from exc
    except ConfigProblem as exc:
        raise error(str(exc), exit_codes.USAGE) from exc


def when(value: dt.datetime | None) -> str:
    """A time for a table: local, to the second; '' for none."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else ""


def number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"
