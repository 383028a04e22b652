"""A federation's initial parameters and manifest document: built by the server for a built-in architecture,
uploaded by the creator (what ``fedalign init-model`` wrote) for a plug-in, which the server never builds.
Every upload of the run is checked against the stored document; the nodes check their own models against
it at setup.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from api_support import RUN_TIMEOUT_S, Api, drive, runners_for, tiny_settings
from test_api_end_to_end import served_rounds

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.initial_parameters import InitialParameters, build_initial
from fedalign.simulate import simulate
from workers.client import NodeClient, NodeRunner

PLUGIN = "fedalign_test_plugins.architectures:vector_net"
OCTETS = {"Content-Type": "application/octet-stream"}
SAMPLES = {"train": 40, "val": 10, "test": 10}


def plugin_settings(**overrides: Any) -> dict[str, Any]:
    return tiny_settings(architecture=PLUGIN, **overrides)


def init_model(settings: dict[str, Any]) -> InitialParameters:
    """What the creator's `fedalign init-model` writes, where the plug-in is installed."""
    return build_initial(FederationConfig.model_validate(settings))


def upload(api: Api, fid: str, initial: InitialParameters) -> dict[str, Any]:
    base = f"/api/v1/federations/{fid}/initial-model"
    api.ok("PUT", f"{base}/manifest", json=initial.manifest.to_json())
    return api.ok("PUT", f"{base}/parameters", content=initial.to_bytes(), headers=OCTETS)


def error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def test_a_builtin_federation_is_created_with_the_initial_model_init_model_would_write(api: Api) -> None:
    federation = api.create_federation()
    expected = init_model(tiny_settings())
    state = federation["initial_model"]
    assert state["ready"] and state["missing"] == []
    assert state["sha256"] == hashlib.sha256(expected.to_bytes()).hexdigest()
    manifest = api.ok("GET", f"/api/v1/federations/{federation['id']}/manifest")
    assert (manifest["architecture"], manifest["version"], manifest["builtin"]) == ("mlp", "1", True)
    assert {m: manifest["models"][m] for m in "GTD"} == expected.manifest.to_json()["models"]
    local = [t["name"] for t in manifest["models"]["G"]["tensors"] if not t["shared"]]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert local == [f"{layer}.{k}" for layer in (1, 4) for k in stats], "BatchNorm statistics stay local"
    published = [t["name"] for t in manifest["published"]["tensors"]]
    assert (
        manifest["published"]["slot"] == "model"
        and published[0] == "G.0.weight"
        and "T.0.weight" in published
    )


def test_a_plugin_federation_starts_only_once_its_creator_uploaded_both_files(
    api: Api, test_plugins: Path
) -> None:
    federation, tokens = api.federation_with_nodes(**plugin_settings())
    fid = federation["id"]
    assert federation["initial_model"] == {
        "ready": False,
        "missing": ["manifest", "parameters"],
        "sha256": None,
        "size": None,
    }
    absent = api.request("GET", f"/api/v1/federations/{fid}/manifest")
    assert absent.status_code == 409 and error(absent)["code"] == "no_model_manifest"
    refused = api.request("POST", f"/api/v1/federations/{fid}/start")
    assert refused.status_code == 409 and error(refused)["code"] == "no_initial_model"
    assert error(refused)["details"] == {"missing": ["manifest", "parameters"]}
    assert "never imports" in error(refused)["message"] and "fedalign init-model" in error(refused)["message"]

    initial = init_model(plugin_settings())
    base = f"/api/v1/federations/{fid}/initial-model"
    early = api.request("PUT", f"{base}/parameters", content=initial.to_bytes(), headers=OCTETS)
    assert early.status_code == 409 and error(early)["code"] == "no_model_manifest"
    assert api.ok("PUT", f"{base}/manifest", json=initial.manifest.to_json())["missing"] == ["parameters"]
    half = api.request("POST", f"/api/v1/federations/{fid}/start")
    assert half.status_code == 409 and error(half)["details"] == {"missing": ["parameters"]}
    state = api.ok("PUT", f"{base}/parameters", content=initial.to_bytes(), headers=OCTETS)
    assert state["ready"] and state["sha256"] == hashlib.sha256(initial.to_bytes()).hexdigest()
    assert api.ok("GET", f"/api/v1/federations/{fid}/manifest")["builtin"] is False

    api.start(fid)
    late = api.request("PUT", f"{base}/manifest", json=initial.manifest.to_json())
    assert late.status_code == 409 and error(late)["code"] == "already_started"
    # Round 0 is the uploaded file, every tensor of it, split by model.
    task = api.task(tokens["alpha"])
    assert task is not None and task["kind"] == "setup"
    for model, url in task["downloads"].items():
        stored = api.request("GET", url, token=tokens["alpha"]).content
        assert stored == params.to_bytes(initial.models[model]), model
    node_view = api.ok("GET", "/api/v1/node/manifest", token=tokens["alpha"])
    assert node_view == api.ok("GET", f"/api/v1/federations/{fid}/manifest")


def test_a_running_plugin_federations_uploads_are_checked_against_its_stored_document(
    api: Api, test_plugins: Path
) -> None:
    federation, tokens = api.federation_with_nodes(**plugin_settings())
    fid = federation["id"]
    initial = init_model(plugin_settings())
    upload(api, fid, initial)
    api.start(fid)
    for token in tokens.values():
        task = api.task(token)
        assert task is not None
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    task = api.task(tokens["alpha"])
    assert task is not None and set(task["uploads"]) == {"D"}
    d = initial.models["D"]
    wrong = {**d, "0.weight": d["0.weight"][:, :3].clone()}
    refused = api.request("PUT", task["uploads"]["D"], token=tokens["alpha"], content=params.to_bytes(wrong))
    assert refused.status_code == 422 and error(refused)["code"] == "shape_mismatch"
    stored = api.request("PUT", task["uploads"]["D"], token=tokens["alpha"], content=params.to_bytes(d))
    assert stored.status_code == 200, stored.text


def test_a_clone_takes_the_uploaded_initial_model_when_its_models_are_the_same(
    api: Api, test_plugins: Path
) -> None:
    federation, _ = api.federation_with_nodes(**plugin_settings())
    fid = federation["id"]
    initial = init_model(plugin_settings())
    sha = upload(api, fid, initial)["sha256"]
    before = api.ok("POST", f"/api/v1/federations/{fid}/clone", 201, json={"algorithm": "fedavg"})
    assert before["initial_model"]["ready"] and before["initial_model"]["sha256"] == sha
    reseeded = api.ok("POST", f"/api/v1/federations/{fid}/clone", 201, json={"seed": 99})
    assert reseeded["initial_model"]["missing"] == ["manifest", "parameters"], "another seed, other weights"
    api.start(fid)
    after = api.ok("POST", f"/api/v1/federations/{fid}/clone", 201, json={})
    assert after["initial_model"]["sha256"] == sha, "put together again from round 0 once the file is gone"
    api.start(after["id"])


def test_a_plugin_federation_served_equals_the_simulation_bitwise(
    api: Api, vector_specs: Any, test_plugins: Path
) -> None:
    specs = vector_specs()
    settings = plugin_settings(aggregator="target")
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    upload(api, fid, init_model(settings))
    api.start(fid)
    drive(runners_for(api, tokens))
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    nodes = [
        {"name": n, "role": r, "dataset": specs[n]}
        for n, r in (("alpha", "source"), ("beta", "source"), ("omega", "target"))
    ]
    reference = simulate(FederationConfig.model_validate({**settings, "nodes": nodes}))
    assert served_rounds(api, fid) == {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    model = api.request("GET", f"/api/v1/federations/{fid}/model").content
    assert model == params.to_bytes(reference.models["target_model"])


def test_a_node_whose_plugin_has_a_different_layer_stops_at_setup_and_says_which(
    api: Api, vector_specs: Any, test_plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    federation, tokens = api.federation_with_nodes(vector_specs(), **plugin_settings())
    fid = federation["id"]
    upload(api, fid, init_model(plugin_settings()))
    api.start(fid)
    runners = runners_for(api, {n: t for n, t in tokens.items() if n != "beta"})
    monkeypatch.setenv("FEDALIGN_TEST_PLUGIN_VARIANT", "wider")  # beta's machine has another copy
    runners["beta"] = NodeRunner(NodeClient("http://testserver", tokens["beta"], http=api.client))
    monkeypatch.delenv("FEDALIGN_TEST_PLUGIN_VARIANT")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "running":
        assert time.monotonic() < deadline
        if not any([r.step_once() for r in runners.values()]):
            time.sleep(0.01)
    expected = "tensor G.0.weight has shape [12, 8] in the federation, [24, 8] on this node"
    beta = api.ok("GET", f"/api/v1/federations/{fid}/nodes/beta")
    assert beta["state"] == "failed" and expected in beta["failure"]
    assert beta["failure"].startswith("ManifestMismatch: this node's models do not match the federation's")
    shown = api.ok("GET", f"/api/v1/federations/{fid}")
    assert shown["status"] == "stalled" and expected in shown["stall_reason"], "all sources are required"
