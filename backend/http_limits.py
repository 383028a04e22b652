"""Time limits on reading a request, against clients that trickle it (slowloris).

uvicorn closes an idle keep-alive connection, but waits indefinitely for the headers of a request that
arrive a byte at a time, and for a body that never ends. Two limits, both from `backend.settings.Settings`:

- `bounded_h11_protocol`: uvicorn's h11 protocol with a deadline for a request's headers, counted from the
  connection (or the previous response); a connection that has not sent them whole by then is closed.
  `fedalign serve` runs uvicorn with it (and with ``limit_concurrency`` = ``max_connections``).
- `BodyReadTimeout`: an ASGI middleware that answers 408 when a request's body has not arrived whole within
  ``body_timeout_s`` of its first read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("fedalign.backend")


def bounded_h11_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take over ``header_timeout_s``."""

    class BoundedH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closed a connection whose request headers took over %.1f s", header_timeout_s)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the headers are in: the body has its own limit
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same time for its headers

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedH11Protocol


class BodyTooSlow(Exception):
    """A request body that did not arrive whole in time (answered 408 by `backend.errors`)."""


class BodyReadTimeout:
    """Raises `BodyTooSlow` in the route when a request's body takes over ``timeout_s`` from its first
    read to its last chunk."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_done = False

        async def bounded_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:  # after the body, receive() waits for a disconnect (event streams): no limit
                return await receive()
            deadline = deadline if deadline is not None else loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError as exc:
                raise BodyTooSlow(f"the request body did not arrive within {self.timeout_s:g} s") from exc
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, bounded_receive, send)
