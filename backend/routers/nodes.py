"""Nodes of a federation: register (admin or join token), list, inspect, remove before the start, rotate or
revoke a node's token."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, status

from backend import access
from backend.access import Operation
from backend.deps import AnyCredential, ManageNodes, ReadNodes, ServicesDep, permit_on_federation
from backend.errors import not_found, responses
from backend.schemas.nodes import NodeCreate, NodeCreated, NodeList, NodeOut
from backend.security import JoinCredential
from backend.services import federations

router = APIRouter(prefix="/api/v1/federations/{federation_id}/nodes", tags=["nodes"])

FederationId = Path(description="The federation's id.", max_length=36)
NodeName = Path(description="The node's name, unique within its federation.", max_length=64)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=NodeCreated,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Register a node (a manager's token or the federation's join token); returns its token once",
)
def register_node(
    body: NodeCreate,
    request: Request,
    services: ServicesDep,
    credential: AnyCredential,
    federation_id: str = FederationId,
) -> NodeCreated:
    if not isinstance(credential, JoinCredential):
        # Anyone else registers as a manager of the federation (`backend.access`); a join token's own rules
        # (its federation, limits and organisation) are the registration's.
        _manager(services, credential, federation_id)
    node, token = federations.register_node(services.orchestrator, federation_id, body, credential)
    return federations.node_created(node, token, services.base_url(request), services.settings)


_manager = permit_on_federation(Operation.MANAGE_NODES).dependency


@router.get("", response_model=NodeList, responses=responses(401, 403, 404, 422))
def list_nodes(services: ServicesDep, caller: ReadNodes, federation_id: str = FederationId) -> NodeList:
    """The federation's nodes; a viewer's token lists its own organisation's only."""
    with services.db.read() as session:
        status = federations.get(session, federation_id).status
        return NodeList(
            items=[
                federations.node_out(n, status)
                for n in federations.nodes_of(session, federation_id)
                if access.sees_node(caller, n.organisation)
            ]
        )


@router.get("/{name}", response_model=NodeOut, responses=responses(401, 403, 404, 422))
def get_node(
    services: ServicesDep, caller: ReadNodes, federation_id: str = FederationId, name: str = NodeName
) -> NodeOut:
    with services.db.read() as session:
        node = federations.get_node(session, federation_id, name)
        if not access.sees_node(caller, node.organisation):
            raise not_found(f"no node named {name!r} in this federation that your organisation runs")
        return federations.node_out(node, federations.get(session, federation_id).status)


@router.delete(
    "/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(401, 403, 404, 409, 422)
)
def delete_node(
    services: ServicesDep, _access: ManageNodes, federation_id: str = FederationId, name: str = NodeName
) -> None:
    federations.delete_node(services.orchestrator, federation_id, name)


@router.post(
    "/{name}/token",
    response_model=NodeCreated,
    responses=responses(401, 403, 404, 413, 422),
    summary="Rotate a node's token: a new one, shown once; the old one stops working at once",
)
def rotate_node_token(
    request: Request,
    services: ServicesDep,
    _access: ManageNodes,
    federation_id: str = FederationId,
    name: str = NodeName,
) -> NodeCreated:
    node, token = federations.rotate_node_token(services.orchestrator, federation_id, name)
    return federations.node_created(node, token, services.base_url(request), services.settings)


@router.delete(
    "/{name}/token",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422),
    summary="Revoke a node's token: it stops working at once, until the token is rotated",
)
def revoke_node_token(
    services: ServicesDep, _access: ManageNodes, federation_id: str = FederationId, name: str = NodeName
) -> None:
    federations.revoke_node_token(services.orchestrator, federation_id, name)
