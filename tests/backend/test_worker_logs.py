"""A worker's output is FedAlign's own: its logs in the API's format (JSON lines with
FEDALIGN_LOG_FORMAT=json), no Celery banner, no Celery warning, no shutdown line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from process_support import START_TIMEOUT_S, child_env, cli, wait_until

# messaging.logs.TextFormatter: "time level logger: message [fields]".
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) fedalign\.worker: \S")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_worker_logs_in_the_apis_format_and_nothing_of_celerys(log_format: str, tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = child_env(
        FEDALIGN_DATA_DIR=str(tmp_path / "data"),
        FEDALIGN_BROKER_URL="filesystem://",
        FEDALIGN_LOG_FORMAT=log_format,
    )
    with out.open("wb") as stdout, err.open("wb") as stderr:
        worker = subprocess.Popen(
            cli("worker", "--aggregator", "--loglevel", "INFO"), env=env, stdout=stdout, stderr=stderr
        )
    try:

        def ready() -> bool:
            assert worker.poll() is None, err.read_text()
            return "worker ready" in err.read_text()

        wait_until(ready, START_TIMEOUT_S, "the worker")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, err.read_text()
    assert out.read_text().splitlines() == ["worker for aggregator"]  # the command's own line

    records = err.read_text().splitlines()
    if log_format == "json":
        parsed = [json.loads(line) for line in records]  # every line is one JSON object
        assert all(set(r) >= {"level", "logger", "message", "federation", "round", "node"} for r in parsed)
        messages = [(r["logger"], r["message"]) for r in parsed]
    else:
        assert all(TEXT_RECORD.match(line) for line in records), records
        messages = [("fedalign.worker", line.split(": ", 1)[1]) for line in records]
    assert ("fedalign.worker", "worker ready, consuming aggregator") in messages
    root = [m for _, m in messages if m.startswith("running as root")]
    assert len(root) == (1 if os.geteuid() == 0 else 0), messages
