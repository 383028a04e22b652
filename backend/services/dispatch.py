"""Where work goes once a transaction commits: the two seams the orchestrator is built with.

`AggregationDispatcher` runs aggregation jobs (a thread pool in the API process, or messages on the
aggregator queue); a `StepDispatcher` (`messages.StepSender`) sends Celery-mode nodes' steps to their
queues (only with a broker). Both take ids of rows that are already committed, and both may lose what they
are given: the sweep offers it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from backend.services.messages import StepMessage


class AggregationDispatcher(Protocol):
    def dispatch(self, job_ids: Iterable[int], *, again: bool = False) -> None:
        """Arrange for each job to run soon; a job already queued here is not queued twice. ``again``: the
        jobs' runner died holding them (the sweep released their leases), so whatever was sent for them
        before is gone with it: send them now even if they were sent a moment ago."""

    def close(self) -> None:
        """Stop taking jobs and wait for the running ones."""


class StepDispatcher(Protocol):
    def __call__(self, messages: Sequence[StepMessage]) -> int:
        """Send each step's message to its node's queue; returns how many were sent."""
