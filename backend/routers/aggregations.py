"""Aggregations of a federation: list them, and (re-)run the ones not done."""

from __future__ import annotations

from fastapi import APIRouter, Path, status
from sqlalchemy import select

from backend.deps import ManageFederation, ServicesDep
from backend.errors import conflict, not_found, responses
from backend.models import Aggregation
from backend.schemas.aggregations import AggregationList, AggregationTrigger
from backend.services import federations, views
from backend.services.orchestrator import federation_config

router = APIRouter(prefix="/api/v1/federations/{federation_id}/aggregations", tags=["aggregations"])

FederationId = Path(description="The federation's id.", max_length=36)


@router.get("", response_model=AggregationList, responses=responses(401, 403, 404, 422))
def list_aggregations(
    services: ServicesDep, _access: ManageFederation, federation_id: str = FederationId
) -> AggregationList:
    with services.db.read() as session:
        return AggregationList(items=views.aggregations(session, federations.get(session, federation_id)))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AggregationList,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Run pending server-side aggregations now (or re-run a failed one)",
)
def trigger_aggregations(
    body: AggregationTrigger,
    services: ServicesDep,
    _access: ManageFederation,
    federation_id: str = FederationId,
) -> AggregationList:
    """Dispatches the federation's aggregation jobs that are not done, or only ``key``. A failed job is
    reset to pending first. The sweep does the same periodically; this is for not waiting."""
    with services.orchestrator.transaction(federation_id) as tx:
        if tx.federation.status in ("created", "cancelled"):
            raise conflict(
                "illegal_transition",
                f"federation {tx.federation.name!r} is {tx.federation.status}; nothing to aggregate",
            )
        if federation_config(tx.federation).aggregator != "server":
            raise conflict(
                "target_aggregates",
                "in this federation the target node aggregates (aggregator = 'target'); its aggregate steps "
                "are handed to it by GET /api/v1/node/task",
            )
        query = select(Aggregation).where(
            Aggregation.federation_id == federation_id, Aggregation.status != "done"
        )
        if body.key is not None:
            query = query.where(Aggregation.key == body.key)
        jobs = list(tx.session.scalars(query))
        if body.key is not None and not jobs:
            raise not_found(f"no aggregation {body.key!r} is waiting in this federation (it may be done)")
        for job in jobs:
            if job.status == "failed":
                job.status, job.attempts, job.error = "pending", 0, None
                if tx.federation.status == "failed":
                    tx.set_status("running")
        job_ids = [job.id for job in jobs]
        dispatched = {job.key for job in jobs}
    services.dispatcher.dispatch(job_ids)
    with services.db.read() as session:
        items = views.aggregations(session, federations.get(session, federation_id))
    return AggregationList(items=[a for a in items if a.by == "server" and a.key in dispatched])
