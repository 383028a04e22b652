"""The dashboard's built files at `/`, with the single-page app's fallback.

The files are found in ``FEDALIGN_FRONTEND_DIR`` when it is set, else inside the installed package
(``backend/dashboard_dist``, which building the wheel puts there: scripts/build_dashboard.py), else in the
checkout's ``frontend/dist`` (an editable install, ``make setup``). Any path outside the API that names no
file answers index.html, so a deep link such as /federations/<id> reloads into the app; paths under /api/
keep the API's JSON 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from backend.errors import not_found

PACKAGED_DIST = Path(__file__).resolve().parent / "dashboard_dist"
CHECKOUT_DIST = Path(__file__).resolve().parent.parent / "frontend" / "dist"


def default_dist() -> Path:
    """The wheel's built dashboard when the package holds one, else the checkout's frontend/dist."""
    return PACKAGED_DIST if (PACKAGED_DIST / "index.html").is_file() else CHECKOUT_DIST


# ECharts sets inline styles on the elements it draws; everything else comes from this origin only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: "
    "blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>FedAlign</title>
<h1>FedAlign</h1><p>The API is running, but the dashboard has not been built.
Run <code>make setup</code> (it builds <code>frontend/dist</code> with npm), install a wheel built where
Node.js was present (it holds the dashboard), or set <code>FEDALIGN_FRONTEND_DIR</code> to a built dashboard.
The API is documented at <a href="/docs">/docs</a>.</p>
"""


def mount(app: FastAPI, dist: Path | None) -> None:
    root = (dist or default_dist()).resolve()

    @app.get("/{path:path}", include_in_schema=False)
    def dashboard(path: str, request: Request) -> Response:
        if path == "api" or path.startswith("api/"):
            raise not_found(f"no API route {request.url.path}; the routes are listed at /docs")
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503, headers=SECURITY_HEADERS)
        if "\x00" in path:
            # No file name holds a NUL byte, and the operating system refuses to look one up.
            raise not_found("no such page: a path cannot hold a NUL byte")
        if path:
            candidate = (root / path).resolve()
            # resolve() folds '..', so a path that climbs out of the build folder is never served.
            if candidate.is_relative_to(root) and candidate.is_file():
                # Vite names assets by content hash: they never change under the same name.
                cache = "public, max-age=31536000, immutable" if path.startswith("assets/") else "no-cache"
                return FileResponse(candidate, headers={**SECURITY_HEADERS, "Cache-Control": cache})
        return FileResponse(index, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
