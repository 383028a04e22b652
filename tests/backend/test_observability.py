"""Operations: the Prometheus metrics at /metrics move by exactly what a federation did, the queue gauges
read the database and the real broker, the metrics token guards them, and `fedalign serve` with
FEDALIGN_LOG_FORMAT=json writes JSON lines that say which federation, round and node they are about and
never hold a token."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, Api, drive, runners_for, tiny_settings, write_vectors
from fastapi.testclient import TestClient
from process_support import (
    REDIS_URL,
    START_TIMEOUT_S,
    child_env,
    cli,
    flush_redis,
    free_port,
    redis_or_skip,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from backend.app import create_app
from backend.models import Event, Step
from backend.settings import Settings
from messaging import multipart
from workers.client import NodeClient, NodeRunner

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


# The requests of a run and the labels they must be counted under: the route's template, never the path.
TEMPLATES = {
    r"/api/v1/node/federation": "/api/v1/node/federation",
    r"/api/v1/node/manifest": "/api/v1/node/manifest",  # each node's check at setup
    r"/api/v1/node/task": "/api/v1/node/task",
    r"/api/v1/node/artifacts/.+": "/api/v1/node/artifacts/{key:path}",
    r"/api/v1/node/steps/\d+/uploads/\w+": "/api/v1/node/steps/{step_id}/uploads/{slot}",
    r"/api/v1/node/steps/\d+/complete": "/api/v1/node/steps/{step_id}/complete",
    r"/api/v1/node/steps/\d+/submit": "/api/v1/node/steps/{step_id}/submit",
    r"/api/v1/federations/[0-9a-f-]+/start": "/api/v1/federations/{federation_id}/start",
}


def route_template(path: str) -> str:
    matched = [template for pattern, template in TEMPLATES.items() if re.fullmatch(pattern, path)]
    assert len(matched) == 1, f"no template for {path}"
    return matched[0]


def test_metrics_move_by_what_a_federation_did(api: Api, vector_specs: Callable[[], dict[str, str]]) -> None:
    sent: list[httpx.Response] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        sent.append(response)

    federation, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings())
    fid = federation["id"]
    before = scrape(api.request("GET", "/metrics", token=None).text)
    api.client.event_hooks["response"].append(keep)
    api.start(fid)
    drive(runners_for(api, tokens))
    api.client.event_hooks["response"].remove(keep)
    after = scrape(api.request("GET", "/metrics", token=None).text)
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"

    # Requests: every one counted once, under its route template, method and status.
    requests = Counter(
        (r.request.method, route_template(r.request.url.path), str(r.status_code)) for r in sent
    )
    assert requests[("POST", "/api/v1/node/steps/{step_id}/submit", "200")] > 0
    for (method, route, status), count in requests.items():
        labels = {"method": method, "route": route}
        counted = delta(before, after, "fedalign_http_requests_total", **labels, status=status)
        assert counted == count, (method, route, status)
        assert delta(before, after, "fedalign_http_request_duration_seconds_count", **labels) >= count

    # Uploads and downloads: the bytes that crossed the wire, per slot and in all, whether alone (a PUT, a
    # download) or with others (a submission's parts, a task's inline downloads).
    uploads = [
        (r.request.url.path.rsplit("/", 1)[1], len(r.request.content))
        for r in sent
        if r.request.method == "PUT" and r.status_code == 200
    ]
    for r in sent:
        if r.request.url.path.endswith("/submit") and r.status_code == 200:
            parts = multipart.parts(r.request.content, r.request.headers["content-type"])
            uploads += [(p.name, len(data)) for p, data in parts if p.name != multipart.COMPLETION_PART]
    assert uploads
    for slot in {slot for slot, _ in uploads}:
        assert delta(before, after, "fedalign_uploads_total", slot=slot) == sum(s == slot for s, _ in uploads)
        sent_bytes = sum(size for s, size in uploads if s == slot)
        assert delta(before, after, "fedalign_upload_bytes_total", slot=slot) == sent_bytes
    downloads = [
        len(r.content) for r in sent if "/node/artifacts/" in r.request.url.path and r.status_code == 200
    ]
    for r in sent:
        if r.request.url.path.endswith("/task") and r.status_code == 200:
            downloads += [len(base64.b64decode(data)) for data in r.json()["inline"].values()]
    assert delta(before, after, "fedalign_downloads_total") == len(downloads) > 0
    assert delta(before, after, "fedalign_download_bytes_total") == sum(downloads)

    with api.services.db.read() as session:
        opened = Counter(
            e.payload["phase"]
            for e in session.scalars(select(Event).where(Event.federation_id == fid, Event.type == "phase"))
        )
        done = Counter(
            (s.kind, s.node_id)
            for s in session.scalars(select(Step).where(Step.federation_id == fid, Step.status == "done"))
        )
    names = _node_ids(api, fid)
    # Phases: each phase the run opened was closed (the run finished) and timed once.
    assert set(opened) >= {"setup", "disc1", "adapt", "eval"}
    for phase, count in opened.items():
        closed = delta(before, after, "fedalign_phase_duration_seconds_count", phase=phase)
        assert closed == count, phase
    assert delta(before, after, "fedalign_phase_duration_seconds_sum") > 0
    # Steps: one duration per completed step, by kind and node name.
    for (kind, node_id), count in done.items():
        node = names[node_id]
        assert delta(before, after, "fedalign_step_duration_seconds_count", kind=kind, node=node) == count
    assert delta(before, after, "fedalign_step_duration_seconds_count") == sum(done.values())

    # The gauges read the database: nothing is open any more.
    assert total(after, "fedalign_steps_open") == 0
    assert total(after, "fedalign_federations", status="finished") == 1


def _node_ids(api: Api, federation_id: str) -> dict[str, str]:
    nodes = api.ok("GET", f"/api/v1/federations/{federation_id}/nodes")["items"]
    return {n["id"]: n["name"] for n in nodes}


@pytest.fixture(params=["redis", "filesystem"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "filesystem":
        yield "filesystem://"
        return
    redis_or_skip()
    flush_redis()
    yield REDIS_URL
    flush_redis()


def test_queue_gauges_read_the_database_and_the_broker(tmp_path: Path, broker_url: str) -> None:
    prefix = f"obs{uuid.uuid4().hex[:8]}."
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        admin_token=ADMIN_TOKEN,
        broker_url=broker_url,
        queue_prefix=prefix,
        sweep_interval_s=3600,
    )
    with TestClient(create_app(settings)) as client:
        api = Api(client)
        federation = api.create_federation()
        fid = federation["id"]
        tokens = {}
        for name, role in (("alpha", "source"), ("beta", "source"), ("omega", "target")):
            node = api.ok(
                "POST",
                f"/api/v1/federations/{fid}/nodes",
                201,
                json={"name": name, "role": role, "dataset": "npz:/nowhere.npz", "mode": "celery"},
            )
            tokens[name] = node["token"]
        ids = {n: i for i, n in _node_ids(api, fid).items()}
        idle = scrape(api.request("GET", "/metrics", token=None).text)
        assert total(idle, "fedalign_steps_open") == 0
        assert total(idle, "fedalign_federations", status="created") == 1
        # A federation that cannot run yet has no node queues worth listing; the aggregator's is there.
        assert total(idle, "fedalign_broker_up") == 1
        assert total(idle, "fedalign_broker_queue_messages", queue=f"{prefix}aggregator") == 0
        assert total(idle, "fedalign_broker_queue_messages", node="alpha") == 0

        api.start(fid)
        started = scrape(api.request("GET", "/metrics", token=None).text)
        # Three setup steps, each a row waiting and a message in its node's queue.
        assert total(started, "fedalign_steps_open", status="pending") == 3
        assert total(started, "fedalign_steps_open", status="claimed") == 0
        for name, node_id in ids.items():
            queue = f"{prefix}node.{node_id}"
            assert total(started, "fedalign_broker_queue_messages", queue=queue, node=name) == 1, name
        assert total(started, "fedalign_broker_queue_messages", queue=f"{prefix}aggregator") == 0

        assert api.task(tokens["alpha"]) is not None  # a poll claims alpha's step
        claimed = scrape(api.request("GET", "/metrics", token=None).text)
        assert total(claimed, "fedalign_steps_open", status="pending") == 2
        assert total(claimed, "fedalign_steps_open", status="claimed") == 1


def test_a_broker_that_does_not_answer_reads_as_down_not_as_an_error(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        admin_token=ADMIN_TOKEN,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        sweep_interval_s=3600,
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    samples = scrape(response.text)
    assert total(samples, "fedalign_broker_up") == 0
    assert total(samples, "fedalign_steps_open", status="pending") == 0


def test_the_metrics_token_guards_metrics_and_nothing_else(tmp_path: Path) -> None:
    metrics_token = "metrics-token-0123456789abcdef"
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        admin_token=ADMIN_TOKEN,
        metrics_token=metrics_token,
        sweep_interval_s=3600,
    )
    with TestClient(create_app(settings)) as client:
        refused = [
            client.get("/metrics"),
            client.get("/metrics", headers={"Authorization": "Bearer wrong-token"}),
            client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        ]
        allowed = client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
        document = client.get("/openapi.json").json()
        health = client.get("/healthz")
    for response in refused:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain")
    assert "fedalign_http_requests_total" in allowed.text
    assert "/metrics" not in document["paths"], "/metrics is for Prometheus, not in the API's document"
    assert health.status_code == 200  # the token changes nothing else


# --------------------------------------------------------------------------------------------- JSON logs


@pytest.fixture
def json_logged_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """`fedalign serve` with JSON logs; yields its URL and its standard error and output files."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_env(
        FEDALIGN_DATA_DIR=str(tmp_path / "data"),
        FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
        FEDALIGN_METRICS_TOKEN=METRICS_TOKEN,
        FEDALIGN_LOG_FORMAT="json",
    )
    stderr, stdout = tmp_path / "serve.err", tmp_path / "serve.out"
    with open(stderr, "wb") as err, open(stdout, "wb") as out:
        server = subprocess.Popen(
            cli("serve", "--host", "127.0.0.1", "--port", str(port)), env=env, stdout=out, stderr=err
        )
    try:

        def up() -> bool:
            assert server.poll() is None, stderr.read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, START_TIMEOUT_S, "fedalign serve", poll_s=0.2)
        yield url, stderr, stdout
    finally:
        server.terminate()
        server.wait(timeout=30)


METRICS_TOKEN = "metrics-token-fedcba9876543210"
FIELDS = {"timestamp", "level", "logger", "message", "federation", "round", "node"}


def test_json_logs_say_which_federation_round_and_node_and_hold_no_token(
    json_logged_server: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, stderr, stdout = json_logged_server
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    secrets = [ADMIN_TOKEN, METRICS_TOKEN]
    with httpx.Client(base_url=url, headers=admin, timeout=30) as http:
        federation = http.post("/api/v1/federations", json=tiny_settings()).json()
        fid = federation["id"]
        secrets.append(federation["join_token"])
        tokens = {}
        nodes = (("alpha", "source", 0.0), ("beta", "source", 0.3), ("omega", "target", 1.5))
        for seed, (name, role, shift) in enumerate(nodes, start=1):
            spec = write_vectors(tmp_path / f"{name}.npz", seed, shift)
            node = http.post(
                f"/api/v1/federations/{fid}/nodes", json={"name": name, "role": role, "dataset": spec}
            )
            assert node.status_code == 201, node.text
            tokens[name] = node.json()["token"]
        secrets += tokens.values()
        assert http.post(f"/api/v1/federations/{fid}/start").status_code == 200
        runners = {n: NodeRunner(NodeClient(url, t)) for n, t in tokens.items()}
        drive(runners)
        for runner in runners.values():
            runner.client.close()
        assert http.get(f"/api/v1/federations/{fid}").json()["status"] == "finished"
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200
        assert total(scrape(scraped.text), "fedalign_step_duration_seconds_count", node="omega") > 0

    def records() -> list[dict[str, Any]]:
        lines = [line for line in stderr.read_text().splitlines() if line.strip()]
        return [json.loads(line) for line in lines]  # every line of the log is one JSON object

    wait_until(lambda: any("publish step" in r["message"] for r in records()), 10, "the last step's record")
    logged = records()
    for record in logged:
        assert record.keys() >= FIELDS, record
    # The node's requests (uvicorn's access lines) say whose they are; a step's requests say its round.
    node_lines = [r for r in logged if r["logger"] == "uvicorn.access" and "/api/v1/node/" in r["message"]]
    assert node_lines and all(r["federation"] == fid and r["node"] in tokens for r in node_lines)
    step_lines = [
        r for r in node_lines if any(p in r["message"] for p in ("/complete", "/uploads/", "/submit"))
    ]
    assert step_lines and all(isinstance(r["round"], int) for r in step_lines)
    # A completed step's own record, and each closed phase's.
    steps = [r for r in logged if r["logger"] == "fedalign.backend" and " step of round " in r["message"]]
    assert {r["node"] for r in steps} == set(tokens)
    assert all(r["federation"] == fid and r["round"] == int(r["message"].split()[4]) for r in steps)
    phases = [r for r in logged if r["logger"] == "fedalign.backend" and " closed after " in r["message"]]
    assert phases and all(r["federation"] == fid and isinstance(r["round"], int) for r in phases)
    # Management requests about the federation name it too.
    assert any(r["federation"] == fid and f"/federations/{fid}/start" in r["message"] for r in logged)

    text = stderr.read_text() + stdout.read_text()
    leaked = [secret[:12] + "..." for secret in secrets if secret in text]
    assert not leaked, f"tokens in the logs: {leaked}"
