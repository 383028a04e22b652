"""A node with its own steps in a served federation: nodes built only from the public client library
(`workers.client.NodeRunner` with ``steps=``) and docs' worked example, which reimplements FedAlign's steps
in plain torch (examples/custom_steps), run beside FedAlign's reference node, and the federation equals the
simulator's bit for bit, in both topologies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from api_support import Api, drive, tiny_settings
from test_api_end_to_end import served_rounds

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import simulate
from workers.client import NodeClient, NodeRunner
from workers.reference_steps import ReferenceSteps
from workers.steps import StepsFactory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROLES = {"alpha": "source", "beta": "source", "omega": "target"}


@pytest.fixture
def plain_torch_steps(monkeypatch: pytest.MonkeyPatch) -> StepsFactory:
    """What ``PYTHONPATH=examples`` gives the page's command: the example's class."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from custom_steps.plain_torch_steps import PlainTorchSteps

    return PlainTorchSteps


def simulated(settings: dict[str, Any], specs: dict[str, str]) -> tuple[dict[int, Any], dict[str, Any]]:
    nodes = [{"name": n, "role": r, "dataset": specs[n]} for n, r in ROLES.items()]
    reference = simulate(FederationConfig.model_validate({**settings, "nodes": nodes}))
    return {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}, reference.models


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_nodes_with_their_own_plain_torch_steps_beside_the_reference_node_equal_the_simulation_bitwise(
    api: Api,
    vector_specs: Callable[[], dict[str, str]],
    plain_torch_steps: StepsFactory,
    tmp_path: Path,
    aggregator: str,
) -> None:
    specs = vector_specs()
    settings = tiny_settings(aggregator=aggregator, rounds=3)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    # A source and the target run the user's steps, with their state on disk; beta is FedAlign's own node.
    own: dict[str, StepsFactory] = {
        "alpha": plain_torch_steps,
        "beta": ReferenceSteps,
        "omega": plain_torch_steps,
    }

    def runner(name: str) -> NodeRunner:
        client = NodeClient("http://testserver", tokens[name], http=api.client)
        return NodeRunner(client, state_dir=tmp_path / "state", steps=own[name])

    runners = {name: runner(name) for name in tokens}
    drive(runners, max_steps=12)
    # The user's nodes restart mid-run: their steps' state comes back from the state file (state_tensors).
    runners |= {name: runner(name) for name in ("alpha", "omega")}
    drive(runners)

    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    expected, models = simulated(settings, specs)
    assert served_rounds(api, fid) == expected
    published = params.from_bytes(api.request("GET", f"/api/v1/federations/{fid}/model").content)
    assert published.keys() == models["target_model"].keys()
    for name, tensor in models["target_model"].items():
        assert torch.equal(published[name], tensor), name
