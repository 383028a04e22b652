"""Tokens: the admin token, a federation's join token, a node's token.

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

from backend.models import Federation, Node

JOIN_PREFIX = "fa_join_"
NODE_PREFIX = "fa_node_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class AdminCredential:
    """The admin token (or the dashboard's session): manages every federation."""

    kind: Literal["admin"] = "admin"


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


Credential = AdminCredential | JoinCredential | NodeCredential


def resolve(session: Session, admin_token: str, token: str) -> Credential | None:
    """Who a bearer token is, or None when it is nobody's."""
    digest = token_hash(token)
    if same(digest, token_hash(admin_token)):
        return AdminCredential()
    if token.startswith(NODE_PREFIX):
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
