"""Federation bodies. A federation is created from `FederationConfig` minus its nodes, which register
one by one afterwards (`schemas.nodes`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from backend.operations import Operation
from backend.schemas.nodes import NodeCreated
from fedalign.config import NAME_PATTERN, Algorithm, FederationConfig, Role
from fedalign.trackers import TrackerName
from messaging.node_api import FederationStatus

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


class Progress(BaseModel):
    rounds_done: int = Field(description="Rounds completed, out of config.rounds.")
    target_acc: float | None = Field(description="The latest evaluated target accuracy, when there is one.")
    disc_acc: float | None = Field(
        description="The latest balanced discriminator accuracy, when there is one."
    )
    round_of_metrics: int | None = Field(description="The round those two were measured in.")


class TrackerExportOut(BaseModel):
    """How far the federation has been streamed to one experiment tracker (docs: Experiment trackers)."""

    tracker: TrackerName
    run_id: str | None = Field(description="The tracker's run: MLflow's run id, TensorBoard's sub-folder.")
    exported_round: int = Field(description="Rounds up to this one are in the tracker.")
    finished: bool = Field(description="The run is closed with the federation's final status.")
    error: str | None = Field(description="The last failure to reach the tracker (retried), if any.")


InitialModelPart = Literal["manifest", "parameters"]


class InitialModelOut(BaseModel):
    """Whether the federation holds its initial parameters and their manifest document (it starts only
    with both). The server builds them for a built-in architecture (without model.init_checkpoint); for a
    plug-in, the creator uploads what ``fedalign init-model`` wrote."""

    ready: bool = Field(description="Both are stored: the federation can start.")
    missing: list[InitialModelPart] = Field(
        description="What is still to upload: 'manifest' (PUT .../initial-model/manifest, the JSON document) "
        "and 'parameters' (PUT .../initial-model/parameters, the safetensors file)."
    )
    sha256: str | None = Field(description="The stored initial parameters' sha256.")
    size: int | None = Field(description="Their size in bytes.")


class FederationOut(BaseModel):
    id: str
    name: str
    status: FederationStatus
    stall_reason: str | None = Field(description="Why the federation is stalled or failed, when it is.")
    config: dict[str, Any] = Field(description="The federation's config (FederationSettings) without nodes.")
    nodes: list[str] = Field(description="Registered node names.")
    owner_organisation: str | None = Field(
        default=None, description="The organisation whose owner tokens manage it (none: coordinators only)."
    )
    round: int | None = Field(description="The open round once started.")
    phase: str | None = Field(description="The open phase once started.")
    progress: Progress
    model_published: bool = Field(description="The target's model can be downloaded (GET .../model).")
    initial_model: InitialModelOut
    trackers: list[TrackerExportOut] = Field(
        default_factory=list, description="Its runs in the experiment trackers, once it has streamed to any."
    )
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class FederationCreated(FederationOut):
    join_token: str = Field(
        description="Registers nodes in this federation only (Authorization: Bearer). Shown once; "
        "the server keeps only its hash."
    )


class FederationContinue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: Annotated[int, Field(ge=1, le=100_000, description="How many more rounds to run.")]


class JoinTokenLimits(BaseModel):
    """What a new join token may do; every field unset: it registers any node until revoked."""

    model_config = ConfigDict(extra="forbid")

    expires_in_s: Annotated[
        int | None,
        Field(ge=60, le=366 * 24 * 3600, description="It stops working this many seconds from now."),
    ] = None
    max_registrations: Annotated[
        int | None,
        Field(ge=1, le=10_000, description="It registers at most this many nodes, then stops working."),
    ] = None
    roles: Annotated[
        list[Role] | None,
        Field(min_length=1, max_length=2, description="The roles it may register (e.g. only sources)."),
    ] = None
    organisation: Annotated[
        str | None,
        Field(
            pattern=NAME_PATTERN,
            description="Every node it registers belongs to this organisation (a node naming another is "
            "refused): hand each organisation its own join token.",
        ),
    ] = None


class JoinToken(BaseModel):
    join_token: str = Field(
        description="The federation's new join token (Authorization: Bearer); the old one no longer works. "
        "Shown once; the server keeps only its hash."
    )
    expires_at: dt.datetime | None = Field(default=None, description="When it stops working, if it does.")
    registrations_left: int | None = Field(
        default=None, description="Nodes it may still register, if limited."
    )
    roles: list[Role] | None = Field(default=None, description="The roles it may register, if limited.")
    organisation: str | None = Field(default=None, description="The organisation it fixes, if any.")


class FederationClone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str | None, Field(min_length=1, max_length=200, description="Default: '<name> (copy)'.")
    ] = None
    algorithm: Annotated[
        Algorithm | None,
        Field(description="Run the copy with another algorithm, e.g. the fedavg baseline on the same nodes."),
    ] = None
    seed: Annotated[int | None, Field(ge=0, description="Default: the original's seed.")] = None
    nodes: Annotated[
        bool, Field(description="Register the same nodes (name, role, dataset, mode) with new tokens.")
    ] = True


class FederationCloned(FederationCreated):
    node_tokens: list[NodeCreated] = Field(
        description="The copied nodes with their new tokens and run commands, shown once."
    )


class FederationList(BaseModel):
    items: list[FederationOut]


class FederationAccess(BaseModel):
    """What the caller may do on one federation, decided by the server's one access policy."""

    operations: list[Operation] = Field(
        description="The operations the caller's token may perform on this federation (the dashboard "
        "offers those controls only); the server refuses the others anyway."
    )
