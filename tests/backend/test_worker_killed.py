"""A node's Celery worker killed (SIGKILL) in the middle of a step, on both brokers.

Real processes as in `test_celery_workers`: the API, the aggregator worker and one worker per node, with
Redis and PostgreSQL, and with the embedded default's filesystem transport and SQLite. The nodes reach
the API through a recording proxy whose gate (`test_faults.Gate`) holds the first upload a node sends in
round 2, so the test knows a step is in flight: claimed, trained, its upload on the wire. The worker that
sent it is killed there and the held upload dropped. A short lease (``FEDALIGN_LEASE_SECONDS``) lets the
sweep release the step within seconds; a new worker for the node claims the same step again, runs it
from the node's saved state and completes it once, and the run ends with the simulator's metrics and
model exactly.
"""

from __future__ import annotations

import contextlib
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, tiny_settings, write_vectors
from process_support import (
    REDIS_URL,
    RUN_TIMEOUT_S,
    Processes,
    RecordingProxy,
    child_env,
    cli,
    flush_redis,
    free_port,
    redis_or_skip,
    scratch_postgres,
    wait_ready,
    wait_until,
)
from test_celery_workers import NODES, served_rounds_http
from test_faults import Gate, forwarded_upload, is_upload, stop

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import simulate

ROUNDS = 3
# Seconds a claimed step stays leased: a killed worker's step is claimable again this soon after.
LEASE_S = 5
# An upload alone, or a submission (the uploads with the completion, as the reference node sends them).
STEP_UPLOAD = re.compile(r"/api/v1/node/steps/(\d+)/(?:uploads/|submit)")


class DroppingGate(Gate):
    """The fault tests' gate, except that a held upload is never forwarded: its sender is dead by the time
    it is released, and the connection is closed without an answer."""

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with self._lock:
            hold = self._armed and forwarded_upload(method, url, kwargs)
            if hold:
                self._armed = False
                self.holds.append(f"{method} {url}")
        if not hold:
            return self.http.request(method, url, **kwargs)
        self.held.set()
        self.released.wait(RUN_TIMEOUT_S)
        raise httpx.RemoteProtocolError("the held upload is dropped: its worker was killed")


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_a_worker_killed_mid_step_has_that_step_claimed_again_and_completed_once(
    tmp_path: Path, broker: str
) -> None:
    specs = {name: write_vectors(tmp_path / f"{name}.npz", seed, shift) for name, _, seed, shift in NODES}
    settings = tiny_settings(name="killed", rounds=ROUNDS)
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            redis_or_skip()
            flush_redis()
            stack.callback(flush_redis)
            database_url = stack.enter_context(scratch_postgres())
            broker_url = REDIS_URL
        else:
            database_url = f"sqlite:///{tmp_path / 'server' / 'fedalign.db'}"
            broker_url = f"filesystem://{tmp_path / 'broker'}"
        processes = Processes(tmp_path)
        stack.callback(processes.stop)
        shared = {
            "FEDALIGN_BROKER_URL": broker_url,
            "FEDALIGN_QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
            "FEDALIGN_BROKER_POLL_S": "0.05",
        }
        server_env = child_env(
            **shared,
            FEDALIGN_DATA_DIR=str(tmp_path / "server"),
            FEDALIGN_DATABASE_URL=database_url,
            FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
            FEDALIGN_SWEEP_INTERVAL_S="0.5",
            FEDALIGN_LEASE_SECONDS=str(LEASE_S),
        )
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        processes.start("api", cli("serve", "--port", str(port), "--log-level", "warning"), server_env)
        processes.start("aggregator", cli("worker", "--aggregator", "--threads", "1"), server_env)
        wait_ready(api_url, processes)
        admin = stack.enter_context(
            httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
        )
        proxy = stack.enter_context(RecordingProxy(api_url))
        gate = DroppingGate(proxy.http)
        proxy.http = gate  # type: ignore[assignment]
        stack.callback(gate.released.set)

        created = admin.post("/api/v1/federations", json=settings)
        assert created.status_code == 201, created.text
        fid = created.json()["id"]
        tokens: dict[str, str] = {}
        for name, role, _, _ in NODES:
            body = {"name": name, "role": role, "dataset": specs[name], "mode": "celery"}
            node = admin.post(f"/api/v1/federations/{fid}/nodes", json=body)
            assert node.status_code == 201, node.text
            tokens[name] = node.json()["token"]

        def start_worker(name: str, label: str) -> None:
            env = child_env(
                **shared, FEDALIGN_DATA_DIR=str(tmp_path / f"node-{name}"), FEDALIGN_NODE_TOKEN=tokens[name]
            )
            argv = cli("worker", "--node", name, "--api", proxy.url, "--threads", "1", "--device", "cpu")
            processes.start(label, argv, env)

        for name, _, _, _ in NODES:
            start_worker(name, name)
        assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
        config = FederationConfig.model_validate(
            {**settings, "nodes": [{"name": n, "role": r, "dataset": specs[n]} for n, r, _, _ in NODES]}
        )
        reference = simulate(config)  # meanwhile

        def status() -> dict[str, Any]:
            processes.assert_alive()
            answer = admin.get(f"/api/v1/federations/{fid}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] not in ("failed", "cancelled"), answer.json()
            return dict(answer.json())

        wait_until(lambda: (status()["round"] or 0) >= 2, RUN_TIMEOUT_S, "round 2", poll_s=0.2)
        gate.arm()  # the next upload any node sends: a step of round 2 (or later) in flight
        wait_until(lambda: status() is not None and gate.held.is_set(), RUN_TIMEOUT_S, "an upload to hold")
        match = STEP_UPLOAD.search(gate.holds[0])
        assert match is not None, gate.holds
        step_id = int(match.group(1))

        def step_row() -> dict[str, Any]:
            for r in range(1, ROUNDS + 1):
                detail = admin.get(f"/api/v1/federations/{fid}/rounds/{r}").json()
                for phase in detail["phases"]:
                    for step in phase["steps"]:
                        if step["id"] == step_id:
                            return {**step, "round": r, "phase": phase["name"]}
            raise AssertionError(f"step {step_id} is not in any round")

        in_flight = step_row()
        victim = in_flight["node"]
        assert (in_flight["status"], in_flight["attempts"]) == ("claimed", 1) and in_flight["round"] >= 2
        stop(processes, victim, signal.SIGKILL)
        gate.released.set()  # the dead worker's upload goes nowhere
        assert step_row()["status"] in ("claimed", "pending"), "nobody completed the killed worker's step"
        start_worker(victim, f"{victim}-again")

        def finished() -> bool:
            return bool(status()["status"] == "finished")

        wait_until(finished, RUN_TIMEOUT_S, "the federation to finish", poll_s=0.5)
        rerun = step_row()
        # Claimed again (a slow run of it past its own short lease may add a claim, never a completion).
        assert rerun["status"] == "done" and rerun["attempts"] >= 2, rerun
        # The same step, claimed again by the new worker (its message sent again by the sweep once the lease
        # expired), and completed exactly once.
        assert f"received step {step_id} for node" in processes.log(f"{victim}-again")
        # The held upload (or submission) was sent again, by the new worker.
        held_path = gate.holds[0].split(" ", 1)[1].removeprefix(proxy.upstream)
        assert [r.path for r in proxy.records if is_upload(r.method, r.path)].count(held_path) == 2
        # And the step's completion reached the server once (a held submission was dropped before it).
        answers = (f"/api/v1/node/steps/{step_id}/complete", f"/api/v1/node/steps/{step_id}/submit")
        completions = [r.path for r in proxy.records if r.path in answers]
        assert len(completions) - (held_path in answers) == 1, completions

        assert served_rounds_http(admin, fid) == {
            r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes
        }
        model = admin.get(f"/api/v1/federations/{fid}/model")
        assert model.status_code == 200, model.text
        assert model.content == params.to_bytes(reference.models["target_model"])
