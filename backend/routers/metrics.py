"""Per-round metric series of a federation, for charts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from backend.deps import Admin, ReadSession
from backend.errors import responses
from backend.schemas.metrics import MetricSeriesList
from backend.services import federations, views

router = APIRouter(prefix="/api/v1/federations/{federation_id}/metrics", tags=["metrics"])


@router.get("", response_model=MetricSeriesList, responses=responses(401, 403, 404, 422))
def get_metrics(
    session: ReadSession,
    _admin: Admin,
    federation_id: Annotated[str, Path(max_length=36)],
    node: Annotated[str | None, Query(max_length=64, description="Only this node's series.")] = None,
    name: Annotated[str | None, Query(max_length=64, description="Only this metric, e.g. disc_acc.")] = None,
) -> MetricSeriesList:
    """One series per (node, metric); the federation's own metrics have ``node`` null and come first."""
    return views.metric_series(session, federations.get(session, federation_id), node, name)
