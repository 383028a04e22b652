"""Structured logs, one format for the API and every worker: each record carries ``federation``, ``round``
and ``node`` (null when it is about none), as JSON lines (``FEDALIGN_LOG_FORMAT=json``) or as text with the
known fields appended.

The fields come from a context variable, not from each call site: the API's HTTP middleware opens one
`LogFields` per request, and code that learns who a request is about (a node's token resolved, a step
loaded, a federation locked) calls `bind`. Sync routes run in worker threads on a *copy* of the request's
context, but the copy holds the same `LogFields` object, so what a route binds is still there when
uvicorn writes the request's access line. Outside a request (the sweep, an aggregation thread, a Celery
task) `bind` does nothing unless a `scope` was opened: a thread that runs one job after another must
not stamp the next job's records with the last one's node.

The API configures its logging with `backend.observability.logs.logging_config` (uvicorn's records in the
same shape); a Celery worker with `worker_logging_config` (`messaging.celery_worker`). Both sides read
`LogSettings`. Tokens never appear here: the fields are ids, names and round numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from pythonjsonlogger.json import JsonFormatter

FIELDS = ("federation", "round", "node")
LogFormat = Literal["text", "json"]
# Every FedAlign logger is under this name; other libraries' records pass at WARNING and above.
PRODUCT_LOGGER = "fedalign"


class LogSettings(BaseSettings):
    """How the API and the workers write their logs, from ``FEDALIGN_`` variables."""

    model_config = SettingsConfigDict(env_prefix="FEDALIGN_", extra="ignore")

    log_format: Annotated[
        LogFormat,
        Field(
            description="Logs of `fedalign serve` and `fedalign worker` (and so of `fedalign up`): text, or "
            "one JSON object per line (with federation, round and node fields)."
        ),
    ] = "text"


@dataclass
class LogFields:
    federation: str | None = None
    round: int | None = None
    node: str | None = None


_current: ContextVar[LogFields | None] = ContextVar("fedalign_log_fields", default=None)


def current() -> LogFields | None:
    return _current.get()


def bind(*, federation: str | None = None, round: int | None = None, node: str | None = None) -> None:
    """Note who the current request (or `scope`) is about; fields left None are kept as they are."""
    fields = _current.get()
    if fields is None:
        return
    if federation is not None:
        fields.federation = federation
    if round is not None:
        fields.round = round
    if node is not None:
        fields.node = node


@contextmanager
def scope(**fields: Any) -> Iterator[LogFields]:
    """Records inside the block carry ``fields`` (on top of the enclosing scope's); `bind` inside it
    changes this scope only."""
    parent = _current.get()
    opened = replace(parent or LogFields(), **fields)
    token = _current.set(opened)
    try:
        yield opened
    finally:
        _current.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound fields on every record that does not carry them already (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _current.get()
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, getattr(fields, name) if fields is not None else None)
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message [federation=.. round=.. node=..]``, the brackets only when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        known = [f"{n}={getattr(record, n)}" for n in FIELDS if getattr(record, n, None) is not None]
        return f"{text} [{' '.join(known)}]" if known else text


def json_formatter() -> JsonFormatter:
    """One JSON object per line: timestamp, level, logger, message, federation, round, node (and the
    exception, if any). uvicorn's ``color_message`` (the message again, with ANSI colours) is left out."""
    # Imported here: a node's settings (LogSettings) load without python-json-logger, which JSON logs need.
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(federation)s %(round)s %(node)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def worker_logging_config(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` for a worker process: every record to stderr in the API's format
    (`TextFormatter`, or JSON lines); ``fedalign`` loggers at ``level``, other libraries' (Celery's, kombu's)
    at WARNING and above."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"fedalign": {"()": json_formatter if log_format == "json" else TextFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "fedalign",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "": {"handlers": ["stderr"], "level": "WARNING"},
            PRODUCT_LOGGER: {"level": level.upper()},
        },
    }
