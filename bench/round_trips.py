"""Round trips a node spends per phase: REST nodes driven from the bench, every HTTP request counted and
charged to the step it led to (the polls that found the step, its downloads, heartbeats, uploads and
completion), on the hot path (long poll, inline downloads, one submission) or with every request separate.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from workers.client import POLL_WAIT_S, NodeClient, NodeRunner

# How often a node without the hot path polls (run_node's default is 1 s; shorter here, so that the
# separate arm is not slowed by its polling interval, only by its requests).
SEPARATE_POLL_S = 0.05


class CountingTransport(httpx.HTTPTransport):
    """Notes each request's kind as it is answered."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.requests.append(kind_of(request.method, request.url.path, response.status_code))
        return response


def kind_of(method: str, path: str, status: int) -> str:
    if path.endswith("/task"):
        return "poll (task)" if status == 200 else "poll (none)"
    for suffix in ("/claim", "/heartbeat", "/complete", "/submit", "/fail", "/reveal"):
        if path.endswith(suffix):
            return suffix[1:]
    if "/artifacts/" in path:
        return "download"
    if "/uploads/" in path:
        return "upload"
    return f"{method} other"


@dataclass
class NodeCount:
    """Per step the node ran: its round, phase, and the requests charged to it."""

    steps: list[tuple[int, str, Counter[str]]] = field(default_factory=list)


def drive(api_url: str, tokens: dict[str, str], hot_path: bool, timeout_s: float) -> dict[str, NodeCount]:
    """Run each node (name -> token) in a thread of its own until the federation ends."""
    counts = {name: NodeCount() for name in tokens}
    failures: list[BaseException] = []

    def node(name: str) -> None:
        transport = CountingTransport()
        try:
            with httpx.Client(transport=transport, timeout=60) as http:
                runner = NodeRunner(NodeClient(api_url, tokens[name], http=http), hot_path=hot_path)
                deadline = time.monotonic() + timeout_s
                charged = len(transport.requests)  # the federation's config, read at the start
                while not runner.finished and time.monotonic() < deadline:
                    task = runner.client.next_task(POLL_WAIT_S if hot_path else 0.0, runner.inline_max_bytes)
                    if task is None:
                        if not hot_path:
                            time.sleep(SEPARATE_POLL_S)
                        continue
                    runner.run(task)
                    counts[name].steps.append((task.round, task.phase, Counter(transport.requests[charged:])))
                    charged = len(transport.requests)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=node, args=(name,)) for name in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return counts


def summary(counts: dict[str, NodeCount]) -> dict[str, Any]:
    """Per phase (rounds 1..R), the median requests a node spends on one step, in all and by kind."""
    per_phase: dict[str, list[Counter[str]]] = defaultdict(list)
    for count in counts.values():
        for round_, phase, requests in count.steps:
            if round_ >= 1:
                per_phase[phase].append(requests)
    out: dict[str, Any] = {}
    for phase, steps in per_phase.items():
        kinds = sorted({k for c in steps for k in c})
        out[phase] = {
            "steps": len(steps),
            "round_trips_median": statistics.median(sum(c.values()) for c in steps),
            "waiting_polls_median": statistics.median(c["poll (none)"] for c in steps),
            "by_kind_mean": {k: statistics.fmean(c[k] for c in steps) for k in kinds},
        }
    return out
