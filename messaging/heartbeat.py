"""A lease's heartbeat: renews it from a background thread while the work it holds runs.

Leases are short (the work of a process that died runs again within one), so whoever holds one renews it
every third of it (`messaging.node_api.HEARTBEATS_PER_LEASE`) until the work is answered, however long it
takes: a node sends ``POST heartbeat_url`` every ``heartbeat_s`` from a step's claim to its completion; a
server-side average renews its job's row in the database. The thread only renews; the work never waits on
it. A renewal that fails (the network, a busy database) is tried again at the next beat (the lease outlasts
two missed beats); one that is refused for good (the step is done, failed or cancelled, the federation is
over, another runner holds the job) stops the beats, since nobody wants the lease any more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("fedalign.heartbeat")


class Heartbeat:
    """``with Heartbeat(send, every_s):`` calls ``send()`` every ``every_s`` seconds until the block ends.

    ``send`` raises to report a failure; ``stops_on`` lists the errors after which the beats stop (the server
    refused them for good); any other error is logged and the next beat goes on.
    """

    def __init__(
        self,
        send: Callable[[], object],
        every_s: float,
        *,
        stops_on: Callable[[Exception], bool],
        name: str = "heartbeat",
    ) -> None:
        self.send = send
        self.every_s = every_s
        self.stops_on = stops_on
        self.sent = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def start(self) -> Heartbeat:
        """Begin the beats (the step is claimed)."""
        self._thread.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """End the beats (the step is answered); calling it again does nothing."""
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        # Event.wait, not sleep: the block's end stops the thread at once, not a beat later.
        while not self._done.wait(self.every_s):
            try:
                self.send()
                self.sent += 1
            except Exception as exc:
                if self.stops_on(exc):
                    log.info("heartbeats stopped: %s", exc)
                    return
                log.warning("heartbeat failed (%s); trying again in %.1f s", exc, self.every_s)
