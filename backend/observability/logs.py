"""The API process's logging: `logging_config`, which gives uvicorn's records (startup, access lines) the
shape of every other record from the first line on.

The format itself, the fields every record carries (federation, round, node) and `bind` / `scope`, which set
them, are `messaging.logs`: the workers write the same lines. They are imported here so that the server's
code binds through ``backend.observability.logs`` as before.
"""

from __future__ import annotations

from typing import Any

from messaging.logs import (
    FIELDS,
    ContextFilter,
    LogFields,
    LogFormat,
    TextFormatter,
    bind,
    current,
    json_formatter,
    scope,
)

__all__ = [
    "FIELDS",
    "ContextFilter",
    "LogFields",
    "LogFormat",
    "TextFormatter",
    "bind",
    "current",
    "json_formatter",
    "logging_config",
    "scope",
]


def logging_config(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the API process, given to uvicorn as its ``log_config`` so that
    its own records (startup, access lines) take the same shape from the first line on.

    ``fedalign`` loggers log at ``level``; other libraries' records pass at WARNING and above. In text
    mode uvicorn keeps its usual formatting."""
    from uvicorn.config import LOGGING_CONFIG

    filters = {"context": {"()": ContextFilter}}
    if log_format == "json":
        formatters: dict[str, Any] = {"json": {"()": json_formatter}}
        handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}
        handlers = {"default": {**handler, "stream": "ext://sys.stderr"}}
        uvicorn_handlers = {"uvicorn": ["default"], "uvicorn.access": ["default"]}
    else:
        formatters = {**LOGGING_CONFIG["formatters"], "text": {"()": TextFormatter}}
        handlers = {
            **LOGGING_CONFIG["handlers"],
            "fedalign": {
                "class": "logging.StreamHandler",
                "formatter": "text",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            },
        }
        for name in ("default", "access"):
            handlers[name] = {**handlers[name], "filters": ["context"]}
        uvicorn_handlers = {"uvicorn": ["default"], "uvicorn.access": ["access"]}
    root_handler = "default" if log_format == "json" else "fedalign"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": filters,
        "formatters": formatters,
        "handlers": handlers,
        "loggers": {
            "": {"handlers": [root_handler], "level": "WARNING"},
            "fedalign": {"level": level.upper()},
            "uvicorn": {"handlers": uvicorn_handlers["uvicorn"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {
                "handlers": uvicorn_handlers["uvicorn.access"],
                "level": level.upper(),
                "propagate": False,
            },
        },
    }
