"""A finished federation continued for more rounds equals one run that long from the start, bit for bit;
what cannot be continued is refused with the reason and nothing changes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from api_support import Api, drive, runners_for, tiny_settings
from test_api_end_to_end import served_rounds

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import Simulator, simulate

ROLES = {"alpha": "source", "beta": "source", "omega": "target"}


def test_a_continued_federation_equals_a_run_that_long_from_the_start(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    specs = vector_specs()
    settings = tiny_settings(rounds=2, checkpoint_every=1)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    drive(runners)
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"

    continued = api.ok("POST", f"/api/v1/federations/{fid}/continue", json={"rounds": 2})
    assert continued["status"] == "running" and continued["config"]["rounds"] == 4
    assert continued["round"] == 3 and continued["finished_at"] is None
    for runner in runners.values():  # the same node processes, as Celery workers stay up: they poll again
        runner.client.federation()
    drive(runners)
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"

    nodes = [{"name": n, "role": r, "dataset": specs[n]} for n, r in ROLES.items()]
    longer = simulate(FederationConfig.model_validate({**settings, "rounds": 4, "nodes": nodes}))
    assert served_rounds(api, fid) == {r.round: r.to_json() for r in longer.rounds if r.metrics or r.nodes}
    model = params.from_bytes(api.request("GET", f"/api/v1/federations/{fid}/model").content)
    assert all(torch.equal(model[k], v) for k, v in longer.models["target_model"].items())
    # The checkpoints of both parts, the first part's last one included.
    listed = api.ok("GET", f"/api/v1/federations/{fid}/checkpoints")["items"]
    assert [c["round"] for c in listed] == [1, 2, 3, 4]

    # The simulator continues the same way.
    simulator = Simulator(FederationConfig.model_validate({**settings, "nodes": nodes}))
    simulator.run()
    again = simulator.continue_for(2)
    assert [r.to_json() for r in again.rounds] == [r.to_json() for r in longer.rounds]


def test_what_cannot_be_continued_is_refused_and_nothing_changes(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    federation, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings(rounds=1))
    fid = federation["id"]
    path = f"/api/v1/federations/{fid}/continue"
    created = api.request("POST", path, json={"rounds": 1})
    assert created.status_code == 409 and "finished" in created.json()["error"]["message"]
    api.start(fid)
    running = api.request("POST", path, json={"rounds": 1})
    assert running.status_code == 409
    drive(runners_for(api, tokens))
    before = api.ok("GET", f"/api/v1/federations/{fid}")
    for body in ({"rounds": 0}, {"rounds": 100_001}, {"rounds": "x"}, {}, {"rounds": 1, "seed": 3}):
        assert api.request("POST", path, json=body).status_code == 422, body
    too_long = api.request("POST", path, json={"rounds": 100_000})  # 1 + 100000 > the config's bound
    assert too_long.status_code == 422 and "rounds" in too_long.json()["error"]["message"]
    assert api.ok("GET", f"/api/v1/federations/{fid}") == before
