"""The broker that the server and the workers share: its settings, and Celery's settings for it.

Both sides read the same ``FEDALIGN_`` variables through `BrokerSettings` (the server's settings and the
workers' settings extend it), and turn the URL into Celery's settings with `celery_broker`, so a message
the server publishes lands where the workers consume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The scheme of the broker that keeps its queues as files (`messaging.filesystem`).
FILESYSTEM = "filesystem://"


class BrokerSettings(BaseSettings):
    """The broker's settings, from ``FEDALIGN_`` variables."""

    model_config = SettingsConfigDict(env_prefix="FEDALIGN_", extra="ignore")

    broker_url: Annotated[
        str | None,
        Field(
            description="Celery broker: redis://... (rediss:// for TLS), or filesystem:// for queues in "
            "folders under data_dir (filesystem:///some/dir: under that folder). On the server, set: steps "
            "are sent to Celery-mode nodes' queues and aggregations run on the aggregator queue."
        ),
    ] = None
    queue_prefix: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9._-]*$",
            description="Prepended to every queue name (node.<id>, aggregator): several deployments or test "
            "runs can share one broker.",
        ),
    ] = ""
    broker_poll_s: Annotated[
        float, Field(gt=0, description="How often a worker on the filesystem transport looks for messages.")
    ] = 0.1

    @property
    def uses_filesystem(self) -> bool:
        return bool(self.broker_url) and self.broker_url.startswith(FILESYSTEM)


def celery_broker(url: str, data_dir: Path) -> dict[str, Any]:
    """Celery settings for broker ``url``: ``broker_url``, ``broker_transport_options``, and for the
    filesystem transport (`messaging.filesystem`) its folders under ``data_dir`` and its transport class.
    """
    # Imported here: it loads kombu, which a REST node reading these settings need not have installed.
    from messaging.filesystem import filesystem_broker

    if url.startswith(FILESYSTEM):
        return filesystem_broker(url, data_dir)
    return {"broker_url": url, "broker_transport_options": {}}
