"""Recovery: how long a federation stalls when its worker is SIGKILLed mid-step.

Run with the project's interpreter::

    .venv/bin/python -m bench.recovery --kills 10 --json bench/results/recovery.json

The embedded default as a user runs it: ``fedalign up --start`` (SQLite, the filesystem broker, one worker
serving the demo federation's four nodes and its aggregations, the supervisor that starts a dead worker
again) on a fresh data directory, with every setting at its default (the step lease, the sweep's period).
The demo federation is the recipe of ``examples/digits-mnistm.toml`` (``digits_cnn``, a small model).

``--kills`` times, after a random pause (uniform in ``--pause-s``), the bench waits for a step to be claimed
(the worker is mid-step: downloading, training, uploading or completing) and SIGKILLs the worker. The
supervisor starts a new one at once. The **stall** is the time from the kill to the killed step being
claimed again (its ``attempts`` grows; the step's ``claimed_at`` from the API, against the kill's wall
clock on the same machine): the time the federation did nothing. It is the rest of the dead worker's lease
(renewed by its heartbeats until it died), the sweep's period, the new worker's start, and the message on
the broker. The bench prints the distribution (median, p90, max) against the goal of 30 s.

Then the federation runs to its end and its metrics, every round's, are compared with the in-process
simulator's for the same config (one torch thread, as the worker runs): a re-run step must give exactly
what an undisturbed run gives.

With ``--kill-in aggregations`` the kills land on server-side averages instead: the server runs with
``FEDALIGN_INLINE_AGGREGATION_MAX_BYTES=0``, so every average (the demo's are small, and are otherwise folded
in the API's completing transaction) is a job on the aggregator queue, which the embedded worker also
serves; the bench waits for a job to be running and SIGKILLs the worker. The stall is then the time from the
kill to that average being stored by the new worker (its lease, ``FEDALIGN_AGGREGATION_LEASE_S``, renewed
every third of it like a step's, runs out; the sweep dispatches the job again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch

from bench.harness import (
    Child,
    child_env,
    fedalign_command,
    free_port,
    stamped,
    start_child,
    stop_child,
    wait_ready,
    wait_until,
    write_json,
)
from fedalign.config import FederationConfig
from fedalign.simulate import simulate

GOAL_S = 30.0
START_TIMEOUT_S = 300.0  # a fresh data directory builds nothing, but the worker loads four domains
RUN_TIMEOUT_S = 1800.0


@dataclass
class Kill:
    step_id: int
    round: int
    phase: str
    node: str
    kind: str
    attempts_before: int
    killed_at: float  # wall clock, seconds since the epoch
    lease_left_s: float  # how long the dead worker's lease (renewed by its heartbeats) still ran
    reclaimed_at: float | None = None
    next_claim_at: float | None = None  # when the killed step had completed: the next step's claim

    @property
    def stall_s(self) -> float | None:
        return None if self.reclaimed_at is None else self.reclaimed_at - self.killed_at

    @property
    def restart_stall_s(self) -> float | None:
        return None if self.next_claim_at is None else self.next_claim_at - self.killed_at


@dataclass
class AggregationKill:
    key: str
    round: int
    attempts_before: int
    killed_at: float  # wall clock, seconds since the epoch
    done_at: float | None = None  # when the average was stored

    @property
    def stall_s(self) -> float | None:
        """Kill to stored; None when it was stored before the kill (between the read and the kill)."""
        if self.done_at is None or self.done_at <= self.killed_at:
            return None
        return self.done_at - self.killed_at


class Embedded:
    """``fedalign up --start`` on a fresh data directory, and an admin client for its API."""

    def __init__(self, root: Path, rounds: int, settings: dict[str, str] | None = None) -> None:
        self.root = root
        self.rounds_run = rounds
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = fedalign_command(
            "up",
            "--start",
            "--port",
            str(self.port),
            "--demo-rounds",
            str(rounds),
            "--data-dir",
            str(self.data_dir),
        )
        self.up: Child = start_child("up", argv, child_env(**(settings or {})), root)
        wait_ready(self.url, [self.up], START_TIMEOUT_S)
        wait_until(
            lambda: (self.data_dir / "demo-nodes.json").exists(),
            "the demo federation",
            60,
            children=[self.up],
        )
        token = (self.data_dir / "admin_token").read_text(encoding="utf-8").strip()
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.federation_id = json.loads((self.data_dir / "demo-nodes.json").read_text())["federation_id"]

    def worker_pid(self) -> int | None:
        """The supervisor's worker child (``fedalign worker --credentials ...``), if it is running."""
        pid = self.up.process.pid
        children: list[str] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += (task / "children").read_text().split()
        for child in children:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"worker" in argv:
                return int(child)
        return None

    def federation(self) -> dict[str, Any]:
        response = self.admin.get(f"/api/v1/federations/{self.federation_id}")
        response.raise_for_status()
        return dict(response.json())

    def steps(self, round_: int) -> list[dict[str, Any]]:
        response = self.admin.get(f"/api/v1/federations/{self.federation_id}/rounds/{round_}")
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [{**s, "phase": p["name"]} for p in response.json()["phases"] for s in p["steps"]]

    def aggregations(self) -> list[dict[str, Any]]:
        response = self.admin.get(f"/api/v1/federations/{self.federation_id}/aggregations")
        response.raise_for_status()
        return list(response.json()["items"])

    def step(self, round_: int, step_id: int) -> dict[str, Any]:
        return next(s for s in self.steps(round_) if s["id"] == step_id)

    def rounds(self) -> dict[int, dict[str, Any]]:
        """Every round's metrics as the API shows them, in the simulator's `RoundRecord.to_json` shape."""
        response = self.admin.get(f"/api/v1/federations/{self.federation_id}/metrics")
        response.raise_for_status()
        rounds: dict[int, dict[str, Any]] = {}
        for series in response.json()["series"]:
            for point in series["points"]:
                record = rounds.setdefault(
                    point["round"], {"round": point["round"], "metrics": {}, "nodes": {}}
                )
                target = (
                    record["metrics"]
                    if series["node"] is None
                    else record["nodes"].setdefault(series["node"], {})
                )
                target[series["name"]] = point["value"]
        return rounds

    def config(self) -> FederationConfig:
        from cli.demo import DEMO_NODES, demo_settings

        nodes = [{"name": n, "role": r, "dataset": d} for n, r, d in DEMO_NODES]
        return FederationConfig.model_validate({**demo_settings(self.rounds_run), "nodes": nodes})

    def close(self) -> None:
        self.admin.close()
        stop_child(self.up)


def epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def kill_mid_step(embedded: Embedded, rng: random.Random) -> Kill | None:
    """SIGKILL the worker while it holds a claimed step; the kill, or None when the federation ended."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        embedded.up.check_alive()
        federation = embedded.federation()
        if federation["status"] not in ("running", "stalled"):
            return None
        claimed = [s for s in embedded.steps(federation["round"] or 0) if s["status"] == "claimed"]
        pid = embedded.worker_pid()
        if claimed and pid is not None:
            step = rng.choice(claimed)
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            lease_left = epoch(step["lease_expires_at"]) - killed_at
            return Kill(
                step["id"],
                federation["round"],
                step["phase"],
                step["node"],
                step["kind"],
                step["attempts"],
                killed_at,
                lease_left,
            )
        time.sleep(0.01)
    raise TimeoutError("no step was claimed for 120 s")


def kill_mid_aggregation(embedded: Embedded) -> AggregationKill | None:
    """SIGKILL the worker while it runs a server-side average; the kill, or None when the run ended."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        embedded.up.check_alive()
        jobs = embedded.aggregations()
        running = [j for j in jobs if j["status"] == "running" and j["by"] == "server"]
        pid = embedded.worker_pid()
        if running and pid is not None:
            os.kill(pid, signal.SIGKILL)
            job = running[0]
            return AggregationKill(job["key"], job["round"], job["attempts"], time.time())
        if embedded.federation()["status"] not in ("running", "stalled"):
            return None
    raise TimeoutError("no aggregation was running for 120 s")


def wait_stored(embedded: Embedded, kill: AggregationKill) -> None:
    """Until the killed average is stored (by the new worker, or by the old one just before it died)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        embedded.up.check_alive()
        job = next(j for j in embedded.aggregations() if j["key"] == kill.key)
        if job["status"] == "done":
            kill.done_at = epoch(job["done_at"])
            return
        time.sleep(0.05)
    raise TimeoutError(f"the average {kill.key} was not stored within 900 s of the kill")


def wait_reclaimed(embedded: Embedded, kill: Kill) -> None:
    """Until the killed step is claimed again (or done: the kill came after its completion was sent)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        embedded.up.check_alive()
        step = embedded.step(kill.round, kill.step_id)
        if step["attempts"] > kill.attempts_before and step["claimed_at"]:
            kill.reclaimed_at = epoch(step["claimed_at"])
            return
        if step["status"] == "done":
            # It completed before the worker died (between the read and the kill): the next step waits
            # for the new worker instead, with no lease to run out.
            kill.next_claim_at = next_claim(embedded, kill)
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {kill.step_id} was not claimed again within 900 s")


def next_claim(embedded: Embedded, kill: Kill) -> float:
    """When the first step after the kill was claimed (the federation moved on again)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        embedded.up.check_alive()
        claims = [
            epoch(s["claimed_at"])
            for r in (kill.round, kill.round + 1)
            for s in embedded.steps(r)
            if s["claimed_at"] and epoch(s["claimed_at"]) > kill.killed_at
        ]
        if claims:
            return min(claims)
        time.sleep(0.05)
    raise TimeoutError("no step was claimed within 900 s of the kill")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(stalls: list[float]) -> dict[str, Any]:
    """Median, p90 and max of the stalls (None without any), and every one."""
    return {
        "median": statistics.median(stalls) if stalls else None,
        "p90": percentile(stalls, 0.9) if stalls else None,
        "max": max(stalls) if stalls else None,
        "all": stalls,
    }


K = TypeVar("K")


def with_kills(
    args: argparse.Namespace,
    rng: random.Random,
    settings: dict[str, str],
    kill_one: Callable[[Embedded], K | None],
) -> tuple[list[K], str, bool, int]:
    """The demo federation on a fresh embedded deployment (with ``settings``); from round 1 on, ``--kills``
    times a random pause and ``kill_one`` (which kills, waits for the recovery and returns what happened, or
    None once the run has ended); then the run to its end. Returns the kills, the federation's final status,
    whether every round's metrics equal the simulator's, and the rounds."""
    torch.set_num_threads(1)  # the worker runs one torch thread (`fedalign up --threads 1`)
    kills: list[K] = []
    with tempfile.TemporaryDirectory(prefix="fedalign-recovery-") as tmp:
        embedded = Embedded(Path(tmp), args.rounds, settings)
        try:
            # Round 1 first: data loading and setup are not what this measures.
            wait_until(
                lambda: (embedded.federation()["round"] or 0) >= 1,
                "round 1",
                START_TIMEOUT_S,
                children=[embedded.up],
            )
            for _ in range(args.kills):
                time.sleep(rng.uniform(*args.pause_s))
                kill = kill_one(embedded)
                if kill is None:
                    break
                kills.append(kill)
            wait_until(
                lambda: embedded.federation()["status"] in ("finished", "failed", "cancelled"),
                "the federation to finish",
                RUN_TIMEOUT_S,
                poll_s=0.5,
                children=[embedded.up],
            )
            status = embedded.federation()["status"]
            served = embedded.rounds()
            config = embedded.config()
        finally:
            embedded.close()
    reference = simulate(config)
    expected = {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    return kills, status, status == "finished" and served == expected, config.rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10, help="How many times to kill the worker mid-step.")
    parser.add_argument("--rounds", type=int, default=40, help="Rounds of the demo federation.")
    parser.add_argument(
        "--pause-s", type=float, nargs=2, default=(2.0, 8.0), help="Random pause before each kill (uniform)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the pauses and of which step is hit.")
    parser.add_argument(
        "--kill-in",
        choices=["steps", "aggregations"],
        default="steps",
        help="Kill the worker mid-step, or mid-average (every average then runs on the aggregator queue).",
    )
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args(argv)
    if args.kill_in == "aggregations":
        return aggregation_kills(args, random.Random(args.seed))
    rng = random.Random(args.seed)

    def kill_one(embedded: Embedded) -> Kill | None:
        kill = kill_mid_step(embedded, rng)
        if kill is None:
            return None
        wait_reclaimed(embedded, kill)
        stall = (
            f"{kill.stall_s:.1f} s"
            if kill.stall_s is not None
            else f"none: it had completed; the next step waited {kill.restart_stall_s:.1f} s"
        )
        where = f"round {kill.round} {kill.phase} ({kill.node}, {kill.kind})"
        left = f"{kill.lease_left_s:.1f} s of lease left"
        print(f"killed the worker in {where}, {left}: stall {stall}")
        return kill

    kills, status, equal, rounds = with_kills(args, rng, {}, kill_one)
    stalls = [k.stall_s for k in kills if k.stall_s is not None]
    figures: dict[str, Any] = {
        "deployment": "embedded default (fedalign up: SQLite, filesystem broker, one worker, supervisor)",
        "rounds": rounds,
        "kills": len(kills),
        "mid_step_kills": len(stalls),
        "goal_s": GOAL_S,
        "lease_left_s_median": (
            statistics.median(k.lease_left_s for k in kills if k.stall_s is not None) if stalls else None
        ),
        "stall_s": spread(stalls),
        "status": status,
        "metrics_equal_simulator": equal,
        "completed_before_kill": {
            "count": len(kills) - len(stalls),
            "next_step_waited_s": [k.restart_stall_s for k in kills if k.restart_stall_s is not None],
        },
        "kill_log": [asdict(k) for k in kills],
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__},
    }
    if stalls:
        summary = figures["stall_s"]
        print(
            f"stall after a mid-step SIGKILL, {len(stalls)} kills: median {summary['median']:.1f} s, "
            f"p90 {summary['p90']:.1f} s, max {summary['max']:.1f} s "
            f"(goal: within {GOAL_S:.0f} s; {'met' if max(stalls) <= GOAL_S else 'NOT met'})"
        )
        beyond = [k.stall_s - k.lease_left_s for k in kills if k.stall_s is not None]
        lease_left = statistics.median(k.lease_left_s for k in kills if k.stall_s is not None)
        print(
            f"of which the dead worker's lease still running: median {lease_left:.1f} s; after it (sweep, "
            f"message, the new worker's start): median {statistics.median(beyond):.1f} s"
        )
    print(f"federation {status}; every round's metrics equal the simulator's: {equal}")
    if args.json:
        write_json(args.json, stamped(figures))
    return 0 if equal else 1


def aggregation_kills(args: argparse.Namespace, rng: random.Random) -> int:
    """``--kill-in aggregations``: the worker killed mid-average, the stall to the average stored."""

    def kill_one(embedded: Embedded) -> AggregationKill | None:
        kill = kill_mid_aggregation(embedded)
        if kill is None:
            return None
        wait_stored(embedded, kill)
        if kill.stall_s is None:
            print(f"killed the worker as it finished averaging {kill.key}: stored before the kill")
        else:
            print(f"killed the worker averaging {kill.key}: stored again {kill.stall_s:.1f} s later")
        return kill

    # Every average on the aggregator queue: the demo's are small enough to fold in the API otherwise.
    settings = {"FEDALIGN_INLINE_AGGREGATION_MAX_BYTES": "0"}
    kills, status, equal, rounds = with_kills(args, rng, settings, kill_one)
    stalls = [k.stall_s for k in kills if k.stall_s is not None]
    figures: dict[str, Any] = {
        "deployment": "embedded default (fedalign up), every average on the aggregator queue",
        "rounds": rounds,
        "kills": len(kills),
        "mid_average_kills": len(stalls),
        "stored_before_kill": len(kills) - len(stalls),
        "goal_s": GOAL_S,
        "stall_s": spread(stalls),
        "status": status,
        "metrics_equal_simulator": equal,
        "kill_log": [asdict(k) for k in kills],
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__},
    }
    if stalls:
        summary = figures["stall_s"]
        print(
            f"kill to the average stored again, {len(stalls)} kills mid-average: median "
            f"{summary['median']:.1f} s, p90 {summary['p90']:.1f} s, max {summary['max']:.1f} s "
            f"(goal: within {GOAL_S:.0f} s; {'met' if max(stalls) <= GOAL_S else 'NOT met'})"
        )
    print(f"federation {status}; every round's metrics equal the simulator's: {equal}")
    if args.json:
        write_json(args.json, stamped(figures))
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
