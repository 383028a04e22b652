"""The messaging contract's transport: where the broker's folders are, messages written whole, consumed
messages pruned, and the worker settings both apps share."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from messaging.broker import BrokerSettings, celery_broker
from messaging.celery_worker import RedisTransport, configure_worker
from messaging.filesystem import AtomicFilesystemTransport, prune_processed


def test_a_filesystem_broker_keeps_its_queues_under_the_data_directory(tmp_path: Path) -> None:
    settings = celery_broker("filesystem://", tmp_path)
    options = settings["broker_transport_options"]
    assert settings["broker_url"] == "filesystem://"
    assert settings["broker_transport"] is AtomicFilesystemTransport
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queue")
    assert all(Path(options[k]).is_dir() for k in ("data_folder_in", "processed_folder", "control_folder"))
    elsewhere = celery_broker(f"filesystem://{tmp_path / 'queues'}", tmp_path)
    assert elsewhere["broker_transport_options"]["control_folder"] == str(tmp_path / "queues" / "control")


def test_other_brokers_pass_through_unchanged(tmp_path: Path) -> None:
    assert celery_broker("redis://127.0.0.1:6379/3", tmp_path) == {
        "broker_url": "redis://127.0.0.1:6379/3",
        "broker_transport_options": {},
    }
    assert not (tmp_path / "broker").exists()


def test_a_filesystem_queue_never_shows_a_message_half_written(tmp_path: Path) -> None:
    """kombu's own filesystem transport hands a consumer polling at the wrong moment an empty message."""
    settings = celery_broker(f"filesystem://{tmp_path}", tmp_path)
    options = settings["broker_transport_options"]
    queue = Queue("q", Exchange("q"), "q")
    count = 1500
    received: list[Any] = []
    errors: list[Exception] = []

    def consume() -> None:
        transport = {**options, "polling_interval": 0.0}
        with Connection(
            "filesystem://", transport=settings["broker_transport"], transport_options=transport
        ) as c:
            channel = c.channel()
            deadline = time.monotonic() + 60
            while len(received) + len(errors) < count and time.monotonic() < deadline:
                try:
                    message = channel.basic_get("q", no_ack=True)
                except Exception as exc:
                    errors.append(exc)
                    continue
                if message is not None:
                    received.append(message.decode())

    with Connection("filesystem://", transport=settings["broker_transport"], transport_options=options) as c:
        producer = c.Producer()
        producer.publish({"i": -1}, exchange=queue.exchange, routing_key="q", declare=[queue])
        consumer = threading.Thread(target=consume)
        consumer.start()
        for i in range(count - 1):
            producer.publish({"i": i, "padding": "x" * 2000}, exchange=queue.exchange, routing_key="q")
        consumer.join()
    assert errors == []
    assert sorted(m["i"] for m in received) == list(range(-1, count - 1))


def test_consumed_messages_older_than_the_limit_are_deleted(tmp_path: Path) -> None:
    now = time.time()
    for name, age in (("old.msg", 700.0), ("new.msg", 10.0)):
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (now - age, now - age))
    assert prune_processed(tmp_path, keep_s=600.0, now=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.msg"]


def test_a_worker_needs_a_broker_and_on_redis_gets_the_lost_ack_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FEDALIGN_BROKER_URL"):
        configure_worker(Celery(set_as_current=False), BrokerSettings(broker_url=None), tmp_path)
    app = configure_worker(
        Celery(set_as_current=False), BrokerSettings(broker_url="redis://127.0.0.1:6379/3"), tmp_path, 60.0
    )
    assert app.conf.broker_transport is RedisTransport
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_time_limit == 60.0
    on_folders = configure_worker(
        Celery(set_as_current=False), BrokerSettings(broker_url="filesystem://", broker_poll_s=0.5), tmp_path
    )
    assert on_folders.conf.broker_transport_options["polling_interval"] == 0.5
    assert on_folders.conf.task_time_limit is None
