"""The target's checkpoints, served: listed with the label-free selection and downloaded (with their card)
exactly as the simulator keeps them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from api_support import Api, drive, runners_for, tiny_settings
from safetensors import safe_open

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import simulate


def test_served_checkpoints_equal_the_simulation_and_the_selected_one_is_the_simulators(
    api: Api, vector_specs: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    specs = vector_specs()
    settings = tiny_settings(rounds=5, checkpoint_every=2)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    assert api.ok("GET", f"/api/v1/federations/{fid}/checkpoints") == {"items": []}  # before the start
    api.start(fid)
    runners = runners_for(api, tokens)
    drive(runners, max_steps=12)  # part of the way: the checkpoints so far are listed as they come
    so_far = [c["round"] for c in api.ok("GET", f"/api/v1/federations/{fid}/checkpoints")["items"]]
    assert so_far in ([], [2], [2, 4])
    drive(runners)

    roles = {"alpha": "source", "beta": "source", "omega": "target"}
    reference = simulate(
        FederationConfig.model_validate(
            {**settings, "nodes": [{"name": n, "role": r, "dataset": specs[n]} for n, r in roles.items()]}
        )
    )
    listed = api.ok("GET", f"/api/v1/federations/{fid}/checkpoints")["items"]
    assert [c["round"] for c in listed] == sorted(reference.checkpoints) == [2, 4, 5]
    assert [c["round"] for c in listed if c["selected"]] == [reference.selected_checkpoint]
    by_round = {r.round: r.metrics for r in reference.rounds}
    assert all(c["source_val_acc"] == by_round[c["round"]]["source_val_acc"] for c in listed)
    for item in listed:
        response = api.request("GET", f"/api/v1/federations/{fid}/checkpoints/{item['round']}")
        assert response.status_code == 200
        served = params.from_bytes(response.content)
        expected = reference.checkpoints[item["round"]]
        assert served.keys() == expected.keys() and all(torch.equal(served[k], expected[k]) for k in expected)
    # With its card: the round it comes from, as fedalign predict and load_model read it.
    with_card = api.request("GET", f"/api/v1/federations/{fid}/checkpoints/2", params={"card": "true"})
    assert 'filename="tiny-round-0002.safetensors"' in with_card.headers["content-disposition"]
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(with_card.content)
    with safe_open(str(path), framework="pt") as f:
        assert '"rounds":2' in (f.metadata() or {})["fedalign.model_card"].replace(" ", "")
    # The last checkpoint is the published model.
    final = api.request("GET", f"/api/v1/federations/{fid}/model")
    assert final.content == api.request("GET", f"/api/v1/federations/{fid}/checkpoints/5").content


def test_a_round_without_a_checkpoint_is_a_404_naming_the_ones_there_are(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    federation, tokens = api.federation_with_nodes(
        vector_specs(), **tiny_settings(rounds=3, checkpoint_every=2)
    )
    fid = federation["id"]
    api.start(fid)
    drive(runners_for(api, tokens))
    missing = api.request("GET", f"/api/v1/federations/{fid}/checkpoints/1")
    assert missing.status_code == 404
    assert "checkpoints: 2, 3" in missing.json()["error"]["message"]
    assert api.request("GET", f"/api/v1/federations/{fid}/checkpoints/0").status_code == 422
