"""Schemathesis fuzzes every operation of the app's OpenAPI document, on SQLite and on PostgreSQL.

Each operation gets generated requests from four callers: the admin token, a node's token, a viewer's access
token (of an organisation that takes part in no seeded federation), and no token. The caller the operation
is for (the admin for management and access tokens, a node for /api/v1/node, nobody for the probes and the
sign-in) gets valid and invalid requests (schemathesis's positive and negative modes), the others valid ones
(mostly refused, with a 401, 403 or 404 the operation must declare). Every answer is checked: never a 5xx, a
status code the operation declares, the declared content type, a body (the error body included) and headers
that match the declared schemas.

The n-th request for an operation and a caller is sent as one of five variants in turn (`VARIANTS`): on the
seeded resources (a federation with its nodes, named with characters a header cannot carry as they are; a
started one whose node alpha holds an open step with an upload slot and downloads), so that it gets past
the 404s; the same with edge values the database cannot hold (an integer one past the 64-bit range, a NUL
character) in its query, headers and JSON body; with such values as its path parameters; with a JSON body
that is not UTF-8; and as generated. The event stream is asked for with follow=false (a followed one never
ends). The requests go through the `api` fixture's TestClient, so they reach the app whose lifespan it
started, and an exception the app does not handle surfaces as one.

Generation is derandomized (the same requests every run) and small; failures are collected, not shrunk,
and reported together.

(Schemathesis's pytest plugin, `schema.parametrize()`, is not used: with pytest 9.2, whose nodes no longer
have `_nodeid`, it fails before running anything; this file uses its Python API.)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from api_support import ADMIN_TOKEN, Api
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.app import create_app
from backend.settings import Settings

# Examples per operation: for its own caller in each generation mode, and for each other caller. Small on
# purpose: the file must stay well under a minute on two busy cores, on both databases.
OWN_EXAMPLES = 4
OTHER_EXAMPLES = 2
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CALLERS = ("admin", "node", "viewer", "none")
SAMPLES = {"train": 40, "val": 10, "test": 10}
EVENTS = "/api/v1/federations/{federation_id}/events"
# One past the largest value of a 64-bit integer column, and the character PostgreSQL's text cannot hold.
EDGE_INT = 2**63
NUL = "\x00"
# A federation name a Content-Disposition header cannot carry as it is (not latin-1, a quote, a newline).
AWKWARD_NAME = 'digits → "mnistm"\n(copy)'


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # The document needs no database; the app that answers the requests is the `api` fixture's.
    settings = Settings(data_dir=tmp_path_factory.mktemp("fuzz-openapi"), admin_token="x" * 32)
    return schemathesis.openapi.from_dict(create_app(settings).openapi())


@dataclass
class World:
    """Real resources for path parameters, and the token of the started federation's node alpha."""

    created_id: str
    running_id: str
    node_token: str
    viewer_token: str
    step_ids: list[int]
    slots: list[str]
    artifact_keys: list[str]
    access_token_ids: list[str]

    def path_values(self) -> dict[str, list[Any]]:
        return {
            "federation_id": [self.created_id, self.running_id],
            "name": ["alpha", "omega"],
            "round_number": [0, 1],
            "step_id": self.step_ids,
            "slot": self.slots,
            "key": self.artifact_keys,
            "token_id": self.access_token_ids,
        }


def seed(api: Api) -> World:
    """A created federation with sources alpha, beta and target omega, and a started one past its setup
    whose alpha has claimed its discriminator step (an upload slot, aggregates to download); a viewer's
    access token, and another access token to rotate or revoke."""
    viewer = api.ok("POST", "/api/v1/tokens", 201, json={"name": "v", "role": "viewer", "organisation": "o"})
    spare = api.ok("POST", "/api/v1/tokens", 201, json={"name": "s", "role": "owner", "organisation": "o"})
    created, _ = api.federation_with_nodes(name=AWKWARD_NAME)
    running, tokens = api.federation_with_nodes()
    api.start(running["id"])
    for token in tokens.values():
        task = api.task(token)
        assert task is not None and task["kind"] == "setup"
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})
    task = api.task(tokens["alpha"])
    assert task is not None and task["uploads"], task
    others = api.task(tokens["beta"])
    assert others is not None
    downloads = [url.split("/artifacts/", 1)[1] for url in task["downloads"].values()]
    return World(
        created_id=created["id"],
        running_id=running["id"],
        node_token=tokens["alpha"],
        viewer_token=viewer["token"],
        # alpha's open step, beta's (another node's), alpha's finished setup step
        step_ids=[task["step_id"], others["step_id"], 1],
        slots=[*task["uploads"], "G"],
        artifact_keys=[*downloads, "r0/init/G"],
        access_token_ids=[spare["id"]],
    )


def owner(operation: Any) -> str:
    """The caller an operation is for."""
    if operation.path.startswith("/api/v1/node/"):
        return "node"
    if operation.path.startswith(("/api/v1/federations", "/api/v1/tokens")):
        return "admin"
    return "none"  # the health probes and the dashboard's sign-in


def destructive(operation: Any) -> bool:
    return operation.method.upper() == "DELETE" or operation.path.endswith("/cancel")


def integer(parameter: Any) -> bool:
    return '"integer"' in json.dumps(parameter.definition.get("schema", {}))


def with_edges(case: Any, in_path: bool, in_values: bool) -> Any:
    """The case with values the database cannot hold: in its path, every integer one past the 64-bit range
    and every string a NUL; in its values, the same for every integer query or header parameter (the
    optional ones included), and a NUL appended to every string of its query and JSON body."""
    operation = case.operation

    def edge(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return EDGE_INT
        if isinstance(value, str):
            return value + NUL
        if isinstance(value, dict):
            return {k: edge(v) for k, v in value.items()}
        if isinstance(value, list):
            return [edge(v) for v in value]
        return value

    if in_path and case.path_parameters:
        # Short, so that no length limit stops them before the database; path parameters are percent-encoded.
        case.path_parameters = {
            k: EDGE_INT if isinstance(v, int) else "edge%00" for k, v in case.path_parameters.items()
        }
    if in_values:
        query = {k: edge(v) for k, v in (case.query or {}).items()}
        query.update({p.name: EDGE_INT for p in operation.query if integer(p)})
        case.query = query
        headers = dict(case.headers or {})
        headers.update({p.name: str(EDGE_INT) for p in operation.headers if integer(p)})
        case.headers = headers
        if isinstance(case.body, dict):
            case.body = edge(case.body)
    return case


# How the n-th case for an operation and a caller is sent, in turn: (its path on the seeded resources, edge
# values in its path, edge values in its query, headers and body, a JSON body that is not UTF-8). With at
# least five cases (the caller the operation is for gets twice OWN_EXAMPLES), every variant is sent.
VARIANTS = (
    (True, False, False, False),
    (True, False, True, False),
    (True, True, False, False),
    (True, False, False, True),
    (False, False, False, False),
)
UNDECODABLE = b'{"name": "\xff\xfe"}'


def strategy(operation: Any, mode: GenerationMode, world: World) -> Any:
    """Generated cases, each with a choice of the seeded resources for its path parameters."""
    values = world.path_values()
    real = st.fixed_dictionaries({p.name: st.sampled_from(values[p.name]) for p in operation.path_parameters})
    return st.tuples(operation.as_strategy(generation_mode=mode), real)


def variant(case: Any, real: dict[str, Any], n: int) -> tuple[Any, bytes | None]:
    """The case as the n-th variant sends it, and the raw body to send instead of its own, if any."""
    on_real, edge_path, edge_values, undecodable = VARIANTS[n % len(VARIANTS)]
    if on_real and real:
        case.path_parameters = {**(case.path_parameters or {}), **real}
    raw = UNDECODABLE if undecodable and isinstance(case.body, dict | list) else None
    return with_edges(case, edge_path, edge_values), raw


@dataclass
class Fuzzer:
    api: Api
    world: World
    failures: list[str] = field(default_factory=list)
    sent: int = 0

    def send(self, case: Any, caller: str, raw: bytes | None = None) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        # The caller's credentials only: schemathesis generates Authorization headers and cookies too.
        headers = {k: v for k, v in kwargs["headers"].items() if k.lower() not in {"authorization", "cookie"}}
        token = {
            "admin": ADMIN_TOKEN,
            "node": self.world.node_token,
            "viewer": self.world.viewer_token,
            "none": None,
        }[caller]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        params = kwargs.get("params") or {}
        if case.operation.path == EVENTS:
            params = {**params, "follow": "false"}
        body: dict[str, Any] = {}
        if raw is not None:
            body["content"] = raw
        elif "json" in kwargs:
            body["content"] = json.dumps(kwargs["json"]).encode()
        elif kwargs.get("data") is not None:
            data = kwargs["data"]
            body["content"] = data.encode() if isinstance(data, str) else data
        self.api.client.cookies.clear()
        request = (
            f"{kwargs['method']} {kwargs['url']} params={params} body={body.get('content', b'')[:200]!r}"
        )
        label = f"[{caller}] {case.operation.label}"
        try:
            response = self.api.client.request(
                kwargs["method"], kwargs["url"], params=params, headers=headers, **body
            )
        except Exception as exc:  # the TestClient re-raises what the app did not handle: a 500
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.failures.append(f"{label}: raised {type(exc).__name__}: {first}\n    {request}")
            return
        self.sent += 1
        checks = CHECKS
        try:
            if case.operation.path == EVENTS and response.status_code == 200:
                # The document declares the stream as a string (Open API 3.1 has no schema for one event);
                # schemathesis reads that schema as each event's, so the events are checked here instead.
                checks = [check for check in CHECKS if check is not response_schema_conformance]
                check_event_stream(response.text)
            case.validate_response(response, checks=checks)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is a BaseExceptionGroup
            found = "; ".join(
                f"{getattr(p, 'title', type(p).__name__)}: {p}".replace("\n", " ")
                for p in getattr(exc, "exceptions", None) or (exc,)
            )
            self.failures.append(
                f"{label}: {response.status_code}: {found}\n    {request}\n    -> {response.text[:300]}"
            )


EVENT_TYPES = {
    "status",
    "phase",
    "phase_closed",
    "aggregation",
    "aggregate",
    "submission",
    "step_done",
    "metrics",
    "node_registered",
    "node_removed",
}


def check_event_stream(stream: str) -> None:
    """Every event as the operation describes it: an id, a declared type, and JSON data that repeats both."""
    for block in stream.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if not fields:
            continue  # a keep-alive comment
        assert fields.keys() == {"id", "event", "data"}, block
        data = json.loads(fields["data"])
        assert data.keys() == {"id", "type", "payload", "created_at"}, block
        assert str(data["id"]) == fields["id"] and data["type"] == fields["event"] in EVENT_TYPES, block


def fuzz(
    fuzzer: Fuzzer,
    operation: Any,
    caller: str,
    mode: GenerationMode,
    examples: int,
    sent: Iterator[int],
) -> None:
    @given(drawn=strategy(operation, mode, fuzzer.world))
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(drawn: tuple[Any, dict[str, Any]]) -> None:
        case, raw = variant(*drawn, next(sent))
        fuzzer.send(case, caller, raw)

    try:
        run()
    except Unsatisfiable:
        # No parameters and no body: nothing to make invalid.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_every_operation_answers_within_its_contract(api: Api, schema: Any) -> None:
    fuzzer = Fuzzer(api, seed(api))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        for caller in CALLERS:
            if caller == "admin" and destructive(operation):
                # Deleting or cancelling uses the resources up: fresh ones for each such operation.
                fuzzer.world = seed(api)
            sent = itertools.count()
            if caller == owner(operation):
                fuzz(fuzzer, operation, caller, GenerationMode.POSITIVE, OWN_EXAMPLES, sent)
                fuzz(fuzzer, operation, caller, GenerationMode.NEGATIVE, OWN_EXAMPLES, sent)
            else:
                fuzz(fuzzer, operation, caller, GenerationMode.POSITIVE, OTHER_EXAMPLES, sent)
    assert fuzzer.sent > len(operations) * len(CALLERS) * 2
    assert not fuzzer.failures, f"{len(fuzzer.failures)} failures:\n" + "\n".join(fuzzer.failures[:30])
