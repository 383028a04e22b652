"""The broker of the embedded default: kombu's filesystem transport, never showing a message half-written.

``filesystem://`` keeps every queue as files in one folder; publishers (the server) and consumers (the
workers) share it, and the exchange table (which queue a routing key goes to) lives beside it, so
per-queue routing works across processes. Consumed messages are moved to a ``processed`` folder (a rename
on one file system: exactly one consumer wins a message), which `prune_processed` empties of old ones.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps

from messaging.broker import FILESYSTEM


def _write_whole(folder: Path, name: str, text: str, *, replace: bool = True) -> None:
    """Write ``folder/name`` so that a reader sees nothing or all of it: a temporary file first (its name
    starts with a dot and ends in ".tmp", which no reader takes for a message), then a rename."""
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(text, encoding="utf-8")
    try:
        if replace:
            os.replace(tmp, folder / name)
        else:
            os.link(tmp, folder / name)  # FileExistsError when someone else wrote it first
    finally:
        tmp.unlink(missing_ok=True)


class AtomicFilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel, writing messages and exchange tables whole.

    kombu creates a message's file and then writes it; a consumer polling in between moves it away and
    reads it empty (measured: 57 of 3000 messages under load), which kills a Celery worker. Here the file
    appears by a rename, complete.
    """

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # the name kombu's reader expects
        _write_whole(Path(self.data_folder_out), name, dumps(payload))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        file = self._exchange_file(exchange)
        if not file.exists():
            # kombu creates the table file and then locks it, so a publisher reading it in between would
            # see an empty table; the first binding is written whole instead.
            self.control_folder.mkdir(parents=True, exist_ok=True)
            table = [filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")]
            with contextlib.suppress(FileExistsError):
                _write_whole(self.control_folder, file.name, dumps(table), replace=False)
                return
        super()._queue_bind(exchange, routing_key, pattern, queue)


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicFilesystemChannel

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # No host: the queues are folders. kombu's default names one, "localhost", and warns on every
        # connection that the URL filesystem:// supplied none.
        return {"port": self.default_port}


def filesystem_broker(url: str, data_dir: Path) -> dict[str, Any]:
    """Celery's broker settings for a ``filesystem://`` URL: its folders under ``data_dir/broker``
    (``filesystem:///some/dir``: under that folder), created if missing, and the atomic transport."""
    rest = url[len(FILESYSTEM) :]
    root = Path(rest) if rest else data_dir / "broker"
    folders = {name: root / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": FILESYSTEM,
        "broker_transport": AtomicFilesystemTransport,
        "broker_transport_options": {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": True,
            "control_folder": str(folders["control"]),
        },
    }


def prune_processed(folder: str | Path, keep_s: float, now: float | None = None) -> int:
    """Delete the consumed messages in ``folder`` older than ``keep_s`` seconds; returns how many."""
    now = time.time() if now is None else now
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_file() and now - entry.stat().st_mtime > keep_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # another worker pruned it first
                continue
    return removed
