"""`fedalign choose`: the target model to deploy among several, by their predictions on the target's own data
without a label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from fedalign.config import FederationConfig
from fedalign.label_free import choose
from fedalign.predict import predict
from fedalign.simulate import simulate
from fedalign.trained_model import load_model, save_model

CLASSES = 3


def config(tmp: Path, normalization: str, classes: int = CLASSES) -> FederationConfig:
    return FederationConfig.model_validate(
        {
            "name": f"vectors-{normalization}",
            "architecture": "mlp",
            "rounds": 40,
            "seed": 1,
            "model": {
                "num_classes": classes,
                "input_shape": [8],
                "hidden": 8,
                "normalization": normalization,
            },
            "hyperparameters": {"batch_size": 16},
            "nodes": [
                {"name": "a", "role": "source", "dataset": f"npz:{tmp / 'a.npz'}"},
                {"name": "t", "role": "target", "dataset": f"npz:{tmp / 't.npz'}"},
            ],
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of one federation that differ in their normalisation, and a collapsed copy of the first (its
    task model's bias pushes every prediction into class 0), each saved with its card; and the target's data,
    unlabelled."""
    tmp = tmp_path_factory.mktemp("choose")
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, 90)
    x = rng.normal(size=(90, 8)).astype(np.float32) + np.eye(8, dtype=np.float32)[y] * 2
    np.savez(tmp / "a.npz", x=x, y=y)
    y = rng.integers(0, CLASSES, 60)
    np.savez(tmp / "t.npz", x=rng.normal(size=(60, 8)).astype(np.float32) + 0.5 + np.eye(8)[y] * 2)
    paths = {"data": tmp / "t.npz"}
    for normalization in ("batch", "group"):
        cfg = config(tmp, normalization)
        paths[normalization] = tmp / f"{normalization}.safetensors"
        state = simulate(cfg).models["target_model"]
        save_model(paths[normalization], state, cfg)
        if normalization == "batch":
            bias = next(k for k in state if k.startswith("T.") and tuple(state[k].shape) == (CLASSES,))
            collapsed = {**state, bias: state[bias] + torch.tensor([100.0, 0.0, 0.0])}
            paths["collapsed"] = tmp / "collapsed.safetensors"
            save_model(paths["collapsed"], collapsed, cfg)
    return paths


def information(path: Path, data: Path) -> float:
    return predict(load_model(path), f"npz:{data}", splits=("train",)).label_free.information


def test_the_rule_is_the_highest_score_and_the_first_listed_on_a_tie() -> None:
    assert choose([0.1, 0.7, 0.3]) == 1
    assert choose([0.5, 0.5, 0.2]) == 0
    with pytest.raises(ValueError, match="nothing to choose"):
        choose([])


def test_the_model_with_the_highest_information_is_named_with_what_its_card_says_differs(
    runs: dict[str, Path],
) -> None:
    models = [runs["collapsed"], runs["batch"], runs["group"]]
    scores = [information(m, runs["data"]) for m in models]
    assert scores[0] < 0.01 < min(scores[1:])  # the collapse has no class balance left
    expected = models[int(np.argmax(scores))]
    answer = CliRunner().invoke(app, ["choose", *map(str, models), "--data", f"npz:{runs['data']}", "--json"])
    assert answer.exit_code == 0, answer.output
    document = json.loads(answer.stdout)
    assert document["chosen"] == str(expected) and document["split"] == "train"
    assert [m["information"] for m in document["models"]] == pytest.approx(scores, abs=0)
    train = len(predict(load_model(models[0]), f"npz:{runs['data']}", splits=("train",)))
    assert [m["samples"] for m in document["models"]] == [train] * 3
    # What the cards say differs: the normalisation (and the federation's name), not the shared settings.
    settings = [m["settings"] for m in document["models"]]
    assert [s["model.normalization"] for s in settings] == ["batch", "batch", "group"]
    assert "model.num_classes" not in settings[0] and "provenance.seed" not in settings[0]

    table = CliRunner().invoke(app, ["choose", *map(str, models), "--data", f"npz:{runs['data']}"])
    assert table.exit_code == 0, table.output
    assert f"deploy {expected}" in " ".join(table.output.split())


def test_a_tie_deploys_the_first_listed(runs: dict[str, Path]) -> None:
    answer = CliRunner().invoke(
        app, ["choose", str(runs["group"]), str(runs["group"]), "--data", f"npz:{runs['data']}", "--json"]
    )
    assert answer.exit_code == 0, answer.output
    document = json.loads(answer.stdout)
    assert document["chosen"] == str(runs["group"]) and document["models"][0]["settings"] == {}


def test_what_cannot_be_compared_is_refused_saying_why(runs: dict[str, Path], tmp_path: Path) -> None:
    data = f"npz:{runs['data']}"
    one = CliRunner().invoke(app, ["choose", str(runs["batch"]), "--data", data])
    assert one.exit_code == 2 and "two or more models" in one.output
    split = CliRunner().invoke(
        app, ["choose", str(runs["batch"]), str(runs["group"]), "--data", data, "--split", "all"]
    )
    assert split.exit_code == 2 and "--split 'all'" in split.output
    # A four-class model of the same inputs, from a federation of its own.
    rng = np.random.default_rng(1)
    for name in ("a", "t"):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(40, 8)).astype(np.float32), y=np.arange(40) % 4)
    four, other = tmp_path / "four.safetensors", config(tmp_path, "batch", classes=4)
    save_model(four, simulate(other).models["target_model"], other)
    mixed = CliRunner().invoke(app, ["choose", str(runs["batch"]), str(four), "--data", data])
    assert mixed.exit_code == 1 and "do not predict the same task" in " ".join(mixed.output.split())
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((10, 5), dtype=np.float32))
    unreadable = CliRunner().invoke(
        app, ["choose", str(runs["batch"]), str(runs["group"]), "--data", f"npz:{wrong}"]
    )
    assert unreadable.exit_code == 1 and "error" in unreadable.output
