"""A failed step as a node reports it: a short reason a person can act on, and whether a retry can help.

The node's runner (REST or Celery) and the simulator describe a step's exception with the same two
functions, so the federation's rules for failures (`fedalign.protocol.StepFailed`) see the same inputs
however the step ran.

The reason leaves the node, so it says what went wrong and no more: the exception's type and message,
truncated, with every local path cut to its file name (a path can name a patient, a customer or a user).
"""

from __future__ import annotations

import re

# The longest reason a node sends (the node API refuses longer ones).
MAX_REASON_CHARS = 1000

# An absolute POSIX path (/a/b/c.npz, ~/x/y) or Windows path (C:\a\b.txt, \\host\share\f), not part of a
# word, a fraction (3/4) or a URL; what follows its last separator is kept.
_PATH = re.compile(r"(?<![\w.:/\\])(?:~|[A-Za-z]:|\\\\[^\s\\/'\"]+)?(?:[\\/][^\s\\/'\"<>|:]+)+[\\/]?")

# Errors whose cause is the input, the code or the setup, not the moment: running the same step again on
# the same node fails the same way. Everything else (out of memory, a file system or network hiccup, a CUDA
# error) may pass.
_DETERMINISTIC: tuple[type[BaseException], ...] = (
    ValueError,  # StepError, ManifestMismatch, ArchitectureError, ParameterError, a loader's bad item
    TypeError,
    LookupError,
    AttributeError,
    NotImplementedError,
    ImportError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def without_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part (``/data/site-a/rows.csv`` -> ``rows.csv``)."""

    def last_part(match: re.Match[str]) -> str:
        parts = [p for p in re.split(r"[\\/]", match.group(0)) if p]
        return parts[-1] if parts else match.group(0)

    return _PATH.sub(last_part, text)


def failure_reason(exc: BaseException) -> str:
    """What a node reports for a step that raised ``exc``: its type and message, without local paths, at
    most `MAX_REASON_CHARS` characters."""
    message = " ".join(str(exc).split()) or "(no message)"
    reason = without_paths(f"{type(exc).__name__}: {message}")
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return reason


def is_retryable(exc: BaseException) -> bool:
    """Whether running the step again may succeed: False for errors of the input, the code or the setup."""
    return not isinstance(exc, _DETERMINISTIC)
