"""The node's side of the REST API: a typed HTTP client and the loop that runs a node's steps.

`NodeClient` speaks the backend's ``/api/v1/node`` endpoints with a node token; `run_node` polls for
tasks, downloads the aggregates a step starts from, runs `fedalign.node.NodeRuntime.run` on the node's
own data, uploads the results and completes the step. A target that aggregates (aggregator = "target")
also gets aggregate tasks: it folds the phase's submissions with `fedalign.aggregate.average`, the code
the server would run, and uploads the average.

This module talks to the backend only over HTTP and never imports it; `fedalign node run` and the Celery
worker build on it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch

from fedalign import data as datasets
from fedalign import params
from fedalign.aggregate import average
from fedalign.config import FederationConfig
from fedalign.models import manifests
from fedalign.node import NodeRuntime, model_shape
from fedalign.protocol import StepSpec, effective_local_policy
from fedalign.steps import CPU, Device

log = logging.getLogger("fedalign.workers")

# Stands in for other nodes' dataset specs, which the server withholds: a node never needs them.
WITHHELD_DATASET = "withheld:"
STATUS_HEADER = "FedAlign-Federation-Status"
TERMINAL = frozenset({"finished", "cancelled", "failed"})
State = dict[str, torch.Tensor]


class ClientError(RuntimeError):
    """An error answer from the API, with its machine-readable code and its message for people."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class NodeFederation:
    federation_id: str
    status: str
    node: str
    role: str
    dataset: str
    config: FederationConfig


@dataclass(frozen=True)
class Task:
    step_id: int
    federation_id: str
    node: str
    round: int
    phase: str
    kind: str
    model: str
    seed: int
    downloads: dict[str, str]
    uploads: dict[str, str]
    complete_url: str
    lease_expires_at: dt.datetime
    inputs: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Task:
        return cls(
            step_id=int(body["step_id"]),
            federation_id=str(body["federation_id"]),
            node=str(body["node"]),
            round=int(body["round"]),
            phase=str(body["phase"]),
            kind=str(body["kind"]),
            model=str(body.get("model", "")),
            seed=int(body["seed"]),
            downloads=dict(body["downloads"]),
            uploads=dict(body["uploads"]),
            complete_url=str(body["complete_url"]),
            lease_expires_at=dt.datetime.fromisoformat(str(body["lease_expires_at"]).replace("Z", "+00:00")),
            inputs=dict(body.get("inputs") or {}),
            weights={k: float(v) for k, v in (body.get("weights") or {}).items()},
        )

    def step_spec(self) -> StepSpec:
        """The step as `NodeRuntime.run` takes it (slots map to URLs here; the runtime reads only slots)."""
        return StepSpec(
            node=self.node,
            round=self.round,
            phase=self.phase,
            kind=self.kind,  # type: ignore[arg-type]
            downloads=dict(self.downloads),
            uploads=dict(self.uploads),
            seed=self.seed,
            inputs=dict(self.inputs),
            weights=dict(self.weights),
        )


class NodeClient:
    """The node API with one node's token.

    ``http`` lets several nodes share one connection pool, or tests run against an in-process app
    (Starlette's TestClient is an ``httpx.Client``); a client passed in is not closed here.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=timeout)
        self._auth = {"Authorization": f"Bearer {token}"}
        # The federation's status as the last task poll reported it.
        self.federation_status: str | None = None

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.base_url + path_or_url

    def _get(self, path_or_url: str) -> httpx.Response:
        return self._check(self.http.get(self._url(path_or_url), headers=self._auth))

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            raise ClientError(response.status_code, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            raise ClientError(response.status_code, "http_error", response.text[:500]) from None

    def federation(self) -> NodeFederation:
        body = self._get("/api/v1/node/federation").json()
        me = body["node"]
        nodes = [
            {"name": n["name"], "role": n["role"], "dataset": n.get("dataset") or WITHHELD_DATASET}
            for n in body["nodes"]
        ]
        config = FederationConfig.model_validate({**body["config"], "nodes": nodes})
        self.federation_status = body["status"]
        return NodeFederation(
            federation_id=body["federation_id"],
            status=body["status"],
            node=me["name"],
            role=me["role"],
            dataset=me.get("dataset") or "",
            config=config,
        )

    def next_task(self) -> Task | None:
        """Claim the next step, or None when there is none now (see ``federation_status``)."""
        response = self._get("/api/v1/node/task")
        if response.status_code == 204:
            self.federation_status = response.headers.get(STATUS_HEADER, self.federation_status)
            return None
        self.federation_status = None
        return Task.from_json(response.json())

    def download_bytes(self, url: str) -> bytes:
        return self._get(url).content

    def download(self, url: str) -> State:
        return params.from_bytes(self.download_bytes(url))

    def upload(self, url: str, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        response = self.http.put(
            self._url(url),
            content=params.to_bytes(state),
            headers={**self._auth, "Content-Type": "application/octet-stream"},
        )
        return dict(self._check(response).json())

    def complete(
        self, url: str, metrics: Mapping[str, float], samples: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"metrics": {k: float(v) for k, v in metrics.items()}}
        if samples is not None:
            body["samples"] = dict(samples)
        return dict(self._check(self.http.post(self._url(url), json=body, headers=self._auth)).json())


class NodeRunner:
    """One node: its runtime, built once from the federation's config and its own data."""

    def __init__(
        self, client: NodeClient, data: datasets.NodeData | str | None = None, device: Device = CPU
    ) -> None:
        self.client = client
        self.federation = client.federation()
        if data is None:
            data = self.federation.dataset
        node_data = datasets.load(data) if isinstance(data, str) else data
        self.runtime = NodeRuntime(self.federation.node, self.federation.config, node_data, device)
        self.steps_run = 0

    @property
    def config(self) -> FederationConfig:
        return self.federation.config

    def step_once(self) -> bool:
        """Claim and run at most one step; False when there was none."""
        task = self.client.next_task()
        if task is None:
            return False
        self.run(task)
        self.steps_run += 1
        return True

    def run(self, task: Task) -> None:
        if task.kind == "aggregate":
            self._aggregate(task)
            return
        downloads = {slot: self.client.download(url) for slot, url in task.downloads.items()}
        result = self.runtime.run(task.step_spec(), downloads)
        for slot, url in task.uploads.items():
            self.client.upload(url, result.uploads[slot])
        self.client.complete(task.complete_url, result.metrics, result.samples)

    def _aggregate(self, task: Task) -> None:
        """Average the phase's submissions in node order, exactly as the server would."""
        config = self.config
        manifest = manifests(config.architecture, model_shape(config), effective_local_policy(config))
        inputs = {node: self.client.download_bytes(url) for node, url in task.inputs.items()}
        result = average(inputs, task.weights, manifest[task.model].shared())
        for url in task.uploads.values():
            self.client.upload(url, result)
        self.client.complete(task.complete_url, {})

    @property
    def finished(self) -> bool:
        return self.client.federation_status in TERMINAL


def run_node(
    client: NodeClient,
    data: datasets.NodeData | str | None = None,
    *,
    stop_when_finished: bool = True,
    poll_interval_s: float = 1.0,
    device: Device = CPU,
    max_steps: int | None = None,
) -> int:
    """Run this node's steps until its federation ends (or ``max_steps``); returns how many ran.

    ``data``: the node's data set, or a spec to load it from; default: the spec it registered with.
    Network errors are retried after ``poll_interval_s``; a step the server no longer wants (its phase
    closed at the deadline) is dropped and the loop goes on.
    """
    runner = NodeRunner(client, data, device)
    while max_steps is None or runner.steps_run < max_steps:
        try:
            ran = runner.step_once()
        except httpx.TransportError as exc:
            log.warning("cannot reach the server (%s); retrying in %.1f s", exc, poll_interval_s)
            ran = False
        except ClientError as exc:
            if exc.status != 409:
                raise
            log.warning("the server refused a result: %s", exc)
            ran = True
        if ran:
            continue
        if stop_when_finished and runner.finished:
            break
        time.sleep(poll_interval_s)
    return runner.steps_run
