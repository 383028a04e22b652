"""The FastAPI application: wiring of settings, database, services and routers.

``create_app(settings)`` builds an app; its lifespan migrates the database (under a lock), starts the
aggregation executor and the periodic sweep, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from backend import api_docs, dashboard, errors, migrate
from backend.database import Database, make_engine
from backend.deps import Services
from backend.http_limits import BodyReadTimeout
from backend.limits import JsonBodyLimit
from backend.observability import exposition
from backend.observability.queues import QueueCollector
from backend.routers import (
    access_tokens,
    aggregations,
    events,
    federations,
    health,
    metrics,
    node_api,
    nodes,
    published,
    rounds,
    session,
)
from backend.services import relay as relay_module
from backend.services.aggregation import AggregationService, ThreadPoolDispatcher
from backend.services.dispatch import AggregationDispatcher
from backend.services.events import EventNotifier
from backend.services.messages import CeleryAggregationDispatcher, CeleryMessenger, StepSender
from backend.services.orchestrator import Orchestrator
from backend.services.store import ArtifactStore
from backend.services.sweep import Sweeper
from backend.services.trackers import TrackerExporter
from backend.settings import Settings

log = logging.getLogger("fedalign.backend")

API_DESCRIPTION = """\
FedAlign trains a model for an unlabelled target domain with the help of labelled source domains held by
other parties; only model parameters travel.

* **Management** (admin token): federations, their nodes, rounds, metrics, aggregations, the published
  model, live events.
* **Registration** (a federation's join token, or the admin token): `POST /api/v1/federations/{id}/nodes`.
* **Nodes** (a node's own token): `/api/v1/node/...` — poll for a task, download what it needs, upload
  safetensors results, complete it.

Every error answers `{"error": {"code", "message", "details"}}`.
"""


def build_services(settings: Settings, messenger: CeleryMessenger | None = None) -> Services:
    """Every service, each handed what it uses when it is made.

    ``messenger``: the broker client, made from ``settings.broker_url`` when not given (a test passes one
    that records). With one, steps of Celery-mode nodes go to their queues and aggregations to the
    aggregator queue, where `fedalign worker --aggregator` runs this same AggregationService; without
    one, nodes poll and aggregations run on a thread pool here.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(make_engine(settings.sqlalchemy_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms))
    store = ArtifactStore(settings.artifacts_dir)
    notifier = EventNotifier()
    steps_notifier = EventNotifier()
    # API processes (and the aggregator worker, whose commits open steps) share wake-ups through Redis.
    relay = None
    if settings.broker_url is not None and relay_module.is_redis(settings.broker_url):
        relay = relay_module.RedisRelay(
            settings.broker_url,
            {
                relay_module.channel(settings.queue_prefix, "events"): notifier,
                relay_module.channel(settings.queue_prefix, "steps"): steps_notifier,
            },
        )
    if messenger is None and settings.broker_url:
        messenger = CeleryMessenger(settings.broker_url, settings.data_dir, settings.queue_prefix)
    dispatcher: AggregationDispatcher
    send_steps: StepSender | None = None
    if messenger is not None:
        dispatcher = CeleryAggregationDispatcher(messenger, settings.step_resend_s)
        send_steps = StepSender(db, messenger)
    else:
        # The one cycle of the wiring: the pool runs the aggregation service, which feeds the orchestrator,
        # which dispatches to the pool. `aggregation` is looked up when a job runs, once everything is made.
        def run_aggregation(job_id: int) -> None:
            aggregation.run(job_id)

        dispatcher = ThreadPoolDispatcher(run_aggregation, settings.aggregation_workers)
    orchestrator = Orchestrator(
        db,
        store,
        notifier,
        dispatcher=dispatcher,
        send_steps=send_steps,
        inline_aggregation_bytes=settings.inline_aggregation_max_bytes,
        steps_notifier=steps_notifier,
    )
    aggregation = AggregationService(db, store, orchestrator, settings.aggregation_lease_s)
    orchestrator.fold = aggregation.fold
    return Services(
        settings=settings,
        db=db,
        store=store,
        notifier=notifier,
        orchestrator=orchestrator,
        aggregation=aggregation,
        dispatcher=dispatcher,
        sweeper=Sweeper(db, orchestrator, dispatcher, settings.step_resend_s),
        admin_token=settings.admin_secret,
        relay=relay,
    )


def create_app(settings: Settings | None = None, messenger: CeleryMessenger | None = None) -> FastAPI:
    """The app; ``messenger`` as in `build_services`."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate.upgrade, settings.sqlalchemy_url)
        services = await asyncio.to_thread(build_services, settings, messenger)
        services.notifier.bind(asyncio.get_running_loop())
        services.orchestrator.steps_notifier.bind(asyncio.get_running_loop())
        if services.relay is not None:
            services.relay.start()
        app.state.services = services
        app.state.queue_collector = QueueCollector(
            services.db, settings.broker_url, settings.data_dir, settings.queue_prefix
        )
        sweep = asyncio.create_task(services.sweeper.run_forever(settings.sweep_interval_s), name="sweep")
        tasks = [sweep]
        if settings.tracker_destinations().configured():  # no pass at all where nothing streams
            exporter = TrackerExporter(services.db, settings.tracker_destinations())
            tasks.append(
                asyncio.create_task(exporter.run_forever(settings.trackers_interval_s), name="trackers")
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            services.notifier.bind(None)
            services.orchestrator.steps_notifier.bind(None)
            if services.relay is not None:
                await asyncio.to_thread(services.relay.close)
            app.state.queue_collector.close()
            await asyncio.to_thread(services.dispatcher.close)
            services.db.dispose()

    app = FastAPI(
        title="FedAlign",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # Operation ids are the route functions' names (list_federations, ...): the generated dashboard
        # client and other clients read better with them than with FastAPI's path-derived ids.
        generate_unique_id_function=lambda route: route.name,
        # FastAPI's pages load their scripts from a CDN: /docs is served from this package instead.
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    app.add_middleware(JsonBodyLimit, max_bytes=settings.max_json_bytes)
    app.add_middleware(BodyReadTimeout, timeout_s=settings.body_timeout_s)
    # After the body limit, so outside it: its refusals are counted too.
    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    exposition.install(app, metrics_token)
    for module in (
        health,
        session,
        access_tokens,
        federations,
        nodes,
        rounds,
        aggregations,
        metrics,
        published,
        events,
        node_api,
    ):
        app.include_router(module.router)
    app.include_router(published.checkpoints_router)
    api_docs.mount(app)
    dashboard.mount(app, settings.frontend_dir)  # last: its catch-all must not shadow a route
    return app
