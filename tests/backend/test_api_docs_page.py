"""``/docs`` works offline: the page and everything it loads come from the server itself, under a CSP that
allows nothing else. Fetched over HTTP (every reference followed, none off-host), then rendered in headless
Chromium against a live server with every request the browser makes recorded.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from api_support import Api

from backend.api_docs import ASSETS_URL, DOCS_URL


class References(HTMLParser):
    """Every URL an HTML page makes a browser load: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def on_host(reference: str) -> bool:
    """A reference that stays on the page's own server: a path, not a scheme or another host."""
    parts = urlsplit(reference)
    return not parts.scheme and not parts.netloc


def csp_sources(policy: str) -> set[str]:
    return {source for directive in policy.split(";") for source in directive.split()[1:]}


def test_the_docs_page_and_everything_it_loads_come_from_the_server(api: Api) -> None:
    page = api.client.get(DOCS_URL)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert csp_sources(policy) <= {"'self'", "'none'", "data:"}, policy
    assert "script-src 'self';" in policy  # no inline script, no eval
    assert "<script>" not in page.text  # the page's own script is a file too

    parser = References()
    parser.feed(page.text)
    assert len(parser.urls) == 4, parser.urls  # icon, stylesheet, Swagger UI, its start-up script
    off_host = [u for u in parser.urls if not on_host(u)]
    assert not off_host, f"/docs loads from elsewhere: {off_host}"
    for reference in parser.urls:
        asset = api.client.get(urljoin(DOCS_URL, reference))
        assert asset.status_code == 200, reference
        assert asset.headers["content-security-policy"] == policy
        if reference.endswith(".css"):
            urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", asset.text)
            assert urls and all(u.startswith("data:") or on_host(u) for u in urls)
        if reference.endswith(".js"):
            maps = re.findall(r"sourceMappingURL=(\S+)", asset.text)
            assert all(on_host(m) for m in maps), maps


def test_the_start_up_script_keeps_the_document_away_from_the_public_validator(api: Api) -> None:
    script = api.client.get(f"{ASSETS_URL}/init.js").text
    assert "validatorUrl: null" in script and "http" not in script


def test_only_the_pages_own_files_are_served_from_the_package(api: Api) -> None:
    # Swagger UI's demo page, which points at a public petstore, stays unserved.
    for name in ("index.html", "swagger-initializer.js", "oauth2-redirect.html"):
        response = api.client.get(f"{ASSETS_URL}/{name}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------------------------------- in a browser


@pytest.fixture
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip(
            "Chromium is not installed: scripts/ensure-chromium.sh installs it (apt-get install chromium)"
        )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=flags)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_swagger_ui_renders_every_route_with_no_request_off_the_server(
    live_server: str, chromium: Any
) -> None:
    context = chromium.new_context()
    page = context.new_page()
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(live_server + DOCS_URL)
        page.locator(".opblock-tag", has_text="federations").first.wait_for(timeout=30_000)
        assert page.locator(".opblock").count() > 20  # every route of the API, listed
        # Open one route, as a reader does: its parameters and responses render too.
        page.locator(".opblock-summary", has_text="/api/v1/node/task").first.click()
        page.locator(".opblock-body .responses-wrapper").first.wait_for()
    finally:
        context.close()
    elsewhere = [u for u in requests if not (u.startswith(live_server + "/") or u.startswith("data:"))]
    assert not elsewhere, f"the page asked other hosts: {elsewhere}"
    assert f"{live_server}/openapi.json" in requests
    # A CSP violation, a failed load or a script error shows as a console error.
    assert not problems, problems
