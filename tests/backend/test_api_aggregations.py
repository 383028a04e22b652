"""Aggregation: server jobs, target steps, re-runs, phase deadlines, and recovery after a crash."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from api_support import Api, drive, run_federation, runners_for, tiny_settings
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.app import create_app
from backend.models import Aggregation
from backend.settings import Settings
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.node import initial_models
from fedalign.simulate import simulate
from workers.client import NodeClient

SAMPLES = {"train": 40, "val": 10, "test": 10}


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_server_aggregations_are_listed_with_their_outcome(
    api: Api, vector_specs: Callable[[], dict]
) -> None:
    fid = run_federation(api, vector_specs(), rounds=1)
    items = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert [(a["key"], a["by"], a["status"]) for a in items] == [
        ("r1/disc1/D", "server", "done"),
        ("r1/adapt/G", "server", "done"),
        ("r1/adapt/T", "server", "done"),
    ]


def test_in_a_target_aggregated_federation_the_target_runs_aggregate_steps(
    api: Api, vector_specs: Callable[[], dict]
) -> None:
    fid = run_federation(api, vector_specs(), rounds=1, aggregator="target")
    items = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert {(a["by"], a["status"]) for a in items} == {("omega", "done")} and len(items) == 3
    response = api.request("POST", f"/api/v1/federations/{fid}/aggregations", json={})
    assert response.status_code == 409 and response.json()["error"]["code"] == "target_aggregates"


def test_an_aggregate_step_refuses_an_average_that_does_not_fit(api: Api) -> None:
    federation, tokens = api.federation_with_nodes(**tiny_settings(aggregator="target"))
    api.start(federation["id"])
    for token in tokens.values():
        task = api.task(token)
        assert task is not None
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    for token in tokens.values():
        task = api.task(token)
        assert task is not None and task["kind"] == "discriminator"
        api.request("PUT", task["uploads"]["D"], token=token, content=params.to_bytes(valid_d()))
        api.ok("POST", task["complete_url"], token=token, json={})
    aggregate = api.task(tokens["omega"])
    assert aggregate is not None and aggregate["kind"] == "aggregate" and aggregate["model"] == "D"
    assert set(aggregate["inputs"]) == {"alpha", "beta", "omega"}
    assert sum(aggregate["weights"].values()) == pytest.approx(1.0) and aggregate["weights"]["omega"] == 0.5
    assert api.request("GET", aggregate["inputs"]["alpha"], token=tokens["omega"]).status_code == 200
    assert api.request("GET", aggregate["inputs"]["alpha"], token=tokens["beta"]).status_code == 403
    partial = params.to_bytes({"0.weight": torch.zeros(8, 8)})
    refused = api.request("PUT", aggregate["uploads"]["D"], token=tokens["omega"], content=partial)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "missing_tensor"


def valid_d() -> dict[str, torch.Tensor]:
    return initial_models(FederationConfig.model_validate(tiny_settings()))["D"]


def lose_dispatches(api: Api) -> None:
    """As if the process died between each commit and its dispatch: every job goes to the dispatcher (none
    is small enough to average in the transaction that writes it), which drops what it gets."""
    api.services.dispatcher.dispatch = lambda _ids, again=False: None
    INLINE_BYTES[id(api)] = api.services.orchestrator.inline_aggregation_bytes
    api.services.orchestrator.inline_aggregation_bytes = -1


def restore_dispatches(api: Api) -> None:
    del api.services.dispatcher.dispatch  # the stand-in goes, the dispatcher's own method is back
    api.services.orchestrator.inline_aggregation_bytes = INLINE_BYTES.pop(id(api))


INLINE_BYTES: dict[int, int] = {}


def closed_disc_phase(api: Api, *, dispatch: bool) -> tuple[str, dict[str, str]]:
    """A federation whose round-1 discriminator phase just closed; its aggregation was (not) dispatched."""
    federation, tokens = api.federation_with_nodes()
    fid = federation["id"]
    api.start(fid)
    if not dispatch:  # as if the process died between the commit and the dispatch
        lose_dispatches(api)
    for token in tokens.values():
        task = api.task(token)
        assert task is not None
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    for token in tokens.values():
        task = api.task(token)
        assert task is not None
        api.request("PUT", task["uploads"]["D"], token=token, content=params.to_bytes(valid_d()))
        api.ok("POST", task["complete_url"], token=token, json={})
    return fid, tokens


def test_a_lost_dispatch_is_recovered_by_the_sweep(api: Api) -> None:
    fid, tokens = closed_disc_phase(api, dispatch=False)
    jobs = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert [(j["key"], j["status"]) for j in jobs] == [("r1/disc1/D", "pending")]
    assert api.ok("GET", f"/api/v1/federations/{fid}/rounds/1")["phases"][0]["state"] == "aggregating"
    assert api.task(tokens["alpha"]) is None, "nothing to do while the phase aggregates"
    restore_dispatches(api)
    assert api.services.sweeper.sweep_once().dispatched == 1
    wait_until(lambda: api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt")
    task = api.task(tokens["alpha"])
    assert task is not None and task["downloads"] == {
        "D": "http://testserver/api/v1/node/artifacts/r1/disc1/D"
    }


def test_the_admin_can_run_a_pending_aggregation_now(api: Api) -> None:
    fid, _ = closed_disc_phase(api, dispatch=False)
    restore_dispatches(api)
    unknown = api.request("POST", f"/api/v1/federations/{fid}/aggregations", json={"key": "r9/x/D"})
    assert unknown.status_code == 404
    triggered = api.ok("POST", f"/api/v1/federations/{fid}/aggregations", 202, json={"key": "r1/disc1/D"})
    assert [j["key"] for j in triggered["items"]] == ["r1/disc1/D"]
    wait_until(lambda: api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt")
    done = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert [(j["status"], j["attempts"]) for j in done] == [("done", 1)]
    assert api.ok("POST", f"/api/v1/federations/{fid}/aggregations", 202, json={})["items"] == []
    # Running the job again (a duplicate message) changes nothing: its claim fails.
    with api.services.db.read() as session:
        job_id = session.scalars(select(Aggregation.id)).one()
    assert api.services.aggregation.claim(job_id) is False
    api.services.aggregation.run(job_id)
    assert api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"][0]["attempts"] == 1


def test_a_phase_deadline_closes_without_a_missing_source_and_reweights(api: Api) -> None:
    federation, tokens = api.federation_with_nodes(phase_deadline_s=30, min_sources=1)
    fid = federation["id"]
    api.start(fid)
    for token in tokens.values():
        task = api.task(token)
        assert task is not None
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    late = api.task(tokens["beta"])
    assert late is not None
    for name in ("alpha", "omega"):
        task = api.task(tokens[name])
        assert task is not None
        api.request("PUT", task["uploads"]["D"], token=tokens[name], content=params.to_bytes(valid_d()))
        api.ok("POST", task["complete_url"], token=tokens[name], json={})
    assert api.services.sweeper.sweep_once().deadlines == 0, "the deadline has not passed yet"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    assert api.services.sweeper.sweep_once(later).deadlines == 1
    wait_until(lambda: api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt")
    jobs = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert jobs[0]["key"] == "r1/disc1/D" and jobs[0]["status"] == "done"
    refused = api.request(
        "PUT", late["uploads"]["D"], token=tokens["beta"], content=params.to_bytes(valid_d())
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "wrong_phase"
    events = events_of(api, fid)
    closed = [e for e in events if e["type"] == "phase_closed"]
    assert (
        closed
        and closed[0]["payload"]["missing"] == ["beta"]
        and "renormalised" in closed[0]["payload"]["reason"]
    )


def test_a_missing_target_stalls_the_federation_until_it_arrives(api: Api) -> None:
    federation, tokens = api.federation_with_nodes(phase_deadline_s=5)
    fid = federation["id"]
    api.start(fid)
    for name in ("alpha", "beta"):
        task = api.task(tokens[name])
        assert task is not None
        api.ok("POST", task["complete_url"], token=tokens[name], json={"samples": SAMPLES})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)
    api.services.sweeper.sweep_once(later)
    stalled = api.ok("GET", f"/api/v1/federations/{fid}")
    assert stalled["status"] == "stalled" and "target node 'omega'" in stalled["stall_reason"]
    api.services.sweeper.sweep_once(later)  # the same stall again adds no event
    assert (
        sum(e["type"] == "status" and e["payload"]["status"] == "stalled" for e in events_of(api, fid)) == 1
    )
    task = api.task(tokens["omega"])
    assert task is not None, "a stalled federation still hands out the missing steps"
    api.ok("POST", task["complete_url"], token=tokens["omega"], json={"samples": SAMPLES})
    resumed = api.ok("GET", f"/api/v1/federations/{fid}")
    assert (resumed["status"], resumed["stall_reason"], resumed["phase"]) == ("running", None, "disc1")


def events_of(api: Api, fid: str) -> list[dict[str, Any]]:
    response = api.request("GET", f"/api/v1/federations/{fid}/events?follow=false")
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def test_a_restarted_server_resumes_from_the_database_with_the_same_numbers(
    settings: Settings, vector_specs: Callable[[], dict[str, str]]
) -> None:
    specs = vector_specs()
    overrides: dict[str, Any] = {}
    with TestClient(create_app(settings)) as first:
        api = Api(first)
        federation, tokens = api.federation_with_nodes(specs, **tiny_settings(**overrides))
        fid = federation["id"]
        api.start(fid)
        runners = runners_for(api, tokens)
        drive(runners, max_steps=6)  # setup and the discriminator phase
        wait_until(lambda: api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt")
        lose_dispatches(api)  # the next dispatch is lost with the process
        drive(runners, max_steps=3)  # the adaptation phase closes; its aggregations are only in the database
        assert api.ok("GET", f"/api/v1/federations/{fid}/rounds/1")["phases"][1]["state"] == "aggregating"
    with TestClient(create_app(settings)) as second:
        api = Api(second)
        for name, runner in runners.items():
            runner.client = NodeClient("http://testserver", tokens[name], http=second)
        drive(runners)
        assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
        served = params.from_bytes(api.request("GET", f"/api/v1/federations/{fid}/model").content)
    nodes = [
        {"name": name, "role": "target" if name == "omega" else "source", "dataset": specs[name]}
        for name in specs
    ]
    reference = simulate(FederationConfig.model_validate({**tiny_settings(**overrides), "nodes": nodes}))
    for name, tensor in reference.models["target_model"].items():
        assert torch.equal(served[name], tensor), name


def recorded_dispatches(api: Api) -> list[int]:
    """The job ids the dispatcher is given from now on (it still runs them)."""
    dispatched: list[int] = []
    dispatch = api.services.dispatcher.dispatch

    def recording(job_ids: Any, again: bool = False) -> None:
        ids = list(job_ids)
        dispatched.extend(ids)
        dispatch(ids, again=again)

    api.services.dispatcher.dispatch = recording
    return dispatched


def test_a_small_models_average_is_computed_before_the_last_completion_is_answered(api: Api) -> None:
    """D of the tiny federation is far below FEDALIGN_INLINE_AGGREGATION_MAX_BYTES: the completion that
    closes disc1 answers once D_all is stored and adapt is open, and nothing goes to the dispatcher."""
    dispatched = recorded_dispatches(api)
    fid, tokens = closed_disc_phase(api, dispatch=True)
    # No waiting: the phase moved on inside the last completion's request.
    assert api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt"
    jobs = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert [(j["key"], j["status"], j["attempts"]) for j in jobs] == [("r1/disc1/D", "done", 1)]
    assert dispatched == []
    task = api.task(tokens["alpha"])
    assert task is not None and task["phase"] == "adapt"


def test_a_small_average_that_fails_in_the_completing_transaction_goes_to_the_dispatcher(api: Api) -> None:
    """The completion that closed the phase stands (its submission is stored) and the job is retried off the
    request path, where it succeeds."""
    dispatched = recorded_dispatches(api)
    orchestrator = api.services.orchestrator
    fold = orchestrator.fold
    assert fold is not None
    failures: list[str] = []

    def failing_once(tx: Any, job: Aggregation) -> Any:
        if not failures:
            failures.append(job.key)
            raise OSError("the store was briefly unreadable")
        return fold(tx, job)

    orchestrator.fold = failing_once
    fid, _ = closed_disc_phase(api, dispatch=True)
    assert failures == ["r1/disc1/D"]
    with api.services.db.read() as session:
        job_id = session.scalars(select(Aggregation.id)).one()
    assert dispatched == [job_id]
    wait_until(lambda: api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt")
    jobs = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    assert [(j["key"], j["status"], j["attempts"]) for j in jobs] == [("r1/disc1/D", "done", 1)]


def test_a_model_above_the_inline_threshold_is_averaged_by_the_dispatcher(api: Api) -> None:
    api.services.orchestrator.inline_aggregation_bytes = 0
    dispatched = recorded_dispatches(api)
    fid, _ = closed_disc_phase(api, dispatch=True)
    with api.services.db.read() as session:
        job_id = session.scalars(select(Aggregation.id)).one()
    assert dispatched == [job_id]
    wait_until(lambda: api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt")
