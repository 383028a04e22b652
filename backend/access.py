"""Who may do what: the one table of operations and the roles that may perform them, and the scope rules
that say which federations a role's token reaches. Routers import this module and never decide themselves.

Roles (of an access token, `backend.models.AccessToken`, or the environment's bootstrap admin token):

- ``coordinator``: the deployment's operator (the admin token of old); every federation, and access tokens.
- ``owner``: a federation owner of one organisation; creates federations, which its organisation then owns,
  and manages those (start, pause, cancel, nodes and their tokens); never another organisation's.
- ``viewer``: read-only for one organisation; sees the federations its organisation takes part in (one of
  its nodes is registered there, or it owns it): config, rounds, metrics, events and its own nodes; the
  published model only where its organisation runs the target node.

A federation a token cannot see answers 404, as one that does not exist: its existence is not theirs to
learn. An operation its role never performs answers 403, before any federation is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Federation, Node
from backend.operations import ROLES, Operation, Role

_MANAGERS: frozenset[Role] = frozenset({"coordinator", "owner"})
_EVERYONE: frozenset[Role] = frozenset(ROLES)

ALLOWED: dict[Operation, frozenset[Role]] = {
    Operation.LIST_FEDERATIONS: _EVERYONE,
    Operation.CREATE_FEDERATION: _MANAGERS,
    Operation.READ_FEDERATION: _EVERYONE,
    Operation.READ_NODES: _EVERYONE,
    Operation.READ_MODEL: _EVERYONE,
    Operation.CONTROL_FEDERATION: _MANAGERS,
    Operation.MANAGE_FEDERATION: _MANAGERS,
    Operation.MANAGE_NODES: _MANAGERS,
    Operation.MANAGE_ACCESS_TOKENS: frozenset({"coordinator"}),
}


@dataclass(frozen=True)
class AccessCredential:
    """An access token's holder (or the bootstrap admin token's: a coordinator without a token id)."""

    role: Role
    organisation: str | None = None
    token_id: str | None = None
    kind: Literal["access"] = "access"

    @property
    def described(self) -> str:
        where = f" of organisation {self.organisation!r}" if self.organisation else ""
        return f"a {self.role} token{where}"


BOOTSTRAP_COORDINATOR = AccessCredential(role="coordinator")


@dataclass(frozen=True)
class FederationScope:
    """The organisations a federation involves: its owner's and each registered node's."""

    owner_organisation: str | None
    node_organisations: frozenset[str]
    target_organisation: str | None


class Decision(Enum):
    ALLOW = "allow"
    FORBID = "forbid"  # 403: valid credentials without the right
    HIDE = "hide"  # 404: not theirs to see


def may(credential: AccessCredential, operation: Operation) -> bool:
    """Whether the credential's role performs `operation` at all (somewhere in its scope)."""
    return credential.role in ALLOWED[operation]


def operations_of(credential: AccessCredential) -> list[Operation]:
    """Every operation the credential's role may perform (the dashboard shows the controls for these)."""
    return [operation for operation in Operation if may(credential, operation)]


# The operations performed on one federation (the rest are deployment-wide).
ON_A_FEDERATION: tuple[Operation, ...] = (
    Operation.READ_FEDERATION,
    Operation.READ_NODES,
    Operation.READ_MODEL,
    Operation.CONTROL_FEDERATION,
    Operation.MANAGE_FEDERATION,
    Operation.MANAGE_NODES,
)


def operations_on(credential: AccessCredential, scope: FederationScope) -> list[Operation]:
    """What the credential may do on this federation: its role's operations, narrowed by the federation
    (a viewer reads the model only where its organisation runs the target)."""
    return [op for op in ON_A_FEDERATION if decide(credential, op, scope) is Decision.ALLOW]


def sees(credential: AccessCredential, scope: FederationScope) -> bool:
    """Whether the federation is within the credential's reach at all."""
    org = credential.organisation
    if credential.role == "coordinator":
        return True
    if credential.role == "owner":
        return org is not None and scope.owner_organisation == org
    return org is not None and (scope.owner_organisation == org or org in scope.node_organisations)


def decide(credential: AccessCredential, operation: Operation, scope: FederationScope | None) -> Decision:
    """The answer to `operation` by `credential`, on the federation of `scope` (None: no federation)."""
    if not may(credential, operation):
        return Decision.FORBID
    if scope is None:
        return Decision.ALLOW
    if not sees(credential, scope):
        return Decision.HIDE
    if operation is Operation.READ_MODEL and credential.role == "viewer":
        # The model is the target's: only its organisation's viewers read it.
        target = scope.target_organisation
        return Decision.ALLOW if target is not None and target == credential.organisation else Decision.FORBID
    return Decision.ALLOW


def sees_node(credential: AccessCredential, node_organisation: str | None) -> bool:
    """Whether a node is listed to the credential: a viewer sees its own organisation's nodes only."""
    if credential.role != "viewer":
        return True
    return node_organisation is not None and node_organisation == credential.organisation


# ------------------------------------------------------------------------------------------ scopes, read


def scope_of(session: Session, federation_id: str) -> FederationScope | None:
    """The federation's scope, or None when there is no such federation."""
    federation = session.get(Federation, federation_id)
    if federation is None:
        return None
    return scopes_of(session, [federation_id], {federation_id: federation.owner_organisation})[federation_id]


def scopes_of(
    session: Session, federation_ids: list[str], owners: dict[str, str | None]
) -> dict[str, FederationScope]:
    """Scopes of many federations in one query (the federation list)."""
    orgs: dict[str, set[str]] = {fid: set() for fid in federation_ids}
    targets: dict[str, str | None] = dict.fromkeys(federation_ids)
    if federation_ids:
        rows = session.execute(
            select(Node.federation_id, Node.organisation, Node.role).where(
                Node.federation_id.in_(federation_ids), Node.organisation.is_not(None)
            )
        )
        for federation_id, organisation, role in rows:
            orgs[federation_id].add(organisation)
            if role == "target":
                targets[federation_id] = organisation
    return {
        fid: FederationScope(owners.get(fid), frozenset(orgs[fid]), targets[fid]) for fid in federation_ids
    }
