"""Dashboard sign-in: the admin token exchanged for an HttpOnly cookie, and CSRF on state changes."""

from __future__ import annotations

import datetime as dt

from api_support import ADMIN_TOKEN, Api

from backend.sessions import SESSION_COOKIE, issue, verify


def sign_in(api: Api) -> str:
    response = api.request("POST", "/api/v1/session", token=None, json={"token": ADMIN_TOKEN})
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert ADMIN_TOKEN not in cookie
    return response.json()["csrf_token"]


def test_a_session_cookie_reads_and_with_its_csrf_token_writes(api: Api) -> None:
    csrf = sign_in(api)
    assert api.request("GET", "/api/v1/federations", token=None).status_code == 200
    created = api.request(
        "POST",
        "/api/v1/federations",
        token=None,
        headers={"X-CSRF-Token": csrf},
        json={"name": "from the browser", "architecture": "mlp", "model": {"input_shape": [4]}},
    )
    assert created.status_code == 201, created.text
    # A reloaded page gets the same CSRF token back from its cookie.
    assert api.ok("GET", "/api/v1/session", token=None)["csrf_token"] == csrf


def test_a_state_change_without_the_csrf_token_is_refused_and_changes_nothing(api: Api) -> None:
    csrf = sign_in(api)
    for headers in ({}, {"X-CSRF-Token": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}):
        response = api.request(
            "POST", "/api/v1/federations", token=None, headers=headers, json={"name": "forged"}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "csrf"
    assert api.ok("GET", "/api/v1/federations")["items"] == []


def test_a_wrong_token_gets_no_session(api: Api) -> None:
    response = api.request("POST", "/api/v1/session", token=None, json={"token": "not-the-admin-token"})
    assert response.status_code == 401 and "set-cookie" not in response.headers
    assert api.request("GET", "/api/v1/session", token=None).status_code == 401
    assert api.request("GET", "/api/v1/federations", token=None).status_code == 401


def test_a_join_or_node_token_cannot_sign_in_to_the_dashboard(api: Api) -> None:
    federation = api.create_federation()
    response = api.request("POST", "/api/v1/session", token=None, json={"token": federation["join_token"]})
    assert response.status_code == 403


def test_signing_out_ends_the_session_in_this_browser(api: Api) -> None:
    sign_in(api)
    assert api.request("DELETE", "/api/v1/session", token=None).status_code == 204
    assert api.request("GET", "/api/v1/federations", token=None).status_code == 401


def test_signing_out_ends_the_session_on_the_server_so_a_copied_cookie_stops_working(api: Api) -> None:
    csrf = sign_in(api)
    copied = api.client.cookies[SESSION_COOKIE]
    other = issue(ADMIN_TOKEN, 3600)  # genuine and unexpired, but never signed in: the server holds no row
    assert api.request("DELETE", "/api/v1/session", token=None).status_code == 204
    for cookie in (copied, other.cookie):
        api.client.cookies.set(SESSION_COOKIE, cookie)
        for path in ("/api/v1/federations", "/api/v1/session"):
            response = api.request("GET", path, token=None)
            assert response.status_code == 401, f"{path}: {response.text}"
        before = api.ok("GET", "/api/v1/federations", token=ADMIN_TOKEN)["items"]
        refused = api.request(
            "POST", "/api/v1/federations", token=None, headers={"X-CSRF-Token": csrf}, json={"name": "late"}
        )
        assert refused.status_code == 401, refused.text
        assert api.ok("GET", "/api/v1/federations", token=ADMIN_TOKEN)["items"] == before
    # Another sign-in still works: only the ended session is gone.
    api.client.cookies.clear()
    sign_in(api)
    assert api.request("GET", "/api/v1/federations", token=None).status_code == 200


def test_a_forged_or_expired_cookie_is_refused(api: Api) -> None:
    past = issue(ADMIN_TOKEN, 60, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    other_server = issue("another-servers-admin-token", 3600)
    for cookie in (past.cookie, other_server.cookie, "a.b.c", "x" * 300):
        api.client.cookies.set(SESSION_COOKIE, cookie)
        assert api.request("GET", "/api/v1/federations", token=None).status_code == 401
        assert api.request("GET", "/api/v1/session", token=None).status_code == 401


def test_a_session_ends_with_its_expiry_and_with_a_new_admin_token() -> None:
    now = dt.datetime.now(dt.UTC)
    session = issue(ADMIN_TOKEN, 60, now=now)
    assert verify(ADMIN_TOKEN, session.cookie, now=now) is not None
    assert verify(ADMIN_TOKEN, session.cookie, now=now + dt.timedelta(seconds=61)) is None
    assert verify("rotated-admin-token", session.cookie, now=now) is None


def test_a_cookie_with_non_ascii_digits_or_letters_is_refused_not_a_server_error(api: Api) -> None:
    valid = issue(ADMIN_TOKEN, 3600)
    session_id, expires, mac = valid.cookie.split(".")
    hostile = [
        f"{session_id}.²³.{mac}",  # str.isdigit() says True; int() and the MAC's ASCII encoding do not
        f"{session_id}.{expires[:-1]}٣.{mac}",  # an Arabic-Indic digit
        f"ü{session_id}.{expires}.{mac}",
        f"{session_id}.{expires}.{mac[:-1]}é",
        f"{session_id}.{'9' * 40}.{mac}",  # an expiry no date holds
    ]
    for cookie in hostile:
        header = {"Cookie": f"{SESSION_COOKIE}={cookie}".encode()}
        for path in ("/api/v1/federations", "/api/v1/session"):
            response = api.request("GET", path, token=None, headers=header)
            assert response.status_code == 401, f"{cookie!r} on {path}: {response.text}"
            assert "sign" in response.json()["error"]["message"].lower() or "token" in response.text
