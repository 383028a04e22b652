"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend.deps import ServicesDep
from backend.migrate import current_revision, head_revision
from backend.schemas.health import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: see `detail`."}},
)
def readyz(services: ServicesDep) -> Readiness | JSONResponse:
    """The database answers and its schema is at the newest migration."""
    try:
        with services.db.connect() as connection:
            connection.execute(text("SELECT 1"))
            revision = current_revision(connection)
    except Exception as exc:
        body = Readiness(
            status="not_ready",
            database=False,
            migrations=False,
            detail=f"database unreachable ({type(exc).__name__})",
        )
        return JSONResponse(body.model_dump(), status_code=503)
    head = head_revision()
    if revision != head:
        body = Readiness(
            status="not_ready",
            database=True,
            migrations=False,
            detail=f"schema is at revision {revision}, code expects {head}; run `fedalign db upgrade`",
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return Readiness(status="ready", database=True, migrations=True)
