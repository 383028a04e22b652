"""Node registration bodies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedalign.config import NAME_PATTERN, Role

NodeMode = Literal["rest", "celery"]


class NodeCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "hospital-a", "role": "source", "dataset": "npz:/data/a.npz", "mode": "rest"}
            ]
        },
    )

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Unique within the federation.")]
    role: Role
    organisation: Annotated[
        str | None,
        Field(
            pattern=NAME_PATTERN,
            description="The organisation that runs the node: its viewers see this federation. A join token "
            "that fixes an organisation sets it (and refuses another).",
        ),
    ] = None
    dataset: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            description="Dataset spec, resolved on the node's own machine (e.g. npz:/data/a.npz).",
        ),
    ]
    mode: Annotated[
        NodeMode, Field(description="'rest': the node polls the API; 'celery': steps are sent to workers.")
    ] = "rest"


class NodeOut(BaseModel):
    id: str
    federation_id: str
    name: str
    role: Role
    organisation: str | None = Field(description="The organisation that runs the node, if named.")
    dataset: str
    mode: NodeMode
    state: str = Field(
        description="registered, active (has claimed a step), failed (out of a phase, or of the run, after a "
        "step it reported failed: see failure) or finished."
    )
    samples: dict[str, int] | None = Field(description="Sample counts per split, reported by the setup step.")
    failure: str | None = Field(
        description="The reason of the node's last failed step, as it reported it (POST /api/v1/node/steps/"
        "{id}/fail); null when none failed."
    )
    last_seen: dt.datetime | None
    created_at: dt.datetime


class NodeCreated(NodeOut):
    token: str = Field(
        description="This node's own token (Authorization: Bearer) for the /api/v1/node endpoints. Shown "
        "once; the server keeps only its hash."
    )
    run_command: str = Field(
        description="The command that runs this node on its own machine (with its token in the environment)."
    )


class NodeList(BaseModel):
    items: list[NodeOut]
