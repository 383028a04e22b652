"""Federations: creation, listing, deletion, status transitions, and the errors each answers."""

from __future__ import annotations

from api_support import ADMIN_TOKEN, Api, tiny_settings


def error_of(response: object) -> dict:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert body["error"]["code"] and len(body["error"]["message"]) > 20
    return body["error"]


def test_creating_a_federation_returns_its_join_token_once(api: Api) -> None:
    created = api.create_federation(name="first")
    assert created["status"] == "created" and created["join_token"].startswith("fa_join_")
    assert created["config"]["architecture"] == "mlp" and "nodes" not in created["config"]
    fetched = api.ok("GET", f"/api/v1/federations/{created['id']}")
    assert "join_token" not in fetched
    listed = api.ok("GET", "/api/v1/federations")["items"]
    assert [f["id"] for f in listed] == [created["id"]] and "join_token" not in listed[0]


def test_federation_fields_outside_the_config_schema_are_refused(api: Api) -> None:
    response = api.request("POST", "/api/v1/federations", json={**tiny_settings(), "nodes": [], "colour": 1})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_request" and "colour" in error["message"] and "nodes" in error["message"]


def test_an_invalid_config_value_says_which_field(api: Api) -> None:
    response = api.request("POST", "/api/v1/federations", json=tiny_settings(rounds=0))
    assert response.status_code == 422
    assert "rounds" in error_of(response)["message"]
    response = api.request(
        "POST", "/api/v1/federations", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_management_needs_the_admin_token(api: Api) -> None:
    assert api.request("GET", "/api/v1/federations", token=None).status_code == 401
    response = api.request("GET", "/api/v1/federations", token="not-a-token")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    federation = api.create_federation()
    join = api.request("GET", "/api/v1/federations", token=federation["join_token"])
    assert join.status_code == 403 and error_of(join)["code"] == "forbidden"


def test_an_unknown_federation_is_404(api: Api) -> None:
    for method, path in (
        ("GET", "/api/v1/federations/nope"),
        ("DELETE", "/api/v1/federations/nope"),
        ("POST", "/api/v1/federations/nope/start"),
    ):
        response = api.request(method, path)
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert api.request("GET", "/api/v1/no-such-route").status_code == 404


def test_starting_needs_a_target_and_a_source(api: Api) -> None:
    federation = api.create_federation()
    fid = federation["id"]
    response = api.request("POST", f"/api/v1/federations/{fid}/start")
    assert response.status_code == 409 and error_of(response)["code"] == "no_target"
    api.register(fid, "omega", "target")
    response = api.request("POST", f"/api/v1/federations/{fid}/start")
    assert response.status_code == 409 and error_of(response)["code"] == "no_source"
    api.register(fid, "alpha", "source")
    assert api.start(fid)["status"] == "running"


def test_a_config_that_does_not_fit_its_nodes_cannot_start(api: Api) -> None:
    federation = api.create_federation(min_sources=3)
    api.register(federation["id"], "alpha", "source")
    api.register(federation["id"], "omega", "target")
    response = api.request("POST", f"/api/v1/federations/{federation['id']}/start")
    assert response.status_code == 409 and "min_sources" in error_of(response)["message"]


def test_status_transitions_follow_the_lifecycle(api: Api) -> None:
    federation, _ = api.federation_with_nodes()
    fid = federation["id"]
    base = f"/api/v1/federations/{fid}"
    for action in ("pause", "resume"):
        assert api.request("POST", f"{base}/{action}").status_code == 409
    started = api.start(fid)
    assert (started["status"], started["round"], started["phase"]) == ("running", 0, "setup")
    again = api.request("POST", f"{base}/start")
    assert again.status_code == 409 and error_of(again)["code"] == "illegal_transition"
    assert api.request("POST", f"{base}/resume").status_code == 409
    assert api.ok("POST", f"{base}/pause")["status"] == "paused"
    assert api.ok("POST", f"{base}/resume")["status"] == "running"
    assert api.ok("POST", f"{base}/cancel")["status"] == "cancelled"
    for action in ("start", "pause", "resume", "cancel"):
        assert api.request("POST", f"{base}/{action}").status_code == 409


def test_deleting_a_federation_removes_its_rows_and_unreferenced_files(api: Api) -> None:
    kept, _ = api.federation_with_nodes()
    doomed, _ = api.federation_with_nodes()
    api.start(kept["id"])
    api.start(doomed["id"])  # both store the same initial models: one file each, shared
    store = api.services.store
    files = {p for p in store.root.rglob("*") if p.is_file() and p.parent != store.tmp}
    assert len(files) == 3
    assert api.request("DELETE", f"/api/v1/federations/{doomed['id']}").status_code == 204
    assert api.request("GET", f"/api/v1/federations/{doomed['id']}").status_code == 404
    assert all(p.exists() for p in files), "files still referenced by the other federation stay"
    assert api.request("DELETE", f"/api/v1/federations/{kept['id']}").status_code == 204
    assert not any(p.exists() for p in files)


def test_an_oversized_json_body_is_refused_before_it_is_read(api: Api) -> None:
    limit = api.services.settings.max_json_bytes
    body = b'{"name": "' + b"x" * limit + b'"}'
    response = api.request(
        "POST", "/api/v1/federations", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413 and error_of(response)["code"] == "too_large"

    def chunks() -> object:  # no Content-Length: the limit applies while the body streams
        yield b'{"name": "'
        for _ in range(limit // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    streamed = api.client.post(
        "/api/v1/federations",
        content=chunks(),  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "too_large"
