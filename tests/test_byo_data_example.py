"""The "Bring your own data" page's worked example runs as the page says: its CSV files written by
examples/byo-data/make_csv.py, its loader plug-in examples/byo-data/csv_loader.py, its config through
`fedalign simulate`. The example's code is the tested code: nothing here copies it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "byo-data"


@pytest.fixture
def example_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example's folder with its data written, as the current directory and on sys.path (the
    page's `PYTHONPATH=.`)."""
    folder = tmp_path / "byo-data"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("data", "__pycache__"))
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    for module in ("make_csv", "csv_loader"):  # each test imports its own copy's modules
        monkeypatch.delitem(sys.modules, module, raising=False)
    import make_csv

    assert make_csv.main([]) == folder / "data"
    return folder


def test_the_csv_loader_example_runs_through_fedalign_simulate(example_folder: Path) -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", "signals-csv.toml", "--rounds", "10", "--json", "metrics.json"]
    )
    assert result.exit_code == 0, result.output
    assert "target acc" in result.output
    rounds = json.loads((example_folder / "metrics.json").read_text())["rounds"]
    last = rounds[-1]["metrics"]
    assert {"disc_acc", "source_val_acc", "target_acc"} <= set(last)
    assert last["source_val_acc"] > 1 / 6  # better than chance on six classes after ten rounds


def test_without_its_evaluation_split_the_example_target_has_no_target_acc(example_folder: Path) -> None:
    config = example_folder / "signals-csv.toml"
    config.write_text(config.read_text().replace("&test=data/smooth-test.csv", ""))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", "signals-csv.toml", "--rounds", "5", "--json", "metrics.json"]
    )
    assert result.exit_code == 0, result.output
    assert "target acc" not in result.output
    rounds = json.loads((example_folder / "metrics.json").read_text())["rounds"]
    assert "target_acc" not in rounds[-1]["metrics"] and "source_val_acc" in rounds[-1]["metrics"]
