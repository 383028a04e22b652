"""Hostile input: each bad upload or request gets a 4xx that says what is wrong, and changes nothing.

"Nothing" is checked, not assumed: every table's rows, the federation's protocol state and every file
under the data directory (artifacts and temp files) are the same before and after each request.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from api_support import Api
from sqlalchemy import select, text
from test_api_node_steps import SAMPLES, finish_setup, put, started, valid

from backend.models import Base, Federation
from fedalign import params

Snapshot = tuple[dict[str, Any], dict[str, Any], frozenset[tuple[str, str]]]


def snapshot(api: Api) -> Snapshot:
    with api.services.db.read() as session:
        rows = {
            table.name: sorted(map(repr, session.execute(text(f"SELECT * FROM {table.name}")).all()))
            for table in Base.metadata.sorted_tables
        }
        states = {f.id: (f.status, f.protocol_state) for f in session.scalars(select(Federation))}
    root = Path(api.services.settings.data_dir)
    # Contents, not sizes: a refused upload must not have rewritten a stored file with bytes of its size.
    files = frozenset(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file()
    )
    return rows, states, files


def assert_refused(api: Api, response: Any, before: Snapshot, status: int | tuple[int, ...]) -> None:
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_code in allowed, response.text
    message = response.json()["error"]["message"]
    assert len(message) > 20, message
    assert snapshot(api) == before, "a refused request changed the database or the stored files"


def header_only(header: dict[str, Any], body: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


def pickled(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def tampered(change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> bytes:
    return params.to_bytes(change(dict(valid("D"))))


def with_value(value: float) -> bytes:
    def change(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        name = next(iter(state))
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value
        return state

    return tampered(change)


UPLOADS: dict[str, tuple[Callable[[], bytes], dict[str, str], int | tuple[int, ...]]] = {
    "truncated": (lambda: params.to_bytes(valid("D"))[:-10], {}, 422),
    "header_garbage": (lambda: struct.pack("<Q", 12) + b"{not json!!}", {}, 422),
    "header_longer_than_file": (lambda: struct.pack("<Q", 10**6) + b"{}", {}, 422),
    "huge_tensor_claimed": (
        lambda: header_only(
            {"D.0.weight": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}}
        ),
        {},
        (413, 422),
    ),
    "wrong_name": (lambda: tampered(lambda s: {("X" + k): v for k, v in s.items()}), {}, 422),
    "wrong_shape": (
        lambda: tampered(lambda s: {k: v.reshape(-1)[:1].clone() for k, v in s.items()}),
        {},
        422,
    ),
    "wrong_dtype": (lambda: tampered(lambda s: {k: v.double() for k, v in s.items()}), {}, 422),
    "nan": (lambda: with_value(float("nan")), {}, 422),
    "inf": (lambda: with_value(float("inf")), {}, 422),
    "pickle": (lambda: pickled(valid("D")), {}, 422),
    "metadata_smuggling": (lambda: params.to_bytes(valid("D"), metadata={"features": "0.12,0.98"}), {}, 422),
    "empty": (lambda: b"", {}, 422),
    "json_content_type": (lambda: params.to_bytes(valid("D")), {"Content-Type": "application/json"}, 415),
    "form_content_type": (
        lambda: params.to_bytes(valid("D")),
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
    ),
}


def test_hostile_uploads_are_refused_and_leave_nothing_behind(api: Api) -> None:
    _, tokens = started(api)
    finish_setup(api, tokens)
    task = api.task(tokens["alpha"])
    assert task is not None and set(task["uploads"]) == {"D"}
    url = task["uploads"]["D"]
    for name, (make, headers, status) in UPLOADS.items():
        before = snapshot(api)
        response = put(api, url, tokens["alpha"], make(), **headers)
        try:
            assert_refused(api, response, before, status)
        except AssertionError as exc:
            raise AssertionError(f"upload case {name!r}: {exc}") from exc
    # Over the size limit, declared up front.
    honest = params.to_bytes(valid("D"))
    api.services.settings.max_upload_bytes = len(honest) - 1
    before = snapshot(api)
    assert_refused(api, put(api, url, tokens["alpha"], honest), before, 413)
    # And after all that, the honest upload still goes through.
    api.services.settings.max_upload_bytes = 256 * 1024 * 1024
    assert put(api, url, tokens["alpha"], honest).status_code == 200


def test_hostile_requests_are_refused_and_change_nothing(api: Api) -> None:
    fid, tokens = started(api)
    setup = api.task(tokens["alpha"])
    assert setup is not None and setup["kind"] == "setup"
    complete = setup["complete_url"]
    node = {"role": "source", "dataset": "npz:/data/x.npz"}
    cases: list[tuple[str, str, str, dict[str, Any], int | tuple[int, ...], str | None]] = [
        ("negative samples", "POST", complete, {"json": {"samples": {**SAMPLES, "train": -1}}}, 422, "alpha"),
        (
            "no training samples",
            "POST",
            complete,
            {"json": {"samples": {**SAMPLES, "train": 0}}},
            422,
            "alpha",
        ),
        ("absurd samples", "POST", complete, {"json": {"samples": {"train": 10**30}}}, 422, "alpha"),
        ("string samples", "POST", complete, {"json": {"samples": {"train": "many"}}}, 422, "alpha"),
        ("non-scalar metric", "POST", complete, {"json": {"metrics": {"x": [1, 2]}}}, 422, "alpha"),
        ("undeclared metric", "POST", complete, {"json": {"metrics": {"feature_0": 0.5}}}, 422, "alpha"),
        ("unknown completion field", "POST", complete, {"json": {"features": [[0.1]]}}, 422, "alpha"),
        ("completion as text", "POST", complete, {"content": b"train=1"}, 422, "alpha"),
        (
            "oversize JSON",
            "POST",
            "/api/v1/federations",
            {"content": b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'},
            413,
            None,
        ),
        (
            "unknown federation field",
            "POST",
            "/api/v1/federations",
            {"json": {"name": "a", "pwn": 1}},
            422,
            None,
        ),
        ("negative rounds", "POST", "/api/v1/federations", {"json": {"name": "a", "rounds": -1}}, 422, None),
        ("JSON that is not an object", "POST", "/api/v1/federations", {"json": [1, 2]}, 422, None),
    ]
    for bad_name in ("../etc", "a/b", "a\\b", "..", "a b", "%2e%2e", "x" * 65, ""):
        cases.append(
            (
                f"node name {bad_name!r}",
                "POST",
                f"/api/v1/federations/{fid}/nodes",
                {"json": {"name": bad_name, **node}},
                (409, 422),
                None,
            )
        )
    for label, method, path, kwargs, status, who in cases:
        before = snapshot(api)
        token = tokens[who] if who else None
        response = (
            api.request(method, path, token=token, **kwargs) if who else api.request(method, path, **kwargs)
        )
        try:
            assert_refused(api, response, before, status)
        except AssertionError as exc:
            raise AssertionError(f"case {label!r}: {exc}") from exc
    # The honest completion still works afterwards.
    api.ok("POST", complete, token=tokens["alpha"], json={"samples": SAMPLES})


@pytest.mark.parametrize(
    "path", ["/api/v1/node/artifacts/..%2F..%2Fetc%2Fpasswd", "/api/v1/node/artifacts/%00"]
)
def test_artifact_keys_with_path_characters_are_refused(api: Api, path: str) -> None:
    _, tokens = started(api)
    response = api.request("GET", path, token=tokens["alpha"])
    assert 400 <= response.status_code < 500 and "root:" not in response.text


# ------------------------------------------------------------------------------- a federation's initial model


def initial() -> dict[str, torch.Tensor]:
    """The tiny federation's initial parameters (every tensor of G, T and D), as `fedalign init-model`
    writes them."""
    from api_support import tiny_settings

    from fedalign.config import FederationConfig
    from fedalign.initial_parameters import build_initial

    return build_initial(FederationConfig.model_validate(tiny_settings())).flat()


def initial_tampered(change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> bytes:
    return params.to_bytes(change(dict(initial())))


def first_tensor_set_to(value: float) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    def change(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        name = next(iter(state))
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value
        return state

    return change


INITIAL_UPLOADS: dict[str, tuple[Callable[[], bytes], dict[str, str], int | tuple[int, ...]]] = {
    "truncated": (lambda: params.to_bytes(initial())[:-10], {}, 422),
    "header_garbage": (lambda: struct.pack("<Q", 12) + b"{not json!!}", {}, 422),
    "huge_tensor_claimed": (
        lambda: header_only(
            {"G.0.weight": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}}
        ),
        {},
        (413, 422),
    ),
    "a_tensor_missing": (
        lambda: initial_tampered(lambda s: {k: v for k, v in s.items() if k != "D.0.bias"}),
        {},
        422,
    ),
    "an_extra_tensor": (lambda: initial_tampered(lambda s: {**s, "G.extra": torch.zeros(2)}), {}, 422),
    "without_model_prefixes": (
        lambda: initial_tampered(lambda s: {k.split(".", 1)[1] + f"@{k[0]}": v for k, v in s.items()}),
        {},
        422,
    ),
    "wrong_shape": (
        lambda: initial_tampered(lambda s: {**s, "T.0.weight": s["T.0.weight"][:1].clone()}),
        {},
        422,
    ),
    "wrong_dtype": (
        lambda: initial_tampered(lambda s: {**s, "D.0.weight": s["D.0.weight"].double()}),
        {},
        422,
    ),
    "nan": (lambda: initial_tampered(first_tensor_set_to(float("nan"))), {}, 422),
    "inf": (lambda: initial_tampered(first_tensor_set_to(float("-inf"))), {}, 422),
    "pickle": (lambda: pickled(initial()), {}, 422),
    "metadata_smuggling": (lambda: params.to_bytes(initial(), metadata={"x": "1"}), {}, 422),
    "empty": (lambda: b"", {}, 422),
    "json_content_type": (lambda: params.to_bytes(initial()), {"Content-Type": "application/json"}, 415),
}


def test_hostile_initial_parameters_are_refused_and_leave_nothing_behind(api: Api) -> None:
    federation = api.create_federation()  # the server built its initial model: a bad upload must not touch it
    url = f"/api/v1/federations/{federation['id']}/initial-model/parameters"
    for name, (make, headers, status) in INITIAL_UPLOADS.items():
        before = snapshot(api)
        response = api.request(
            "PUT", url, content=make(), headers={"Content-Type": "application/octet-stream", **headers}
        )
        try:
            assert_refused(api, response, before, status)
        except AssertionError as exc:
            raise AssertionError(f"initial parameters case {name!r}: {exc}") from exc
    honest = params.to_bytes(initial())
    api.services.settings.max_upload_bytes = len(honest) // 3 - 1  # the limit is three uploads' worth
    before = snapshot(api)
    too_large = api.request("PUT", url, content=honest, headers={"Content-Type": "application/octet-stream"})
    assert_refused(api, too_large, before, 413)
    api.services.settings.max_upload_bytes = 256 * 1024 * 1024
    assert (
        api.request(
            "PUT", url, content=honest, headers={"Content-Type": "application/octet-stream"}
        ).status_code
        == 200
    )


def test_hostile_manifest_documents_are_refused_and_change_nothing(api: Api) -> None:
    from api_support import tiny_settings

    from fedalign.config import FederationConfig
    from fedalign.model_manifest import ModelManifest

    federation = api.create_federation()
    document = ModelManifest.for_config(FederationConfig.model_validate(tiny_settings())).to_json()
    g = document["models"]["G"]
    cases: dict[str, tuple[Any, int]] = {
        "another architecture": ({**document, "architecture": "digits_cnn"}, 422),
        "an import path": ({**document, "architecture": "evil.module:factory"}, 422),
        "not a document": ({"architecture": "mlp"}, 422),
        "a model missing": ({**document, "models": {"G": g, "T": document["models"]["T"]}}, 422),
        "a tensor reshaped": (
            {
                **document,
                "models": {
                    **document["models"],
                    "G": {**g, "tensors": [{**g["tensors"][0], "shape": [9, 9]}, *g["tensors"][1:]]},
                },
            },
            422,
        ),
        "a tensor named twice": (
            {
                **document,
                "models": {**document["models"], "G": {**g, "tensors": [g["tensors"][0], *g["tensors"]]}},
            },
            422,
        ),
        "an unknown dtype": (
            {
                **document,
                "models": {**document["models"], "G": {**g, "tensors": [{**g["tensors"][0], "dtype": "F8"}]}},
            },
            422,
        ),
        "a negative dimension": (
            {
                **document,
                "models": {**document["models"], "G": {**g, "tensors": [{**g["tensors"][0], "shape": [-1]}]}},
            },
            422,
        ),
        "an unknown field": ({**document, "pickle": "gASV"}, 422),
        "a list": ([document], 422),
    }
    url = f"/api/v1/federations/{federation['id']}/initial-model/manifest"
    for label, (body, status) in cases.items():
        before = snapshot(api)
        try:
            assert_refused(api, api.request("PUT", url, json=body), before, status)
        except AssertionError as exc:
            raise AssertionError(f"manifest case {label!r}: {exc}") from exc
    before = snapshot(api)
    assert api.ok("PUT", url, json=document)["ready"], "the server's own document again changes nothing"
    assert snapshot(api)[0] == before[0]
