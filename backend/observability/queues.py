"""Gauges computed when Prometheus scrapes: work waiting in the database and in the broker's queues.

The database is the source of truth (a step is a row, the message only points at it), so the open steps
and aggregation jobs are counted there, whichever process created them. The broker's queues are read
when the broker is Redis (each queue is a Redis list named after it: ``LLEN``) or the filesystem
transport (a queue's messages are files in one folder); other brokers report no queue lengths. Only the
queues of federations that can still run are listed: their Celery-mode nodes' ``node.<id>`` and the
``aggregator`` queue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from backend.database import Database
from backend.models import Aggregation, Federation, Node, Step
from messaging.broker import celery_broker
from messaging.celery_contract import aggregator_queue, node_queue
from messaging.filesystem import FILESYSTEM

log = logging.getLogger("fedalign.backend")

STEP_STATES = ("pending", "claimed")
JOB_STATES = ("pending", "running")
FEDERATION_STATES = ("created", "running", "stalled", "paused", "finished", "cancelled", "failed")
# Federations whose nodes' queues can still hold messages worth counting.
LIVE = ("running", "stalled", "paused")
REDIS_TIMEOUT_S = 2.0


class QueueCollector(Collector):
    def __init__(self, db: Database, broker_url: str | None, data_dir: Path, queue_prefix: str) -> None:
        self.db = db
        self.broker_url = broker_url
        self.data_dir = data_dir
        self.prefix = queue_prefix
        self._redis: Any = None

    def describe(self) -> list[Any]:
        return []  # collected live: nothing to check for name clashes at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.db.read() as session:
            steps = dict(
                session.execute(
                    select(Step.status, func.count())
                    .where(Step.status.in_(STEP_STATES))
                    .group_by(Step.status)
                ).all()
            )
            jobs = dict(
                session.execute(
                    select(Aggregation.status, func.count())
                    .where(Aggregation.status.in_(JOB_STATES))
                    .group_by(Aggregation.status)
                ).all()
            )
            federations = dict(
                session.execute(select(Federation.status, func.count()).group_by(Federation.status)).all()
            )
            celery_nodes = (
                list(
                    session.execute(
                        select(Node.id, Node.name)
                        .join(Federation, Federation.id == Node.federation_id)
                        .where(Node.mode == "celery", Federation.status.in_(LIVE))
                        .order_by(Node.id)
                    ).all()
                )
                if self.broker_url
                else []
            )
        yield _gauge("fedalign_steps_open", "Steps waiting for their node, by status.", STEP_STATES, steps)
        yield _gauge(
            "fedalign_aggregations_open", "Server-side aggregation jobs not yet done.", JOB_STATES, jobs
        )
        yield _gauge(
            "fedalign_federations", "Federations, by status.", FEDERATION_STATES, federations, label="status"
        )
        if self.broker_url:
            yield from self._broker(celery_nodes)

    def _broker(self, nodes: list[tuple[str, str]]) -> Iterator[GaugeMetricFamily]:
        queues = [(aggregator_queue(self.prefix), "")] + [(node_queue(self.prefix, i), n) for i, n in nodes]
        assert self.broker_url is not None
        try:
            if self.broker_url.startswith(("redis://", "rediss://")):
                lengths = self._redis_lengths([q for q, _ in queues])
            elif self.broker_url.startswith(FILESYSTEM):
                lengths = self._folder_lengths([q for q, _ in queues])
            else:
                return
        except Exception as exc:  # the broker's errors vary; a scrape must still answer
            log.warning("cannot read the broker's queue lengths (%s)", type(exc).__name__)
            yield GaugeMetricFamily("fedalign_broker_up", "1 when the broker answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("fedalign_broker_up", "1 when the broker answered this scrape.", value=1)
        family = GaugeMetricFamily(
            "fedalign_broker_queue_messages",
            "Messages waiting in a broker queue: the aggregator's, and each Celery-mode node's of a "
            "federation that can still run (node: its name).",
            labels=["queue", "node"],
        )
        for (queue, node), length in zip(queues, lengths, strict=True):
            family.add_metric([queue, node], length)
        yield family

    def _redis_lengths(self, queues: list[str]) -> list[int]:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.broker_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
        pipeline = self._redis.pipeline(transaction=False)
        for queue in queues:
            pipeline.llen(queue)
        return [int(n) for n in pipeline.execute()]

    def _folder_lengths(self, queues: list[str]) -> list[int]:
        assert self.broker_url is not None
        folder = celery_broker(self.broker_url, self.data_dir)["broker_transport_options"]["data_folder_in"]
        # kombu names a message "<time>_<uuid>.<queue>.msg"; dot-files are half-written ones (ours).
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.endswith(".msg") and not e.name.startswith(".")]
        return [sum(name.endswith(f".{queue}.msg") for name in names) for queue in queues]

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None


def _gauge(
    name: str, documentation: str, states: tuple[str, ...], counts: dict[str, int], label: str = "status"
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for state in states:
        family.add_metric([state], counts.get(state, 0))
    return family
