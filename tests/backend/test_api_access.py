"""Access control: who may call each endpoint, how tokens are kept, and that they never reach the logs.

The matrix walks the app's own OpenAPI document, so an endpoint added later fails here until it is given
an expectation. Every operation is called, with a request that is valid where that is cheap, by each of:
no credentials, a token the server does not know, the admin token, the federation's join token, another
federation's join token, another federation's node token, a node token of this federation but another node
(`peer`), this node's own token (`own`), and the dashboard's session cookie with and without its CSRF
header; and by each role's access token (`backend.access`): a coordinator's, the owner's (organisation
acme owns the world's federations), a viewer of the target's organisation (acme), a viewer of a source's
organisation (north), the same acme viewer signed in to the dashboard, and an owner and a viewer of another
organisation (elsewhere, which takes part only in `other`). The allowed callers must get the operation's
success status (or the one status named for it, such as 409 for a model that is not published yet); every
other caller must get 401 (no or unknown credentials), 403 (valid credentials without the right, or the
session without its CSRF token on a state change), or 404 where the resource is not theirs to see (another
federation's step; another organisation's federation), and a refused state change must leave every table
as it was.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, Api, tiny_settings
from sqlalchemy import text

from backend.models import Base
from backend.security import NODE_PREFIX
from backend.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE
from fedalign import params, secagg
from fedalign.config import FederationConfig
from fedalign.initial_parameters import InitialParameters, build_initial
from fedalign.node import initial_models

SAMPLES = {"train": 40, "val": 10, "test": 10}
F = "/api/v1/federations/{federation_id}"
N = "/api/v1/node"

# Everyone who calls, by name; a name says how the credential relates to the resource the call is about.
CALLERS = (
    "none",
    "wrong",
    "admin",
    "join",
    "other_join",
    "other_node",
    "peer",
    "own",
    "session",
    "session_nocsrf",
    "coordinator",
    "owner",
    "viewer",
    "source_viewer",
    "viewer_session",
    "other_owner",
    "other_viewer",
)
ANYONE = frozenset(CALLERS)
# The session without CSRF joins the session on safe methods; the viewer's session is the viewer's twin.
COORDINATORS = frozenset({"admin", "session", "coordinator"})
MANAGE = COORDINATORS | {"owner"}  # the federation's owner manages it as a coordinator does
READ = MANAGE | {"viewer", "source_viewer"}  # both organisations take part
NODES = frozenset({"own", "peer", "other_node"})  # each asks about itself
# Who stands in for whom: a caller behaves as its twin, and another organisation's token is refused with 404
# (not 403) where its twin may perform the operation, on the world's federations it does not take part in.
TWIN = {"viewer_session": "viewer"}
OUTSIDERS = {"other_owner": "owner", "other_viewer": "viewer"}
# The organisations: acme owns the world's federations and runs their target; north and south run sources.
ORGANISATIONS = {"alpha": "north", "beta": "south", "omega": "acme"}


# Secure aggregation's bodies: a usable X25519 public key, and a seed (both 32 bytes, base64).
A_PUBLIC_KEY = base64.b64encode(secagg.KeyPair.from_private_bytes(bytes(range(32))).public_bytes).decode()


def valid_d() -> bytes:
    return params.to_bytes(initial_models(FederationConfig.model_validate(tiny_settings()))["D"])


def tiny_initial() -> InitialParameters:
    """What `fedalign init-model` writes for the tiny federation (which the server also builds itself)."""
    return build_initial(FederationConfig.model_validate(tiny_settings()))


# ------------------------------------------------------------------------------------------------ the world


@dataclass
class Federation:
    id: str
    join: str
    tokens: dict[str, str]


@dataclass
class World:
    """`created`: a federation with alpha, beta, omega, not started; `running`: one past its setup, whose
    alpha has claimed its discriminator step (both owned by acme, their nodes run by `ORGANISATIONS`);
    `other`: another federation with its own node, owned by and run by elsewhere. `access`: each access
    caller's bearer token; `viewer_cookie`, `viewer_csrf`: the acme viewer's dashboard session."""

    api: Api
    created: Federation
    running: Federation
    other: Federation
    step: dict[str, Any]  # alpha's claimed task in `running`
    cookie: str
    csrf: str
    access: dict[str, str]
    viewer_cookie: str = ""
    viewer_csrf: str = ""
    serial: int = 0

    def fresh_created(self) -> None:
        self.created = new_federation(self.api, self.access["owner"])

    def unique(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"


def issue_token(api: Api, name: str, role: str, organisation: str | None = None) -> str:
    body = {"name": name, "role": role} | ({"organisation": organisation} if organisation else {})
    return str(api.ok("POST", "/api/v1/tokens", 201, json=body)["token"])


def new_federation(
    api: Api, owner: str = ADMIN_TOKEN, organisations: dict[str, str] | None = None, **overrides: Any
) -> Federation:
    """alpha, beta (sources) and omega (target), created with `owner`'s token; the nodes in
    `organisations` (default: `ORGANISATIONS`)."""
    federation = api.ok(
        "POST", "/api/v1/federations", 201, token=owner, json={**tiny_settings(), **overrides}
    )
    tokens = {}
    for name, role in (("alpha", "source"), ("beta", "source"), ("omega", "target")):
        body = {"name": name, "role": role, "dataset": f"npz:/data/{name}.npz"}
        organisation = (organisations or ORGANISATIONS).get(name)
        if organisation:
            body["organisation"] = organisation
        node = api.ok("POST", f"/api/v1/federations/{federation['id']}/nodes", 201, token=owner, json=body)
        tokens[name] = node["token"]
    return Federation(federation["id"], federation["join_token"], tokens)


def running_federation(api: Api, owner: str) -> tuple[Federation, dict[str, Any]]:
    federation = new_federation(api, owner)
    api.start(federation.id)
    for token in federation.tokens.values():
        task = api.task(token)
        assert task is not None and task["kind"] == "setup"
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    task = api.task(federation.tokens["alpha"])
    assert task is not None and set(task["uploads"]) == {"D"} and "D" in task["downloads"], task
    assert api.task(federation.tokens["beta"]) is not None  # beta's step is open too, and claimed
    return federation, task


def sign_in(api: Api, token: str = ADMIN_TOKEN) -> tuple[str, str]:
    response = api.request("POST", "/api/v1/session", token=None, json={"token": token})
    assert response.status_code == 200, response.text
    cookie = response.cookies[SESSION_COOKIE]
    api.client.cookies.clear()
    return cookie, response.json()["csrf_token"]


@pytest.fixture
def world(api: Api) -> World:
    access = {
        "coordinator": issue_token(api, "ops", "coordinator"),
        "owner": issue_token(api, "acme-owner", "owner", "acme"),
        "viewer": issue_token(api, "acme-viewer", "viewer", "acme"),
        "source_viewer": issue_token(api, "north-viewer", "viewer", "north"),
        "other_owner": issue_token(api, "elsewhere-owner", "owner", "elsewhere"),
        "other_viewer": issue_token(api, "elsewhere-viewer", "viewer", "elsewhere"),
    }
    elsewhere = dict.fromkeys(ORGANISATIONS, "elsewhere")
    other = new_federation(api, access["other_owner"], elsewhere)
    running, step = running_federation(api, access["owner"])
    cookie, csrf = sign_in(api)
    world = World(api, new_federation(api, access["owner"]), running, other, step, cookie, csrf, access)
    world.viewer_cookie, world.viewer_csrf = sign_in(api, access["viewer"])
    return world


# ------------------------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Call:
    path: str
    json: Any = None
    content: bytes | None = None


@dataclass(frozen=True)
class Rule:
    """Who may call an operation, and how to call it validly in `world`."""

    allowed: frozenset[str]
    ok: tuple[int, ...]
    # Which federation the call is about ("created" or "running"): its join and node tokens are `join`,
    # `own` (alpha) and `peer` (beta).
    about: str | None = None
    hidden: frozenset[str] = frozenset()  # refused with 404: not theirs to see
    denied: int = 403  # the answer to valid credentials without the right
    call: Callable[[World], Call] | None = None
    after: Callable[[World], None] | None = None  # undo what a call that passed changed
    always: Callable[[World], None] | None = None  # undo what `call` prepared, after each call


def path_of(template: str, world: World, about: str | None) -> str:
    federation = getattr(world, about) if about else world.running
    return (
        template.replace("{federation_id}", federation.id)
        .replace("{name}", "alpha")
        .replace("{round_number}", "1")
        .replace("{step_id}", str(world.step["step_id"]))
        .replace("{slot}", "D")
        .replace("{key}", world.step["downloads"]["D"].split("/artifacts/", 1)[1])
    )


def unpause(world: World) -> None:
    if world.api.ok("GET", f"/api/v1/federations/{world.running.id}")["status"] == "paused":
        world.api.ok("POST", f"/api/v1/federations/{world.running.id}/resume")


def paused_then_resume(world: World) -> Call:
    if world.api.ok("GET", f"/api/v1/federations/{world.running.id}")["status"] == "running":
        world.api.ok("POST", f"/api/v1/federations/{world.running.id}/pause")
    return Call(f"/api/v1/federations/{world.running.id}/resume")


def a_node_to_delete(world: World) -> Call:
    name = world.unique("leaving")
    world.api.register(world.created.id, name, "source")
    return Call(f"/api/v1/federations/{world.created.id}/nodes/{name}")


def a_federation(world: World) -> str:
    """A federation of its own (its join token can be rotated without touching the world's)."""
    return new_federation(world.api, world.access["owner"]).id


def an_access_token(world: World) -> str:
    """The id of an access token of its own, to rotate or revoke."""
    body = {"name": world.unique("throwaway"), "role": "viewer", "organisation": "acme"}
    return str(world.api.ok("POST", "/api/v1/tokens", 201, json=body)["id"])


def uploaded_then_complete(world: World) -> Call:
    alpha = world.running.tokens["alpha"]
    upload = world.api.request(
        "PUT",
        world.step["uploads"]["D"],
        token=alpha,
        content=valid_d(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert upload.status_code == 200, upload.text
    return Call(f"{N}/steps/{world.step['step_id']}/complete", json={})


def renewed(world: World) -> None:
    world.fresh_created()


EXPECTED: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule(ANYONE, (200,)),
    ("GET", "/readyz"): Rule(ANYONE, (200,)),
    # Only the cookie: a bearer token, even the admin's, is no dashboard session.
    ("GET", "/api/v1/session"): Rule(
        frozenset({"session", "session_nocsrf", "viewer_session"}), (200,), denied=401
    ),
    # Signing in takes the admin token in its body, whatever else the request carries.
    ("POST", "/api/v1/session"): Rule(
        ANYONE, (200,), call=lambda w: Call("/api/v1/session", json={"token": ADMIN_TOKEN})
    ),
    ("DELETE", "/api/v1/session"): Rule(ANYONE, (204,)),
    # Every role lists federations: each sees those within its reach (test_api_roles.py checks which).
    ("GET", "/api/v1/federations"): Rule(READ | {"other_owner", "other_viewer"}, (200,)),
    ("POST", "/api/v1/federations"): Rule(
        MANAGE | {"other_owner"}, (201,), call=lambda w: Call("/api/v1/federations", json=tiny_settings())
    ),
    # Access tokens: coordinators only.
    ("GET", "/api/v1/tokens"): Rule(COORDINATORS, (200,)),
    ("POST", "/api/v1/tokens"): Rule(
        COORDINATORS,
        (201,),
        call=lambda w: Call(
            "/api/v1/tokens", json={"name": w.unique("issued"), "role": "viewer", "organisation": "acme"}
        ),
    ),
    ("POST", "/api/v1/tokens/{token_id}/rotate"): Rule(
        COORDINATORS, (200,), call=lambda w: Call(f"/api/v1/tokens/{an_access_token(w)}/rotate")
    ),
    ("DELETE", "/api/v1/tokens/{token_id}"): Rule(
        COORDINATORS, (204,), call=lambda w: Call(f"/api/v1/tokens/{an_access_token(w)}")
    ),
    ("GET", F): Rule(READ, (200,), "created"),
    ("GET", F + "/access"): Rule(READ, (200,), "created"),
    ("DELETE", F): Rule(MANAGE, (204,), "created", after=renewed),
    ("POST", F + "/clone"): Rule(
        MANAGE, (201,), "created", call=lambda w: Call(f"/api/v1/federations/{w.created.id}/clone", json={})
    ),
    ("POST", F + "/start"): Rule(MANAGE, (200,), "created", after=renewed),
    ("POST", F + "/pause"): Rule(MANAGE, (200,), "running", always=unpause),
    ("POST", F + "/resume"): Rule(MANAGE, (200,), "running", call=paused_then_resume, always=unpause),
    ("POST", F + "/cancel"): Rule(MANAGE, (200,), "created", after=renewed),
    # Registration: the admin, or this federation's join token (never another federation's).
    ("POST", F + "/nodes"): Rule(
        MANAGE | {"join"},
        (201,),
        "created",
        call=lambda w: Call(
            f"/api/v1/federations/{w.created.id}/nodes",
            json={"name": w.unique("joining"), "role": "source", "dataset": "npz:/data/x.npz"},
        ),
    ),
    # A viewer lists its own organisation's nodes only (test_api_roles.py checks which): alpha is north's.
    ("GET", F + "/nodes"): Rule(READ, (200,), "created"),
    ("GET", F + "/nodes/{name}"): Rule(
        MANAGE | {"source_viewer"}, (200,), "created", hidden=frozenset({"viewer"})
    ),
    ("DELETE", F + "/nodes/{name}"): Rule(MANAGE, (204,), "created", call=a_node_to_delete),
    # Credentials' life cycle: on a node or a federation of their own, so the world's tokens stay valid.
    ("POST", F + "/nodes/{name}/token"): Rule(
        MANAGE, (200,), "created", call=lambda w: Call(a_node_to_delete(w).path + "/token")
    ),
    ("DELETE", F + "/nodes/{name}/token"): Rule(
        MANAGE, (204,), "created", call=lambda w: Call(a_node_to_delete(w).path + "/token")
    ),
    ("POST", F + "/join-token"): Rule(
        MANAGE, (200,), "created", call=lambda w: Call(f"/api/v1/federations/{a_federation(w)}/join-token")
    ),
    ("DELETE", F + "/join-token"): Rule(
        MANAGE, (204,), "created", call=lambda w: Call(f"/api/v1/federations/{a_federation(w)}/join-token")
    ),
    # A federation's initial model, before it starts: the manifest document, then the parameters (the tiny
    # federation's own, which the server built: uploading them again changes nothing).
    ("PUT", F + "/initial-model/manifest"): Rule(
        MANAGE,
        (200,),
        "created",
        call=lambda w: Call(
            f"/api/v1/federations/{w.created.id}/initial-model/manifest",
            json=tiny_initial().manifest.to_json(),
        ),
    ),
    ("PUT", F + "/initial-model/parameters"): Rule(
        MANAGE,
        (200,),
        "created",
        call=lambda w: Call(
            f"/api/v1/federations/{w.created.id}/initial-model/parameters", content=tiny_initial().to_bytes()
        ),
    ),
    ("GET", F + "/manifest"): Rule(READ, (200,), "created"),
    ("GET", F + "/rounds"): Rule(READ, (200,), "running"),
    ("GET", F + "/rounds/{round_number}"): Rule(READ, (200,), "running"),
    ("GET", F + "/aggregations"): Rule(MANAGE, (200,), "running"),
    ("POST", F + "/aggregations"): Rule(
        MANAGE,
        (202,),
        "running",
        call=lambda w: Call(f"/api/v1/federations/{w.running.id}/aggregations", json={}),
    ),
    ("GET", F + "/metrics"): Rule(READ, (200,), "running"),
    ("GET", F + "/metrics.csv"): Rule(READ, (200,), "running"),
    # Not published while the federation runs: 409 is the answer that got past the credentials. The model
    # is the target's: of the viewers, only its organisation's (acme) read it.
    ("GET", F + "/model"): Rule(MANAGE | {"viewer"}, (409,), "running"),
    ("GET", F + "/model/card"): Rule(MANAGE | {"viewer"}, (409,), "running"),
    # No checkpoint is kept while it runs without checkpoint_every: the list is empty, round 1's is a 404.
    ("GET", F + "/checkpoints"): Rule(MANAGE | {"viewer"}, (200,), "running"),
    ("GET", F + "/checkpoints/{round_number}"): Rule(MANAGE | {"viewer"}, (404,), "running"),
    # Only a finished federation continues: 409 is the answer that got past the credentials.
    ("POST", F + "/continue"): Rule(
        MANAGE,
        (409,),
        "running",
        call=lambda w: Call(f"/api/v1/federations/{w.running.id}/continue", json={"rounds": 1}),
    ),
    # The dashboard's EventSource can send only the cookie.
    ("GET", F + "/events"): Rule(
        READ,
        (200,),
        "running",
        call=lambda w: Call(f"/api/v1/federations/{w.running.id}/events?follow=false"),
    ),
    # The node API: any node's own token, about itself; never the admin's, a join token or the session.
    ("GET", N + "/federation"): Rule(NODES, (200,), "running"),
    ("GET", N + "/manifest"): Rule(NODES, (200,), "running"),
    ("GET", N + "/task"): Rule(NODES, (200, 204), "running"),
    # A step: only its node; another node of the federation is refused, another federation's cannot see it.
    ("POST", N + "/steps/{step_id}/claim"): Rule(
        frozenset({"own"}), (200,), "running", hidden=frozenset({"other_node"})
    ),
    ("POST", N + "/steps/{step_id}/heartbeat"): Rule(
        frozenset({"own"}), (200,), "running", hidden=frozenset({"other_node"})
    ),
    # An aggregate: every node whose open step needs it (alpha's and beta's discriminator steps do).
    ("GET", N + "/artifacts/{key}"): Rule(frozenset({"own", "peer"}), (200,), "running"),
    ("PUT", N + "/steps/{step_id}/uploads/{slot}"): Rule(
        frozenset({"own"}),
        (200,),
        "running",
        hidden=frozenset({"other_node"}),
        call=lambda w: Call(w.step["uploads"]["D"].split("testserver", 1)[1], content=valid_d()),
    ),
    # A retryable failure: the step is offered again, so the calls after it still find it open.
    ("POST", N + "/steps/{step_id}/fail"): Rule(
        frozenset({"own"}),
        (200,),
        "running",
        hidden=frozenset({"other_node"}),
        call=lambda w: Call(
            f"{N}/steps/{w.step['step_id']}/fail", json={"reason": "OSError: disk busy", "retryable": True}
        ),
    ),
    # A body that is not multipart: past the credentials it answers 415, and the step stays open for the
    # calls after it (test_api_hot_path.py drives real submissions).
    ("POST", N + "/steps/{step_id}/submit"): Rule(
        frozenset({"own"}),
        (415,),
        "running",
        hidden=frozenset({"other_node"}),
        call=lambda w: Call(f"{N}/steps/{w.step['step_id']}/submit", content=b"not multipart"),
    ),
    ("POST", N + "/steps/{step_id}/complete"): Rule(
        frozenset({"own"}), (200,), "running", hidden=frozenset({"other_node"}), call=uploaded_then_complete
    ),
    # Secure aggregation: a node sends its own key (the token says whose) and reads its federation's keys;
    # it reveals shares to its own reveal step only. `running` averages in the clear, so a call that got
    # past the credentials answers 409 (test_api_secagg.py drives the secure ones).
    ("PUT", N + "/public-key"): Rule(
        NODES, (409,), "running", call=lambda w: Call(f"{N}/public-key", json={"public_key": A_PUBLIC_KEY})
    ),
    ("GET", N + "/public-keys"): Rule(NODES, (200,), "running"),
    ("POST", N + "/steps/{step_id}/reveal"): Rule(
        frozenset({"own"}),
        (409,),
        "running",
        hidden=frozenset({"other_node"}),
        call=lambda w: Call(
            f"{N}/steps/{w.step['step_id']}/reveal",
            json={"shares": {"D": {"x": 1, "self_shares": {}, "pair_shares": {}}}},
        ),
    ),
}


def allowed(rule: Rule, method: str) -> frozenset[str]:
    passing = set(rule.allowed) | {twin for twin, of in TWIN.items() if of in rule.allowed}
    if method in SAFE_METHODS and "session" in rule.allowed:
        passing.add("session_nocsrf")
    return frozenset(passing)


def hidden(rule: Rule, template: str) -> frozenset[str]:
    """Who gets 404: the rule's own, their twins, and another organisation's tokens on the world's
    federations where their twin may perform the operation."""
    refused = set(rule.hidden) | {twin for twin, of in TWIN.items() if of in rule.hidden}
    if "{federation_id}" in template:
        refused |= {outsider for outsider, twin in OUTSIDERS.items() if twin in rule.allowed | rule.hidden}
    return frozenset(refused)


def credentials(caller: str, world: World, about: str | None) -> dict[str, str]:
    federation = getattr(world, about) if about else world.running
    bearer = {
        "wrong": NODE_PREFIX + secrets.token_urlsafe(32),
        "admin": ADMIN_TOKEN,
        "join": federation.join,
        "other_join": world.other.join,
        "other_node": world.other.tokens["alpha"],
        "peer": federation.tokens["beta"],
        "own": federation.tokens["alpha"],
        **world.access,
    }
    if caller in bearer:
        return {"Authorization": f"Bearer {bearer[caller]}"}
    if caller == "session":
        return {"Cookie": f"{SESSION_COOKIE}={world.cookie}", CSRF_HEADER: world.csrf}
    if caller == "session_nocsrf":
        return {"Cookie": f"{SESSION_COOKIE}={world.cookie}"}
    if caller == "viewer_session":
        return {"Cookie": f"{SESSION_COOKIE}={world.viewer_cookie}", CSRF_HEADER: world.viewer_csrf}
    return {}


def snapshot(api: Api) -> dict[str, list[str]]:
    with api.services.db.read() as session:
        return {
            table.name: sorted(map(repr, session.execute(text(f"SELECT * FROM {table.name}")).all()))
            for table in Base.metadata.sorted_tables
        }


def document_operations(api: Api) -> list[tuple[str, str]]:
    document = api.request("GET", "/openapi.json", token=None).json()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    ]


def test_every_endpoint_lets_through_only_the_right_credentials(api: Api, world: World) -> None:
    operations = document_operations(api)
    missing = sorted(set(operations) - set(EXPECTED))
    assert not missing, f"operations without an access expectation (add them to EXPECTED): {missing}"
    assert not sorted(set(EXPECTED) - set(operations)), "EXPECTED names operations the API no longer has"

    problems: list[str] = []
    # Completing alpha's step goes last: after it, the step can no longer be claimed.
    for method, template in sorted(
        operations, key=lambda op: op == ("POST", N + "/steps/{step_id}/complete")
    ):
        rule = EXPECTED[(method, template)]
        passing = allowed(rule, method)
        state_change = method not in SAFE_METHODS
        # GET /node/task claims a step: a refused caller must change nothing there either.
        snapshotted = state_change or (method, template) == ("GET", N + "/task")
        for caller in CALLERS:
            call = rule.call(world) if rule.call else Call(path_of(template, world, rule.about))
            before = snapshot(api) if snapshotted and caller not in passing else None
            api.client.cookies.clear()
            try:
                response = api.client.request(
                    method,
                    call.path,
                    headers=credentials(caller, world, rule.about),
                    json=call.json,
                    content=call.content,
                )
            except Exception as exc:  # the TestClient re-raises what the app did not handle
                problems.append(f"{method} {template} as {caller}: raised {type(exc).__name__}: {exc}")
                continue
            status = response.status_code
            where = f"{method} {template} as {caller}: {status} {response.text[:160]}"
            if (method, template) == ("DELETE", "/api/v1/session") and caller.startswith("session"):
                # Signing out ended the world's session on the server: the callers after it need a new one.
                world.cookie, world.csrf = sign_in(api)
            if (method, template) == ("DELETE", "/api/v1/session") and caller == "viewer_session":
                world.viewer_cookie, world.viewer_csrf = sign_in(api, world.access["viewer"])
            if caller in passing:
                expected = rule.ok
            elif caller in ("none", "wrong"):
                expected = (401,)
            elif caller in hidden(rule, template):
                expected = (404,)
            else:
                expected = (rule.denied,)
            csrf_refusal = caller == "session_nocsrf" and caller not in passing and state_change
            if status not in expected:
                problems.append(f"{where} (expected {expected})")
            elif csrf_refusal and response.json()["error"]["code"] != "csrf":
                problems.append(f"{where} (expected the csrf refusal)")
            if before is not None and snapshot(api) != before:
                problems.append(f"{where}: refused, but it changed the database")
            # Put the world back for the next caller (also after a call that should have been refused).
            if rule.after is not None and 200 <= status < 300:
                rule.after(world)
            if rule.always is not None:
                rule.always(world)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------- target aggregation


def put_d(api: Api, url: str, token: str) -> Any:
    return api.request(
        "PUT", url, token=token, content=valid_d(), headers={"Content-Type": "application/octet-stream"}
    )


def sources_submitted(api: Api, federation: Federation) -> tuple[dict[str, Any], str]:
    """Start `federation` and finish its setup; alpha and beta upload and complete their D; the target has
    claimed its discriminator step. Returns the target's task and the URL of alpha's submission."""
    api.start(federation.id)
    for token in federation.tokens.values():
        task = api.task(token)
        assert task is not None
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    submitted = ""
    for name in ("alpha", "beta"):
        token = federation.tokens[name]
        task = api.task(token)
        assert task is not None and task["kind"] == "discriminator"
        stored = put_d(api, task["uploads"]["D"], token)
        assert stored.status_code == 200, stored.text
        api.ok("POST", task["complete_url"], token=token, json={})
        if name == "alpha":
            submitted = task["uploads"]["D"].split("/steps/")[0] + "/artifacts/" + stored.json()["key"]
    target = api.task(federation.tokens["omega"])
    assert target is not None and target["kind"] == "discriminator"
    return target, submitted


@pytest.mark.parametrize("aggregator", ["target", "server"])
def test_the_target_reads_submissions_only_when_it_aggregates(api: Api, aggregator: str) -> None:
    other = new_federation(api)
    federation = new_federation(api, **tiny_settings(aggregator=aggregator))
    tokens = federation.tokens
    target, submission = sources_submitted(api, federation)
    # While its own discriminator step is open, the target is one node among others.
    for token in (*tokens.values(), other.tokens["alpha"], ADMIN_TOKEN):
        assert api.request("GET", submission, token=token).status_code == 403
    assert put_d(api, target["uploads"]["D"], tokens["omega"]).status_code == 200
    api.ok("POST", target["complete_url"], token=tokens["omega"], json={})
    aggregate = api.task(tokens["omega"])
    if aggregator == "server":
        assert aggregate is None or aggregate["kind"] != "aggregate"
        assert api.request("GET", submission, token=tokens["omega"]).status_code == 403
        return
    assert aggregate is not None and aggregate["kind"] == "aggregate", aggregate
    assert aggregate["inputs"]["alpha"] == submission
    assert api.request("GET", submission, token=tokens["omega"]).status_code == 200
    for token in (tokens["alpha"], tokens["beta"], other.tokens["alpha"], ADMIN_TOKEN):
        assert api.request("GET", submission, token=token).status_code == 403
    # Only the target writes the aggregate (what matters here is who may, not the average).
    for token in (tokens["alpha"], tokens["beta"], ADMIN_TOKEN):
        assert put_d(api, aggregate["uploads"]["D"], token).status_code == 403
    assert put_d(api, aggregate["uploads"]["D"], other.tokens["alpha"]).status_code == 404
    assert put_d(api, aggregate["uploads"]["D"], tokens["omega"]).status_code == 200


# ----------------------------------------------------------------------------------- tokens, kept and logged


def everything_stored(api: Api) -> str:
    with api.services.db.read() as session:
        rows = [
            repr(row)
            for table in Base.metadata.sorted_tables
            for row in session.execute(text(f"SELECT * FROM {table.name}")).all()
        ]
    return "\n".join(rows)


def test_join_node_and_access_tokens_are_stored_only_as_their_hashes(api: Api, world: World) -> None:
    tokens = [federation.join for federation in (world.created, world.running, world.other)] + [
        token
        for federation in (world.created, world.running, world.other)
        for token in federation.tokens.values()
    ]
    tokens += world.access.values()
    stored = everything_stored(api)
    with api.services.db.read() as session:
        join_hashes = {h for (h,) in session.execute(text("SELECT join_token_hash FROM federations"))}
        node_hashes = {h for (h,) in session.execute(text("SELECT token_hash FROM nodes"))}
        access_hashes = {h for (h,) in session.execute(text("SELECT token_hash FROM access_tokens"))}
    for token in tokens:
        assert token not in stored, "a token is stored in plain text"
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert digest in join_hashes | node_hashes | access_hashes
    assert ADMIN_TOKEN not in stored
    data_dir = api.services.settings.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(t.encode() in content for t in [*tokens, ADMIN_TOKEN]), path


LOGGERS = (
    "",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "alembic",
    "fedalign",
    "celery",
    "kombu",
    "sse_starlette",
)


@pytest.fixture
def logged_server(live_server: str, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, Any]]:
    """The live server, with every logger at DEBUG and recorded by caplog: set after uvicorn configured its
    logging, and with caplog's handler on uvicorn's loggers, which do not propagate."""
    previous = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        previous[name] = logger.level
        logger.setLevel(logging.DEBUG)
        if name and not logger.propagate:
            logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    try:
        yield live_server, caplog
    finally:
        for name, level in previous.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            if caplog.handler in logger.handlers:
                logger.removeHandler(caplog.handler)


def test_tokens_never_reach_the_logs(logged_server: tuple[str, Any]) -> None:
    url, caplog = logged_server
    seen: list[str] = [ADMIN_TOKEN]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        federation = http.post("/api/v1/federations", json=tiny_settings(), headers=admin).json()
        seen.append(federation["join_token"])
        tokens = {}
        for name, role in (("alpha", "source"), ("beta", "source"), ("omega", "target")):
            node = http.post(
                f"/api/v1/federations/{federation['id']}/nodes",
                json={"name": name, "role": role, "dataset": "npz:/data/x.npz"},
                headers={"Authorization": f"Bearer {federation['join_token']}"},
            )
            assert node.status_code == 201, node.text
            tokens[name] = node.json()["token"]
        seen += tokens.values()
        assert http.post(f"/api/v1/federations/{federation['id']}/start", headers=admin).status_code == 200
        viewer = http.post(
            "/api/v1/tokens", json={"name": "v", "role": "viewer", "organisation": "acme"}, headers=admin
        )
        seen.append(viewer.json()["token"])
        as_viewer = {"Authorization": f"Bearer {viewer.json()['token']}"}
        assert http.get("/api/v1/federations", headers=as_viewer).status_code == 200
        assert (
            http.post(f"/api/v1/federations/{federation['id']}/start", headers=as_viewer).status_code == 403
        )
        viewer_session = http.post("/api/v1/session", json={"token": viewer.json()["token"]})
        seen += [viewer_session.cookies[SESSION_COOKIE], viewer_session.json()["csrf_token"]]
        http.cookies.clear()
        signed_in = http.post("/api/v1/session", json={"token": ADMIN_TOKEN})
        seen += [signed_in.cookies[SESSION_COOKIE], signed_in.json()["csrf_token"]]
        assert http.get("/api/v1/federations").status_code == 200  # with the cookie
        http.cookies.clear()
        for token in tokens.values():
            bearer = {"Authorization": f"Bearer {token}"}
            task = http.get("/api/v1/node/task", headers=bearer).json()
            assert http.get("/api/v1/node/federation", headers=bearer).status_code == 200
            done = http.post(task["complete_url"], json={"samples": SAMPLES}, headers=bearer)
            assert done.status_code == 200, done.text
        alpha = {"Authorization": f"Bearer {tokens['alpha']}"}
        task = http.get("/api/v1/node/task", headers=alpha).json()
        upload = {**alpha, "Content-Type": "application/octet-stream"}
        assert http.put(task["uploads"]["D"], content=valid_d(), headers=upload).status_code == 200
        assert http.put(task["uploads"]["D"], content=b"not safetensors", headers=upload).status_code == 422
        # Refusals: an unknown token, a token in the wrong place, signing in with a node's or a wrong token.
        wrong = NODE_PREFIX + secrets.token_urlsafe(32)
        seen.append(wrong)
        assert (
            http.get("/api/v1/federations", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        )
        assert http.get("/api/v1/federations", headers=alpha).status_code == 403
        assert http.post("/api/v1/session", json={"token": tokens["beta"]}).status_code == 403
        assert http.post("/api/v1/session", json={"token": wrong}).status_code == 401
        assert http.get("/api/v1/nowhere", headers=admin).status_code == 404
    # The server's records; httpx and httpcore are this test's client, which logs the responses it got.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name == "uvicorn.access" for r in records), "the access log was not captured"
    assert any(r.name.startswith("sqlalchemy.engine") for r in records), "the SQL log was not captured"
    formatter = logging.Formatter()
    logged = "\n".join(f"{formatter.format(r)} {r.args!r}" for r in records)
    leaked = [secret[:12] + "..." for secret in seen if secret in logged]
    assert not leaked, f"tokens in the logs: {leaked}"
