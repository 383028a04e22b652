"""`fedalign simulate --mlflow/--tensorboard`: every round's metrics and the config, read back with MLflow's
and TensorBoard's own readers and compared with the simulation's JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import CONFIG, write_domain
from typer.testing import CliRunner

from cli.main import app
from fedalign.trackers import flatten_config, round_values


def simulate_with(tmp_path: Path, *options: str) -> list[dict[str, Any]]:
    config = tmp_path / "fed.toml"
    config.write_text(
        CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=write_domain(tmp_path / "t.npz", 1.0, 2))
    )
    out = tmp_path / "metrics.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", str(config), "--rounds", "3", "--json", str(out), *options]
    )
    assert result.exit_code == 0, result.output
    rounds: list[dict[str, Any]] = json.loads(out.read_text())["rounds"]
    return rounds


def expected_series(rounds: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for key, value in round_values(r["metrics"], r["nodes"]).items():
            series.setdefault(key, []).append((r["round"], value))
    return series


def test_tensorboard_holds_every_round_metric_and_the_config(tmp_path: Path) -> None:
    rounds = simulate_with(tmp_path, "--tensorboard", str(tmp_path / "tb"))
    (run_dir,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    expected = expected_series(rounds)
    assert "a/task_loss" in expected and "disc_acc" in expected  # per node and federation-wide
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, points in expected.items():
        # TensorBoard stores float32.
        read = [(s.step, s.value) for s in events.Scalars(key)]
        assert [step for step, _ in read] == [step for step, _ in points], key
        assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(read, points, strict=True))
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| `hyperparameters.local_steps` | `2` |" in config_text
    assert "| `nodes.t.role` | `target` |" in config_text


def test_mlflow_holds_every_round_metric_the_config_and_the_status(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rounds = simulate_with(tmp_path, "--mlflow", uri, "--mlflow-experiment", "trackers-test")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trackers-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "vectors"
    for key, points in expected_series(rounds).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == points, key
    params = run.data.params
    assert params["rounds"] == "3" and params["model.hidden"] == "16"
    assert params["nodes.a.dataset"].startswith("npz:")


def test_flattened_configs_name_nodes_and_nested_settings() -> None:
    flat = flatten_config(
        {"rounds": 3, "model": {"input_shape": [8], "options": {}}, "nodes": [{"name": "a", "role": "t"}]}
    )
    assert flat == {"rounds": "3", "model.input_shape": "[8]", "nodes.a.role": "t"}


def test_a_tracker_whose_extra_is_missing_is_named(tmp_path: Path, monkeypatch: Any) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if pip had never installed it
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    config = tmp_path / "fed.toml"
    config.write_text(
        CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=write_domain(tmp_path / "t.npz", 1.0, 2))
    )
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", str(config), "--mlflow", f"sqlite:///{tmp_path / 'm.db'}"]
    )
    assert result.exit_code != 0
    assert "pip install 'fedalign[mlflow]'" in result.output
    assert not (tmp_path / "m.db").exists()
