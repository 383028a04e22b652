import json
from pathlib import Path

from bench.logs import read_runs


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n\n" for r in records))
    return path


def test_a_run_logged_again_in_a_later_log_replaces_the_earlier_record(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.jsonl", [{"key": "k1", "target_acc": 0.5}, {"key": "k2", "target_acc": 0.6}])
    later = _write(tmp_path / "b.jsonl", [{"key": "k1", "target_acc": 0.7}])
    runs = read_runs([first, later])
    assert {k: r["target_acc"] for k, r in runs.items()} == {"k1": 0.7, "k2": 0.6}
    # The order of the logs is the rule: read the other way round, the first log's run wins.
    assert read_runs([later, first])["k1"]["target_acc"] == 0.5
