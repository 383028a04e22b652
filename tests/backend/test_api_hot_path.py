"""The node API's hot path: a long poll that claims, small downloads inline, uploads with the completion in
one request (validated as the separate requests are, and all or nothing)."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import pytest
import torch
from api_support import Api, tiny_settings
from sqlalchemy import func, select

from backend.models import Artifact, Node, Step
from backend.settings import Settings
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.node import initial_models
from messaging import multipart

SAMPLES = {"train": 40, "val": 10, "test": 10}
UPLOAD_LIMIT = 64 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A held poll re-reads the database only every 30 s here: one that answers sooner was woken by the commit.
    return settings.model_copy(update={"long_poll_recheck_s": 30.0, "max_upload_bytes": UPLOAD_LIMIT})


def valid_d() -> dict[str, torch.Tensor]:
    return initial_models(FederationConfig.model_validate(tiny_settings()))["D"]


def poll(api: Api, token: str, **query: Any) -> Any:
    return api.request("GET", "/api/v1/node/task", token=token, params=query)


def discriminator_task(api: Api, **query: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """alpha's first discriminator step (setup done by every node), claimed with ``query``."""
    federation, tokens = api.federation_with_nodes()
    api.start(federation["id"])
    for token in tokens.values():
        setup = poll(api, token).json()
        api.ok("POST", setup["complete_url"], token=token, json={"samples": SAMPLES})
    response = poll(api, tokens["alpha"], **query)
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["kind"] == "discriminator" and set(task["uploads"]) == {"D"}
    return task, tokens


def submit(api: Api, task: dict[str, Any], token: str, files: dict[str, bytes], completion: bytes) -> Any:
    content_type, pieces = multipart.encode(files, completion)
    return api.request(
        "POST",
        task["submit_url"],
        token=token,
        content=b"".join(pieces),
        headers={"Content-Type": content_type},
    )


def stored(api: Api) -> int:
    with api.services.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Artifact)) or 0)


def step_status(api: Api, step_id: int) -> str:
    with api.services.db.read() as session:
        step = session.get(Step, step_id)
        assert step is not None
        return step.status


def test_a_held_poll_answers_with_the_step_claimed_as_soon_as_the_commit_opens_it(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    answers: list[tuple[float, Any]] = []

    def held() -> None:
        began = time.monotonic()
        response = poll(api, tokens["alpha"], wait_s=20)
        answers.append((time.monotonic() - began, response))

    thread = threading.Thread(target=held)
    thread.start()
    time.sleep(0.5)  # the poll is held: the federation has not started
    assert not answers
    api.start(federation["id"])
    thread.join(timeout=20)
    waited, response = answers[0]
    assert response.status_code == 200 and response.json()["kind"] == "setup"
    assert waited < 5, f"the poll answered {waited:.1f} s after the step opened (its recheck is every 30 s)"
    assert poll(api, tokens["alpha"]).status_code == 204, "the held poll claimed the step"


def test_a_held_poll_with_nothing_to_claim_answers_no_task_when_its_wait_is_over(api: Api) -> None:
    _, tokens = api.federation_with_nodes()
    began = time.monotonic()
    response = poll(api, tokens["alpha"], wait_s=0.3)
    assert 0.3 <= time.monotonic() - began < 5
    assert response.status_code == 204 and response.headers["FedAlign-Federation-Status"] == "created"


def test_a_poll_longer_than_the_protocol_allows_is_refused(api: Api) -> None:
    _, tokens = api.federation_with_nodes()
    response = poll(api, tokens["alpha"], wait_s=3600)
    assert response.status_code == 422


def test_small_downloads_come_inline_with_the_bytes_their_urls_serve(api: Api) -> None:
    task, tokens = discriminator_task(api, inline_max_bytes=1 << 20)
    assert set(task["inline"]) == set(task["downloads"].values())
    for url, data in task["inline"].items():
        assert base64.b64decode(data) == api.request("GET", url, token=tokens["alpha"]).content


def test_downloads_over_the_asked_size_stay_urls(api: Api) -> None:
    task, _ = discriminator_task(api, inline_max_bytes=16)
    assert task["inline"] == {} and task["downloads"]


def test_a_claim_by_id_carries_its_small_downloads_inline(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    api.start(federation["id"])
    with api.services.db.read() as session:
        step_id = session.scalar(
            select(Step.id)
            .join(Node, Node.id == Step.node_id)
            .where(Step.federation_id == federation["id"], Node.name == "alpha")
        )
    response = api.request(
        "POST",
        f"/api/v1/node/steps/{step_id}/claim",
        token=tokens["alpha"],
        params={"inline_max_bytes": 4096},
    )
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["inline"] and set(task["inline"]) == set(task["downloads"].values())


def test_a_submission_stores_the_uploads_and_completes_the_step_in_one_request(api: Api) -> None:
    task, tokens = discriminator_task(api)
    d = params.to_bytes(valid_d())
    before = stored(api)
    answer = submit(api, task, tokens["alpha"], {"D": d}, b'{"metrics": {"disc_loss": 0.5}}')
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "done" and body["uploads"]["D"]["stored"] is True
    assert stored(api) == before + 1 and step_status(api, task["step_id"]) == "done"
    assert poll(api, tokens["alpha"]).status_code == 204  # its phase waits for the others' steps
    again = submit(api, task, tokens["alpha"], {"D": d}, b'{"metrics": {"disc_loss": 0.5}}')
    assert again.status_code == 200 and again.json()["uploads"]["D"]["stored"] is False
    assert stored(api) == before + 1, "the same submission again changes nothing"


@pytest.mark.parametrize(
    ("files", "completion", "status", "code"),
    [
        (
            {"D": params.to_bytes({k: torch.full_like(v, float("nan")) for k, v in valid_d().items()})},
            b'{"metrics": {}}',
            422,
            "non_finite",
        ),
        ({"D": b"\x00" * (UPLOAD_LIMIT + 1)}, b'{"metrics": {}}', 413, "too_large"),
        ({"D": "valid"}, b'{"metrics": {"raw_rows": 1.0}}', 422, "invalid_request"),
        ({"D": "valid"}, b"not json", 422, "invalid_request"),
        ({"D": "valid", "G": "valid"}, b'{"metrics": {}}', 422, "unknown_part"),
        ({}, b'{"metrics": {}}', 409, "missing_uploads"),
    ],
    ids=["nan", "too-large", "undeclared-metric", "bad-json", "unknown-slot", "no-upload"],
)
def test_a_refused_submission_stores_nothing_and_leaves_the_step_open(
    api: Api, files: dict[str, Any], completion: bytes, status: int, code: str
) -> None:
    task, tokens = discriminator_task(api)
    d = params.to_bytes(valid_d())
    files = {slot: d if data == "valid" else data for slot, data in files.items()}
    before = stored(api)
    answer = submit(api, task, tokens["alpha"], files, completion)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert stored(api) == before and step_status(api, task["step_id"]) == "claimed"
    fixed = submit(api, task, tokens["alpha"], {"D": d}, b'{"metrics": {}}')
    assert fixed.status_code == 200, fixed.text


def test_a_submission_without_its_completion_part_is_refused(api: Api) -> None:
    task, tokens = discriminator_task(api)
    content_type, pieces = multipart.encode({"D": params.to_bytes(valid_d())}, b"{}")
    cut = b"".join([*pieces[:3], pieces[-1]])  # the D part and the closing boundary, no completion part
    answer = api.request(
        "POST", task["submit_url"], token=tokens["alpha"], content=cut, headers={"Content-Type": content_type}
    )
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "missing_completion"
    assert step_status(api, task["step_id"]) == "claimed"


def test_a_submission_that_is_not_multipart_is_refused_before_it_is_read(api: Api) -> None:
    task, tokens = discriminator_task(api)
    answer = api.request("POST", task["submit_url"], token=tokens["alpha"], json={"metrics": {}})
    assert answer.status_code == 415 and answer.json()["error"]["code"] == "unsupported_media_type"


def test_another_nodes_step_takes_no_submission(api: Api) -> None:
    task, tokens = discriminator_task(api)
    answer = submit(api, task, tokens["beta"], {"D": params.to_bytes(valid_d())}, b'{"metrics": {}}')
    assert answer.status_code == 403
    assert step_status(api, task["step_id"]) == "claimed"
