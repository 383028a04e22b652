"""A combined submission: a step's uploads and its completion in one request, stored in one transaction.

What is checked is what the separate requests check (`transfers` for each upload, `completion` for the
completion), in the same order, under the federation's lock; any refusal rolls the whole transaction back,
so nothing of the submission is stored and the step stays open for the node to try again.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from backend.errors import conflict
from backend.security import NodeCredential
from backend.services.node_api import completion, transfers
from backend.services.node_api.access import federation_of, own_step, refuse_if_closed, step_transaction
from backend.services.orchestrator import Orchestrator
from backend.services.store import Staged
from messaging.node_api import CompleteRequest, SubmitResult


def upload_targets(session: Session, node: NodeCredential, step_id: int) -> dict[str, transfers.UploadTarget]:
    """Before the body is read: the step is the node's own and still open, and each slot's manifest."""
    step = own_step(session, node, step_id)
    federation = federation_of(session, node)
    if step.kind == "reveal":
        raise conflict(
            "reveal_step",
            f"step {step_id} is a reveal step; it completes with the node's seeds at "
            f"POST /api/v1/node/steps/{step_id}/reveal",
        )
    refuse_if_closed(step, federation)
    return {slot: transfers.target_of(step, federation, slot) for slot in step.spec.uploads}


def store_and_complete(
    orchestrator: Orchestrator,
    node: NodeCredential,
    step_id: int,
    files: Mapping[str, Staged],
    body: CompleteRequest,
) -> SubmitResult:
    """Store the validated ``files`` (slot -> staged upload) and complete the step, in one transaction."""
    with step_transaction(orchestrator, node, step_id) as (tx, step):
        stored = {slot: transfers.store_in(tx, step, node, slot, files[slot]) for slot in sorted(files)}
        done = completion.complete_in(tx, step, node, body)
    return SubmitResult(**done.model_dump(), uploads=stored)
