"""What a node sees: its federation's config, its next task, and what it sends back."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.schemas.federations import FederationStatus
from fedalign.config import Role
from fedalign.node import REPORTED_METRICS

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class PeerNode(BaseModel):
    name: str
    role: Role
    dataset: str | None = Field(
        description="Only the caller's own dataset spec; other organisations' are none of its business."
    )


class NodeFederation(BaseModel):
    federation_id: str
    status: FederationStatus
    node_id: str = Field(description="The calling node's id: its Celery queue is node.<id>.")
    node: PeerNode = Field(description="The calling node.")
    config: dict[str, Any] = Field(description="The federation's config without nodes (FederationSettings).")
    nodes: list[PeerNode] = Field(description="Every node of the federation, datasets of others withheld.")


class Task(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "step_id": 42,
                    "federation_id": "0b7f...",
                    "node": "alpha",
                    "round": 3,
                    "phase": "disc1",
                    "kind": "discriminator",
                    "model": "",
                    "seed": 1234567,
                    "downloads": {"D": "http://127.0.0.1:8000/api/v1/node/artifacts/r2/disc1/D"},
                    "uploads": {"D": "http://127.0.0.1:8000/api/v1/node/steps/42/uploads/D"},
                    "complete_url": "http://127.0.0.1:8000/api/v1/node/steps/42/complete",
                    "lease_expires_at": "2026-01-01T12:10:00Z",
                    "inputs": {},
                    "weights": {},
                }
            ]
        }
    )

    step_id: int
    federation_id: str
    node: str
    round: int
    phase: str
    kind: str = Field(description="setup, discriminator, adapt, evaluate, publish or aggregate.")
    model: str = Field(description="For aggregate steps, the model to average.")
    seed: int
    downloads: dict[str, str] = Field(description="Slot (model) -> URL of the aggregate to load first.")
    uploads: dict[str, str] = Field(description="Slot -> URL to PUT this step's safetensors result to.")
    complete_url: str
    lease_expires_at: dt.datetime = Field(description="Finish before this, or the step is handed out again.")
    inputs: dict[str, str] = Field(description="Aggregate steps: node -> URL of its submission.")
    weights: dict[str, float] = Field(description="Aggregate steps: node -> normalised weight.")


class UploadResult(BaseModel):
    key: str
    sha256: str
    size: int
    stored: bool = Field(description="False when the slot already held exactly these bytes.")


# Sample counts weight the averages: a node with no training data has nothing to contribute (and an all-zero
# weighting divides by zero), and a count beyond any real data set is a bug or an attempt to dominate.
MAX_SAMPLES = 10**12


class Samples(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    val: Annotated[int, Field(ge=0, le=MAX_SAMPLES)] = 0
    test: Annotated[int, Field(ge=0, le=MAX_SAMPLES)] = 0


class CompleteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"metrics": {"disc_loss": 0.69}, "samples": None}]},
    )

    metrics: dict[Annotated[str, Field(max_length=64)], FiniteFloat] = Field(
        default_factory=dict, max_length=256, description="Scalar metrics of this step, by name."
    )
    samples: Samples | None = Field(default=None, description="Setup steps: sample counts per split.")

    @field_validator("metrics")
    @classmethod
    def _declared_names(cls, metrics: dict[str, float]) -> dict[str, float]:
        # Only the declared scalars leave a node: a free-form name could carry anything.
        unknown = sorted(set(metrics) - REPORTED_METRICS)
        if unknown:
            raise ValueError(
                f"unknown metric names {unknown}; a node reports only these: {sorted(REPORTED_METRICS)}"
            )
        return metrics


class CompleteResult(BaseModel):
    step_id: int
    status: str
    federation_status: FederationStatus
    round: int | None
    phase: str | None
