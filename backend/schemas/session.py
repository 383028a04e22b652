"""Dashboard sign-in bodies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from backend.operations import Operation, Role


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Annotated[
        str, Field(min_length=1, max_length=512, description="An access token, or the admin token.")
    ]


class SessionOut(BaseModel):
    csrf_token: str = Field(
        description="Send it in the X-CSRF-Token header with every request that changes state; keep it in "
        "memory only (GET /api/v1/session returns it again after a reload)."
    )
    expires_at: dt.datetime
    role: Role = Field(description="The role of the token the session signed in with.")
    organisation: str | None = Field(description="Its organisation (none for a coordinator).")
    operations: list[Operation] = Field(
        description="What the role may do, within its reach (the dashboard offers these controls only)."
    )
