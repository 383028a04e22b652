"""Celery messages the server sends: "run step N" to a node's queue, "aggregate job N" to the aggregator.

A message only points at a row (a step, an aggregation job) that is already committed; whoever receives it
claims that row with a lease before doing anything, so a message sent twice, late, or to a step that is
already done changes nothing. Messages are sent by task *name* with the server's own Celery client: the
server never imports `workers`. Task and queue names are the contract in `messaging.celery_contract`; what
receives the messages: a node's ``fedalign worker`` (`workers.celery_app`), and for aggregation jobs the
server's own task (`backend.celery_app`) on ``fedalign worker --aggregator``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update

from backend.database import Database
from backend.models import Step, utcnow
from messaging.broker import celery_broker
from messaging.celery_contract import AGGREGATE_TASK, STEP_TASK, aggregator_queue, node_queue

log = logging.getLogger("fedalign.backend")

# Publishing gives up quickly when the broker is down: the sweep sends again, and a request that
# committed must not hang on the broker.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}


@dataclass(frozen=True)
class StepMessage:
    step_id: int
    node_id: str
    federation_id: str


class CeleryMessenger:
    """The server's Celery client: publishes by task name, never runs tasks."""

    def __init__(self, broker_url: str, data_dir: Path, queue_prefix: str = "") -> None:
        from celery import Celery  # only a server with a broker needs Celery loaded

        self.prefix = queue_prefix
        self.app = Celery("fedalign-server", set_as_current=False)
        self.app.conf.update(
            **celery_broker(broker_url, data_dir),
            broker_connection_timeout=3.0,
            broker_connection_retry_on_startup=True,
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
        )

    def send_step(self, message: StepMessage) -> None:
        self.app.send_task(
            STEP_TASK,
            kwargs={
                "step_id": message.step_id,
                "node_id": message.node_id,
                "federation_id": message.federation_id,
            },
            queue=node_queue(self.prefix, message.node_id),
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )

    def send_aggregation(self, job_id: int) -> None:
        self.app.send_task(
            AGGREGATE_TASK,
            kwargs={"job_id": job_id},
            queue=aggregator_queue(self.prefix),
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )

    def close(self) -> None:
        self.app.close()


class StepSender:
    """Sends step messages after their rows committed, and notes when each was sent (the sweep reads it).

    A message that cannot be sent (broker down) leaves ``dispatched_at`` empty, so the next sweep tries
    again; nothing else depends on the send succeeding.
    """

    def __init__(self, db: Database, messenger: CeleryMessenger) -> None:
        self.db = db
        self.messenger = messenger

    def __call__(self, messages: Sequence[StepMessage]) -> int:
        sent: list[int] = []
        for message in messages:
            try:
                self.messenger.send_step(message)
            except Exception as exc:  # the broker's errors vary by transport; the sweep retries all alike
                log.warning(
                    "could not send step %s to its node's queue (%s); the sweep retries", message, exc
                )
                continue
            sent.append(message.step_id)
        if sent:
            self._mark_sent(sent, utcnow())
        return len(sent)

    def _mark_sent(self, step_ids: list[int], when: dt.datetime) -> None:
        with self.db.write() as session:
            session.execute(
                update(Step)
                .where(Step.id.in_(step_ids))
                .values(dispatched_at=when)
                .execution_options(synchronize_session=False)
            )


class CeleryAggregationDispatcher:
    """Aggregation jobs as messages on the aggregator queue (``fedalign worker --aggregator`` runs them).

    A job is claimed once however often it is sent (`AggregationService.claim`), but the sweep offers
    every pending job on each pass: a job sent less than ``resend_after_s`` ago is not sent again, so a
    busy aggregator's queue does not fill with copies. A job whose runner died (the sweep released its
    lease: ``again``) is sent at once: its message went with that runner.
    """

    def __init__(self, messenger: CeleryMessenger, resend_after_s: float) -> None:
        self.messenger = messenger
        self.resend_after = dt.timedelta(seconds=resend_after_s)
        self._sent: dict[int, dt.datetime] = {}
        self._lock = threading.Lock()

    def dispatch(self, job_ids: Iterable[int], *, again: bool = False) -> None:
        now = utcnow()
        job_ids = list(job_ids)
        forget = set(job_ids) if again else set()  # what was sent for them went with their dead runner
        with self._lock:
            self._sent = {
                j: t for j, t in self._sent.items() if now - t < self.resend_after and j not in forget
            }
            due = [j for j in job_ids if j not in self._sent]
            self._sent.update(dict.fromkeys(due, now))
        for job_id in due:
            try:
                self.messenger.send_aggregation(job_id)
            except Exception as exc:  # the sweep dispatches pending jobs again
                log.warning("could not send aggregation job %s (%s); the sweep retries", job_id, exc)
                with self._lock:
                    self._sent.pop(job_id, None)

    def close(self) -> None:
        self.messenger.close()
