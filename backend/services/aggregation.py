"""Server-side aggregation: averages computed off the request path, then fed back as `AggregateDone`.

An aggregation job is a row (written by the orchestrator in the transaction that closed the phase) and a
dispatch after the commit. Whoever runs it first claims it with a lease through a conditional UPDATE, so
a job dispatched twice (by the orchestrator and by the sweep, or by two API processes) runs once; a lease
that expires (the process died) makes it claimable again. The lease is short, as a step's is: its runner
renews it every third of it (`messaging.heartbeat.Heartbeat`) until the result is stored, so an average may
take as long as it needs while one whose process died runs again within a lease and a sweep. Submissions
are folded in node order with `fedalign.aggregate.StreamingAverage`, one file open at a time, so the result
is the simulator's exactly.
With secure aggregation the masked submissions fold into a `fedalign.secagg.MaskedSum` (one tensor at a
time from the artifact store, exact in the ring, so in any order), which the survivors' seeds, rebuilt from
t stored share answers (`fedalign.secagg_shares`), then unmask into their weighted average: the
simulator's numbers again.

`backend.services.dispatch.AggregationDispatcher` is the seam for where jobs run: `ThreadPoolDispatcher` in
the API process, or a Celery dispatcher on the ``aggregator`` queue when a broker is configured.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from backend.database import Database
from backend.errors import ApiError
from backend.models import Aggregation, Artifact, Federation
from backend.services import secure
from backend.services.manifests import federation_manifest
from backend.services.orchestrator import Orchestrator, Transaction, federation_config, protocol_state
from backend.services.store import ArtifactStore, Staged
from fedalign import params, secagg
from fedalign import protocol as schedule
from fedalign.aggregate import StreamingAverage, step_past
from fedalign.config import FederationConfig
from fedalign.manifest import Manifest
from fedalign.protocol import AggregateDone, ProtocolError
from messaging.heartbeat import Heartbeat
from messaging.node_api import HEARTBEATS_PER_LEASE

log = logging.getLogger("fedalign.backend")

# A job that failed this many times marks its federation failed instead of being retried again.
MAX_ATTEMPTS = 3


class _LeaseLost(Exception):
    """The job is done, failed or another runner's: its lease's renewals stop."""


class ThreadPoolDispatcher:
    """Runs jobs on a thread pool inside the API process."""

    def __init__(self, run: Callable[[int], None], workers: int) -> None:
        self._run = run
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aggregate")
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False

    def dispatch(self, job_ids: Iterable[int], *, again: bool = False) -> None:
        # In this process a queued job is still queued, whatever ``again`` says.
        with self._lock:
            if self._closed:
                return
            for job_id in job_ids:
                if job_id not in self._queued:
                    self._queued.add(job_id)
                    self._executor.submit(self._guarded, job_id)

    def _guarded(self, job_id: int) -> None:
        try:
            self._run(job_id)
        except Exception:
            log.exception("aggregation job %s failed unexpectedly", job_id)
        finally:
            with self._lock:
                self._queued.discard(job_id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class _JobInputs:
    """What averaging one job reads from the database: each node's submission (node -> artifact key), its
    weight, where each key's file is, and for a masked sum the roster's weights and the survivors' seeds."""

    manifest: Manifest
    nodes: dict[str, str]
    weights: dict[str, float]
    paths: dict[str, str]
    masked: tuple[dict[str, float], dict[str, secagg.SeedReveal]] | None = None
    # The server step: the key of the aggregate the average is stepped past, and by how much.
    base: str | None = None
    step: float = 1.0


class AggregationService:
    def __init__(
        self, db: Database, store: ArtifactStore, orchestrator: Orchestrator, lease_seconds: float
    ) -> None:
        self.db = db
        self.store = store
        self.orchestrator = orchestrator
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.owner = f"api-{uuid.uuid4().hex[:12]}"

    def claim(self, job_id: int, lease: dt.timedelta | None = None) -> bool:
        now = dt.datetime.now(dt.UTC)
        claimable = or_(
            Aggregation.status == "pending",
            and_(Aggregation.status == "running", Aggregation.lease_expires_at < now),
        )
        return self._update(
            job_id,
            claimable,
            status="running",
            lease_owner=self.owner,
            lease_expires_at=now + (lease or self.lease),
            attempts=Aggregation.attempts + 1,
        )

    def renew(self, job_id: int, lease: dt.timedelta | None = None) -> bool:
        """Renew this runner's lease on job ``job_id``; False once the job is not this runner's to run any
        more (done, failed, or released by the sweep after the lease expired)."""
        held = and_(Aggregation.status == "running", Aggregation.lease_owner == self.owner)
        return self._update(job_id, held, lease_expires_at=dt.datetime.now(dt.UTC) + (lease or self.lease))

    def _update(self, job_id: int, condition: ColumnElement[bool], **values: Any) -> bool:
        """Job ``job_id`` updated with ``values`` where ``condition`` holds: whether it held (a conditional
        UPDATE's row count says who won a race)."""
        with self.db.write() as session:
            result = session.execute(
                update(Aggregation)
                .where(Aggregation.id == job_id, condition)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def run(self, job_id: int, lease: dt.timedelta | None = None) -> None:
        """Claim job ``job_id`` (for ``lease``, default the service's, renewed until the result is stored),
        average, store, feed the protocol."""
        if not self.claim(job_id, lease):
            return
        lease = lease or self.lease

        def beat() -> None:
            if not self.renew(job_id, lease):
                raise _LeaseLost(f"aggregation job {job_id} is no longer this runner's")

        every_s = lease.total_seconds() / HEARTBEATS_PER_LEASE
        with Heartbeat(
            beat, every_s, stops_on=lambda exc: isinstance(exc, _LeaseLost), name="aggregation-lease"
        ):
            self._run_claimed(job_id)

    def _run_claimed(self, job_id: int) -> None:
        with self.db.read() as session:
            job = session.get(Aggregation, job_id)
            federation = session.get(Federation, job.federation_id) if job else None
            if job is None or federation is None:
                return
            federation_id, key, model = job.federation_id, job.key, job.model
            inputs: _JobInputs | str  # the job's inputs, or why its masked sum cannot be unmasked
            try:
                inputs = self._inputs(session, federation, federation_config(federation), job)
            except secagg.SecAggError as exc:  # too few answers, or answers that do not agree
                inputs = f"SecAggError: {exc}"
        if isinstance(inputs, str):
            self._failed(job_id, federation_id, inputs)
            return
        # The files are read with the session closed: a large model's average takes a while.
        try:
            staged = self._compute(inputs)
        except Exception as exc:
            log.exception("aggregation %s of federation %s failed", key, federation_id)
            self._failed(job_id, federation_id, f"{type(exc).__name__}: {exc}")
            return
        self._complete(job_id, federation_id, key, model, staged)

    def fold(self, tx: Transaction, job: Aggregation) -> Staged:
        """Average job ``job`` inside ``tx``, the transaction that wrote it (`Orchestrator.fold`): its inputs
        are rows of that transaction or committed before it; the result is staged, not stored."""
        return self._compute(self._inputs(tx.session, tx.federation, tx.config(), job))

    def _inputs(
        self, session: Session, federation: Federation, config: FederationConfig, job: Aggregation
    ) -> _JobInputs:
        """What averaging ``job`` reads from the database; `secagg.SecAggError` when a masked sum cannot be
        unmasked (too few share answers, or answers that do not agree)."""
        keys = [*job.inputs.values(), *([job.base] if job.base is not None else [])]
        paths = {
            a.key: a.sha256
            for a in session.scalars(
                select(Artifact).where(Artifact.federation_id == job.federation_id, Artifact.key.in_(keys))
            )
        }
        inputs = _JobInputs(
            federation_manifest(federation).models[job.model],
            dict(job.inputs),
            dict(job.weights),
            paths,
            base=job.base,
            step=job.step,
        )
        if config.secure_aggregation:
            # Every node masked with the weights of the phase's whole roster, fixed when it opened.
            state = protocol_state(federation)
            roster = schedule.Protocol(config, state).roster_weights(job.round, job.phase)[job.model]
            seeds = secure.load_seeds(
                session,
                config,
                job.federation_id,
                job.round,
                job.phase,
                job.model,
                roster,
                list(inputs.nodes),
            )
            inputs.masked = (roster, seeds)
        return inputs

    def _compute(self, inputs: _JobInputs) -> Staged:
        """The job's result, staged: submissions folded in node order, as the simulator folds them (masked
        ones summed in the ring and unmasked)."""
        files = self._input_paths(inputs.nodes, inputs.paths)
        if inputs.masked is not None:
            roster, seeds = inputs.masked
            total = secagg.MaskedSum(inputs.manifest, roster)
            for node, path in files:
                total.offer(node, path)
            return self.store.stage_state(self._step_past(inputs, total.unmask(seeds)))
        average = StreamingAverage(inputs.manifest.shared(), inputs.weights)
        for node, path in files:
            average.offer(node, path)
        return self.store.stage_state(self._step_past(inputs, average.result()))

    def _step_past(self, inputs: _JobInputs, result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The average stepped past its base (hyperparameters.server_step), or the average itself."""
        if inputs.base is None:
            return result
        if inputs.base not in inputs.paths:
            raise FileNotFoundError(f"the base aggregate {inputs.base!r} is not in the store")
        with params.open_tensors(self.store.path(inputs.paths[inputs.base])) as base:
            return step_past(base, result, inputs.step)

    def _input_paths(self, inputs: dict[str, str], paths: dict[str, str]) -> list[tuple[str, Path]]:
        missing = sorted(k for k in inputs.values() if k not in paths)
        if missing:
            raise FileNotFoundError(f"submissions {missing} are not in the store")
        return [(node, self.store.path(paths[inputs[node]])) for node in sorted(inputs)]

    def _complete(self, job_id: int, federation_id: str, key: str, model: str, staged: Staged) -> None:
        try:
            self._store_result(job_id, federation_id, key, model, staged)
        except ApiError as exc:
            staged.discard()
            if exc.status != 404:
                raise
            log.info("federation %s was deleted while aggregating %s", federation_id, key)
        except Exception:
            staged.discard()
            raise

    def _store_result(self, job_id: int, federation_id: str, key: str, model: str, staged: Staged) -> None:
        with self.orchestrator.transaction(federation_id) as tx:
            job = tx.session.get(Aggregation, job_id)
            if job is None or job.status != "running" or job.lease_owner != self.owner:
                staged.discard()  # another runner took over after our lease expired
                return
            job.status, job.done_at, job.error = "done", dt.datetime.now(dt.UTC), None
            job.lease_owner, job.lease_expires_at = None, None
            tx.put_artifact(key, staged, kind="aggregate", model=model, round_=job.round, phase=job.phase)
            tx.event("aggregate", {"key": key, "model": model, "round": job.round, "phase": job.phase})
            if tx.federation.status in ("finished", "cancelled", "failed"):
                return
            try:
                tx.handle(AggregateDone(key))
            except ProtocolError as exc:
                # The machine moved on without it (e.g. a re-run of a finished aggregation).
                log.info("aggregate %s not needed by the protocol any more: %s", key, exc)

    def _failed(self, job_id: int, federation_id: str, error: str) -> None:
        with contextlib.suppress(ApiError), self.orchestrator.transaction(federation_id) as tx:
            job = tx.session.get(Aggregation, job_id)
            if job is None or job.status != "running" or job.lease_owner != self.owner:
                return
            job.error = error
            job.lease_owner, job.lease_expires_at = None, None
            if job.attempts >= MAX_ATTEMPTS:
                job.status = "failed"
                tx.set_status("failed", f"aggregation {job.key} failed {job.attempts} times: {error}")
            else:
                job.status = "pending"  # the sweep dispatches it again
