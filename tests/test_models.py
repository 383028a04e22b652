"""The architecture registry and the manifests it yields."""

from __future__ import annotations

import pytest
import torch

from fedalign.architectures import ArchitectureContext
from fedalign.models import build, manifests

DIGITS = ArchitectureContext(input_shape=(3, 28, 28), num_classes=10)


def test_digits_cnn_maps_28x28_rgb_to_features_classes_and_a_domain_logit() -> None:
    models = build("digits_cnn", DIGITS, seed=0)
    features = models.G(torch.rand(4, 3, 28, 28))
    assert models.T(features).shape == (4, 10)
    assert models.D(features).shape == (4, 1)


def test_build_is_reproducible_under_a_seed() -> None:
    a, b = build("digits_cnn", DIGITS, seed=5), build("digits_cnn", DIGITS, seed=5)
    c = build("digits_cnn", DIGITS, seed=6)
    assert all(
        torch.equal(x, y) for x, y in zip(a.G.state_dict().values(), b.G.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.G[0].weight, c.G[0].weight)


def test_batchnorm_statistics_stay_local_by_default() -> None:
    m = manifests("digits_cnn", DIGITS)
    local = {t.name for t in m["G"] if not t.shared}
    assert local == {
        f"{i}.{k}" for i in (1, 5) for k in ("running_mean", "running_var", "num_batches_tracked")
    }
    assert all(t.shared for t in m["D"]), "D has no normalisation layer"
    fedbn = manifests("digits_cnn", DIGITS, policy="bn")
    assert {"1.weight", "1.bias"} <= {t.name for t in fedbn["G"] if not t.shared}
    assert all(t.shared for t in manifests("digits_cnn", DIGITS, policy="none")["G"])


def test_manifest_lists_names_shapes_and_dtypes() -> None:
    g = manifests("mlp", ArchitectureContext(input_shape=(5,), num_classes=2, hidden=4))["G"]
    assert g["0.weight"].shape == (4, 5) and g["0.weight"].dtype == "F32"
    assert g["1.num_batches_tracked"].dtype == "I64"


def test_unknown_architecture_and_wrong_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build("resnet", DIGITS)
    with pytest.raises(ValueError, match="28x28"):
        build("digits_cnn", ArchitectureContext(input_shape=(3, 32, 32), num_classes=10))
    with pytest.raises(ValueError, match="vectors"):
        build("mlp", DIGITS)
