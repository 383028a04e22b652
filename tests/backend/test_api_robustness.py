"""Concurrency, bad input and credentials: the service stays consistent and never answers 500."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api
from test_api_aggregations import wait_until
from test_api_node_steps import finish_setup, put, started, valid

from backend.observability import metrics
from backend.settings import Settings
from fedalign import params

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
    ("method", "path", "kwargs"),
    [
        ("GET", "/api/v1/node/task", {}),
        ("GET", "/api/v1/node/steps/abc/complete", {}),
        ("POST", "/api/v1/node/steps/abc/complete", {"json": {}}),
        ("POST", "/api/v1/node/steps/1/complete", {"json": {"metrics": {"x": "one"}}}),
        ("POST", "/api/v1/node/steps/1/complete", {"json": {"metrics": {}, "samples": {"train": -1}}}),
        ("PUT", "/api/v1/node/steps/1/uploads/D", {"content": b""}),
        ("PUT", "/api/v1/node/steps/1/uploads/" + "D" * 40, {"content": b"x"}),
        ("GET", "/api/v1/node/artifacts/../../etc/passwd", {}),
    ],
)
def test_bad_node_requests_get_a_4xx_never_a_500(api: Api, method: str, path: str, kwargs: dict) -> None:
    federation, tokens = api.federation_with_nodes()
    api.start(federation["id"])
    api.task(tokens["alpha"])
    response = api.request(method, path, token=tokens["alpha"], **kwargs)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["message"]


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


UPLOAD_ROUTE = "/api/v1/node/steps/{step_id}/uploads/{slot}"


def uploads_answered(status: int) -> float:
    labels = {"method": "PUT", "route": UPLOAD_ROUTE, "status": str(status)}
    return metrics.REGISTRY.get_sample_value("fedalign_http_requests_total", labels) or 0.0


def test_a_node_that_disconnects_mid_upload_is_a_client_error_not_a_500(
    api: Api, live_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedalign.backend")
    _, tokens = started(api)
    finish_setup(api, tokens)
    task = api.task(tokens["alpha"])
    assert task is not None
    body = params.to_bytes(valid("D"))
    closed, failed = uploads_answered(499), uploads_answered(500)
    url = httpx.URL(live_server)
    head = (
        f"PUT {httpx.URL(task['uploads']['D']).path} HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {tokens['alpha']}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((url.host, url.port)) as sock:
        sock.sendall(head.encode() + body[: len(body) // 2])
    wait_until(lambda: uploads_answered(499) == closed + 1)
    assert uploads_answered(500) == failed
    assert any("disconnected" in r.getMessage() for r in caplog.records), "the disconnect was not logged"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "logged as a server error"
    # Nothing of the half upload is left, and the whole one is then taken.
    assert not list(Path(api.services.settings.data_dir).rglob("upload-*.part"))
    put_ok = put(api, task["uploads"]["D"], tokens["alpha"], body)
    assert put_ok.status_code == 200, put_ok.text
