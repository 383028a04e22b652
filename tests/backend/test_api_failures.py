"""Failed steps, served: a node that cannot run its step says so (``POST /api/v1/node/steps/{id}/fail``), the
step is offered again when a retry can help, and then the quorum rule decides, as in the simulator; the
reason shows on the node, in the events and in the rounds. Nodes play in process over HTTP (`drive`); a
failure is made to happen on the node, before its step touches anything, as running out of memory would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from api_support import RUN_TIMEOUT_S, Api, drive, runners_for, tiny_settings
from test_api_end_to_end import served_rounds

from fedalign.config import FederationConfig
from fedalign.simulate import Simulator
from messaging.node_api import Task
from workers.client import NodeRunner

NODES = (("alpha", "source"), ("beta", "source"), ("omega", "target"))
Condition = Callable[[Any], bool]


def failing_on(runner: NodeRunner, when: Condition, error: Exception) -> list[int]:
    """The node's steps for which ``when(task)`` holds raise ``error`` on the node, before they run."""
    real, raised = runner._compute, []

    def compute(task: Task) -> Any:
        if when(task):
            raised.append(task.step_id)
            raise error
        return real(task)

    runner._compute = compute  # type: ignore[method-assign]
    return raised


def simulated_failing_on(sim: Simulator, node: str, when: Condition, error: Exception) -> None:
    runtime = sim.nodes[node]
    real = runtime.run

    def run(step: Any, downloads: Any) -> Any:
        if when(step):
            raise error
        return real(step, downloads)

    runtime.run = run  # type: ignore[method-assign]


def config_of(settings: dict[str, Any], specs: dict[str, str]) -> FederationConfig:
    nodes = [{"name": n, "role": r, "dataset": specs[n]} for n, r in NODES]
    return FederationConfig.model_validate({**settings, "nodes": nodes})


def events_of(api: Api, fid: str, kind: str) -> list[dict[str, Any]]:
    import json

    text = api.request("GET", f"/api/v1/federations/{fid}/events?follow=false").text
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    return [e["payload"] for e in events if e["type"] == kind]


def node_of(api: Api, fid: str, name: str) -> dict[str, Any]:
    return api.ok("GET", f"/api/v1/federations/{fid}/nodes/{name}")


def test_a_step_that_fails_once_is_offered_again_and_the_run_equals_the_simulation(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    specs = vector_specs()
    settings = tiny_settings()
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    once: Condition = lambda t: t.kind == "adapt" and t.round == 1 and not raised  # noqa: E731
    raised = failing_on(runners["beta"], once, MemoryError("out of memory"))

    drive(runners)

    assert len(raised) == 1 and api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    (failure,) = events_of(api, fid, "step_failed")
    assert failure | {"node": "beta", "round": 1, "phase": "adapt"} == failure
    assert (failure["reason"], failure["retryable"], failure["retry"]) == (
        "MemoryError: out of memory",
        True,
        True,
    )
    beta = node_of(api, fid, "beta")
    assert beta["state"] == "finished" and beta["failure"] == "MemoryError: out of memory"
    reference = Simulator(config_of(settings, specs)).run()
    assert served_rounds(api, fid) == {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}


def test_a_source_whose_step_fails_for_good_is_left_out_of_the_phase_as_in_the_simulation(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    specs = vector_specs()
    settings = tiny_settings(min_sources=1)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    in_round_1: Condition = lambda t: t.kind == "adapt" and t.round == 1  # noqa: E731
    error = ValueError("column 'y' of rows.csv holds 'n/a'")
    failing_on(runners["beta"], in_round_1, error)

    drive(runners)

    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    reason = "ValueError: column 'y' of rows.csv holds 'n/a'"
    (failure,) = events_of(api, fid, "step_failed")
    assert (failure["reason"], failure["retryable"], failure["retry"]) == (reason, False, False)
    (left_out,) = api.ok("GET", f"/api/v1/federations/{fid}/rounds")["items"][1]["left_out"]
    assert left_out["phase"] == "adapt" and left_out["nodes"] == ["beta"] and reason in left_out["reason"]
    step = next(
        s
        for p in api.ok("GET", f"/api/v1/federations/{fid}/rounds/1")["phases"]
        for s in p["steps"]
        if p["name"] == "adapt" and s["node"] == "beta"
    )
    assert (step["status"], step["failure"]) == ("failed", reason)
    assert node_of(api, fid, "beta")["failure"] == reason
    sim = Simulator(config_of(settings, specs))
    simulated_failing_on(sim, "beta", in_round_1, error)
    reference = sim.run()
    assert served_rounds(api, fid) == {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}


def test_a_target_whose_step_fails_stalls_the_run_with_its_reason_on_the_node(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    federation, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings(min_sources=1))
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    failing_on(runners["omega"], lambda t: t.kind == "evaluate", KeyError("row 17"))

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "running":
        assert time.monotonic() < deadline, "the run neither stalled nor finished"
        if not any([runner.step_once() for runner in runners.values()]):
            time.sleep(0.01)  # a server-side aggregation is running

    shown = api.ok("GET", f"/api/v1/federations/{fid}")
    assert shown["status"] == "stalled"
    assert (
        "target node 'omega' failed" in shown["stall_reason"]
        and "KeyError: 'row 17'" in shown["stall_reason"]
    )
    omega = node_of(api, fid, "omega")
    assert (omega["state"], omega["failure"]) == ("failed", "KeyError: 'row 17'")
    while any([runners[name].step_once() for name in ("alpha", "beta")]):
        pass  # the sources' open steps still complete, and change nothing
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "stalled"
    assert api.task(tokens["omega"]) is None, "the failed step is not offered again"


def test_reporting_a_failure_is_idempotent_and_a_failed_step_takes_no_result(api: Api) -> None:
    federation, tokens = api.federation_with_nodes(**tiny_settings(min_sources=1))
    api.start(federation["id"])
    alpha = tokens["alpha"]
    task = api.task(alpha)
    assert task is not None and task["kind"] == "setup"
    body = {"reason": "FileNotFoundError: alpha.npz", "retryable": False}
    first = api.ok("POST", task["fail_url"], token=alpha, json=body)
    assert (first["status"], first["retry"], first["federation_status"]) == ("failed", False, "running")
    assert api.ok("POST", task["fail_url"], token=alpha, json=body) == first, "the same report again"
    other = api.request("POST", task["fail_url"], token=alpha, json={"reason": "something else"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "already_failed"
    late = api.request("POST", task["complete_url"], token=alpha, json={"samples": {"train": 3}})
    assert late.status_code == 409 and late.json()["error"]["code"] == "step_failed"
    claim = api.request("POST", task["complete_url"].replace("/complete", "/claim"), token=alpha)
    assert claim.status_code == 409 and claim.json()["error"]["code"] == "step_failed"
    beta = api.task(tokens["beta"])
    assert beta is not None
    api.ok("POST", beta["complete_url"], token=tokens["beta"], json={"samples": {"train": 3}})
    done = api.request("POST", beta["fail_url"], token=tokens["beta"], json={"reason": "too late"})
    assert done.status_code == 409 and done.json()["error"]["code"] == "already_completed"
    for bad in ({"reason": ""}, {"reason": "x" * 1001}, {"reason": "x", "extra": 1}, {}):
        assert api.request("POST", task["fail_url"], token=alpha, json=bad).status_code == 422, bad
