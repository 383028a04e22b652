"""`fedalign export`: ONNX (run by onnxruntime) and TorchScript give PyTorch's outputs, the card inside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from fedalign import export
from fedalign.config import FederationConfig
from fedalign.initial_parameters import build_initial
from fedalign.model_card import CARD_KEY, ModelCard
from fedalign.trained_model import TargetModel, load_model, save_model

# Relative to the largest logit: float32 through another runtime differs in its last bits.
TOLERANCE = 1e-5

CONFIGS = {
    "digits_cnn": {"architecture": "digits_cnn", "model": {"num_classes": 10, "input_shape": [3, 28, 28]}},
    "mlp": {"architecture": "mlp", "model": {"num_classes": 4, "input_shape": [12], "hidden": 16}},
    "plug-in": {
        "architecture": "fedalign_test_plugins.architectures:tiny_cnn",
        "model": {"num_classes": 3, "input_shape": [3, 20, 20], "options": {"width": 6}},
        "preprocessing": {"resize": [20, 20], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
    },
}


def trained_like(raw: dict, path: Path) -> TargetModel:
    """A model file of the config's G and T, their BatchNorm statistics moved away from 0 and 1 (as a
    trained target's are), loaded back."""
    config = FederationConfig.model_validate({**raw, "seed": 4})
    initial = build_initial(config)
    g = torch.Generator().manual_seed(1)
    state = {}
    for part in ("G", "T"):
        for name, tensor in initial.models[part].items():
            if name.endswith("running_mean"):
                tensor = torch.randn(tensor.shape, generator=g) * 0.1
            elif name.endswith("running_var"):
                tensor = torch.rand(tensor.shape, generator=g) + 0.5
            state[f"{part}.{name}"] = tensor
    save_model(path, state, config, initial.manifest)
    return load_model(path)


def inputs(model: TargetModel, batch: int) -> torch.Tensor:
    return torch.rand((batch, *model.card.input_shape), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_exported_model_gives_the_pytorch_models_outputs(
    name: str, fmt: str, test_plugins: Path, tmp_path: Path
) -> None:
    model = trained_like(CONFIGS[name], tmp_path / "model.safetensors")
    path = export.export(model, tmp_path / f"model{export.SUFFIXES[fmt]}", fmt)
    for batch in (1, 5):  # the batch dimension is free
        x = inputs(model, batch)
        with torch.no_grad():
            expected = model(x)
        got = export.run_exported(path, fmt, x)
        assert got.shape == expected.shape == (batch, model.card.num_classes)
        scale = max(1.0, float(expected.abs().max()))
        assert float((got - expected).abs().max()) <= TOLERANCE * scale, (name, fmt, batch)
    assert export.verify(model, path, fmt).ok


def test_the_card_and_the_input_travel_inside_both_exports(test_plugins: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")  # the export extra; `make setup` installs it
    model = trained_like(CONFIGS["plug-in"], tmp_path / "model.safetensors")
    onnx_path = export.export_onnx(model, tmp_path / "m.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert ModelCard.from_json_text(metadata[CARD_KEY], "onnx") == model.card
    assert "normalises them itself (mean [0.4, 0.5, 0.6]" in metadata[export.INPUT_KEY]

    script_path = export.export_torchscript(model, tmp_path / "m.pt")
    extra = {export.TORCHSCRIPT_CARD_FILE: "", export.INPUT_KEY: ""}
    with export._quiet_torch():
        torch.jit.load(str(script_path), _extra_files=extra)
    assert ModelCard.model_validate(json.loads(extra[export.TORCHSCRIPT_CARD_FILE])) == model.card
    assert b"at 20x20 (resize others first" in extra[export.INPUT_KEY]


def test_the_command_exports_and_checks_against_pytorch(tmp_path: Path) -> None:
    trained_like(CONFIGS["mlp"], tmp_path / "model.safetensors")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model.safetensors"), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.onnx").is_file()
    assert "agrees with the PyTorch model" in result.output
    refused = CliRunner().invoke(app, ["export", str(tmp_path / "model.safetensors"), "--format", "tflite"])
    assert refused.exit_code == 2 and "expected one of onnx, torchscript" in refused.output
