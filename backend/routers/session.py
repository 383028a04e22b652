"""Dashboard sign-in: an access token (or the admin token) in, an HttpOnly session cookie and a CSRF token
out; the session acts with that token's role and organisation."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from backend import sessions
from backend.access import AccessCredential, operations_of
from backend.deps import ServicesDep
from backend.errors import forbidden, responses, unauthorized
from backend.schemas.session import SessionCreate, SessionOut
from backend.security import resolve, session_credential
from backend.sessions import SESSION_COOKIE, DashboardSession, issue, verify

router = APIRouter(prefix="/api/v1/session", tags=["session"])


def _secure(services: ServicesDep, request: Request) -> bool:
    configured = services.settings.cookie_secure
    return configured if configured is not None else request.url.scheme == "https"


def _signed_in(services: ServicesDep, request: Request) -> tuple[DashboardSession, AccessCredential] | None:
    """The request's session and whom it acts as, when its cookie is genuine, unexpired, still held by the
    server and its token still valid."""
    cookie = request.cookies.get(SESSION_COOKIE)
    dashboard = verify(services.admin_token, cookie) if cookie else None
    if dashboard is None:
        return None
    with services.db.read() as session:
        record = sessions.held(session, dashboard)
        if record is None:
            return None
        holder = session_credential(session, record, services.settings.admin_token_enabled)
    return (dashboard, holder) if holder is not None else None


def _out(dashboard: DashboardSession, holder: AccessCredential) -> SessionOut:
    return SessionOut(
        csrf_token=dashboard.csrf_token,
        expires_at=dashboard.expires_at,
        role=holder.role,
        organisation=holder.organisation,
        operations=operations_of(holder),
    )


@router.post("", response_model=SessionOut, responses=responses(401, 403, 413, 422), summary="Sign in")
def sign_in(body: SessionCreate, request: Request, response: Response, services: ServicesDep) -> SessionOut:
    """Exchange an access token (coordinator, owner or viewer) or the admin token for a session cookie
    (HttpOnly, SameSite=Strict) and a CSRF token; the session may do what the token may."""
    with services.db.read() as session:
        credential = resolve(session, services.bootstrap_token, body.token)
    if credential is None:
        raise unauthorized(
            "this is neither the server's admin token nor a valid access token; check it (`fedalign up` "
            "prints where the admin token is; a revoked access token no longer signs in)"
        )
    if not isinstance(credential, AccessCredential):
        raise forbidden(
            f"the dashboard signs in with the admin token or an access token, not a {credential.kind} token"
        )
    dashboard = issue(services.admin_token, services.settings.session_ttl_s)
    with services.db.write() as session:
        sessions.record(session, dashboard, credential.token_id)
    response.set_cookie(
        SESSION_COOKIE,
        dashboard.cookie,
        max_age=int(services.settings.session_ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(services, request),
    )
    response.headers["Cache-Control"] = "no-store"
    return _out(dashboard, credential)


@router.get("", response_model=SessionOut, responses=responses(401), summary="The current session")
def current_session(request: Request, response: Response, services: ServicesDep) -> SessionOut:
    """The signed-in session's CSRF token, expiry, role and what it may do (a reloaded page asks here)."""
    # Read directly rather than as a security scheme: this route answers 401 or the session, never 403.
    signed_in = _signed_in(services, request)
    if signed_in is None:
        raise unauthorized(
            "not signed in, or the session has expired or its token was revoked: POST /api/v1/session with "
            "your token"
        )
    response.headers["Cache-Control"] = "no-store"
    return _out(*signed_in)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out")
def sign_out(request: Request, response: Response, services: ServicesDep) -> None:
    """End the session on the server (its cookie stops working at once, wherever a copy of it is) and
    forget the cookie in this browser; harmless without one."""
    signed_in = _signed_in(services, request)
    if signed_in is not None:
        with services.db.write() as session:
            sessions.end(session, signed_in[0])
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(services, request)
    )
