"""``GET /metrics`` (Prometheus text format), the middleware that times every request, and the exporter of
the aggregator worker.

``/metrics`` is left out of the OpenAPI document (it is for Prometheus, not for API clients). With
``FEDALIGN_METRICS_TOKEN`` set it answers only ``Authorization: Bearer <that token>`` (a token of its own,
so a scraper holds no power over federations); unset, it is open to whoever reaches the API's port.

One process per API container is the supported shape (``fedalign serve`` runs one): each replica is its
own scrape target and Prometheus sums them. A server run under several worker processes of one
gunicorn/uvicorn parent sets ``PROMETHEUS_MULTIPROC_DIR`` (an empty folder, before the processes start):
then every process writes its values there and ``/metrics`` reads them all (prometheus_client's
multiprocess mode).

Phases closed by ``fedalign worker --aggregator`` (after its aggregations) are timed in that process; it
serves its own metrics at ``FEDALIGN_METRICS_ADDR`` (host:port) when that is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import unauthorized
from backend.observability import logs, metrics
from backend.observability.queues import QueueCollector
from backend.security import same

UNMATCHED = "unmatched"  # no route answered (refused before routing, e.g. a body over the limit)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class RequestMetrics:
    """Counts and times every HTTP request by route template; opens the request's log fields."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raised before responding

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with logs.scope():
            try:
                await self.app(scope, receive, tracking_send)
            finally:
                route = getattr(scope.get("route"), "path", None) or UNMATCHED
                metrics.request_done(scope["method"], route, status, time.perf_counter() - started)


def exposition_registry(collector: QueueCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Process())
    registry.register(collector)
    return registry


class _Process(Collector):
    """This process's metrics (the module registry), as one collector of the exposition registry."""

    def collect(self) -> Iterable[Metric]:
        return metrics.REGISTRY.collect()


bearer = HTTPBearer(auto_error=False)


def router(token: str | None) -> APIRouter:
    routes = APIRouter()

    def check(
        authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        if authorization is None or not same(authorization.credentials, token):
            raise unauthorized("the metrics need the header 'Authorization: Bearer <FEDALIGN_METRICS_TOKEN>'")

    @routes.get("/metrics", include_in_schema=False, dependencies=[Depends(check)])
    def prometheus_metrics(request: Request) -> Response:
        collector: QueueCollector = request.app.state.queue_collector
        return Response(generate_latest(exposition_registry(collector)), media_type=CONTENT_TYPE_LATEST)

    return routes


def install(app: FastAPI, token: str | None) -> None:
    """The middleware and the route; the app's lifespan sets ``app.state.queue_collector``."""
    app.add_middleware(RequestMetrics)
    app.include_router(router(token))


def serve_worker_metrics(address: str) -> None:
    """Serve this process's metrics at ``http://<address>/metrics`` from a background thread (the
    aggregator worker: it has no web server of its own)."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Process())
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
