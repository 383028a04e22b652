"""Streaming federations to experiment trackers (MLflow, TensorBoard) from the database, after the fact.

The federation never waits for a tracker: a periodic pass (in the API process, like the sweep) reads each
started federation's settled rounds (`fedalign.metrics.settled_round`) from the metrics table and logs
those its tracker run does not have yet, then records how far it got in ``tracker_exports``. A tracker that
is down is retried on the next pass (its error is kept on the row meanwhile); a restarted API reopens the
same run (MLflow: by its id; TensorBoard: its folder) and goes on from the recorded round. A round can be
logged twice only if the process dies between the tracker's write and the row's update: both trackers
keep the last value of a step.

With several API processes, set the tracker destinations on one of them: the passes take no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from backend.database import Database
from backend.models import Federation, Metric, TrackerExport
from backend.services.orchestrator import federation_config, protocol_state
from fedalign.metrics import settled_round
from fedalign.trackers import Destinations, RunStatus, TrackerName, TrackerRun, open_run, selected
from messaging.node_api import TERMINAL_STATUSES

log = logging.getLogger("fedalign.backend")

RUN_STATUS: dict[str, RunStatus] = {"finished": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
MAX_ERROR_CHARS = 2000


class TrackerExporter:
    def __init__(self, db: Database, destinations: Destinations) -> None:
        self.db = db
        self.destinations = destinations
        self._runs: dict[tuple[str, TrackerName], TrackerRun] = {}  # the runs this process has open

    def export_once(self) -> int:
        """One pass over the federations still to stream; the number of rounds logged."""
        if not self.destinations.configured():
            return 0
        with self.db.read() as session:
            ids = list(
                session.scalars(
                    select(Federation.id).where(
                        Federation.started_at.is_not(None), Federation.trackers_done.is_(False)
                    )
                )
            )
        return sum(self._export(federation_id) for federation_id in ids)

    def _export(self, federation_id: str) -> int:
        with self.db.read() as session:
            federation = session.get(Federation, federation_id)
            if federation is None:
                return 0
            config = federation_config(federation)
            state = protocol_state(federation)
            status = federation.status
            rows = {
                row.tracker: (row.run_id, row.exported_round, row.finished)
                for row in session.scalars(
                    select(TrackerExport).where(TrackerExport.federation_id == federation_id)
                )
            }
        terminal = status in TERMINAL_STATUSES
        # A run that ended early (cancelled, failed, out of privacy budget) has no later round to wait for.
        last = settled_round(state.round, terminal or state.finished, state.round)
        trackers = selected(config.trackers, self.destinations)
        logged = 0
        for tracker in trackers:
            run_id, exported, finished = rows.get(tracker, (None, 0, False))
            if finished:
                continue
            try:
                run = self._run(federation_id, tracker, config.name, config.model_dump(mode="json"), run_id)
                rounds = self._rounds(federation_id, exported, last)
                for round_, (metrics, nodes) in sorted(rounds.items()):
                    run.log_round(round_, metrics, nodes)
                if terminal:
                    run.finish(RUN_STATUS[status])
                    self._runs.pop((federation_id, tracker), None)
            except Exception as exc:  # the tracker's failure is the tracker's: noted, retried next pass
                log.warning("streaming federation %s to %s failed: %s", federation_id, tracker, exc)
                self._record(federation_id, tracker, run_id, exported, False, str(exc)[:MAX_ERROR_CHARS])
                self._runs.pop((federation_id, tracker), None)
                continue
            logged += len(rounds)
            self._record(federation_id, tracker, run.run_id, max(exported, last), terminal, None)
        if terminal and self._all_finished(federation_id, trackers):
            with self.db.write() as session:
                done = session.get(Federation, federation_id)
                if done is not None:
                    done.trackers_done = True
        return logged

    def _run(
        self, federation_id: str, tracker: TrackerName, name: str, config: dict[str, Any], run_id: str | None
    ) -> TrackerRun:
        key = (federation_id, tracker)
        if key not in self._runs:
            self._runs[key] = open_run(tracker, self.destinations, name, config, federation_id, run_id)
        return self._runs[key]

    def _rounds(
        self, federation_id: str, after: int, last: int
    ) -> dict[int, tuple[dict[str, float], dict[str, dict[str, float]]]]:
        """Rounds after `after` up to `last`: each one's federation-wide and per-node metrics."""
        rounds: dict[int, tuple[dict[str, float], dict[str, dict[str, float]]]] = defaultdict(
            lambda: ({}, defaultdict(dict))
        )
        if last <= after:
            return {}
        with self.db.read() as session:
            for metric in session.scalars(
                select(Metric).where(
                    Metric.federation_id == federation_id, Metric.round > after, Metric.round <= last
                )
            ):
                federation_wide, nodes = rounds[metric.round]
                if metric.node is None:
                    federation_wide[metric.name] = metric.value
                else:
                    nodes[metric.node][metric.name] = metric.value
        return dict(rounds)

    def _record(
        self,
        federation_id: str,
        tracker: str,
        run_id: str | None,
        exported: int,
        finished: bool,
        error: str | None,
    ) -> None:
        with self.db.write() as session:
            row = session.get(TrackerExport, (federation_id, tracker))
            if row is None:
                if session.get(Federation, federation_id) is None:
                    return  # deleted meanwhile
                row = TrackerExport(federation_id=federation_id, tracker=tracker)
                session.add(row)
            row.run_id, row.exported_round, row.finished, row.error = run_id, exported, finished, error

    def _all_finished(self, federation_id: str, trackers: tuple[TrackerName, ...]) -> bool:
        with self.db.read() as session:
            finished = set(
                session.scalars(
                    select(TrackerExport.tracker).where(
                        TrackerExport.federation_id == federation_id, TrackerExport.finished.is_(True)
                    )
                )
            )
        return set(trackers) <= finished

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.export_once)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("streaming to the experiment trackers failed; retrying in %.1f s", interval_s)
            await asyncio.sleep(interval_s)
