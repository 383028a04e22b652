"""Federations: create, list, inspect, delete, and drive their status."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, status

from backend.deps import Admin, ServicesDep
from backend.errors import responses
from backend.schemas.federations import (
    FederationClone,
    FederationCloned,
    FederationCreated,
    FederationList,
    FederationOut,
    FederationSettings,
)
from backend.services import federations

router = APIRouter(prefix="/api/v1/federations", tags=["federations"])

FederationId = Path(description="The federation's id, as returned when it was created.", max_length=36)


def _out(services: ServicesDep, federation_id: str) -> FederationOut:
    with services.db.read() as session:
        return federations.view(session, federations.get(session, federation_id))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FederationCreated,
    responses=responses(401, 403, 413, 422),
    summary="Create a federation (its nodes register afterwards)",
)
def create_federation(
    body: FederationSettings,  # type: ignore[valid-type]  # a model generated from FederationConfig
    services: ServicesDep,
    _admin: Admin,
) -> FederationCreated:
    settings = body.model_dump(mode="json")  # type: ignore[attr-defined]
    federation, token = federations.create(services.db, settings)
    out = _out(services, federation.id)
    return FederationCreated(**out.model_dump(), join_token=token)


@router.get("", response_model=FederationList, responses=responses(401, 403))
def list_federations(services: ServicesDep, _admin: Admin) -> FederationList:
    with services.db.read() as session:
        return FederationList(items=federations.views_of(session, federations.all_federations(session)))


@router.get("/{federation_id}", response_model=FederationOut, responses=responses(401, 403, 404, 422))
def get_federation(services: ServicesDep, _admin: Admin, federation_id: str = FederationId) -> FederationOut:
    return _out(services, federation_id)


@router.delete(
    "/{federation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422),
    summary="Delete a federation with its rounds, metrics and stored parameters",
)
def delete_federation(services: ServicesDep, _admin: Admin, federation_id: str = FederationId) -> None:
    federations.delete(services.orchestrator, federation_id)


@router.post(
    "/{federation_id}/clone",
    status_code=status.HTTP_201_CREATED,
    response_model=FederationCloned,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Copy a federation's config (and its nodes, under new tokens), e.g. to run a baseline beside it",
)
def clone_federation(
    body: FederationClone,
    request: Request,
    services: ServicesDep,
    _admin: Admin,
    federation_id: str = FederationId,
) -> FederationCloned:
    overrides = body.model_dump(exclude_none=True, exclude={"nodes"})
    federation, join_token, registered = federations.clone(
        services.db, services.orchestrator, federation_id, overrides, body.nodes
    )
    base = services.base_url(request)
    node_tokens = [federations.node_created(n, token, base, services.settings) for n, token in registered]
    out = _out(services, federation.id)
    return FederationCloned(**out.model_dump(), join_token=join_token, node_tokens=node_tokens)


TRANSITION = responses(401, 403, 404, 409, 413, 422)


@router.post("/{federation_id}/start", response_model=FederationOut, responses=TRANSITION)
def start_federation(
    services: ServicesDep, _admin: Admin, federation_id: str = FederationId
) -> FederationOut:
    """Freeze the registered nodes into the config, store the initial models, open round 0."""
    federations.start(services.orchestrator, federation_id)
    return _out(services, federation_id)


@router.post("/{federation_id}/pause", response_model=FederationOut, responses=TRANSITION)
def pause_federation(
    services: ServicesDep, _admin: Admin, federation_id: str = FederationId
) -> FederationOut:
    """Stop handing out steps; steps already claimed may still complete."""
    federations.pause(services.orchestrator, federation_id)
    return _out(services, federation_id)


@router.post("/{federation_id}/resume", response_model=FederationOut, responses=TRANSITION)
def resume_federation(
    services: ServicesDep, _admin: Admin, federation_id: str = FederationId
) -> FederationOut:
    """Hand out steps again; the open phase's deadline starts over."""
    federations.resume(services.orchestrator, federation_id)
    return _out(services, federation_id)


@router.post("/{federation_id}/cancel", response_model=FederationOut, responses=TRANSITION)
def cancel_federation(
    services: ServicesDep, _admin: Admin, federation_id: str = FederationId
) -> FederationOut:
    """End the run for good: open steps and pending aggregations are cancelled."""
    federations.cancel(services.orchestrator, federation_id)
    return _out(services, federation_id)
