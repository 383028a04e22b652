"""Celery workers: each node's steps on the machine that holds its data, and the server's aggregations.

Queues: ``node.<node id>`` per node (a node's worker consumes only its own, so a node's steps never reach
a worker without its data) and ``aggregator``, each with ``FEDALIGN_QUEUE_PREFIX`` in front. A message
carries ids only (step, node, federation), never a token: the worker holds its node's token, claims the
step the message points at through the API (``POST /api/v1/node/steps/{id}/claim``), and from there runs
exactly what a REST node runs (`workers.client.NodeRunner`): download, train on its own data, upload,
complete. So a message that arrives twice, late, or for a step already done changes nothing: the claim
answers 409 and the message is dropped; a step that ran here but did not complete is answered from the
saved result (`workers.state`). Recovery from lost messages is the server's periodic sweep, not Celery's
redelivery.

The aggregator task is the server's own code (`backend.services.aggregation`), run on a worker with direct
access to the database and the artifact store; only ``fedalign worker --aggregator`` imports `backend`,
inside the task. A node's worker never does: it talks to the server over HTTP only.

The server sends by task name (`backend.services.messages`); the names and queue names here are the other
half of that contract.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from celery import Celery
from celery.signals import task_postrun
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedalign.device import CPU, Device
from workers.broker import FILESYSTEM, celery_broker
from workers.client import ClientError, NodeClient, NodeRunner, ServerError

if TYPE_CHECKING:
    from backend.deps import Services

log = logging.getLogger("fedalign.workers")

STEP_TASK = "fedalign.node.run_step"
AGGREGATE_TASK = "fedalign.server.aggregate"
# Network errors and 5xx answers: retried 12 times with exponential backoff (1, 2, 4, ... s, at most a
# minute, jittered); past that the server's sweep sends the step again once its lease expires.
STEP_MAX_RETRIES = 12
STEP_RETRY_BACKOFF_MAX_S = 60
# Consumed messages of the filesystem transport older than this are deleted (at most once a minute).
PROCESSED_KEEP_S = 600.0
PRUNE_EVERY_S = 60.0


def node_queue(prefix: str, node_id: str) -> str:
    return f"{prefix}node.{node_id}"


def aggregator_queue(prefix: str) -> str:
    return f"{prefix}aggregator"


class WorkerSettings(BaseSettings):
    """A worker's settings, from ``FEDALIGN_`` variables (the same names the server reads)."""

    model_config = SettingsConfigDict(env_prefix="FEDALIGN_", extra="ignore")

    broker_url: Annotated[str | None, Field(description="Celery broker: redis://... or filesystem://.")] = (
        None
    )
    data_dir: Annotated[Path, Field(description="This machine's data: datasets, node state.")] = Path(
        ".fedalign"
    )
    queue_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]*$")] = ""
    api_url: Annotated[str, Field(description="Where node workers reach the API.")] = "http://127.0.0.1:8000"
    node_state_dir: Annotated[
        Path | None, Field(description="Node state between steps; default data_dir/node-state.")
    ] = None
    step_time_limit_s: Annotated[
        float,
        Field(
            gt=0,
            description="Celery's hard time limit for a task (pools that enforce it; the solo pool does "
            "not: there the step's lease is its deadline).",
        ),
    ] = 3600.0
    broker_poll_s: Annotated[
        float, Field(gt=0, description="How often the filesystem transport looks for messages.")
    ] = 0.1

    @property
    def state_dir(self) -> Path:
        return self.node_state_dir or self.data_dir / "node-state"


app = Celery("fedalign-workers", set_as_current=False)


class _RedisQoS(kombu_redis.QoS):
    """kombu's Redis QoS, releasing a message's prefetch credit even when its ack cannot reach Redis.

    kombu frees the credit only after Redis confirmed the ack; a task that ends while Redis is down (or
    restarting) keeps it forever, and with a prefetch of one the worker never asks Redis for a message
    again, so it never notices the lost connection either: it hangs, alive and idle (found by
    tests/backend/test_faults.py). The message's entry in Redis, if Redis kept it, is restored after the
    visibility timeout as a duplicate, which finds its step (or aggregation job) done and is dropped."""

    def ack(self, delivery_tag: str) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)


class _RedisChannel(kombu_redis.Channel):
    QoS = _RedisQoS


class RedisTransport(kombu_redis.Transport):
    Channel = _RedisChannel


def configure(settings: WorkerSettings) -> Celery:
    if not settings.broker_url:
        raise ValueError("no broker: set FEDALIGN_BROKER_URL (redis://host:6379/0, or filesystem://)")
    broker = celery_broker(settings.broker_url, settings.data_dir)
    if broker["broker_url"] == FILESYSTEM:
        broker["broker_transport_options"]["polling_interval"] = settings.broker_poll_s
    elif broker["broker_url"].startswith("redis://"):  # rediss:// takes its TLS settings from the scheme
        broker["broker_transport"] = RedisTransport
    app.conf.update(
        **broker,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A message is acknowledged after its task ran, and one whose worker died is not acknowledged;
        # one message at a time, so nothing waits in a busy worker's buffer while another could run it.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.step_time_limit_s,
        task_soft_time_limit=settings.step_time_limit_s * 0.9,
        # No broadcast traffic: the filesystem transport has no use for it, and Redis is spared it.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
    )
    return app


# ------------------------------------------------------------------------------------------ node steps


@dataclass
class ServedNode:
    """A node this worker runs steps for: its token, and (built at its first step) its runner."""

    node_id: str
    name: str
    token: str
    api_url: str
    state_dir: Path
    data: str | None = None
    device: Device = CPU
    _runner: NodeRunner | None = field(default=None, repr=False)

    def runner(self) -> NodeRunner:
        if self._runner is None:
            # Built once: the data set is loaded once per worker, the models stay warm between steps.
            self._runner = NodeRunner(
                NodeClient(self.api_url, self.token), self.data, self.device, self.state_dir
            )
        return self._runner


SERVED: dict[str, ServedNode] = {}


def serve(nodes: list[ServedNode]) -> None:
    SERVED.update({n.node_id: n for n in nodes})


class NodeCredential(BaseModel):
    node_id: str
    name: str
    token: str
    dataset: str | None = None


class CredentialsFile(BaseModel):
    """Tokens of the nodes one worker serves (``fedalign up`` writes one for its demo, mode 0600)."""

    api: str
    nodes: list[NodeCredential]


def resolve_node(api_url: str, token: str, node: str | None = None) -> NodeCredential:
    """The node a token belongs to; ``node`` (a name or an id), if given, must be that node."""
    with NodeClient(api_url, token) as client:
        federation = client.federation()
    if node is not None and node not in (federation.node, federation.node_id):
        raise ValueError(
            f"the token belongs to node {federation.node!r} ({federation.node_id}), not {node!r}; "
            "pass that node's own token"
        )
    return NodeCredential(node_id=federation.node_id, name=federation.node, token=token)


@app.task(
    name=STEP_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(httpx.TransportError, ServerError),
    retry_backoff=1,
    retry_backoff_max=STEP_RETRY_BACKOFF_MAX_S,
    retry_jitter=True,
    max_retries=STEP_MAX_RETRIES,
)
def run_step(step_id: int, node_id: str, federation_id: str) -> str:
    """Claim step ``step_id`` of node ``node_id`` and run it; returns what happened, in a word."""
    log.info("received step %s for node %s", step_id, node_id)
    served = SERVED.get(node_id)
    if served is None:
        # Only a misrouted message can get here: this worker has no token (and no data) for that node.
        log.error("step %s is for node %s, which this worker does not serve; dropped", step_id, node_id)
        return "not_served"
    runner = served.runner()
    if runner.federation.federation_id != federation_id:
        log.error(
            "step %s names federation %s, node %s is in another; dropped", step_id, federation_id, node_id
        )
        return "wrong_federation"
    try:
        task = runner.client.claim(step_id)
        log.info("node %s: step %s, round %s, %s %s", served.name, step_id, task.round, task.phase, task.kind)
        runner.run(task)
    except ServerError:
        raise
    except ClientError as exc:
        if exc.status == 409:
            # Done, cancelled, or the federation paused or ended: nothing to run, nothing to retry.
            log.info("step %s not run: %s", step_id, exc.message)
            return exc.code
        raise
    return "done"


# ----------------------------------------------------------------------------------------- aggregations

_server: dict[str, Services] = {}
_server_lock = threading.Lock()


def server_services() -> Services:
    """The server's services (database, artifact store, orchestrator) in this worker process."""
    with _server_lock:
        if "services" not in _server:
            from backend.app import build_services  # the server's own code: aggregator workers only
            from backend.settings import Settings

            _server["services"] = build_services(Settings())
        return _server["services"]


@app.task(name=AGGREGATE_TASK, acks_late=True, reject_on_worker_lost=True)
def aggregate(job_id: int) -> str:
    """Run server-side aggregation job ``job_id`` (claimed with a lease: a job sent twice runs once)."""
    server_services().aggregation.run(job_id)
    return "done"


# ------------------------------------------------------------------------------ filesystem transport

_pruned = {"at": 0.0}


@task_postrun.connect
def _prune_processed(**_: Any) -> None:
    """Consumed messages of the filesystem transport are moved aside, not deleted; delete the old ones."""
    options = app.conf.broker_transport_options or {}
    folder = options.get("processed_folder")
    now = time.time()
    if not folder or now - _pruned["at"] < PRUNE_EVERY_S:
        return
    _pruned["at"] = now
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_file() and now - entry.stat().st_mtime > PROCESSED_KEEP_S:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue


def start(queues: list[str], hostname: str, loglevel: str = "INFO") -> None:
    """Run a Celery worker in this process on ``queues``: the solo pool, one task at a time (CUDA does not
    survive a fork, and a node's steps run in order on its state)."""
    # httpx logs every request at INFO; a worker's log should show steps, not each download.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={','.join(queues)}",
            f"--hostname={hostname}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
