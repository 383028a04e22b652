"""Helpers for the API tests: the admin-token client wrapper, a tiny federation, tiny data files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from bench import harness
from workers.client import NodeClient, NodeRunner

ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123"


def postgres_or_skip() -> None:
    """Skips the test when the PostgreSQL server (FEDALIGN_TEST_POSTGRES) is unreachable, saying why."""
    try:
        harness.postgres_admin_engine().dispose()
    except harness.ServiceUnavailable as exc:
        pytest.skip(str(exc))  # under CI, tests/conftest.py turns a skip into a failure


class Api:
    """The TestClient with the admin token, and shortcuts for the usual set-up."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @property
    def services(self) -> Any:
        return self.client.app.state.services  # type: ignore[attr-defined]

    def request(self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def create_federation(self, **overrides: Any) -> dict[str, Any]:
        return self.ok("POST", "/api/v1/federations", 201, json={**tiny_settings(), **overrides})

    def register(self, federation_id: str, name: str, role: str, dataset: str = "npz:/nowhere.npz") -> dict:
        return self.ok(
            "POST",
            f"/api/v1/federations/{federation_id}/nodes",
            201,
            json={"name": name, "role": role, "dataset": dataset},
        )

    def federation_with_nodes(
        self, datasets: dict[str, str] | None = None, **overrides: Any
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """A created federation with sources alpha, beta and target omega; returns it and node tokens."""
        federation = self.create_federation(**overrides)
        datasets = datasets or {}
        tokens = {}
        for name, role in (("alpha", "source"), ("beta", "source"), ("omega", "target")):
            node = self.register(federation["id"], name, role, datasets.get(name, f"npz:/data/{name}.npz"))
            tokens[name] = node["token"]
        return federation, tokens

    def start(self, federation_id: str) -> dict[str, Any]:
        return self.ok("POST", f"/api/v1/federations/{federation_id}/start")

    def task(self, token: str) -> dict[str, Any] | None:
        response = self.request("GET", "/api/v1/node/task", token=token)
        assert response.status_code in (200, 204), response.text
        return response.json() if response.status_code == 200 else None


def tiny_settings(**overrides: Any) -> dict[str, Any]:
    """A federation for the mlp on 8-dimensional vectors that trains in milliseconds per step."""
    return {
        "name": "tiny",
        "algorithm": "fedalign",
        "architecture": "mlp",
        "model": {"num_classes": 3, "input_shape": [8], "hidden": 8},
        "rounds": 2,
        "seed": 5,
        "hyperparameters": {"local_steps": 2, "disc_steps": 2, "batch_size": 8},
        **overrides,
    }


def write_vectors(path: Path, seed: int, shift: float, n: int = 40, dim: int = 8, classes: int = 3) -> str:
    """An npz of three Gaussian classes moved by ``shift``, with its own validation and test splits."""
    g = torch.Generator().manual_seed(seed)

    def split(size: int) -> tuple[np.ndarray, np.ndarray]:
        y = torch.randint(0, classes, (size,), generator=g)
        x = torch.randn(size, dim, generator=g) * 0.5 + shift + 2.0 * torch.nn.functional.one_hot(y, dim)
        return x.numpy().astype(np.float32), y.numpy().astype(np.int64)

    (x, y), (xv, yv), (xt, yt) = split(n), split(n // 4), split(n // 4)
    np.savez(path, x=x, y=y, x_val=xv, y_val=yv, x_test=xt, y_test=yt)
    return f"npz:{path}"


# Generous: the suite shares two cores with whatever else the machine runs.
RUN_TIMEOUT_S = 120


def runners_for(api: Api, tokens: dict[str, str]) -> dict[str, NodeRunner]:
    return {
        name: NodeRunner(NodeClient("http://testserver", token, http=api.client))
        for name, token in tokens.items()
    }


def drive(runners: dict[str, NodeRunner], max_steps: int | None = None) -> int:
    """Every node polls, runs and completes its steps in turn (one thread, so a fixed order) until the
    federation ends or ``max_steps`` steps ran; returns the steps run."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    ran = 0
    while not all(r.finished for r in runners.values()):
        progressed = False
        for runner in runners.values():
            if max_steps is not None and ran >= max_steps:
                return ran
            if runner.step_once():
                ran += 1
                progressed = True
        if not progressed:
            assert time.monotonic() < deadline, "the federation did not finish in time"
            time.sleep(0.01)  # a server-side aggregation is running in the background
    return ran


def run_federation(api: Api, datasets: dict[str, str], **settings: Any) -> str:
    """Create, register, start and run a federation to its end over HTTP; returns its id."""
    federation, tokens = api.federation_with_nodes(datasets, **tiny_settings(**settings))
    api.start(federation["id"])
    drive(runners_for(api, tokens))
    return str(federation["id"])
