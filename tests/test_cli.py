"""`fedalign simulate` as a user runs it: a TOML config in, a table and a JSON file out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cli.main import app

CONFIG = """
name = "vectors"
architecture = "mlp"
rounds = 2
seed = 1
[model]
num_classes = 3
input_shape = [8]
hidden = 16
[hyperparameters]
local_steps = 2
disc_steps = 2
batch_size = 16
[[nodes]]
name = "a"
role = "source"
dataset = "npz:{a}"
[[nodes]]
name = "t"
role = "target"
dataset = "npz:{t}"
"""


def write_domain(path: Path, shift: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 8)).astype(np.float32) + shift + np.eye(8, dtype=np.float32)[y] * 2
    np.savez(path, x=x, y=y)
    return path


def test_simulate_prints_per_round_metrics_and_writes_json(tmp_path: Path) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(
        CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=write_domain(tmp_path / "t.npz", 1.0, 2))
    )
    out = tmp_path / "metrics.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", str(config), "--rounds", "3", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "D acc" in result.output and "target acc" in result.output
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert {"disc_acc", "disc_acc_source", "disc_acc_target", "target_acc"} <= set(rounds[-1]["metrics"])
    assert set(rounds[-1]["nodes"]) == {"a", "t"}


def test_a_bad_config_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('algorithm = "fedprox"\n[[nodes]]\nname = "a"\nrole = "source"\ndataset = "x"\n')
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config)])
    assert result.exit_code == 2
    assert "algorithm" in result.output and "fedalign" in result.output
    missing = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_shipped_example_config_is_valid() -> None:
    from fedalign.config import load_config

    config = load_config(Path(__file__).parent.parent / "examples" / "digits-mnistm.toml")
    assert config.target.dataset == "digits:mnistm"
    assert [s.dataset for s in config.sources] == ["digits:mnist", "digits:optdigits", "digits:syn"]


def test_simulate_with_an_unlabelled_target_shows_no_target_accuracy(tmp_path: Path) -> None:
    unlabelled = tmp_path / "t.npz"
    with np.load(write_domain(tmp_path / "t-labelled.npz", 1.0, 2)) as arrays:
        np.savez(unlabelled, x=arrays["x"])  # the target's samples, no 'y' at all
    config = tmp_path / "fed.toml"
    config.write_text(CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=unlabelled))
    out = tmp_path / "metrics.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "D acc" in result.output and "src val acc" in result.output
    assert "target acc" not in result.output
    rounds = json.loads(out.read_text())["rounds"]
    assert all("target_acc" not in r["metrics"] and "target_acc" not in r["nodes"]["t"] for r in rounds)
    assert {"disc_acc", "disc_acc_source", "disc_acc_target", "source_val_acc"} <= set(rounds[-1]["metrics"])


def test_simulate_refuses_an_unlabelled_source_saying_why(tmp_path: Path) -> None:
    unlabelled = tmp_path / "a.npz"
    np.savez(unlabelled, x=np.zeros((40, 8), np.float32))
    config = tmp_path / "fed.toml"
    config.write_text(CONFIG.format(a=unlabelled, t=write_domain(tmp_path / "t.npz", 1.0, 2)))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config)])
    assert result.exit_code == 1
    assert "is a source, but its dataset" in result.output and "task loss" in result.output
