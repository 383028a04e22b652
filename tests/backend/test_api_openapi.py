"""The OpenAPI document: valid, and every error an endpoint can answer is declared with its body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_support import Api
from openapi_spec_validator import validate

from backend.app import create_app
from backend.settings import Settings

ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # Building the document needs no database: the app is never started here.
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), admin_token="x" * 32)
    return create_app(settings).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "delete", "patch"}
    ]


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_error_response_is_declared_with_the_error_body(document: dict[str, Any]) -> None:
    problems = []
    for method, path, op in operations(document):
        declared = {int(code) for code in op["responses"] if code.isdigit() and int(code) >= 400}
        needed = set()
        if op.get("security"):
            needed |= {401, 403}
        if op.get("parameters") or "requestBody" in op:
            needed.add(422)
        if method in {"POST", "PUT"}:
            needed.add(413)
        if "{" in path:
            needed.add(404)
        if path == "/readyz":
            needed = set()
        missing = needed - declared
        if missing:
            problems.append(f"{method} {path} does not declare {sorted(missing)}")
        for code in declared - {503}:
            schema = op["responses"][str(code)]["content"]["application/json"]["schema"]
            if schema.get("$ref") != ERROR_REF:
                problems.append(f"{method} {path} {code} answers {schema}, not the error body")
    assert not problems, "\n".join(problems)


def test_the_error_body_example_is_a_sentence_a_person_can_act_on(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ErrorBody"]
    example = schema["examples"][0]["error"]
    assert example["code"] == "not_found" and "GET /api/v1/federations" in example["message"]


def test_the_served_document_matches(api: Api, document: dict[str, Any]) -> None:
    served = api.request("GET", "/openapi.json", token=None).json()
    assert served["paths"].keys() == document["paths"].keys()


def test_health_and_readiness(api: Api) -> None:
    assert api.request("GET", "/healthz", token=None).json() == {"status": "ok"}
    ready = api.request("GET", "/readyz", token=None)
    assert ready.status_code == 200 and ready.json()["migrations"] is True


def test_the_dashboards_typed_client_is_generated_from_this_document(document: dict[str, Any]) -> None:
    committed = Path(__file__).resolve().parents[2] / "frontend" / "openapi.json"
    assert json.loads(committed.read_text(encoding="utf-8")) == document, (
        "frontend/openapi.json is out of date: run `make frontend-api` and commit it with src/api/schema.ts"
    )
