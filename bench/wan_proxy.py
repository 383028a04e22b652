"""A TCP proxy that adds a fixed latency each way: a wide-area link in front of a local API.

Every byte is forwarded ``delay_s`` after it arrived, in each direction, in order; the link's bandwidth is
not limited (a discriminator is tens of KB: latency, not bytes, is what a WAN costs it). So one HTTP
request and its answer cost 2 x ``delay_s`` more than on loopback, and a new connection one more round
trip for its handshake; the proxy counts connections, so a figure can say how many were opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from bench.harness import free_port


class LatencyProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream_port``, each way ``delay_s`` late."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wan-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        # The handshake's round trip: the connection is usable one RTT after it was asked for.
        await asyncio.sleep(2 * self.delay_s)
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward what ``reader`` gives, each chunk ``delay_s`` after it came, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await reader.read(1 << 16)
                queue.put_nowait((time.monotonic() + self.delay_s, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()
        finally:
            with contextlib.suppress(OSError):
                writer.close()


@contextlib.contextmanager
def latency_proxy(upstream_url: str, delay_ms: float) -> Iterator[LatencyProxy]:
    """A `LatencyProxy` in front of ``upstream_url`` (http://127.0.0.1:PORT), ``delay_ms`` each way."""
    port = int(upstream_url.rsplit(":", 1)[1].rstrip("/"))
    with LatencyProxy(port, delay_ms / 1000) as proxy:
        yield proxy
