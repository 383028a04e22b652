"""A served federation streamed to MLflow and TensorBoard by the API (`backend.services.trackers`): read
back with each tracker's own reader and compared with the metrics table; resumed by a restarted API
without a round twice; a federation never waits for a tracker that is down."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import ADMIN_TOKEN, Api, drive, runners_for, tiny_settings
from mlflow.tracking import MlflowClient
from sqlalchemy import select
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from backend.models import Federation, Metric, TrackerExport
from backend.services.trackers import TrackerExporter
from backend.settings import Settings
from fedalign.trackers import Destinations

ROUNDS = 3


@pytest.fixture
def interval_s() -> float:
    """How often the app's own exporter runs; a test that drives exporters itself sets it out of the way."""
    return 0.2


@pytest.fixture
def with_mlflow() -> bool:
    return True


@pytest.fixture
def settings(db_url: str, tmp_path: Path, interval_s: float, with_mlflow: bool) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        admin_token=ADMIN_TOKEN,
        sweep_interval_s=3600,
        aggregation_workers=1,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}" if with_mlflow else None,
        mlflow_experiment="served",
        tensorboard_dir=tmp_path / "tb",
        trackers_interval_s=interval_s,
    )


def table_series(api: Api, federation_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the federation from the database, named as the trackers name them."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with api.services.db.read() as session:
        for m in session.scalars(
            select(Metric).where(Metric.federation_id == federation_id).order_by(Metric.round)
        ):
            series[m.name if m.node is None else f"{m.node}/{m.name}"].append((m.round, m.value))
    return dict(series)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def trackers_done(api: Api, federation_id: str) -> bool:
    with api.services.db.read() as session:
        federation = session.get(Federation, federation_id)
        return federation is not None and federation.trackers_done


def mlflow_series(settings: Settings, federation_id: str) -> tuple[Any, dict[str, list[tuple[int, float]]]]:
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("served")
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fedalign.federation` = '{federation_id}'"
    )
    keys = run.data.metrics
    series = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in keys
    }
    return run, series


def tensorboard_series(settings: Settings) -> dict[str, list[tuple[int, float]]]:
    assert settings.tensorboard_dir is not None
    (run_dir,) = settings.tensorboard_dir.iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {k: [(s.step, s.value) for s in events.Scalars(k)] for k in events.Tags()["scalars"]}


def close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """The same rounds, the same values to float32 (TensorBoard stores float32)."""
    return [r for r, _ in a] == [r for r, _ in b] and all(
        abs(x - y) <= 1e-6 * max(1.0, abs(y)) for (_, x), (_, y) in zip(a, b, strict=True)
    )


def test_a_served_federation_streams_every_round_and_its_config_to_both_trackers(
    api: Api, settings: Settings, vector_specs: Callable[[], dict[str, str]]
) -> None:
    federation, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings(rounds=ROUNDS))
    fid = federation["id"]
    api.start(fid)
    drive(runners_for(api, tokens))
    wait_for(lambda: trackers_done(api, fid), "the trackers to have the whole run")

    expected = table_series(api, fid)
    assert "disc_acc" in expected and "alpha/task_loss" in expected
    assert {r for r, _ in expected["disc_acc"]} == set(range(1, ROUNDS + 1))
    run, logged = mlflow_series(settings, fid)
    assert logged == expected  # float64 both sides: exactly
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["rounds"] == str(ROUNDS) and params["nodes.omega.role"] == "target"
    board = tensorboard_series(settings)
    assert settings.tensorboard_dir is not None
    (board_dir,) = settings.tensorboard_dir.iterdir()
    assert set(board) == set(expected)
    assert all(close(board[k], expected[k]) for k in expected)
    with api.services.db.read() as session:
        rows = session.scalars(select(TrackerExport).where(TrackerExport.federation_id == fid)).all()
        assert {(r.tracker, r.exported_round, r.finished, r.error) for r in rows} == {
            ("mlflow", ROUNDS, True, None),
            ("tensorboard", ROUNDS, True, None),
        }
    # The API says where the runs are: MLflow's run id, TensorBoard's folder.
    shown = api.ok("GET", f"/api/v1/federations/{fid}")["trackers"]
    assert shown == [
        {
            "tracker": "mlflow",
            "run_id": run.info.run_id,
            "exported_round": ROUNDS,
            "finished": True,
            "error": None,
        },
        {
            "tracker": "tensorboard",
            "run_id": board_dir.name,
            "exported_round": ROUNDS,
            "finished": True,
            "error": None,
        },
    ]


@pytest.mark.parametrize("interval_s", [3600.0])  # two exporters stand for the API before and after a restart
def test_a_restarted_exporter_goes_on_from_the_recorded_round_without_a_round_twice(
    api: Api, settings: Settings, vector_specs: Callable[[], dict[str, str]]
) -> None:
    settings_ = tiny_settings(rounds=4, trackers=["mlflow"])
    federation, tokens = api.federation_with_nodes(vector_specs(), **settings_)
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    destinations = settings.tracker_destinations()
    before = TrackerExporter(api.services.db, destinations)
    while True:  # until round 4 is open: rounds 1 and 2 are settled, 3 may still gain metrics
        drive(runners, max_steps=1)
        with api.services.db.read() as session:
            state = session.get(Federation, fid).protocol_state  # type: ignore[union-attr]
            if (state or {}).get("round", 0) >= 4:
                break
    before.export_once()
    with api.services.db.read() as session:
        row = session.get(TrackerExport, (fid, "mlflow"))
        assert row is not None and row.exported_round == 2 and not row.finished
    drive(runners)
    after = TrackerExporter(api.services.db, destinations)  # a new process: it reopens the run by its id
    after.export_once()
    assert trackers_done(api, fid)
    run, logged = mlflow_series(settings, fid)
    assert logged == table_series(api, fid)  # each round once, none missing
    assert run.info.status == "FINISHED"
    assert not settings.tensorboard_dir or not settings.tensorboard_dir.exists()  # trackers = ["mlflow"]


@pytest.mark.parametrize("interval_s", [3600.0])
def test_a_tracker_that_is_down_never_holds_the_federation(
    api: Api, vector_specs: Callable[[], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    federation, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings(trackers=["mlflow"]))
    fid = federation["id"]
    api.start(fid)
    drive(runners_for(api, tokens))
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    down = Destinations(mlflow_uri="http://127.0.0.1:9")  # nothing listens on the discard port
    assert TrackerExporter(api.services.db, down).export_once() == 0
    with api.services.db.read() as session:
        row = session.get(TrackerExport, (fid, "mlflow"))
        assert row is not None and row.error and not row.finished and row.exported_round == 0
    assert not trackers_done(api, fid)  # retried on the next pass
    (shown,) = api.ok("GET", f"/api/v1/federations/{fid}")["trackers"]
    assert shown["tracker"] == "mlflow" and shown["error"] and not shown["finished"]


@pytest.mark.parametrize("with_mlflow", [False])
def test_a_federation_naming_a_tracker_the_deployment_lacks_is_refused(api: Api) -> None:
    before = api.ok("GET", "/api/v1/federations")["items"]
    refused = api.request("POST", "/api/v1/federations", json=tiny_settings(trackers=["mlflow"]))
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "mlflow" in message and "FEDALIGN_MLFLOW_TRACKING_URI" in message
    assert api.ok("GET", "/api/v1/federations")["items"] == before
    unknown = api.request("POST", "/api/v1/federations", json=tiny_settings(trackers=["wandb"]))
    assert unknown.status_code == 422 and api.ok("GET", "/api/v1/federations")["items"] == before
