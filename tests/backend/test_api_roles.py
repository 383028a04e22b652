"""Organisations and roles beyond who may call what (test_api_access.py): what each role sees in a list,
access tokens' life cycle (rotation and revocation end dashboard sessions at once), the bootstrap admin
token switched off, and join tokens that fix a node's organisation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_support import ADMIN_TOKEN, Api, tiny_settings
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.sessions import CSRF_HEADER, SESSION_COOKIE
from backend.settings import Settings


def issue(api: Api, name: str, role: str, organisation: str | None = None) -> dict[str, Any]:
    body = {"name": name, "role": role} | ({"organisation": organisation} if organisation else {})
    return dict(api.ok("POST", "/api/v1/tokens", 201, json=body))


def federation_of(api: Api, owner: str, organisations: dict[str, str]) -> str:
    """A federation created with `owner`'s token, a node per (name, organisation); the first is the target."""
    federation_id = str(api.ok("POST", "/api/v1/federations", 201, token=owner, json=tiny_settings())["id"])
    for index, (name, organisation) in enumerate(organisations.items()):
        body = {
            "name": name,
            "role": "target" if index == 0 else "source",
            "dataset": "npz:/data/x.npz",
            "organisation": organisation,
        }
        api.ok("POST", f"/api/v1/federations/{federation_id}/nodes", 201, token=owner, json=body)
    return federation_id


def listed(api: Api, token: str) -> set[str]:
    return {f["id"] for f in api.ok("GET", "/api/v1/federations", token=token)["items"]}


def session_of(api: Api, token: str) -> tuple[str, dict[str, Any]]:
    response = api.request("POST", "/api/v1/session", token=None, json={"token": token})
    assert response.status_code == 200, response.text
    cookie = response.cookies[SESSION_COOKIE]
    api.client.cookies.clear()
    return cookie, response.json()


def with_cookie(api: Api, cookie: str, method: str, path: str, **kwargs: Any) -> Any:
    api.client.cookies.clear()
    return api.client.request(method, path, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}, **kwargs)


def test_each_role_lists_only_the_federations_within_its_reach(api: Api) -> None:
    acme_owner = issue(api, "acme-owner", "owner", "acme")["token"]
    ours = federation_of(api, acme_owner, {"omega": "acme", "alpha": "north"})
    theirs = federation_of(api, issue(api, "zeta-owner", "owner", "zeta")["token"], {"omega": "zeta"})
    coordinators = federation_of(api, ADMIN_TOKEN, {"omega": "south"})
    assert listed(api, ADMIN_TOKEN) == {ours, theirs, coordinators}
    assert listed(api, acme_owner) == {ours}
    assert listed(api, issue(api, "north", "viewer", "north")["token"]) == {ours}
    assert listed(api, issue(api, "south", "viewer", "south")["token"]) == {coordinators}
    assert listed(api, issue(api, "nobody", "viewer", "nowhere")["token"]) == set()


def test_a_viewer_sees_its_own_organisations_nodes_only(api: Api) -> None:
    owner = issue(api, "acme-owner", "owner", "acme")["token"]
    federation_id = federation_of(api, owner, {"omega": "acme", "alpha": "north", "beta": "south"})
    north = issue(api, "north", "viewer", "north")["token"]
    nodes = api.ok("GET", f"/api/v1/federations/{federation_id}/nodes", token=north)["items"]
    assert [(n["name"], n["organisation"]) for n in nodes] == [("alpha", "north")]
    beta = api.request("GET", f"/api/v1/federations/{federation_id}/nodes/beta", token=north)
    assert beta.status_code == 404
    # The federation itself names only the nodes the viewer sees, in the list and on its own.
    assert api.ok("GET", f"/api/v1/federations/{federation_id}", token=north)["nodes"] == ["alpha"]
    (seen,) = api.ok("GET", "/api/v1/federations", token=north)["items"]
    assert seen["nodes"] == ["alpha"]
    everyone = api.ok("GET", f"/api/v1/federations/{federation_id}/nodes", token=owner)["items"]
    assert {n["name"] for n in everyone} == {"omega", "alpha", "beta"}


def test_each_caller_is_told_what_it_may_do_on_one_federation_and_that_is_what_it_can_do(api: Api) -> None:
    owner = issue(api, "acme-owner", "owner", "acme")["token"]
    federation_id = federation_of(api, owner, {"omega": "acme", "alpha": "north"})
    target_viewer = issue(api, "acme", "viewer", "acme")["token"]
    source_viewer = issue(api, "north", "viewer", "north")["token"]
    path = f"/api/v1/federations/{federation_id}"

    def operations(token: str) -> set[str]:
        return set(api.ok("GET", f"{path}/access", token=token)["operations"])

    reads = {"federation.read", "federation.nodes.read"}
    manages = {"federation.control", "federation.manage", "federation.nodes.manage"}
    assert operations(ADMIN_TOKEN) == operations(owner) == reads | manages | {"federation.model.read"}
    # The model is the target's organisation's: the source's viewer reads everything else, not the model.
    assert operations(target_viewer) == reads | {"federation.model.read"}
    assert operations(source_viewer) == reads
    # What it is told is what the server does: the source's viewer is refused the model's card.
    assert api.request("GET", f"{path}/model/card", token=source_viewer).status_code == 403
    assert api.request("GET", f"{path}/model/card", token=target_viewer).status_code == 409
    outsider = issue(api, "zeta", "viewer", "zeta")["token"]
    assert api.request("GET", f"{path}/access", token=outsider).status_code == 404


def test_an_owners_federation_belongs_to_its_organisation_and_its_copy_too(api: Api) -> None:
    owner = issue(api, "acme-owner", "owner", "acme")["token"]
    federation_id = federation_of(api, owner, {"omega": "acme"})
    assert api.ok("GET", f"/api/v1/federations/{federation_id}", token=owner)["owner_organisation"] == "acme"
    copy = api.ok(
        "POST", f"/api/v1/federations/{federation_id}/clone", 201, token=owner, json={"nodes": True}
    )
    assert copy["owner_organisation"] == "acme"
    nodes = api.ok("GET", f"/api/v1/federations/{copy['id']}/nodes", token=owner)["items"]
    assert [n["organisation"] for n in nodes] == ["acme"]


def test_revoking_an_access_token_ends_its_bearer_use_and_its_dashboard_sessions_at_once(api: Api) -> None:
    viewer = issue(api, "acme-viewer", "viewer", "acme")
    cookie, _ = session_of(api, viewer["token"])
    assert with_cookie(api, cookie, "GET", "/api/v1/federations").status_code == 200
    api.ok("DELETE", f"/api/v1/tokens/{viewer['id']}", 204)
    assert with_cookie(api, cookie, "GET", "/api/v1/federations").status_code == 401
    assert with_cookie(api, cookie, "GET", "/api/v1/session").status_code == 401
    assert api.request("GET", "/api/v1/federations", token=viewer["token"]).status_code == 401
    again = api.request("POST", "/api/v1/session", token=None, json={"token": viewer["token"]})
    assert again.status_code == 401
    (kept,) = api.ok("GET", "/api/v1/tokens")["items"]
    assert kept["id"] == viewer["id"] and kept["revoked_at"] is not None and "token" not in kept
    # Revoked is revoked: it cannot be brought back by rotating it.
    assert api.request("POST", f"/api/v1/tokens/{viewer['id']}/rotate").status_code == 409


def test_rotating_a_coordinators_token_needs_no_restart_and_ends_the_old_ones_sessions(api: Api) -> None:
    old = issue(api, "ops", "coordinator")
    cookie, signed_in = session_of(api, old["token"])
    assert signed_in["role"] == "coordinator" and "access_tokens.manage" in signed_in["operations"]
    rotated = api.ok("POST", f"/api/v1/tokens/{old['id']}/rotate", token=old["token"])
    assert rotated["id"] == old["id"] and rotated["token"] != old["token"]
    assert api.request("GET", "/api/v1/tokens", token=old["token"]).status_code == 401
    assert with_cookie(api, cookie, "GET", "/api/v1/tokens").status_code == 401
    assert api.request("GET", "/api/v1/tokens", token=rotated["token"]).status_code == 200


def test_a_viewers_session_says_its_role_and_may_only_read(api: Api) -> None:
    owner = issue(api, "acme-owner", "owner", "acme")["token"]
    federation_id = federation_of(api, owner, {"omega": "acme"})
    cookie, signed_in = session_of(api, issue(api, "acme-viewer", "viewer", "acme")["token"])
    assert signed_in["role"] == "viewer" and signed_in["organisation"] == "acme"
    assert set(signed_in["operations"]) == {
        "federations.list",
        "federation.read",
        "federation.nodes.read",
        "federation.model.read",
    }
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", CSRF_HEADER: signed_in["csrf_token"]}
    api.client.cookies.clear()
    start = api.client.post(f"/api/v1/federations/{federation_id}/start", headers=headers)
    assert start.status_code == 403 and start.json()["error"]["code"] == "forbidden"
    assert api.ok("GET", f"/api/v1/federations/{federation_id}")["status"] == "created"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "v", "role": "viewer"},  # a viewer belongs to an organisation
        {"name": "o", "role": "owner"},
        {"name": "c", "role": "coordinator", "organisation": "acme"},  # a coordinator to none
        {"name": "x", "role": "admin", "organisation": "acme"},
        {"name": "bad name!", "role": "viewer", "organisation": "acme"},
    ],
)
def test_an_access_token_that_does_not_fit_its_role_is_refused_and_nothing_is_issued(
    api: Api, body: dict[str, Any]
) -> None:
    assert api.request("POST", "/api/v1/tokens", json=body).status_code == 422
    assert api.ok("GET", "/api/v1/tokens")["items"] == []


def test_a_join_token_that_fixes_an_organisation_registers_its_nodes_there_only(api: Api) -> None:
    federation = api.create_federation()
    path = f"/api/v1/federations/{federation['id']}"
    join = api.ok("POST", f"{path}/join-token", json={"organisation": "north"})
    assert join["organisation"] == "north"
    node = {"role": "source", "dataset": "npz:/data/x.npz"}
    refused = api.request(
        "POST", f"{path}/nodes", token=join["join_token"], json={**node, "name": "a", "organisation": "south"}
    )
    assert refused.status_code == 403 and "north" in refused.json()["error"]["message"]
    registered = api.ok("POST", f"{path}/nodes", 201, token=join["join_token"], json={**node, "name": "b"})
    assert registered["organisation"] == "north"
    assert [n["name"] for n in api.ok("GET", f"{path}/nodes")["items"]] == ["b"]


@pytest.fixture
def without_bootstrap(settings: Settings) -> Iterator[Api]:
    """The app with the environment's admin token switched off (FEDALIGN_ADMIN_TOKEN_ENABLED=false)."""
    with TestClient(create_app(settings.model_copy(update={"admin_token_enabled": False}))) as client:
        yield Api(client)


def test_the_admin_token_switched_off_no_longer_works_and_access_tokens_do(
    api: Api, without_bootstrap: Api
) -> None:
    # Issued while the admin token worked (the two apps share the database).
    coordinator = issue(api, "ops", "coordinator")["token"]
    cookie, _ = session_of(api, ADMIN_TOKEN)
    off = without_bootstrap
    assert off.request("GET", "/api/v1/federations").status_code == 401
    assert off.request("POST", "/api/v1/session", token=None, json={"token": ADMIN_TOKEN}).status_code == 401
    assert with_cookie(off, cookie, "GET", "/api/v1/federations").status_code == 401
    assert off.request("GET", "/api/v1/federations", token=coordinator).status_code == 200
