"""Dashboard sessions: an access token (or the admin token) exchanged once for a signed, HttpOnly cookie, plus
a CSRF token.

A browser's EventSource cannot send an Authorization header, and a token kept in page storage is readable by
any script that runs there; so the dashboard signs in once and the server answers with a cookie that page
scripts cannot read (HttpOnly, SameSite=Strict). A cookie is sent with every request to this origin, so a
request that changes state must also carry the session's CSRF token in `X-CSRF-Token`, which only a page of
this origin could have read from `GET /api/v1/session`.

The cookie is ``<id>.<expiry>.<mac>``, the MAC keyed by a key derived from the admin token, so rotating the
admin token ends every session, and none outlives its expiry (`FEDALIGN_SESSION_TTL_S`). Sessions are also
kept on the server (`DashboardSessionRecord`, the id's sha256 only): a cookie is valid only while its row
exists, so signing out ends the session at once, for a copy of the cookie too. The row names the access
token the session signed in with: revoking or rotating that token deletes its sessions, and a session acts
with that token's role (`backend.security.session_credential`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.models import DashboardSessionRecord, utcnow

SESSION_COOKIE = "fedalign_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# <id>.<expiry>.<mac>: URL-safe base64 (ASCII), a Unix time of at most 11 digits, URL-safe base64.
_COOKIE = re.compile(r"[A-Za-z0-9_-]{1,64}\.[0-9]{1,11}\.[A-Za-z0-9_-]{1,64}", re.ASCII)


@dataclass(frozen=True)
class DashboardSession:
    cookie: str
    csrf_token: str
    expires_at: dt.datetime

    @property
    def id_sha256(self) -> str:
        return hashlib.sha256(self.cookie.split(".", 1)[0].encode("ascii")).hexdigest()


def _key(admin_token: str) -> bytes:
    # Domain-separated, so a MAC made here is never a valid value anywhere else the token is used.
    return hashlib.sha256(b"fedalign-dashboard-session\x00" + admin_token.encode("utf-8")).digest()


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue(admin_token: str, ttl_s: float, now: dt.datetime | None = None) -> DashboardSession:
    now = now or dt.datetime.now(dt.UTC)
    expires = int((now + dt.timedelta(seconds=ttl_s)).timestamp())
    session_id = secrets.token_urlsafe(18)
    key = _key(admin_token)
    body = f"{session_id}.{expires}"
    return DashboardSession(
        cookie=f"{body}.{_mac(key, body)}",
        csrf_token=_mac(key, f"csrf.{session_id}"),
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )


def verify(admin_token: str, cookie: str, now: dt.datetime | None = None) -> DashboardSession | None:
    """The session a cookie holds, or None when it is forged, malformed or expired."""
    # ASCII only, and in the shape `issue` writes: str.isdigit() accepts '²' and other non-ASCII digits,
    # which int() or the MAC's ASCII encoding would then fail on.
    if len(cookie) > 256 or not _COOKIE.fullmatch(cookie):
        return None
    session_id, expires, mac = cookie.split(".")
    key = _key(admin_token)
    if not hmac.compare_digest(mac.encode("ascii", "replace"), _mac(key, f"{session_id}.{expires}").encode()):
        return None
    expires_at = dt.datetime.fromtimestamp(int(expires), dt.UTC)
    if expires_at <= (now or dt.datetime.now(dt.UTC)):
        return None
    return DashboardSession(cookie=cookie, csrf_token=_mac(key, f"csrf.{session_id}"), expires_at=expires_at)


def record(
    db: Session, dashboard: DashboardSession, access_token_id: str | None, now: dt.datetime | None = None
) -> None:
    """Keep a new session on the server, signed in with access token `access_token_id` (None: the bootstrap
    admin token); expired ones are dropped on the way (nothing else removes them)."""
    db.execute(delete(DashboardSessionRecord).where(DashboardSessionRecord.expires_at <= (now or utcnow())))
    db.add(
        DashboardSessionRecord(
            id_sha256=dashboard.id_sha256, expires_at=dashboard.expires_at, access_token_id=access_token_id
        )
    )


def held(db: Session, dashboard: DashboardSession) -> DashboardSessionRecord | None:
    """The server's record of the session, None once it was signed out or its token revoked."""
    return db.get(DashboardSessionRecord, dashboard.id_sha256)


def end_for_token(db: Session, access_token_id: str) -> None:
    """End every session signed in with the access token (it was revoked or rotated)."""
    db.execute(
        delete(DashboardSessionRecord).where(DashboardSessionRecord.access_token_id == access_token_id)
    )


def end(db: Session, dashboard: DashboardSession) -> None:
    db.execute(delete(DashboardSessionRecord).where(DashboardSessionRecord.id_sha256 == dashboard.id_sha256))


def csrf_ok(session: DashboardSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        presented.encode("utf-8", "replace"), session.csrf_token.encode("ascii")
    )
