"""Typed dependencies: a route's signature says what it needs (`ServicesDep`, `Admin`, `NodeAuth`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from backend.database import Database
from backend.errors import ApiError, forbidden, unauthorized
from backend.security import AdminCredential, Credential, NodeCredential, resolve
from backend.services.aggregation import AggregationService
from backend.services.dispatch import AggregationDispatcher
from backend.services.events import EventNotifier
from backend.services.orchestrator import Orchestrator
from backend.services.store import ArtifactStore
from backend.services.sweep import Sweeper
from backend.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, csrf_ok, is_active, verify
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


# No session dependency: a route opens `services.db.read()` itself and closes it before it returns. A session
# held by a dependency lives until after the response is serialised, which waits for a worker thread; under a
# burst, every thread then waited for a pooled connection held by a request waiting for a thread, until the
# pool's 30 s timeout answered 500 (bench/load_bench.py found it; FastAPI's scope="function" does not end
# the dependency before serialisation either).

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The admin token (management), a federation's join token (registering nodes only) or a "
    "node's token (the /api/v1/node endpoints).",
)


session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="The dashboard's session (POST /api/v1/session exchanges the admin token for it); a request "
    f"that changes state must also send the session's CSRF token in the {CSRF_HEADER} header.",
)


def get_credential(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    cookie: Annotated[str | None, Depends(session_cookie)],
) -> Credential:
    if authorization is not None and authorization.credentials:
        with services.db.read() as session:
            credential = resolve(session, services.admin_token, authorization.credentials)
        if credential is None:
            raise unauthorized(
                "the bearer token is not valid here (revoked, mistyped, or from another server); check the "
                "token"
            )
        return credential
    if cookie:
        dashboard = verify(services.admin_token, cookie)
        if dashboard is not None:
            with services.db.read() as session:
                dashboard = dashboard if is_active(session, dashboard) else None
        if dashboard is None:
            raise unauthorized("the dashboard session has expired or was ended; sign in again")
        if request.method not in SAFE_METHODS and not csrf_ok(dashboard, request.headers.get(CSRF_HEADER)):
            # A cookie rides along with any request a browser makes to this origin, even one another site
            # triggered; only a page of this origin can have read the CSRF token.
            raise ApiError(
                403,
                "csrf",
                f"a request that changes state with the session cookie must send the session's CSRF token in "
                f"the {CSRF_HEADER} header (GET /api/v1/session returns it)",
            )
        return AdminCredential()
    raise unauthorized("this endpoint needs a token: send the header 'Authorization: Bearer <token>'")


AnyCredential = Annotated[Credential, Depends(get_credential)]


def require_admin(credential: AnyCredential) -> AdminCredential:
    if not isinstance(credential, AdminCredential):
        raise forbidden(
            f"this endpoint needs the admin token; a {credential.kind} token cannot manage federations"
        )
    return credential


def require_node(credential: AnyCredential) -> NodeCredential:
    if not isinstance(credential, NodeCredential):
        raise forbidden(
            f"the /api/v1/node endpoints take a node's own token (returned when it registered), not a "
            f"{credential.kind} token"
        )
    return credential


Admin = Annotated[AdminCredential, Depends(require_admin)]
NodeAuth = Annotated[NodeCredential, Depends(require_node)]
