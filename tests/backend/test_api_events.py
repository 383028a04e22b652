"""Live events over server-sent events: ordered, persisted, replayed after Last-Event-ID."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, Api
from test_api_aggregations import wait_until

from backend.routers.events import STREAMS
from backend.schemas.events import EVENT_TYPES, EventOut
from backend.services import events
from backend.settings import Settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def parse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """SSE messages as dicts (id, event, data), skipping comments (pings)."""
    message: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in message:
                message["data"] = json.loads(message["data"])
                yield message
            message = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            message[field] = value[1:] if value.startswith(" ") else value


def test_the_event_log_replays_in_order_and_resumes_after_last_event_id(api: Api) -> None:
    federation, _ = api.federation_with_nodes()
    fid = federation["id"]
    api.start(fid)
    response = api.request("GET", f"/api/v1/federations/{fid}/events?follow=false")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = list(parse(iter(response.text.splitlines())))
    assert [e["event"] for e in events] == [
        "status",
        "node_registered",
        "node_registered",
        "node_registered",
        "status",
        "phase",
    ]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and [e["data"]["id"] for e in events] == ids
    assert events[-1]["data"]["payload"] == {"round": 0, "phase": "setup"}
    resumed = api.request(
        "GET", f"/api/v1/federations/{fid}/events?follow=false", headers={"Last-Event-ID": str(ids[3])}
    )
    assert [int(e["id"]) for e in parse(iter(resumed.text.splitlines()))] == ids[4:]
    assert api.request("GET", "/api/v1/federations/nope/events").status_code == 404
    assert api.request("GET", f"/api/v1/federations/{fid}/events", token=None).status_code == 401
    bad = api.request("GET", f"/api/v1/federations/{fid}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422


def test_a_live_stream_delivers_new_events_as_they_happen(live_server: str) -> None:
    with httpx.Client(base_url=live_server, headers=ADMIN, timeout=10) as http:
        created = http.post(
            "/api/v1/federations", json={"name": "live", "architecture": "mlp", "model": {"input_shape": [4]}}
        ).json()
        fid = created["id"]
        with http.stream("GET", f"/api/v1/federations/{fid}/events") as stream:
            messages = parse(stream.iter_lines())
            first = next(messages)
            assert (first["event"], first["data"]["payload"]["status"]) == ("status", "created")
            http.post(
                f"/api/v1/federations/{fid}/nodes", json={"name": "omega", "role": "target", "dataset": "x:y"}
            )
            second = next(messages)
            assert second["event"] == "node_registered" and int(second["id"]) > int(first["id"])
        with http.stream(
            "GET", f"/api/v1/federations/{fid}/events", headers={"Last-Event-ID": first["id"]}
        ) as stream:
            assert next(parse(stream.iter_lines()))["id"] == second["id"]


def test_each_message_is_an_event_out_whose_event_name_is_its_type(api: Api) -> None:
    federation, _ = api.federation_with_nodes()
    api.start(federation["id"])
    response = api.request("GET", f"/api/v1/federations/{federation['id']}/events?follow=false")
    for message in parse(iter(response.text.splitlines())):
        event = EventOut.model_validate(message["data"])
        assert (str(event.id), event.type) == (message["id"], message["event"])


def test_an_event_of_an_undeclared_type_is_refused_before_it_is_stored(api: Api) -> None:
    federation = api.create_federation()
    with pytest.raises(ValueError, match="not declared"), api.services.db.write() as session:
        events.record(session, federation["id"], "rumour", {})  # type: ignore[arg-type]
    response = api.request("GET", f"/api/v1/federations/{federation['id']}/events?follow=false")
    assert [m["event"] for m in parse(iter(response.text.splitlines()))] == ["status"]


def test_the_openapi_document_declares_every_event_type_as_one_schema(api: Api) -> None:
    """The dashboard's generated client takes the types its stream listens to from this schema."""
    document = api.request("GET", "/openapi.json", token=None).json()
    assert document["components"]["schemas"]["EventType"]["enum"] == list(EVENT_TYPES)
    assert document["components"]["schemas"]["EventOut"]["properties"]["type"] == {
        "$ref": "#/components/schemas/EventType"
    }


def test_a_client_holds_a_bounded_number_of_event_streams(
    api: Api, settings: Settings, live_server: str
) -> None:
    settings.max_streams_per_client = 3
    fid = api.create_federation()["id"]
    url = f"{live_server}/api/v1/federations/{fid}/events"
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(headers=api.admin, timeout=30))
        streams = []
        for _ in range(3):
            stream = stack.enter_context(client.stream("GET", url))
            assert stream.status_code == 200
            streams.append(stream)
        refused = client.get(url)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert client.get(url, params={"follow": "false"}).status_code == 429, "a replay is a stream too"
        streams[0].close()
        wait_until(lambda: STREAMS.count("127.0.0.1") == 2)
        again = stack.enter_context(client.stream("GET", url))
        assert again.status_code == 200
    wait_until(lambda: STREAMS.count("127.0.0.1") == 0)
