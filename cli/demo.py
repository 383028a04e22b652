"""The demo federation of ``fedalign up``: the recipe of ``examples/digits-mnistm.toml`` (three labelled
digit domains as sources, unlabelled MNIST-M as target), registered through the API with its nodes in mode
``celery`` and ready to start. Its nodes' tokens go to ``demo-nodes.json`` in the data directory (mode
0600), which the worker reads (the format of `workers.celery_app.CredentialsFile`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from cli.supervisor import UpError

DEMO_FILE = "demo-nodes.json"
DEMO_ROUNDS = 100
# The recipe of examples/digits-mnistm.toml (the preset fedalign.presets names), evaluated every 10 rounds.
DEMO_SETTINGS: dict[str, Any] = {
    "name": "digits to MNIST-M (demo)",
    "algorithm": "fedalign",
    "architecture": "digits_cnn",
    "seed": 0,
    "aggregator": "server",
    "hyperparameters": {"preset": "digits_recipe", "batch_size": 64, "lr": 0.01, "eval_every": 10},
}
DEMO_NODES = (
    ("mnist", "source", "digits:mnist"),
    ("optdigits", "source", "digits:optdigits"),
    ("syn", "source", "digits:syn"),
    ("mnistm", "target", "digits:mnistm"),
)


def demo_settings(rounds: int) -> dict[str, Any]:
    return {**DEMO_SETTINGS, "rounds": rounds}


def ensure_demo(api_url: str, admin_token: str, data_dir: Path, rounds: int) -> dict[str, Any]:
    """The demo federation of this data directory: the one recorded in ``demo-nodes.json`` while it has not
    run yet (or still runs), else a new one, registered and ready to start. Returns the file's content."""
    path = data_dir / DEMO_FILE
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30.0) as http:
        if path.exists():
            demo = json.loads(path.read_text(encoding="utf-8"))
            response = http.get(f"/api/v1/federations/{demo['federation_id']}")
            if response.status_code == 200 and response.json()["status"] not in (
                "finished",
                "cancelled",
                "failed",
            ):
                if demo.get("api") != api_url:
                    demo["api"] = api_url
                    _write_private(path, demo)
                return demo
        created = http.post("/api/v1/federations", json=demo_settings(rounds))
        _expect(created, 201, "create the demo federation")
        federation_id = created.json()["id"]
        nodes = []
        for name, role, dataset in DEMO_NODES:
            registered = http.post(
                f"/api/v1/federations/{federation_id}/nodes",
                json={"name": name, "role": role, "dataset": dataset, "mode": "celery"},
            )
            _expect(registered, 201, f"register the demo node {name!r}")
            body = registered.json()
            nodes.append({"node_id": body["id"], "name": name, "token": body["token"], "dataset": dataset})
    demo = {"api": api_url, "federation_id": federation_id, "nodes": nodes}
    _write_private(path, demo)
    return demo


def _expect(response: httpx.Response, status: int, doing: str) -> None:
    if response.status_code != status:
        raise UpError(f"could not {doing}: {response.status_code} {response.text[:500]}")


def _write_private(path: Path, content: dict[str, Any]) -> None:
    """Tokens: readable by this user only (mkstemp's mode 0600), replaced atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(content, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
