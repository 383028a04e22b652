"""The server's Celery app: the aggregation task, run by ``fedalign worker --aggregator``.

Aggregation is the server's own code (`backend.services.aggregation`), run on a worker with direct access
to the database and the artifact store, so it lives here, beside the code that queues it
(`backend.services.messages.CeleryAggregationDispatcher` sends ``AGGREGATE_TASK`` to the aggregator queue;
`messaging.celery_contract` names both). A job is claimed with a lease, so a message that arrives twice
runs the job once.

The aggregator worker reads the server's settings (`backend.settings.Settings`: the same database, store and
broker as the API). ``fedalign up`` runs its demo nodes and the aggregator in one worker process: there
`add_server_tasks` adds the task to the node workers' app.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from backend.app import build_services
from backend.deps import Services
from backend.settings import Settings
from messaging.celery_contract import AGGREGATE_TASK
from messaging.celery_worker import configure_worker, start_worker

_server: dict[str, Services] = {}
_server_lock = threading.Lock()


def server_services() -> Services:
    """The server's services (database, artifact store, orchestrator) in this worker process, built at the
    first job."""
    with _server_lock:
        if "services" not in _server:
            _server["services"] = build_services(Settings())
        return _server["services"]


def run_aggregation(job_id: int) -> str:
    """Run server-side aggregation job ``job_id`` (claimed with a lease: a job sent twice runs once)."""
    server_services().aggregation.run(job_id)
    return "done"


def add_server_tasks(celery: Celery) -> Any:
    """Register the server's task on ``celery`` under its contract name; returns the task."""
    return celery.task(name=AGGREGATE_TASK, acks_late=True, reject_on_worker_lost=True)(run_aggregation)


app = Celery("fedalign-server", set_as_current=False)
aggregate = add_server_tasks(app)


def configure(settings: Settings) -> Celery:
    """This app, set up to consume from the server's broker; ValueError when none is set."""
    return configure_worker(app, settings, settings.data_dir)


def start(queues: list[str], hostname: str, loglevel: str = "INFO") -> None:
    """Run this app's worker in this process on ``queues`` (`messaging.celery_worker.start_worker`)."""
    start_worker(app, queues, hostname, loglevel)
