"""Nodes played over HTTP give exactly what the in-process simulator gives for the same config and seed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from api_support import Api, drive, runners_for, tiny_settings

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import simulate


def served_rounds(api: Api, federation_id: str) -> dict[int, dict[str, Any]]:
    series = api.ok("GET", f"/api/v1/federations/{federation_id}/metrics")["series"]
    rounds: dict[int, dict[str, Any]] = {}
    for s in series:
        for point in s["points"]:
            record = rounds.setdefault(point["round"], {"round": point["round"], "metrics": {}, "nodes": {}})
            target = record["metrics"] if s["node"] is None else record["nodes"].setdefault(s["node"], {})
            target[s["name"]] = point["value"]
    return rounds


# The server step (hyperparameters.server_step) steps G's average past the G_agg every copy started from.
SERVER_STEP = {"local_steps": 2, "disc_steps": 2, "batch_size": 8, "source_extractor": "restart"}


@pytest.mark.parametrize(
    ("aggregator", "hyperparameters"),
    [
        ("server", None),
        ("target", None),
        ("server", {**SERVER_STEP, "server_step": "target_share"}),
        ("target", {**SERVER_STEP, "server_step": "target_share"}),
    ],
)
def test_a_served_federation_equals_the_simulation_bitwise(
    api: Api,
    vector_specs: Callable[[], dict[str, str]],
    aggregator: str,
    hyperparameters: dict[str, Any] | None,
) -> None:
    specs = vector_specs()
    settings = tiny_settings(aggregator=aggregator)
    if hyperparameters is not None:
        settings["hyperparameters"] = hyperparameters
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)

    drive(runners_for(api, tokens))

    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    config = FederationConfig.model_validate(
        {
            **settings,
            "nodes": [
                {"name": "alpha", "role": "source", "dataset": specs["alpha"]},
                {"name": "beta", "role": "source", "dataset": specs["beta"]},
                {"name": "omega", "role": "target", "dataset": specs["omega"]},
            ],
        }
    )
    reference = simulate(config)
    if hyperparameters is not None:  # the step changed the run: the plain average would give other numbers
        plain = config.model_copy(
            update={"hyperparameters": config.hyperparameters.model_copy(update={"server_step": "none"})}
        )
        assert not torch.equal(simulate(plain).models["G"]["0.weight"], reference.models["G"]["0.weight"])

    expected = {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    assert served_rounds(api, fid) == expected

    response = api.request("GET", f"/api/v1/federations/{fid}/model")
    assert response.status_code == 200
    served_model = params.from_bytes(response.content)
    simulated_model = reference.models["target_model"]
    assert served_model.keys() == simulated_model.keys()
    for name, tensor in simulated_model.items():
        assert torch.equal(served_model[name], tensor), name

    # The last aggregates are the simulator's, byte for byte.
    last = api.ok("GET", f"/api/v1/federations/{fid}/rounds/{config.rounds}")
    stored = {a["key"]: a["sha256"] for phase in last["phases"] for a in phase["aggregates"]}
    for model in ("G", "T", "D"):
        key = next(k for k in sorted(stored, reverse=True) if k.endswith(f"/{model}"))
        digest = hashlib.sha256(params.to_bytes(reference.models[model])).hexdigest()
        assert stored[key] == digest, model

    card = api.ok("GET", f"/api/v1/federations/{fid}/model/card")
    assert card["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert card["metrics"] == expected[config.rounds]["metrics"]
    assert [t["name"] for t in card["manifest"]] == sorted(simulated_model, key=list(simulated_model).index)
