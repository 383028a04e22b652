"""The worked example of docs/byo-model.md runs as the page shows it: `examples/byo_model` (a factory
module and a TOML config) through `fedalign simulate` and `fedalign init-model`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "byo_model"
CONFIG = EXAMPLE / "federation.toml"


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``PYTHONPATH=examples`` does for the commands of the page."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


def test_the_page_shows_the_example_files_themselves() -> None:
    page = (ROOT / "docs" / "byo-model.md").read_text(encoding="utf-8")
    for name in ("signal_cnn.py", "federation.toml"):
        assert f'--8<-- "examples/byo_model/{name}"' in page


def test_the_example_federation_simulates(examples_on_path: None, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", str(CONFIG), "--rounds", "2", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "byo_model.signal_cnn:build" in result.output
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert set(rounds[-1]["nodes"]) == {"lab", "field", "fast"}
    assert 0 <= rounds[-1]["metrics"]["target_acc"] <= 1


def test_init_model_builds_the_examples_initial_parameters(examples_on_path: None, tmp_path: Path) -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["init-model", str(CONFIG), "-o", str(tmp_path / "init.safetensors")]
    )
    assert result.exit_code == 0, result.output
    assert "G: 14 tensors (6 local), 1,522 numbers, from the seed" in result.output  # as the page shows
    document = json.loads((tmp_path / "init.manifest.json").read_text())
    assert (document["architecture"], document["version"]) == ("byo_model.signal_cnn:build", "1")


def test_the_examples_factory_refuses_an_option_it_does_not_have(examples_on_path: None) -> None:
    from byo_model.signal_cnn import build as signal_cnn

    from fedalign.architectures import ArchitectureContext, ArchitectureError

    with pytest.raises(ArchitectureError, match=r"signal_cnn has no options \['depth'\]"):
        signal_cnn(ArchitectureContext((64,), 6, options={"depth": 3}))
