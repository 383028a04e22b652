"""The architecture plug-in contract: how a name finds its factory, what FedAlign checks of what it returns,
the D it adds, the torchvision backbones, and the model manifest document that nodes compare at setup."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedalign.architecture_names import BUILTINS
from fedalign.architectures import ArchitectureContext, ArchitectureError, resolve
from fedalign.config import FederationConfig
from fedalign.model_manifest import ManifestError, ManifestMismatch, ModelManifest, check, first_difference
from fedalign.models import build, manifests

PLUGIN = "fedalign_test_plugins.architectures"
IMAGES = ArchitectureContext(input_shape=(3, 32, 32), num_classes=4)


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ resolving


def test_every_builtin_name_resolves_to_a_factory() -> None:
    for name in BUILTINS:
        assert callable(resolve(name)), name


def test_an_import_path_resolves_to_the_plugin_factory(test_plugins: Path) -> None:
    from fedalign_test_plugins.architectures import tiny_cnn

    assert resolve(f"{PLUGIN}:tiny_cnn") is tiny_cnn


def test_a_name_registered_by_an_installed_package_resolves(test_plugins: Path, tmp_path: Path) -> None:
    # An installed distribution as importlib.metadata finds it: a dist-info folder on sys.path.
    info = tmp_path / "acme_models-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fedalign.architectures]\nacme_tiny = {PLUGIN}:tiny_cnn\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        models = build("acme_tiny", IMAGES, seed=0)
    finally:
        sys.path.remove(str(tmp_path))
    assert models.G(torch.zeros(2, 3, 32, 32)).shape == (2, 8)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_net", "unknown architecture 'no_such_net'; expected one of digits_cnn"),
        ("no_such_package.models:net", "module 'no_such_package.models' cannot be imported"),
        (f"{PLUGIN}:no_such_factory", f"module '{PLUGIN}' has no attribute 'no_such_factory'"),
        (f"{PLUGIN}:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable factory"),
        ("fedalign_test_plugins.broken:build", "raised ImportError: broken needs the package"),
    ],
)
def test_a_name_that_finds_no_factory_is_refused_with_what_is_wrong(
    test_plugins: Path, name: str, message: str
) -> None:
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(name)


def test_the_config_accepts_any_well_formed_name_and_refuses_others() -> None:
    for name in ("resnet18", "acme_tiny", "my_pkg.models:build", "my_pkg.models:Nets.small"):
        assert FederationConfig.model_validate({"architecture": name}).architecture == name
    for bad in ("my pkg:build", "pkg:", ":build", "pkg:build:again", "1net"):
        with pytest.raises(ValueError, match="architecture"):
            FederationConfig.model_validate({"architecture": bad})


# ------------------------------------------------------------------------------- what a factory returns


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("raises", "its factory raised RuntimeError: the factory needs a GPU"),
        ("returns_a_tuple", "its factory returned a tuple; expected fedalign.architectures.Architecture"),
        ("g_is_not_a_module", "G is a str; expected a torch.nn.Module"),
        ("g_keeps_spatial_dimensions", r"G maps inputs of shape \[2, 3, 32, 32\] to shape \[2, 4, 32, 32\]"),
        ("t_has_the_wrong_classes", r"T maps G's features of shape \[2, 3\] to \[2, 5\]; expected \[2, 4\]"),
        ("d_has_two_outputs", r"D maps inputs .* to \[2, 2\]; expected \[2, 1\]"),
        ("empty_version", "version must be a non-empty string"),
    ],
)
def test_a_factory_that_breaks_the_contract_is_refused_naming_it(
    test_plugins: Path, factory: str, message: str
) -> None:
    with pytest.raises(ArchitectureError, match=f"architecture '{PLUGIN}:{factory}': {message}"):
        build(f"{PLUGIN}:{factory}", IMAGES, seed=0)


def test_d_is_built_on_gs_feature_size_unless_the_factory_supplies_one(test_plugins: Path) -> None:
    plain = build(f"{PLUGIN}:tiny_cnn", ArchitectureContext((3, 32, 32), 4, options={"width": 6}, hidden=10))
    assert plain.D(torch.zeros(2, 6)).shape == (2, 1)
    assert plain.D[0].in_features == 6 and plain.D[0].out_features == 10
    conditional = build(f"{PLUGIN}:tiny_cnn", ArchitectureContext((3, 32, 32), 4, conditional=True))
    assert conditional.D[0].in_features == 8 * 4, "features x class probabilities"
    own = build(f"{PLUGIN}:tiny_cnn_with_d", IMAGES)
    assert isinstance(own.D, nn.Linear)


def test_checking_a_factory_changes_no_value_and_draws_no_random_number(test_plugins: Path) -> None:
    """The probes run on the meta device: BatchNorm statistics stay at their defaults, and the seeded
    values are those of the factory's own modules built in order."""
    models = build(f"{PLUGIN}:tiny_cnn", IMAGES, seed=3)
    bn = models.G[1]
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    from fedalign_test_plugins.architectures import tiny_cnn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        by_hand = tiny_cnn(IMAGES)
        D = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 1))
    for ours, theirs in ((models.G, by_hand.G), (models.T, by_hand.T), (models.D, D)):
        assert all(
            torch.equal(a, b) for a, b in zip(tensors(ours).values(), tensors(theirs).values(), strict=True)
        )


def test_the_builtin_architectures_take_no_options() -> None:
    with pytest.raises(ArchitectureError, match=r"mlp takes no model.options; got \['depth'\]"):
        build("mlp", ArchitectureContext((8,), 3, options={"depth": 3}))


def test_options_are_bounded_json() -> None:
    assert FederationConfig.model_validate({"model": {"options": {"a": [1, {"b": None}]}}}).model.options
    with pytest.raises(ValueError, match=r"model\.options takes"):
        FederationConfig.model_validate({"model": {"options": {"blob": "x" * 20_000}}})


# ------------------------------------------------------------------------------------------- backbones


@pytest.mark.parametrize(("name", "features"), [("resnet18", 512), ("mobilenet_v3_small", 576)])
def test_a_backbone_is_g_up_to_global_pooling_with_a_linear_t(name: str, features: int) -> None:
    models = build(name, ArchitectureContext((3, 64, 64), 5), seed=0)
    out = models.G(torch.rand(4, 3, 64, 64))
    assert out.shape == (4, features)
    assert isinstance(models.T, nn.Linear) and models.T(out).shape == (4, 5)
    assert models.D(out).shape == (4, 1)
    # torchvision's own names, less the classifier head: a torchvision state dict maps onto G.
    head = "fc." if name == "resnet18" else "classifier."
    assert not any(k.startswith(head) for k in models.G.state_dict())


def test_resnet50_has_torchvisions_tensor_names_and_2048_features() -> None:
    m = manifests("resnet50", ArchitectureContext((3, 32, 32), 3))
    assert "layer4.2.bn3.running_var" in m["G"] and len(m["G"]) == 318
    assert m["T"]["weight"].shape == (3, 2048)


def test_a_backbone_takes_any_size_from_32_and_any_channel_count() -> None:
    models = build("resnet18", ArchitectureContext((1, 40, 36), 2), seed=0)
    assert models.G(torch.rand(2, 1, 40, 36)).shape == (2, 512)
    with pytest.raises(ArchitectureError, match=r"at least 32x32, got inputs of shape \[3, 28, 28\]"):
        build("resnet18", ArchitectureContext((3, 28, 28), 2))
    with pytest.raises(ArchitectureError, match="images"):
        build("mobilenet_v3_small", ArchitectureContext((64,), 2))


def test_group_normalization_replaces_every_batchnorm_of_a_backbone() -> None:
    for name in ("resnet18", "mobilenet_v3_small"):
        models = build(name, ArchitectureContext((3, 32, 32), 2, normalization="group"))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models.G.modules()), name
        assert any(isinstance(m, nn.GroupNorm) for m in models.G.modules()), name


def test_backbones_never_download_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a backbone tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    for name in ("resnet18", "mobilenet_v3_small"):
        build(name, IMAGES, seed=0)


# ------------------------------------------------------------------------------- the manifest document


def plugin_manifest(width: int = 8, version: str = "1") -> ModelManifest:
    config = FederationConfig.model_validate(
        {
            "architecture": f"{PLUGIN}:tiny_cnn",
            "model": {
                "input_shape": [3, 32, 32],
                "num_classes": 4,
                "options": {"width": width, "version": version},
            },
        }
    )
    return ModelManifest.for_config(config)


def test_the_manifest_document_round_trips_through_json(test_plugins: Path) -> None:
    document = plugin_manifest()
    data = json.loads(document.dumps())
    assert data["architecture"] == f"{PLUGIN}:tiny_cnn" and data["version"] == "1"
    assert set(data["models"]) == {"G", "T", "D"}
    local = [t["name"] for t in data["models"]["G"]["tensors"] if not t["shared"]]
    assert "1.running_mean" in local
    assert ModelManifest.from_json(data) == document
    assert first_difference(document, ModelManifest.from_json(data)) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version="2"), "version '2' in the federation and version '1' on this node"),
        (lambda d: d.update(architecture="resnet18"), "the federation's architecture is 'resnet18'"),
        (
            lambda d: d["models"]["G"]["tensors"][0].update(shape=[9, 3, 3, 3]),
            r"tensor G.0.weight has shape \[9, 3, 3, 3\] in the federation, \[8, 3, 3, 3\] on this node",
        ),
        (
            lambda d: d["models"]["T"]["tensors"][1].update(dtype="F16"),
            "tensor T.bias has dtype F16 in the federation, F32 on this node",
        ),
        (
            lambda d: d["models"]["D"]["tensors"].append(
                {"name": "3.weight", "shape": [1], "dtype": "F32", "shared": True}
            ),
            "tensor D.3.weight of the federation's manifest is missing on this node",
        ),
        (
            lambda d: d["models"]["D"]["tensors"].pop(),
            "tensor D.2.bias of this node is not in the federation",
        ),
        (
            lambda d: d["models"]["G"]["tensors"][4].update(shared=True),
            "tensor G.1.running_mean is shared in the federation, local on this node",
        ),
    ],
)
def test_a_node_whose_models_differ_is_told_the_first_difference(
    test_plugins: Path, change: object, message: str
) -> None:
    node = plugin_manifest()
    federation = copy.deepcopy(node.to_json())
    change(federation)  # type: ignore[operator]
    with pytest.raises(ManifestMismatch, match=message):
        check(ModelManifest.from_json(federation), node)


def test_the_first_of_several_differences_is_the_one_named(test_plugins: Path) -> None:
    wider = plugin_manifest(width=12)
    message = first_difference(plugin_manifest(), wider)
    assert message == "tensor G.0.weight has shape [8, 3, 3, 3] in the federation, [12, 3, 3, 3] on this node"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "Input should be a valid dictionary"),
        ({"architecture": "mlp", "version": "1", "models": {}}, "models .* are missing"),
        ({"architecture": "x y", "version": "1", "models": {}}, "architecture"),
    ],
)
def test_a_document_that_is_not_a_manifest_is_refused(document: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        ModelManifest.from_json(document)


def test_a_document_with_an_unknown_dtype_or_a_repeated_tensor_is_refused() -> None:
    data = manifests_document("mlp")
    data["models"]["T"]["tensors"][0]["dtype"] = "F128"
    with pytest.raises(ManifestError, match="dtype"):
        ModelManifest.from_json(data)
    data = manifests_document("mlp")
    data["models"]["T"]["tensors"].append(dict(data["models"]["T"]["tensors"][0]))
    with pytest.raises(ManifestError, match="more than once"):
        ModelManifest.from_json(data)


def manifests_document(architecture: str) -> dict:
    config = FederationConfig.model_validate({"architecture": architecture, "model": {"input_shape": [4]}})
    return ModelManifest.for_config(config).to_json()
