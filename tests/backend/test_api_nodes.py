"""Node registration: who may register, what conflicts, and what a node's token can see."""

from __future__ import annotations

from api_support import Api


def test_the_join_token_registers_nodes_and_each_gets_its_own_token_once(api: Api) -> None:
    federation = api.create_federation()
    fid = federation["id"]
    response = api.request(
        "POST",
        f"/api/v1/federations/{fid}/nodes",
        token=federation["join_token"],
        json={"name": "alpha", "role": "source", "dataset": "npz:/data/a.npz", "mode": "rest"},
    )
    assert response.status_code == 201
    node = response.json()
    assert node["token"].startswith("fa_node_") and node["state"] == "registered"
    listed = api.ok("GET", f"/api/v1/federations/{fid}/nodes")["items"]
    assert [n["name"] for n in listed] == ["alpha"] and "token" not in listed[0]
    assert api.ok("GET", f"/api/v1/federations/{fid}/nodes/alpha")["dataset"] == "npz:/data/a.npz"
    assert api.ok("GET", f"/api/v1/federations/{fid}")["nodes"] == ["alpha"]


def test_a_join_token_is_good_for_its_own_federation_only(api: Api) -> None:
    first = api.create_federation()
    second = api.create_federation()
    response = api.request(
        "POST",
        f"/api/v1/federations/{second['id']}/nodes",
        token=first["join_token"],
        json={"name": "alpha", "role": "source", "dataset": "npz:/a.npz"},
    )
    assert response.status_code == 403
    body = {"name": "alpha", "role": "source", "dataset": "npz:/a.npz"}
    assert (
        api.request("POST", f"/api/v1/federations/{second['id']}/nodes", token=None, json=body).status_code
        == 401
    )
    # A join token manages nothing else.
    assert (
        api.request("GET", f"/api/v1/federations/{first['id']}/nodes", token=first["join_token"]).status_code
        == 403
    )


def test_registration_conflicts_are_409_with_the_reason(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    fid = federation["id"]
    path = f"/api/v1/federations/{fid}/nodes"
    duplicate = api.request("POST", path, json={"name": "alpha", "role": "source", "dataset": "npz:/x.npz"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "duplicate_name"
    second = api.request("POST", path, json={"name": "zeta", "role": "target", "dataset": "npz:/x.npz"})
    assert second.status_code == 409 and second.json()["error"]["code"] == "second_target"
    assert "omega" in second.json()["error"]["message"]
    # A node token cannot register anybody.
    assert (
        api.request(
            "POST", path, token=tokens["alpha"], json={"name": "z", "role": "source", "dataset": "x:y"}
        ).status_code
        == 403
    )
    api.start(fid)
    late = api.request("POST", path, json={"name": "late", "role": "source", "dataset": "npz:/x.npz"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "already_started"


def test_registration_validates_its_fields(api: Api) -> None:
    fid = api.create_federation()["id"]
    path = f"/api/v1/federations/{fid}/nodes"
    for body in (
        {"name": "bad name!", "role": "source", "dataset": "npz:/x.npz"},
        {"name": "ok", "role": "observer", "dataset": "npz:/x.npz"},
        {"name": "ok", "role": "source", "dataset": ""},
        {"name": "ok", "role": "source", "dataset": "npz:/x.npz", "mode": "carrier-pigeon"},
        {"name": "ok", "role": "source", "dataset": "npz:/x.npz", "secret": 1},
    ):
        response = api.request("POST", path, json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["details"], body
    assert (
        api.request(
            "POST", "/api/v1/federations/nope/nodes", json={"name": "a", "role": "source", "dataset": "x:y"}
        ).status_code
        == 404
    )


def test_nodes_can_be_removed_before_the_start_only(api: Api) -> None:
    federation, _ = api.federation_with_nodes()
    fid = federation["id"]
    assert api.request("DELETE", f"/api/v1/federations/{fid}/nodes/beta").status_code == 204
    assert api.request("GET", f"/api/v1/federations/{fid}/nodes/beta").status_code == 404
    assert api.request("DELETE", f"/api/v1/federations/{fid}/nodes/beta").status_code == 404
    api.start(fid)
    response = api.request("DELETE", f"/api/v1/federations/{fid}/nodes/alpha")
    assert response.status_code == 409 and response.json()["error"]["code"] == "already_started"


def test_a_node_sees_its_own_dataset_spec_but_not_the_others(api: Api) -> None:
    federation, tokens = api.federation_with_nodes({"alpha": "npz:/secret/alpha.npz"})
    view = api.ok("GET", "/api/v1/node/federation", token=tokens["alpha"])
    assert view["node"] == {"name": "alpha", "role": "source", "dataset": "npz:/secret/alpha.npz"}
    assert {n["name"]: n["dataset"] for n in view["nodes"]} == {
        "alpha": "npz:/secret/alpha.npz",
        "beta": None,
        "omega": None,
    }
    other = api.ok("GET", "/api/v1/node/federation", token=tokens["beta"])
    assert "/secret/alpha.npz" not in str(other)
    assert view["config"]["seed"] == 5 and view["status"] == "created"
    # The node endpoints take a node token only.
    assert api.request("GET", "/api/v1/node/federation").status_code == 403
    assert api.request("GET", "/api/v1/node/federation", token=federation["join_token"]).status_code == 403
    assert api.request("GET", "/api/v1/node/federation", token="fa_node_forged").status_code == 401


def test_a_rotated_node_token_replaces_the_old_one_at_once(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    fid = federation["id"]
    api.start(fid)
    rotated = api.ok("POST", f"/api/v1/federations/{fid}/nodes/alpha/token")
    assert rotated["name"] == "alpha" and rotated["token"] != tokens["alpha"]
    assert f"FEDALIGN_NODE_TOKEN={rotated['token']}" in rotated["run_command"]
    old = api.request("GET", "/api/v1/node/task", token=tokens["alpha"])
    assert old.status_code == 401, old.text
    task = api.task(rotated["token"])
    assert task is not None and task["kind"] == "setup", "the node runs on with its new token"
    assert api.task(tokens["beta"]) is not None, "the other nodes' tokens are untouched"


def test_a_revoked_node_token_stops_working_until_rotated(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    fid = federation["id"]
    api.ok("DELETE", f"/api/v1/federations/{fid}/nodes/alpha/token", 204)
    assert api.request("GET", "/api/v1/node/federation", token=tokens["alpha"]).status_code == 401
    assert api.request("GET", "/api/v1/node/federation", token=tokens["beta"]).status_code == 200
    rotated = api.ok("POST", f"/api/v1/federations/{fid}/nodes/alpha/token")
    assert api.request("GET", "/api/v1/node/federation", token=rotated["token"]).status_code == 200


def test_a_rotated_or_revoked_join_token_registers_no_more_nodes(api: Api) -> None:
    federation = api.create_federation()
    fid, old = federation["id"], federation["join_token"]
    node = {"role": "source", "dataset": "npz:/data/x.npz"}
    new = api.ok("POST", f"/api/v1/federations/{fid}/join-token")["join_token"]
    assert new != old
    refused = api.request("POST", f"/api/v1/federations/{fid}/nodes", token=old, json={"name": "a", **node})
    assert refused.status_code == 401, refused.text
    api.ok("POST", f"/api/v1/federations/{fid}/nodes", 201, token=new, json={"name": "b", **node})
    api.ok("DELETE", f"/api/v1/federations/{fid}/join-token", 204)
    revoked = api.request("POST", f"/api/v1/federations/{fid}/nodes", token=new, json={"name": "c", **node})
    assert revoked.status_code == 401, revoked.text
    names = [n["name"] for n in api.ok("GET", f"/api/v1/federations/{fid}/nodes")["items"]]
    assert names == ["b"]
