"""Child processes kept running: ``fedalign up``'s API and worker."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STOP_TIMEOUT_S = 15.0
# A child that dies more often than this within the window is not started again: everything stops.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
PR_SET_PDEATHSIG = 1


class UpError(RuntimeError):
    """Something `fedalign up` cannot get past, said so that a user can act on it."""


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


def command(*args: str) -> list[str]:
    """A `fedalign` command run by this interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "cli", *args]


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Child processes in their own session (Ctrl-C reaches only the supervisor, which then stops them in
    order); one that dies is started again, unless it keeps dying."""

    def __init__(self, env: dict[str, str], say: Callable[[str], None]) -> None:
        self.env = env
        self.say = say
        self.children: list[Child] = []

    def start(self, child: Child) -> Child:
        child.process = subprocess.Popen(
            child.argv,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if child not in self.children:
            self.children.append(child)
        return child

    def check(self) -> None:
        """Start again what died; raise UpError for a child that keeps dying."""
        now = time.monotonic()
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(child.restarts) > MAX_RESTARTS:
                raise UpError(f"the {child.name} process keeps exiting (last exit status {code}); stopping")
            self.say(f"the {child.name} process exited with status {code}; starting it again")
            self.start(child)

    def alive(self, child: Child) -> bool:
        return child.process is not None and child.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to every child, newest first (the worker before the API it talks to), then SIGKILL to
        what is still running after STOP_TIMEOUT_S."""
        for child in reversed(self.children):
            if self.alive(child):
                assert child.process is not None
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in reversed(self.children):
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
