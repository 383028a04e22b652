"""Live events of a federation as server-sent events, with replay after a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse

from backend.deps import Admin, ServicesDep
from backend.errors import responses
from backend.limits import Bigint
from backend.models import Event, Federation
from backend.schemas.events import EventOut
from backend.services import federations

router = APIRouter(prefix="/api/v1/federations/{federation_id}/events", tags=["events"])

# Events sent per database read; a replay of a long history goes out in pages.
PAGE = 500


def _page(services: ServicesDep, federation_id: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    with services.db.read() as session:
        rows = list(
            session.scalars(
                select(Event)
                .where(Event.federation_id == federation_id, Event.id > after)
                .order_by(Event.id)
                .limit(PAGE)
            )
        )
        exists = session.get(Federation, federation_id) is not None
    messages = [{"id": str(e.id), "event": e.type, "data": _data(EventOut.model_validate(e))} for e in rows]
    return messages, exists


def _data(event: EventOut) -> str:
    # json.dumps with ISO times ("+00:00"), as the stream has always sent them.
    return json.dumps(event.model_dump(), default=dt.datetime.isoformat)


@router.get(
    "",
    responses={
        200: {
            # The model puts EventOut (and EventType) in the document, so that generated clients have them.
            "model": EventOut,
            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/EventOut"}}},
            "description": "A stream of server-sent events: `id` (send it back as Last-Event-ID to resume), "
            "`event` (the type, an EventType) and `data` (the event as JSON, an EventOut).",
        }
    }
    | responses(401, 403, 404, 422),
)
async def stream_events(
    request: Request,
    services: ServicesDep,
    _admin: Admin,
    federation_id: Annotated[str, Path(max_length=36)],
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description="Replay events after this id."), Bigint
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, description="Like Last-Event-ID, for clients that cannot set it."), Bigint
    ] = None,
    follow: Annotated[
        bool, Query(description="Keep the stream open for new events (false: replay and close).")
    ] = True,
) -> EventSourceResponse:
    """Every event of the federation after ``Last-Event-ID`` (all of them without it), then live ones."""
    with services.db.read() as session:
        federations.get(session, federation_id)
    start = last_event_id if last_event_id is not None else (after or 0)
    poll = services.settings.events_poll_s

    async def generate() -> AsyncIterator[dict[str, Any]]:
        cursor = start
        with services.notifier.subscribe(federation_id) as wake:
            while True:
                wake.clear()
                messages, exists = await asyncio.to_thread(_page, services, federation_id, cursor)
                for message in messages:
                    yield message
                if messages:
                    cursor = int(messages[-1]["id"])
                    if len(messages) == PAGE:
                        continue
                if not follow or not exists or await request.is_disconnected():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=poll)

    return EventSourceResponse(generate(), ping=int(max(1, services.settings.sse_ping_s)))
