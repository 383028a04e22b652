"""Live events of a federation as server-sent events, with replay after a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse

from backend.deps import ReadFederation, ServicesDep
from backend.errors import ApiError, responses
from backend.limits import Bigint
from backend.models import Event, Federation
from backend.schemas.events import EventOut
from backend.services import federations

router = APIRouter(prefix="/api/v1/federations/{federation_id}/events", tags=["events"])

# Events sent per database read; a replay of a long history goes out in pages.
PAGE = 500


class StreamSlot:
    """One open stream of a client; released when the stream ends (or is never started)."""

    def __init__(self, counter: OpenStreams, client: str) -> None:
        self._counter, self._client, self._released = counter, client, False
        # A response whose body never starts (the client left at once) never enters generate(): the slot
        # goes back when this object does.
        self._finalizer = weakref.finalize(self, counter.release, client)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._finalizer()  # runs release once, whichever comes first


class OpenStreams:
    """Live event streams open in this process, by client address."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, client: str) -> int:
        with self._lock:
            return self._open.get(client, 0)

    def reserve(self, client: str, limit: int) -> StreamSlot:
        with self._lock:
            if self._open.get(client, 0) >= limit:
                raise ApiError(
                    429,
                    "too_many_streams",
                    f"this client already has {limit} event streams open (FEDALIGN_MAX_STREAMS_PER_CLIENT); "
                    "close one (or follow=false for a replay) and try again",
                )
            self._open[client] = self._open.get(client, 0) + 1
        return StreamSlot(self, client)

    def release(self, client: str) -> None:
        with self._lock:
            left = self._open.get(client, 0) - 1
            if left > 0:
                self._open[client] = left
            else:
                self._open.pop(client, None)


STREAMS = OpenStreams()


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
    | responses(401, 403, 404, 422, 429),
)
async def stream_events(
    request: Request,
    services: ServicesDep,
    _access: ReadFederation,
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
    """Every event of the federation after ``Last-Event-ID`` (all of them without it), then live ones. A
    client address holds at most FEDALIGN_MAX_STREAMS_PER_CLIENT streams at once (429 beyond)."""
    with services.db.read() as session:
        federations.get(session, federation_id)
    start = last_event_id if last_event_id is not None else (after or 0)
    poll = services.settings.events_poll_s
    client = request.client.host if request.client else ""
    slot = STREAMS.reserve(client, services.settings.max_streams_per_client)

    async def generate() -> AsyncIterator[dict[str, Any]]:
        cursor = start
        with slot, services.notifier.subscribe(federation_id) as wake:
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
