"""`workers.client` against a real uvicorn: each node runs its own `run_node` loop, as on its own machine."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import pytest
from api_support import ADMIN_TOKEN, tiny_settings

from fedalign import params
from workers.client import ClientError, NodeClient, run_node


def test_nodes_running_their_own_loops_finish_a_federation(
    live_server: str, vector_specs: Callable[[], dict[str, str]]
) -> None:
    specs = vector_specs()
    admin = httpx.Client(base_url=live_server, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    federation = admin.post("/api/v1/federations", json=tiny_settings(aggregator="target")).json()
    fid = federation["id"]
    tokens = {}
    for name, role in (("alpha", "source"), ("beta", "source"), ("omega", "target")):
        response = admin.post(
            f"/api/v1/federations/{fid}/nodes",
            json={"name": name, "role": role, "dataset": specs[name]},
            headers={"Authorization": f"Bearer {federation['join_token']}"},
        )
        tokens[name] = response.json()["token"]
    assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200

    steps: dict[str, int] = {}
    failures: list[BaseException] = []

    def node(name: str) -> None:
        try:
            with NodeClient(live_server, tokens[name]) as client:
                # No data given: each node loads the spec it registered with, on "its own machine".
                steps[name] = run_node(client, poll_interval_s=0.02)
        except BaseException as exc:  # surfaced below, with the node's name
            failures.append(exc)

    threads = [threading.Thread(target=node, args=(name,)) for name in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    # setup + 2 rounds x (disc1, adapt, eval); the target also publishes and runs 3 aggregations a round.
    assert steps == {"alpha": 7, "beta": 7, "omega": 7 + 1 + 2 * 3}
    assert admin.get(f"/api/v1/federations/{fid}").json()["status"] == "finished"
    model = params.from_bytes(admin.get(f"/api/v1/federations/{fid}/model").content)
    assert any(name.startswith("G.") for name in model) and any(name.startswith("T.") for name in model)
    admin.close()


def test_the_client_reports_api_errors_with_their_code_and_message(live_server: str) -> None:
    with NodeClient(live_server, "fa_node_unknown") as client, pytest.raises(ClientError) as caught:
        client.next_task()
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    assert "bearer token" in caught.value.message


def test_the_node_client_and_its_wire_models_load_without_the_server() -> None:
    """A partner's node installs no server: the client and the contract it shares import no backend."""
    probe = (
        "import sys, messaging.node_api, workers.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'backend', 'fastapi', 'sqlalchemy'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
