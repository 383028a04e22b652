"""Round progress of a federation."""

from __future__ import annotations

from fastapi import APIRouter, Path

from backend.deps import ReadFederation, ServicesDep
from backend.errors import responses
from backend.schemas.rounds import RoundList, RoundOut
from backend.services import federations, views

router = APIRouter(prefix="/api/v1/federations/{federation_id}/rounds", tags=["rounds"])

FederationId = Path(description="The federation's id.", max_length=36)


@router.get("", response_model=RoundList, responses=responses(401, 403, 404, 422))
def list_rounds(
    services: ServicesDep, _access: ReadFederation, federation_id: str = FederationId
) -> RoundList:
    """Rounds begun so far (0 is setup), each with its phases and federation-level metrics."""
    with services.db.read() as session:
        return views.round_list(session, federations.get(session, federation_id))


@router.get("/{round_number}", response_model=RoundOut, responses=responses(401, 403, 404, 409, 422))
def get_round(
    services: ServicesDep,
    _access: ReadFederation,
    federation_id: str = FederationId,
    round_number: int = Path(ge=0, description="0 is the setup round."),
) -> RoundOut:
    """One round: each phase's state, per-node step states, submissions, aggregates and metrics."""
    with services.db.read() as session:
        return views.round_detail(session, federations.get(session, federation_id), round_number)
