"""Server-side aggregation when it goes wrong: every failure path of `AggregationService`, on the real
database (SQLite and PostgreSQL), the real artifact store and the API's own dispatcher.

Failures come in through real seams: a stored submission whose bytes were corrupted on disk, and a second
`AggregationService` on the same database and store standing in for an aggregator process that claimed a
job and stopped (or stalled past its lease). Each run then goes on to its end and must give the simulator's
metrics and model exactly: a failure that was recovered from leaves no trace in the numbers.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from api_support import RUN_TIMEOUT_S, Api, drive, runners_for, tiny_settings
from sqlalchemy import select
from test_api_aggregations import events_of, lose_dispatches, restore_dispatches, wait_until
from test_api_end_to_end import served_rounds

from backend.database import Database, make_engine
from backend.models import Aggregation, Artifact
from backend.services.aggregation import MAX_ATTEMPTS, AggregationService
from backend.services.store import ArtifactStore, Staged
from backend.services.sweep import Sweeper
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.simulate import simulate
from workers.client import NodeRunner

DISC = "r1/disc1/D"  # round 1's discriminator average: the first server-side aggregation of a run


@dataclass
class Waiting:
    fid: str
    tokens: dict[str, str]
    runners: dict[str, NodeRunner]
    job_id: int


def disc_job_waiting(api: Api, specs: dict[str, str]) -> Waiting:
    """A federation of real nodes whose round-1 discriminator phase closed with its aggregation job still
    pending (its dispatch was lost)."""
    federation, tokens = api.federation_with_nodes(specs, **tiny_settings())
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    lose_dispatches(api)
    drive(runners, max_steps=6)  # setup and the discriminator steps of the three nodes
    assert api.ok("GET", f"/api/v1/federations/{fid}/rounds/1")["phases"][0]["state"] == "aggregating"
    assert job(api, fid)["status"] == "pending"
    restore_dispatches(api)
    with api.services.db.read() as session:
        job_id = session.scalars(select(Aggregation.id).where(Aggregation.key == DISC)).one()
    return Waiting(fid, tokens, runners, job_id)


def job(api: Api, fid: str, key: str = DISC) -> dict[str, Any]:
    """The aggregation job as the API lists it."""
    items = api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]
    return next(j for j in items if j["key"] == key)


def lease_expiry(api: Api, job_id: int) -> dt.datetime:
    with api.services.db.read() as session:
        expires = session.get(Aggregation, job_id).lease_expires_at  # type: ignore[union-attr]
    assert expires is not None
    return expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)


def wait_past(moment: dt.datetime) -> None:
    """Until the wall clock has passed ``moment`` (a lease's expiry: the event is time itself)."""
    wait_until(lambda: dt.datetime.now(dt.UTC) > moment, RUN_TIMEOUT_S)


def stopped_aggregator(
    api: Api, lease_seconds: float, store: ArtifactStore | None = None
) -> AggregationService:
    """Another aggregator on the same database and store (another process, as far as leases go)."""
    services = api.services
    return AggregationService(services.db, store or services.store, services.orchestrator, lease_seconds)


def finish_and_compare(api: Api, fid: str, runners: dict[str, NodeRunner], specs: dict[str, str]) -> None:
    """The nodes run to the end; metrics and the published model are the simulator's, exactly."""
    drive(runners)
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    nodes = [
        {"name": n, "role": "target" if n == "omega" else "source", "dataset": spec}
        for n, spec in specs.items()
    ]
    reference = simulate(FederationConfig.model_validate({**tiny_settings(), "nodes": nodes}))
    assert served_rounds(api, fid) == {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    served = params.from_bytes(api.request("GET", f"/api/v1/federations/{fid}/model").content)
    assert served.keys() == reference.models["target_model"].keys()
    for name, tensor in reference.models["target_model"].items():
        assert torch.equal(served[name], tensor), name


def stored_submission(api: Api, fid: str, job_id: int, node: str) -> Path:
    """The file in the artifact store that holds ``node``'s input to the job."""
    with api.services.db.read() as session:
        key = session.get(Aggregation, job_id).inputs[node]  # type: ignore[union-attr]
        sha = session.scalars(
            select(Artifact.sha256).where(Artifact.federation_id == fid, Artifact.key == key)
        ).one()
    return Path(api.services.store.path(sha))


def test_a_failing_aggregation_is_retried_up_to_max_attempts_then_fails_the_federation_with_its_reason(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    """beta's stored submission is corrupted on disk. Each sweep dispatches the job again and each attempt
    fails, with the reason on the job, until the MAX_ATTEMPTS-th marks the job and the federation failed
    (the reason in the federation and in its status event); the sweep then leaves it alone. With the file
    restored, the admin's re-run resets the job, the federation runs again and ends with the simulator's
    numbers."""
    specs = vector_specs()
    waiting = disc_job_waiting(api, specs)
    fid, runners, job_id = waiting.fid, waiting.runners, waiting.job_id
    corrupted = stored_submission(api, fid, job_id, "beta")
    original = corrupted.read_bytes()
    corrupted.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")

    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert api.services.sweeper.sweep_once().dispatched == 1
        wait_until(lambda n=attempt: job(api, fid)["attempts"] == n and job(api, fid)["status"] != "running")
        failed = job(api, fid)
        federation = api.ok("GET", f"/api/v1/federations/{fid}")
        assert failed["error"] and failed["done_at"] is None, failed
        if attempt < MAX_ATTEMPTS:
            assert failed["status"] == "pending", failed
            assert (federation["status"], federation["stall_reason"]) == ("running", None), federation
    assert failed["status"] == "failed"
    reason = f"aggregation {DISC} failed {MAX_ATTEMPTS} times: {failed['error']}"
    assert (federation["status"], federation["stall_reason"]) == ("failed", reason)
    statuses = [e["payload"] for e in events_of(api, fid) if e["type"] == "status"]
    assert statuses[-1] == {"status": "failed", "reason": reason}
    assert api.services.sweeper.sweep_once().dispatched == 0, "a failed job is not retried by the sweep"
    assert job(api, fid)["attempts"] == MAX_ATTEMPTS
    assert all(api.task(token) is None for token in waiting.tokens.values()), "nothing runs while failed"

    corrupted.write_bytes(original)
    rerun = api.ok("POST", f"/api/v1/federations/{fid}/aggregations", 202, json={"key": DISC})
    assert [j["key"] for j in rerun["items"]] == [DISC]
    wait_until(lambda: job(api, fid)["status"] == "done")
    assert (job(api, fid)["attempts"], job(api, fid)["error"]) == (1, None)
    federation = api.ok("GET", f"/api/v1/federations/{fid}")
    assert (federation["status"], federation["stall_reason"]) == ("running", None), federation
    finish_and_compare(api, fid, runners, specs)


def test_a_job_whose_runner_stopped_is_run_again_by_the_sweep_once_its_lease_expires(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    """An aggregator claims the job and stops. While its lease holds the sweep leaves the job alone (no
    second runner), once it expires the sweep releases it and dispatches it again at once (whatever was sent
    for it went with the dead runner), the API's aggregator claims it (a second attempt) and computes it,
    and the run ends with the simulator's numbers."""
    specs = vector_specs()
    waiting = disc_job_waiting(api, specs)
    fid, runners, job_id = waiting.fid, waiting.runners, waiting.job_id
    assert stopped_aggregator(api, lease_seconds=1).claim(job_id)
    assert (job(api, fid)["status"], job(api, fid)["attempts"]) == ("running", 1)
    expires = lease_expiry(api, job_id)
    assert api.services.sweeper.sweep_once(expires - dt.timedelta(milliseconds=1)).dispatched == 0

    calls: list[tuple[list[int], bool]] = []
    dispatch = api.services.dispatcher.dispatch

    def recording(job_ids: Any, again: bool = False) -> None:
        calls.append((list(job_ids), again))
        dispatch(job_ids, again=again)

    api.services.dispatcher.dispatch = recording
    wait_past(expires)
    assert api.services.sweeper.sweep_once().dispatched == 1
    assert calls == [([job_id], True)]
    wait_until(lambda: job(api, fid)["status"] == "done")
    assert (job(api, fid)["attempts"], job(api, fid)["error"]) == (2, None)
    assert api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt"
    finish_and_compare(api, fid, runners, specs)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL has no database-wide write lock
def test_a_sweep_with_no_lease_to_release_does_not_wait_for_the_write_lock(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    """SQLite has one writer at a time. A sweep pass (every 2 s) that has no expired lease to release must
    not queue for that lock, or it holds up the nodes' claims and submissions behind it: with another writer
    holding the database, an impatient sweeper (no busy wait) still dispatches the pending job, which runs
    once the lock is free, and the run ends with the simulator's numbers."""
    specs = vector_specs()
    waiting = disc_job_waiting(api, specs)
    fid = waiting.fid
    impatient = Sweeper(
        Database(make_engine(str(api.services.db.engine.url), busy_timeout_ms=0)),
        api.services.orchestrator,
        api.services.dispatcher,
    )
    calls: list[list[int]] = []
    dispatch = api.services.dispatcher.dispatch

    def recording(job_ids: Any, again: bool = False) -> None:
        calls.append(list(job_ids))
        dispatch(job_ids, again=again)

    api.services.dispatcher.dispatch = recording
    try:
        with api.services.db.write() as session:
            session.execute(select(1))  # the write transaction begins (BEGIN IMMEDIATE): the lock is held
            report = impatient.sweep_once()
    finally:
        impatient.db.dispose()
    assert (report.dispatched, calls) == (1, [[waiting.job_id]])
    wait_until(lambda: job(api, fid)["status"] == "done")
    finish_and_compare(api, fid, waiting.runners, specs)


class HeldStore(ArtifactStore):
    """The artifact store, except that the first average staged waits until released: its aggregator is
    mid-job (claimed, inputs folded, result not yet written) for as long as the test needs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.holding = threading.Event()
        self.release = threading.Event()
        self.staged: list[Staged] = []

    def stage_state(self, state: Mapping[str, torch.Tensor]) -> Staged:
        self.holding.set()
        assert self.release.wait(RUN_TIMEOUT_S), "never released"
        staged = super().stage_state(state)
        self.staged.append(staged)
        return staged


class FrozenAggregator(AggregationService):
    """An aggregator whose process froze (stopped by a signal, or a machine that stalls): its lease's renewals
    stop with its work, so nothing of them reaches the database."""

    def renew(self, job_id: int, lease: dt.timedelta | None = None) -> bool:
        return True


def test_a_slow_average_renews_its_lease_and_is_not_taken_over(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    """An aggregator whose average takes several times its lease renews the lease while it works: sweeps
    after the lease it was claimed with leave the job alone (no second runner, no second attempt), and when
    its average is done it is stored once and the run ends with the simulator's numbers."""
    specs = vector_specs()
    waiting = disc_job_waiting(api, specs)
    fid, runners, job_id = waiting.fid, waiting.runners, waiting.job_id
    held = HeldStore(api.services.store.root)
    lease = 2.0
    slow = threading.Thread(target=stopped_aggregator(api, lease, store=held).run, args=(job_id,))
    slow.start()
    try:
        assert held.holding.wait(RUN_TIMEOUT_S), "the slow aggregator never got to its result"
        claimed_until = lease_expiry(api, job_id)
        for leases in (0.25, 1.25, 2.25):  # sweeps after the lease it was claimed with ran out
            wait_past(claimed_until + dt.timedelta(seconds=leases * lease))
            assert api.services.sweeper.sweep_once().dispatched == 0
            assert lease_expiry(api, job_id) > dt.datetime.now(dt.UTC), "the lease was renewed"
        assert (job(api, fid)["status"], job(api, fid)["attempts"]) == ("running", 1)
    finally:
        held.release.set()
        slow.join(RUN_TIMEOUT_S)
    assert not slow.is_alive()
    done = job(api, fid)
    assert (done["status"], done["attempts"], done["error"]) == ("done", 1, None)
    assert sum(e["type"] == "aggregate" and e["payload"]["key"] == DISC for e in events_of(api, fid)) == 1
    finish_and_compare(api, fid, runners, specs)


def test_a_result_computed_after_the_lease_was_lost_is_discarded(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    """An aggregator claims the job and freezes past its lease; the sweep hands the job to the API's
    aggregator, which completes it and moves the run on. When the frozen one finally writes its result, that
    result is discarded (its staged file deleted) and nothing changes: the job, the stored aggregate, the
    events and the round stay as the second runner left them."""
    specs = vector_specs()
    waiting = disc_job_waiting(api, specs)
    fid, runners, job_id = waiting.fid, waiting.runners, waiting.job_id
    held = HeldStore(api.services.store.root)
    services = api.services
    frozen = FrozenAggregator(services.db, held, services.orchestrator, lease_seconds=1)
    slow = threading.Thread(target=frozen.run, args=(job_id,))
    slow.start()
    try:
        assert held.holding.wait(RUN_TIMEOUT_S), "the slow aggregator never got to its result"
        assert (job(api, fid)["status"], job(api, fid)["attempts"]) == ("running", 1)
        wait_past(lease_expiry(api, job_id))
        assert api.services.sweeper.sweep_once().dispatched == 1
        wait_until(lambda: job(api, fid)["status"] == "done")

        def snapshot() -> tuple[Any, ...]:
            return (
                api.ok("GET", f"/api/v1/federations/{fid}/aggregations"),
                api.ok("GET", f"/api/v1/federations/{fid}/rounds/1"),
                api.ok("GET", f"/api/v1/federations/{fid}"),
                events_of(api, fid),
                api.request("GET", f"/api/v1/node/artifacts/{DISC}", token=waiting.tokens["omega"]).content,
            )

        before = snapshot()
        assert (job(api, fid)["attempts"], before[2]["phase"]) == (2, "adapt")
        assert sum(e["type"] == "aggregate" and e["payload"]["key"] == DISC for e in before[3]) == 1
    finally:
        held.release.set()
        slow.join(RUN_TIMEOUT_S)
    assert not slow.is_alive()
    assert [s.path.exists() for s in held.staged] == [False], "the late result's staged file is deleted"
    assert snapshot() == before
    finish_and_compare(api, fid, runners, specs)
