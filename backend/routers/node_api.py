"""The node-facing API (node token): config, next task, downloads, uploads, completion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from backend import uploads
from backend.deps import NodeAuth, ServicesDep
from backend.errors import ApiError, responses
from backend.limits import Bigint
from backend.security import NodeCredential
from backend.services.node_api import access, completion, failures, keys, leases, transfers
from fedalign import params, secagg
from messaging.node_api import (
    STATUS_HEADER,
    CompleteRequest,
    CompleteResult,
    FailRequest,
    FailResult,
    FederationManifest,
    HeartbeatResult,
    NodeFederation,
    PublicKeyIn,
    PublicKeyOut,
    PublicKeys,
    RevealRequest,
    Task,
    UploadResult,
)

router = APIRouter(prefix="/api/v1/node", tags=["node"])

SAFETENSORS = uploads.SAFETENSORS
StepId = Annotated[int, PathParam(ge=1, description="The step's id, from the task."), Bigint]


class LargeFileResponse(FileResponse):
    """Sent in 1 MiB reads: each read is a hop to a worker thread, and at Starlette's 64 KiB a 100 MB
    model takes 1,500 of them (the download ran at 0.13 of a bare socket's rate, 0.24 with 1 MiB)."""

    chunk_size = 1 << 20


@router.get("/federation", response_model=NodeFederation, responses=responses(401, 403, 404))
def node_federation(services: ServicesDep, node: NodeAuth) -> NodeFederation:
    """What the node needs to build its runtime: the config, its own entry, the others' names and roles."""
    with services.db.read() as session:
        return access.node_federation(session, node)


@router.get("/manifest", response_model=FederationManifest, responses=responses(401, 403, 404, 409))
def node_manifest(services: ServicesDep, node: NodeAuth) -> FederationManifest:
    """The federation's models: every tensor of G, T and D (name, shape, dtype, shared or local), the
    architecture and its version, and the published model's layout. A node compares its own models with it
    at setup (`fedalign.model_manifest.check`) and stops, reporting the first difference, when they differ."""
    with services.db.read() as session:
        return access.node_manifest(session, node)


@router.get(
    "/task",
    response_model=Task,
    responses={
        204: {
            "description": "No step for this node now: poll again later. The federation's status is in the "
            f"{STATUS_HEADER} header (stop polling once it is finished, cancelled or failed).",
            "headers": {STATUS_HEADER: {"schema": {"type": "string"}}},
        }
    }
    | responses(401, 403, 404),
)
def next_task(request: Request, services: ServicesDep, node: NodeAuth) -> Task | Response:
    """Claim this node's next step with a lease; keep it with a heartbeat (``heartbeat_url``) every
    ``heartbeat_s`` until it is complete, or it is handed out again after ``lease_expires_at``."""
    with services.db.write() as session:
        lease = services.settings.lease_seconds
        step, federation_status = leases.claim_next(session, node, lease)
        task = leases.task_of(step, node, services.base_url(request), lease) if step else None
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={STATUS_HEADER: federation_status})
    return task


@router.post(
    "/steps/{step_id}/claim",
    response_model=Task,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Claim one of this node's steps by id (what a Celery message points at)",
)
def claim_step(request: Request, services: ServicesDep, node: NodeAuth, step_id: StepId) -> Task:
    """Claim step ``step_id`` with a fresh lease and get its task. A pending step, or one this node
    claimed before (a restarted worker, a retried message), is claimable; a done or cancelled step, or a
    federation that is paused or over, answers 409 with a code that says which: drop the message then."""
    with services.db.write() as session:
        lease = services.settings.lease_seconds
        step = leases.claim_step(session, node, step_id, lease)
        return leases.task_of(step, node, services.base_url(request), lease)


@router.post(
    "/steps/{step_id}/heartbeat",
    response_model=HeartbeatResult,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Renew the lease of a step this node is running",
)
def heartbeat(services: ServicesDep, node: NodeAuth, step_id: StepId) -> HeartbeatResult:
    """Renew the step's lease for ``lease_seconds`` from now: send one every ``heartbeat_s`` (the task's)
    from the claim until the completion. A step whose lease ran out before is taken back if it is still
    open. A done, failed or cancelled step, or a federation that is over, answers 409 with a code that
    says which: the step's result is not wanted any more, stop sending heartbeats."""
    with services.db.write() as session:
        return leases.renew(session, node, step_id, services.settings.lease_seconds)


@router.get(
    "/artifacts/{key:path}",
    response_class=FileResponse,
    responses={200: {"content": SAFETENSORS, "description": "The artifact as safetensors."}}
    | responses(401, 403, 404, 422),
)
def download_artifact(
    services: ServicesDep, node: NodeAuth, key: Annotated[str, PathParam(max_length=255)]
) -> FileResponse:
    """An aggregate one of this node's open steps downloads (or, for a target aggregating, a submission
    its aggregate step folds)."""
    with services.db.read() as session:
        artifact = transfers.artifact_for_node(session, node, key)
    return LargeFileResponse(
        services.store.path(artifact.sha256),
        media_type="application/octet-stream",
        headers={"ETag": f'"{artifact.sha256}"'},
    )


@router.put(
    "/steps/{step_id}/uploads/{slot}",
    response_model=UploadResult,
    openapi_extra={"requestBody": {"required": True, "content": SAFETENSORS}},
    responses=responses(401, 403, 404, 409, 413, 415, 422),
)
async def upload(
    request: Request,
    services: ServicesDep,
    node: NodeAuth,
    step_id: StepId,
    slot: Annotated[
        str, PathParam(max_length=16, description="A slot of the task's uploads (G, T, D, model).")
    ],
) -> UploadResult:
    """Upload this step's result for ``slot`` as safetensors. It is checked against the federation's
    manifest (names, shapes, dtypes, finite values, size) and stored only if it passes. Uploading the same
    bytes again is a no-op. With secure aggregation, a submission that is averaged is masked: the manifest's
    shared tensors as int64 ring elements (`fedalign.secagg`), whose values cannot be checked; a masked
    upload cannot be replaced by a different one."""
    limit = services.settings.max_upload_bytes
    uploads.check_media_type(request)
    # In a worker thread: a blocking wait for a pooled connection here would stall the event loop itself.
    target = await run_in_threadpool(_upload_target, services, node, step_id, slot)
    uploads.check_declared_size(request, limit)
    with uploads.IN_FLIGHT.one_at_a_time(("step", str(step_id), slot), f"slot {slot!r} of step {step_id}"):
        return await _receive_upload(request, services, node, step_id, slot, target, limit)


async def _receive_upload(
    request: Request,
    services: ServicesDep,
    node: NodeCredential,
    step_id: int,
    slot: str,
    target: transfers.UploadTarget,
    limit: int,
) -> UploadResult:
    staged = await uploads.receive(request, services.store, limit)
    try:
        validate = secagg.validate_masked if target.masked else params.validate
        try:
            await run_in_threadpool(validate, staged.path, target.manifest, limit)
        except params.ParameterError as exc:
            status_code = 413 if exc.code == "too_large" else 422
            raise ApiError(
                status_code,
                exc.code,
                f"upload for slot {slot!r} refused: {exc.message}{_masking_hint(target, exc)}",
                {"tensor": exc.tensor} if exc.tensor else None,
            ) from exc
        return await run_in_threadpool(
            transfers.store_upload, services.orchestrator, node, step_id, slot, staged
        )
    finally:
        staged.discard()  # no-op once the store adopted it


@router.post(
    "/steps/{step_id}/complete",
    response_model=CompleteResult,
    responses=responses(401, 403, 404, 409, 413, 422),
)
def complete_step(
    services: ServicesDep, node: NodeAuth, step_id: StepId, body: CompleteRequest
) -> CompleteResult:
    """Report the step done, with its metrics (and sample counts for setup). Its uploads must be stored
    first. Repeating an identical completion is answered the same and changes nothing."""
    return completion.complete(services.orchestrator, node, step_id, body)


@router.post(
    "/steps/{step_id}/fail",
    response_model=FailResult,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Report that this node cannot run one of its steps, with the reason",
)
def fail_step(services: ServicesDep, node: NodeAuth, step_id: StepId, body: FailRequest) -> FailResult:
    """Say the step failed instead of letting its lease run out: the reason (the error's type and message,
    without local paths) is shown on the node and recorded as a ``step_failed`` event. With ``retryable``
    the step is offered again, up to the federation's ``max_step_retries``; otherwise, or after that, the
    phase goes on without this node under the quorum rule (``min_sources``), or the run stalls with the
    reason when this node is the target. The same report again is answered the same."""
    return failures.fail(services.orchestrator, node, step_id, body)


@router.put(
    "/public-key",
    response_model=PublicKeyOut,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Send this node's X25519 public key (secure aggregation)",
)
def put_public_key(services: ServicesDep, node: NodeAuth, body: PublicKeyIn) -> PublicKeyOut:
    """Secure aggregation's AdvertiseKeys: the node's public key, relayed to its peers in the steps of masked
    phases; its private key never leaves the node. Sent before setup completes; the same key again is a
    no-op, a different one is refused (409): peers may have masked against the first."""
    return keys.put_public_key(services.orchestrator, node, body)


@router.get("/public-keys", response_model=PublicKeys, responses=responses(401, 403, 404))
def public_keys(services: ServicesDep, node: NodeAuth) -> PublicKeys:
    """The public keys of this node's federation, as the server relays them (secure aggregation)."""
    with services.db.read() as session:
        return keys.public_keys_of(session, node)


@router.post(
    "/steps/{step_id}/reveal",
    response_model=CompleteResult,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Answer a reveal step with this node's seeds (secure aggregation)",
)
def reveal_seeds(
    services: ServicesDep, node: NodeAuth, step_id: StepId, body: RevealRequest
) -> CompleteResult:
    """Secure aggregation's Unmasking: for each model the reveal step lists, this survivor's self seed and
    its pairwise seeds with the step's dropped nodes only. Completes the step; the same answer again is
    answered the same, a different one is refused (409)."""
    return keys.reveal(services.orchestrator, node, step_id, body)


def _masking_hint(target: transfers.UploadTarget, exc: params.ParameterError) -> str:
    if exc.code != "dtype_mismatch":
        return ""
    if target.masked:
        return (
            " (this federation uses secure aggregation: this slot takes masked parameters, int64 ring "
            "elements from fedalign.secagg.Masker, never plain floats)"
        )
    return " (masked int64 uploads go only to the averaged slots of a federation with secure aggregation)"


def _upload_target(
    services: ServicesDep, node: NodeCredential, step_id: int, slot: str
) -> transfers.UploadTarget:
    with services.db.read() as session:
        return transfers.upload_target(session, node, step_id, slot)
