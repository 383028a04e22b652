"""Every setting of the API service, read from environment variables prefixed ``FEDALIGN_``.

The documentation's configuration reference is generated from these fields (their types, defaults, bounds
and descriptions) when the docs site is built: describe a new setting here, and nowhere else.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from messaging.broker import BrokerSettings
from messaging.logs import LogSettings

log = logging.getLogger("fedalign.backend")

ADMIN_TOKEN_FILE = "admin_token"
ADMIN_TOKEN_PREFIX = "fa_admin_"


class Settings(BrokerSettings, LogSettings):
    """The API service's settings: each field is the environment variable FEDALIGN_<FIELD NAME>; the
    broker's (`BrokerSettings`: broker_url, queue_prefix, broker_poll_s) and the logs' (`LogSettings`:
    log_format) are the workers' too."""

    model_config = SettingsConfigDict(env_prefix="FEDALIGN_", extra="ignore")

    data_dir: Annotated[Path, Field(description="Artifacts, the SQLite file and the admin token file.")] = (
        Path(".fedalign")
    )
    database_url: Annotated[
        str | None,
        Field(description="SQLAlchemy URL; default: a SQLite file in data_dir. postgresql:// uses psycopg."),
    ] = None
    step_resend_s: Annotated[
        float,
        Field(gt=0, description="A pending Celery step whose message is older than this is sent again."),
    ] = 60.0
    admin_token: Annotated[
        SecretStr | None,
        Field(description="Bearer token for management; default: generated once into data_dir."),
    ] = None
    public_url: Annotated[
        str | None,
        Field(description="Base URL nodes reach the API at (behind a proxy); default: the request's."),
    ] = None
    max_upload_bytes: Annotated[
        int,
        Field(ge=1024, description="Largest parameter upload; a larger one is refused (413) as it streams."),
    ] = 256 * 1024 * 1024
    max_json_bytes: Annotated[
        int, Field(ge=1024, description="Largest JSON request body, counted while it streams (413 beyond).")
    ] = 1024 * 1024
    lease_seconds: Annotated[
        float,
        Field(
            gt=0,
            description="How long a claimed step is held without a heartbeat: the node running it renews "
            "the lease every third of this (POST .../heartbeat), so it bounds how long a dead worker's step "
            "waits to run again, not how long a step may take.",
        ),
    ] = 10.0
    aggregation_lease_s: Annotated[
        float,
        Field(
            gt=0,
            description="How long a running server-side aggregation is held before another runner may take "
            "it over (no heartbeat: longer than the largest aggregation takes).",
        ),
    ] = 600.0
    sweep_interval_s: Annotated[
        float,
        Field(
            gt=0,
            description="Period of the sweep that releases expired leases (and sends their steps again), "
            "re-dispatches pending aggregations and applies phase deadlines.",
        ),
    ] = 2.0
    inline_aggregation_max_bytes: Annotated[
        int,
        Field(
            ge=0,
            description="A server-side average whose largest input is at most this many bytes is computed "
            "in the API process as soon as the phase's last submission is in (no job on the aggregator "
            "queue); larger ones go to the aggregator queue (or the API's aggregation threads). 0: none.",
        ),
    ] = 1024 * 1024
    aggregation_workers: Annotated[
        int, Field(ge=1, le=64, description="Threads computing aggregations in the API process (no broker).")
    ] = 2
    events_poll_s: Annotated[
        float,
        Field(
            gt=0, description="How often a live event stream also polls the database (other API processes)."
        ),
    ] = 1.0
    sse_ping_s: Annotated[float, Field(gt=0, description="Keep-alive comment interval on event streams.")] = (
        15.0
    )
    sqlite_busy_timeout_ms: Annotated[
        int, Field(ge=0, description="How long a SQLite writer waits for the lock before failing.")
    ] = 30_000
    migrate_on_start: Annotated[bool, Field(description="Migrate the database when the API starts.")] = True
    session_ttl_s: Annotated[
        float, Field(gt=0, description="How long a dashboard sign-in lasts (the session cookie's lifetime).")
    ] = 12 * 3600.0
    cookie_secure: Annotated[
        bool | None,
        Field(description="Mark the session cookie Secure (HTTPS only); default: when the request is HTTPS."),
    ] = None
    frontend_dir: Annotated[
        Path | None,
        Field(
            description="The built dashboard (index.html and assets) served at /; default: the one inside "
            "the installed package (a wheel), else frontend/dist of this checkout."
        ),
    ] = None
    metrics_token: Annotated[
        SecretStr | None,
        Field(description="Bearer token that GET /metrics requires; unset: /metrics is open."),
    ] = None
    metrics_addr: Annotated[
        str | None,
        Field(
            pattern=r"^[^:\s]*:[0-9]{1,5}$",
            description="host:port where `fedalign worker --aggregator` serves its own Prometheus metrics "
            "(phases it closes); unset: not served.",
        ),
    ] = None

    @field_validator("metrics_token", "metrics_addr", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes `${FEDALIGN_METRICS_TOKEN:-}` as an empty string when the operator set nothing.
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str | None) -> str | None:
        # psycopg 3 is the driver we ship; a bare postgresql:// would make SQLAlchemy look for psycopg2.
        if url and url.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fedalign.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @cached_property
    def admin_secret(self) -> str:
        """The admin token: from the environment, else the one stored in data_dir, else a new one there."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        path = self.data_dir / ADMIN_TOKEN_FILE
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".admin_token.")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        try:
            # link() fails if the name exists: of two processes starting at once, one token wins whole.
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip()
        finally:
            os.unlink(tmp)
        log.warning("generated an admin token; it is in %s (readable by this user only)", path.resolve())
        return token
