"""A node's own record of everything it sent: one line per request, appended as it goes out.

A data owner has to be able to show its compliance officer that only parameters and the declared metrics
left its machine. The node's HTTP client writes every request it makes (REST or Celery node alike) to a
local JSON-lines file: when, the method and URL, the answer's status, the size and sha256 of the body as
sent, and what the body was: a safetensors file (its tensor names), JSON (its fields and, where it holds
them, the metric names and values), nothing, or a combined submission (multipart/form-data,
`messaging.multipart`): each of its parts described the same way, with its own size and sha256.
Headers are never written (they carry the node's token).

Each line holds the sha256 of the line before it (``prev``), so a line removed or edited breaks the chain;
`verify` finds the first break and checks that every body was either parameters (safetensors) or JSON
whose metrics are the protocol's (`fedalign.metrics.REPORTED_METRICS`). ``fedalign node audit`` shows and
verifies the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedalign.metrics import REPORTED_METRICS
from messaging import multipart

AUDIT_FILE = "node-audit.jsonl"
GENESIS = "0" * 64
# The beginning of a body kept to describe it: a JSON body whole (they are small), a safetensors file's
# header (its tensor names; ResNet-50's is about 30 KB).
KEEP_BYTES = 1 << 20


class AuditLog:
    """The append-only, hash-chained log file. Appends take an exclusive lock on the file and chain to its
    last line as it is then, so several threads or processes (node workers sharing a data directory) can
    write one log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600: it names the federation's URLs and what the node sent.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            record = {**entry, "prev": _last_line_hash(fd)}
            line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)  # releases the lock


def _last_line_hash(fd: int) -> str:
    """The sha256 of the file's last line (without its newline); `GENESIS` for an empty file."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return GENESIS
    block = 1 << 16
    start = end
    tail = b""
    while start > 0:
        start = max(0, start - block)
        tail = os.pread(fd, end - start, start)
        body = tail.rstrip(b"\n")
        if b"\n" in body or start == 0:
            return hashlib.sha256(body.rsplit(b"\n", 1)[-1]).hexdigest()
        block *= 2
    return GENESIS


class _Body:
    """Bytes counted, hashed, their beginning kept."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.head = bytearray()

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.size += len(chunk)
        if len(self.head) < KEEP_BYTES:
            self.head += chunk[: KEEP_BYTES - len(self.head)]


class _Parts:
    """A multipart body's parts as it is sent, each a `_Body` (split as the server splits it)."""

    def __init__(self, content_type: str) -> None:
        self.reader = multipart.Reader(multipart.boundary_of(content_type))
        self.parts: list[tuple[multipart.Part, _Body]] = []
        self.error: str | None = None

    def update(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        try:
            events = self.reader.feed(chunk)
        except multipart.MultipartError as exc:
            self.error = str(exc)
            return
        for event in events:
            if isinstance(event, multipart.Begin):
                self.parts.append((event.part, _Body()))
            elif isinstance(event, multipart.Data):
                self.parts[-1][1].update(event.data)

    def describe(self) -> dict[str, Any]:
        if self.error is not None or not self.reader.done:
            return {"kind": "unreadable multipart", "error": self.error or "cut short"}
        described = []
        for part, body in self.parts:
            try:
                name = part.name
            except multipart.MultipartError:
                name = None
            described.append(
                {
                    "name": name,
                    "bytes": body.size,
                    "sha256": body.sha256.hexdigest(),
                    "body": describe(part.content_type, bytes(body.head), body.size),
                }
            )
        return {"kind": "multipart", "parts": described}


class _Tap(httpx.SyncByteStream):
    """A request body passed through as it is sent, counted, hashed, its beginning kept (a multipart
    body's parts each on their own)."""

    def __init__(self, inner: Any, content_type: str = "") -> None:
        self.inner = inner
        self.body = _Body()
        self.parts: _Parts | None = None
        if content_type.lower().startswith(multipart.FORM_DATA):
            # A boundary it cannot read: described as "other", which verify reports.
            with contextlib.suppress(multipart.MultipartError):
                self.parts = _Parts(content_type)

    @property
    def sha256(self) -> Any:
        return self.body.sha256

    @property
    def size(self) -> int:
        return self.body.size

    @property
    def head(self) -> bytearray:
        return self.body.head

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.body.update(chunk)
            if self.parts is not None:
                self.parts.update(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def describe(content_type: str, head: bytes, size: int) -> dict[str, Any]:
    """What a body was: nothing, parameters (safetensors: tensor names) or JSON (fields, metrics)."""
    if size == 0:
        return {"kind": "none"}
    if content_type.startswith("application/json"):
        try:
            body = json.loads(bytes(head))
        except ValueError:
            return {"kind": "unreadable json"}
        described: dict[str, Any] = {"kind": "json", "fields": sorted(body) if isinstance(body, dict) else []}
        metrics = body.get("metrics") if isinstance(body, dict) else None
        if isinstance(metrics, dict):
            described["metrics"] = metrics
        return described
    if len(head) >= 8:
        (length,) = struct.unpack("<Q", bytes(head[:8]))
        if 8 + length <= len(head):
            try:
                header = json.loads(bytes(head[8 : 8 + length]))
                return {"kind": "safetensors", "tensors": sorted(k for k in header if k != "__metadata__")}
            except ValueError:
                pass
    return {"kind": "other", "content_type": content_type}


class AuditedTransport(httpx.BaseTransport):
    """An httpx transport that writes each request to an `AuditLog` once its answer has come."""

    def __init__(self, log: AuditLog, inner: httpx.BaseTransport | None = None) -> None:
        self.log = log
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        tap = _Tap(request.stream, request.headers.get("content-type", ""))
        request.stream = tap
        entry: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "method": request.method,
            "url": str(request.url),
        }
        try:
            response = self.inner.handle_request(request)
        except Exception as exc:
            entry["error"] = type(exc).__name__
            raise
        else:
            entry["status"] = response.status_code
        finally:
            content_type = request.headers.get("content-type", "")
            entry.update(
                bytes=tap.size,
                sha256=tap.sha256.hexdigest(),
                body=tap.parts.describe()
                if tap.parts is not None
                else describe(content_type, bytes(tap.head), tap.size),
            )
            self.log.append(entry)
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class Verification:
    entries: int = 0
    sent_bytes: int = 0
    chain_broken_at: int | None = None  # 1-based line number
    undeclared: list[str] = field(default_factory=list)  # lines whose body was not parameters or metrics

    @property
    def ok(self) -> bool:
        return self.chain_broken_at is None and not self.undeclared


def read(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def verify(path: Path) -> Verification:
    """The chain intact, and every body parameters, metrics of the protocol's, or protocol JSON."""
    result = Verification()
    prev = GENESIS
    with path.open("rb") as f:
        for number, raw in enumerate((line.rstrip(b"\n") for line in f if line.strip()), start=1):
            try:
                entry = json.loads(raw)
            except ValueError:
                result.chain_broken_at = result.chain_broken_at or number
                continue
            if entry.get("prev") != prev and result.chain_broken_at is None:
                result.chain_broken_at = number
            prev = hashlib.sha256(raw).hexdigest()
            result.entries += 1
            result.sent_bytes += int(entry.get("bytes", 0))
            body = entry.get("body", {})
            multipart_body = body.get("kind") == "multipart"
            bodies = [p.get("body", {}) for p in body.get("parts", [])] if multipart_body else [body]
            for part in bodies:
                kind = part.get("kind")
                unknown = sorted(set(part.get("metrics", {})) - REPORTED_METRICS)
                if kind not in ("none", "json", "safetensors") or unknown:
                    what = f"metrics {unknown}" if unknown else f"a body of kind {kind!r}"
                    result.undeclared.append(
                        f"line {number}: {entry.get('method')} {entry.get('url')}: {what}"
                    )
    return result
