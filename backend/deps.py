"""Typed dependencies: a route's signature says what it needs (`ReadSession`, `Admin`, `NodeAuth`, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.database import Database
from backend.errors import forbidden, unauthorized
from backend.security import Credential, resolve
from backend.services.aggregation import AggregationDispatcher, AggregationService
from backend.services.events import EventNotifier
from backend.services.orchestrator import Orchestrator
from backend.services.store import ArtifactStore
from backend.services.sweep import Sweeper
from backend.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ArtifactStore
    notifier: EventNotifier
    orchestrator: Orchestrator
    aggregation: AggregationService
    dispatcher: AggregationDispatcher
    sweeper: Sweeper
    admin_token: str

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_read_session(services: ServicesDep) -> Iterator[Session]:
    with services.db.read() as session:
        yield session


ReadSession = Annotated[Session, Depends(get_read_session)]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The admin token (management), a federation's join token (registering nodes only) or a "
    "node's token (the /api/v1/node endpoints).",
)


def get_credential(
    services: ServicesDep, authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Credential:
    if authorization is None or not authorization.credentials:
        raise unauthorized("this endpoint needs a token: send the header 'Authorization: Bearer <token>'")
    with services.db.read() as session:
        credential = resolve(session, services.admin_token, authorization.credentials)
    if credential is None:
        raise unauthorized(
            "the bearer token is not valid here (revoked, mistyped, or from another server); check the token"
        )
    return credential


AnyCredential = Annotated[Credential, Depends(get_credential)]


def require_admin(credential: AnyCredential) -> Credential:
    if credential.kind != "admin":
        raise forbidden(
            f"this endpoint needs the admin token; a {credential.kind} token cannot manage federations"
        )
    return credential


def require_node(credential: AnyCredential) -> Credential:
    if credential.kind != "node":
        raise forbidden(
            f"the /api/v1/node endpoints take a node's own token (returned when it registered), not a "
            f"{credential.kind} token"
        )
    return credential


Admin = Annotated[Credential, Depends(require_admin)]
NodeAuth = Annotated[Credential, Depends(require_node)]
