"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``.

Routes raise `ApiError`; request validation, unknown routes and wrong methods are converted to the same
shape, and `responses` declares each status a route can answer in the OpenAPI document.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from backend.http_limits import BodyTooSlow

log = logging.getLogger("fedalign.backend")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. 'not_found', 'shape_mismatch'.")
    message: str = Field(description="What was wrong and what to do about it, in a sentence.")
    details: Any = Field(default=None, description="Structured extra information, e.g. the failing fields.")


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "not_found",
                        "message": "no federation with id 'f3c1...'; list them with GET /api/v1/federations",
                        "details": None,
                    }
                }
            ]
        }
    )

    error: ErrorDetail


# The status of a request whose client disconnected before it was read (nginx's 499, "client closed").
CLIENT_CLOSED = 499


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(code: str, message: str, details: Any = None) -> ApiError:
    return ApiError(409, code, message, details)


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=jsonable_encoder(details)))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


DESCRIPTIONS = {
    400: "The request cannot be read.",
    401: "No credentials, or credentials this service does not know (send `Authorization: Bearer <token>`).",
    403: "The credentials are valid but do not allow this action on this resource.",
    404: "The resource does not exist (or is not visible to these credentials).",
    409: "The request conflicts with the resource's current state (e.g. an illegal status transition).",
    413: "The request body exceeds the configured size limit.",
    415: "The request body's Content-Type is not one this endpoint reads.",
    422: "The request is well-formed but its content is invalid; `details` lists each problem.",
    429: "Too many at once from this client (e.g. open event streams); close some and try again.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "the request is invalid: " + "; ".join(parts) + more + ". Fix these fields and send it again."


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return error_response(422, "invalid_request", _validation_message(errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, "not_found", "no such endpoint; the API is described at /docs")
        if exc.status_code == 413:
            return error_response(413, "too_large", str(exc.detail))
        if exc.status_code == 405:
            return error_response(405, "method_not_allowed", "this endpoint does not take that HTTP method")
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8); malformed JSON is already a 422
            # (json_invalid), and 422 is what the OpenAPI document declares for a body that is not valid.
            return error_response(
                422, "invalid_request", "the request body cannot be read: send JSON encoded as UTF-8"
            )
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _exc: ClientDisconnect) -> JSONResponse:
        # The client went away before its request was read (a node stopped mid-upload): its error, not the
        # server's. Nobody reads this answer; it is what /metrics counts (499, nginx's "client closed").
        log.info(
            "%s %s: the client disconnected before its request was read", request.method, request.url.path
        )
        return error_response(
            CLIENT_CLOSED, "client_disconnected", "the client disconnected before sending its whole request"
        )

    @app.exception_handler(BodyTooSlow)
    async def _too_slow(request: Request, exc: BodyTooSlow) -> JSONResponse:
        log.info("%s %s: %s", request.method, request.url.path, exc)
        return error_response(
            408, "request_timeout", f"{exc} (FEDALIGN_BODY_TIMEOUT_S); send it again, faster or smaller"
        )

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried, e.g. a NUL character, which PostgreSQL's text
        # cannot hold (SQLite can): the request is invalid, not the server broken. Logged without the
        # statement's parameters, which are the request's values.
        refused = type(exc.orig).__name__
        log.warning("%s %s: the database refused a value (%s)", request.method, request.url.path, refused)
        return error_response(
            422,
            "invalid_request",
            "a value in this request cannot be stored or looked up (e.g. it holds a NUL character); "
            "fix it and send the request again",
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed unexpectedly; the error is logged")
