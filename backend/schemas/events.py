"""The live event stream's items (each an SSE message: ``id``, ``event`` = type, ``data`` = JSON)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeAliasType

# Every type of event the backend records. A named alias, so the OpenAPI document holds it as one schema
# (`EventType`), from which the dashboard's generated client takes the list its EventSource listens to.
EventType = TypeAliasType(
    "EventType",
    Literal[
        "status",
        "phase",
        "phase_closed",
        "unmasking",
        "aggregation",
        "aggregate",
        "submission",
        "step_done",
        "step_failed",
        "metrics",
        "privacy_warning",
        "public_key",
        "node_registered",
        "node_removed",
        "initial_model",
    ],
)
EVENT_TYPES: tuple[str, ...] = get_args(EventType.__value__)


class EventOut(BaseModel):
    """One event: the ``data`` of its SSE message, whose ``id`` and ``event`` repeat its id and type."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    type: EventType
    payload: dict[str, Any]
    created_at: dt.datetime
