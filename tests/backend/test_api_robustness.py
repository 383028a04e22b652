"""Concurrency, bad input and credentials: the service stays consistent and never answers 500."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api
from test_api_hostile_input import assert_refused, snapshot

from backend.settings import Settings

SAMPLES = {"train": 40, "val": 10, "test": 10}


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_completions_racing_to_close_a_phase_open_the_next_one_exactly_once(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    fid = federation["id"]
    api.start(fid)
    tasks = {name: api.task(token) for name, token in tokens.items()}
    responses = in_parallel(
        [
            lambda n=name: api.request(
                "POST", tasks[n]["complete_url"], token=tokens[n], json={"samples": SAMPLES}
            )
            for name in tokens
        ]
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    events = api.request("GET", f"/api/v1/federations/{fid}/events?follow=false").text
    assert events.count('"phase": "disc1"') == 1
    disc = api.ok("GET", f"/api/v1/federations/{fid}/rounds/1")["phases"][0]
    assert sorted(s["node"] for s in disc["steps"]) == ["alpha", "beta", "omega"]


def test_sweeps_running_at_once_release_each_lease_once(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    api.start(federation["id"])
    for token in tokens.values():
        assert api.task(token) is not None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    reports = in_parallel([lambda: api.services.sweeper.sweep_once(later) for _ in range(3)])
    assert sum(r.released for r in reports) == 3
    assert all(api.task(token) is not None for token in tokens.values())


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/api/v1/federations/{fid}/rounds/abc", {}),
        ("GET", "/api/v1/federations/" + "x" * 300, {}),
        ("POST", "/api/v1/federations", {"json": []}),
        ("POST", "/api/v1/federations", {"json": {"model": {"input_shape": "big"}}}),
        ("POST", "/api/v1/federations", {"json": {"hyperparameters": {"lr": -1}}}),
        ("POST", "/api/v1/federations/{fid}/nodes", {"json": {"name": "x" * 100, "role": "source"}}),
        ("POST", "/api/v1/federations/{fid}/aggregations", {"json": {"key": 5}}),
        ("GET", "/api/v1/federations/{fid}/metrics?name=" + "x" * 100, {}),
        ("GET", "/api/v1/federations/{fid}/events", {"headers": {"Last-Event-ID": "-3"}}),
        ("PUT", "/api/v1/federations", {"json": {}}),
    ],
)
def test_bad_input_gets_a_4xx_with_a_message_never_a_500(
    api: Api, method: str, path: str, kwargs: dict
) -> None:
    fid = api.create_federation()["id"]
    response = api.request(method, path.format(fid=fid), **kwargs)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] and len(error["message"]) > 20


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/api/v1/node/steps/abc/complete", {}, 404, "not_found"),
        ("POST", "/api/v1/node/steps/abc/complete", {"json": {}}, 422, "invalid_request"),
        (
            "POST",
            "/api/v1/node/steps/1/complete",
            {"json": {"metrics": {"x": "one"}}},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/node/steps/1/complete",
            {"json": {"metrics": {}, "samples": {"train": -1}}},
            422,
            "invalid_request",
        ),
        ("PUT", "/api/v1/node/steps/1/uploads/D", {"content": b""}, 404, "not_found"),  # setup has no slot
        ("PUT", "/api/v1/node/steps/1/uploads/" + "D" * 40, {"content": b"x"}, 422, "invalid_request"),
        ("PUT", "/api/v1/node/steps/999999/uploads/D", {"content": b"x"}, 404, "not_found"),
        ("GET", "/api/v1/node/artifacts/../../etc/passwd", {}, 404, "not_found"),
    ],
)
def test_bad_node_requests_get_their_4xx_and_change_nothing(
    api: Api, method: str, path: str, kwargs: dict, status: int, code: str
) -> None:
    """Each bad request of alpha's, holding its claimed setup step (step 1): the stated refusal with a
    message, nothing changed, and the honest completion of the step still works."""
    federation, tokens = api.federation_with_nodes()
    api.start(federation["id"])
    task = api.task(tokens["alpha"])
    assert task is not None and task["step_id"] == 1
    before = snapshot(api)
    response = api.request(method, path, token=tokens["alpha"], **kwargs)
    assert_refused(api, response, before, status)
    assert response.json()["error"]["code"] == code, response.text
    done = api.ok("POST", task["complete_url"], token=tokens["alpha"], json={"samples": SAMPLES})
    assert done["status"] == "done"


def test_a_generated_admin_token_is_kept_private_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_token=None)
    token = settings.admin_secret
    path = tmp_path / "data" / "admin_token"
    assert path.read_text().strip() == token and token.startswith("fa_admin_")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Settings(data_dir=tmp_path / "data", admin_token=None).admin_secret == token, (
        "kept across restarts"
    )
    assert Settings(database_url="postgresql://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"


def test_a_burst_of_concurrent_requests_is_answered_without_exhausting_the_pool(
    api: Api, live_server: str
) -> None:
    """More simultaneous requests than worker threads plus pooled connections: each still gets its answer
    (a session held past the route function once deadlocked them until the pool's 30 s timeout, as 500s)."""
    _, tokens = api.federation_with_nodes()
    token = tokens["alpha"]

    def one(_: int) -> int:
        with httpx.Client(timeout=60) as client:
            response = client.get(
                f"{live_server}/api/v1/node/federation", headers={"Authorization": f"Bearer {token}"}
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=80) as pool:
        statuses = list(pool.map(one, range(80)))
    assert statuses == [200] * 80
