"""Submissions sent from a background thread, so that a worker serving several nodes runs the next step
while the server stores the last one.

A Celery worker that serves several nodes of a phase runs their steps one after another; a step's
submission (uploads and completion, one request) is mostly the server's time: the body stored, the
completion's transaction, and for a phase's last step the small averages and the next phase's steps. Sent
from here, it overlaps with the next node's claim and compute instead of adding to them.

What a node sees does not change. Its state file is saved before the submission is handed over, as before;
its next step is claimed only once its own earlier submissions have been answered (`wait_for`), so a node's
steps still go one after another, each on the state the previous one left. The step's heartbeat runs until
its submission is answered. A submission that keeps failing on the network or with 5xx answers is given
up after `RETRY_DELAYS_S`: its heartbeat stops, the short lease runs out, the server's sweep offers the
step again, and this node answers it from its saved result (`workers.client.NodeRunner._train`).
Submissions are sent in the order they were handed over, one at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("fedalign.workers")

# Waits between tries of a submission that failed on the network or with a 5xx answer (about 15 s in all:
# within a few heartbeats, well before the server gives up on the lease that the heartbeat keeps alive).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Submission:
    node: str  # whose submission: its next step waits for it
    step_id: int
    send: Callable[[], object]  # the request
    done: Callable[[], None]  # called once it is answered or given up (stops the step's heartbeat)


class BackgroundSubmitter:
    """One thread that sends `Submission`s in order; `wait_for` a node before claiming its next step.

    ``transient``: whether a failed send is worth trying again (the network, a 5xx answer); any other
    failure (a 409: the step was cancelled or the federation ended) is logged and the submission dropped,
    as the synchronous path drops it."""

    def __init__(
        self, transient: Callable[[Exception], bool], retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    ) -> None:
        self.transient = transient
        self.retry_delays_s = retry_delays_s
        self._queue: queue.Queue[Submission | None] = queue.Queue()
        self._pending: Counter[str] = Counter()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, submission: Submission) -> None:
        """Hand ``submission`` over; it is sent after every one handed over before it."""
        with self._changed:
            self._pending[submission.node] += 1
        self._start()
        self._queue.put(submission)

    def wait_for(self, node: str, timeout_s: float | None = None) -> bool:
        """Until every submission of ``node`` handed over so far is answered or given up; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending[node] == 0, timeout_s)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Until every submission handed over so far is answered (a worker that stops sends what it ran)."""
        with self._changed:
            return self._changed.wait_for(lambda: not +self._pending, timeout_s)

    def _start(self) -> None:
        with self._changed:
            if self._thread is None:
                # A daemon: a worker killed outright loses what is queued, which the sweep recovers.
                self._thread = threading.Thread(target=self._run, name="submissions", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while (submission := self._queue.get()) is not None:
            try:
                self._send(submission)
            finally:
                submission.done()
                with self._changed:
                    self._pending[submission.node] -= 1
                    self._changed.notify_all()

    def _send(self, submission: Submission) -> None:
        for attempt, delay in enumerate((*self.retry_delays_s, None)):
            try:
                submission.send()
                return
            except Exception as exc:
                if not self.transient(exc):
                    log.warning("step %s: submission not sent: %s", submission.step_id, exc)
                    return
                error = exc
            if delay is None:
                log.error(
                    "step %s: submission failed %d times (%s); the server offers the step again once its "
                    "lease runs out",
                    submission.step_id,
                    attempt + 1,
                    error,
                )
                return
            log.warning(
                "step %s: submission failed (%s); trying again in %.1f s", submission.step_id, error, delay
            )
            time.sleep(delay)
