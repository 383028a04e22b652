"""Wake-ups across API processes, through Redis.

A commit wakes the long polls and event streams that wait on its federation (`EventNotifier`), but only in
the process that made it. Behind a load balancer with several API processes, a node's long poll is held by
one process while the commit that opens its step happens in another. With a Redis broker configured, each
notifier's wake-ups are also published on a Redis channel, and every process's subscriber wakes its own
waiters, so a held poll answers within milliseconds wherever it waits. Without Redis (the embedded default:
one process) nothing is relayed; in both cases the waiters' own periodic database checks
(``FEDALIGN_LONG_POLL_RECHECK_S``, ``FEDALIGN_EVENTS_POLL_S``) remain the fallback, so a relay that is down
delays an answer but never loses one.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from functools import partial

import redis

from backend.services.events import EventNotifier

log = logging.getLogger("fedalign.relay")

RECONNECT_S = 1.0


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def channel(queue_prefix: str, name: str) -> str:
    """A notifier's channel; the queue prefix keeps deployments that share a Redis server apart."""
    return f"{queue_prefix}fedalign.wake.{name}"


class RedisRelay:
    """Relays the wake-ups of ``notifiers`` (channel -> notifier) through Redis at ``url``."""

    def __init__(self, url: str, notifiers: Mapping[str, EventNotifier]) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._notifiers = dict(notifiers)
        # Each process names itself, so that it does not wake its waiters a second time on its own messages.
        self._origin = uuid.uuid4().hex
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._listen, name="wake-relay", daemon=True)
        for name, notifier in self._notifiers.items():
            notifier.relay = partial(self.publish, name)

    def start(self) -> None:
        self._thread.start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the subscriber is listening (within ``timeout_s``): wake-ups published before are lost."""
        return self._subscribed.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        for notifier in self._notifiers.values():
            notifier.relay = None
        self._thread.join(timeout=5)
        self._client.close()

    def publish(self, name: str, federation_id: str) -> None:
        try:
            self._client.publish(name, f"{self._origin} {federation_id}")
        except redis.RedisError as exc:
            # The commit stands; other processes' waiters find it at their next recheck.
            if not self._warned:
                log.warning("cannot relay wake-ups through Redis (%s); waiters fall back to rechecking", exc)
                self._warned = True

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*self._notifiers)
                self._subscribed.set()
                self._warned = False
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._deliver(message)
            except redis.RedisError as exc:
                self._subscribed.clear()
                if not self._warned:
                    log.warning("wake-up relay lost Redis (%s); reconnecting", exc)
                    self._warned = True
                self._stop.wait(RECONNECT_S)
            finally:
                pubsub.close()

    def _deliver(self, message: Mapping[str, object]) -> None:
        name, data = message.get("channel"), message.get("data")
        if not isinstance(name, bytes) or not isinstance(data, bytes):
            return
        origin, _, federation_id = data.decode("utf-8", "replace").partition(" ")
        notifier = self._notifiers.get(name.decode())
        if notifier is not None and origin != self._origin and federation_id:
            notifier.wake_here(federation_id)
