"""The Celery messages between the server and the workers: task names, and the queue each one travels on.

The server sends by task *name* (`backend.services.messages`); the node workers' app
(`workers.celery_app`) and the server's aggregator app (`backend.celery_app`) register their tasks under
these names and consume these queues. A message carries ids only, never a token or data:

- ``STEP_TASK`` on ``node_queue(prefix, node_id)``, with ``step_id``, ``node_id`` and ``federation_id``:
  "claim step N of this node and run it". Each node has its own queue, so a node's steps never reach a
  worker that does not hold its data.
- ``AGGREGATE_TASK`` on ``aggregator_queue(prefix)``, with ``job_id``: "run aggregation job N".

``prefix`` is ``FEDALIGN_QUEUE_PREFIX`` (`messaging.settings.BrokerSettings`), so that several deployments
or test runs can share one broker.
"""

from __future__ import annotations

STEP_TASK = "fedalign.node.run_step"
AGGREGATE_TASK = "fedalign.server.aggregate"


def node_queue(prefix: str, node_id: str) -> str:
    """The queue of node ``node_id``'s steps: only that node's worker consumes it."""
    return f"{prefix}node.{node_id}"


def aggregator_queue(prefix: str) -> str:
    """The queue of the server's aggregation jobs (``fedalign worker --aggregator``)."""
    return f"{prefix}aggregator"
