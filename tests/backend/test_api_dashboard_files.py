"""The built dashboard at `/`: its files, the single-page fallback, and the API's JSON 404 kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><div id=root></div>")
    (dist / "assets" / "app-1234.js").write_text("console.log('app')")
    (tmp_path / "secret.txt").write_text("outside the build")
    settings = Settings(data_dir=tmp_path / "data", admin_token="t" * 32, frontend_dir=dist)
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_index_and_hashed_assets_are_served_with_security_headers(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200 and "root" in index.text
    assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
    asset = client.get("/assets/app-1234.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]


def test_a_deep_link_reloads_into_the_app(client: TestClient) -> None:
    response = client.get("/federations/0b6c/compare")
    assert response.status_code == 200 and "root" in response.text


def test_api_paths_keep_their_json_404(client: TestClient) -> None:
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_nothing_outside_the_build_is_served(client: TestClient) -> None:
    for path in ("/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt"):
        assert "outside the build" not in client.get(path).text


def test_without_a_build_the_root_says_how_to_build_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_token="t" * 32, frontend_dir=tmp_path / "none")
    with TestClient(create_app(settings)) as c:
        response = c.get("/")
    assert response.status_code == 503 and "make setup" in response.text


@pytest.mark.parametrize("path", ["/%00", "/assets/%00app.js", "/federations/x%00y"])
def test_a_nul_byte_in_a_path_is_a_404_not_a_server_error(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert "NUL" in response.json()["error"]["message"]
