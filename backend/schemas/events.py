"""The live event stream's items (each an SSE message: ``id``, ``event`` = type, ``data`` = JSON)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class EventOut(BaseModel):
    id: int
    type: str = Field(
        description="status, phase, phase_closed, unmasking, aggregation, aggregate, submission, step_done, "
        "metrics, privacy_warning, public_key, node_registered, node_removed"
    )
    federation_id: str
    payload: dict[str, Any]
    created_at: dt.datetime
