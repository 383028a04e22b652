"""The node-facing API (node token): config, next task, downloads, uploads, completion."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError

from backend import uploads
from backend.deps import NodeAuth, ServicesDep
from backend.errors import ApiError, responses
from backend.limits import Bigint
from backend.security import NodeCredential
from backend.services.node_api import access, completion, failures, keys, leases, submissions, transfers
from backend.services.store import Staged
from fedalign import params, secagg
from messaging import multipart
from messaging.node_api import (
    MAX_POLL_WAIT_S,
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
    SubmitResult,
    Task,
    UploadResult,
)
from messaging.node_api import TERMINAL_STATUSES as OVER

router = APIRouter(prefix="/api/v1/node", tags=["node"])

SAFETENSORS = uploads.SAFETENSORS
StepId = Annotated[int, PathParam(ge=1, description="The step's id, from the task."), Bigint]
InlineMaxBytes = Annotated[
    int,
    Query(
        ge=0,
        le=2**31,
        description="Carry the downloads (and inputs) of at most this many bytes inline in the task (its "
        "'inline', base64), up to the server's FEDALIGN_INLINE_DOWNLOAD_MAX_BYTES; 0: none, all are URLs.",
    ),
]
# The multipart framing's boundaries and part headers, beyond the parts' own limits.
SUBMIT_OVERHEAD_BYTES = 64 * 1024


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
    | responses(401, 403, 404, 422),
)
async def next_task(
    request: Request,
    services: ServicesDep,
    node: NodeAuth,
    wait_s: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_POLL_WAIT_S,
            description="Hold the poll open up to this long (at most the server's FEDALIGN_LONG_POLL_MAX_S) "
            "until one of the node's steps is claimable, and answer it claimed as soon as it is; 0: answer "
            "at once.",
        ),
    ] = 0.0,
    inline_max_bytes: InlineMaxBytes = 0,
) -> Task | Response:
    """Claim this node's next step with a lease; keep it with a heartbeat (``heartbeat_url``) every
    ``heartbeat_s`` until it is complete, or it is handed out again after ``lease_expires_at``. With
    ``wait_s`` the poll waits for a step (a long poll): the commit that opens one wakes it."""
    settings = services.settings
    inline = min(inline_max_bytes, settings.inline_download_max_bytes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait_s, settings.long_poll_max_s)
    base_url = services.base_url(request)
    # Subscribed before the first claim: a step committed between a claim that found none and the wait
    # sets the event, so no wake-up is lost.
    with services.orchestrator.steps_notifier.subscribe(node.federation_id) as woken:
        while True:
            woken.clear()
            task, federation_status = await run_in_threadpool(_claim_next, services, node, base_url, inline)
            left = deadline - loop.time()
            if task is not None or federation_status in OVER or left <= 0:
                break
            # Also looks again after a while: another API process's commit wakes nothing here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, settings.long_poll_recheck_s))
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={STATUS_HEADER: federation_status})
    return task


def _claim_next(
    services: ServicesDep, node: NodeCredential, base_url: str, inline_max_bytes: int
) -> tuple[Task | None, str]:
    with services.db.write() as session:
        lease = services.settings.lease_seconds
        step, federation_status = leases.claim_next(session, node, lease)
        if step is None:
            return None, federation_status
        task = leases.task_of(step, node, base_url, lease)
        plan = transfers.plan_inline_downloads(session, services.store, step, task, inline_max_bytes)
    return transfers.with_inline_downloads(plan), ""


@router.post(
    "/steps/{step_id}/claim",
    response_model=Task,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Claim one of this node's steps by id (what a Celery message points at)",
)
def claim_step(
    request: Request,
    services: ServicesDep,
    node: NodeAuth,
    step_id: StepId,
    inline_max_bytes: InlineMaxBytes = 0,
) -> Task:
    """Claim step ``step_id`` with a fresh lease and get its task. A pending step, or one this node
    claimed before (a restarted worker, a retried message), is claimable; a done or cancelled step, or a
    federation that is paused or over, answers 409 with a code that says which: drop the message then."""
    inline = min(inline_max_bytes, services.settings.inline_download_max_bytes)
    with services.db.write() as session:
        lease = services.settings.lease_seconds
        step = leases.claim_step(session, node, step_id, lease)
        task = leases.task_of(step, node, services.base_url(request), lease)
        plan = transfers.plan_inline_downloads(session, services.store, step, task, inline)
    return transfers.with_inline_downloads(plan)


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
        await run_in_threadpool(_validate, target, staged, slot, limit)
        return await run_in_threadpool(
            transfers.store_upload, services.orchestrator, node, step_id, slot, staged
        )
    finally:
        staged.discard()  # no-op once the store adopted it


def _validate(target: transfers.UploadTarget, staged: Staged, slot: str, limit: int) -> None:
    """The upload's checks against the federation's manifest: names, shapes, dtypes, finite values, size."""
    validate = secagg.validate_masked if target.masked else params.validate
    try:
        validate(staged.path, target.manifest, limit)
    except params.ParameterError as exc:
        status_code = 413 if exc.code == "too_large" else 422
        raise ApiError(
            status_code,
            exc.code,
            f"upload for slot {slot!r} refused: {exc.message}{_masking_hint(target, exc)}",
            {"tensor": exc.tensor} if exc.tensor else None,
        ) from exc


@router.post(
    "/steps/{step_id}/submit",
    response_model=SubmitResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                multipart.FORM_DATA: {
                    "schema": {
                        "type": "object",
                        "description": "One part per upload slot of the task (named by the slot: G, T, D "
                        f"or model), raw safetensors bytes; then a part {multipart.COMPLETION_PART!r}: "
                        "the completion's JSON (CompleteRequest).",
                        "properties": {
                            multipart.COMPLETION_PART: {"type": "string", "description": "CompleteRequest"}
                        },
                        "additionalProperties": {"type": "string", "format": "binary"},
                        "required": [multipart.COMPLETION_PART],
                    }
                }
            },
        }
    },
    responses=responses(401, 403, 404, 409, 413, 415, 422),
    summary="Upload a step's results and complete it, in one request",
)
async def submit_step(
    request: Request, services: ServicesDep, node: NodeAuth, step_id: StepId
) -> SubmitResult:
    """The task's uploads and its completion together (``submit_url``), as multipart/form-data: each upload
    is checked exactly as a PUT to its slot is (the manifest's names, shapes and dtypes, finite values, the
    size limit, 413 as it streams), the completion as a POST to ``complete_url`` is; then all are stored
    and the step completed in one transaction. On any refusal nothing is stored and the step stays open.
    The same submission again is answered the same and changes nothing."""
    settings = services.settings
    targets = await run_in_threadpool(_submission_targets, services, node, step_id)
    uploads.check_declared_size(
        request, settings.max_upload_bytes * len(targets) + settings.max_json_bytes + SUBMIT_OVERHEAD_BYTES
    )
    with uploads.IN_FLIGHT.one_at_a_time(("step", str(step_id), "submit"), f"step {step_id}"):
        submission = await uploads.receive_submission(
            request, services.store, targets, settings.max_upload_bytes, settings.max_json_bytes
        )
        try:
            assert submission.completion is not None  # receive_submission refuses a submission without
            body = _completion_of(submission.completion)
            for slot, staged in sorted(submission.files.items()):
                await run_in_threadpool(_validate, targets[slot], staged, slot, settings.max_upload_bytes)
            return await run_in_threadpool(
                submissions.store_and_complete, services.orchestrator, node, step_id, submission.files, body
            )
        finally:
            submission.discard()


def _completion_of(raw: bytes) -> CompleteRequest:
    try:
        return CompleteRequest.model_validate_json(raw)
    except ValidationError as exc:
        # Answered like a JSON body's errors, located in the completion part.
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", multipart.COMPLETION_PART, *e["loc"])} for e in errors]
        ) from exc


def _submission_targets(
    services: ServicesDep, node: NodeCredential, step_id: int
) -> dict[str, transfers.UploadTarget]:
    with services.db.read() as session:
        return submissions.upload_targets(session, node, step_id)


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
