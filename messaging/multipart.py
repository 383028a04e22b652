"""The combined submission's framing (``POST /api/v1/node/steps/{id}/submit``): multipart/form-data, one
part per upload slot (safetensors bytes, named by the slot) and one ``completion`` part (the completion's
JSON), written by the node's client and read, as it streams, by the server and by the node's audit log.

One module for all three, so the framing is written once. The reader is incremental: it is fed the body in
chunks of any size and says where each part begins, what bytes it holds and where it ends, holding back
only what might be the start of the next boundary; so an upload is counted and written to disk as it
arrives, and refused the moment it passes its limit, never read whole into memory. It reads what
``curl -F`` sends too.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

COMPLETION_PART = "completion"  # the part holding the completion's JSON (CompleteRequest)
FORM_DATA = "multipart/form-data"
# A part's headers are a few short lines; more is not a submission.
MAX_HEADER_BYTES = 8 * 1024
# What may precede the first boundary (RFC 2046's preamble); our client and curl send none.
MAX_PREAMBLE_BYTES = 1024
MAX_PARTS = 16

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_NAME = re.compile(r'(?:^|;)\s*name="([^"]*)"', re.IGNORECASE)


class MultipartError(ValueError):
    """The body is not the multipart/form-data it says it is; the message says where."""


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/form-data`` content type; MultipartError for any other type."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != FORM_DATA:
        raise MultipartError(f"the body must be {FORM_DATA}, not {media_type or 'untyped'}")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise MultipartError(f"the {FORM_DATA} content type names no boundary")
    return match.group(1) or match.group(2)


@dataclass(frozen=True)
class Part:
    """A part's headers (names lower-cased), as they came."""

    headers: Mapping[str, str]

    @property
    def name(self) -> str:
        match = _NAME.search(self.headers.get("content-disposition", ""))
        if match is None:
            raise MultipartError("a part has no Content-Disposition name: every part names its slot")
        return match.group(1)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()


@dataclass(frozen=True)
class Begin:
    part: Part


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class End:
    pass


Event = Begin | Data | End


class Reader:
    """Splits a multipart body fed in chunks into events: `Begin` (a part's headers), `Data`, `End`."""

    def __init__(self, boundary: str) -> None:
        self._first = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._first
        self._buffer = b""
        self._state = "preamble"  # -> after_boundary -> headers -> body -> after_boundary ... -> done
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """MultipartError unless the closing boundary came."""
        if self._state != "done":
            raise MultipartError("the body ended before the closing boundary: it was cut short")

    def _step(self, events: list[Event]) -> bool:
        buffer = self._buffer
        if self._state == "preamble":
            at = buffer.find(self._first)
            if at < 0:
                if len(buffer) > MAX_PREAMBLE_BYTES + len(self._first):
                    raise MultipartError("no boundary at the start of the body")
                return False
            self._buffer, self._state = buffer[at + len(self._first) :], "after_boundary"
            return True
        if self._state == "after_boundary":
            if len(buffer) < 2:
                return False
            if buffer.startswith(b"--"):
                self._buffer, self._state = b"", "done"  # the epilogue, if any, is ignored
                return False
            if not buffer.startswith(b"\r\n"):
                raise MultipartError("a boundary is not followed by a line break")
            self._buffer, self._state = buffer[2:], "headers"
            return True
        if self._state == "headers":
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise MultipartError(f"a part's headers are over {MAX_HEADER_BYTES} bytes")
                return False
            self.parts += 1
            if self.parts > MAX_PARTS:
                raise MultipartError(f"more than {MAX_PARTS} parts")
            events.append(Begin(Part(_headers(buffer[:end]))))
            self._buffer, self._state = buffer[end + 4 :], "body"
            return True
        if self._state == "body":
            at = buffer.find(self._delimiter)
            if at < 0:
                # Everything but what may be the beginning of the delimiter is this part's.
                keep = len(self._delimiter) - 1
                if len(buffer) > keep:
                    events.append(Data(buffer[:-keep]))
                    self._buffer = buffer[-keep:]
                return False
            if at:
                events.append(Data(buffer[:at]))
            events.append(End())
            self._buffer, self._state = buffer[at + len(self._delimiter) :], "after_boundary"
            return True
        if self._state == "done":
            self._buffer = b""
        return False


def _headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"a part's header line {line[:80]!r} has no colon")
        headers[name.strip().lower()] = value.strip()
    return headers


def encode(files: Mapping[str, bytes], completion: bytes) -> tuple[str, list[bytes]]:
    """The body of a submission: ``files`` (slot -> safetensors bytes) then the completion's JSON; returns
    the content type and the body as pieces (the files are not copied into one buffer)."""
    boundary = "fedalign-" + secrets.token_hex(16)
    pieces: list[bytes] = []
    for name, content_type, data in (
        *((slot, "application/octet-stream", data) for slot, data in files.items()),
        (COMPLETION_PART, "application/json", completion),
    ):
        disposition = f'form-data; name="{name}"'
        if content_type != "application/json":
            disposition += f'; filename="{name}.safetensors"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
        pieces += [head.encode("latin-1"), data, b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode("latin-1"))
    return f"{FORM_DATA}; boundary={boundary}", pieces


def parts(body: bytes, content_type: str) -> Iterator[tuple[Part, bytes]]:
    """A whole body's parts with their bytes (for small bodies and tests)."""
    reader = Reader(boundary_of(content_type))
    current: Part | None = None
    data = bytearray()
    for event in reader.feed(body):
        if isinstance(event, Begin):
            current, data = event.part, bytearray()
        elif isinstance(event, Data):
            data += event.data
        elif current is not None:
            yield current, bytes(data)
    reader.close()
