"""The accuracy benchmark's run log (bench.accuracy --log): each run says where and from which code it ran,
and a logged run is not run again."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from bench import accuracy
from bench.harness import git_commit


def test_a_logged_run_records_its_platform_and_commit_and_is_not_rerun(tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    argv = ["--family", "signals", "--methods", "fedavg", "--targets", "lab", "--seeds", "0", "--steps", "20"]
    argv += ["--workers", "1", "--log", str(log), "--json", str(tmp_path / "runs.json")]
    accuracy.main(argv)
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["platform"] == {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }
    assert record["commit"] == git_commit()
    assert 0.0 <= record["target_acc"] <= 1.0

    accuracy.main(argv)  # resumed: the run is in the log already
    assert len(log.read_text().splitlines()) == 1
