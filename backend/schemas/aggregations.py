"""Aggregation jobs (server topology) and aggregate steps (target topology)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class AggregationOut(BaseModel):
    key: str
    model: str
    round: int
    phase: str
    by: str = Field(description="'server' or the name of the target node that computes it.")
    status: str = Field(description="pending, running, done or failed (target: the step's status).")
    attempts: int
    error: str | None
    created_at: dt.datetime
    done_at: dt.datetime | None


class AggregationList(BaseModel):
    items: list[AggregationOut]


class AggregationTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"key": "r3/disc1/D"}]})

    key: str | None = Field(
        default=None, max_length=255, description="One aggregate to (re-)run; default: every one not done."
    )
