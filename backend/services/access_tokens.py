"""Access tokens' life cycle: issue, list, rotate, revoke. Revoking or rotating a token ends the dashboard
sessions signed in with it at once (`backend.sessions.end_for_token`)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import sessions
from backend.database import Database
from backend.errors import conflict, not_found
from backend.models import AccessToken, utcnow
from backend.schemas.access_tokens import AccessTokenCreate, AccessTokenCreated, AccessTokenOut
from backend.security import ACCESS_PREFIX, new_token, token_hash

ROUTES = "list them with GET /api/v1/tokens"


def token_out(token: AccessToken) -> AccessTokenOut:
    return AccessTokenOut(
        id=token.id,
        name=token.name,
        role=token.role,  # type: ignore[arg-type]
        organisation=token.organisation,
        created_at=token.created_at,
        revoked_at=token.revoked_at,
    )


def _created(token: AccessToken, secret: str) -> AccessTokenCreated:
    return AccessTokenCreated(**token_out(token).model_dump(), token=secret)


def create(db: Database, body: AccessTokenCreate) -> AccessTokenCreated:
    secret = new_token(ACCESS_PREFIX)
    token = AccessToken(
        id=str(uuid.uuid4()),
        name=body.name,
        role=body.role,
        organisation=body.organisation,
        token_hash=token_hash(secret),
        created_at=utcnow(),
    )
    with db.write() as session:
        session.add(token)
        session.flush()
        return _created(token, secret)


def all_tokens(db: Database) -> list[AccessTokenOut]:
    with db.read() as session:
        rows = session.scalars(select(AccessToken).order_by(AccessToken.created_at, AccessToken.id))
        return [token_out(t) for t in rows]


def _live(session: Session, token_id: str) -> AccessToken:
    token = session.get(AccessToken, token_id)
    if token is None:
        raise not_found(f"no access token with id {token_id!r}; {ROUTES}")
    return token


def rotate(db: Database, token_id: str) -> AccessTokenCreated:
    """A new secret for the token (same id, name, role and organisation); the old secret and every session
    signed in with it stop working at once."""
    secret = new_token(ACCESS_PREFIX)
    with db.write() as session:
        token = _live(session, token_id)
        if token.revoked_at is not None:
            raise conflict("revoked", f"access token {token.name!r} was revoked; issue a new one instead")
        token.token_hash = token_hash(secret)
        sessions.end_for_token(session, token.id)
        return _created(token, secret)


def revoke(db: Database, token_id: str) -> None:
    """The token and its dashboard sessions stop working at once; it stays listed as revoked. Revoking a
    revoked token changes nothing."""
    with db.write() as session:
        token = _live(session, token_id)
        if token.revoked_at is None:
            token.revoked_at = utcnow()
        sessions.end_for_token(session, token.id)
