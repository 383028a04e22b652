"""docs/protocol-http.md is what the wire carries: one run recorded from a live server and FedAlign's own
REST nodes (`protocol_transcript`), compared with the page. ``FEDALIGN_UPDATE_TRANSCRIPT=1`` writes the page
instead, after a change of the endpoints."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from api_support import ADMIN_TOKEN, write_vectors
from protocol_transcript import PAGE, comparable, record_run, render


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_protocol_pages_http_transcript_is_what_the_server_and_the_reference_node_exchange(
    live_server: str, tmp_path: Path
) -> None:
    specs = {
        "alpha": write_vectors(tmp_path / "alpha.npz", 1, 0.0),
        "omega": write_vectors(tmp_path / "omega.npz", 3, 1.5),
    }
    log, names = record_run(live_server, ADMIN_TOKEN, specs)
    page = render(log, names)
    if os.environ.get("FEDALIGN_UPDATE_TRANSCRIPT"):
        PAGE.write_text(page, encoding="utf-8")
    written = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    if comparable(written) != comparable(page):
        diff = "".join(
            difflib.unified_diff(
                comparable(written).splitlines(keepends=True),
                comparable(page).splitlines(keepends=True),
                "docs/protocol-http.md",
                "recorded now",
                n=2,
            )
        )
        pytest.fail(
            "the wire no longer matches docs/protocol-http.md; if the change is meant, write the page again "
            f"with FEDALIGN_UPDATE_TRANSCRIPT=1 pytest {Path(__file__).name}:\n{diff[:6000]}"
        )
