"""The dashboard's built files (frontend/dist) at `/`, with the single-page app's fallback.

Any path outside the API that names no file answers index.html, so a deep link such as
/federations/<id> reloads into the app; paths under /api/ keep the API's JSON 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from backend.errors import not_found

DEFAULT_DIST = Path(__file__).resolve().parent.parent / "frontend" / "dist"

# ECharts sets inline styles on the elements it draws; everything else comes from this origin only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: "
    "blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>FedAlign</title>
<h1>FedAlign</h1><p>The API is running, but the dashboard has not been built.
Run <code>make setup</code> (it builds <code>frontend/dist</code> with npm), or set
<code>FEDALIGN_FRONTEND_DIR</code> to a built dashboard.
The API is documented at <a href="/docs">/docs</a>.</p>
"""


def mount(app: FastAPI, dist: Path | None) -> None:
    root = (dist or DEFAULT_DIST).resolve()

    @app.get("/{path:path}", include_in_schema=False)
    def dashboard(path: str, request: Request) -> Response:
        if path == "api" or path.startswith("api/"):
            raise not_found(f"no API route {request.url.path}; the routes are listed at /docs")
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503, headers=SECURITY_HEADERS)
        if path:
            candidate = (root / path).resolve()
            # resolve() folds '..', so a path that climbs out of the build folder is never served.
            if candidate.is_relative_to(root) and candidate.is_file():
                # Vite names assets by content hash: they never change under the same name.
                cache = "public, max-age=31536000, immutable" if path.startswith("assets/") else "no-cache"
                return FileResponse(candidate, headers={**SECURITY_HEADERS, "Cache-Control": cache})
        return FileResponse(index, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
