"""Steps are rows, messages point at them: sent after the commit, to Celery-mode nodes only, claimed by id,
sent again by the sweep when lost; and each task is registered under the name the server sends it by."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api
from celery import Celery
from fastapi.testclient import TestClient

from backend import celery_app as server_app
from backend.app import create_app
from backend.models import Step
from backend.services.messages import CeleryAggregationDispatcher, StepMessage
from backend.settings import Settings
from cli import demo as up_demo
from messaging.celery_contract import AGGREGATE_TASK, STEP_TASK, aggregator_queue, node_queue
from workers import celery_app

ROOT = Path(__file__).resolve().parents[2]
NODES = (("alpha", "source", "celery"), ("beta", "source", "rest"), ("omega", "target", "celery"))


class FakeMessenger:
    """Records what would go to the broker; ``down`` makes sending fail, as with the broker unreachable."""

    def __init__(self, api: Api | None = None) -> None:
        self.api = api
        self.steps: list[StepMessage] = []
        self.jobs: list[int] = []
        self.down = False
        self.uncommitted: list[int] = []

    def send_step(self, message: StepMessage) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        if self.api is not None:
            # What the message points at must be visible to others already: committed.
            with self.api.services.db.read() as session:
                if session.get(Step, message.step_id) is None:
                    self.uncommitted.append(message.step_id)
        self.steps.append(message)

    def send_aggregation(self, job_id: int) -> None:
        self.jobs.append(job_id)

    def close(self) -> None:
        pass


Brokered = tuple[Api, FakeMessenger]


@pytest.fixture
def brokered(settings: Settings) -> Iterator[Brokered]:
    """The app built with a broker client that records what it would send."""
    messenger = FakeMessenger()
    with TestClient(create_app(settings, messenger=messenger)) as client:  # type: ignore[arg-type]
        api = Api(client)
        messenger.api = api
        yield api, messenger


def register(api: Api) -> tuple[str, dict[str, dict[str, Any]]]:
    federation = api.create_federation()
    nodes = {
        name: api.ok(
            "POST",
            f"/api/v1/federations/{federation['id']}/nodes",
            201,
            json={"name": name, "role": role, "dataset": "npz:/data/x.npz", "mode": mode},
        )
        for name, role, mode in NODES
    }
    return federation["id"], nodes


def test_steps_of_celery_nodes_are_sent_to_their_queues_after_the_commit(brokered: Brokered) -> None:
    api, messenger = brokered
    fid, nodes = register(api)
    api.start(fid)

    sent = {m.node_id for m in messenger.steps}
    assert sent == {nodes["alpha"]["id"], nodes["omega"]["id"]}, (
        "REST nodes poll; only Celery nodes get messages"
    )
    assert messenger.uncommitted == []
    assert all(m.federation_id == fid for m in messenger.steps)
    with api.services.db.read() as session:
        for message in messenger.steps:
            step = session.get(Step, message.step_id)
            assert step is not None and step.node_id == message.node_id and step.dispatched_at is not None


def test_a_celery_node_needs_a_broker(api: Api) -> None:
    federation = api.create_federation()
    response = api.request(
        "POST",
        f"/api/v1/federations/{federation['id']}/nodes",
        json={"name": "alpha", "role": "source", "dataset": "npz:/x.npz", "mode": "celery"},
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_broker"


def test_the_sweep_sends_again_what_was_not_sent_or_whose_lease_expired(brokered: Brokered) -> None:
    api, messenger = brokered
    fid, nodes = register(api)
    messenger.down = True
    api.start(fid)  # committed, but the broker is down: nothing sent
    assert messenger.steps == []
    messenger.down = False

    api.services.sweeper.sweep_once()
    assert {m.node_id for m in messenger.steps} == {nodes["alpha"]["id"], nodes["omega"]["id"]}
    api.services.sweeper.sweep_once()
    assert len(messenger.steps) == 2, "sent a moment ago: not sent again yet"

    alpha_step = next(m.step_id for m in messenger.steps if m.node_id == nodes["alpha"]["id"])
    api.ok("POST", f"/api/v1/node/steps/{alpha_step}/claim", token=nodes["alpha"]["token"])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=api.services.settings.lease_seconds + 1)
    report = api.services.sweeper.sweep_once(later)
    assert report.released == 1
    resent = [m.step_id for m in messenger.steps[2:]]
    assert alpha_step in resent, "a step whose lease expired is sent again at once"


def test_resuming_a_paused_federation_sends_its_pending_steps_again(brokered: Brokered) -> None:
    api, messenger = brokered
    fid, _ = register(api)
    api.start(fid)
    api.ok("POST", f"/api/v1/federations/{fid}/pause")
    before = len(messenger.steps)
    api.ok("POST", f"/api/v1/federations/{fid}/resume")
    assert len(messenger.steps) == before + 2


def test_a_node_claims_its_step_by_id_until_it_is_done(brokered: Brokered) -> None:
    api, messenger = brokered
    fid, nodes = register(api)
    api.start(fid)
    step_id = next(m.step_id for m in messenger.steps if m.node_id == nodes["alpha"]["id"])
    url = f"/api/v1/node/steps/{step_id}/claim"
    alpha, omega = nodes["alpha"]["token"], nodes["omega"]["token"]

    task = api.ok("POST", url, token=alpha)
    assert task["step_id"] == step_id and task["kind"] == "setup"
    # Claimed by this node already (a restarted worker, a retried message): it may claim it again.
    assert api.ok("POST", url, token=alpha)["step_id"] == step_id
    other = api.request("POST", url, token=omega)
    assert other.status_code == 403

    api.ok("POST", f"/api/v1/federations/{fid}/pause")
    paused = api.request("POST", url, token=alpha)
    assert paused.status_code == 409 and paused.json()["error"]["code"] == "federation_paused"
    api.ok("POST", f"/api/v1/federations/{fid}/resume")

    api.ok("POST", task["complete_url"], token=alpha, json={"samples": {"train": 4}})
    done = api.request("POST", url, token=alpha)
    assert done.status_code == 409 and done.json()["error"]["code"] == "already_completed"


def test_an_aggregation_job_is_sent_once_while_it_waits() -> None:
    messenger = FakeMessenger()
    dispatcher = CeleryAggregationDispatcher(messenger, resend_after_s=60)  # type: ignore[arg-type]
    dispatcher.dispatch([3, 4])
    dispatcher.dispatch([4, 5])  # the sweep offers the pending jobs again
    assert messenger.jobs == [3, 4, 5]
    # 4's runner died holding it (the sweep released its lease): sent at once, and only once more.
    dispatcher.dispatch([4], again=True)
    dispatcher.dispatch([4, 5])
    assert messenger.jobs == [3, 4, 5, 4]


def test_each_task_is_registered_under_the_name_the_server_sends_it_by() -> None:
    assert celery_app.run_step.name == STEP_TASK
    assert server_app.aggregate.name == AGGREGATE_TASK
    assert node_queue("p.", "n1") == "p.node.n1"
    assert aggregator_queue("p.") == "p.aggregator"


def test_the_aggregation_task_joins_another_app_under_its_name() -> None:
    """`fedalign up` runs its demo nodes and the aggregator in one worker process, on the nodes' app."""
    app = Celery("nodes-and-aggregator", set_as_current=False)
    server_app.add_server_tasks(app)
    assert app.tasks[AGGREGATE_TASK].run is server_app.run_aggregation


def test_a_worker_never_runs_a_step_of_a_node_it_does_not_serve() -> None:
    assert celery_app.run_step.run(step_id=1, node_id="someone-else", federation_id="f") == "not_served"


def test_the_demo_federation_is_the_examples_recipe() -> None:
    example = tomllib.loads((ROOT / "examples" / "digits-mnistm.toml").read_text(encoding="utf-8"))
    demo = up_demo.demo_settings(up_demo.DEMO_ROUNDS)
    assert demo["rounds"] == 100 and demo["hyperparameters"]["eval_every"] == 10
    for key in ("algorithm", "architecture", "seed", "aggregator"):
        assert demo[key] == example[key], key
    assert {k: v for k, v in demo["hyperparameters"].items() if k != "eval_every"} == {
        k: v for k, v in example["hyperparameters"].items() if k != "eval_every"
    }
    assert [(n, r, d) for n, r, d in up_demo.DEMO_NODES] == [
        (n["name"], n["role"], n["dataset"]) for n in example["nodes"]
    ]
