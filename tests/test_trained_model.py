"""The trained target model and its card: written with the model, read back into a ready torch module."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedalign import params
from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig
from fedalign.data import NodeData
from fedalign.model_card import CARD_KEY, ModelCard, ModelCardError, card_path_for, read_card
from fedalign.model_manifest import ModelManifest
from fedalign.models import build
from fedalign.simulate import simulate
from fedalign.trained_model import load_model, save_model

Factory = Callable[..., tuple[dict, dict[str, NodeData]]]


@pytest.fixture
def trained(vector_federation: Factory, tmp_path: Path) -> tuple[Path, FederationConfig, dict]:
    """A simulated federation's target model, saved with its card."""
    raw, data = vector_federation(rounds=2)
    config = FederationConfig.model_validate(raw)
    result = simulate(config, node_data=data)
    path = tmp_path / "model.safetensors"
    save_model(path, result.models["target_model"], config)
    return path, config, result.models["target_model"]


def test_a_saved_model_loads_as_the_targets_g_and_t_with_its_card(
    trained: tuple[Path, FederationConfig, dict],
) -> None:
    path, config, state = trained
    model = load_model(path)
    card = model.card
    assert (card.architecture, card.num_classes, card.input_shape) == ("mlp", 3, (8,))
    assert card.provenance.target == "omega" and card.provenance.rounds == 2
    assert card.provenance.seed == config.seed and card.provenance.algorithm == "fedalign"
    assert not model.training, "a loaded model predicts: eval mode"

    # The same numbers as G and T built by hand from the published tensors.
    models = build("mlp", ArchitectureContext.of(config))
    for part in ("G", "T"):
        prefix = f"{part}."
        models[part].load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        models[part].eval()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), models.T(models.G(x)))


def test_the_card_is_in_the_files_metadata_and_names_every_tensor(
    trained: tuple[Path, FederationConfig, dict],
) -> None:
    path, config, state = trained
    metadata = params.read_metadata(path)
    card = ModelCard.from_json_text(metadata[CARD_KEY], "test")
    assert card.tensor_names() == list(state)
    assert card.manifest == ModelCard.of(config, ModelManifest.for_config(config)).manifest
    assert card.model.init_checkpoint is None


def test_a_card_beside_a_bare_file_is_read_too(trained: tuple[Path, FederationConfig, dict]) -> None:
    path, _, state = trained
    bare = path.with_name("bare.safetensors")
    params.save_file(state, bare)
    with pytest.raises(ModelCardError, match=r"carries no model card.*card=true"):
        read_card(bare)
    card_path_for(bare).write_text(read_card(path).to_json_text())
    assert load_model(bare).card == read_card(path)


def test_tensors_that_do_not_fit_the_card_are_refused(
    trained: tuple[Path, FederationConfig, dict], tmp_path: Path
) -> None:
    path, _, state = trained
    wrong = dict(state)
    wrong["T.2.bias"] = torch.zeros(7)
    other = tmp_path / "other.safetensors"
    params.save_file(wrong, other, metadata=read_card(path).metadata())
    with pytest.raises(ModelCardError, match=r"T\.2\.bias has shape \[7\].*do not belong together"):
        load_model(other)


def test_a_model_of_another_architecture_version_is_refused(
    trained: tuple[Path, FederationConfig, dict], tmp_path: Path
) -> None:
    path, _, state = trained
    document = json.loads(read_card(path).to_json_text())
    document["architecture_version"] = document["manifest"]["version"] = "7"
    card = ModelCard.model_validate(document)
    other = tmp_path / "v7.safetensors"
    params.save_file(state, other, metadata=card.metadata())
    with pytest.raises(
        ModelCardError, match=r"version '7' of architecture 'mlp'.*this machine's is version '1'"
    ):
        load_model(other)


def test_a_card_of_another_format_is_refused_saying_so(trained: tuple[Path, FederationConfig, dict]) -> None:
    path, _, _ = trained
    document = json.loads(read_card(path).to_json_text())
    document["format"] = 2
    with pytest.raises(ModelCardError, match="format 2; this FedAlign reads format 1"):
        ModelCard.from_json_value(document, "the file")


def test_adding_metadata_rewrites_the_header_and_keeps_every_tensor(tmp_path: Path) -> None:
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(5, dtype=torch.int64)}
    path = tmp_path / "plain.safetensors"
    params.save_file(state, path)
    prefix, data_start = params.header_with_metadata(path, {"note": "x" * 13})
    assert (len(prefix) - 8) % 8 == 0, "the header keeps the data aligned"
    rewritten = prefix + path.read_bytes()[data_start:]
    assert params.read_metadata(rewritten) == {"note": "x" * 13}
    loaded = params.from_bytes(rewritten)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
