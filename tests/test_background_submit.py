"""The worker's background submissions: in order, a node's next step after its previous submission,
transient failures tried again, the heartbeat stopped once a submission is answered or given up."""

from __future__ import annotations

import threading

from workers.background_submit import BackgroundSubmitter, Submission


class Transient(Exception):
    pass


def submitter() -> BackgroundSubmitter:
    return BackgroundSubmitter(lambda exc: isinstance(exc, Transient), retry_delays_s=(0.0, 0.0))


def test_submissions_are_sent_in_the_order_they_were_handed_over() -> None:
    sent: list[int] = []
    done: list[int] = []
    background = submitter()
    for step in range(20):
        node = f"node-{step % 3}"
        send, answered = (lambda s=step: sent.append(s)), (lambda s=step: done.append(s))
        background.submit(Submission(node, step, send, answered))
    assert background.drain(10)
    assert sent == list(range(20)) and done == list(range(20))


def test_a_node_waits_only_for_its_own_submissions() -> None:
    release = threading.Event()
    background = submitter()
    background.submit(Submission("alpha", 1, lambda: release.wait(10), lambda: None))
    assert not background.wait_for("alpha", timeout_s=0.2), "alpha's submission is still in flight"
    assert background.wait_for("beta", timeout_s=0), "beta handed nothing over"
    release.set()
    assert background.wait_for("alpha", timeout_s=10)


def test_a_transient_failure_is_tried_again_and_a_refusal_is_not() -> None:
    tries = {"flaky": 0, "refused": 0}
    stopped: list[str] = []

    def flaky() -> None:
        tries["flaky"] += 1
        if tries["flaky"] < 3:
            raise Transient("connection reset")

    def refused() -> None:
        tries["refused"] += 1
        raise ValueError("409: the step was cancelled")

    background = submitter()
    background.submit(Submission("alpha", 1, flaky, lambda: stopped.append("flaky")))
    background.submit(Submission("beta", 2, refused, lambda: stopped.append("refused")))
    assert background.drain(10)
    assert tries == {"flaky": 3, "refused": 1}
    assert stopped == ["flaky", "refused"]


def test_a_submission_that_keeps_failing_is_given_up_and_its_heartbeat_stopped() -> None:
    tries: list[int] = []
    stopped = threading.Event()

    def down() -> None:
        tries.append(1)
        raise Transient("the API is down")

    background = submitter()
    background.submit(Submission("alpha", 1, down, stopped.set))
    assert background.wait_for("alpha", timeout_s=10)
    assert len(tries) == 3, "one try and one for each delay"
    assert stopped.is_set()
    # The thread goes on with later submissions.
    later: list[int] = []
    background.submit(Submission("alpha", 2, lambda: later.append(2), lambda: None))
    assert background.drain(10) and later == [2]
