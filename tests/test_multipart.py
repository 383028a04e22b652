"""The submission's framing (`messaging.multipart`): what the client writes, the streaming reader gives back
part by part, however the body is cut into chunks; what curl sends reads the same; a broken body is named."""

from __future__ import annotations

import pytest

from messaging import multipart
from messaging.multipart import Begin, Data, End, MultipartError

FILES = {"G": b"\x01" * 300 + b"\r\n--not-the-boundary\r\n", "D": b""}
COMPLETION = b'{"metrics": {"disc_loss": 0.5}}'


def read_in_chunks(body: bytes, content_type: str, size: int) -> list[tuple[str, str, bytes]]:
    reader = multipart.Reader(multipart.boundary_of(content_type))
    parts: list[tuple[str, str, bytes]] = []
    for start in range(0, len(body), size):
        for event in reader.feed(body[start : start + size]):
            if isinstance(event, Begin):
                parts.append((event.part.name, event.part.content_type, b""))
            elif isinstance(event, Data):
                name, kind, data = parts[-1]
                parts[-1] = (name, kind, data + event.data)
            else:
                assert isinstance(event, End)
    reader.close()
    return parts


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_the_reader_gives_back_each_part_whatever_the_chunks(chunk: int) -> None:
    content_type, pieces = multipart.encode(FILES, COMPLETION)
    parts = read_in_chunks(b"".join(pieces), content_type, chunk)
    assert parts == [
        ("G", "application/octet-stream", FILES["G"]),
        ("D", "application/octet-stream", b""),
        (multipart.COMPLETION_PART, "application/json", COMPLETION),
    ]


def test_a_body_as_curl_sends_it_reads_the_same() -> None:
    boundary = "------------------------d74496d66958873e"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="D"; filename="D.safetensors"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"\x00\x01"
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="completion"\r\n'
            "Content-Type: application/json\r\n\r\n"
            '{"metrics": {}}'
            f"\r\n--{boundary}--\r\n"
        ).encode()
    )
    parts = list(multipart.parts(body, f"multipart/form-data; boundary={boundary}"))
    assert [(p.name, data) for p, data in parts] == [("D", b"\x00\x01"), ("completion", b'{"metrics": {}}')]


def test_a_body_cut_short_is_named() -> None:
    content_type, pieces = multipart.encode(FILES, COMPLETION)
    body = b"".join(pieces)
    with pytest.raises(MultipartError, match="cut short"):
        list(multipart.parts(body[:-10], content_type))


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "multipart/form-data", "multipart/mixed; boundary=x"],
    ids=["not-multipart", "no-boundary", "not-form-data"],
)
def test_a_content_type_other_than_form_data_with_a_boundary_is_refused(content_type: str) -> None:
    with pytest.raises(MultipartError):
        multipart.boundary_of(content_type)


def test_a_part_without_a_name_is_named() -> None:
    body = b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--\r\n"
    part, _ = next(multipart.parts(body, "multipart/form-data; boundary=b"))
    with pytest.raises(MultipartError, match="no Content-Disposition name"):
        _ = part.name
