"""Checkpoints of the target's model (checkpoint_every): which rounds publish, the label-free selection, and
`fedalign simulate --save-checkpoints` with a target that has no labels at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from test_cli import CONFIG, write_domain
from typer.testing import CliRunner

from cli.main import app
from fedalign.config import FederationConfig
from fedalign.metrics import selected_checkpoint
from fedalign.phases import Schedule
from fedalign.trained_model import load_model


def test_every_nth_round_and_the_last_publish_and_are_evaluated() -> None:
    config = FederationConfig.model_validate(
        {"rounds": 7, "checkpoint_every": 3, "hyperparameters": {"eval_every": 100}}
    )
    schedule = Schedule.of(config)
    kinds = {r: [p.kind for p in schedule.round(r)] for r in range(1, 8)}
    assert [r for r, k in kinds.items() if "publish" in k] == [3, 6, 7]
    assert [r for r, k in kinds.items() if "evaluate" in k] == [3, 6, 7]
    assert all(k[-1] == "publish" for r, k in kinds.items() if r in (3, 6, 7))  # after the evaluation
    plain = Schedule.of(FederationConfig.model_validate({"rounds": 7}))
    assert [r for r in range(1, 8) if "publish" in [p.kind for p in plain.round(r)]] == [7]


def test_checkpoints_need_the_model_to_be_published() -> None:
    with pytest.raises(ValidationError, match="checkpoint_every needs publish_model"):
        FederationConfig.model_validate({"checkpoint_every": 2, "publish_model": False})


def test_the_selected_checkpoint_has_the_best_source_validation_accuracy() -> None:
    assert selected_checkpoint({2: 0.4, 4: 0.7, 6: 0.6}) == 4
    assert selected_checkpoint({2: 0.7, 4: 0.7, 6: 0.6}) == 4  # a tie: the later round
    assert selected_checkpoint({2: None, 4: None}) == 4  # nothing measured: the last
    assert selected_checkpoint({2: None, 4: 0.5, 6: None}) == 4
    assert selected_checkpoint({}) is None


def test_simulate_saves_each_checkpoint_with_its_card_and_names_the_selected_one(tmp_path: Path) -> None:
    unlabelled = tmp_path / "t.npz"
    with np.load(write_domain(tmp_path / "t-labelled.npz", 1.0, 2)) as arrays:
        np.savez(unlabelled, x=arrays["x"])  # the target has no labels: the selection cannot use them
    config = tmp_path / "fed.toml"
    config.write_text(
        CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=unlabelled).replace(
            "rounds = 2\n", "rounds = 5\ncheckpoint_every = 2\n"
        )
    )
    out, final = tmp_path / "metrics.json", tmp_path / "final.safetensors"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app,
        [
            "simulate",
            str(config),
            "--json",
            str(out),
            "--save-model",
            str(final),
            "--save-checkpoints",
            str(tmp_path / "ckpt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "round-0002.safetensors",
        "round-0004.safetensors",
        "round-0005.safetensors",
    ]
    rounds = {r["round"]: r["metrics"] for r in json.loads(out.read_text())["rounds"]}
    expected = selected_checkpoint({r: rounds[r].get("source_val_acc") for r in (2, 4, 5)})
    assert f"selected: round {expected} " in result.output
    assert all("source_val_acc" in rounds[r] for r in (2, 4, 5))
    # The last checkpoint is the final model; each file loads as a model, with its card.
    last, whole = load_file(tmp_path / "ckpt" / "round-0005.safetensors"), load_file(final)
    assert last.keys() == whole.keys() and all(torch.equal(last[k], whole[k]) for k in whole)
    second = load_file(tmp_path / "ckpt" / "round-0002.safetensors")
    assert any(not torch.equal(second[k], whole[k]) for k in whole)  # an earlier model, not a copy
    model = load_model(tmp_path / "ckpt" / "round-0002.safetensors")
    assert model.card.num_classes == 3
