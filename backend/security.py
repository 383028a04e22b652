"""Tokens: the bootstrap admin token, access tokens (a role and an organisation), a federation's join token,
a node's token.

Join and node tokens are random, shown once, and stored only as their sha256; a presented token is
hashed and looked up, then compared in constant time. Tokens carry a readable prefix so that one pasted
in the wrong place can be told apart (and found by secret scanners), never so that a lookup trusts it.
Nothing here logs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.access import BOOTSTRAP_COORDINATOR, AccessCredential
from backend.models import AccessToken, DashboardSessionRecord, Federation, Node

JOIN_PREFIX = "fa_join_"
NODE_PREFIX = "fa_node_"
ACCESS_PREFIX = "fa_access_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class JoinCredential:
    """A federation's join token: registers nodes in that federation, nothing else."""

    federation_id: str
    kind: Literal["join"] = "join"


@dataclass(frozen=True)
class NodeCredential:
    """A node's token: that node of that federation, every field known (the node API's caller)."""

    federation_id: str
    node_id: str
    node_name: str
    kind: Literal["node"] = "node"


Credential = AccessCredential | JoinCredential | NodeCredential


def access_credential(token: AccessToken) -> AccessCredential:
    return AccessCredential(role=token.role, organisation=token.organisation, token_id=token.id)  # type: ignore[arg-type]


def resolve(session: Session, bootstrap_token: str | None, token: str) -> Credential | None:
    """Who a bearer token is, or None when it is nobody's. `bootstrap_token`: the environment's admin
    token, None when it is disabled."""
    digest = token_hash(token)
    if bootstrap_token is not None and same(digest, token_hash(bootstrap_token)):
        return BOOTSTRAP_COORDINATOR
    if token.startswith(ACCESS_PREFIX):
        access = session.scalars(select(AccessToken).where(AccessToken.token_hash == digest)).one_or_none()
        if access is not None and access.revoked_at is None and same(access.token_hash, digest):
            return access_credential(access)
    elif token.startswith(NODE_PREFIX):
        node = session.scalars(select(Node).where(Node.token_hash == digest)).one_or_none()
        if node is not None and same(node.token_hash, digest):
            return NodeCredential(federation_id=node.federation_id, node_id=node.id, node_name=node.name)
    elif token.startswith(JOIN_PREFIX):
        federation = session.scalars(
            select(Federation).where(Federation.join_token_hash == digest)
        ).one_or_none()
        if federation is not None and same(federation.join_token_hash, digest):
            return JoinCredential(federation_id=federation.id)
    return None


def session_credential(
    session: Session, record: DashboardSessionRecord, bootstrap_enabled: bool
) -> AccessCredential | None:
    """Who a dashboard session acts as: the token it signed in with, while that token is still valid."""
    if record.access_token_id is None:
        return BOOTSTRAP_COORDINATOR if bootstrap_enabled else None
    access = session.get(AccessToken, record.access_token_id)
    if access is None or access.revoked_at is not None:
        return None
    return access_credential(access)
