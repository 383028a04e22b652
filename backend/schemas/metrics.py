"""Per-round metric series, for charts."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MetricPoint(BaseModel):
    round: int
    value: float


class MetricSeries(BaseModel):
    name: str
    node: str | None = Field(description="None for the federation's own metrics.")
    points: list[MetricPoint]


class MetricSeriesList(BaseModel):
    federation_id: str
    series: list[MetricSeries]
    last_event_id: int = Field(
        description="The federation's latest event when these series were read (0: none): follow the live "
        "stream from here (Last-Event-ID or ?after=) instead of replaying its history."
    )
