"""The node workers' Celery app: each node's steps on the machine that holds its data.

A node's worker consumes only its own queue (``node.<node id>``, `messaging.celery_contract`), so a node's
steps never reach a worker without its data. A message carries ids only (step, node, federation), never a
token: the worker holds its node's token, claims the step the message points at through the API
(``POST /api/v1/node/steps/{id}/claim``, its small downloads inline), and from there runs exactly what a
REST node runs (`workers.client.NodeRunner`): download, train on its own data, upload and complete (in one
request, ``submit_url``, sent from a background thread while the worker goes on with another node's step:
`workers.background_submit`). So a message that
arrives twice, late, or for a step already done changes nothing: the claim answers 409 and the message is
dropped; a step that ran here but did not complete is answered from the saved result (`workers.state`).
A step that raises (a plug-in whose layers differ from the federation's manifest at setup, data that cannot
be read, out of memory) is reported to the server with its reason (``POST /api/v1/node/steps/{id}/fail``),
as a REST node reports it, and the message is done: the server offers the step again if a retry can help.
Recovery from lost messages is the server's periodic sweep, not Celery's redelivery.

A node's worker talks to the server over HTTP only. The server's aggregations have their own app beside
the server's code (`backend.celery_app`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from celery import Celery
from pydantic import BaseModel

from fedalign.device import CPU, Device
from messaging.celery_contract import STEP_TASK
from messaging.celery_worker import configure_worker, start_worker
from workers.audit import AuditLog
from workers.background_submit import BackgroundSubmitter
from workers.client import ClientError, NodeClient, NodeRunner, ServerError, transient
from workers.reference_steps import ReferenceSteps
from workers.settings import WorkerSettings
from workers.steps import StepsFactory

log = logging.getLogger("fedalign.workers")

# Network errors and 5xx answers: retried 12 times with exponential backoff (1, 2, 4, ... s, at most a
# minute, jittered); past that the server's sweep sends the step again once its lease expires.
STEP_MAX_RETRIES = 12
STEP_RETRY_BACKOFF_MAX_S = 60


app = Celery("fedalign-workers", set_as_current=False)


def configure(settings: WorkerSettings) -> Celery:
    """This app, set up to consume from the broker of ``settings``; ValueError when none is set."""
    return configure_worker(app, settings, settings.data_dir, time_limit_s=settings.step_time_limit_s)


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
    audit_path: Path | None = None  # where every request it sends is recorded (`workers.audit`)
    steps: StepsFactory = ReferenceSteps  # the node's steps (`workers.steps.Steps`)
    state_fsync: bool = True  # the state file fsynced after every step (`workers.state`)
    submit_in_background: bool = True  # submissions sent by `SUBMITTER` while the next step runs
    _runner: NodeRunner | None = field(default=None, repr=False)

    def runner(self) -> NodeRunner:
        if self._runner is None:
            # Built once: the data set is loaded once per worker, the models stay warm between steps.
            audit = AuditLog(self.audit_path) if self.audit_path is not None else None
            self._runner = NodeRunner(
                NodeClient(self.api_url, self.token, audit=audit),
                self.data,
                self.device,
                self.state_dir,
                self.steps,
                state_fsync=self.state_fsync,
                submitter=SUBMITTER if self.submit_in_background else None,
            )
        return self._runner


SERVED: dict[str, ServedNode] = {}
# The worker's submissions, sent in order from one thread (`workers.background_submit`).
SUBMITTER = BackgroundSubmitter(transient)
# How long a stopping worker waits for the submissions of the steps it ran.
DRAIN_S = 60.0


def serve(nodes: list[ServedNode], *, warm_up: bool = True) -> None:
    """Serve ``nodes``; with ``warm_up``, build their runners (data, models) now, before consuming.

    A worker is often started again because one of its steps waits for it (the dead worker's): its runner
    built while that step's lease runs out, rather than once its message comes, shortens the wait. Built
    here, in this thread, not beside a running step: building models reseeds torch's global generator,
    which a step draws from."""
    SERVED.update({n.node_id: n for n in nodes})
    for node in nodes if warm_up else ():
        try:
            node.runner()
        except Exception as exc:  # the API is not reachable yet, say: the first step builds it instead
            log.warning("node %s not warmed up (%s); its first step builds it", node.name, exc)


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
    # The node's steps in order: its previous submission answered before its next claim.
    SUBMITTER.wait_for(node_id)
    try:
        task = runner.client.claim(step_id, runner.inline_max_bytes)
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


def start(queues: list[str], hostname: str, loglevel: str = "INFO") -> None:
    """Run this app's worker in this process on ``queues`` (`messaging.celery_worker.start_worker`)."""
    # httpx logs every request at INFO; a worker's log should show steps, not each download.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        start_worker(app, queues, hostname, loglevel)
    finally:
        # A worker told to stop still sends what it ran (one killed outright leaves it to the sweep).
        if not SUBMITTER.drain(DRAIN_S):
            log.warning(
                "stopping with submissions unsent after %.0f s; the server offers their steps again", DRAIN_S
            )
