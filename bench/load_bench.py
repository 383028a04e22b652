"""Load benchmark: one `fedalign serve` process, one federation of many simulated REST nodes at once.

Run with the project's interpreter::

    .venv/bin/python -m bench.load_bench --json bench/results/load.json

It starts the API as a subprocess (SQLite in a temporary data directory, or ``--db postgres``: a scratch
database created on the server at ``--postgres-url`` and dropped at the end), creates a federation of the
tiny ``mlp`` (input 8, hidden 8, 3 classes) with ``--nodes`` nodes (all sources but one target), and drives
every node at once from one asyncio loop, each node with its own ``httpx.AsyncClient``: it fetches its
federation, polls ``GET /api/v1/node/task`` (which claims a step), claims it again by id (the Celery path's
``POST .../claim``, so its latency is measured under the same load), downloads what the task lists, PUTs
one safetensors file per upload slot and completes the step, until the federation has run ``--rounds``
rounds. Nodes poll every ``--poll-interval`` seconds (jittered) when there is nothing to do, as
``fedalign node run`` does.

Uploads are synthetic, built from the federation's manifest (the same names, shapes and dtypes the server
checks; random finite values, different bytes for every upload), not computed by the real step code.
Why: the server validates only the manifest and values, so it runs exactly the same code either way
(receive, fsync, validate, store, aggregate), while 100 torch runtimes in this process would spend the
shared 2-core machine's CPU on training and stall the event loop that times the requests.

Then the figures:

- per endpoint kind (poll = ``GET /task`` answered 204, claim = ``GET /task`` answered 200, claim_by_id,
  download, upload, complete, federation): requests, rate over the run, p50/p90/p99/max latency, and the
  answers by status; 204 on a poll is the expected "no work" answer, any other answer of 400 or more and
  any transport error is a failure (requests are retried like the Celery client does, and counted);
- nothing lost: through the admin API, the federation is finished, every round's every step is done, the
  steps are the ones the round schedule expects, and every submission a node sent and the server
  acknowledged is stored with the same SHA-256 (and nothing else is);
- saturation, against a reference in the same run: with ``--concurrency`` closed-loop workers, the rate of
  ``GET /healthz`` (no database), of idle polls (``GET /task`` of a running federation whose nodes hold
  their steps: answered 204) and of uploads (a fresh D to a claimed step, replacing the previous one), in
  interleaved segments so that load from other processes falls on all alike; poll and upload rates are
  printed as ratios to the healthz rate. These run on a second federation ("probe"), after the main run.

The client shares the machine with the server; the event loop's lag (how late a 50 ms timer fires) is
reported so that client-side delay in the latencies can be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from backend.services.manifests import slot_manifest
from bench.harness import (
    POSTGRES_ADMIN_URL,
    REPO,
    child_env,
    cpu_seconds,
    fedalign_command,
    free_port,
    scratch_postgres,
    stamped,
    start_child,
    stop_child,
    wait_ready,
    write_json,
)
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.manifest import Manifest, is_floating
from fedalign.model_manifest import ModelManifest
from fedalign.phases import round_phases
from fedalign.protocol import Protocol
from fedalign.torch_dtypes import SAFETENSORS_DTYPES
from messaging.node_api import STATUS_HEADER
from messaging.node_api import TERMINAL_STATUSES as TERMINAL

ADMIN_TOKEN = "load-bench-admin-token-0123456789"
KINDS = ("federation", "poll", "claim", "claim_by_id", "download", "upload", "complete")
# Like the Celery client: transport errors and 5xx answers are tried again, with backoff, so one failure is
# counted instead of losing the node (a node that gave up on a claimed step would stall its phase for the
# whole lease).
RETRIES = 8
START_TIMEOUT_S = 120.0
LAG_TICK_S = 0.05


# ---------------------------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Call:
    kind: str
    status: int  # 0: a transport error (no answer)
    seconds: float
    retry: bool
    error: str = ""


class Recorder:
    """Times every request; a semaphore caps requests in flight at --concurrency.

    The timer starts after the semaphore is taken, so a request's latency excludes its wait for a slot
    on the client.
    """

    def __init__(self, concurrency: int) -> None:
        self.gate = asyncio.Semaphore(concurrency)
        self.calls: list[Call] = []
        self.failures: list[str] = []  # the first few unexpected answers, with their bodies

    async def once(
        self, http: httpx.AsyncClient, kind: str, method: str, url: str, retry: bool, **kwargs: Any
    ) -> httpx.Response | None:
        async with self.gate:
            start = time.perf_counter()
            try:
                response = await http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                self.calls.append(Call(kind, 0, time.perf_counter() - start, retry, type(exc).__name__))
                self._note(f"{method} {url}: {type(exc).__name__}: {exc}")
                return None
            self.calls.append(Call(kind, response.status_code, time.perf_counter() - start, retry))
        if response.status_code >= 400:
            self._note(f"{method} {url}: {response.status_code} {response.text[:300]}")
        return response

    async def send(
        self, http: httpx.AsyncClient, kind: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        """One request, tried again on a transport error or a 5xx; the first answer below 500."""
        for attempt in range(RETRIES):
            response = await self.once(http, kind, method, url, attempt > 0, **kwargs)
            if response is not None and response.status_code < 500:
                return response
            await asyncio.sleep(min(0.25 * 2**attempt, 5.0))
        raise RuntimeError(f"{method} {url}: no answer below 500 after {RETRIES} tries")

    def _note(self, line: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(line)


def endpoint_kind(call: Call) -> str:
    """``GET /task`` is two kinds: a 200 claimed a step (claim), anything else found none (poll)."""
    if call.kind == "task":
        return "claim" if call.status == 200 else "poll"
    return call.kind


def outcome(call: Call) -> str:
    """ok, no_work (a poll's 204), expected_4xx (a 409 on a retried request: the first try had landed),
    or failure (any other answer of 400 or more, or no answer)."""
    if call.status == 204 and call.kind == "task":
        return "no_work"
    if 200 <= call.status < 300:
        return "ok"
    if call.status == 409 and call.retry:
        return "expected_4xx"
    return "failure"


class LagMonitor:
    """How late a 50 ms timer fires on the client's event loop: the client's share of measured latency."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self.lags.append(loop.time() - start - LAG_TICK_S)

    def __enter__(self) -> LagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# ---------------------------------------------------------------------------------------------- figures


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 of 100 samples is a sample that was observed)."""
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def latency_ms(seconds: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in milliseconds; None for a kind that sent nothing (JSON has no NaN)."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1],
        "mean": statistics.fmean(values),
    }


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def per_kind(calls: list[Call], wall_s: float) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        mine = [c for c in calls if endpoint_kind(c) == kind]
        outcomes = Counter(outcome(c) for c in mine)
        table[kind] = {
            "requests": len(mine),
            "rate_per_s": len(mine) / wall_s,
            "latency_ms": latency_ms([c.seconds for c in mine]),
            "statuses": dict(sorted(Counter(str(c.status or c.error) for c in mine).items())),
            "failures": outcomes["failure"],
            "expected_4xx": outcomes["expected_4xx"],
        }
    return table


def status_counts(calls: list[Call]) -> dict[str, Any]:
    by_outcome = Counter(outcome(c) for c in calls)
    failures = Counter(f"{endpoint_kind(c)} {c.status or c.error}" for c in calls if outcome(c) == "failure")
    return {
        "ok": by_outcome["ok"],
        "no_work_204": by_outcome["no_work"],
        "expected_4xx": by_outcome["expected_4xx"],
        "failures": by_outcome["failure"],
        "failures_by_kind_and_status": dict(sorted(failures.items())),
        "retries": sum(c.retry for c in calls),
    }


# ----------------------------------------------------------------------------------------- the server


def server_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    # One torch thread: the server's aggregations share two cores with the client and other benchmarks.
    env = child_env(FEDALIGN_DATA_DIR=str(data_dir), FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN)
    if database_url:
        env["FEDALIGN_DATABASE_URL"] = database_url
    return env


@contextlib.contextmanager
def api_process(data_dir: Path, database_url: str | None, log_level: str) -> Iterator[tuple[str, int, Path]]:
    """The API on a free port; yields its URL, pid and log file, and stops its process group at the end."""
    port = free_port()
    argv = fedalign_command("serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level)
    child = start_child("serve", argv, server_env(data_dir, database_url), data_dir, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [child], START_TIMEOUT_S)
        yield url, child.process.pid, child.log
    finally:
        stop_child(child)


def server_log_summary(log_path: Path) -> dict[str, Any]:
    """What the server logged going wrong: tracebacks, error lines, 5xx answers in its access log."""
    lines = log_path.read_text(errors="replace").splitlines()
    server_errors = [line for line in lines if '" 5' in line and "HTTP/1.1" in line]
    return {
        "lines": len(lines),
        "tracebacks": sum("Traceback" in line for line in lines),
        "exceptions": dict(Counter(exception_lines(lines)).most_common(10)),
        "access_log_5xx": len(server_errors),
        "access_log_5xx_first": server_errors[:5],
    }


def exception_lines(lines: list[str]) -> Iterator[str]:
    """The last line of each traceback: the exception's type and message (what went wrong, not where)."""
    inside = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            inside = True
        elif inside and line and not line.startswith(" "):
            inside = False
            yield line[:300]


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------------- the federation


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    index: int
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def settings(name: str, rounds: int) -> dict[str, Any]:
    """The tests' tiny federation (tests/backend/api_support.py: tiny_settings): steps of milliseconds."""
    return {
        "name": name,
        "algorithm": "fedalign",
        "architecture": "mlp",
        "model": {"num_classes": 3, "input_shape": [8], "hidden": 8},
        "rounds": rounds,
        "seed": 5,
        "hyperparameters": {"local_steps": 2, "disc_steps": 2, "batch_size": 8},
    }


def node_roles(count: int) -> list[tuple[str, str]]:
    """All sources and one target (last), named so that they sort in index order."""
    return [(f"n{i:04d}", "target" if i == count - 1 else "source") for i in range(count)]


def federation_config(body: dict[str, Any], roles: list[tuple[str, str]]) -> FederationConfig:
    nodes = [{"name": name, "role": role, "dataset": "npz:/nowhere.npz"} for name, role in roles]
    return FederationConfig.model_validate({**body, "nodes": nodes})


@dataclass
class Admin:
    http: httpx.AsyncClient
    url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.url + path, headers=self.auth, **kwargs)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None


async def create_federation(
    admin: Admin, body: dict[str, Any], roles: list[tuple[str, str]]
) -> tuple[str, list[Node]]:
    """Created, with its nodes registered concurrently by the join token (as organisations would)."""
    federation = await admin.call("POST", "/api/v1/federations", 201, json=body)
    path = f"/api/v1/federations/{federation['id']}/nodes"
    join = {"Authorization": f"Bearer {federation['join_token']}"}

    async def register(index: int, name: str, role: str) -> Node:
        payload = {"name": name, "role": role, "dataset": f"npz:/nowhere/{name}.npz"}
        response = await admin.http.post(admin.url + path, json=payload, headers=join)
        if response.status_code != 201:
            raise RuntimeError(f"registering {name}: {response.status_code} {response.text[:300]}")
        return Node(name, role, index, response.json()["token"])

    nodes = await asyncio.gather(*(register(i, n, r) for i, (n, r) in enumerate(roles)))
    return str(federation["id"]), list(nodes)


# ------------------------------------------------------------------------------------ a simulated node


def synthetic_upload(manifest: Manifest, seed: int) -> bytes:
    """A valid file for ``manifest``'s shared tensors: small random floats, zeros for integer tensors."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for spec in manifest.shared():
        dtype = SAFETENSORS_DTYPES[spec.dtype]
        if is_floating(spec.dtype):
            state[spec.name] = (0.1 * torch.randn(spec.shape, generator=generator)).to(dtype)
        else:
            state[spec.name] = torch.zeros(spec.shape, dtype=dtype)
    return params.to_bytes(state)


def completion(task: dict[str, Any], node: Node) -> dict[str, Any]:
    """Plausible metrics of the step's kind (round-level metrics are computed from eval's), and for
    setup the sample counts (unequal, so that weighting by samples is not uniform in disguise)."""
    rng = random.Random(int(task["step_id"]))
    kind = task["kind"]
    metrics: dict[str, float] = {}
    if kind == "discriminator":
        metrics = {"disc_loss": rng.uniform(0.5, 0.7)}
    elif kind == "adapt":
        metrics = {"task_loss": rng.uniform(0.5, 1.5), "adv_loss": rng.uniform(0.6, 0.8)}
    elif kind == "evaluate":
        metrics = {"disc_acc_own": rng.uniform(0.4, 0.6), "disc_n": 10.0}
        metrics |= {"target_acc": rng.random()} if node.role == "target" else {"source_val_acc": rng.random()}
    body: dict[str, Any] = {"metrics": metrics}
    if kind == "setup":
        body["samples"] = {"train": 40 + node.index % 7, "val": 10, "test": 10}
    return body


@dataclass
class Ledger:
    """What the nodes sent and the server acknowledged, to compare with what the admin API shows."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # artifact key -> SHA-256 sent
    uploads_sent: int = 0
    uploads_not_stored: int = 0  # answered stored: false (same bytes again: only after a retry)
    sha_mismatches: list[str] = field(default_factory=list)
    corrupt_downloads: list[str] = field(default_factory=list)
    steps_completed: int = 0
    refused: list[str] = field(default_factory=list)  # steps a node dropped on a 4xx


@dataclass
class Run:
    recorder: Recorder
    manifests: dict[str, Manifest]
    ledger: Ledger
    poll_interval_s: float
    claim_by_id: bool
    api: str


def node_client() -> httpx.AsyncClient:
    """One client, one connection, per simulated node (or saturation worker), as separate organisations
    would have. Not one shared pool: httpcore scans a pool's every connection for every request on the
    event loop, and at 100 connections that made this client, not the server, the bottleneck (healthz
    fell from about 400 to about 50 answers per second, the server idle at 0.06 cores)."""
    return httpx.AsyncClient(timeout=120.0, limits=httpx.Limits(max_connections=1))


class SimulatedNode:
    """One REST node: fetch the federation, then poll, run and complete steps until it is over."""

    def __init__(self, run: Run, node: Node, http: httpx.AsyncClient, delay_s: float = 0.0) -> None:
        self.run, self.node, self.http, self.delay_s = run, node, http, delay_s
        self.rng = random.Random(node.index)

    async def send(
        self, kind: str, method: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**(headers or {}), **self.node.auth}
        return await self.run.recorder.send(self.http, kind, method, url, headers=headers, **kwargs)

    async def loop(self) -> None:
        try:
            await self._loop()
        except RuntimeError as exc:  # no answer below 500 after every retry: recorded, the run goes on
            self.run.ledger.refused.append(f"node {self.node.name} gave up: {exc}")

    async def _loop(self) -> None:
        api = self.run.api
        await asyncio.sleep(self.delay_s)
        await self.send("federation", "GET", f"{api}/api/v1/node/federation")
        while True:
            response = await self.send("task", "GET", f"{api}/api/v1/node/task")
            if response.status_code == 200:
                await self.run_task(response.json())
                continue
            if response.status_code == 204 and response.headers.get(STATUS_HEADER) in TERMINAL:
                return
            # Jittered, so that the nodes do not poll in lockstep after the first round.
            await asyncio.sleep(self.run.poll_interval_s * self.rng.uniform(0.5, 1.5))

    async def run_task(self, task: dict[str, Any]) -> None:
        if task["kind"] == "aggregate":
            raise RuntimeError("aggregate tasks are not simulated: this federation aggregates on the server")
        step = int(task["step_id"])
        if self.run.claim_by_id:
            url = f"{self.run.api}/api/v1/node/steps/{step}/claim"
            if not self.accepted(await self.send("claim_by_id", "POST", url), step, "claim"):
                return
        for url in task["downloads"].values():
            await self.download(url)
        for index, (slot, url) in enumerate(sorted(task["uploads"].items())):
            if not await self.upload(step, slot, url, seed=step * 16 + index):
                return
        body = completion(task, self.node)
        response = await self.send("complete", "POST", task["complete_url"], json=body)
        if self.accepted(response, step, "complete"):
            self.run.ledger.steps_completed += 1

    def accepted(self, response: httpx.Response, step: int, what: str) -> bool:
        """A 4xx drops the step (the node polls on), as `workers.client.run_node` does with a 409."""
        if response.is_success:
            return True
        self.run.ledger.refused.append(f"step {step} {what}: {response.status_code} {response.text[:200]}")
        return False

    async def download(self, url: str) -> None:
        response = await self.send("download", "GET", url)
        # The store is content-addressed and the ETag is the SHA-256: a torn or mixed-up file shows here.
        digest = f'"{hashlib.sha256(response.content).hexdigest()}"'
        if response.is_success and digest != response.headers.get("etag"):
            self.run.ledger.corrupt_downloads.append(url)

    async def upload(self, step: int, slot: str, url: str, seed: int) -> bool:
        ledger = self.run.ledger
        data = synthetic_upload(self.run.manifests[slot], seed)
        sha = hashlib.sha256(data).hexdigest()
        ledger.uploads_sent += 1
        octet = {"Content-Type": "application/octet-stream"}
        response = await self.send("upload", "PUT", url, content=data, headers=octet)
        if not self.accepted(response, step, f"upload {slot}"):
            return False
        answer = response.json()
        if answer["sha256"] != sha:
            ledger.sha_mismatches.append(f"{answer['key']}: sent {sha}, server says {answer['sha256']}")
        if not answer["stored"]:
            ledger.uploads_not_stored += 1
        ledger.acknowledged[answer["key"]] = sha
        return True


# ----------------------------------------------------------------------------------- nothing lost


def expected_steps(config: FederationConfig) -> dict[tuple[int, str], set[str]]:
    """(round, phase) -> the nodes the round schedule gives a step in it."""
    protocol = Protocol(config)
    return {
        (r, phase): set(protocol.participants(r, phase))
        for r in range(config.rounds + 1)
        for phase in round_phases(config, r)
    }


async def verify(
    admin: Admin, federation_id: str, config: FederationConfig, ledger: Ledger
) -> dict[str, Any]:
    """Every step done, exactly the expected steps, every acknowledged submission stored as sent."""
    federation = await admin.call("GET", f"/api/v1/federations/{federation_id}")
    expected = expected_steps(config)
    found_steps: dict[tuple[int, str], list[dict[str, Any]]] = {}
    stored: dict[str, str] = {}
    for r in range(config.rounds + 1):
        detail = await admin.call("GET", f"/api/v1/federations/{federation_id}/rounds/{r}")
        for phase in detail["phases"]:
            found_steps[(r, phase["name"])] = phase["steps"]
            stored |= {a["key"]: a["sha256"] for a in phase["submissions"]}
    all_steps = [s for steps in found_steps.values() for s in steps]
    wrong_steps = [
        f"r{r}/{phase}"
        for (r, phase), nodes in expected.items()
        if sorted(s["node"] for s in found_steps.get((r, phase), [])) != sorted(nodes)
    ]
    return {
        "federation_status": federation["status"],
        "steps_expected": sum(len(n) for n in expected.values()),
        "steps_listed": len(all_steps),
        "steps_done": sum(s["status"] == "done" for s in all_steps),
        "steps_not_done": [
            f"{s['id']} {s['node']} {s['status']}" for s in all_steps if s["status"] != "done"
        ][:20],
        "phases_with_wrong_steps": wrong_steps,
        "steps_completed_by_nodes": ledger.steps_completed,
        "uploads_sent": ledger.uploads_sent,
        "submissions_acknowledged": len(ledger.acknowledged),
        "submissions_stored": len(stored),
        "acknowledged_but_missing": sorted(set(ledger.acknowledged) - set(stored))[:20],
        "stored_but_never_acknowledged": sorted(set(stored) - set(ledger.acknowledged))[:20],
        "stored_with_other_bytes": sorted(
            k for k, sha in ledger.acknowledged.items() if stored.get(k, sha) != sha
        )[:20],
        "upload_sha_mismatches": ledger.sha_mismatches[:20],
        "uploads_answered_not_stored": ledger.uploads_not_stored,
        "corrupt_downloads": ledger.corrupt_downloads[:20],
        "steps_dropped_on_4xx": ledger.refused[:20],
    }


def nothing_lost(check: dict[str, Any]) -> bool:
    return (
        check["federation_status"] == "finished"
        and check["steps_expected"]
        == check["steps_listed"]
        == check["steps_done"]
        == check["steps_completed_by_nodes"]
        and not check["phases_with_wrong_steps"]
        and check["uploads_sent"] == check["submissions_acknowledged"] == check["submissions_stored"]
        and not check["acknowledged_but_missing"]
        and not check["stored_but_never_acknowledged"]
        and not check["stored_with_other_bytes"]
        and not check["upload_sha_mismatches"]
        and not check["corrupt_downloads"]
        and not check["steps_dropped_on_4xx"]
    )


# ------------------------------------------------------------------------------------ saturation


@dataclass(frozen=True)
class Probe:
    """A running federation whose nodes each hold a claimed disc1 step (so their polls find nothing)."""

    federation_id: str
    nodes: list[Node]
    upload_urls: list[str]  # each node's disc1 step's D upload URL


async def probe_federation(admin: Admin, api: str, count: int) -> Probe:
    federation_id, nodes = await create_federation(admin, settings("load-bench-probe", 1), node_roles(count))
    await admin.call("POST", f"/api/v1/federations/{federation_id}/start")
    for node in nodes:  # setup: no uploads, so the last completion opens disc1 at once
        task = (await admin.http.get(f"{api}/api/v1/node/task", headers=node.auth)).json()
        response = await admin.http.post(task["complete_url"], json=completion(task, node), headers=node.auth)
        response.raise_for_status()
    urls = []
    for node in nodes:
        task = (await admin.http.get(f"{api}/api/v1/node/task", headers=node.auth)).json()
        assert task["phase"] == "disc1", task
        urls.append(task["uploads"]["D"])
    return Probe(federation_id, nodes, urls)


Request = Callable[[httpx.AsyncClient, int, int], Awaitable[httpx.Response]]


def probe_requests(
    api: str, probe: Probe, manifest: Manifest, workers: int
) -> dict[str, tuple[Request, int]]:
    """Per segment: the request worker w sends as its i-th, and the status that counts as done."""
    # Four payloads of its own per worker, cycled: an upload always differs from what its slot holds, so
    # every one takes the storing path (stored: true), not the "same bytes again" shortcut.
    payloads = [[synthetic_upload(manifest, 1_000_000 + w * 4 + j) for j in range(4)] for w in range(workers)]
    octet = {"Content-Type": "application/octet-stream"}

    def node_of(w: int) -> Node:
        return probe.nodes[w % len(probe.nodes)]

    async def healthz(http: httpx.AsyncClient, _w: int, _i: int) -> httpx.Response:
        return await http.get(f"{api}/healthz")

    async def poll(http: httpx.AsyncClient, w: int, _i: int) -> httpx.Response:
        return await http.get(f"{api}/api/v1/node/task", headers=node_of(w).auth)

    async def put(http: httpx.AsyncClient, w: int, i: int) -> httpx.Response:
        node = node_of(w)
        data = payloads[w][i % 4]
        return await http.put(probe.upload_urls[node.index], content=data, headers={**node.auth, **octet})

    return {"healthz": (healthz, 200), "poll": (poll, 204), "upload": (put, 200)}


async def segment(
    clients: list[httpx.AsyncClient], request: Request, ok: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    """One closed loop per client for ``seconds``: the rate of answers with status ``ok``, and the CPU
    the server and this client spent (which of them was the bottleneck)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await request(clients[w], w, i)
            latencies.append(time.perf_counter() - start)
            statuses[response.status_code] += 1
            i += 1

    start, server, client = time.perf_counter(), cpu_seconds(server_pid), own_cpu_seconds()
    await asyncio.gather(*(worker(w) for w in range(len(clients))))
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "done": statuses[ok],
        "statuses": dict(statuses),
        "latencies": latencies,
        "server_cores": (cpu_seconds(server_pid) - server) / wall,
        "client_cores": (own_cpu_seconds() - client) / wall,
    }


async def saturation(
    requests: dict[str, tuple[Request, int]], args: argparse.Namespace, server_pid: int
) -> dict[str, Any]:
    """Segments interleaved, their order rotated each repeat, so that load from other processes on a
    shared machine falls on every kind alike rather than on whichever ran at a bad time."""
    names = list(requests)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(node_client()) for _ in range(args.concurrency)]
        await segment(clients, requests["healthz"][0], 200, 0.5, server_pid)  # warm-up: connect
        for repeat in range(args.probe_repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                request, ok = requests[name]
                runs[name].append(await segment(clients, request, ok, args.probe_seconds, server_pid))
    return {name: summarise_segments(segments) for name, segments in runs.items()}


def summarise_segments(segments: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [s["done"] / s["wall_s"] for s in segments]
    statuses: Counter[int] = Counter()
    for s in segments:
        statuses.update(s["statuses"])
    return {
        "rate_per_s": statistics.median(rates),
        "rates_per_s": rates,
        "latency_ms": latency_ms([x for s in segments for x in s["latencies"]]),
        "server_cores": statistics.median(s["server_cores"] for s in segments),
        "client_cores": statistics.median(s["client_cores"] for s in segments),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


# ---------------------------------------------------------------------------------------- the run


@dataclass
class Timings:
    setup_s: float = 0.0
    start_s: float = 0.0
    run_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    lags: list[float] = field(default_factory=list)
    loadavg_at_start: tuple[float, float, float] = (0.0, 0.0, 0.0)


async def drive(run: Run, nodes: list[Node], timeout_s: float, ramp_up_s: float) -> bool:
    """Every node at once (or starting evenly over ``ramp_up_s``), each with its own client; False when the
    federation did not end in ``timeout_s``."""
    async with contextlib.AsyncExitStack() as stack:
        simulated = [
            SimulatedNode(run, n, await stack.enter_async_context(node_client()), ramp_up_s * i / len(nodes))
            for i, n in enumerate(nodes)
        ]
        tasks = [asyncio.create_task(node.loop()) for node in simulated]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a bug in the benchmark itself: fail loudly
    return not pending


async def benchmark(args: argparse.Namespace, url: str, server_pid: int) -> dict[str, Any]:
    timings = Timings(loadavg_at_start=os.getloadavg())
    async with httpx.AsyncClient(timeout=120.0) as admin_http:
        admin = Admin(admin_http, url)
        started = time.perf_counter()
        body = settings("load-bench", args.rounds)
        roles = node_roles(args.nodes)
        federation_id, nodes = await create_federation(admin, body, roles)
        config = federation_config(body, roles)
        timings.setup_s = time.perf_counter() - started

        run = Run(
            recorder=Recorder(args.concurrency),
            manifests={
                slot: slot_manifest(ModelManifest.for_config(config), slot)
                for slot in ("G", "T", "D", "model")
            },
            ledger=Ledger(),
            poll_interval_s=args.poll_interval,
            claim_by_id=not args.no_claim_by_id,
            api=url,
        )
        cpu_server, cpu_client = cpu_seconds(server_pid), own_cpu_seconds()
        started = time.perf_counter()
        await admin.call("POST", f"/api/v1/federations/{federation_id}/start")
        timings.start_s = time.perf_counter() - started
        with LagMonitor() as lag:
            ended = await drive(run, nodes, args.timeout, args.ramp_up)
        timings.run_s = time.perf_counter() - started
        timings.server_cpu_s = cpu_seconds(server_pid) - cpu_server
        timings.client_cpu_s = own_cpu_seconds() - cpu_client
        timings.lags = lag.lags

        check = await verify(admin, federation_id, config, run.ledger)
        check["ended_in_time"] = ended
        probe = await probe_federation(admin, url, max(2, min(args.nodes, args.concurrency)))
        requests = probe_requests(url, probe, run.manifests["D"], args.concurrency)
        sat = await saturation(requests, args, server_pid)
        await admin.call("POST", f"/api/v1/federations/{probe.federation_id}/cancel")
    return report(args, timings, run.recorder, check, sat)


def report(
    args: argparse.Namespace, t: Timings, recorder: Recorder, check: dict[str, Any], sat: dict[str, Any]
) -> dict[str, Any]:
    calls = recorder.calls
    reference = sat["healthz"]["rate_per_s"]
    for figures in sat.values():
        figures["ratio_to_healthz"] = figures["rate_per_s"] / reference
    return {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": t.loadavg_at_start,
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(),
        },
        "seconds": {"setup": t.setup_s, "start": t.start_s, "run": t.run_s},
        "cpu": {
            "server_s": t.server_cpu_s,
            "server_cores": t.server_cpu_s / t.run_s,
            "client_s": t.client_cpu_s,
            "client_cores": t.client_cpu_s / t.run_s,
        },
        "client_loop_lag_ms": latency_ms(t.lags),
        "requests": {"total": len(calls), "rate_per_s": len(calls) / t.run_s, **status_counts(calls)},
        "endpoints": per_kind(calls, t.run_s),
        "unexpected_answers": recorder.failures,
        "nothing_lost": {"ok": nothing_lost(check) and check["ended_in_time"], **check},
        "saturation": {
            "workers": args.concurrency,
            "segment_s": args.probe_seconds,
            "repeats": args.probe_repeats,
            **sat,
        },
    }


# ---------------------------------------------------------------------------------------- printing


def print_markdown(r: dict[str, Any]) -> None:
    c, s, req = r["config"], r["seconds"], r["requests"]
    ramp = f", nodes started over {c['ramp_up']:.0f} s" if c["ramp_up"] else ", all nodes started at once"
    print(
        f"\n## Load: {c['nodes']} nodes, {c['rounds']} rounds, concurrency {c['concurrency']}, "
        f"{c['db']}{ramp}\n"
    )
    print(
        f"Run {s['run']:.1f} s (start {s['start']:.2f} s, setup {s['setup']:.1f} s): "
        f"{req['total']} requests, "
        f"{req['rate_per_s']:.0f} req/s; {req['failures']} failures, {req['retries']} retries, "
        f"{req['no_work_204']} polls found no work. Server CPU {r['cpu']['server_cores']:.2f} cores, client "
        f"{r['cpu']['client_cores']:.2f}; client loop lag p99 {ms(r['client_loop_lag_ms']['p99'])} ms.\n"
    )
    print("| endpoint | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | failures | answers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind, e in r["endpoints"].items():
        lat = e["latency_ms"]
        answers = ", ".join(f"{k}: {v}" for k, v in e["statuses"].items())
        print(
            f"| {kind} | {e['requests']} | {e['rate_per_s']:.1f} | {ms(lat['p50'])} | {ms(lat['p90'])} | "
            f"{ms(lat['p99'])} | {ms(lat['max'])} | {e['failures']} | {answers} |"
        )
    sat = r["saturation"]
    print(
        f"\nSaturation: {sat['workers']} closed-loop workers, {sat['repeats']} × {sat['segment_s']:.0f} s "
        "each, median rate\n"
    )
    print("| request | req/s | ratio to healthz | p50 ms | p99 ms | server cores | client cores | answers |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in ("healthz", "poll", "upload"):
        f = sat[name]
        answers = ", ".join(f"{k}: {v}" for k, v in f["statuses"].items())
        print(
            f"| {name} | {f['rate_per_s']:.0f} | {f['ratio_to_healthz']:.2f} | "
            f"{ms(f['latency_ms']['p50'])} | {ms(f['latency_ms']['p99'])} | {f['server_cores']:.2f} | "
            f"{f['client_cores']:.2f} | {answers} |"
        )
    print_checks(r["nothing_lost"])
    log = r["server_log"]
    print(
        f"\nServer log: {log['tracebacks']} tracebacks, {log['access_log_5xx']} answers of 5xx in the "
        "access log" + "".join(f"\n    {n} × {line}" for line, n in log["exceptions"].items())
    )


def print_checks(n: dict[str, Any]) -> None:
    print(f"\nNothing lost: {'yes' if n['ok'] else 'NO'}\n")
    print("| check | value |")
    print("|---|---|")
    print(f"| federation status | {n['federation_status']} (ended in time: {n['ended_in_time']}) |")
    print(
        f"| steps expected / listed / done / completed by nodes | {n['steps_expected']} / "
        f"{n['steps_listed']} / {n['steps_done']} / {n['steps_completed_by_nodes']} |"
    )
    print(
        f"| uploads sent / acknowledged / stored | {n['uploads_sent']} / {n['submissions_acknowledged']} / "
        f"{n['submissions_stored']} |"
    )
    for key in (
        "phases_with_wrong_steps",
        "steps_not_done",
        "acknowledged_but_missing",
        "stored_but_never_acknowledged",
        "stored_with_other_bytes",
        "upload_sha_mismatches",
        "corrupt_downloads",
        "steps_dropped_on_4xx",
    ):
        print(f"| {key.replace('_', ' ')} | {len(n[key])} {n[key][:3] if n[key] else ''} |")


# ------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="nodes: all sources but one target")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100, help="most requests in flight at once")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--postgres-url", default=POSTGRES_ADMIN_URL, help="server to create the scratch database on"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between idle polls (jittered ±50%%)"
    )
    parser.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        help="start the nodes evenly over this many seconds (0: at once)",
    )
    parser.add_argument("--no-claim-by-id", action="store_true", help="skip POST .../claim after each poll")
    parser.add_argument("--probe-seconds", type=float, default=3.0, help="length of one saturation segment")
    parser.add_argument("--probe-repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on the run after this long")
    parser.add_argument("--log-level", default="info", help="the API's uvicorn log level (info: as shipped)")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    parser.add_argument("--server-log", help="keep a copy of the API's log here")
    args = parser.parse_args()
    if args.nodes < 2 or args.concurrency < 1:
        parser.error("a federation needs at least 2 nodes (a source and the target), and concurrency ≥ 1")
    return args


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)  # the client builds small tensors; more threads would only contend
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedalign-load-") as tmp, contextlib.ExitStack() as stack:
        database = (
            stack.enter_context(scratch_postgres(args.postgres_url, "fedalign_load"))
            if args.db == "postgres"
            else None
        )
        url, pid, log_path = stack.enter_context(api_process(Path(tmp), database, args.log_level))
        result = asyncio.run(benchmark(args, url, pid))
        result["server_log"] = server_log_summary(log_path)
        if args.server_log:
            shutil.copyfile(log_path, args.server_log)
    result["seconds"]["wall"] = time.perf_counter() - wall
    print_markdown(result)
    print(f"\nWall time {result['seconds']['wall']:.1f} s.")
    if args.json:
        write_json(args.json, stamped(result))
    return 0 if result["nothing_lost"]["ok"] and result["requests"]["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
