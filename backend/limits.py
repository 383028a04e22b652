"""Request body limits, enforced while the body streams in (ASGI middleware).

JSON bodies are small by nature; one that claims, or turns out, to be larger than ``max_json_bytes`` is
answered 413 before it is read whole. Parameter uploads (a node's, and a federation's initial parameters)
have their own, larger limits, enforced by their routes as they write the body to disk (`backend.uploads`).
"""

from __future__ import annotations

from pydantic import AfterValidator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import error_response

UPLOAD_PATH_MARK = "/uploads/"
# A federation's initial parameters (safetensors, like a node's uploads; the route enforces its own limit).
INITIAL_PARAMETERS_SUFFIX = "/initial-model/parameters"
# A node's combined submission (POST /api/v1/node/steps/{id}/submit): safetensors parts and the completion.
NODE_STEPS_PREFIX = "/api/v1/node/steps/"
SUBMIT_SUFFIX = "/submit"
LIMITED_METHODS = frozenset({"POST", "PUT", "PATCH"})
BIGINT_MAX = 2**63 - 1


def _fits_bigint(value: int | None) -> int | None:
    if value is not None and value > BIGINT_MAX:
        raise ValueError(f"must be at most {BIGINT_MAX}")
    return value


# For an integer parameter that is compared with a 64-bit column (ids): a larger value names nothing, and the
# database drivers refuse it (SQLite with OverflowError, PostgreSQL with "bigint out of range"), so it is
# refused with a 422 first. A validator leaves the OpenAPI document (and the clients generated from it) as is.
Bigint = AfterValidator(_fits_bigint)


def _message(max_bytes: int) -> str:
    return (
        f"the request body is over the limit of {max_bytes} bytes for JSON requests "
        "(FEDALIGN_MAX_JSON_BYTES); send a smaller body"
    )


def is_parameter_upload(path: str) -> bool:
    """Whether ``path`` takes safetensors bytes, whose route counts them against the upload limit (a
    combined submission's route counts each part against its own)."""
    path = path.rstrip("/")
    return (
        UPLOAD_PATH_MARK in path
        or path.endswith(INITIAL_PARAMETERS_SUFFIX)
        or (path.startswith(NODE_STEPS_PREFIX) and path.endswith(SUBMIT_SUFFIX))
    )


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body reading passes it on as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _message(max_bytes))


class JsonBodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in LIMITED_METHODS
            or is_parameter_upload(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large", _message(self.max_bytes))
        await response(scope, receive, send)
