"""Per-round metric series of a federation, for charts."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Response

from backend.deps import ReadFederation, ServicesDep
from backend.errors import responses
from backend.schemas.metrics import MetricSeriesList
from backend.services import federations, views

router = APIRouter(prefix="/api/v1/federations/{federation_id}", tags=["metrics"])


@router.get("/metrics", response_model=MetricSeriesList, responses=responses(401, 403, 404, 422))
def get_metrics(
    services: ServicesDep,
    _access: ReadFederation,
    federation_id: Annotated[str, Path(max_length=36)],
    node: Annotated[str | None, Query(max_length=64, description="Only this node's series.")] = None,
    name: Annotated[str | None, Query(max_length=64, description="Only this metric, e.g. disc_acc.")] = None,
) -> MetricSeriesList:
    """One series per (node, metric); the federation's own metrics have ``node`` null and come first."""
    with services.db.read() as session:
        return views.metric_series(session, federations.get(session, federation_id), node, name)


@router.get(
    "/metrics.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "The metrics."}}
    | responses(401, 403, 404, 422),
)
def export_metrics(
    services: ServicesDep, _access: ReadFederation, federation_id: Annotated[str, Path(max_length=36)]
) -> Response:
    """Every recorded metric as CSV: one row per round and node (empty node: the federation's own), one column
    per metric name."""
    with services.db.read() as session:
        federation = federations.get(session, federation_id)
        body = views.metrics_csv(session, federation)
        filename = f"{federation.name}-metrics.csv".replace("/", "_").replace('"', "")
        # As FileResponse does it: a name a header cannot carry as it is (not latin-1, a line break) travels
        # percent-encoded (RFC 6266), never raw; raw, it failed with a 500 or split the header.
        quoted = quote(filename)
        disposition = f'filename="{filename}"' if quoted == filename else f"filename*=utf-8''{quoted}"
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f"attachment; {disposition}"},
        )
