"""Parameter uploads as they stream in: safetensors bytes only, counted against their limit, hashed, and
written to a temp file in the artifact store, never held whole in memory.

The node API's uploads (``PUT /api/v1/node/steps/{id}/uploads/{slot}``) and a federation's initial
parameters (``PUT /api/v1/federations/{id}/initial-model/parameters``) arrive this way; each route then
validates the file against its manifest (`fedalign.params.validate`) before anything is stored.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from backend.errors import ApiError, conflict
from backend.services.store import ArtifactStore, Staged

SAFETENSORS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
UPLOAD_TYPES = frozenset({"application/octet-stream", "application/x-safetensors"})


class InFlight:
    """The uploads this process is receiving, by slot: a second upload to a slot while one streams in is
    refused (409), so that one slot never holds more than one temporary file of up to the upload limit."""

    def __init__(self) -> None:
        self._slots: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def __contains__(self, slot: tuple[str, ...]) -> bool:
        with self._lock:
            return slot in self._slots

    @contextmanager
    def one_at_a_time(self, slot: tuple[str, ...], what: str) -> Iterator[None]:
        with self._lock:
            if slot in self._slots:
                raise conflict(
                    "upload_in_progress",
                    f"an upload to {what} is already in progress; wait for its answer before sending another",
                )
            self._slots.add(slot)
        try:
            yield
        finally:
            with self._lock:
                self._slots.discard(slot)


IN_FLIGHT = InFlight()


def check_media_type(request: Request) -> None:
    """415 for a body that is not raw bytes: a form post or JSON here is a client mixing endpoints up; said
    before any of it is read."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type not in UPLOAD_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"uploads are raw safetensors bytes with Content-Type application/octet-stream, not {media_type}",
        )


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the upload is {size} bytes, over the limit of {limit} bytes (FEDALIGN_MAX_UPLOAD_BYTES)",
    )


def check_declared_size(request: Request, limit: int) -> None:
    """413 before reading when Content-Length already says the body is over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)


async def receive(request: Request, store: ArtifactStore, limit: int) -> Staged:
    """Stream the body to a temp file in ``store``, hashing and counting; refuse as soon as it passes
    ``limit``."""
    path: Path = store.temp_file()
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        "too_large",
                        f"the upload passed the limit of {limit} bytes (FEDALIGN_MAX_UPLOAD_BYTES) and was "
                        "refused without reading the rest",
                    )
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            await run_in_threadpool(os.fsync, fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Staged(path=path, sha256=digest.hexdigest(), size=size)
