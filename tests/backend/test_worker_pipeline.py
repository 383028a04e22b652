"""A Celery worker serving several nodes goes on with another node's step while the server answers a
submission (`workers.background_submit`), and the run still gives the simulator's numbers exactly."""

from __future__ import annotations

import json
from typing import Any

import httpx
from process_support import RUN_TIMEOUT_S, RecordingProxy, child_env, cli, wait_until
from test_faults import NODES, Cluster, Federation, Gate, assert_simulators_run, cluster, wait_finished

from fedalign.simulate import simulate


def start_worker_for_all(c: Cluster, federation: Federation, api_url: str) -> None:
    """One worker serving every node of ``federation``, from a credentials file (as ``fedalign up`` runs)."""
    credentials = c.tmp / "credentials.json"
    nodes = [{"node_id": federation.ids[n], "name": n, "token": federation.tokens[n]} for n, *_ in NODES]
    credentials.write_text(json.dumps({"api": api_url, "nodes": nodes}))
    credentials.chmod(0o600)
    env = child_env(FEDALIGN_BROKER_URL=c.redis.url, FEDALIGN_DATA_DIR=str(c.tmp / "worker"))
    argv = cli("worker", "--credentials", str(credentials), "--threads", "1", "--device", "cpu")
    c.processes.start("worker", argv, env)


def phase_of(admin: httpx.Client, fid: str, step_id: int) -> list[dict[str, Any]]:
    """The steps of the round-1 phase that holds step ``step_id``."""
    phases = admin.get(f"/api/v1/federations/{fid}/rounds/1").json()["phases"]
    return next(p["steps"] for p in phases if any(s["id"] == step_id for s in p["steps"]))


def test_a_worker_runs_the_other_nodes_steps_while_a_submission_is_held(tmp_path: Any) -> None:
    with cluster(tmp_path) as c, c.admin() as admin:
        c.start_api()
        c.start_aggregator()
        federation = c.create(admin)
        fid = federation.id
        with RecordingProxy(c.api_url) as proxy:
            gate = Gate(proxy.http)
            proxy.http = gate  # type: ignore[assignment]
            start_worker_for_all(c, federation, proxy.url)
            gate.arm()  # the first upload: one node's round-1 discriminator step (setup uploads nothing)
            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
            reference = simulate(federation.config())  # meanwhile
            wait_until(lambda: c.processes.assert_alive() or gate.held.is_set(), RUN_TIMEOUT_S, "an upload")
            held = int(gate.holds[0].split("/steps/")[1].split("/")[0])

            def others_claimed() -> bool:
                c.processes.assert_alive()
                others = [s for s in phase_of(admin, fid, held) if s["id"] != held]
                return len(others) == len(NODES) - 1 and all(s["status"] != "pending" for s in others)

            # The held submission's answer has not come, and the worker has gone on with the other nodes.
            wait_until(others_claimed, RUN_TIMEOUT_S, "the worker to claim the other nodes' steps")
            assert next(s for s in phase_of(admin, fid, held) if s["id"] == held)["status"] == "claimed"
            gate.released.set()
            wait_finished(c, admin, fid)
            assert_simulators_run(admin, federation, reference)
