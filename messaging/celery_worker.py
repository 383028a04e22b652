"""What every FedAlign Celery worker does alike, whichever app it runs: the node workers'
(`workers.celery_app`) or the server's aggregator (`backend.celery_app`).

A message is acknowledged after its task ran and one at a time; kombu's Redis transport releases a
message's prefetch credit even when Redis is down at the ack; the filesystem transport's consumed
messages are pruned; and the worker runs in the calling process on the solo pool.

A worker speaks in the product's own lines: its logs take the API's format (`messaging.logs`; JSON lines
with ``FEDALIGN_LOG_FORMAT=json``), Celery's banner is not printed, and instead of Celery's warning about
running as root (a worker that accepts only JSON messages cannot be made to run code by one) it says so in
one line of its own.
"""

from __future__ import annotations

import logging
import logging.config
import os
import time
import warnings
from pathlib import Path
from typing import Any

from celery import Celery
from celery.apps import worker as celery_apps_worker
from celery.exceptions import SecurityWarning
from celery.signals import setup_logging, task_postrun, worker_ready
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from messaging.broker import BrokerSettings, celery_broker
from messaging.filesystem import FILESYSTEM, prune_processed
from messaging.logs import LogSettings, worker_logging_config

log = logging.getLogger("fedalign.worker")

# Consumed messages of the filesystem transport older than this are deleted (at most once a minute).
PROCESSED_KEEP_S = 600.0
# The line a worker logs once it consumes: what a supervisor (or a test) waits for.
READY_MESSAGE = "worker ready, consuming"
PRUNE_EVERY_S = 60.0


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


def configure_worker(
    app: Celery, broker: BrokerSettings, data_dir: Path, time_limit_s: float | None = None
) -> Celery:
    """Configure ``app`` to consume from ``broker``'s queues (``data_dir`` holds the filesystem broker's
    folders); ``time_limit_s`` is Celery's hard limit per task, for pools that enforce one.

    Raises ValueError when no broker is set."""
    if not broker.broker_url:
        raise ValueError("no broker: set FEDALIGN_BROKER_URL (redis://host:6379/0, or filesystem://)")
    options = celery_broker(broker.broker_url, data_dir)
    if options["broker_url"] == FILESYSTEM:
        options["broker_transport_options"]["polling_interval"] = broker.broker_poll_s
    elif options["broker_url"].startswith("redis://"):  # rediss:// takes its TLS settings from the scheme
        options["broker_transport"] = RedisTransport
    limits: dict[str, float] = {}
    if time_limit_s is not None:
        limits = {"task_time_limit": time_limit_s, "task_soft_time_limit": time_limit_s * 0.9}
    app.conf.update(
        **options,
        **limits,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A message is acknowledged after its task ran, and one whose worker died is not acknowledged;
        # one message at a time, so nothing waits in a busy worker's buffer while another could run it.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No broadcast traffic: the filesystem transport has no use for it, and Redis is spared it.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
    )
    return app


_pruned = {"at": 0.0}


@task_postrun.connect
def _prune_processed(sender: Any = None, **_: Any) -> None:
    """Consumed messages of the filesystem transport are moved aside, not deleted; delete the old ones."""
    conf = getattr(getattr(sender, "app", None), "conf", None)
    folder = (conf.broker_transport_options or {}).get("processed_folder") if conf is not None else None
    now = time.time()
    if not folder or now - _pruned["at"] < PRUNE_EVERY_S:
        return
    _pruned["at"] = now
    prune_processed(folder, PROCESSED_KEEP_S, now)


def _logging_is_configured(**_: Any) -> None:
    """A receiver of Celery's ``setup_logging``: with one connected, Celery leaves logging as it is (ours,
    set up before the worker starts) instead of putting its own format on the root logger."""


def _on_ready(sender: Any = None, **_: Any) -> None:
    """The worker consumes: say so, and stop on SIGTERM without Celery's line ("worker: Warm shutdown")."""
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender else []
    log.info("%s %s", READY_MESSAGE, ", ".join(queues) or "nothing")
    # The same warm shutdown Celery installed a moment ago, silent: `fedalign up` says "stopping" itself.
    install = getattr(celery_apps_worker, "install_worker_term_handler", None)
    controller = getattr(sender, "controller", None)
    if install is not None and controller is not None:
        install(controller, verbose=False)


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def start_worker(app: Celery, queues: list[str], hostname: str, loglevel: str = "INFO") -> None:
    """Run a Celery worker of ``app`` in this process on ``queues``: the solo pool, one task at a time (CUDA
    does not survive a fork, and a node's steps run in order on its state). ``loglevel``: FedAlign's own
    records (Celery's and kombu's pass at WARNING and above)."""
    logging.config.dictConfig(worker_logging_config(LogSettings().log_format, loglevel))
    setup_logging.connect(_logging_is_configured, weak=False)
    worker_ready.connect(_on_ready, weak=False)
    if running_as_root():
        # Celery's warning is about pickle, which these workers never accept (accept_content is JSON).
        warnings.filterwarnings("ignore", category=SecurityWarning)
        log.warning(
            "running as root: the worker needs no privileges; where you can, run it as an unprivileged user"
        )
    app.worker_main(
        [
            "--quiet",  # no banner: the worker's own lines say what it serves
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
