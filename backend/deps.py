"""Typed dependencies: a route's signature says what it needs (`ServicesDep`, `Admin`, `NodeAuth`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from backend.access import AccessCredential, Decision, Operation, decide, scope_of
from backend.database import Database
from backend.errors import ApiError, forbidden, not_found, unauthorized
from backend.security import Credential, NodeCredential, resolve, session_credential
from backend.services.aggregation import AggregationService
from backend.services.dispatch import AggregationDispatcher
from backend.services.events import EventNotifier
from backend.services.orchestrator import Orchestrator
from backend.services.relay import RedisRelay
from backend.services.store import ArtifactStore
from backend.services.sweep import Sweeper
from backend.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, csrf_ok, held, verify
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
    relay: RedisRelay | None = None  # wake-ups shared with other processes (a Redis broker)

    @property
    def bootstrap_token(self) -> str | None:
        """The admin token while it authorises (FEDALIGN_ADMIN_TOKEN_ENABLED), else None."""
        return self.admin_token if self.settings.admin_token_enabled else None

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
    description="The admin token or an access token (management or viewing, by its role and organisation), a "
    "federation's join token (registering nodes only) or a node's token (the /api/v1/node endpoints).",
)


session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="The dashboard's session (POST /api/v1/session exchanges an access token for it); a request "
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
            credential = resolve(session, services.bootstrap_token, authorization.credentials)
        if credential is None:
            raise unauthorized(
                "the bearer token is not valid here (revoked, mistyped, or from another server); check the "
                "token"
            )
        return credential
    if cookie:
        dashboard = verify(services.admin_token, cookie)
        holder: AccessCredential | None = None
        if dashboard is not None:
            with services.db.read() as session:
                record = held(session, dashboard)
                if record is not None:
                    holder = session_credential(session, record, services.settings.admin_token_enabled)
        if dashboard is None or holder is None:
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
        return holder
    raise unauthorized("this endpoint needs a token: send the header 'Authorization: Bearer <token>'")


AnyCredential = Annotated[Credential, Depends(get_credential)]


def require_node(credential: AnyCredential) -> NodeCredential:
    if not isinstance(credential, NodeCredential):
        raise forbidden(
            f"the /api/v1/node endpoints take a node's own token (returned when it registered), not a "
            f"{credential.kind} token"
        )
    return credential


NodeAuth = Annotated[NodeCredential, Depends(require_node)]


def require_access(credential: Credential) -> AccessCredential:
    """An access token's holder (or the admin token's); a node's or a join token is refused."""
    if not isinstance(credential, AccessCredential):
        raise forbidden(
            f"this endpoint needs the admin token or an access token; a {credential.kind} token cannot "
            "manage or view federations"
        )
    return credential


def _refusal(decision: Decision, credential: AccessCredential, operation: Operation, what: str) -> ApiError:
    if decision is Decision.HIDE:
        return not_found(
            f"no federation with id {what!r}; list the ones you can see with GET /api/v1/federations"
        )
    return forbidden(f"{credential.described} cannot do this ({operation.value})")


def permit(operation: Operation) -> Any:
    """A dependency that lets through only credentials that may perform `operation` (no federation)."""

    def dependency(credential: AnyCredential) -> AccessCredential:
        access = require_access(credential)
        decision = decide(access, operation, None)
        if decision is not Decision.ALLOW:
            raise _refusal(decision, access, operation, "")
        return access

    return Depends(dependency)


def permit_on_federation(operation: Operation) -> Any:
    """A dependency that lets through only credentials that may perform `operation` on the path's
    federation: 403 for a role that never may, 404 for a federation outside the credential's reach."""

    def dependency(
        services: ServicesDep,
        credential: AnyCredential,
        federation_id: Annotated[str, Path(max_length=36)],
    ) -> AccessCredential:
        access = require_access(credential)
        if decide(access, operation, None) is Decision.FORBID:
            raise _refusal(Decision.FORBID, access, operation, federation_id)
        with services.db.read() as session:
            scope = scope_of(session, federation_id)
        # No such federation answers as one out of reach: 404 either way.
        decision = Decision.HIDE if scope is None else decide(access, operation, scope)
        if decision is not Decision.ALLOW:
            raise _refusal(decision, access, operation, federation_id)
        return access

    return Depends(dependency)


# Each route names its operation; `backend.access` decides who may perform it.
CreateFederations = Annotated[AccessCredential, permit(Operation.CREATE_FEDERATION)]
ListFederations = Annotated[AccessCredential, permit(Operation.LIST_FEDERATIONS)]
ManageAccessTokens = Annotated[AccessCredential, permit(Operation.MANAGE_ACCESS_TOKENS)]
ReadFederation = Annotated[AccessCredential, permit_on_federation(Operation.READ_FEDERATION)]
ReadNodes = Annotated[AccessCredential, permit_on_federation(Operation.READ_NODES)]
ReadModel = Annotated[AccessCredential, permit_on_federation(Operation.READ_MODEL)]
ControlFederation = Annotated[AccessCredential, permit_on_federation(Operation.CONTROL_FEDERATION)]
ManageFederation = Annotated[AccessCredential, permit_on_federation(Operation.MANAGE_FEDERATION)]
ManageNodes = Annotated[AccessCredential, permit_on_federation(Operation.MANAGE_NODES)]
