"""Federation bodies. A federation is created from `FederationConfig` minus its nodes, which register
one by one afterwards (`schemas.nodes`)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from fedalign.config import FederationConfig

FederationStatus = Literal["created", "running", "paused", "stalled", "finished", "cancelled", "failed"]

CREATE_EXAMPLE: dict[str, Any] = {
    "name": "digits: mnist + syn -> mnistm",
    "algorithm": "fedalign",
    "architecture": "digits_cnn",
    "model": {"num_classes": 10, "input_shape": [3, 28, 28], "hidden": 128},
    "rounds": 10,
    "seed": 0,
    "aggregator": "server",
    "min_sources": None,
    "phase_deadline_s": 600,
    "publish_model": True,
    "hyperparameters": {"local_steps": 10, "disc_steps": 10, "batch_size": 64},
}

# Generated from FederationConfig so the API and the TOML file can never drift apart: the same fields,
# types, defaults and descriptions, less ``nodes``.
FederationSettings: type[BaseModel] = create_model(
    "FederationSettings",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [CREATE_EXAMPLE]}),
    __doc__="A federation's config (the TOML file's schema) without its nodes; unknown fields are refused.",
    **{
        name: (info.annotation, info)
        for name, info in FederationConfig.model_fields.items()
        if name != "nodes"
    },  # type: ignore[call-overload]
)


class FederationOut(BaseModel):
    id: str
    name: str
    status: FederationStatus
    stall_reason: str | None = Field(description="Why the federation is stalled or failed, when it is.")
    config: dict[str, Any] = Field(description="The federation's config (FederationSettings) without nodes.")
    nodes: list[str] = Field(description="Registered node names.")
    round: int | None = Field(description="The open round once started.")
    phase: str | None = Field(description="The open phase once started.")
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class FederationCreated(FederationOut):
    join_token: str = Field(
        description="Registers nodes in this federation only (Authorization: Bearer). Shown once; "
        "the server keeps only its hash."
    )


class FederationList(BaseModel):
    items: list[FederationOut]
