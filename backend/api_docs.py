"""``/docs``: the API's interactive documentation (Swagger UI), served entirely by the API itself.

FastAPI's own page loads Swagger UI from a CDN, so on a network without one (a hospital's, an air-gapped
lab's) it stays blank, and it lets a third party's script run beside the admin token. Here the page, its
script and its stylesheet come from this server: Swagger UI's files from the ``swagger-ui-bundle-v2``
package (Apache-2.0, its licence in that package's metadata), and a small start-up script of our own, so
the page has no inline script. A Content-Security-Policy on every response under /docs allows only this
origin. FastAPI's ReDoc page (also CDN-based) is turned off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from backend.dashboard import SECURITY_HEADERS
from backend.errors import not_found

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
# The Swagger UI files the page loads (the rest of the package, e.g. its demo index.html that points at a
# public petstore, is not served).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
INIT_SCRIPT = "init.js"

# Scripts, styles, images and requests from this origin only; Swagger UI's stylesheet embeds its icons as
# data: URIs. Nothing inline: the styles Swagger UI sets go through the DOM, which a CSP does not govern.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Names do not change with the installed Swagger UI's version: browsers revalidate rather than cache them.
REVALIDATED = {**SECURITY_HEADERS, "Content-Security-Policy": CSP, "Cache-Control": "no-cache"}

# Starts Swagger UI on the OpenAPI document the page names; validatorUrl null: the page never sends the
# document to Swagger's public validator.
INIT_JS = """\
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} API</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/{init}"></script>
</body>
</html>
"""


def mount(app: FastAPI) -> None:
    """Add /docs and its assets to ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    files = Path(str(swagger_ui_path))

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        openapi = root + (app.openapi_url or "")
        page = PAGE.format(title=app.title, assets=root + ASSETS_URL, openapi=openapi, init=INIT_SCRIPT)
        return HTMLResponse(page, headers=REVALIDATED)

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    def swagger_ui_asset(name: str) -> Response:
        if name == INIT_SCRIPT:
            return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers=REVALIDATED)
        if name not in ASSETS:
            raise not_found(f"no documentation asset {name!r}; the API is described at {DOCS_URL}")
        return FileResponse(files / name, media_type=ASSETS[name], headers=REVALIDATED)
