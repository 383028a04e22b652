"""The node-facing API: claiming steps with leases, downloads, validated uploads, idempotent completion."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from typing import Any

import pytest
import torch
from api_support import Api, tiny_settings
from sqlalchemy import func, select

from backend.models import Artifact
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.node import initial_models

SAMPLES = {"train": 40, "val": 10, "test": 10}


def valid(model: str) -> dict[str, torch.Tensor]:
    """Shared tensors of ``model`` that fit the tiny federation's manifest."""
    return initial_models(FederationConfig.model_validate(tiny_settings()))[model]


def started(api: Api, **overrides: Any) -> tuple[str, dict[str, str]]:
    federation, tokens = api.federation_with_nodes(**overrides)
    api.start(federation["id"])
    return federation["id"], tokens


def finish_setup(api: Api, tokens: dict[str, str]) -> None:
    for token in tokens.values():
        task = api.task(token)
        assert task is not None and task["kind"] == "setup"
        api.ok("POST", task["complete_url"], token=token, json={"samples": SAMPLES})


def put(api: Api, url: str, token: str, body: bytes, **headers: str) -> Any:
    return api.request(
        "PUT", url, token=token, content=body, headers={"Content-Type": "application/octet-stream", **headers}
    )


def stored_artifacts(api: Api) -> int:
    with api.services.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Artifact)) or 0)


def test_no_task_is_handed_out_before_the_start(api: Api) -> None:
    _, tokens = api.federation_with_nodes()
    response = api.request("GET", "/api/v1/node/task", token=tokens["alpha"])
    assert response.status_code == 204 and response.headers["FedAlign-Federation-Status"] == "created"


def test_a_task_lists_absolute_urls_for_what_it_downloads_and_uploads(api: Api) -> None:
    _, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    assert (task["round"], task["phase"], task["kind"], task["node"]) == (0, "setup", "setup", "alpha")
    assert task["downloads"] == {m: f"http://testserver/api/v1/node/artifacts/r0/init/{m}" for m in "GTD"}
    assert task["uploads"] == {} and task["complete_url"].endswith(f"/steps/{task['step_id']}/complete")
    state = params.from_bytes(api.request("GET", task["downloads"]["D"], token=tokens["alpha"]).content)
    assert state.keys() == valid("D").keys()


def test_a_claimed_step_is_handed_out_again_only_after_its_lease_expires(api: Api) -> None:
    _, tokens = started(api)
    first = api.task(tokens["alpha"])
    assert first is not None and api.task(tokens["alpha"]) is None
    api.services.sweeper.sweep_once(dt.datetime.now(dt.UTC))
    assert api.task(tokens["alpha"]) is None, "an unexpired lease is kept"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=api.services.settings.lease_seconds + 1)
    assert api.services.sweeper.sweep_once(later).released == 1
    again = api.task(tokens["alpha"])
    assert again is not None and again["step_id"] == first["step_id"]
    detail = api.ok("GET", f"/api/v1/federations/{first['federation_id']}/rounds/0")
    attempts = {s["node"]: s["attempts"] for s in detail["phases"][0]["steps"]}
    assert attempts["alpha"] == 2


def test_concurrent_polls_claim_each_step_once(api: Api) -> None:
    _, tokens = started(api)
    results: list[dict | None] = []
    lock = threading.Lock()

    def poll() -> None:
        task = api.task(tokens["omega"])
        with lock:
            results.append(task)

    threads = [threading.Thread(target=poll) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [r for r in results if r is not None]
    assert len(claimed) == 1 and len(results) == 6


def test_completion_feeds_the_protocol_and_repeating_it_changes_nothing(api: Api) -> None:
    fid, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    url = task["complete_url"]
    no_samples = api.request("POST", url, token=tokens["alpha"], json={"metrics": {}})
    assert no_samples.status_code == 422 and no_samples.json()["error"]["code"] == "missing_samples"
    not_finite = api.request(
        "POST", url, token=tokens["alpha"], json={"metrics": {"x": "NaN"}, "samples": SAMPLES}
    )
    assert not_finite.status_code == 422
    done = api.ok("POST", url, token=tokens["alpha"], json={"samples": SAMPLES})
    assert done["status"] == "done" and (done["round"], done["phase"]) == (0, "setup")
    assert api.ok("POST", url, token=tokens["alpha"], json={"samples": SAMPLES}) == done
    changed = api.request("POST", url, token=tokens["alpha"], json={"samples": {**SAMPLES, "train": 41}})
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "already_completed"
    other = api.request("POST", url, token=tokens["beta"], json={"samples": SAMPLES})
    assert other.status_code == 403
    assert (
        api.request("POST", "/api/v1/node/steps/999999/complete", token=tokens["beta"], json={}).status_code
        == 404
    )
    assert api.ok("GET", f"/api/v1/federations/{fid}/nodes/alpha")["samples"] == SAMPLES


def test_a_node_downloads_only_what_its_open_steps_need(api: Api) -> None:
    _, tokens = started(api)
    task = api.task(tokens["alpha"])
    assert task is not None
    url = task["downloads"]["G"]
    assert api.request("GET", url, token=tokens["alpha"]).status_code == 200
    assert api.request("GET", url, token=tokens["beta"]).status_code == 200, (
        "beta's pending step needs it too"
    )
    unneeded = api.request("GET", "/api/v1/node/artifacts/r1/disc1/D/omega", token=tokens["alpha"])
    assert unneeded.status_code == 403
    api.ok("POST", task["complete_url"], token=tokens["alpha"], json={"samples": SAMPLES})
    response = api.request("GET", url, token=tokens["alpha"])
    assert response.status_code == 403 and "open steps" in response.json()["error"]["message"]


@pytest.fixture
def disc_task(api: Api) -> tuple[dict[str, Any], dict[str, str]]:
    _, tokens = started(api)
    finish_setup(api, tokens)
    task = api.task(tokens["alpha"])
    assert task is not None and task["kind"] == "discriminator" and set(task["uploads"]) == {"D"}
    return task, tokens


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        (lambda s: {**s, "0.weight": torch.zeros(3, 3)}, 422, "shape_mismatch"),
        (lambda s: {k: v for k, v in s.items() if k != "0.bias"}, 422, "missing_tensor"),
        (lambda s: {**s, "extra": torch.zeros(1)}, 422, "unexpected_tensor"),
        (lambda s: {**s, "0.bias": s["0.bias"].double()}, 422, "dtype_mismatch"),
        (lambda s: {**s, "0.bias": torch.full_like(s["0.bias"], float("nan"))}, 422, "non_finite"),
    ],
    ids=["shape", "missing", "unexpected", "dtype", "nan"],
)
def test_an_upload_that_does_not_fit_the_manifest_is_refused_and_not_stored(
    api: Api, disc_task: tuple[dict, dict], tamper: Any, status: int, code: str
) -> None:
    task, tokens = disc_task
    before = stored_artifacts(api)
    response = put(api, task["uploads"]["D"], tokens["alpha"], params.to_bytes(tamper(valid("D"))))
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith("upload for slot 'D' refused")
    assert stored_artifacts(api) == before
    assert not any(api.services.store.tmp.iterdir()), "no temp file is left behind"


def test_an_upload_that_is_not_safetensors_is_refused(api: Api, disc_task: tuple[dict, dict]) -> None:
    task, tokens = disc_task
    response = put(api, task["uploads"]["D"], tokens["alpha"], b"\x80\x04\x95pickle")
    assert response.status_code == 422 and "safetensors" in response.json()["error"]["message"]


def test_an_oversized_upload_is_refused_with_413(api: Api, disc_task: tuple[dict, dict]) -> None:
    task, tokens = disc_task
    body = params.to_bytes(valid("D"))
    api.services.settings.max_upload_bytes = len(body) - 1
    declared = put(api, task["uploads"]["D"], tokens["alpha"], body)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

    def chunks() -> Any:
        yield body[:100]
        yield body[100:]

    streamed = api.client.put(
        task["uploads"]["D"],
        content=chunks(),
        headers={"Authorization": f"Bearer {tokens['alpha']}", "Content-Type": "application/octet-stream"},
    )
    assert streamed.status_code == 413 and "without reading the rest" in streamed.json()["error"]["message"]
    assert not any(api.services.store.tmp.iterdir())


def test_a_node_uploads_only_to_its_own_steps_slots(api: Api, disc_task: tuple[dict, dict]) -> None:
    task, tokens = disc_task
    body = params.to_bytes(valid("D"))
    assert put(api, task["uploads"]["D"], tokens["beta"], body).status_code == 403
    wrong_slot = put(api, task["uploads"]["D"].replace("/uploads/D", "/uploads/G"), tokens["alpha"], body)
    assert wrong_slot.status_code == 404 and "['D']" in wrong_slot.json()["error"]["message"]
    assert put(api, "/api/v1/node/steps/999999/uploads/D", tokens["alpha"], body).status_code == 404
    assert put(api, task["uploads"]["D"], "nope", body).status_code == 401


def test_uploads_are_idempotent_and_frozen_once_the_step_completes(
    api: Api, disc_task: tuple[dict, dict]
) -> None:
    task, tokens = disc_task
    url, token = task["uploads"]["D"], tokens["alpha"]
    missing = api.request("POST", task["complete_url"], token=token, json={"metrics": {"disc_loss": 0.5}})
    assert missing.status_code == 409 and missing.json()["error"]["details"] == {"missing": ["D"]}
    first = params.to_bytes({k: v + 0.5 for k, v in valid("D").items()})  # not the initial D: own file
    second = params.to_bytes({k: v + 1 for k, v in valid("D").items()})
    assert put(api, url, token, first).json()["stored"] is True
    repeated = put(api, url, token, first)
    assert repeated.status_code == 200 and repeated.json()["stored"] is False
    assert put(api, url, token, second).json()["stored"] is True, "before completion a re-run may replace it"
    api.ok("POST", task["complete_url"], token=token, json={"metrics": {"disc_loss": 0.5}})
    assert put(api, url, token, second).status_code == 200
    frozen = put(api, url, token, first)
    assert frozen.status_code == 409 and frozen.json()["error"]["code"] == "already_completed"
    assert api.services.store.path(hashlib.sha256(second).hexdigest()).read_bytes() == second
    replaced = api.services.store.path(hashlib.sha256(first).hexdigest())
    assert not replaced.exists(), "the replaced upload's file is collected"
