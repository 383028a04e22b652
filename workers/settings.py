"""A node's settings, from ``FEDALIGN_`` variables: what REST nodes and Celery node workers read.

Apart from the Celery app (`workers.celery_app`) so that a REST node (``fedalign node run``) reads them
without Celery installed (the ``celery`` extra is for partners who run Celery workers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from messaging.broker import BrokerSettings
from messaging.logs import LogSettings
from workers.audit import AUDIT_FILE


class WorkerSettings(BrokerSettings, LogSettings):
    """A node worker's settings, from ``FEDALIGN_`` variables (the broker's and the logs' are the server's
    too)."""

    model_config = SettingsConfigDict(env_prefix="FEDALIGN_", extra="ignore")

    data_dir: Annotated[Path, Field(description="This machine's data: datasets, node state.")] = Path(
        ".fedalign"
    )
    api_url: Annotated[str, Field(description="Where node workers reach the API.")] = "http://127.0.0.1:8000"
    node_state_dir: Annotated[
        Path | None, Field(description="Node state between steps; default data_dir/node-state.")
    ] = None
    node_state_fsync: Annotated[
        bool,
        Field(
            description="fsync the node's state file after every step, so that it also survives a "
            "machine crash (a killed process needs no fsync: the write is an atomic rename either way); "
            "0 saves about a millisecond per step and gives up exact restarts after a crash.",
        ),
    ] = True
    submit_in_background: Annotated[
        bool | None,
        Field(
            description="A Celery worker sends each step's submission from a background thread and goes on "
            "with its next step (of another node it serves) meanwhile; a node's own steps still wait for "
            "its previous submission. Unset: on with a Redis broker, off with the filesystem broker (there "
            "an idle worker looks for its next message only every FEDALIGN_BROKER_POLL_S, and SQLite takes "
            "one write at a time, so the overlap costs more than it saves). 0 sends each submission before "
            "the next step starts.",
        ),
    ] = None
    step_time_limit_s: Annotated[
        float,
        Field(
            gt=0,
            description="Celery's hard time limit for a task (pools that enforce it; the solo pool does "
            "not: there the step's lease is its deadline).",
        ),
    ] = 3600.0

    @property
    def submits_in_background(self) -> bool:
        """`submit_in_background`, or its default for this broker."""
        if self.submit_in_background is not None:
            return self.submit_in_background
        return bool(self.broker_url) and not self.uses_filesystem

    @property
    def state_dir(self) -> Path:
        return self.node_state_dir or self.data_dir / "node-state"

    @property
    def audit_path(self) -> Path:
        """Every request this machine's nodes send, one line each (`workers.audit`)."""
        return self.data_dir / AUDIT_FILE
