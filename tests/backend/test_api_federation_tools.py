"""What the dashboard shows beside the rounds: progress in the list, CSV export, cloning, run commands."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from api_support import Api, run_federation

from backend.services.node_commands import run_command
from backend.settings import Settings


def test_the_list_shows_rounds_done_and_the_latest_accuracies(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    fresh = api.create_federation(name="not started")
    assert fresh["progress"] == {
        "rounds_done": 0,
        "target_acc": None,
        "disc_acc": None,
        "round_of_metrics": None,
    }
    fid = run_federation(api, vector_specs())
    rounds = {r["round"]: r["metrics"] for r in api.ok("GET", f"/api/v1/federations/{fid}/rounds")["items"]}
    last = max(r for r, m in rounds.items() if "target_acc" in m)
    items = {f["id"]: f for f in api.ok("GET", "/api/v1/federations")["items"]}
    progress = items[fid]["progress"]
    assert progress["rounds_done"] == items[fid]["config"]["rounds"] == 2
    assert progress["round_of_metrics"] == last
    assert progress["target_acc"] == rounds[last]["target_acc"]
    assert progress["disc_acc"] == rounds[last]["disc_acc"]
    assert items[fid]["model_published"] and not fresh["model_published"]


def test_metric_series_say_which_event_to_follow_the_stream_from(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    fid = run_federation(api, vector_specs())
    series = api.ok("GET", f"/api/v1/federations/{fid}/metrics")
    stream = api.request("GET", f"/api/v1/federations/{fid}/events", params={"follow": "false"})
    ids = [int(line[4:]) for line in stream.text.splitlines() if line.startswith("id: ")]
    assert series["last_event_id"] == max(ids)
    after = api.request(
        "GET", f"/api/v1/federations/{fid}/events", params={"follow": "false", "after": max(ids)}
    )
    assert "id: " not in after.text


def test_the_metrics_export_has_a_row_per_round_and_node_and_a_column_per_metric(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    fid = run_federation(api, vector_specs())
    response = api.request("GET", f"/api/v1/federations/{fid}/metrics.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    series = api.ok("GET", f"/api/v1/federations/{fid}/metrics")["series"]
    assert sum(len(s["points"]) for s in series) == sum(
        1 for r in rows for k, v in r.items() if v and k not in {"round", "node"}
    )
    for s in series:
        for point in s["points"]:
            row = next(
                r for r in rows if int(r["round"]) == point["round"] and r["node"] == (s["node"] or "")
            )
            assert float(row[s["name"]]) == point["value"]


def test_a_clone_copies_the_config_and_nodes_with_new_tokens(api: Api) -> None:
    original, tokens = api.federation_with_nodes()
    clone = api.ok("POST", f"/api/v1/federations/{original['id']}/clone", 201, json={"algorithm": "fedavg"})
    assert clone["name"] == "tiny (copy)" and clone["status"] == "created"
    assert clone["config"] == {**original["config"], "name": "tiny (copy)", "algorithm": "fedavg"}
    copied = {n["name"]: n for n in clone["node_tokens"]}
    assert sorted(copied) == ["alpha", "beta", "omega"] and copied["omega"]["role"] == "target"
    assert not {n["token"] for n in copied.values()} & set(tokens.values())
    # The copy's node tokens work for the copy and not for the original.
    node = api.ok("GET", "/api/v1/node/federation", token=copied["alpha"]["token"])
    assert node["federation_id"] == clone["id"]
    assert api.start(clone["id"])["status"] == "running"
    assert api.ok("GET", f"/api/v1/federations/{original['id']}")["status"] == "created"


def test_a_clone_with_invalid_settings_is_refused_and_creates_nothing(api: Api) -> None:
    original = api.create_federation()
    before = len(api.ok("GET", "/api/v1/federations")["items"])
    for body in ({"algorithm": "nope"}, {"rounds": 3}, {"name": ""}):
        response = api.request("POST", f"/api/v1/federations/{original['id']}/clone", json=body)
        assert response.status_code == 422, (body, response.text)
    missing = api.request("POST", "/api/v1/federations/00000000-0000-0000-0000-000000000000/clone", json={})
    assert missing.status_code == 404
    assert len(api.ok("GET", "/api/v1/federations")["items"]) == before


def test_registering_a_node_returns_the_command_its_machine_runs(api: Api) -> None:
    federation = api.create_federation()
    node = api.register(federation["id"], "alpha", "source")
    assert node["run_command"] == (
        f"FEDALIGN_NODE_TOKEN={node['token']} fedalign node run --api http://testserver"
    )


def test_a_celery_nodes_command_names_its_broker_but_never_a_broker_password(tmp_path: Path) -> None:
    def command(broker: str) -> str:
        settings = Settings(data_dir=tmp_path, broker_url=broker, admin_token="t" * 32)
        return run_command("celery", "site-a", "fa_node_x", "https://fl.example.org/", settings)

    assert command("redis://broker:6379/0") == (
        "FEDALIGN_NODE_TOKEN=fa_node_x FEDALIGN_BROKER_URL=redis://broker:6379/0 "
        "fedalign worker --node site-a --api https://fl.example.org"
    )
    assert "s3cret" not in command("redis://:s3cret@broker:6379/0")
    assert f"FEDALIGN_DATA_DIR={tmp_path.resolve()}" in command("filesystem://")
