"""A node's failed step: recorded on the step and the node, and fed to the protocol as `StepFailed`.

The protocol decides what follows (`fedalign.protocol`): a retryable failure is offered again up to the
federation's ``max_step_retries``; otherwise the phase goes on without the node under the quorum rule, or
the run stalls with the node's reason. Reporting the same failure again is answered as the first time and
changes nothing.
"""

from __future__ import annotations

from backend.errors import conflict
from backend.security import NodeCredential
from backend.services.node_api.access import refuse_if_closed, step_transaction
from backend.services.node_api.completion import answer
from backend.services.orchestrator import Orchestrator
from fedalign.protocol import ProtocolError, StepFailed
from messaging.node_api import FailRequest, FailResult


def fail(orchestrator: Orchestrator, node: NodeCredential, step_id: int, body: FailRequest) -> FailResult:
    with step_transaction(orchestrator, node, step_id) as (tx, step):
        federation = tx.federation
        if step.status == "done":
            raise conflict(
                "already_completed", f"step {step_id} is already complete; a completed step cannot fail"
            )
        if step.status == "failed":
            if step.failure == body.reason:
                return FailResult(**answer(step, federation).model_dump(), retry=False)
            raise conflict(
                "already_failed",
                f"step {step_id} already failed ({step.failure}); the phase goes on without it",
            )
        refuse_if_closed(step, federation)
        if step.kind == "reveal":
            raise conflict(
                "reveal_step",
                f"step {step_id} is a reveal step, which cannot fail: it answers with the node's seeds "
                f"(POST /api/v1/node/steps/{step_id}/reveal), or the phase's deadline applies",
            )
        step.status, step.failure = "failed", body.reason
        step.lease_owner, step.lease_expires_at = None, None
        event = StepFailed(
            node=node.node_name,
            round=step.round,
            phase=step.phase,
            reason=body.reason,
            retryable=body.retryable,
            aggregate=step.spec.aggregate_key if step.kind == "aggregate" else None,
        )
        try:
            tx.handle(event)  # a retry sets the step pending again (`Transaction._add_step`)
        except ProtocolError as exc:
            raise conflict(exc.code, f"the round schedule refused this failure: {exc}") from exc
        return FailResult(**answer(step, federation).model_dump(), retry=step.status == "pending")
