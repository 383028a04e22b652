"""Settings the server cannot use are refused when the federation is created, and one federation whose
stored settings break the deadline sweep never stops another's deadlines."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from api_support import Api, tiny_settings
from sqlalchemy import update
from test_api_hostile_input import assert_refused, snapshot
from test_api_node_steps import SAMPLES

from backend.models import Federation
from fedalign.config import MAX_DEADLINE_S, MAX_INPUT_VALUES


@pytest.mark.parametrize(
    ("label", "overrides", "field"),
    [
        ("an overflowing phase deadline", {"phase_deadline_s": 1e308}, "phase_deadline_s"),
        ("an overflowing setup deadline", {"setup_deadline_s": 1e308}, "setup_deadline_s"),
        ("a deadline past a year", {"phase_deadline_s": MAX_DEADLINE_S + 1}, "phase_deadline_s"),
        ("absurd min_sources", {"min_sources": 10**30}, "min_sources"),
        (
            "an absurd epsilon budget",
            {"privacy": {"noise_multiplier": 1.0, "epsilon_budget": 1e300}},
            "epsilon",
        ),
        ("an empty input shape", {"model": {"num_classes": 3, "input_shape": []}}, "input_shape"),
        ("a negative input axis", {"model": {"num_classes": 3, "input_shape": [-8]}}, "input_shape"),
        ("a zero input axis", {"model": {"num_classes": 3, "input_shape": [3, 0, 28]}}, "input_shape"),
        ("five input axes", {"model": {"num_classes": 3, "input_shape": [1, 1, 1, 1, 8]}}, "input_shape"),
        ("a petabyte input", {"model": {"num_classes": 3, "input_shape": [10**15]}}, "input_shape"),
        (
            "too many values per input",
            {"model": {"num_classes": 3, "input_shape": [3, 8192, 8192]}},
            str(MAX_INPUT_VALUES),
        ),
    ],
)
def test_unusable_settings_are_refused_at_creation(
    api: Api, label: str, overrides: dict[str, Any], field: str
) -> None:
    before = snapshot(api)
    response = api.request("POST", "/api/v1/federations", json={**tiny_settings(), **overrides})
    assert_refused(api, response, before, 422)
    assert field in response.text, f"{label}: the error does not name {field!r}: {response.text}"


@pytest.mark.parametrize(
    ("label", "model", "code"),
    [
        # Fits the bounds, yet mlp's first layer would hold 10^6 x 65536 weights (244 GiB): built on the meta
        # device, it is measured without being allocated.
        ("a model no node could upload", {"input_shape": [10**6], "hidden": 65_536}, "model_too_large"),
        # digits_cnn needs images (channels, height, width) large enough for its convolutions.
        ("a vector for an image network", {"input_shape": [8]}, "invalid_model"),
        ("an image too small for its convolutions", {"input_shape": [3, 2, 2]}, "invalid_model"),
    ],
)
def test_a_builtin_model_its_settings_cannot_build_is_refused_at_creation(
    api: Api, label: str, model: dict[str, Any], code: str
) -> None:
    architecture = "mlp" if code == "model_too_large" else "digits_cnn"
    settings = {**tiny_settings(), "architecture": architecture, "model": {"num_classes": 3, **model}}
    before = snapshot(api)
    response = api.request("POST", "/api/v1/federations", json=settings)
    assert_refused(api, response, before, 422)
    assert response.json()["error"]["code"] == code, f"{label}: {response.text}"


def test_a_builtin_from_a_checkpoint_is_checked_at_creation_without_building_it(api: Api) -> None:
    settings = {
        **tiny_settings(),
        "model": {"num_classes": 3, "input_shape": [10**6], "hidden": 65_536, "init_checkpoint": "/x.st"},
    }
    before = snapshot(api)
    response = api.request("POST", "/api/v1/federations", json=settings)
    assert_refused(api, response, before, 422)
    assert response.json()["error"]["code"] == "model_too_large"


def _after_setup_without_beta(api: Api) -> tuple[str, dict[str, str]]:
    """A started federation whose setup phase waits only for source beta (min_sources 1)."""
    federation, tokens = api.federation_with_nodes(phase_deadline_s=30, min_sources=1)
    fid = federation["id"]
    api.start(fid)
    for name in ("alpha", "omega"):
        task = api.task(tokens[name])
        assert task is not None and task["kind"] == "setup"
        api.ok("POST", task["complete_url"], token=tokens[name], json={"samples": SAMPLES})
    return fid, tokens


@pytest.mark.parametrize("field", ["phase_deadline_s", "setup_deadline_s"])
def test_a_federation_whose_deadline_cannot_be_computed_stalls_alone(api: Api, field: str) -> None:
    # Stored before the settings were bounded: the row holds what creation now refuses.
    broken, _ = _after_setup_without_beta(api)
    healthy, _ = _after_setup_without_beta(api)
    with api.services.db.write() as session:
        federation = session.get(Federation, broken)
        assert federation is not None
        config = {**federation.config, field: 1e308}
        session.execute(update(Federation).where(Federation.id == broken).values(config=config))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    report = api.services.sweeper.sweep_once(later)
    assert report.deadlines == 1, "the healthy federation's deadline was not applied"
    assert api.ok("GET", f"/api/v1/federations/{healthy}")["phase"] == "disc1"
    # Read from the database: the API validates the stored config too (migration 0005 bounds old rows).
    with api.services.db.read() as session:
        stalled = session.get(Federation, broken)
        assert stalled is not None and stalled.status == "stalled"
        assert "could not apply its phase deadline" in (stalled.stall_reason or ""), stalled.stall_reason
        assert stalled.protocol_state["round"] == 0, "the broken federation's phase must not move"
    # Every later pass still serves the healthy one, and the broken one's stall is recorded once.
    api.services.sweeper.sweep_once(later)
    events = api.request("GET", f"/api/v1/federations/{broken}/events?follow=false").text
    assert events.count('"status": "stalled"') == 1
