"""`fedalign simulate` as a user runs it: a TOML config in, a table and a JSON file out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from cli.main import app

CONFIG = """
name = "vectors"
architecture = "mlp"
rounds = 2
seed = 1
[model]
num_classes = 3
input_shape = [8]
hidden = 16
[hyperparameters]
local_steps = 2
disc_steps = 2
batch_size = 16
[[nodes]]
name = "a"
role = "source"
dataset = "npz:{a}"
[[nodes]]
name = "t"
role = "target"
dataset = "npz:{t}"
"""


def write_domain(path: Path, shift: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 8)).astype(np.float32) + shift + np.eye(8, dtype=np.float32)[y] * 2
    np.savez(path, x=x, y=y)
    return path


def test_simulate_prints_per_round_metrics_and_writes_json(tmp_path: Path) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(
        CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=write_domain(tmp_path / "t.npz", 1.0, 2))
    )
    out = tmp_path / "metrics.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["simulate", str(config), "--rounds", "3", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "D acc" in result.output and "target acc" in result.output
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert {"disc_acc", "disc_acc_source", "disc_acc_target", "target_acc"} <= set(rounds[-1]["metrics"])
    assert set(rounds[-1]["nodes"]) == {"a", "t"}


def test_a_bad_config_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('algorithm = "fedprox"\n[[nodes]]\nname = "a"\nrole = "source"\ndataset = "x"\n')
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config)])
    assert result.exit_code == 2
    assert "algorithm" in result.output and "fedalign" in result.output
    missing = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_set_overrides_a_setting_by_its_dotted_key_before_the_config_is_checked(tmp_path: Path) -> None:
    from fedalign.config import ConfigError, load_config, set_setting

    raw: dict = {"model": {"hidden": 16}, "nodes": []}
    for assignment in ("model.normalization=group", "hyperparameters.lr=0.03", "rounds=7", "x.y=[1, 2]"):
        set_setting(raw, assignment)
    set_setting(raw, 'name="two words"')
    set_setting(raw, "model.normalization = group")  # spaced as in the file: the same

    assert raw == {
        "model": {"hidden": 16, "normalization": "group"},  # not TOML: taken as text
        "nodes": [],
        "hyperparameters": {"lr": 0.03},  # a missing table is created
        "rounds": 7,
        "x": {"y": [1, 2]},
        "name": "two words",
    }
    for bad, said in (
        ("rounds", "expected key=value"),
        ("model..hidden=1", "expected key=value"),
        ("nodes.a=1", "nodes is not a table"),
    ):
        with pytest.raises(ConfigError, match=said):
            set_setting({"nodes": []}, bad)

    config = tmp_path / "fed.toml"
    config.write_text(CONFIG.format(a=tmp_path / "a.npz", t=tmp_path / "t.npz"))
    assert load_config(config).model.normalization == "batch"
    changed = load_config(config, ["model.normalization=group", "hyperparameters.local_steps=5"])
    assert changed.model.normalization == "group" and changed.hyperparameters.local_steps == 5
    # What the schema refuses is refused as the file's own problems are, saying which setting.
    for bad, said in (
        ("model.normalization=layer", "model.normalization"),
        ("model.colour=red", "model.colour"),
    ):
        with pytest.raises(ConfigError, match=said):
            load_config(config, [bad])
        refused = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config), "--set", bad])
        assert refused.exit_code == 2 and said in refused.output


def test_shipped_example_config_is_valid() -> None:
    from fedalign.config import load_config

    config = load_config(Path(__file__).parent.parent / "examples" / "digits-mnistm.toml")
    assert config.target.dataset == "digits:mnistm"
    assert [s.dataset for s in config.sources] == ["digits:mnist", "digits:optdigits", "digits:syn"]


def test_simulate_with_an_unlabelled_target_shows_no_target_accuracy(tmp_path: Path) -> None:
    unlabelled = tmp_path / "t.npz"
    with np.load(write_domain(tmp_path / "t-labelled.npz", 1.0, 2)) as arrays:
        np.savez(unlabelled, x=arrays["x"])  # the target's samples, no 'y' at all
    config = tmp_path / "fed.toml"
    config.write_text(CONFIG.format(a=write_domain(tmp_path / "a.npz", 0.0, 1), t=unlabelled))
    out = tmp_path / "metrics.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "D acc" in result.output and "src val acc" in result.output
    assert "target acc" not in result.output
    rounds = json.loads(out.read_text())["rounds"]
    assert all("target_acc" not in r["metrics"] and "target_acc" not in r["nodes"]["t"] for r in rounds)
    assert {"disc_acc", "disc_acc_source", "disc_acc_target", "source_val_acc"} <= set(rounds[-1]["metrics"])


def test_simulate_refuses_an_unlabelled_source_saying_why(tmp_path: Path) -> None:
    unlabelled = tmp_path / "a.npz"
    np.savez(unlabelled, x=np.zeros((40, 8), np.float32))
    config = tmp_path / "fed.toml"
    config.write_text(CONFIG.format(a=unlabelled, t=write_domain(tmp_path / "t.npz", 1.0, 2)))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["simulate", str(config)])
    assert result.exit_code == 1
    assert "is a source, but its dataset" in result.output and "task loss" in result.output


# ---------------------------------------------------------------------- init-model, convert-checkpoint

PLUGIN_CONFIG = """
name = "plug-in"
architecture = "fedalign_test_plugins.architectures:{factory}"
rounds = 1
seed = 4
[model]
num_classes = 3
input_shape = [3, 32, 32]
{model}
[hyperparameters]
local_steps = 1
disc_steps = 1
batch_size = 4
[[nodes]]
name = "a"
role = "source"
dataset = "npz:{a}"
[[nodes]]
name = "t"
role = "target"
dataset = "npz:{t}"
"""

RESNET_CONFIG = """
name = "resnet"
architecture = "resnet18"
rounds = 1
seed = 2
[model]
num_classes = 3
input_shape = [3, 64, 64]
precision = "fp32"
{model}
[hyperparameters]
optimizer = "adamw"
lr = 0.001
local_steps = 1
disc_steps = 1
batch_size = 4
[[nodes]]
name = "a"
role = "source"
dataset = "npz:{a}"
[[nodes]]
name = "t"
role = "target"
dataset = "npz:{t}"
"""


def write_images(path: Path, size: int, seed: int, n: int = 30) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=np.arange(n) % 3)
    return path


def image_config(tmp_path: Path, template: str, size: int, model: str = "", **fields: str) -> Path:
    config = tmp_path / "fed.toml"
    a, t = write_images(tmp_path / "a.npz", size, 1), write_images(tmp_path / "t.npz", size, 2)
    config.write_text(template.format(a=a, t=t, model=model, **fields))
    return config


def run(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, list(args))


def test_init_model_writes_every_tensor_and_the_manifest_beside_it(
    test_plugins: Path, tmp_path: Path
) -> None:
    from fedalign import params
    from fedalign.config import load_config
    from fedalign.initial_parameters import build_initial
    from fedalign.model_manifest import ModelManifest

    config = image_config(tmp_path, PLUGIN_CONFIG, 32, factory="tiny_cnn")
    result = run("init-model", str(config), "-o", str(tmp_path / "init.safetensors"))
    assert result.exit_code == 0, result.output
    written = params.load_file(tmp_path / "init.safetensors")
    document = ModelManifest.loads((tmp_path / "init.manifest.json").read_text())
    assert document.architecture == "fedalign_test_plugins.architectures:tiny_cnn"
    assert set(written) == {spec.name for spec in document.every_tensor()}
    assert "G.1.running_var" in written, "local tensors too: round 0 holds every tensor"
    # The same bits the simulator starts from.
    expected = build_initial(load_config(config)).flat()
    assert all(torch.equal(written[k], v) for k, v in expected.items())


def test_init_model_writes_nothing_when_the_factory_fails(test_plugins: Path, tmp_path: Path) -> None:
    config = image_config(tmp_path, PLUGIN_CONFIG, 32, factory="raises")
    result = run("init-model", str(config), "-o", str(tmp_path / "init.safetensors"))
    assert result.exit_code == 1
    assert "its factory raised RuntimeError: the factory needs a GPU" in result.output
    assert list(tmp_path.glob("init*")) == []


def torchvision_resnet18_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict as torchvision publishes it (random weights here), without the batch counters its
    ImageNet files lack, saved with torch.save."""
    from fedalign.torchvision_import import import_torchvision

    torch.manual_seed(11)
    net = import_torchvision().models.resnet18(weights=None)
    with torch.no_grad():  # statistics a pretrained network has, so that loading them shows
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return state


def test_a_torchvision_state_dict_converts_and_a_resnet18_federation_starts_from_it(tmp_path: Path) -> None:
    from fedalign import params
    from fedalign.config import load_config
    from fedalign.simulate import Simulator

    state = torchvision_resnet18_state_dict(tmp_path / "resnet18.pth")
    config = image_config(tmp_path, RESNET_CONFIG, 64)
    converted = run(
        "convert-checkpoint", str(config), str(tmp_path / "resnet18.pth"), "-o", str(tmp_path / "g.st")
    )
    assert converted.exit_code == 0, converted.output
    assert "left out 2 tensor(s) under fc." in converted.output
    assert "20 BatchNorm batch counter(s) the state dict lacked set to 0" in converted.output
    checkpoint = params.load_file(tmp_path / "g.st")
    assert all(torch.equal(checkpoint[f"G.{k}"], v) for k, v in state.items() if not k.startswith("fc."))

    # A relative init_checkpoint is read beside the config.
    config = image_config(tmp_path, RESNET_CONFIG, 64, model='init_checkpoint = "g.st"')
    made = run("init-model", str(config), "-o", str(tmp_path / "init.safetensors"))
    assert made.exit_code == 0, made.output
    assert "G: 120 tensors (60 local)" in made.output and "from the checkpoint" in made.output
    initial = params.load_file(tmp_path / "init.safetensors")
    assert torch.equal(initial["G.layer4.1.bn2.running_mean"], state["layer4.1.bn2.running_mean"])

    # Every node loads all of round 0 at setup, the pretrained BatchNorm statistics included.
    simulator = Simulator(load_config(config))
    simulator.run()
    assert simulator.records[1].metrics["source_val_acc"] >= 0
    for node in simulator.nodes.values():
        stats = node.models.G.state_dict()["layer1.0.bn1.running_var"]
        assert not torch.equal(stats, torch.ones_like(stats)), "started from the checkpoint's statistics"


def test_convert_checkpoint_names_the_tensors_that_do_not_fit_and_writes_nothing(tmp_path: Path) -> None:
    torchvision_resnet18_state_dict(tmp_path / "resnet18.pth")
    config = image_config(tmp_path, RESNET_CONFIG, 64)
    out = tmp_path / "g.st"
    extra = run(
        "convert-checkpoint", str(config), str(tmp_path / "resnet18.pth"), "-o", str(out), "--drop", "x."
    )
    assert extra.exit_code == 1
    assert "2 tensor(s) that G does not have: 'fc.weight', 'fc.bias'" in extra.output
    assert "--drop fc." in extra.output
    state = torch.load(tmp_path / "resnet18.pth", weights_only=True)
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    missing = run("convert-checkpoint", str(config), str(tmp_path / "partial.pth"), "-o", str(out))
    assert missing.exit_code == 1 and "missing 1 tensor(s) of G: 'layer2.0.conv1.weight'" in missing.output
    gray = tmp_path / "gray.toml"
    gray.write_text(config.read_text().replace("input_shape = [3, 64, 64]", "input_shape = [1, 64, 64]"))
    shape = run("convert-checkpoint", str(gray), str(tmp_path / "resnet18.pth"), "-o", str(out))
    assert shape.exit_code == 1
    assert (
        "tensor G.conv1.weight has shape [64, 3, 7, 7]; the federation's G has [64, 1, 7, 7]" in shape.output
    )
    assert not out.exists()


def test_init_model_refuses_a_checkpoint_with_missing_or_extra_tensors(tmp_path: Path) -> None:
    from fedalign import params
    from fedalign.config import load_config
    from fedalign.initial_parameters import build_initial

    config = image_config(
        tmp_path,
        PLUGIN_CONFIG.replace("fedalign_test_plugins.architectures:", ""),
        32,
        factory="mobilenet_v3_small",
    )
    full = build_initial(load_config(config)).models
    t_only = {f"T.{k}": v for k, v in full["T"].items()}
    params.save_file({**t_only, "T.extra": torch.zeros(1)}, tmp_path / "extra.st")
    params.save_file({k: v for k, v in t_only.items() if k != "T.bias"}, tmp_path / "missing.st")
    for name, message in (
        ("extra.st", "1 tensor(s) that T does not have: 'extra'"),
        ("missing.st", "missing 1 tensor(s) of T: 'bias'"),
    ):
        text = config.read_text().replace("[model]", f'[model]\ninit_checkpoint = "{name}"')
        (tmp_path / "ck.toml").write_text(text)
        result = run("init-model", str(tmp_path / "ck.toml"), "-o", str(tmp_path / "init.safetensors"))
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / "init.safetensors").exists()
