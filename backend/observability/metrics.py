"""This process's Prometheus metrics, and the calls the service makes to record them.

Label sets are bounded by construction: HTTP metrics use the route's template (``/api/v1/node/steps/
{step_id}/complete``), never the raw path; uploads are labelled by slot (G, T, D, model) and downloads by
artifact kind. Step durations are labelled by step kind and node *name*: a federation has a handful of
nodes and names repeat across federations, so the series stay few; a deployment that creates federations
with ever new node names grows them by one series per name (the documented cost of per-node timings).

Phase and step timings are recorded by callbacks that the orchestrator runs after its transaction
commits, so a transaction that rolls back records nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from fedalign.config import FederationConfig
from fedalign.phases import round_phases

log = logging.getLogger("fedalign.backend")

# Every metric of this module; `exposition` adds the scrape-time gauges beside it.
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "fedalign_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "fedalign_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
UPLOADS = Counter(
    "fedalign_uploads",
    "Parameter uploads accepted (validated and stored, or identical to the stored one), by slot.",
    ["slot"],
    registry=REGISTRY,
)
UPLOAD_BYTES = Counter(
    "fedalign_upload_bytes", "Bytes of accepted parameter uploads, by slot.", ["slot"], registry=REGISTRY
)
DOWNLOADS = Counter(
    "fedalign_downloads",
    "Artifact downloads served (nodes' aggregates and submissions, the published model), by artifact kind.",
    ["kind"],
    registry=REGISTRY,
)
DOWNLOAD_BYTES = Counter(
    "fedalign_download_bytes",
    "Bytes of artifact downloads served, by artifact kind.",
    ["kind"],
    registry=REGISTRY,
)
PHASE_DURATION = Histogram(
    "fedalign_phase_duration_seconds",
    "Time a round's phase was open (from opening to the transaction that closed it), by algorithm and phase.",
    ["algorithm", "phase"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "fedalign_step_duration_seconds",
    "Time from a node claiming a step to its completion, by step kind and node name.",
    ["kind", "node"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)


def request_done(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


def upload_accepted(slot: str, size: int) -> None:
    UPLOADS.labels(slot).inc()
    UPLOAD_BYTES.labels(slot).inc(size)


def download_served(kind: str, size: int) -> None:
    DOWNLOADS.labels(kind).inc()
    DOWNLOAD_BYTES.labels(kind).inc(size)


def _seconds(start: dt.datetime, end: dt.datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def phase_closed(
    federation_id: str, config: FederationConfig, closed: tuple[int, int], opened_at: dt.datetime | None
) -> Callable[[], None]:
    """What to record, once committed, for phase ``closed`` = (round, phase index) opened at
    ``opened_at``; its duration ends now, when the transaction that closed it runs. Its log record names
    the federation itself: phases also close on threads that serve no request (aggregations)."""
    round_, index = closed
    phase = round_phases(config, round_)[index]
    seconds = _seconds(opened_at, dt.datetime.now(dt.UTC)) if opened_at is not None else None
    algorithm = config.algorithm

    def record() -> None:
        if seconds is None:
            return
        PHASE_DURATION.labels(algorithm, phase).observe(seconds)
        fields = {"federation": federation_id, "round": round_, "node": None}
        log.info("round %s phase %s closed after %.3f s", round_, phase, seconds, extra=fields)

    return record


def step_done(
    federation_id: str,
    kind: str,
    node: str,
    round_: int,
    claimed_at: dt.datetime | None,
    done_at: dt.datetime | None,
) -> Callable[[], None]:
    """What to record, once committed, for a completed step (a step completed without a claim has no
    duration to observe)."""
    fields = {"federation": federation_id, "round": round_, "node": node}

    def record() -> None:
        if claimed_at is None or done_at is None:
            log.info("%s step of round %s done", kind, round_, extra=fields)
            return
        seconds = _seconds(claimed_at, done_at)
        STEP_DURATION.labels(kind, node).observe(seconds)
        log.info(
            "%s step of round %s done %.3f s after its claim",
            kind,
            round_,
            seconds,
            extra=fields,
        )

    return record
