"""A torchvision backbone served: ResNet-18 on 64x64 images, starting from a checkpoint (tiny: a few images,
one round, random weights the test writes as its "pretrained" checkpoint). The checkpoint is a file on the
creator's machine, so the creator builds the initial parameters (``fedalign init-model``'s code) and uploads
them; the served run equals the simulation of the same config bitwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from api_support import Api, drive, runners_for
from test_api_end_to_end import served_rounds

from fedalign import params
from fedalign.config import FederationConfig
from fedalign.initial_parameters import build_initial
from fedalign.simulate import simulate

SIZE = 64
NODES = (("alpha", "source", 1), ("beta", "source", 2), ("omega", "target", 3))


def write_images(path: Path, seed: int, labelled: bool, n: int = 8, classes: int = 2) -> str:
    """``n`` random RGB images of 64x64 (uint8, channels last); the target's without labels, with a small
    labelled evaluation split."""
    rng = np.random.default_rng(seed)

    def images(count: int) -> np.ndarray:
        return rng.integers(0, 256, size=(count, SIZE, SIZE, 3), dtype=np.uint8)

    arrays: dict[str, np.ndarray] = {"x": images(n), "x_val": images(4)}
    if labelled:
        arrays |= {"y": rng.integers(0, classes, n), "y_val": rng.integers(0, classes, 4)}
    else:
        arrays |= {"x_test": images(4), "y_test": rng.integers(0, classes, 4)}
    np.savez(path, **arrays)
    return f"npz:{path}"


def settings(checkpoint: Path) -> dict[str, Any]:
    return {
        "name": "resnet18 64x64",
        "architecture": "resnet18",
        "model": {
            "num_classes": 2,
            "input_shape": [3, SIZE, SIZE],
            "init_checkpoint": str(checkpoint),
            "precision": "fp32",
        },
        "rounds": 1,
        "seed": 11,
        "hyperparameters": {
            "local_steps": 1,
            "disc_steps": 1,
            "batch_size": 4,
            "optimizer": "adam",
            "lr": 1e-3,
        },
    }


def test_a_resnet18_federation_from_a_checkpoint_runs_served_and_equals_the_simulation(
    api: Api, tmp_path: Path
) -> None:
    specs = {
        name: write_images(tmp_path / f"{name}.npz", seed, role == "source") for name, role, seed in NODES
    }
    # The "pretrained" checkpoint: G of another seed's ResNet-18, as `fedalign convert-checkpoint` writes it.
    plain = {**settings(tmp_path / "unused"), "seed": 99}
    plain["model"] = {k: v for k, v in plain["model"].items() if k != "init_checkpoint"}
    pretrained = build_initial(FederationConfig.model_validate(plain)).models["G"]
    checkpoint = tmp_path / "pretrained.safetensors"
    params.save_file({f"G.{k}": v for k, v in pretrained.items()}, checkpoint)

    config = settings(checkpoint)
    federation, tokens = api.federation_with_nodes(specs, **config)
    fid = federation["id"]
    refused = api.request("POST", f"/api/v1/federations/{fid}/start")
    assert refused.status_code == 409 and "never reads" in refused.json()["error"]["message"]
    initial = build_initial(FederationConfig.model_validate(config))  # on the creator's machine
    assert initial.from_checkpoint == ("G",)
    assert torch.equal(initial.models["G"]["conv1.weight"], pretrained["conv1.weight"])
    base = f"/api/v1/federations/{fid}/initial-model"
    api.ok("PUT", f"{base}/manifest", json=initial.manifest.to_json())
    octets = {"Content-Type": "application/octet-stream"}
    assert api.ok("PUT", f"{base}/parameters", content=initial.to_bytes(), headers=octets)["ready"]
    api.start(fid)

    drive(runners_for(api, tokens))

    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    nodes = [{"name": n, "role": r, "dataset": specs[n]} for n, r, _ in NODES]
    reference = simulate(FederationConfig.model_validate({**config, "nodes": nodes}))
    expected = {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    assert served_rounds(api, fid) == expected and "target_acc" in expected[1]["metrics"]
    model = api.request("GET", f"/api/v1/federations/{fid}/model").content
    assert model == params.to_bytes(reference.models["target_model"])
