"""A plug-in architecture with a dataset plug-in, served by real processes, and the server never imports
either.

The plug-ins live outside the fedalign package (tests/plugins, tests/data_plugins), as a user's would. The
API (``fedalign serve``) and the server's aggregator worker run with both folders on their PYTHONPATH, so
that they *could* import the plug-ins, and with Python's import log on (``PYTHONPROFILEIMPORTTIME``, which
writes every module a process imports to its log): the test reads in those logs that neither ever did. The
creator builds the initial parameters with ``fedalign init-model`` and uploads them; the nodes run on their
own "machines" with the plug-ins installed: REST nodes (``fedalign node run``) in one federation, Celery
node workers (``fedalign worker --node``) in another. In each, one node runs a user's own steps
(``--steps``, docs' plain-torch example) beside FedAlign's reference nodes. Both equal the simulator
bitwise. The target has no labels at all, so ``target_acc`` is absent everywhere. A third federation has
a source whose copy of the plug-in has a wider layer: its Celery worker stops at setup and reports the
first differing tensor.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, tiny_settings
from process_support import (
    RUN_TIMEOUT_S,
    Processes,
    child_env,
    cli,
    free_port,
    wait_ready,
    wait_until,
)
from test_celery_workers import served_rounds_http

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import simulate

TESTS = Path(__file__).resolve().parents[1]
PLUGIN_PATH = os.pathsep.join(
    [str(TESTS / "plugins"), str(TESTS / "data_plugins"), str(TESTS.parent / "examples")]
)
PLUGIN_MODULES = ("fedalign_test_plugins", "fedalign_test_loaders", "custom_steps")
# The node of each federation that runs the user's own steps (docs/node-steps.md's example).
OWN_STEPS = {"rest": "alpha", "celery": "omega"}
STEPS = "custom_steps.plain_torch_steps:PlainTorchSteps"
LOADER = "python:fedalign_test_loaders:gaussians"
SETTINGS = tiny_settings(architecture="fedalign_test_plugins.architectures:vector_net")
NODES = (
    ("alpha", "source", f"{LOADER}?seed=1"),
    ("beta", "source", f"{LOADER}?seed=2&shift=0.3"),
    # No labels at all: no y for training, no labelled evaluation split.
    ("omega", "target", f"{LOADER}?seed=3&shift=1.5&labelled=no"),
)
FEDERATIONS = {"rest": {"aggregator": "server"}, "celery": {"aggregator": "target"}, "mismatch": {}}
MISMATCH = "tensor G.0.weight has shape [12, 8] in the federation, [24, 8] on this node"


@dataclass
class Served:
    ids: dict[str, str]
    admin: httpx.Client
    processes: Processes

    def get(self, path: str) -> Any:
        response = self.admin.get(path)
        assert response.status_code == 200, response.text
        return response.json()


def write_config(path: Path) -> Path:
    lines = [
        f'name = "{SETTINGS["name"]}"',
        f'architecture = "{SETTINGS["architecture"]}"',
        f"seed = {SETTINGS['seed']}",
        f"rounds = {SETTINGS['rounds']}",
        "[model]",
        "num_classes = 3",
        "input_shape = [8]",
        "hidden = 8",
        "[hyperparameters]",
        *(f"{k} = {v}" for k, v in SETTINGS["hyperparameters"].items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("plugins")
    processes = Processes(tmp)
    shared = {
        "FEDALIGN_BROKER_URL": f"filesystem://{tmp / 'broker'}",
        "FEDALIGN_QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        "FEDALIGN_BROKER_POLL_S": "0.05",
    }
    # The server side: the plug-ins importable, and every import it makes written to its log.
    server_env = child_env(
        **shared,
        FEDALIGN_DATA_DIR=str(tmp / "server"),
        FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
        FEDALIGN_SWEEP_INTERVAL_S="1",
        PYTHONPATH=PLUGIN_PATH,
        PYTHONPROFILEIMPORTTIME="1",
    )
    # The creator's machine, with the plug-in installed, builds the initial parameters.
    init = tmp / "init.safetensors"
    made = subprocess.run(
        cli("init-model", str(write_config(tmp / "federation.toml")), "-o", str(init)),
        env=child_env(PYTHONPATH=PLUGIN_PATH),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        processes.start("api", cli("serve", "--port", str(port), "--log-level", "warning"), server_env)
        processes.start("aggregator", cli("worker", "--aggregator", "--threads", "1"), server_env)
        wait_ready(url, processes)
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
        ids: dict[str, str] = {}
        for name, overrides in FEDERATIONS.items():
            created = admin.post("/api/v1/federations", json={**SETTINGS, "name": name, **overrides})
            assert created.status_code == 201, created.text
            fid = ids[name] = created.json()["id"]
            manifest = admin.put(
                f"/api/v1/federations/{fid}/initial-model/manifest",
                content=(tmp / "init.manifest.json").read_bytes(),
                headers={"Content-Type": "application/json"},
            )
            assert manifest.status_code == 200, manifest.text
            parameters = admin.put(
                f"/api/v1/federations/{fid}/initial-model/parameters",
                content=init.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert parameters.status_code == 200 and parameters.json()["ready"], parameters.text
            mode = "rest" if name == "rest" else "celery"
            for node, role, spec in NODES:
                body = {"name": node, "role": role, "dataset": spec, "mode": mode}
                registered = admin.post(f"/api/v1/federations/{fid}/nodes", json=body)
                assert registered.status_code == 201, registered.text
                token = registered.json()["token"]
                if name == "mismatch" and node != "beta":
                    continue  # beta's failure stops the run at setup: the others need not run
                node_env = child_env(
                    **shared,
                    FEDALIGN_DATA_DIR=str(tmp / f"{name}-{node}"),
                    FEDALIGN_NODE_TOKEN=token,
                    PYTHONPATH=PLUGIN_PATH,
                )
                if name == "mismatch":
                    node_env["FEDALIGN_TEST_PLUGIN_VARIANT"] = "wider"  # another copy of the plug-in
                options = ["--api", url, "--threads", "1", "--device", "cpu"]
                if OWN_STEPS.get(name) == node:
                    options += ["--steps", STEPS]
                if mode == "rest":
                    argv = cli("node", "run", *options, "--poll-interval", "0.05")
                else:
                    argv = cli("worker", "--node", node, *options)
                processes.start(f"{name}-{node}", argv, node_env)
            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200

        def settled() -> bool:
            processes.assert_alive(may_finish={n for n in processes.running if n.startswith("rest-")})
            states = {n: admin.get(f"/api/v1/federations/{fid}").json()["status"] for n, fid in ids.items()}
            return states["rest"] == states["celery"] == "finished" and states["mismatch"] == "stalled"

        wait_until(settled, RUN_TIMEOUT_S, "the federations to finish (and the mismatched one to stall)", 0.5)
        yield Served(ids, admin, processes)
        admin.close()
    finally:
        processes.stop()


def simulated(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> dict[int, dict[str, Any]]:
    """The simulator's rounds for the same federation (this process imports the plug-ins: it is no server)."""
    for folder in PLUGIN_PATH.split(os.pathsep):
        monkeypatch.syspath_prepend(folder)
    nodes = [{"name": n, "role": r, "dataset": d} for n, r, d in NODES]
    config = FederationConfig.model_validate({**SETTINGS, **overrides, "nodes": nodes})
    reference = simulate(config)
    return {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes} | {
        -1: {"model": params.to_bytes(reference.models["target_model"])}
    }


@pytest.mark.parametrize("federation", ["rest", "celery"])
def test_a_plugin_federation_on_rest_and_celery_nodes_equals_the_simulation_bitwise(
    served: Served, federation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid = served.ids[federation]
    assert STEPS in served.processes.log(f"{federation}-{OWN_STEPS[federation]}")
    expected = simulated(monkeypatch, name=federation, **FEDERATIONS[federation])
    assert {
        **served_rounds_http(served.admin, fid),
        -1: {"model": served.admin.get(f"/api/v1/federations/{fid}/model").content},
    } == expected


def test_the_server_never_imports_the_plugins(served: Served) -> None:
    for process in ("api", "aggregator"):
        log = served.processes.log(process)
        imported = {
            line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")
        }
        assert "backend.app" in imported or "backend.celery_app" in imported, f"{process}: no import log"
        plugins = sorted(m for m in imported if m.split(".")[0] in PLUGIN_MODULES)
        assert not plugins, f"the {process} process imported a user's code: {plugins}"


def test_a_target_without_labels_has_no_target_accuracy_anywhere(served: Served) -> None:
    for federation in ("rest", "celery"):
        fid = served.ids[federation]
        names = {s["name"] for s in served.get(f"/api/v1/federations/{fid}/metrics")["series"]}
        assert "target_acc" not in names and {"disc_acc", "source_val_acc"} <= names
        header = next(
            csv.reader(io.StringIO(served.admin.get(f"/api/v1/federations/{fid}/metrics.csv").text))
        )
        assert "target_acc" not in header and "disc_acc" in header
        listed = next(f for f in served.get("/api/v1/federations")["items"] if f["id"] == fid)
        assert listed["progress"]["target_acc"] is None and listed["progress"]["disc_acc"] is not None
        omega = served.get(f"/api/v1/federations/{fid}/nodes/omega")
        assert omega["samples"]["test"] == 0


def test_a_celery_node_whose_plugin_has_a_different_layer_stops_at_setup_naming_the_tensor(
    served: Served,
) -> None:
    fid = served.ids["mismatch"]
    beta = served.get(f"/api/v1/federations/{fid}/nodes/beta")
    assert beta["state"] == "failed" and MISMATCH in beta["failure"]
    federation = served.get(f"/api/v1/federations/{fid}")
    assert MISMATCH in federation["stall_reason"]
    assert MISMATCH in served.processes.log("mismatch-beta"), "the node's own log says it too"
