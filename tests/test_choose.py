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
from fedalign.config import FederationConfig, load_config
from fedalign.label_free import choose
from fedalign.predict import predict
from fedalign.simulate import simulate
from fedalign.trained_model import load_model, save_model
from tests.test_cli import CONFIG

CLASSES = 3
# test_cli's federation, trained longer.
SETTINGS = ["rounds=40"]


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
    task model's bias pushes every prediction into class 0), each saved with its card; the target's data,
    unlabelled; and the federation's file."""
    tmp = tmp_path_factory.mktemp("choose")
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, 90)
    x = rng.normal(size=(90, 8)).astype(np.float32) + np.eye(8, dtype=np.float32)[y] * 2
    np.savez(tmp / "a.npz", x=x, y=y)
    y = rng.integers(0, CLASSES, 60)
    np.savez(tmp / "t.npz", x=rng.normal(size=(60, 8)).astype(np.float32) + 0.5 + np.eye(8)[y] * 2)
    paths = {"data": tmp / "t.npz", "config": tmp / "fed.toml"}
    paths["config"].write_text(CONFIG.format(a=tmp / "a.npz", t=tmp / "t.npz"))
    cfg = load_config(paths["config"], SETTINGS)
    state = simulate(cfg).models["target_model"]
    paths["batch"], paths["collapsed"] = tmp / "batch.safetensors", tmp / "collapsed.safetensors"
    save_model(paths["batch"], state, cfg)
    bias = next(k for k in state if k.startswith("T.") and tuple(state[k].shape) == (CLASSES,))
    save_model(paths["collapsed"], {**state, bias: state[bias] + torch.tensor([100.0, 0.0, 0.0])}, cfg)
    # The second run as the docs make it: the same file, one setting changed on the command line.
    paths["group"] = tmp / "group.safetensors"
    made = CliRunner().invoke(
        app,
        [
            "simulate",
            str(paths["config"]),
            *(f"--set={setting}" for setting in SETTINGS),
            "--set",
            "model.normalization=group",
            "--save-model",
            str(paths["group"]),
        ],
    )
    assert made.exit_code == 0, made.output
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
    # What the cards say differs: the normalisation, not the shared settings.
    settings = [m["settings"] for m in document["models"]]
    assert [s["model.normalization"] for s in settings] == ["batch", "batch", "group"]
    assert all(set(s) == {"model.normalization"} for s in settings)

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
