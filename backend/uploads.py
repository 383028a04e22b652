"""Parameter uploads as they stream in: safetensors bytes only, counted against their limit, hashed, and
written to a temp file in the artifact store, never held whole in memory.

The node API's uploads (``PUT /api/v1/node/steps/{id}/uploads/{slot}``, and each file part of a combined
submission, ``POST /api/v1/node/steps/{id}/submit``) and a federation's initial parameters
(``PUT /api/v1/federations/{id}/initial-model/parameters``) arrive this way; each route then
validates the file against its manifest (`fedalign.params.validate`) before anything is stored.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from backend.errors import ApiError, conflict
from backend.services.store import ArtifactStore, Staged
from messaging import multipart

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


@dataclass
class Submission:
    """A combined submission as it arrived: each upload slot's bytes staged (hashed, counted, on disk), and
    the completion's JSON."""

    files: dict[str, Staged] = field(default_factory=dict)
    completion: bytes | None = None

    def discard(self) -> None:
        for staged in self.files.values():
            staged.discard()  # no-op once the store adopted it


async def receive_submission(
    request: Request, store: ArtifactStore, slots: Collection[str], file_limit: int, json_limit: int
) -> Submission:
    """Stream a multipart/form-data submission (`messaging.multipart`): each part named by one of ``slots``
    to a temp file as it arrives, refused (413) the moment it passes ``file_limit``, exactly as a single
    upload is; the ``completion`` part kept in memory up to ``json_limit``. On any refusal every file staged
    so far is deleted: the caller stores nothing."""
    try:
        reader = multipart.Reader(multipart.boundary_of(request.headers.get("content-type", "")))
    except multipart.MultipartError as exc:
        raise ApiError(
            415, "unsupported_media_type", f"a submission is {multipart.FORM_DATA}: {exc}"
        ) from exc
    submission = Submission()
    current: _Part | None = None
    try:
        async for chunk in request.stream():
            try:
                events = reader.feed(chunk)
            except multipart.MultipartError as exc:
                raise ApiError(422, "invalid_multipart", f"the submission cannot be read: {exc}") from exc
            for event in events:
                if isinstance(event, multipart.Begin):
                    current = _Part.open(event.part, submission, store, slots, file_limit, json_limit)
                elif isinstance(event, multipart.Data) and current is not None:
                    current.write(event.data)
                elif isinstance(event, multipart.End) and current is not None:
                    await current.close(submission)
                    current = None
        try:
            reader.close()
        except multipart.MultipartError as exc:
            raise ApiError(422, "invalid_multipart", f"the submission cannot be read: {exc}") from exc
    except BaseException:
        if current is not None:
            current.abandon()
        submission.discard()
        raise
    if submission.completion is None:
        submission.discard()
        raise ApiError(
            422,
            "missing_completion",
            f"a submission ends with a {multipart.COMPLETION_PART!r} part: the completion's JSON "
            '(application/json, e.g. {"metrics": {}})',
        )
    return submission


@dataclass
class _Part:
    """One part being received: a file part to its temp file, the completion into memory."""

    name: str
    limit: int
    handle: BinaryIO | None = None
    path: Path | None = None
    digest: Any = None
    size: int = 0
    held: bytearray = field(default_factory=bytearray)

    @classmethod
    def open(
        cls,
        part: multipart.Part,
        submission: Submission,
        store: ArtifactStore,
        slots: Collection[str],
        file_limit: int,
        json_limit: int,
    ) -> _Part:
        try:
            name = part.name
        except multipart.MultipartError as exc:
            raise ApiError(422, "invalid_multipart", str(exc)) from exc
        completion_again = name == multipart.COMPLETION_PART and submission.completion is not None
        if name in submission.files or completion_again:
            raise ApiError(422, "duplicate_part", f"the submission holds part {name!r} twice")
        if name == multipart.COMPLETION_PART:
            if part.content_type != "application/json":
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"the {name!r} part is the completion's JSON (application/json), not {part.content_type}",
                )
            return cls(name, json_limit)
        if name not in slots:
            raise ApiError(
                422,
                "unknown_part",
                f"the submission has a part {name!r}, which is neither one of this step's upload slots "
                f"{sorted(slots)} nor {multipart.COMPLETION_PART!r}",
            )
        if part.content_type not in UPLOAD_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"part {name!r} holds raw safetensors bytes (application/octet-stream), not "
                f"{part.content_type}",
            )
        path = store.temp_file()
        return cls(name, file_limit, open(path, "wb"), path, hashlib.sha256())  # closed in close()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            what = "FEDALIGN_MAX_JSON_BYTES" if self.handle is None else "FEDALIGN_MAX_UPLOAD_BYTES"
            raise ApiError(
                413,
                "too_large",
                f"part {self.name!r} passed the limit of {self.limit} bytes ({what}) and was refused without "
                "reading the rest",
            )
        if self.handle is None:
            self.held += data
        else:
            self.digest.update(data)
            self.handle.write(data)

    async def close(self, submission: Submission) -> None:
        if self.handle is None:
            submission.completion = bytes(self.held)
            return
        assert self.path is not None
        try:
            self.handle.flush()
            await run_in_threadpool(os.fsync, self.handle.fileno())
        finally:
            self.handle.close()
        submission.files[self.name] = Staged(path=self.path, sha256=self.digest.hexdigest(), size=self.size)

    def abandon(self) -> None:
        if self.handle is not None:
            self.handle.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
