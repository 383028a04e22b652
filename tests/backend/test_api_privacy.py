"""A served federation with differential privacy: nodes' epsilon recorded per round, the budget's stop,
with and without secure aggregation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from api_support import Api, drive, runners_for, tiny_settings
from test_api_end_to_end import served_rounds

from fedalign import privacy_accounting
from fedalign.config import FederationConfig
from fedalign.simulate import simulate

DP = {"noise_multiplier": 1.0, "randomness": "seeded"}
GROUP = {"num_classes": 3, "input_shape": [8], "hidden": 8, "normalization": "group"}


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure_aggregation"])
def test_a_served_dp_federation_records_epsilon_and_stops_at_its_budget(
    api: Api, vector_specs: Callable[[], dict[str, str]], secure: bool
) -> None:
    specs = vector_specs()
    nodes = [
        {"name": "alpha", "role": "source", "dataset": specs["alpha"]},
        {"name": "beta", "role": "source", "dataset": specs["beta"]},
        {"name": "omega", "role": "target", "dataset": specs["omega"]},
    ]
    unbounded = FederationConfig.model_validate(
        {**tiny_settings(model=GROUP, rounds=3, privacy=DP), "nodes": nodes}
    )
    # Between the sources' epsilon after round 1 and after round 2 (40 training examples each).
    budget = sum(privacy_accounting.projected_epsilon(unbounded, "source", 40, r) for r in (1, 2)) / 2
    settings = tiny_settings(
        model=GROUP, rounds=3, privacy={**DP, "epsilon_budget": budget}, secure_aggregation=secure
    )
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)

    drive(runners_for(api, tokens))

    served = api.ok("GET", f"/api/v1/federations/{fid}")
    assert served["status"] == "finished"
    assert served["stall_reason"].startswith("privacy budget: round 2 would take alpha to")
    reference = simulate(FederationConfig.model_validate({**settings, "nodes": nodes}))
    expected = {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    assert served_rounds(api, fid) == expected  # the same epsilon, bit for bit, as the simulator's
    assert sorted(expected) == [1]
    assert {n for n, m in expected[1]["nodes"].items() if "dp_epsilon" in m} == {"alpha", "beta", "omega"}
