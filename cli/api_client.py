"""The management API over HTTP (httpx), for the client commands: federations, their nodes and rounds, live
events. Answers are parsed with the API's own response models (`backend.schemas`, plain pydantic that
needs none of the server's packages), so this client and the server cannot drift apart; an error answer
becomes an `ApiError` with the server's code and message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from backend.schemas.access_tokens import AccessTokenCreate, AccessTokenCreated, AccessTokenList
from backend.schemas.events import EventOut
from backend.schemas.federations import (
    FederationCreated,
    FederationList,
    FederationOut,
    JoinToken,
    JoinTokenLimits,
)
from backend.schemas.nodes import NodeCreate, NodeCreated, NodeList
from backend.schemas.rounds import RoundList

Model = TypeVar("Model", bound=BaseModel)
Transition = Literal["start", "pause", "resume", "cancel"]
TIMEOUT_S = 60.0
# Server-sent events: the server pings an idle stream every FEDALIGN_SSE_PING_S (15 s by default), so a read
# that waits longer than this means the connection is gone.
EVENT_READ_TIMEOUT_S = 90.0


class ApiError(Exception):
    """An error answer: its HTTP status, the API's machine-readable code, and its message for people."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class Unreachable(Exception):
    """No answer from the server (refused, timed out, DNS), or an answer that is not FedAlign's."""


@dataclass(frozen=True)
class ServerSentEvent:
    id: int
    event: EventOut


class ApiClient:
    """The API at ``url`` with a bearer token. ``http`` lets a caller (a test) supply its own client."""

    def __init__(self, url: str, token: str | None, *, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=TIMEOUT_S)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, self.url + path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the FedAlign API at {self.url} ({exc or type(exc).__name__})"
            ) from exc
        check(response)
        return response

    def _parsed(self, model: type[Model], response: httpx.Response) -> Model:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise Unreachable(
                f"{self.url} answered {response.request.method} {response.request.url.path} with something "
                f"that is not a FedAlign {model.__name__} ({exc.error_count()} problems): is this FedAlign's "
                "API, and of the same version as this command?"
            ) from exc

    # ------------------------------------------------------------------------------------ federations

    def federations(self) -> FederationList:
        return self._parsed(FederationList, self._request("GET", "/api/v1/federations"))

    def federation(self, federation_id: str) -> FederationOut:
        return self._parsed(FederationOut, self._request("GET", f"/api/v1/federations/{federation_id}"))

    def find_federation(self, reference: str) -> FederationOut:
        """A federation by id, else by a unique name or id prefix (what a person types)."""
        try:
            return self.federation(reference)
        except ApiError as exc:
            if exc.status not in (404, 422):
                raise
        candidates = [
            f for f in self.federations().items if f.name == reference or f.id.startswith(reference)
        ]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ApiError(
                404,
                "not_found",
                f"no federation has the id, id prefix or name {reference!r}; list them with "
                "`fedalign federations list`",
            )
        listed = ", ".join(f"{f.id} ({f.name})" for f in candidates)
        raise ApiError(409, "ambiguous", f"{reference!r} names several federations: {listed}; give its id")

    def create_federation(self, settings: dict[str, Any]) -> FederationCreated:
        response = self._request("POST", "/api/v1/federations", json=settings)
        return self._parsed(FederationCreated, response)

    def transition(self, federation_id: str, action: Transition) -> FederationOut:
        response = self._request("POST", f"/api/v1/federations/{federation_id}/{action}")
        return self._parsed(FederationOut, response)

    def continue_for(self, federation_id: str, rounds: int) -> FederationOut:
        response = self._request(
            "POST", f"/api/v1/federations/{federation_id}/continue", json={"rounds": rounds}
        )
        return self._parsed(FederationOut, response)

    def put_initial_manifest(self, federation_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """The manifest document `fedalign init-model` wrote (before the start)."""
        path = f"/api/v1/federations/{federation_id}/initial-model/manifest"
        return dict(self._request("PUT", path, json=document).json())

    def put_initial_parameters(self, federation_id: str, parameters: Path) -> dict[str, Any]:
        """The initial parameters `fedalign init-model` wrote (safetensors), streamed from the file."""
        path = f"/api/v1/federations/{federation_id}/initial-model/parameters"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(parameters.stat().st_size),
        }
        with parameters.open("rb") as body:
            return dict(self._request("PUT", path, content=body, headers=headers).json())

    # ---------------------------------------------------------------------------------- access tokens

    def access_tokens(self) -> AccessTokenList:
        return self._parsed(AccessTokenList, self._request("GET", "/api/v1/tokens"))

    def create_access_token(self, body: AccessTokenCreate) -> AccessTokenCreated:
        response = self._request("POST", "/api/v1/tokens", json=body.model_dump(mode="json"))
        return self._parsed(AccessTokenCreated, response)

    def rotate_access_token(self, token_id: str) -> AccessTokenCreated:
        return self._parsed(AccessTokenCreated, self._request("POST", f"/api/v1/tokens/{token_id}/rotate"))

    def revoke_access_token(self, token_id: str) -> None:
        self._request("DELETE", f"/api/v1/tokens/{token_id}")

    # ------------------------------------------------------------------------------- nodes and rounds

    def nodes(self, federation_id: str) -> NodeList:
        return self._parsed(NodeList, self._request("GET", f"/api/v1/federations/{federation_id}/nodes"))

    def register_node(self, federation_id: str, node: NodeCreate) -> NodeCreated:
        response = self._request(
            "POST", f"/api/v1/federations/{federation_id}/nodes", json=node.model_dump(mode="json")
        )
        return self._parsed(NodeCreated, response)

    def rotate_node_token(self, federation_id: str, name: str) -> NodeCreated:
        response = self._request("POST", f"/api/v1/federations/{federation_id}/nodes/{name}/token")
        return self._parsed(NodeCreated, response)

    def revoke_node_token(self, federation_id: str, name: str) -> None:
        self._request("DELETE", f"/api/v1/federations/{federation_id}/nodes/{name}/token")

    def rotate_join_token(self, federation_id: str, limits: JoinTokenLimits | None = None) -> JoinToken:
        body = (limits or JoinTokenLimits()).model_dump(mode="json", exclude_none=True)
        response = self._request("POST", f"/api/v1/federations/{federation_id}/join-token", json=body)
        return self._parsed(JoinToken, response)

    def revoke_join_token(self, federation_id: str) -> None:
        self._request("DELETE", f"/api/v1/federations/{federation_id}/join-token")

    def rounds(self, federation_id: str) -> RoundList:
        return self._parsed(RoundList, self._request("GET", f"/api/v1/federations/{federation_id}/rounds"))

    # ------------------------------------------------------------------------------------ live events

    def events(self, federation_id: str, after: int = 0) -> Iterator[ServerSentEvent]:
        """The federation's events after id ``after``, then live ones as they happen, until the server
        closes the stream. Raises `Unreachable` when the connection fails or goes silent."""
        url = f"{self.url}/api/v1/federations/{federation_id}/events"
        timeout = httpx.Timeout(TIMEOUT_S, read=EVENT_READ_TIMEOUT_S)
        headers = {**self._headers, "Accept": "text/event-stream"}
        try:
            with self.http.stream("GET", url, params={"after": after}, headers=headers, timeout=timeout) as r:
                if not r.is_success:
                    r.read()
                    check(r)
                yield from _parse_stream(r.iter_lines())
        except httpx.TransportError as exc:
            raise Unreachable(f"the event stream of {url} broke off ({exc or type(exc).__name__})") from exc


def _parse_stream(lines: Iterator[str]) -> Iterator[ServerSentEvent]:
    """Server-sent events (the text/event-stream format): fields until a blank line; comments (pings)
    skipped. Each event's data is the API's EventOut."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                event = EventOut.model_validate_json("\n".join(fields["data"]))
                yield ServerSentEvent(id=int(fields.get("id", [str(event.id)])[-1]), event=event)
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))


def check(response: httpx.Response) -> None:
    """Raise `ApiError` for an error answer, with the API's ``{"error": {code, message, details}}``."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, str(error["code"]), str(error["message"]), error.get("details"))
    except (json.JSONDecodeError, ValueError, KeyError, TypeError):
        text = response.text.strip()[:300] or response.reason_phrase
        raise ApiError(response.status_code, "http_error", text) from None
