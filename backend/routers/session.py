"""Dashboard sign-in: the admin token in, an HttpOnly session cookie and a CSRF token out."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from backend import sessions
from backend.deps import ServicesDep
from backend.errors import forbidden, responses, unauthorized
from backend.schemas.session import SessionCreate, SessionOut
from backend.security import resolve
from backend.sessions import SESSION_COOKIE, DashboardSession, issue, verify

router = APIRouter(prefix="/api/v1/session", tags=["session"])


def _secure(services: ServicesDep, request: Request) -> bool:
    configured = services.settings.cookie_secure
    return configured if configured is not None else request.url.scheme == "https"


def _signed_in(services: ServicesDep, request: Request) -> DashboardSession | None:
    """The request's session when its cookie is genuine, unexpired and still held by the server."""
    cookie = request.cookies.get(SESSION_COOKIE)
    dashboard = verify(services.admin_token, cookie) if cookie else None
    if dashboard is None:
        return None
    with services.db.read() as session:
        return dashboard if sessions.is_active(session, dashboard) else None


def _out(dashboard: DashboardSession) -> SessionOut:
    return SessionOut(csrf_token=dashboard.csrf_token, expires_at=dashboard.expires_at)


@router.post("", response_model=SessionOut, responses=responses(401, 403, 413, 422), summary="Sign in")
def sign_in(body: SessionCreate, request: Request, response: Response, services: ServicesDep) -> SessionOut:
    """Exchange the admin token for a session cookie (HttpOnly, SameSite=Strict) and a CSRF token."""
    with services.db.read() as session:
        credential = resolve(session, services.admin_token, body.token)
    if credential is None:
        raise unauthorized(
            "this is not the server's admin token; check it (`fedalign up` prints where it is)"
        )
    if credential.kind != "admin":
        raise forbidden(f"the dashboard signs in with the admin token, not a {credential.kind} token")
    dashboard = issue(services.admin_token, services.settings.session_ttl_s)
    with services.db.write() as session:
        sessions.record(session, dashboard)
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
    return _out(dashboard)


@router.get("", response_model=SessionOut, responses=responses(401), summary="The current session")
def current_session(request: Request, response: Response, services: ServicesDep) -> SessionOut:
    """The signed-in session's CSRF token and expiry (a reloaded page asks here)."""
    # Read directly rather than as a security scheme: this route answers 401 or the session, never 403.
    dashboard = _signed_in(services, request)
    if dashboard is None:
        raise unauthorized(
            "not signed in, or the session has expired: POST /api/v1/session with the admin token"
        )
    response.headers["Cache-Control"] = "no-store"
    return _out(dashboard)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out")
def sign_out(request: Request, response: Response, services: ServicesDep) -> None:
    """End the session on the server (its cookie stops working at once, wherever a copy of it is) and
    forget the cookie in this browser; harmless without one."""
    dashboard = _signed_in(services, request)
    if dashboard is not None:
        with services.db.write() as session:
            sessions.end(session, dashboard)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(services, request)
    )
