"""Rounds, metric series and the published model, as the dashboard reads them."""

from __future__ import annotations

from collections.abc import Callable

from api_support import Api, run_federation


def test_rounds_are_empty_before_the_start_and_detailed_after(api: Api) -> None:
    federation, tokens = api.federation_with_nodes()
    fid = federation["id"]
    assert api.ok("GET", f"/api/v1/federations/{fid}/rounds") == {"items": []}
    early = api.request("GET", f"/api/v1/federations/{fid}/rounds/0")
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_started"
    api.start(fid)
    api.task(tokens["alpha"])
    rounds = api.ok("GET", f"/api/v1/federations/{fid}/rounds")["items"]
    assert rounds == [
        {
            "round": 0,
            "state": "open",
            "phases": ["setup"],
            "open_phase": "setup",
            "metrics": {},
            "left_out": [],
        }
    ]
    setup = api.ok("GET", f"/api/v1/federations/{fid}/rounds/0")["phases"][0]
    assert setup["state"] == "open"
    assert {s["node"]: s["status"] for s in setup["steps"]} == {
        "alpha": "claimed",
        "beta": "pending",
        "omega": "pending",
    }
    assert [a["key"] for a in setup["aggregates"]] == ["r0/init/D", "r0/init/G", "r0/init/T"]
    upcoming = api.ok("GET", f"/api/v1/federations/{fid}/rounds/2")
    assert upcoming["state"] == "upcoming" and {p["state"] for p in upcoming["phases"]} == {"upcoming"}
    assert api.request("GET", f"/api/v1/federations/{fid}/rounds/3").status_code == 404
    assert api.request("GET", f"/api/v1/federations/{fid}/rounds/-1").status_code == 422


def test_a_finished_run_shows_every_phase_with_its_submissions_aggregates_and_metrics(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    fid = run_federation(api, vector_specs())
    rounds = api.ok("GET", f"/api/v1/federations/{fid}/rounds")["items"]
    assert [(r["round"], r["state"]) for r in rounds] == [(0, "done"), (1, "done"), (2, "done")]
    assert rounds[2]["phases"] == ["disc1", "adapt", "eval", "publish"]
    one = api.ok("GET", f"/api/v1/federations/{fid}/rounds/1")
    phases = {p["name"]: p for p in one["phases"]}
    assert all(p["state"] == "closed" for p in phases.values())
    disc = phases["disc1"]
    assert {s["node"]: s["status"] for s in disc["steps"]} == {
        "alpha": "done",
        "beta": "done",
        "omega": "done",
    }
    assert sorted(a["key"] for a in disc["submissions"]) == [
        f"r1/disc1/D/{n}" for n in ("alpha", "beta", "omega")
    ]
    assert [a["key"] for a in disc["aggregates"]] == ["r1/disc1/D"]
    assert sorted(a["key"] for a in phases["adapt"]["aggregates"]) == ["r1/adapt/G", "r1/adapt/T"]
    assert {"disc_acc", "disc_acc_fresh", "pad", "target_acc"} <= set(one["metrics"]["federation"])
    assert set(one["metrics"]["nodes"]) == {"alpha", "beta", "omega"}


def test_metric_series_filter_by_node_and_name(api: Api, vector_specs: Callable[[], dict[str, str]]) -> None:
    fid = run_federation(api, vector_specs())
    base = f"/api/v1/federations/{fid}/metrics"
    series = api.ok("GET", base)["series"]
    assert series[0]["node"] is None, "the federation's own metrics come first"
    disc = api.ok("GET", f"{base}?name=disc_acc")["series"]
    assert [(s["node"], [p["round"] for p in s["points"]]) for s in disc] == [(None, [1, 2])]
    alpha = api.ok("GET", f"{base}?node=alpha")["series"]
    assert alpha and {s["node"] for s in alpha} == {"alpha"}
    assert api.ok("GET", f"{base}?node=alpha&name=source_val_acc")["series"][0]["points"][0]["round"] == 1
    assert api.ok("GET", f"{base}?node=nobody")["series"] == []
    assert api.request("GET", "/api/v1/federations/nope/metrics").status_code == 404


def test_the_model_is_downloadable_once_published(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    federation, _ = api.federation_with_nodes()
    early = api.request("GET", f"/api/v1/federations/{federation['id']}/model")
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_published"
    assert api.request("GET", f"/api/v1/federations/{federation['id']}/model/card").status_code == 409
    private = run_federation(api, vector_specs(), publish_model=False, rounds=1)
    assert api.ok("GET", f"/api/v1/federations/{private}")["status"] == "finished"
    response = api.request("GET", f"/api/v1/federations/{private}/model")
    assert response.status_code == 404 and "publish_model" in response.json()["error"]["message"]
