"""Faults injected into a served federation of real processes, on Redis and PostgreSQL.

The API (``fedalign serve``), the aggregator worker and one Celery worker per node, as in
`test_celery_workers`, with a private ``redis-server`` per test on a port of its own (the machine's shared
Redis is never touched, and a restart of the private one loses every queued message: it keeps nothing on
disk). Each test breaks something mid-round and checks that the federation still finishes with the
in-process simulator's metrics (`fedalign.simulate.simulate`, same config and seed), bit for bit:

* the API server stopped (SIGTERM, later SIGKILL) while a node's upload is in flight, started again on
  the same port and database;
* Redis killed with an aggregation message queued, and again while a node's step is in flight, started
  again empty each time;
* a node that never answers after its setup: phases close at their deadline without it (compared with the
  simulator driven through the same deadlines), and its late upload and completion are refused;
* a node's upload, completion and Celery message replayed after the step completed, and after the run;
* a node's worker SIGKILLed mid-step (its upload held by the proxy) after its heartbeats kept the step past
  its short lease: the step is claimed again by the restarted worker within a bound far below the old
  ten-minute lease, and the run ends with the simulator's metrics.

A worker killed mid-step is covered by `test_worker_killed` (with this file's `Gate`, on both brokers),
a lost message by `test_celery_workers`; the API-level rules these rely on are in `test_api_node_steps`,
`test_api_heartbeats`, `test_api_aggregations` and `test_api_aggregation_failures`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, tiny_settings, write_vectors
from process_support import (
    RUN_TIMEOUT_S,
    START_TIMEOUT_S,
    Processes,
    RecordingProxy,
    child_env,
    cli,
    free_port,
    scratch_postgres,
    wait_ready,
    wait_until,
)
from test_celery_workers import served_rounds_http

from backend.services.messages import CeleryMessenger, StepMessage
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.protocol import Action, Deadline, RunStep
from fedalign.simulate import SimulationResult, Simulator, simulate
from messaging import multipart
from messaging.node_api import HEARTBEATS_PER_LEASE
from workers.client import NodeClient, NodeRunner

# name, role, data seed, domain shift: 2 sources and 1 target
NODES = (("alpha", "source", 1, 0.0), ("beta", "source", 2, 0.3), ("omega", "target", 3, 1.5))
ROUNDS = 3
TERMINAL = ("finished", "failed", "cancelled")
# A step's lease in the worker-kill test (FEDALIGN_LEASE_SECONDS), and how long its step may wait after the
# kill to be claimed again: generous for a loaded machine (a worker's start included), and far below the
# ten minutes a step's lease had to last before heartbeats.
LEASE_S = 3
RECOVERY_BOUND_S = 90
# Tests that hold a phase in aggregation: even these tiny models averaged by the aggregator worker, not by
# the API as soon as the phase's last submission is in.
ON_THE_AGGREGATOR_QUEUE = {"FEDALIGN_INLINE_AGGREGATION_MAX_BYTES": "0"}


# ------------------------------------------------------------------------------------------- processes


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: these tests start (and kill) a private one")
    return binary


def stop(processes: Processes, name: str, sig: signal.Signals) -> None:
    """Send ``sig`` to child ``name``'s process group and wait until it is gone."""
    process = processes.running.pop(name)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"{name} did not exit within 60 s of {sig.name}\n{processes.log(name)[-3000:]}")


@dataclass
class PrivateRedis:
    """A ``redis-server`` of this test's own that keeps nothing on disk: a restart starts it empty."""

    processes: Processes
    port: int = field(default_factory=free_port)
    generation: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        return f"redis-{self.generation}"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2)

    def start(self) -> None:
        self.generation += 1
        folder = self.processes.log_dir / "redis"
        folder.mkdir(exist_ok=True)
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(folder)]
        self.processes.start(self.name, argv, child_env())

        def up() -> bool:
            self.processes.assert_alive()
            client = self.client()
            try:
                return bool(client.ping())
            except Exception:
                return False
            finally:
                client.close()

        wait_until(up, START_TIMEOUT_S, f"redis-server on port {self.port}", poll_s=0.1)

    def kill(self) -> None:
        stop(self.processes, self.name, signal.SIGKILL)

    def queued(self, queue: str) -> int:
        """Messages waiting in ``queue`` (kombu keeps a queue as a list under its name)."""
        client = self.client()
        try:
            return int(client.llen(queue))
        finally:
            client.close()


@dataclass
class Federation:
    id: str
    settings: dict[str, Any]
    specs: dict[str, str]
    tokens: dict[str, str]
    ids: dict[str, str]

    def config(self) -> FederationConfig:
        nodes = [{"name": n, "role": r, "dataset": self.specs[n]} for n, r, _, _ in NODES]
        return FederationConfig.model_validate({**self.settings, "nodes": nodes})


@dataclass
class Cluster:
    """The API, its aggregator worker and node workers on one private Redis and one scratch database."""

    tmp: Path
    processes: Processes
    redis: PrivateRedis
    database_url: str
    server_variables: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    apis: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_env(self) -> dict[str, str]:
        return child_env(
            FEDALIGN_BROKER_URL=self.redis.url,
            FEDALIGN_DATA_DIR=str(self.tmp / "server"),
            FEDALIGN_DATABASE_URL=self.database_url,
            FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
            FEDALIGN_SWEEP_INTERVAL_S="1",
            **self.server_variables,
        )

    def start_api(self) -> str:
        """Start ``fedalign serve`` (again) on the same port and database; returns its process name."""
        self.apis += 1
        name = f"api-{self.apis}"
        argv = cli("serve", "--port", str(self.port), "--log-level", "warning")
        self.processes.start(name, argv, self.server_env())
        wait_ready(self.api_url, self.processes)
        return name

    def start_aggregator(self) -> None:
        self.processes.start("aggregator", cli("worker", "--aggregator", "--threads", "1"), self.server_env())

    def start_worker(self, federation: Federation, name: str, api_url: str | None = None) -> None:
        env = child_env(
            FEDALIGN_BROKER_URL=self.redis.url,
            FEDALIGN_DATA_DIR=str(self.tmp / f"node-{name}"),
            FEDALIGN_NODE_TOKEN=federation.tokens[name],
        )
        argv = cli("worker", "--node", name, "--api", api_url or self.api_url, "--threads", "1")
        self.processes.start(name, [*argv, "--device", "cpu"], env)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        )

    def create(self, admin: httpx.Client, **settings: Any) -> Federation:
        settings = tiny_settings(name="faults", rounds=ROUNDS, **settings)
        specs = {n: write_vectors(self.tmp / f"{n}.npz", seed, shift) for n, _, seed, shift in NODES}
        created = admin.post("/api/v1/federations", json=settings)
        assert created.status_code == 201, created.text
        fid = created.json()["id"]
        tokens, ids = {}, {}
        for name, role, _, _ in NODES:
            body = {"name": name, "role": role, "dataset": specs[name], "mode": "celery"}
            node = admin.post(f"/api/v1/federations/{fid}/nodes", json=body)
            assert node.status_code == 201, node.text
            tokens[name], ids[name] = node.json()["token"], node.json()["id"]
        return Federation(fid, settings, specs, tokens, ids)


@contextlib.contextmanager
def cluster(tmp: Path, **server_variables: str) -> Iterator[Cluster]:
    redis_server_binary()
    processes = Processes(tmp)
    try:
        with scratch_postgres() as database_url:
            redis = PrivateRedis(processes)
            redis.start()
            try:
                yield Cluster(tmp, processes, redis, database_url, server_variables)
            finally:
                processes.stop()  # before the database is dropped under them
    finally:
        processes.stop()


def federation_now(admin: httpx.Client, fid: str) -> dict[str, Any] | None:
    """The federation as the API shows it; None while the API is down or restarting."""
    try:
        response = admin.get(f"/api/v1/federations/{fid}")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_for(
    cluster: Cluster, admin: httpx.Client, fid: str, what: str, check: Any, timeout_s: float = RUN_TIMEOUT_S
) -> dict[str, Any]:
    """Poll the federation until ``check(federation)`` holds; every child process must stay alive."""
    seen: dict[str, Any] = {}

    def ready() -> bool:
        cluster.processes.assert_alive()
        federation = federation_now(admin, fid)
        if federation is None:
            return False
        seen.update(federation)
        assert federation["status"] not in ("failed", "cancelled"), federation
        return bool(check(federation))

    wait_until(ready, timeout_s, what, poll_s=0.2)
    return seen


def wait_finished(cluster: Cluster, admin: httpx.Client, fid: str) -> None:
    wait_for(cluster, admin, fid, "the federation to finish", lambda f: f["status"] == "finished")


def in_round(n: int) -> Any:
    return lambda f: f["status"] in TERMINAL or (f["round"] or 0) >= n


def events_of(admin: httpx.Client, fid: str) -> list[dict[str, Any]]:
    response = admin.get(f"/api/v1/federations/{fid}/events", params={"follow": "false"})
    assert response.status_code == 200, response.text
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def assert_simulators_run(admin: httpx.Client, federation: Federation, reference: SimulationResult) -> None:
    """Every round's metrics and the published model, exactly as the simulator computed them."""
    status = admin.get(f"/api/v1/federations/{federation.id}").json()
    assert status["status"] == "finished", status
    expected = {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    assert served_rounds_http(admin, federation.id) == expected
    model = admin.get(f"/api/v1/federations/{federation.id}/model")
    assert model.status_code == 200, model.text
    assert model.content == params.to_bytes(reference.models["target_model"])


def is_upload(method: str, url: str, body: bytes | None = None, content_type: str = "") -> bool:
    """A step's parameters on their way: a PUT to an upload URL, or a submission (uploads and completion in
    one request, as the reference node sends them); given its ``body``, one that holds parameters (a setup
    step's submission holds the completion alone)."""
    if method == "PUT":
        return "/uploads/" in url
    if method != "POST" or not url.endswith("/submit"):
        return False
    if body is None:
        return True
    return any(part.name != multipart.COMPLETION_PART for part, _ in multipart.parts(body, content_type))


def forwarded_upload(method: str, url: str, kwargs: dict[str, Any]) -> bool:
    """`is_upload` for a request a `RecordingProxy` forwards (its ``headers`` and ``content``)."""
    content_type = httpx.Headers(kwargs.get("headers") or {}).get("content-type", "")
    return is_upload(method, url, kwargs.get("content"), content_type)


class Gate:
    """Stands in for a `RecordingProxy`'s upstream client: once armed, the next upload a node sends is held
    (the node is mid-step, waiting for its answer) until released, then forwarded. While ``upstream_up`` is
    clear, other requests wait for it, as behind a load balancer during a planned restart."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self._lock = threading.Lock()
        self._armed = False
        self.held = threading.Event()
        self.released = threading.Event()
        self.holds: list[str] = []  # "METHOD url" of each request held
        self.upstream_up = threading.Event()
        self.upstream_up.set()

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            self.held.clear()
            self.released.clear()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with self._lock:
            hold = self._armed and forwarded_upload(method, url, kwargs)
            if hold:
                self._armed = False
                self.holds.append(f"{method} {url}")
        if hold:
            self.held.set()
            self.released.wait(RUN_TIMEOUT_S)
        else:
            self.upstream_up.wait(RUN_TIMEOUT_S)
        return self.http.request(method, url, **kwargs)

    def close(self) -> None:
        self.http.close()


# ----------------------------------------------------------------------------------------------- tests


def test_the_api_restarted_mid_phase_resumes_from_the_database_with_the_same_metrics(tmp_path: Path) -> None:
    """The API stops while a node's upload is on its way to it, and starts again on the same port and
    database; the held upload reaches a dead server and its worker retries the step. First a planned
    restart in round 1: SIGTERM (uvicorn's graceful shutdown), the nodes' other requests waiting at the
    proxy meanwhile. Then a crash in round 2: SIGKILL, every request failing until the API is back (the
    workers retry with backoff). The new process carries on from the rows the old one committed."""
    with cluster(tmp_path) as c, c.admin() as admin:
        c.start_api()
        c.start_aggregator()
        federation = c.create(admin)
        with RecordingProxy(c.api_url) as proxy:
            gate = Gate(proxy.http)
            proxy.http = gate  # type: ignore[assignment]
            for name, _, _, _ in NODES:
                c.start_worker(federation, name, api_url=proxy.url)
            gate.arm()  # the first upload: round 1's discriminator (setup uploads nothing)
            assert admin.post(f"/api/v1/federations/{federation.id}/start").status_code == 200
            reference = simulate(federation.config())  # meanwhile

            for api, sig in (("api-1", signal.SIGTERM), ("api-2", signal.SIGKILL)):
                wait_until(
                    lambda: c.processes.assert_alive() or gate.held.is_set(),
                    RUN_TIMEOUT_S,
                    "a node's upload to hold",
                )
                before = federation_now(admin, federation.id)
                assert before is not None and before["status"] == "running", before
                if sig == signal.SIGTERM:
                    gate.upstream_up.clear()
                stop(c.processes, api, sig)
                gate.released.set()  # forwarded to nothing: the node sees its request fail
                c.start_api()
                gate.upstream_up.set()
                if sig == signal.SIGTERM:
                    wait_for(c, admin, federation.id, "round 2", in_round(2))
                    gate.arm()
            wait_finished(c, admin, federation.id)
            assert_simulators_run(admin, federation, reference)
            # Each held upload failed, and its worker sent it again once the API was back.
            uploads = [
                f"{r.method} {proxy.upstream}{r.path}" for r in proxy.records if is_upload(r.method, r.path)
            ]
            assert len(gate.holds) == 2 and all(uploads.count(held) >= 2 for held in gate.holds), gate.holds


def test_redis_restarted_mid_run_loses_its_queues_and_the_sweep_sends_them_again(tmp_path: Path) -> None:
    """Redis dies twice and comes back empty each time. First with round 1's aggregation message queued
    (the aggregator worker is not running yet): the sweep sends it again (FEDALIGN_STEP_RESEND_S=2). Then
    while a node's step is in flight (its submission held by the proxy): the step completes over HTTP
    while Redis is down, so the API cannot send the next steps; Redis comes back, the worker reconnects and
    the sweep sends what was not sent. The run finishes with
    the simulator's metrics."""
    with cluster(tmp_path, FEDALIGN_STEP_RESEND_S="2", **ON_THE_AGGREGATOR_QUEUE) as c, c.admin() as admin:
        c.start_api()
        federation = c.create(admin)
        fid = federation.id
        with RecordingProxy(c.api_url) as proxy:
            gate = Gate(proxy.http)
            proxy.http = gate  # type: ignore[assignment]
            for name, _, _, _ in NODES:
                c.start_worker(federation, name, api_url=proxy.url)
            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
            reference = simulate(federation.config())  # meanwhile

            def aggregations() -> dict[str, dict[str, Any]]:
                items = admin.get(f"/api/v1/federations/{fid}/aggregations").json()["items"]
                return {job["key"]: job for job in items}

            def queued_disc_aggregation() -> bool:
                c.processes.assert_alive()
                job = aggregations().get("r1/disc1/D")
                return job is not None and job["status"] == "pending" and c.redis.queued("aggregator") > 0

            wait_until(queued_disc_aggregation, RUN_TIMEOUT_S, "round 1's aggregation message to be queued")
            c.redis.kill()
            c.redis.start()
            assert c.redis.queued("aggregator") == 0, "a restarted Redis starts empty"
            assert aggregations()["r1/disc1/D"]["status"] == "pending"
            gate.arm()  # the next upload: round 1's adaptation, once the aggregation ran
            c.start_aggregator()

            wait_until(lambda: c.processes.assert_alive() or gate.held.is_set(), RUN_TIMEOUT_S, "an upload")
            step_id = int(gate.holds[0].split("/steps/")[1].split("/")[0])
            phases = admin.get(f"/api/v1/federations/{fid}/rounds/1").json()["phases"]
            node = next(s["node"] for p in phases for s in p["steps"] if s["id"] == step_id)
            c.redis.kill()
            gate.released.set()

            def step_done() -> bool:
                c.processes.assert_alive()
                phases = admin.get(f"/api/v1/federations/{fid}/rounds/1").json()["phases"]
                return any(s["id"] == step_id and s["status"] == "done" for p in phases for s in p["steps"])

            # The step completes over HTTP (the worker's submission, sent in the background) while Redis is
            # down, so the API cannot send the next steps.
            wait_until(step_done, RUN_TIMEOUT_S, f"{node}'s step to complete while Redis is down")
            c.redis.start()
            wait_finished(c, admin, fid)
            assert_simulators_run(admin, federation, reference)
            jobs = aggregations()
            assert all(job["status"] == "done" for job in jobs.values()), jobs
            assert jobs["r1/disc1/D"]["attempts"] == 1, "the lost message was sent again, the job ran once"


class SilentAfterSetup(Simulator):
    """The simulator with one node that finishes its setup step and nothing after: every phase it belongs
    to closes at the deadline once the other participants finished (the protocol's `Deadline`, which the
    server's sweep feeds once a phase is older than ``phase_deadline_s``)."""

    def __init__(self, config: FederationConfig, silent: str, first_silent_round: int = 1) -> None:
        super().__init__(config)
        self.silent = silent
        self.first_silent_round = first_silent_round  # 0: it never answers at all

    def _carry_out(self, action: Action) -> list[Action]:
        if (
            isinstance(action, RunStep)
            and action.step.node == self.silent
            and action.step.round >= self.first_silent_round
        ):
            return self._deadline()
        actions = super()._carry_out(action)
        return actions + self._deadline() if isinstance(action, RunStep) else actions

    def _deadline(self) -> list[Action]:
        state = self.protocol.state
        if state.finished or state.pending or state.round < self.first_silent_round:
            return []
        phase = self.protocol.phase
        waiting = set(self.protocol.participants(state.round, phase)) - set(state.done)
        return self.protocol.handle(Deadline(state.round, phase)) if waiting == {self.silent} else []


def test_a_node_that_never_answers_is_left_out_at_each_deadline_and_its_late_result_refused(
    tmp_path: Path,
) -> None:
    """beta's worker never starts; its setup is run once from here (setup waits long: setup_deadline_s),
    and from round 1 on every phase closes at its deadline without beta (min_sources 1), each closure an
    event naming beta and the round. A result beta sends for a phase that closed without it is refused
    (409 wrong_phase) and changes nothing. The metrics are the simulator's driven through the same
    deadlines."""
    with cluster(tmp_path) as c, c.admin() as admin:
        c.start_api()
        c.start_aggregator()
        federation = c.create(admin, min_sources=1, phase_deadline_s=2, setup_deadline_s=600)
        fid = federation.id
        for name in ("alpha", "omega"):
            c.start_worker(federation, name)
        assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
        with NodeClient(c.api_url, federation.tokens["beta"]) as beta:
            assert NodeRunner(beta).step_once(), "beta's setup step"
            reference = SilentAfterSetup(federation.config(), "beta").run()  # meanwhile
            claimed: list[Any] = []

            def beta_claims() -> bool:  # once alpha and omega finished setup too
                c.processes.assert_alive()
                task = beta.next_task()
                claimed.extend([task] if task is not None else [])
                return task is not None

            wait_until(beta_claims, RUN_TIMEOUT_S, "beta's round 1 step", poll_s=0.2)
            late = claimed[0]  # beta claims round 1's discriminator step, and says nothing more
            assert late is not None and (late.round, late.phase) == (1, "disc1")
            d_state = beta.download_bytes(late.downloads["D"])

            def disc1_closed() -> bool:
                c.processes.assert_alive()
                return any(e["type"] == "phase_closed" for e in events_of(admin, fid))

            wait_until(disc1_closed, RUN_TIMEOUT_S, "round 1's disc1 to close at its deadline")

            def betas() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
                """beta's steps and submissions in round 1's disc1, and beta as the API shows it."""
                disc1 = admin.get(f"/api/v1/federations/{fid}/rounds/1").json()["phases"][0]
                assert disc1["name"] == "disc1" and disc1["state"] != "open", disc1
                return (
                    [s for s in disc1["steps"] if s["node"] == "beta"],
                    [s for s in disc1["submissions"] if s["node"] == "beta"],
                    admin.get(f"/api/v1/federations/{fid}/nodes/beta").json(),
                )

            before = betas()
            auth = {"Authorization": f"Bearer {federation.tokens['beta']}"}
            octets = {**auth, "Content-Type": "application/octet-stream"}
            upload = beta.http.put(late.uploads["D"], content=d_state, headers=octets)
            complete = beta.http.post(late.complete_url, json={"metrics": {}}, headers=auth)
            claim = beta.http.post(f"{c.api_url}/api/v1/node/steps/{late.step_id}/claim", headers=auth)
            for refused in (upload, complete, claim):
                assert refused.status_code == 409, refused.text
                assert refused.json()["error"]["code"] == "wrong_phase", refused.text
            assert betas() == before
            steps, submissions, _ = before
            assert [s["status"] for s in steps] == ["cancelled"] and submissions == []

        wait_finished(c, admin, fid)
        assert_simulators_run(admin, federation, reference)
        events = events_of(admin, fid)
        closed = [e["payload"] for e in events if e["type"] == "phase_closed"]
        # Every phase of rounds 1..R that beta belongs to (the last round's publish is the target's alone).
        phases = [(r, p) for r in range(1, ROUNDS + 1) for p in ("disc1", "adapt", "eval")]
        assert [(p["round"], p["phase"]) for p in closed] == phases
        assert all(p["missing"] == ["beta"] for p in closed), closed
        assert [f"round {p['round']} {p['phase']}: {p['reason']}" for p in closed] == reference.events
        assert "deadline passed without beta" in closed[0]["reason"]
        for r in range(1, ROUNDS + 1):
            detail = admin.get(f"/api/v1/federations/{fid}/rounds/{r}").json()
            beta_steps = [s["status"] for p in detail["phases"] for s in p["steps"] if s["node"] == "beta"]
            assert beta_steps == ["cancelled"] * 3, (r, beta_steps)
        # What the dashboard's rounds table shows: each round's phases that closed without beta, and why.
        rounds = admin.get(f"/api/v1/federations/{fid}/rounds").json()["items"]
        left_out = {r["round"]: [(x["phase"], x["nodes"]) for x in r["left_out"]] for r in rounds}
        for r in range(1, ROUNDS + 1):
            assert left_out[r] == [(p, ["beta"]) for p in ("disc1", "adapt", "eval")], left_out
        assert not any(e["type"] == "submission" and e["payload"]["node"] == "beta" for e in events)


def test_a_source_that_never_joins_is_left_out_at_setups_deadline_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    """beta never answers at all. At setup's deadline (min_sources 1) setup closes without it, beta takes no
    part in any later phase (no steps, no further deadlines), the reason is in the rounds' `left_out` (what
    the dashboard shows), and the run finishes with the simulator's metrics for the same dropout."""
    with cluster(tmp_path) as c, c.admin() as admin:
        c.start_api()
        c.start_aggregator()
        federation = c.create(admin, min_sources=1, phase_deadline_s=2)
        fid = federation.id
        for name in ("alpha", "omega"):
            c.start_worker(federation, name)
        assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
        reference = SilentAfterSetup(federation.config(), "beta", first_silent_round=0).run()  # meanwhile
        wait_finished(c, admin, fid)
        assert_simulators_run(admin, federation, reference)
        rounds = admin.get(f"/api/v1/federations/{fid}/rounds").json()["items"]
        (setup_left_out,) = rounds[0]["left_out"]
        assert setup_left_out["phase"] == "setup" and setup_left_out["nodes"] == ["beta"]
        assert "no part in this run" in setup_left_out["reason"]
        assert all(r["left_out"] == [] for r in rounds[1:]), rounds
        for r in range(1, ROUNDS + 1):
            detail = admin.get(f"/api/v1/federations/{fid}/rounds/{r}").json()
            assert not [s for p in detail["phases"] for s in p["steps"] if s["node"] == "beta"], r


def test_a_replayed_upload_completion_and_message_change_nothing(tmp_path: Path) -> None:
    """alpha's real upload and completion of round 1's discriminator step, as the proxy recorded them, sent
    again over HTTP after the step completed (its phase waits for its aggregation: the aggregator worker is
    not running yet): the same bytes are a no-op (200, stored false), the same completion is answered again
    and changes nothing, anything different is 409 already_completed, and the step's Celery message sent
    again is dropped by alpha's worker. After the run the upload and the claim are 409 federation_finished
    and the completion is still answered as it was. The run's metrics and model are the simulator's."""
    with cluster(tmp_path, **ON_THE_AGGREGATOR_QUEUE) as c, c.admin() as admin:
        c.start_api()
        federation = c.create(admin)
        fid = federation.id
        with RecordingProxy(c.api_url) as proxy:
            for name, _, _, _ in NODES:
                c.start_worker(federation, name, api_url=proxy.url)
            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
            reference = simulate(federation.config())  # meanwhile

            def disc1_aggregating() -> bool:
                c.processes.assert_alive()
                phase = admin.get(f"/api/v1/federations/{fid}/rounds/1")
                return phase.status_code == 200 and phase.json()["phases"][0]["state"] == "aggregating"

            wait_until(disc1_aggregating, RUN_TIMEOUT_S, "round 1's disc1 to wait for its aggregation")
            alphas = f"Bearer {federation.tokens['alpha']}"
            recorded = [r for r in proxy.records if r.headers.get("Authorization") == alphas]

            # alpha's worker sent its step's upload and completion in one submission: replayed here as the
            # separate requests, which must agree with what the submission stored.
            def uploaded(record: Any) -> dict[str, bytes]:
                content_type = httpx.Headers(record.headers)["content-type"]
                return {part.name: data for part, data in multipart.parts(record.body, content_type)}

            # Its first submission with an upload (setup's has the completion alone).
            sent = next(r for r in recorded if is_upload(r.method, r.path) and len(uploaded(r)) > 1)
            step_id = int(sent.path.split("/")[5])
            content_type = httpx.Headers(sent.headers)["content-type"]
            parts = uploaded(sent)
            slot = next(name for name in parts if name != multipart.COMPLETION_PART)
            put = Replayed(f"/api/v1/node/steps/{step_id}/uploads/{slot}", parts[slot])
            done = Replayed(f"/api/v1/node/steps/{step_id}/complete", parts[multipart.COMPLETION_PART])
            resubmitted = httpx.post(
                c.api_url + sent.path,
                content=sent.body,
                headers={"Content-Type": content_type, "Authorization": alphas},
                timeout=60,
            )
            assert resubmitted.status_code == 200 and resubmitted.json()["uploads"][slot]["stored"] is False
            before = (admin.get(f"/api/v1/federations/{fid}/rounds/1").json(), events_of(admin, fid))
            assert [s["status"] for s in before[0]["phases"][0]["steps"]] == ["done"] * 3

            node = httpx.Client(base_url=c.api_url, headers={"Authorization": alphas}, timeout=60)
            octets = {"Content-Type": "application/octet-stream"}
            json_body = {"Content-Type": "application/json"}

            def replay() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
                upload = node.put(put.path, content=put.body, headers=octets)
                complete = node.post(done.path, content=done.body, headers=json_body)
                claim = node.post(f"/api/v1/node/steps/{step_id}/claim")
                return upload, complete, claim

            upload, complete, claim = replay()
            assert upload.status_code == 200 and upload.json()["stored"] is False, upload.text
            assert complete.status_code == 200 and complete.json()["status"] == "done", complete.text
            assert claim.status_code == 409 and claim.json()["error"]["code"] == "already_completed"
            other = {**json.loads(done.body), "metrics": {"disc_loss": 123.0}}
            changed = node.post(done.path, json=other)
            assert changed.status_code == 409 and changed.json()["error"]["code"] == "already_completed"
            tampered = params.to_bytes({k: v + 1 for k, v in params.from_bytes(put.body).items()})
            overwritten = node.put(put.path, content=tampered, headers=octets)
            assert overwritten.status_code == 409, overwritten.text
            assert overwritten.json()["error"]["code"] == "already_completed"

            messenger = CeleryMessenger(c.redis.url, tmp_path / "server")
            messenger.send_step(StepMessage(step_id, federation.ids["alpha"], fid))
            messenger.close()
            wait_until(
                lambda: c.processes.assert_alive() or f"step {step_id} not run" in c.processes.log("alpha"),
                RUN_TIMEOUT_S,
                "alpha's worker to drop the duplicate message",
            )
            assert (admin.get(f"/api/v1/federations/{fid}/rounds/1").json(), events_of(admin, fid)) == before

            c.start_aggregator()
            wait_finished(c, admin, fid)

            def snapshot() -> tuple[Any, list[dict[str, Any]]]:
                return admin.get(f"/api/v1/federations/{fid}/rounds/1").json(), events_of(admin, fid)

            finished = snapshot()
            upload, complete, claim = replay()
            for refused in (upload, claim):
                assert refused.status_code == 409, refused.text
                assert refused.json()["error"]["code"] == "federation_finished", refused.text
            # An identical completion is answered as the first one was, whatever happened since.
            assert complete.status_code == 200 and complete.json()["status"] == "done", complete.text
            assert snapshot() == finished
            node.close()
        assert_simulators_run(admin, federation, reference)


@dataclass(frozen=True)
class Replayed:
    path: str
    body: bytes


def test_a_worker_killed_mid_step_loses_its_step_within_a_lease_and_the_run_keeps_the_simulators_metrics(
    tmp_path: Path,
) -> None:
    """Round 1's first upload is held by the proxy: its worker is mid-step, sending heartbeats. Once more
    heartbeats than fit in one lease went through, the step is still claimed on its first attempt (the
    heartbeats kept it). Then the worker is SIGKILLed and started again on its data directory: the sweep
    releases the step once its lease runs out and sends it again, the restarted worker claims it (its second
    attempt) well within `RECOVERY_BOUND_S`, answers it from the node's saved result, and the run finishes
    with the simulator's metrics."""
    with cluster(tmp_path, FEDALIGN_LEASE_SECONDS=str(LEASE_S)) as c, c.admin() as admin:
        c.start_api()
        c.start_aggregator()
        federation = c.create(admin)
        fid = federation.id
        with RecordingProxy(c.api_url) as proxy:
            gate = Gate(proxy.http)
            proxy.http = gate  # type: ignore[assignment]
            for name, _, _, _ in NODES:
                c.start_worker(federation, name, api_url=proxy.url)
            gate.arm()  # the first upload: round 1's discriminator (setup uploads nothing)
            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
            reference = simulate(federation.config())  # meanwhile
            wait_until(lambda: c.processes.assert_alive() or gate.held.is_set(), RUN_TIMEOUT_S, "an upload")
            step_id = int(gate.holds[0].split("/steps/")[1].split("/")[0])
            beats = f"/api/v1/node/steps/{step_id}/heartbeat"

            def step() -> dict[str, Any]:
                phases = admin.get(f"/api/v1/federations/{fid}/rounds/1").json()["phases"]
                return next(s for p in phases for s in p["steps"] if s["id"] == step_id)

            node = step()["node"]
            held_at = len(proxy.records)
            wait_until(
                lambda: (
                    c.processes.assert_alive()
                    or sum(r.path == beats for r in proxy.records[held_at:]) > HEARTBEATS_PER_LEASE + 1
                ),
                RUN_TIMEOUT_S,
                "heartbeats for longer than one lease",
            )
            kept = step()
            assert (kept["status"], kept["attempts"]) == ("claimed", 1), kept

            stop(c.processes, node, signal.SIGKILL)
            c.start_worker(federation, node, api_url=proxy.url)
            wait_until(
                lambda: c.processes.assert_alive() or step()["attempts"] >= 2,
                RECOVERY_BOUND_S,
                f"{node}'s step to be claimed again after its worker died",
            )
            gate.released.set()  # the dead worker's upload: forwarded late, the same bytes as the re-run's
            wait_finished(c, admin, fid)
            assert_simulators_run(admin, federation, reference)
            again = step()
            assert (again["status"], again["attempts"]) == ("done", 2), again
