"""Live events: rows in the ``events`` table, and a notifier that wakes the SSE streams waiting on them.

Events are written inside the transaction that changes the federation (with its row locked), so their
ids commit in order per federation and a stream that replays ``id > Last-Event-ID`` misses nothing. The
notifier only shortens the wait: a stream also polls. With several API processes, a Redis relay
(`backend.services.relay`) carries the wake-ups between them; the polls are the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from backend.models import Event
from backend.schemas.events import EVENT_TYPES, EventType


def record(session: Session, federation_id: str, type_: EventType, payload: dict[str, Any]) -> None:
    if type_ not in EVENT_TYPES:
        # The dashboard listens only to the declared types: an undeclared one would never reach it.
        raise ValueError(f"event type {type_!r} is not declared in backend.schemas.events.EventType")
    session.add(Event(federation_id=federation_id, type=type_, payload=payload))


class EventNotifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._lock = threading.Lock()
        # Set by `backend.services.relay.RedisRelay`: also wake the other API processes' waiters.
        self.relay: Callable[[str], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def notify(self, federation_id: str) -> None:
        """Wake this federation's waiters, in this process and (with a relay) in the others; callable from
        any thread."""
        relay = self.relay
        if relay is not None:
            relay(federation_id)
        self.wake_here(federation_id)

    def wake_here(self, federation_id: str) -> None:
        """Wake this federation's waiters in this process; callable from any thread."""
        loop = self._loop
        if loop is None:
            return
        # A closed loop means the app is shutting down: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake, federation_id)

    def _wake(self, federation_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(federation_id, ()))
        for waiter in waiters:
            waiter.set()

    def waiting(self, federation_id: str) -> int:
        """How many waiters this process holds for the federation."""
        with self._lock:
            return len(self._waiters.get(federation_id, ()))

    @contextmanager
    def subscribe(self, federation_id: str) -> Iterator[asyncio.Event]:
        waiter = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(federation_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                group = self._waiters.get(federation_id)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._waiters[federation_id]
