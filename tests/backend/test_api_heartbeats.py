"""Short leases kept alive by heartbeats: a step may take as long as it needs while whoever runs it sends
heartbeats, and a step whose heartbeats stop is handed out again by the next sweep after its lease."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from api_support import RUN_TIMEOUT_S, Api, tiny_settings
from process_support import wait_until
from sqlalchemy import select

from backend.models import Step
from messaging.node_api import HEARTBEATS_PER_LEASE
from workers.client import ClientError, NodeClient, NodeRunner


def started(api: Api, **overrides: Any) -> tuple[str, dict[str, str]]:
    federation, tokens = api.federation_with_nodes(**overrides)
    api.start(federation["id"])
    return federation["id"], tokens


def when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def heartbeat(api: Api, task: dict[str, Any], token: str) -> Any:
    return api.request("POST", task["heartbeat_url"], token=token)


def step_row(api: Api, step_id: int) -> Step:
    with api.services.db.read() as session:
        step = session.get(Step, step_id)
        assert step is not None
        session.expunge(step)
        return step


def test_a_task_says_where_and_how_often_to_send_heartbeats(api: Api) -> None:
    _, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    assert task["heartbeat_url"] == f"http://testserver/api/v1/node/steps/{task['step_id']}/heartbeat"
    lease = api.services.settings.lease_seconds
    assert task["heartbeat_s"] == pytest.approx(lease / HEARTBEATS_PER_LEASE, abs=1e-3)


def test_a_heartbeat_renews_the_lease_so_the_sweep_keeps_the_step(api: Api) -> None:
    _, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    claimed_until = when(task["lease_expires_at"])
    renewed = api.ok("POST", task["heartbeat_url"], token=tokens["alpha"])
    renewed_until = when(renewed["lease_expires_at"])
    assert renewed["step_id"] == task["step_id"] and renewed_until > claimed_until
    # Between the claim's end and the renewed end: the first lease has run out, the renewed one holds.
    meanwhile = claimed_until + (renewed_until - claimed_until) / 2
    assert api.services.sweeper.sweep_once(meanwhile).released == 0
    assert api.task(tokens["alpha"]) is None, "a renewed lease is kept"
    # Once the heartbeats stop, the next sweep after the renewed end hands the step out again.
    assert api.services.sweeper.sweep_once(renewed_until + dt.timedelta(seconds=1)).released == 1
    again = api.task(tokens["alpha"])
    assert again is not None and again["step_id"] == task["step_id"]


def test_a_late_heartbeat_takes_back_a_released_step_that_nobody_claimed(api: Api) -> None:
    _, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    later = when(task["lease_expires_at"]) + dt.timedelta(seconds=1)
    assert api.services.sweeper.sweep_once(later).released == 1
    assert step_row(api, task["step_id"]).status == "pending"
    heartbeat(api, task, tokens["alpha"]).raise_for_status()
    step = step_row(api, task["step_id"])
    assert (step.status, step.attempts) == ("claimed", 1), "the node still running it holds it again"
    assert api.task(tokens["alpha"]) is None


def test_a_heartbeat_for_a_completed_step_or_another_nodes_is_refused_and_changes_nothing(api: Api) -> None:
    _, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    api.ok("POST", task["complete_url"], token=tokens["alpha"], json={"samples": {"train": 40}})
    before = step_row(api, task["step_id"])
    done = heartbeat(api, task, tokens["alpha"])
    assert done.status_code == 409 and done.json()["error"]["code"] == "already_completed", done.text
    others = heartbeat(api, task, tokens["beta"])
    assert others.status_code == 403, others.text
    missing = api.request("POST", "/api/v1/node/steps/999999/heartbeat", token=tokens["alpha"])
    assert missing.status_code == 404, missing.text
    after = step_row(api, task["step_id"])
    assert (after.status, after.lease_expires_at, after.attempts) == ("done", None, before.attempts)


def test_a_node_sends_heartbeats_while_its_step_outlasts_the_lease(
    api: Api, vector_specs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference node's step is held (its training waits) until the lease it was claimed with has run
    out in real time and its heartbeats have renewed it past that; a sweep then releases nothing, and the
    step completes on its first attempt."""
    api.services.settings.lease_seconds = 0.6
    federation, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings())
    api.start(federation["id"])
    runner = NodeRunner(NodeClient("http://testserver", tokens["alpha"], http=api.client))
    run = runner.runtime.run
    swept: list[int] = []

    def outlasting_its_lease(spec: Any, downloads: Any) -> Any:
        (step,) = [s for s in _steps(api) if s.status == "claimed"]  # alpha's setup: nobody else polled
        claimed_until = step.lease_expires_at
        assert claimed_until is not None

        def renewed_past_the_first_lease() -> bool:
            until = step_row(api, step.id).lease_expires_at
            return until is not None and until >= claimed_until + dt.timedelta(seconds=0.6)

        wait_until(renewed_past_the_first_lease, RUN_TIMEOUT_S, "heartbeats past the claim's lease")
        swept.append(api.services.sweeper.sweep_once().released)
        held.append(step.id)
        return run(spec, downloads)

    held: list[int] = []
    monkeypatch.setattr(runner.runtime, "run", outlasting_its_lease)
    assert runner.step_once()
    setup = step_row(api, held[0])
    assert swept == [0] and (setup.status, setup.attempts) == ("done", 1)
    with pytest.raises(ClientError) as refused:
        runner.client.heartbeat(f"http://testserver/api/v1/node/steps/{setup.id}/heartbeat")
    assert refused.value.code == "already_completed"


def _steps(api: Api) -> list[Step]:
    with api.services.db.read() as session:
        steps = list(session.scalars(select(Step).order_by(Step.id)))
        session.expunge_all()
        return steps
