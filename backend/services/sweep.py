"""The periodic sweep: the recovery mechanism for everything that happens after a commit.

Each pass (1) makes steps whose lease expired claimable again, (2) sends the messages of Celery-mode
nodes' pending steps again: those just released, those whose message was never sent (the broker was down
after the commit) and those sent more than ``step_resend_s`` ago (a message lost with a worker; the
filesystem transport deletes a message when it is fetched, Redis redelivers only after an hour), (3)
makes aggregation jobs whose runner's lease expired (its process died) pending again and dispatches them at
once, with the pending ones (sent again after ``step_resend_s`` like steps), and (4)
feeds `Deadline` to federations whose open phase is older than their ``phase_deadline_s``. This sweep, not
the broker's redelivery, is what recovers from a lost message or a dead worker. Every part is a conditional
UPDATE or a locked transaction, so two sweeps at once (two API processes) and a sweep killed half-way
are both harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update

from backend.database import Database
from backend.errors import ApiError
from backend.models import Aggregation, Federation, Node, Step, utcnow
from backend.services.dispatch import AggregationDispatcher
from backend.services.messages import StepMessage
from backend.services.orchestrator import Orchestrator, federation_config, open_phase, protocol_state
from fedalign.protocol import Deadline, ProtocolError

log = logging.getLogger("fedalign.backend")


@dataclass
class SweepReport:
    released: int = 0
    resent: int = 0
    dispatched: int = 0
    deadlines: int = 0


class Sweeper:
    def __init__(
        self,
        db: Database,
        orchestrator: Orchestrator,
        dispatcher: AggregationDispatcher,
        step_resend_s: float = 60.0,
    ) -> None:
        self.db = db
        self.orchestrator = orchestrator
        self.dispatcher = dispatcher
        self.step_resend = dt.timedelta(seconds=step_resend_s)

    def sweep_once(self, now: dt.datetime | None = None) -> SweepReport:
        now = now or utcnow()
        report = SweepReport()
        # Each part on its own: one that fails (the broker down, say) never keeps the others from running.
        for field, part in (
            ("released", self._release_leases),
            ("resent", self._resend_steps),
            ("dispatched", self._dispatch_aggregations),
            ("deadlines", self._feed_deadlines),
        ):
            try:
                setattr(report, field, part(now))
            except Exception:
                log.exception("sweep: %s failed; the next pass tries again", field)
        return report

    def _release_leases(self, now: dt.datetime) -> int:
        expired = and_(Step.status == "claimed", Step.lease_expires_at < now)
        with self.db.read() as session:
            federation_ids = list(session.scalars(select(Step.federation_id).where(expired).distinct()))
        released = 0
        for federation_id in federation_ids:
            # Under the federation's lock, like every other change of its steps: no lock-order cycles.
            with contextlib.suppress(ApiError), self.orchestrator.transaction(federation_id) as tx:
                result = tx.session.execute(
                    update(Step)
                    .where(Step.federation_id == federation_id, expired)
                    # dispatched_at cleared: a Celery-mode node's step is sent again right away.
                    .values(status="pending", lease_owner=None, lease_expires_at=None, dispatched_at=None)
                    .execution_options(synchronize_session=False)
                )
                released += int(result.rowcount or 0)
                tx.after.steps_ready = bool(result.rowcount)
        return released

    def _resend_steps(self, now: dt.datetime) -> int:
        send = self.orchestrator.send_steps
        if send is None:
            return 0
        with self.db.read() as session:
            rows = session.execute(
                select(Step.id, Step.node_id, Step.federation_id)
                .join(Node, Node.id == Step.node_id)
                .join(Federation, Federation.id == Step.federation_id)
                .where(
                    Step.status == "pending",
                    Node.mode == "celery",
                    # Paused: workers would drop the message; resuming sends them all again.
                    Federation.status.in_(("running", "stalled")),
                    or_(Step.dispatched_at.is_(None), Step.dispatched_at < now - self.step_resend),
                )
                .order_by(Step.id)
            )
            messages = [StepMessage(step_id, node_id, fid) for step_id, node_id, fid in rows]
        return send(messages) if messages else 0

    def _dispatch_aggregations(self, now: dt.datetime) -> int:
        expired = and_(Aggregation.status == "running", Aggregation.lease_expires_at < now)
        with self.db.read() as session:
            any_expired = session.scalar(select(Aggregation.id).where(expired).limit(1)) is not None
        released: list[int] = []
        if any_expired:  # a pass with nothing to release takes no write lock (SQLite has one per database)
            # Released by a conditional UPDATE, as a claim takes a job: a runner that renews at the same
            # moment either renewed first (nothing released) or finds the job released (its beats stop, its
            # result is discarded).
            with self.db.write() as session:
                released = list(
                    session.scalars(
                        update(Aggregation)
                        .where(expired)
                        .values(status="pending", lease_owner=None, lease_expires_at=None)
                        .returning(Aggregation.id)
                        .execution_options(synchronize_session=False)
                    )
                )
        with self.db.read() as session:
            pending = list(session.scalars(select(Aggregation.id).where(Aggregation.status == "pending")))
        if released:
            # Their runner died with whatever message had brought them: sent now, not after step_resend_s.
            self.dispatcher.dispatch(released, again=True)
        others = sorted(set(pending) - set(released))
        if others:
            self.dispatcher.dispatch(others)
        return len(released) + len(others)

    def _feed_deadlines(self, now: dt.datetime) -> int:
        with self.db.read() as session:
            candidates = list(
                session.execute(
                    select(Federation.id, Federation.phase_opened_at).where(
                        Federation.status.in_(("running", "stalled")), Federation.phase_opened_at.is_not(None)
                    )
                )
            )
        fed = 0
        for federation_id, opened in candidates:
            # Each federation on its own: whatever goes wrong with one (a config the server cannot read, a
            # deadline it cannot compute) stalls that one with the reason and never stops the others'.
            try:
                fed += self._feed_deadline(federation_id, opened, now)
            except (ApiError, ProtocolError) as exc:
                log.info("deadline of federation %s not applied: %s", federation_id, exc)
            except Exception as exc:
                reason = f"the server could not apply its phase deadline: {type(exc).__name__}: {exc}"
                if self._stall(federation_id, reason):
                    log.exception("deadline of federation %s failed; it is stalled", federation_id)
        return fed

    def _feed_deadline(self, federation_id: str, opened: dt.datetime, now: dt.datetime) -> int:
        with self.db.read() as session:
            federation = session.get(Federation, federation_id)
            if federation is None:
                return 0
            deadline = _deadline_s(federation)
        if deadline is None or now < opened + dt.timedelta(seconds=float(deadline)):
            return 0
        with self.orchestrator.transaction(federation_id) as tx:
            federation = tx.federation
            # Checked again under the lock: the phase may have moved on since the read above.
            if federation.status not in ("running", "stalled") or federation.phase_opened_at != opened:
                return 0
            state = protocol_state(federation)
            round_, phase = open_phase(federation_config(federation), state)
            tx.handle(Deadline(round_, phase))
            return 1

    def _stall(self, federation_id: str, reason: str) -> bool:
        """Mark the federation stalled with ``reason``; False when it already was (for this reason), so
        that a federation failing every pass is logged once."""
        try:
            with self.orchestrator.transaction(federation_id) as tx:
                fed = tx.federation
                if fed.status not in ("running", "stalled") or fed.stall_reason == reason:
                    return False
                tx.set_status("stalled", reason)
                return True
        except Exception:
            log.exception("federation %s could not be marked stalled", federation_id)
            return True

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep_once)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed; retrying in %.1f s", interval_s)
            await asyncio.sleep(interval_s)


def _deadline_s(federation: Federation) -> float | None:
    """The open phase's deadline: setup has one of its own (nodes joining), every other phase the same."""
    phase_deadline = federation.config.get("phase_deadline_s")
    setup_deadline = federation.config.get("setup_deadline_s")
    # The state is read only when it can change the answer: this runs for every running federation.
    if setup_deadline is not None and federation.protocol_state and protocol_state(federation).round == 0:
        return float(setup_deadline)
    return phase_deadline
