"""Round progress: phases, per-node step states, submissions, aggregates and metrics."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

PhaseState = Literal["closed", "open", "aggregating", "upcoming"]
RoundState = Literal["done", "open", "upcoming"]


class StepOut(BaseModel):
    id: int
    node: str
    kind: str
    model: str = Field(description="For aggregate steps, the model averaged; '' otherwise.")
    status: Literal["pending", "claimed", "done", "cancelled", "failed"]
    attempts: int
    failure: str | None = Field(description="Why its node last reported it failed, when it did.")
    lease_expires_at: dt.datetime | None
    claimed_at: dt.datetime | None
    done_at: dt.datetime | None


class ArtifactOut(BaseModel):
    key: str
    model: str
    kind: Literal["aggregate", "submission", "model"]
    node: str | None
    sha256: str
    size: int
    created_at: dt.datetime


class MetricsOut(BaseModel):
    federation: dict[str, float] = Field(description="Federation-level metrics (disc_acc, pad, ...).")
    nodes: dict[str, dict[str, float]] = Field(description="Per node: what it reported.")


class PhaseOut(BaseModel):
    name: str
    state: PhaseState
    steps: list[StepOut]
    submissions: list[ArtifactOut]
    aggregates: list[ArtifactOut]


class RoundOut(BaseModel):
    round: int
    state: RoundState
    phases: list[PhaseOut]
    metrics: MetricsOut


class LeftOut(BaseModel):
    phase: str
    nodes: list[str] = Field(description="Nodes whose step the phase closed without (quorum and deadline).")
    reason: str


class RoundSummary(BaseModel):
    round: int
    state: RoundState
    phases: list[str]
    open_phase: str | None
    metrics: dict[str, float]
    left_out: list[LeftOut] = Field(
        description="Phases of this round that closed without some nodes, and why."
    )


class RoundList(BaseModel):
    items: list[RoundSummary]
