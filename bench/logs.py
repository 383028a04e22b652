"""The accuracy logs that bench.accuracy appends to: one JSON record per run, keyed by its job."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_runs(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Each logged run by its key, reading the logs in order.

    A run logged again, in the same log or a later one (the same key: a rerun on other CPU kernels, where
    one seed gives another number), replaces the earlier record rather than counting twice.
    """
    runs: dict[str, dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[record["key"]] = record
    return runs
