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

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fedalign.trackers import Destinations, require
from messaging.broker import BrokerSettings
from messaging.logs import LogSettings

log = logging.getLogger("fedalign.backend")

ADMIN_TOKEN_FILE = "admin_token"
ADMIN_TOKEN_PREFIX = "fa_admin_"
ENV_PREFIX = "FEDALIGN_"
# The admin token is the master key: shorter than this, it can be guessed or is a placeholder.
MIN_ADMIN_TOKEN_LENGTH = 32
EMPTY_IS_UNSET = frozenset({"metrics_token", "metrics_addr", "public_url"})


class SettingsError(ValueError):
    """Settings the service cannot start with, every problem named by its environment variable."""


def load_settings() -> Settings:
    """The settings from the environment; `SettingsError` with a readable message when they are invalid
    (the commands print it instead of a traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            where = f"{ENV_PREFIX}{field.upper()}: " if field else ""
            problems.append(where + str(err["msg"]).removeprefix("Value error, "))
        raise SettingsError("invalid settings: " + "; ".join(problems)) from exc


class Settings(BrokerSettings, LogSettings):
    """The API service's settings: each field is the environment variable FEDALIGN_<FIELD NAME>; the
    broker's (`BrokerSettings`: broker_url, queue_prefix, broker_poll_s) and the logs' (`LogSettings`:
    log_format) are the workers' too."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

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
    admin_token_enabled: Annotated[
        bool,
        Field(
            description="false: the admin token no longer signs in or authorises (it still keys the session "
            "cookies); coordinators then use access tokens, which rotate and revoke without a restart."
        ),
    ] = True
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
            description="How long a running server-side aggregation is held without a renewal: its runner "
            "renews the lease every third of this while it averages, so it bounds how long the average of a "
            "runner that died waits to run again, not how long an average may take.",
        ),
    ] = 10.0
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
    long_poll_max_s: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            description="Longest a node's task poll (GET /api/v1/node/task?wait_s=) is held open waiting for "
            "a step; a node asking for longer waits this long. 0: polls answer at once.",
        ),
    ] = 25.0
    long_poll_recheck_s: Annotated[
        float,
        Field(
            gt=0,
            description="How often a held task poll also looks in the database: a step opened by another "
            "API process (or an aggregator worker) wakes no poll of this one's.",
        ),
    ] = 0.5
    inline_download_max_bytes: Annotated[
        int,
        Field(
            ge=0,
            le=16 * 1024 * 1024,
            description="Largest artifact a claimed task carries inline (base64 in its JSON) when the node "
            "asks for it (inline_max_bytes=); larger ones stay download URLs. 0: none inline.",
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
    header_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="How long a connection may take to send a request's headers (`fedalign serve`); one "
            "that trickles them (slowloris) is closed.",
        ),
    ] = 10.0
    body_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=86_400,
            description="How long a request's body may take to arrive whole, from its first byte read "
            "(408 beyond); long enough for the largest upload over the slowest node's link.",
        ),
    ] = 600.0
    max_connections: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="Concurrent connections `fedalign serve` accepts; beyond, requests get 503.",
        ),
    ] = 1000
    max_streams_per_client: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="Live event streams one client address may hold open at once (per API process); "
            "beyond, 429.",
        ),
    ] = 16
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

    mlflow_tracking_uri: Annotated[
        str | None,
        Field(
            description="MLflow tracking URI (a server, or sqlite:///path.db) that each federation's "
            "per-round metrics and config stream to, one MLflow run per federation; unset: none. Needs the "
            "mlflow extra.",
        ),
    ] = None
    mlflow_experiment: Annotated[
        str,
        Field(min_length=1, max_length=200, description="The MLflow experiment of the federations' runs."),
    ] = "fedalign"
    tensorboard_dir: Annotated[
        Path | None,
        Field(
            description="Folder of TensorBoard event files: each federation's per-round metrics and config "
            "in a sub-folder of its own; unset: none. Needs the tensorboard extra.",
        ),
    ] = None
    trackers_interval_s: Annotated[
        float, Field(gt=0, description="How often settled rounds are streamed to the experiment trackers.")
    ] = 5.0

    @field_validator("metrics_token", "metrics_addr", "mlflow_tracking_uri", "tensorboard_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An operator's .env may leave them empty to mean "not set".
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _no_empty_values(cls, data: object) -> object:
        # An empty variable is a mistake (a compose file's unset ${VAR}), never a choice: an empty
        # data_dir would be the working directory, an empty database_url SQLite, an empty admin token
        # anyone's. Only the settings documented as "empty: unset" may be empty.
        if isinstance(data, dict):
            empty = sorted(
                f"{ENV_PREFIX}{name.upper()}"
                for name, value in data.items()
                if value == "" and name not in EMPTY_IS_UNSET
            )
            if empty:
                raise ValueError(
                    f"{', '.join(empty)} is set but empty; give it a value or unset it to use the default"
                )
        return data

    @field_validator("admin_token")
    @classmethod
    def _long_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"FEDALIGN_ADMIN_TOKEN has {len(token.get_secret_value())} characters; it must have at "
                f"least {MIN_ADMIN_TOKEN_LENGTH} (the admin token is the master key: make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or unset it to have one "
                "generated into data_dir)"
            )
        return token

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

    @model_validator(mode="after")
    def _trackers_installed(self) -> Settings:
        for tracker in self.tracker_destinations().configured():
            require(tracker)  # TrackerNotInstalled is a ValueError's kin: say which extra, at start
        return self

    def tracker_destinations(self) -> Destinations:
        return Destinations(self.mlflow_tracking_uri, self.mlflow_experiment, self.tensorboard_dir)

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
