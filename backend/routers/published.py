"""The published target model of a finished federation, and its card."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from backend.deps import Admin, ServicesDep
from backend.errors import responses
from backend.observability import metrics
from backend.schemas.published import ModelCard
from backend.services import federations, views

router = APIRouter(prefix="/api/v1/federations/{federation_id}/model", tags=["model"])

SAFETENSORS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.get(
    "",
    response_class=FileResponse,
    responses={200: {"content": SAFETENSORS, "description": "The model as safetensors (G.* and T.*)."}}
    | responses(401, 403, 404, 409, 422),
)
def download_model(
    services: ServicesDep, _admin: Admin, federation_id: Annotated[str, Path(max_length=36)]
) -> FileResponse:
    with services.db.read() as session:
        federation = federations.get(session, federation_id)
        artifact = views.published_artifact(session, federation)
        metrics.download_served(artifact.kind, artifact.size)
        filename = f"{federation.name}-target-model.safetensors".replace("/", "_").replace('"', "")
    return FileResponse(
        services.store.path(artifact.sha256),
        media_type="application/octet-stream",
        filename=filename,
        headers={"ETag": f'"{artifact.sha256}"'},
    )


@router.get("/card", response_model=ModelCard, responses=responses(401, 403, 404, 409, 422))
def model_card(
    services: ServicesDep, _admin: Admin, federation_id: Annotated[str, Path(max_length=36)]
) -> ModelCard:
    with services.db.read() as session:
        return views.model_card(session, federations.get(session, federation_id))
