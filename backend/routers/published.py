"""The published target model of a finished federation, and its card."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, Response, StreamingResponse

from backend.deps import ReadModel, ServicesDep
from backend.errors import responses
from backend.models import Artifact
from backend.observability import metrics
from backend.schemas.published import CheckpointList, PublishedModel
from backend.services import federations, views
from fedalign import params
from fedalign.checkpoint_files import checkpoint_filename
from fedalign.model_card import ModelCard

router = APIRouter(prefix="/api/v1/federations/{federation_id}/model", tags=["model"])

SAFETENSORS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
# The stored file after its new header is sent in pieces of this size.
CHUNK_BYTES = 1 << 20


def _with_card(path: FilePath, prefix: bytes, data_start: int) -> Iterator[bytes]:
    """The stored file with its beginning (length and header) replaced by ``prefix``."""
    yield prefix
    with open(path, "rb") as f:
        f.seek(data_start)
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _attachment(filename: str) -> str:
    """Content-Disposition for a download, as FileResponse writes it (RFC 6266's filename* when needed)."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


@router.get(
    "",
    response_class=FileResponse,
    responses={
        200: {
            "content": SAFETENSORS,
            "description": "The model as safetensors (G.* and T.*); card=true: its card in the metadata.",
        }
    }
    | responses(401, 403, 404, 409, 422),
)
def download_model(
    services: ServicesDep,
    _access: ReadModel,
    federation_id: Annotated[str, Path(max_length=36)],
    card: Annotated[
        bool,
        Query(
            description="Put the model card in the file's safetensors metadata (key 'fedalign.model_card'), "
            "so that `fedalign predict` and `fedalign export` use the file as it is. Without it the file is "
            "the one the target uploaded, byte for byte (the sha256 that GET .../model/card gives)."
        ),
    ] = False,
) -> Response:
    with services.db.read() as session:
        federation = federations.get(session, federation_id)
        artifact = views.published_artifact(session, federation)
        metrics.download_served(artifact.kind, artifact.size)
        filename = f"{federation.name}-target-model.safetensors"
        model_card = views.target_model_card(federation) if card else None
    return _model_file(services.store.path(artifact.sha256), artifact, filename, model_card)


def _model_file(path: FilePath, artifact: Artifact, filename: str, model_card: ModelCard | None) -> Response:
    """The stored file as it is, or with `model_card` in its safetensors metadata."""
    filename = filename.replace("/", "_").replace('"', "")
    if model_card is None:
        return FileResponse(
            path,
            media_type="application/octet-stream",
            filename=filename,
            headers={"ETag": f'"{artifact.sha256}"'},
        )
    # Only the header changes; the tensors' bytes stream from the store as they are.
    prefix, data_start = params.header_with_metadata(path, model_card.metadata())
    tag = hashlib.sha256(artifact.sha256.encode() + prefix).hexdigest()
    return StreamingResponse(
        _with_card(path, prefix, data_start),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(len(prefix) + artifact.size - data_start),
            "Content-Disposition": _attachment(filename),
            "ETag": f'"{tag}"',
        },
    )


@router.get("/card", response_model=PublishedModel, responses=responses(401, 403, 404, 409, 422))
def model_card(
    services: ServicesDep, _access: ReadModel, federation_id: Annotated[str, Path(max_length=36)]
) -> PublishedModel:
    with services.db.read() as session:
        return views.model_card(session, federations.get(session, federation_id))


checkpoints_router = APIRouter(prefix="/api/v1/federations/{federation_id}/checkpoints", tags=["model"])


@checkpoints_router.get("", response_model=CheckpointList, responses=responses(401, 403, 404, 422))
def list_checkpoints(
    services: ServicesDep, _access: ReadModel, federation_id: Annotated[str, Path(max_length=36)]
) -> CheckpointList:
    """The target's checkpoints so far (checkpoint_every, and the final model), the selected one marked."""
    with services.db.read() as session:
        federation = federations.get(session, federation_id)
        return CheckpointList(items=[out for out, _ in views.checkpoints(session, federation)])


@checkpoints_router.get(
    "/{round_number}",
    response_class=FileResponse,
    responses={
        200: {"content": SAFETENSORS, "description": "The checkpoint as safetensors, as GET .../model."}
    }
    | responses(401, 403, 404, 422),
)
def download_checkpoint(
    services: ServicesDep,
    _access: ReadModel,
    federation_id: Annotated[str, Path(max_length=36)],
    round_number: Annotated[int, Path(ge=1, le=100_000)],
    card: Annotated[
        bool, Query(description="Put the model card in the file's metadata, as GET .../model.")
    ] = False,
) -> Response:
    with services.db.read() as session:
        federation = federations.get(session, federation_id)
        artifact = views.checkpoint(session, federation, round_number)
        metrics.download_served(artifact.kind, artifact.size)
        filename = checkpoint_filename(round_number, federation.name)
        model_card = views.target_model_card(federation, round_number) if card else None
    return _model_file(services.store.path(artifact.sha256), artifact, filename, model_card)
