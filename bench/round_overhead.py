"""Round overhead: one federation in the in-process simulator, and the same federation served.

Run with the project's interpreter::

    .venv/bin/python -m bench.round_overhead --json bench/results/round-overhead.json

For each scale (``--local-steps``: k_G = k_D steps per round; 1 is ``examples/digits-mnistm.toml`` as
shipped) the same config and seed run in two arms, alternately, ``--repeats`` times each:

- simulated: `fedalign.simulate.Simulator` in this process (a subclass that only notes when each action
  starts and ends);
- served, in each of ``--deployments`` (by default both, one after the other in the same run):
  ``redis-postgres``, ``fedalign serve`` on PostgreSQL (a scratch database created on ``--postgres-url``
  and dropped at the end) with Redis as the broker (``--redis-url``, a database number of its own, flushed
  at the start and the end); ``embedded``, SQLite and the filesystem broker, as ``fedalign up`` runs by
  default. Celery workers are started with ``fedalign worker``: by default one
  worker serving every node and the aggregator (``--credentials ... --aggregator``, as ``fedalign up``
  runs them), so that both arms run the same work one piece at a time; ``--workers per-node`` starts one
  worker per node and one for the aggregator instead. The nodes are registered in mode ``celery``.

Every process runs one torch thread (this bench: ``torch.set_num_threads(1)``; workers: ``--threads 1``;
the API: ``OMP_NUM_THREADS=1``), so both arms compute alike. Data loading (the simulator's constructor,
a worker's first step) and round 0 (setup) are left out: the figures cover rounds 1..R.

Figures, served against simulated in the same run:

- wall time per round (median over rounds 1..R, and the total), and their ratio: served / simulated - 1
  is the overhead;
- phase transitions: the time from a phase's last completed step to the next phase's first step being
  claimed by a worker (served, from the database's step and aggregation timestamps), against the same
  gap in the simulator (from the end of the last step to the start of the next one);
- where the served time goes (one worker: its work is serial, so the parts add up to the wall time):
  node compute (the simulator's time for the same steps), the rest of each step on the worker (claim to
  completion: downloads, (de)serialisation, uploads, the node's state file, completion), aggregation jobs
  (written to started-next-phase: message, claim, folding, storing), and the remaining gaps (messages on
  Redis between steps, the worker's idle time);
- the CPU time each process spent, and whether the served run's metrics equal the simulator's exactly;
- one served step taken apart (``--anatomy-rounds``): the same federation with REST nodes driven from this
  process by `workers.client.NodeRunner` (one at a time, like the single worker), each HTTP call, the
  compute and the node's state file timed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import round_trips
from bench.harness import (
    POSTGRES_ADMIN_URL,
    REPO,
    Child,
    child_env,
    cpu_seconds,
    fedalign_command,
    free_port,
    scratch_postgres,
    scratch_redis,
    stamped,
    start_child,
    stop_child,
    wait_ready,
    wait_until,
    write_json,
)
from bench.wan_proxy import latency_proxy
from fedalign import data as datasets
from fedalign.config import FederationConfig, load_config
from fedalign.protocol import Action, Aggregate, Finish, RunStep
from fedalign.simulate import Simulator
from messaging.celery_worker import READY_MESSAGE
from messaging.node_api import TERMINAL_STATUSES as TERMINAL

ADMIN_TOKEN = "round-overhead-bench-admin-token-0123"
REDIS_URL = "redis://127.0.0.1:6379/14"
START_TIMEOUT_S = 120.0
# The line a worker logs once it consumes (its wording is the messaging contract's).
READY = re.compile(re.escape(READY_MESSAGE.encode()))


# ------------------------------------------------------------------------------------------- timelines


@dataclass(frozen=True)
class StepTimes:
    round: int
    phase: str
    node: str
    start: float  # seconds from the arm's round 1 start: simulated: the step starts; served: claimed
    end: float  # simulated: the step's StepDone was handled; served: its completion committed
    created: float | None = None  # served: the step's row was written (its phase opened)


@dataclass(frozen=True)
class AggregationTimes:
    round: int
    phase: str
    model: str
    start: float  # simulated: the fold starts; served: the job's row was written
    end: float  # simulated: AggregateDone handled; served: the job finished (its result was stored)


@dataclass
class Timeline:
    """One arm's run of rounds 1..R, times in seconds from round 1's start."""

    round_starts: dict[int, float]
    end: float
    steps: list[StepTimes]
    aggregations: list[AggregationTimes]
    phase_order: list[tuple[int, str]]
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def round_seconds(self) -> dict[int, float]:
        rounds = sorted(self.round_starts)
        ends = [self.round_starts[r] for r in rounds[1:]] + [self.end]
        return {r: e - self.round_starts[r] for r, e in zip(rounds, ends, strict=True)}

    @property
    def total(self) -> float:
        return self.end - self.round_starts[min(self.round_starts)]

    @property
    def steady(self) -> float:
        """Rounds 2..R: round 1 holds one-off costs (the aggregator's first job connects)."""
        return self.end - self.round_starts[min(self.round_starts) + 1]

    def transitions(self) -> list[dict[str, Any]]:
        """From each phase's last step ending to the next phase's first step starting."""
        by_phase: dict[tuple[int, str], list[StepTimes]] = defaultdict(list)
        for s in self.steps:
            by_phase[s.round, s.phase].append(s)
        aggs: dict[tuple[int, str], list[AggregationTimes]] = defaultdict(list)
        for a in self.aggregations:
            aggs[a.round, a.phase].append(a)
        out = []
        for here, after in zip(self.phase_order, self.phase_order[1:], strict=False):
            last_end = max(s.end for s in by_phase[here])
            nxt = by_phase[after]
            first_start = min(s.start for s in nxt)
            row: dict[str, Any] = {
                "from": f"r{here[0]} {here[1]}",
                "to": f"r{after[0]} {after[1]}",
                "seconds": first_start - last_end,
                "aggregations": len(aggs[here]),
                "aggregation_s": (max(a.end for a in aggs[here]) - last_end) if aggs[here] else 0.0,
            }
            created = [s.created for s in nxt if s.created is not None]
            if created:
                row["open_to_first_claim_s"] = first_start - min(created)
                # Server side: the last completion marked done to the next phase's steps written (the same
                # transaction when its averages fold in it; its commit not included).
                row["completion_to_open_s"] = min(created) - last_end
            out.append(row)
        return out


class TimedSimulator(Simulator):
    """The simulator, noting when each step and aggregation starts and ends (nothing else changes)."""

    def __init__(self, config: FederationConfig) -> None:
        super().__init__(config)
        self.marks: list[tuple[Action, float, float]] = []

    def _carry_out(self, action: Action) -> list[Action]:
        start = time.perf_counter()
        actions = super()._carry_out(action)
        if isinstance(action, RunStep | Aggregate | Finish):
            self.marks.append((action, start, time.perf_counter()))
        return actions


def simulated_arm(config: FederationConfig) -> Timeline:
    with torch.random.fork_rng(devices=[]):
        simulator = TimedSimulator(config)  # loads every node's data: not timed
        cpu = time.process_time()
        result = simulator.run()
        cpu = time.process_time() - cpu
    steps: list[tuple[int, str, str, float, float]] = []
    aggs: list[tuple[int, str, str, float, float]] = []
    end = 0.0
    for action, s, e in simulator.marks:
        if isinstance(action, RunStep):
            steps.append((action.step.round, action.step.phase, action.step.node, s, e))
        elif isinstance(action, Aggregate):
            round_, phase, model = action.key.split("/")
            aggs.append((int(round_[1:]), phase, model, s, e))
        else:
            end = e
    origin = min(s for r, _, _, s, _ in steps if r == 1)
    timeline = Timeline(
        round_starts={},
        end=end - origin,
        steps=[StepTimes(r, p, n, s - origin, e - origin) for r, p, n, s, e in steps if r >= 1],
        aggregations=[AggregationTimes(r, p, m, s - origin, e - origin) for r, p, m, s, e in aggs if r >= 1],
        phase_order=[],
        metrics={r.round: r.to_json() for r in result.rounds if r.round >= 1 and (r.metrics or r.nodes)},
        cpu_s={"bench process (simulator)": cpu},
    )
    return finish_timeline(timeline)


def finish_timeline(t: Timeline) -> Timeline:
    for s in sorted(t.steps, key=lambda s: s.start):
        t.round_starts.setdefault(s.round, s.start)
        if (s.round, s.phase) not in t.phase_order:
            t.phase_order.append((s.round, s.phase))
    if t.steps and min(s.created or s.start for s in t.steps if s.round == min(t.round_starts)) < 0:
        raise AssertionError("a round 1 step starts before the origin")
    return t


# ---------------------------------------------------------------------------------------- served arm


@dataclass
class Server:
    url: str
    database_url: str
    data_dir: Path
    env: dict[str, str]
    api: Child
    log_dir: Path


def federation_body(config: FederationConfig) -> dict[str, Any]:
    body = config.model_dump(mode="json")
    body.pop("nodes")
    return body


def admin_client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)


def register(admin: httpx.Client, config: FederationConfig, mode: str) -> tuple[str, list[dict[str, str]]]:
    """The federation created and its nodes registered in ``mode``; its id and each node's id and token."""
    created = admin.post("/api/v1/federations", json=federation_body(config))
    created.raise_for_status()
    federation_id = created.json()["id"]
    join = {"Authorization": f"Bearer {created.json()['join_token']}"}
    nodes = []
    for n in config.nodes:
        registered = admin.post(
            f"/api/v1/federations/{federation_id}/nodes",
            json={"name": n.name, "role": n.role, "dataset": n.dataset, "mode": mode},
            headers=join,
        )
        registered.raise_for_status()
        body = registered.json()
        nodes.append({"node_id": body["id"], "name": n.name, "token": body["token"]})
    return federation_id, nodes


def status_of(admin: httpx.Client, federation_id: str) -> str:
    return str(admin.get(f"/api/v1/federations/{federation_id}").json()["status"])


def served_arm(
    server: Server,
    config: FederationConfig,
    workers: str,
    tag: str,
    timeout_s: float,
    api_url: str | None = None,
    worker_env: dict[str, str] | None = None,
) -> Timeline:
    """``api_url``: where the workers reach the API (the WAN proxy); default: the API itself.
    ``worker_env``: the workers' settings beyond the deployment's."""
    with admin_client(server) as admin:
        federation_id, nodes = register(admin, config, "celery")
        workers_up = start_workers(server, nodes, workers, tag, api_url or server.url, worker_env or {})
        try:
            wait_until(
                lambda: all(READY.search(w.log.read_bytes()) for w in workers_up),
                "the workers to be ready",
                START_TIMEOUT_S,
                children=[server.api, *workers_up],
            )
            pids = {"API": server.api.process.pid} | {w.name: w.process.pid for w in workers_up}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            admin.post(f"/api/v1/federations/{federation_id}/start").raise_for_status()
            wait_until(
                lambda: status_of(admin, federation_id) in TERMINAL,
                f"federation {federation_id} to end",
                timeout_s,
                # Seldom: each poll is a request the API serves beside the workers' (the times come from
                # the database, so polling more often would only load the server being measured).
                poll_s=2.0,
                children=[server.api, *workers_up],
            )
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            if (status := status_of(admin, federation_id)) != "finished":
                raise RuntimeError(f"the served federation ended {status}")
        finally:
            for w in workers_up:
                stop_child(w)
    timeline = served_timeline(server.database_url, federation_id)
    timeline.cpu_s = cpu
    return timeline


# ------------------------------------------------------------------------------- anatomy of one step


class TimedHttp(httpx.Client):
    """An HTTP client that times every request, body read included, by what it is for."""

    def __init__(self, times: dict[str, list[float]]) -> None:
        super().__init__(timeout=60.0)
        self.times = times

    def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        start = time.perf_counter()
        response = super().request(method, url, **kwargs)
        path = httpx.URL(str(url)).path
        if path.endswith("/task"):
            kind = "claim (GET /task)" if response.status_code == 200 else "idle poll"
        elif "/artifacts/" in path:
            kind = "download"
        elif "/uploads/" in path:
            kind = "upload"
        elif path.endswith("/complete"):
            kind = "complete"
        elif path.endswith("/submit"):
            kind = "submit (uploads and completion)"
        else:
            kind = "other"
        self.times[kind].append(time.perf_counter() - start)
        return response


def timed_runner(client: Any, times: dict[str, list[float]], state_dir: Path) -> Any:
    """`workers.client.NodeRunner` with its compute and its state file timed (nothing else changes)."""
    from workers.client import NodeRunner
    from workers.settings import WorkerSettings
    from workers.state import NodeStateFile

    class TimedStateFile(NodeStateFile):
        def step_id(self) -> int | None:
            start = time.perf_counter()
            try:
                return super().step_id()
            finally:
                times["state file: read header"].append(time.perf_counter() - start)

        def save(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().save(*args, **kwargs)
            label = "state file: save (fsync)" if self.durable else "state file: save"
            times[label].append(time.perf_counter() - start)

    class TimedRunner(NodeRunner):
        def _new_runtime(self) -> Any:
            runtime = super()._new_runtime()
            inner = runtime.run

            def run(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    times["compute (NodeRuntime.run)"].append(time.perf_counter() - start)

            runtime.run = run
            return runtime

        def run(self, task: Any) -> None:
            start = time.perf_counter()
            super().run(task)
            times["step: claimed to completed"].append(time.perf_counter() - start)

    runner = TimedRunner(client, None, state_dir=state_dir)
    # FEDALIGN_NODE_STATE_FSYNC=1 measures the file fsynced after every step, as a worker so set writes it.
    durable = WorkerSettings().node_state_fsync
    runner.state = TimedStateFile(
        state_dir, runner.federation.federation_id, runner.federation.node, durable=durable
    )
    return runner


def anatomy(server: Server, config: FederationConfig, timeout_s: float) -> dict[str, Any]:
    """One served step taken apart: the same federation with REST nodes driven from this process (one at
    a time, like the single worker), every HTTP call, the compute and the state file timed."""
    from workers.client import NodeClient

    times: dict[str, list[float]] = defaultdict(list)
    with admin_client(server) as admin:
        federation_id, nodes = register(admin, config, "rest")
        with aggregator_running(server, "aggregator-anatomy"):
            admin.post(f"/api/v1/federations/{federation_id}/start").raise_for_status()
            http = TimedHttp(times)
            runners = [
                timed_runner(NodeClient(server.url, n["token"], http=http), times, server.log_dir / "anatomy")
                for n in nodes
            ]
            times.clear()  # fetching the federation and loading data are not a step's
            deadline = time.monotonic() + timeout_s
            while not all(r.finished for r in runners):
                ran = [r.step_once() for r in runners if not r.finished]
                if not any(ran):
                    time.sleep(0.02)  # an aggregation is running: do not load the API with polls
                if time.monotonic() > deadline:
                    raise RuntimeError("the anatomy federation did not finish in time")
            http.close()
            if (status := status_of(admin, federation_id)) != "finished":
                raise RuntimeError(f"the anatomy federation ended {status}")
    steps = len(times["step: claimed to completed"])
    return {
        "steps": steps,
        "per_kind": {
            kind: {
                "calls": len(v),
                "per_step_ms": 1000 * sum(v) / steps,
                "median_ms": 1000 * statistics.median(v),
            }
            for kind, v in sorted(times.items())
        },
    }


def trips(server: Server, api_url: str, config: FederationConfig, timeout_s: float) -> dict[str, Any]:
    """Round trips per phase for a node through ``api_url`` (the WAN proxy): REST nodes driven from this
    process (`bench.round_trips`), on the hot path and with every request separate, one federation each;
    the aggregator worker averages what the API does not."""
    out: dict[str, Any] = {}
    with aggregator_running(server, "aggregator-trips"):
        for mode, hot_path in (("hot path", True), ("separate requests", False)):
            with admin_client(server) as admin:
                federation_id, nodes = register(admin, config, "rest")
                admin.post(f"/api/v1/federations/{federation_id}/start").raise_for_status()
                began = time.perf_counter()
                tokens = {n["name"]: n["token"] for n in nodes}
                counts = round_trips.drive(api_url, tokens, hot_path, timeout_s)
                wall = time.perf_counter() - began
                if (status := status_of(admin, federation_id)) != "finished":
                    raise RuntimeError(f"the round-trip federation ({mode}) ended {status}")
            out[mode] = {"wall_s": wall, "rounds": config.rounds, "phases": round_trips.summary(counts)}
    return out


@contextlib.contextmanager
def aggregator_running(server: Server, name: str) -> Iterator[Child]:
    """An aggregator worker (one thread) for the averages the API does not run, ready, stopped at the end."""
    aggregator = start_child(
        name,
        fedalign_command("worker", "--aggregator", "--threads", "1", "--loglevel", "INFO"),
        server.env,
        server.log_dir,
        cwd=REPO,
    )
    try:
        wait_until(
            lambda: bool(READY.search(aggregator.log.read_bytes())),
            "the aggregator",
            START_TIMEOUT_S,
            children=[aggregator],
        )
        yield aggregator
    finally:
        stop_child(aggregator)


def start_workers(
    server: Server,
    nodes: list[dict[str, str]],
    workers: str,
    tag: str,
    api_url: str,
    worker_env: dict[str, str] | None = None,
) -> list[Child]:
    threads = ["--threads", "1", "--device", "cpu", "--loglevel", "INFO"]
    server_env = {**server.env, **(worker_env or {})}
    if workers == "single":
        credentials = server.data_dir / f"credentials-{tag}.json"
        credentials.write_text(json.dumps({"api": api_url, "nodes": nodes}))
        credentials.chmod(0o600)
        argv = fedalign_command("worker", "--credentials", str(credentials), "--aggregator", *threads)
        return [start_child(f"worker-{tag}", argv, server_env, server.log_dir, cwd=REPO)]
    argv = fedalign_command("worker", "--aggregator", *threads)
    out = [start_child(f"aggregator-{tag}", argv, server_env, server.log_dir, cwd=REPO)]
    for n in nodes:
        data_dir = server.log_dir / f"node-{tag}-{n['name']}"
        data_dir.mkdir()
        (data_dir / "datasets").symlink_to(datasets.default_cache_dir())
        env = {**server_env, "FEDALIGN_DATA_DIR": str(data_dir), "FEDALIGN_NODE_TOKEN": n["token"]}
        argv = fedalign_command("worker", "--node", n["name"], "--api", api_url, *threads)
        out.append(start_child(f"{n['name']}-{tag}", argv, env, server.log_dir, cwd=REPO))
    return out


def served_timeline(database_url: str, federation_id: str) -> Timeline:
    """Rounds 1..R from the server's own records: step and aggregation rows, and the metrics it stored."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from backend.models import Aggregation, Federation, Metric, Node, Step

    # Only the columns read here, selected by name: the tables may have grown columns since.
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            finished_at = session.scalar(select(Federation.finished_at).where(Federation.id == federation_id))
            assert finished_at is not None
            query = select(Node.id, Node.name).where(Node.federation_id == federation_id)
            names = {node_id: name for node_id, name in session.execute(query)}
            steps = session.execute(
                select(
                    Step.round,
                    Step.phase,
                    Step.node_id,
                    Step.status,
                    Step.created_at,
                    Step.claimed_at,
                    Step.done_at,
                ).where(Step.federation_id == federation_id)
            ).all()
            jobs = session.execute(
                select(
                    Aggregation.round,
                    Aggregation.phase,
                    Aggregation.model,
                    Aggregation.created_at,
                    Aggregation.done_at,
                ).where(Aggregation.federation_id == federation_id)
            ).all()
            metric_rows = session.execute(
                select(Metric.round, Metric.node, Metric.name, Metric.value).where(
                    Metric.federation_id == federation_id
                )
            ).all()
    finally:
        engine.dispose()
    done = [s for s in steps if s.round >= 1 and s.status == "done"]
    if len(done) != len([s for s in steps if s.round >= 1]):
        raise RuntimeError("the served run has steps that did not complete (retried or cancelled)")
    origin = min(s.created_at for s in done if s.round == 1)

    def at(t: dt.datetime) -> float:
        return (t - origin).total_seconds()

    metrics: dict[int, dict[str, Any]] = {}
    for m in metric_rows:
        record = metrics.setdefault(m.round, {"round": m.round, "metrics": {}, "nodes": {}})
        if m.node is None:
            record["metrics"][m.name] = m.value
        else:
            record["nodes"].setdefault(m.node, {})[m.name] = m.value
    timeline = Timeline(
        round_starts={},
        end=at(finished_at),
        steps=[
            StepTimes(s.round, s.phase, names[s.node_id], at(s.claimed_at), at(s.done_at), at(s.created_at))
            for s in done
            if s.claimed_at is not None and s.done_at is not None
        ],
        aggregations=[
            AggregationTimes(j.round, j.phase, j.model, at(j.created_at), at(j.done_at))
            for j in jobs
            if j.round >= 1 and j.done_at is not None
        ],
        phase_order=[],
        metrics={r: metrics[r] for r in sorted(metrics) if r >= 1},
    )
    # The round starts when its first phase opens (its steps are written), not when a worker claims one.
    finish_timeline(timeline)
    for s in timeline.steps:
        if s.created is not None and s.created < timeline.round_starts[s.round]:
            timeline.round_starts[s.round] = s.created
    return timeline


# ------------------------------------------------------------------------------------------- figures


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def breakdown(served: Timeline, simulated: Timeline, workers: str) -> dict[str, float]:
    """Where the served run's time went, next to the simulator's (seconds over rounds 1..R)."""
    compute = {(s.round, s.phase, s.node): s.end - s.start for s in simulated.steps}
    sim_agg = sum(a.end - a.start for a in simulated.aggregations)
    sim_steps = sum(compute.values())
    served_steps = sum(s.end - s.start for s in served.steps)
    # A job's span ends when its result is stored; spans of one phase's jobs overlap when two workers run
    # them, so the phase's share is its first job written to its last job stored.
    phase_jobs: dict[tuple[int, str], list[AggregationTimes]] = defaultdict(list)
    for a in served.aggregations:
        phase_jobs[a.round, a.phase].append(a)
    served_agg = sum(max(a.end for a in js) - min(a.start for a in js) for js in phase_jobs.values())
    out = {
        "simulated_total_s": simulated.total,
        "simulated_steps_s": sim_steps,
        "simulated_aggregation_s": sim_agg,
        "simulated_other_s": simulated.total - sim_steps - sim_agg,
        "served_total_s": served.total,
        "served_node_compute_s": sim_steps,
        "served_step_io_s": served_steps - sim_steps,
        "served_aggregation_jobs_s": served_agg,
    }
    if workers == "single":
        # One worker does everything in turn, so what is left is time between its tasks: a message on
        # Redis, the worker picking it up, the phase opening.
        out["served_gaps_s"] = served.total - served_steps - served_agg
    return out


def extra_arm(runs: list[dict[str, Timeline]], arm: str) -> dict[str, Any] | None:
    """A served arm beside the main one (the WAN, the synchronous workers) against the simulator."""
    if arm not in runs[0]:
        return None
    return {
        "total_s": [r[arm].total for r in runs],
        "round_s": spread([v for r in runs for v in r[arm].round_seconds().values()]),
        "rounds_2_to_R": [r[arm].steady / r["simulated"].steady for r in runs],
        "metrics_equal": [r[arm].metrics == r["simulated"].metrics for r in runs],
    }


def summarise(scale: int, runs: list[dict[str, Timeline]], workers: str) -> dict[str, Any]:
    per_arm: dict[str, Any] = {}
    for arm in ("simulated", "served"):
        totals = [r[arm].total for r in runs]
        rounds = [v for r in runs for v in r[arm].round_seconds().values()]
        transitions = [t["seconds"] for r in runs for t in r[arm].transitions()]
        per_arm[arm] = {
            "total_s": totals,
            "round_s": spread(rounds),
            "transition_s": spread(transitions),
            "cpu_s": [r[arm].cpu_s for r in runs],
        }
    ratios = [r["served"].total / r["simulated"].total for r in runs]
    steady = [r["served"].steady / r["simulated"].steady for r in runs]
    round_ratios = [
        statistics.median(
            r["served"].round_seconds()[n] / r["simulated"].round_seconds()[n]
            for n in r["served"].round_seconds()
        )
        for r in runs
    ]
    served_transitions = [t for r in runs for t in r["served"].transitions()]
    after_aggregation = [t for t in served_transitions if t["aggregations"]]
    without = [t for t in served_transitions if not t["aggregations"]]
    steps_served = [s.end - s.start for r in runs for s in r["served"].steps]
    steps_sim = [s.end - s.start for r in runs for s in r["simulated"].steps]
    return {
        "local_steps": scale,
        "arms": per_arm,
        "wan": extra_arm(runs, "served-wan"),
        "sync": extra_arm(runs, "served-sync"),
        "served_over_simulated": {
            "rounds_1_to_R": ratios,
            "rounds_2_to_R": steady,
            "median_round_ratio": round_ratios,
        },
        "overhead": statistics.median(steady) - 1.0,
        "transitions": {
            "served_after_aggregation_s": spread([t["seconds"] for t in after_aggregation]),
            "served_aggregation_part_s": spread([t["aggregation_s"] for t in after_aggregation]),
            "served_without_aggregation_s": spread([t["seconds"] for t in without]) if without else None,
            "served_completion_to_open_after_aggregation_s": spread(
                [t["completion_to_open_s"] for t in after_aggregation if "completion_to_open_s" in t]
            ),
            "served_phase_open_to_first_claim_s": spread(
                [t["open_to_first_claim_s"] for t in served_transitions]
            ),
            "simulated_s": spread([t["seconds"] for r in runs for t in r["simulated"].transitions()]),
        },
        "step_s": {"served_claim_to_complete": spread(steps_served), "simulated": spread(steps_sim)},
        "breakdown": [breakdown(r["served"], r["simulated"], workers) for r in runs],
        "metrics_equal": [r["served"].metrics == r["simulated"].metrics for r in runs],
        "round_seconds": [{arm: list(r[arm].round_seconds().values()) for arm in r} for r in runs],
        "served_transitions": [r["served"].transitions() for r in runs],
        "rounds_per_repeat": [len(r["served"].round_starts) for r in runs],
    }


def print_markdown(result: dict[str, Any], name: str, scales: list[dict[str, Any]]) -> None:
    c = result["config"]
    print(
        f"\n## Round overhead: {c['config']}, {c['rounds']} rounds, seed {c['seed']}, "
        f"{c['deployments'][name]}, workers: {c['workers']}, {c['repeats']} repeats per arm, "
        "one torch thread everywhere\n"
    )
    print(
        "| k | simulated s/round | served s/round | served / simulated, rounds 2..R | rounds 1..R | "
        "overhead | phase transition, served: after aggregation / without | last completion to next phase "
        "written, after aggregation (server side) | simulator | metrics equal |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in scales:
        a, t, r = s["arms"], s["transitions"], s["served_over_simulated"]
        without = t["served_without_aggregation_s"]
        without_ms = "–" if without is None else f"{1000 * without['median']:.0f}"
        print(
            f"| {s['local_steps']} | {a['simulated']['round_s']['median']:.3f} | "
            f"{a['served']['round_s']['median']:.3f} | {', '.join(f'{x:.2f}' for x in r['rounds_2_to_R'])} | "
            f"{', '.join(f'{x:.2f}' for x in r['rounds_1_to_R'])} | {100 * s['overhead']:+.0f}% | "
            f"{1000 * t['served_after_aggregation_s']['median']:.0f} / {without_ms} ms | "
            f"{1000 * t['served_completion_to_open_after_aggregation_s']['median']:.1f} ms | "
            f"{1000 * t['simulated_s']['median']:.1f} ms | {all(s['metrics_equal'])} |"
        )
    print("\nWhere the time goes (seconds over rounds 1..R, median over repeats):\n")
    keys = list(scales[0]["breakdown"][0])
    print("| part | " + " | ".join(f"k={s['local_steps']}" for s in scales) + " |")
    print("|---|" + "---:|" * len(scales))
    for key in keys:
        values = [statistics.median(b[key] for b in s["breakdown"] if key in b) for s in scales]
        print(f"| {key} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


def print_trips(trips_: dict[str, Any]) -> None:
    print(
        f"\nRound trips per phase for a node, through a {trips_['wan_ms']:g} ms (each way) proxy, REST nodes "
        f"({trips_['deployment']}), median per step over rounds 1..R:\n"
    )
    print("| phase | hot path: round trips (waiting polls) | separate requests: round trips (idle polls) |")
    print("|---|---:|---:|")
    hot, separate = trips_["hot path"]["phases"], trips_["separate requests"]["phases"]
    for phase in hot:
        h, s = hot[phase], separate.get(phase, {})
        nan = float("nan")
        print(
            f"| {phase} | {h['round_trips_median']:g} ({h['waiting_polls_median']:g}) | "
            f"{s.get('round_trips_median', nan):g} ({s.get('waiting_polls_median', nan):g}) |"
        )
    for mode in ("hot path", "separate requests"):
        t = trips_[mode]
        print(f"{mode}: {t['rounds']} rounds in {t['wall_s']:.2f} s")
        for phase, v in t["phases"].items():
            kinds = ", ".join(f"{k} {n:.2f}" for k, n in v["by_kind_mean"].items())
            print(f"  {phase}: {kinds}")


def print_anatomy(anatomy_: dict[str, Any]) -> None:
    print(f"\nOne served step taken apart ({anatomy_['steps']} steps, REST nodes driven from the bench):\n")
    print("| part | calls | per step, ms | median per call, ms |")
    print("|---|---:|---:|---:|")
    for kind, v in anatomy_["per_kind"].items():
        print(f"| {kind} | {v['calls']} | {v['per_step_ms']:.1f} | {v['median_ms']:.1f} |")


# ------------------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "digits-mnistm.toml")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--local-steps",
        type=int,
        nargs="+",
        default=[1, 10],
        help="scales to run: k_G = k_D optimiser steps per round (1: the example as shipped)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm per scale, alternated")
    parser.add_argument("--workers", choices=["single", "per-node"], default="single")
    parser.add_argument(
        "--deployments",
        nargs="+",
        choices=list(DEPLOYMENTS),
        default=list(DEPLOYMENTS),
        help="served deployments, each against the simulator in this run (the step anatomy: the first)",
    )
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database number the bench may flush")
    parser.add_argument(
        "--anatomy-rounds", type=int, default=5, help="rounds of the step-anatomy run with k=1 (0: none)"
    )
    parser.add_argument(
        "--wan-ms",
        type=float,
        default=25.0,
        help="one-way latency of the emulated WAN (a proxy in front of the API) for a third arm, served "
        "through it, and for the round-trip count; 0: neither",
    )
    parser.add_argument(
        "--trip-rounds", type=int, default=5, help="rounds of each round-trip-count federation (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one served run may take")
    parser.add_argument(
        "--sync-arm",
        action="store_true",
        help="one more served arm whose workers send each submission before the next step "
        "(FEDALIGN_SUBMIT_IN_BACKGROUND=0), side by side with the default",
    )
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    return parser.parse_args()


def scaled(config: FederationConfig, rounds: int, k: int) -> FederationConfig:
    raw = config.model_dump()
    raw["rounds"] = rounds
    raw["hyperparameters"] |= {"local_steps": k, "disc_steps": k}
    return FederationConfig.model_validate(raw)


# Served arms whose workers run with settings of their own.
ARM_ENV = {"served-sync": {"FEDALIGN_SUBMIT_IN_BACKGROUND": "0"}}

# The deployments a run compares, each served against the simulator in the same run.
DEPLOYMENTS = {
    "redis-postgres": "PostgreSQL (a scratch database) + Redis",
    "embedded": "SQLite + the filesystem broker (fedalign up's default)",
}


@contextlib.contextmanager
def deployment(name: str, root: Path, args: argparse.Namespace) -> Iterator[Server]:
    """The API of deployment ``name`` on a data directory under ``root``, ready; stopped at the end."""
    with contextlib.ExitStack() as stack:
        data_dir = root / name / "server"
        data_dir.mkdir(parents=True)
        (data_dir / "datasets").symlink_to(datasets.default_cache_dir())
        if name == "redis-postgres":
            database_url = stack.enter_context(scratch_postgres(args.postgres_url, "fedalign_round"))
            broker = stack.enter_context(scratch_redis(args.redis_url))
        else:
            database_url = f"sqlite:///{data_dir / 'fedalign.db'}"
            # An absolute folder: per-node workers have data directories of their own.
            broker = f"filesystem://{root / name / 'broker'}"
        env = child_env(
            FEDALIGN_DATA_DIR=str(data_dir),
            FEDALIGN_DATABASE_URL=database_url,
            FEDALIGN_BROKER_URL=broker,
            FEDALIGN_QUEUE_PREFIX=f"bench{uuid.uuid4().hex[:8]}.",
            FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
        )
        port = free_port()
        api_argv = fedalign_command("serve", "--host", "127.0.0.1", "--port", str(port))
        api = start_child(f"api-{name}", api_argv, env, root / name, cwd=REPO)
        stack.callback(stop_child, api)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, [api], START_TIMEOUT_S)
        yield Server(url, database_url, data_dir, env, api, root / name)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    for node in base.nodes:
        datasets.load(node.dataset)  # built into the cache once, before anything is timed
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    by_deployment: dict[str, list[dict[str, Any]]] = {}
    anatomy_result = None
    trips_result = None
    with tempfile.TemporaryDirectory(prefix="fedalign-round-") as tmp:
        for name in args.deployments:
            with contextlib.ExitStack() as stack:
                server = stack.enter_context(deployment(name, Path(tmp), args))
                proxy = stack.enter_context(latency_proxy(server.url, args.wan_ms)) if args.wan_ms else None
                arms = ("simulated", "served")
                arms += ("served-wan",) if proxy else ()
                arms += ("served-sync",) if args.sync_arm else ()
                results: list[dict[str, Any]] = []
                for k in args.local_steps:
                    config = scaled(base, args.rounds, k)
                    runs: list[dict[str, Timeline]] = []
                    for repeat in range(args.repeats):
                        run: dict[str, Timeline] = {}
                        order = arms if repeat % 2 == 0 else arms[::-1]
                        for arm in order:
                            t0 = time.perf_counter()
                            if arm == "simulated":
                                run[arm] = simulated_arm(config)
                            else:
                                via = proxy.url if arm == "served-wan" and proxy else None
                                tag = (
                                    f"k{k}r{repeat}{'w' if via else ''}{'s' if arm == 'served-sync' else ''}"
                                )
                                run[arm] = served_arm(
                                    server, config, args.workers, tag, args.timeout, via, ARM_ENV.get(arm)
                                )
                            print(
                                f"{name} k={k} repeat {repeat} {arm}: rounds 1..{config.rounds} in "
                                f"{run[arm].total:.2f} s ({time.perf_counter() - t0:.1f} s with setup)",
                                flush=True,
                            )
                        runs.append(run)
                    results.append(summarise(k, runs, args.workers))
                by_deployment[name] = results
                if args.anatomy_rounds and anatomy_result is None:
                    anatomy_result = anatomy(server, scaled(base, args.anatomy_rounds, 1), args.timeout)
                if proxy and args.trip_rounds and trips_result is None:
                    config = scaled(base, args.trip_rounds, 1)
                    trips_result = {"wan_ms": args.wan_ms, "deployment": name}
                    trips_result |= trips(server, proxy.url, config, args.timeout)
    result = {
        "config": {
            "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
            "rounds": args.rounds,
            "seed": base.seed,
            "local_steps": args.local_steps,
            "repeats": args.repeats,
            "workers": args.workers,
            "deployments": {name: DEPLOYMENTS[name] for name in args.deployments},
            "anatomy_deployment": args.deployments[0] if args.anatomy_rounds else None,
            "wan_ms_each_way": args.wan_ms,
            "torch_threads": 1,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(),
        },
        "wall_s": time.perf_counter() - started,
        "deployments": {name: {"scales": scales} for name, scales in by_deployment.items()},
        "anatomy": anatomy_result,
        "round_trips": trips_result,
    }
    for name, scales in by_deployment.items():
        print_markdown(result, name, scales)
    print("\nserved / simulated wall time, rounds 2..R (each run), side by side:")
    for name, scales in by_deployment.items():
        for s in scales:
            ratios = ", ".join(f"{x:.2f}" for x in s["served_over_simulated"]["rounds_2_to_R"])
            print(f"  {name:15s} k={s['local_steps']:<3d} {ratios}")
            if s["wan"]:
                wan = ", ".join(f"{x:.2f}" for x in s["wan"]["rounds_2_to_R"])
                label = f"{name} + WAN"
                print(f"  {label:15s} k={s['local_steps']:<3d} {wan}  ({args.wan_ms:g} ms each way)")
            if s["sync"]:
                sync = ", ".join(f"{x:.2f}" for x in s["sync"]["rounds_2_to_R"])
                label = f"{name} sync"
                print(
                    f"  {label:15s} k={s['local_steps']:<3d} {sync}  (each submission before the next step)"
                )
    if trips_result:
        print_trips(trips_result)
    if anatomy_result:
        print_anatomy(anatomy_result)
    if args.json:
        write_json(args.json, stamped(result))
    every = [s for scales in by_deployment.values() for s in scales]
    equal = [s["metrics_equal"] + (s["sync"] or {}).get("metrics_equal", []) for s in every]
    return 0 if all(all(e) for e in equal) else 1


if __name__ == "__main__":
    sys.exit(main())
