"""A join token with limits (rotated with them): it expires, registers at most so many nodes, or only some
roles; each refusal says why and registers nothing."""

from __future__ import annotations

import datetime as dt

from api_support import Api

from backend.models import Federation


def register(api: Api, fid: str, token: str, name: str, role: str = "source") -> object:
    return api.request(
        "POST",
        f"/api/v1/federations/{fid}/nodes",
        token=token,
        json={"name": name, "role": role, "dataset": "npz:/data/x.npz"},
    )


def node_names(api: Api, fid: str) -> list[str]:
    return [n["name"] for n in api.ok("GET", f"/api/v1/federations/{fid}/nodes")["items"]]


def test_a_join_token_registers_only_its_roles_and_only_so_many_nodes(api: Api) -> None:
    fid = api.create_federation()["id"]
    limited = api.ok(
        "POST", f"/api/v1/federations/{fid}/join-token", json={"max_registrations": 2, "roles": ["source"]}
    )
    assert limited["registrations_left"] == 2 and limited["roles"] == ["source"]
    token = limited["join_token"]
    target = register(api, fid, token, "omega", "target")
    assert target.status_code == 403 and "only source nodes" in target.json()["error"]["message"]
    assert register(api, fid, token, "alpha").status_code == 201
    assert register(api, fid, token, "beta").status_code == 201
    third = register(api, fid, token, "gamma")
    assert third.status_code == 403 and "all the nodes it may" in third.json()["error"]["message"]
    assert node_names(api, fid) == ["alpha", "beta"]
    # The admin is not bound by the join token's limits.
    assert api.register(fid, "omega", "target")["name"] == "omega"


def test_an_expired_join_token_is_refused_and_a_plain_rotation_lifts_the_limits(api: Api) -> None:
    fid = api.create_federation()["id"]
    token = api.ok("POST", f"/api/v1/federations/{fid}/join-token", json={"expires_in_s": 3600})["join_token"]
    assert register(api, fid, token, "alpha").status_code == 201
    with api.services.db.write() as session:  # an hour later, as far as the token knows
        federation = session.get(Federation, fid)
        assert federation is not None and federation.join_expires_at is not None
        federation.join_expires_at -= dt.timedelta(hours=2)
    late = register(api, fid, token, "beta")
    assert late.status_code == 401 and "expired" in late.json()["error"]["message"]
    assert node_names(api, fid) == ["alpha"]
    plain = api.ok("POST", f"/api/v1/federations/{fid}/join-token")  # no body: no limits
    assert plain["expires_at"] is None and plain["registrations_left"] is None and plain["roles"] is None
    assert register(api, fid, plain["join_token"], "beta").status_code == 201
    bad_limits = (
        {"expires_in_s": 10},
        {"max_registrations": 0},
        {"roles": []},
        {"roles": ["admin"]},
        {"x": 1},
    )
    for bad in bad_limits:
        refused = api.request("POST", f"/api/v1/federations/{fid}/join-token", json=bad)
        assert refused.status_code == 422, bad
    assert register(api, fid, plain["join_token"], "gamma").status_code == 201  # refusals changed nothing
