"""Federations: create, list, inspect, delete, and drive their status."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool

from backend import access, uploads
from backend.deps import (
    ControlFederation,
    CreateFederations,
    ListFederations,
    ManageFederation,
    ManageNodes,
    ReadFederation,
    ServicesDep,
)
from backend.errors import ApiError, responses
from backend.schemas.federations import (
    FederationAccess,
    FederationClone,
    FederationCloned,
    FederationContinue,
    FederationCreated,
    FederationList,
    FederationOut,
    FederationSettings,
    InitialModelOut,
    JoinToken,
    JoinTokenLimits,
)
from backend.services import federations, initial_models, views
from fedalign import params
from fedalign.model_manifest import ModelManifest, ModelManifestDocument
from messaging.node_api import FederationManifest

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
    description="With a built-in architecture (and no model.init_checkpoint) the server builds the initial "
    "parameters and their manifest document from the seed, as `fedalign init-model` does; otherwise the "
    "creator uploads both (PUT .../initial-model/manifest, then .../initial-model/parameters) before the "
    "start. Settings the architecture cannot take, or models too large to upload, answer 422.",
)
def create_federation(
    body: FederationSettings,  # type: ignore[valid-type]  # a model generated from FederationConfig
    services: ServicesDep,
    creator: CreateFederations,
) -> FederationCreated:
    """An owner's federation belongs to its organisation (its owner tokens manage it); the coordinator's to
    none (only coordinators manage it)."""
    settings = body.model_dump(mode="json")  # type: ignore[attr-defined]
    federation, token = federations.create(
        services.orchestrator,
        settings,
        services.settings.max_upload_bytes,
        services.settings.tracker_destinations(),
        owner_organisation=creator.organisation if creator.role == "owner" else None,
    )
    out = _out(services, federation.id)
    return FederationCreated(**out.model_dump(), join_token=token)


@router.get("", response_model=FederationList, responses=responses(401, 403))
def list_federations(services: ServicesDep, caller: ListFederations) -> FederationList:
    """The federations the caller's token reaches: every one for a coordinator, its organisation's for an
    owner, those its organisation takes part in for a viewer."""
    with services.db.read() as session:
        every = federations.all_federations(session)
        scopes = access.scopes_of(session, [f.id for f in every], {f.id: f.owner_organisation for f in every})
        visible = [f for f in every if access.sees(caller, scopes[f.id])]
        sees_node = partial(access.sees_node, caller)
        return FederationList(items=federations.views_of(session, visible, sees_node))


@router.get("/{federation_id}", response_model=FederationOut, responses=responses(401, 403, 404, 422))
def get_federation(
    services: ServicesDep, caller: ReadFederation, federation_id: str = FederationId
) -> FederationOut:
    """The federation; its `nodes` are those the caller sees (a viewer: its own organisation's)."""
    with services.db.read() as session:
        federation = federations.get(session, federation_id)
        return federations.view(session, federation, partial(access.sees_node, caller))


@router.get(
    "/{federation_id}/access",
    response_model=FederationAccess,
    responses=responses(401, 403, 404, 422),
    summary="What the caller may do on this federation",
)
def federation_access(
    services: ServicesDep, caller: ReadFederation, federation_id: str = FederationId
) -> FederationAccess:
    """The operations the caller's token may perform on this federation: its role's, narrowed by the
    federation (a viewer of a source's organisation reads no model). The dashboard shows those controls."""
    with services.db.read() as session:
        federation = federations.get(session, federation_id)  # 404 when deleted since the check
        scope = access.scopes_of(session, [federation.id], {federation.id: federation.owner_organisation})
    return FederationAccess(operations=access.operations_on(caller, scope[federation.id]))


@router.delete(
    "/{federation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422),
    summary="Delete a federation with its rounds, metrics and stored parameters",
)
def delete_federation(
    services: ServicesDep, _access: ManageFederation, federation_id: str = FederationId
) -> None:
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
    cloner: ManageFederation,
    federation_id: str = FederationId,
) -> FederationCloned:
    overrides = body.model_dump(exclude_none=True, exclude={"nodes"})
    federation, join_token, registered = federations.clone(
        services.orchestrator,
        federation_id,
        overrides,
        body.nodes,
        services.settings.max_upload_bytes,
        services.settings.tracker_destinations(),
        cloner,
    )
    base = services.base_url(request)
    node_tokens = [federations.node_created(n, token, base, services.settings) for n, token in registered]
    out = _out(services, federation.id)
    return FederationCloned(**out.model_dump(), join_token=join_token, node_tokens=node_tokens)


TRANSITION = responses(401, 403, 404, 409, 413, 422)


@router.post(
    "/{federation_id}/join-token",
    response_model=JoinToken,
    responses=responses(401, 403, 404, 413, 422),
    summary="Rotate the join token: a new one, shown once; the old one stops working at once",
)
def rotate_join_token(
    services: ServicesDep,
    _access: ManageNodes,
    federation_id: str = FederationId,
    limits: JoinTokenLimits | None = None,
) -> JoinToken:
    """With `limits`, the new token expires, registers at most so many nodes, or only some roles."""
    return federations.rotate_join_token(services.orchestrator, federation_id, limits or JoinTokenLimits())


@router.delete(
    "/{federation_id}/join-token",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422),
    summary="Revoke the join token: no node registers with it any more, until it is rotated",
)
def revoke_join_token(services: ServicesDep, _access: ManageNodes, federation_id: str = FederationId) -> None:
    federations.revoke_join_token(services.orchestrator, federation_id)


@router.post("/{federation_id}/start", response_model=FederationOut, responses=TRANSITION)
def start_federation(
    services: ServicesDep, _access: ControlFederation, federation_id: str = FederationId
) -> FederationOut:
    """Freeze the registered nodes into the config, store round 0's models (from the initial parameters),
    open round 0. A federation without its initial parameters and manifest document (a plug-in
    architecture's, uploaded by its creator) answers 409 ``no_initial_model`` naming what is missing."""
    federations.start(services.orchestrator, federation_id, services.settings.max_upload_bytes)
    return _out(services, federation_id)


@router.post("/{federation_id}/pause", response_model=FederationOut, responses=TRANSITION)
def pause_federation(
    services: ServicesDep, _access: ControlFederation, federation_id: str = FederationId
) -> FederationOut:
    """Stop handing out steps; steps already claimed may still complete."""
    federations.pause(services.orchestrator, federation_id)
    return _out(services, federation_id)


@router.post("/{federation_id}/resume", response_model=FederationOut, responses=TRANSITION)
def resume_federation(
    services: ServicesDep, _access: ControlFederation, federation_id: str = FederationId
) -> FederationOut:
    """Hand out steps again; the open phase's deadline starts over."""
    federations.resume(services.orchestrator, federation_id)
    return _out(services, federation_id)


@router.post("/{federation_id}/continue", response_model=FederationOut, responses=TRANSITION)
def continue_federation(
    body: FederationContinue,
    services: ServicesDep,
    _access: ControlFederation,
    federation_id: str = FederationId,
) -> FederationOut:
    """Run a finished federation for more rounds, from where it ended: the result equals one run that long
    from the start (for schedules over the run's length, the later rounds follow the longer run). REST
    nodes that left when it finished are started again with the same data directory."""
    federations.continue_for(services.orchestrator, federation_id, body.rounds)
    return _out(services, federation_id)


@router.post("/{federation_id}/cancel", response_model=FederationOut, responses=TRANSITION)
def cancel_federation(
    services: ServicesDep, _access: ControlFederation, federation_id: str = FederationId
) -> FederationOut:
    """End the run for good: open steps and pending aggregations are cancelled."""
    federations.cancel(services.orchestrator, federation_id)
    return _out(services, federation_id)


# ------------------------------------------------------------------------------------------ initial model

INITIAL_MODEL = responses(401, 403, 404, 409, 413, 422)


@router.put(
    "/{federation_id}/initial-model/manifest",
    response_model=InitialModelOut,
    responses=INITIAL_MODEL,
    summary="Upload the manifest document of the federation's initial parameters",
)
def put_initial_manifest(
    body: ModelManifestDocument,
    services: ServicesDep,
    _access: ManageFederation,
    federation_id: str = FederationId,
) -> InitialModelOut:
    """The JSON document ``fedalign init-model`` writes beside the initial parameters
    (``init.manifest.json``): the architecture, its version, and every tensor of G, T and D. The server
    never imports a plug-in architecture: the parameters, and every upload of the run, are checked against
    this document. Its architecture must be the federation's (and, for a built-in, the document the server
    builds itself). A different document than the stored one drops the stored parameters; the same one
    changes nothing. Only before the start (409 after)."""
    return initial_models.put_manifest(
        services.orchestrator, federation_id, body, services.settings.max_upload_bytes
    )


@router.put(
    "/{federation_id}/initial-model/parameters",
    response_model=InitialModelOut,
    openapi_extra={"requestBody": {"required": True, "content": uploads.SAFETENSORS}},
    responses=responses(401, 403, 404, 409, 413, 415, 422),
    summary="Upload the federation's initial parameters (safetensors)",
)
async def put_initial_parameters(
    request: Request, services: ServicesDep, _access: ManageFederation, federation_id: str = FederationId
) -> InitialModelOut:
    """The safetensors file ``fedalign init-model`` writes (``init.safetensors``): every tensor of G, T and D
    as ``G.<name>``, ``T.<name>``, ``D.<name>``. Checked against the stored manifest document (upload it
    first): exactly its tensors, each with its shape and dtype, every value finite, no metadata, never a
    pickle. Refused with a 4xx that says what is wrong, and then nothing changes. The limit is three times
    FEDALIGN_MAX_UPLOAD_BYTES. Only before the start (409 after)."""
    limit = initial_models.upload_limit(services.settings.max_upload_bytes)
    uploads.check_media_type(request)
    manifest = await run_in_threadpool(_manifest_for_upload, services, federation_id)
    uploads.check_declared_size(request, limit)
    slot = ("initial", federation_id)
    with uploads.IN_FLIGHT.one_at_a_time(slot, f"federation {federation_id}'s initial parameters"):
        staged = await uploads.receive(request, services.store, limit)
    try:
        try:
            await run_in_threadpool(params.validate, staged.path, manifest.every_tensor(), limit)
        except params.ParameterError as exc:
            raise ApiError(
                413 if exc.code == "too_large" else 422,
                exc.code,
                f"initial parameters refused: {exc.message}",
                {"tensor": exc.tensor} if exc.tensor else None,
            ) from exc
        return await run_in_threadpool(
            initial_models.put_parameters, services.orchestrator, federation_id, manifest, staged
        )
    finally:
        staged.discard()  # no-op once the store adopted it


def _manifest_for_upload(services: ServicesDep, federation_id: str) -> ModelManifest:
    with services.db.read() as session:
        return initial_models.manifest_for_upload(session, federations.get(session, federation_id))


@router.get(
    "/{federation_id}/manifest",
    response_model=FederationManifest,
    responses=responses(401, 403, 404, 409, 422),
    summary="The federation's models: every tensor, the architecture and its version, the published layout",
)
def get_manifest(
    services: ServicesDep, _access: ReadFederation, federation_id: str = FederationId
) -> FederationManifest:
    """What its nodes read at setup (GET /api/v1/node/manifest): every tensor of G, T and D (name, shape,
    dtype, shared or local), the architecture and its declared version, and the published model's layout.
    409 ``no_model_manifest`` before a plug-in federation's creator uploaded the document."""
    with services.db.read() as session:
        return views.federation_manifest_out(federations.get(session, federation_id))
