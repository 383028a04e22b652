"""Access token bodies: a role and an organisation, issued by the coordinator."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.operations import Role
from fedalign.config import NAME_PATTERN


class AccessTokenCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "acme-dashboard", "role": "viewer", "organisation": "acme"}]
        },
    )

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="A label: whom or what it is for.")]
    role: Role = Field(
        description="coordinator: everything, access tokens included; owner: creates federations and manages "
        "its organisation's; viewer: reads the federations its organisation takes part in."
    )
    organisation: Annotated[
        str | None,
        Field(pattern=NAME_PATTERN, description="Required for owner and viewer; none for a coordinator."),
    ] = None

    @model_validator(mode="after")
    def _organisation_fits_the_role(self) -> Self:
        if self.role == "coordinator" and self.organisation is not None:
            raise ValueError("a coordinator token reaches every organisation: leave organisation out")
        if self.role != "coordinator" and self.organisation is None:
            article = "an" if self.role == "owner" else "a"
            raise ValueError(f"{article} {self.role} token belongs to one organisation: set organisation")
        return self


class AccessTokenOut(BaseModel):
    id: str
    name: str
    role: Role
    organisation: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = Field(description="When it was revoked; it no longer works.")


class AccessTokenCreated(AccessTokenOut):
    token: str = Field(
        description="The token (Authorization: Bearer, or the dashboard's sign-in). Shown once; the server "
        "keeps only its hash."
    )


class AccessTokenList(BaseModel):
    items: list[AccessTokenOut]
