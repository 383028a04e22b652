"""Concurrency, bad input and credentials: the service stays consistent and never answers 500."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from api_support import Api
from process_support import free_port
from sqlalchemy import text
from test_api_aggregations import wait_until
from test_api_hostile_input import assert_refused, snapshot
from test_api_node_steps import finish_setup, put, started, valid

from backend import migrate, uploads
from backend.app import create_app
from backend.database import Database, make_engine
from backend.http_limits import bounded_h11_protocol
from backend.observability import metrics
from backend.settings import Settings, SettingsError, load_settings
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


def test_the_sqlite_database_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_token="a" * 32)
    migrate.upgrade(settings.sqlalchemy_url)
    database = tmp_path / "data" / "fedalign.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    with Database(make_engine(settings.sqlalchemy_url)).write() as session:
        session.execute(text("SELECT 1"))  # the WAL and shared-memory files take the database's mode
    for suffix in ("", "-wal", "-shm"):
        path = tmp_path / "data" / f"fedalign.db{suffix}"
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"FEDALIGN_ADMIN_TOKEN": "short"}, "FEDALIGN_ADMIN_TOKEN has 5 characters; it must have at least"),
        ({"FEDALIGN_ADMIN_TOKEN": ""}, "FEDALIGN_ADMIN_TOKEN is set but empty"),
        ({"FEDALIGN_DATA_DIR": ""}, "FEDALIGN_DATA_DIR is set but empty"),
        ({"FEDALIGN_BROKER_URL": ""}, "FEDALIGN_BROKER_URL is set but empty"),
    ],
)
def test_settings_refuse_a_short_admin_token_and_empty_values_saying_which(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=re.escape(says)):
        load_settings()


def test_settings_documented_as_empty_means_unset_may_be_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FEDALIGN_METRICS_TOKEN", "FEDALIGN_METRICS_ADDR", "FEDALIGN_PUBLIC_URL"):
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("FEDALIGN_ADMIN_TOKEN", "a" * 32)
    settings = load_settings()
    assert (settings.metrics_token, settings.metrics_addr, settings.public_url) == (None, None, "")


def test_a_second_upload_to_a_slot_while_one_streams_in_is_refused(api: Api, live_server: str) -> None:
    _, tokens = started(api)
    finish_setup(api, tokens)
    task = api.task(tokens["alpha"])
    assert task is not None
    path = httpx.URL(task["uploads"]["D"]).path
    slot = ("step", path.split("/")[-3], "D")
    body = params.to_bytes(valid("D"))
    url = httpx.URL(live_server)
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {tokens['alpha']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((url.host, url.port)) as first:
        first.sendall(head.encode() + body[:10])
        wait_until(lambda: slot in uploads.IN_FLIGHT)
        before = snapshot(api)
        second = httpx.put(
            f"{live_server}{path}",
            content=body,
            headers={
                "Authorization": f"Bearer {tokens['alpha']}",
                "Content-Type": "application/octet-stream",
            },
            timeout=30,
        )
        assert_refused(api, second, before, 409)
        assert second.json()["error"]["code"] == "upload_in_progress"
        first.sendall(body[10:])
        answer = first.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert slot not in uploads.IN_FLIGHT


@pytest.fixture
def bounded_server(settings: Settings) -> Iterator[str]:
    """The app under uvicorn as `fedalign serve` runs it, with one-second read limits."""
    settings.header_timeout_s = 1.0
    settings.body_timeout_s = 1.0
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            http=bounded_h11_protocol(settings.header_timeout_s),
            limit_concurrency=settings.max_connections,
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-bounded", daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


SLOW_CONNECTIONS = 50
# How long a test waits for the server to close a slow connection: far beyond its one-second limit, so
# that only a server that never closes it fails (the test measures no time).
CLOSE_WAIT_S = 60.0


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(CLOSE_WAIT_S)
    try:
        while chunk := sock.recv(4096):
            if b"408" in chunk.split(b"\r\n", 1)[0]:
                continue  # the body's limit answers 408, then the connection ends
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_clients_are_dropped_and_others_are_still_served(bounded_server: str) -> None:
    url = httpx.URL(bounded_server)
    trickling = []
    for i in range(SLOW_CONNECTIONS):
        sock = socket.create_connection((url.host, url.port))
        if i % 2:  # half send part of their headers and stop (slowloris)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        else:  # half send whole headers and part of a body they never finish
            sock.sendall(
                b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"token": "'
            )
        trickling.append(sock)
    try:
        # Others are served meanwhile.
        assert httpx.get(f"{bounded_server}/healthz", timeout=30).status_code == 200
        dropped = [closed_by_server(sock) for sock in trickling]
        assert all(dropped), f"{dropped.count(False)} of {SLOW_CONNECTIONS} slow connections still open"
        assert httpx.get(f"{bounded_server}/healthz", timeout=30).status_code == 200
    finally:
        for sock in trickling:
            sock.close()
