"""Wake-ups across API processes: a node's long poll held by one API process answers as soon as another
process commits the step it waits for, through the Redis relay (`backend.services.relay`), not at the
held poll's next database recheck. Two apps share one database and one Redis, as two API processes behind
a load balancer do."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import Api
from fastapi.testclient import TestClient
from process_support import REDIS_URL, redis_or_skip

from backend.app import create_app
from backend.settings import Settings

RECHECK_S = 30.0  # a held poll re-reads the database this seldom: one that answers sooner was woken


@pytest.fixture
def apis(settings: Settings) -> Iterator[tuple[Api, Api]]:
    redis_or_skip()
    shared = settings.model_copy(
        update={
            "broker_url": REDIS_URL,
            # Channels are per deployment: this test's own, so that no other run's wake-ups reach it.
            "queue_prefix": f"relay-{uuid.uuid4().hex[:8]}-",
            "long_poll_recheck_s": RECHECK_S,
        }
    )
    with TestClient(create_app(shared)) as first, TestClient(create_app(shared)) as second:
        for client in (first, second):
            relay = client.app.state.services.relay  # type: ignore[attr-defined]
            assert relay is not None and relay.wait_subscribed(10), "the relay never subscribed"
        yield Api(first), Api(second)


def test_a_poll_held_by_one_process_is_woken_by_a_commit_in_another(apis: tuple[Api, Api]) -> None:
    coordinator, other = apis
    federation, tokens = coordinator.federation_with_nodes()
    answers: list[tuple[float, Any]] = []

    def held() -> None:
        began = time.monotonic()
        response = other.request("GET", "/api/v1/node/task", token=tokens["alpha"], params={"wait_s": 20})
        answers.append((time.monotonic() - began, response))

    thread = threading.Thread(target=held)
    thread.start()
    held_by = other.services.orchestrator.steps_notifier
    deadline = time.monotonic() + 10
    while not held_by.waiting(federation["id"]):
        assert time.monotonic() < deadline, "the poll never reached the second process"
        time.sleep(0.01)
    time.sleep(0.3)  # past its first claim (milliseconds), which found nothing: not started yet
    assert not answers
    coordinator.start(federation["id"])  # committed by the first process
    thread.join(timeout=25)
    waited, response = answers[0]
    assert response.status_code == 200, response.text
    assert response.json()["kind"] == "setup"
    assert waited < 5, f"the poll answered {waited:.1f} s after the step opened (its recheck is every 30 s)"
