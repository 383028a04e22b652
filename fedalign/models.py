"""Architectures: each gives a feature extractor G, a task model T and a domain discriminator D.

The discriminator holds no normalisation layer on purpose: every node trains its copy of D on batches of
one domain only, and batch normalisation inside D would normalise away exactly the shift D must see.

G's normalisation layers are BatchNorm by default (the architectures of the literature) or GroupNorm
(``ModelShape.normalization = "group"``), which normalises each example on its own: differential privacy
needs it, since BatchNorm makes one example's gradient depend on the rest of its batch, and its running
statistics are a record of the node's data that no noise protects. GroupNorm keeps no running statistics,
so under every local-parameter policy nothing of it stays on the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedalign.manifest import Manifest
from fedalign.model_names import MODELS


@dataclass(frozen=True)
class ModelShape:
    """What an architecture needs to know about the data to build its models."""

    input_shape: tuple[int, ...]
    num_classes: int
    hidden: int = 128
    # Class-conditional discrimination (CDAN): D reads the outer product of a feature vector and the task
    # model's class probabilities, so its input is feature_dim * num_classes wide.
    conditional: bool = False
    # "batch" (BatchNorm) or "group" (GroupNorm, per example: what differential privacy needs).
    normalization: str = "batch"

    def norm(self, channels: int, spatial: bool) -> nn.Module:
        """G's normalisation layer over `channels` features (of images when `spatial`)."""
        if self.normalization == "batch":
            return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
        if self.normalization == "group":
            # Images: groups of channels as in Wu and He (ECCV 2018), 8 groups here as the channel counts
            # are small; vectors: one group, i.e. layer normalisation over the features.
            return nn.GroupNorm(math.gcd(8, channels) if spatial else 1, channels)
        raise ValueError(f"unknown normalization {self.normalization!r}; expected 'batch' or 'group'")

    def disc_inputs(self, feature_dim: int) -> int:
        return feature_dim * self.num_classes if self.conditional else feature_dim


@dataclass
class ModelSet:
    G: nn.Module
    T: nn.Module
    D: nn.Module

    def __getitem__(self, name: str) -> nn.Module:
        if name not in MODELS:
            raise KeyError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
        return getattr(self, name)

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(name, self[name]) for name in MODELS]

    def to(self, device: torch.device) -> ModelSet:
        for _, module in self.items():
            module.to(device)
        return self


def _digits_cnn(shape: ModelShape) -> ModelSet:
    """The LeNet-style network of the digit-adaptation literature (Ganin et al., DANN, JMLR 2016)."""
    channels, height, width = shape.input_shape
    if (height, width) != (28, 28):
        raise ValueError(f"digits_cnn takes 28x28 images, got {height}x{width}")
    G = nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=5),
        shape.norm(32, spatial=True),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 48, kernel_size=5),
        shape.norm(48, spatial=True),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    features = 48 * 4 * 4
    T = nn.Sequential(
        nn.Linear(features, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, shape.num_classes),
    )
    D = nn.Sequential(nn.Linear(shape.disc_inputs(features), 100), nn.ReLU(), nn.Linear(100, 1))
    return ModelSet(G, T, D)


def _mlp(shape: ModelShape) -> ModelSet:
    if len(shape.input_shape) != 1:
        raise ValueError(f"mlp takes vectors, got inputs of shape {shape.input_shape}")
    (dim,) = shape.input_shape
    h = shape.hidden
    G = nn.Sequential(
        nn.Linear(dim, h),
        shape.norm(h, spatial=False),
        nn.ReLU(),
        nn.Linear(h, h),
        shape.norm(h, spatial=False),
        nn.ReLU(),
    )
    T = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, shape.num_classes))
    D = nn.Sequential(nn.Linear(shape.disc_inputs(h), h), nn.ReLU(), nn.Linear(h, 1))
    return ModelSet(G, T, D)


ARCHITECTURES: dict[str, Callable[[ModelShape], ModelSet]] = {
    "digits_cnn": _digits_cnn,
    "mlp": _mlp,
}

# Which tensors stay on the node. BatchNorm running statistics describe one node's data, so by default
# they never travel; "bn" keeps BatchNorm's affine parameters local too (FedBN); "none" shares everything.
LOCAL_POLICIES = ("bn_stats", "bn", "none")


def build(architecture: str, shape: ModelShape, seed: int | None = None) -> ModelSet:
    """Build G, T and D; with a seed the initialisation is reproducible and independent of global RNG use."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError as exc:
        raise ValueError(
            f"unknown architecture {architecture!r}; expected one of {', '.join(sorted(ARCHITECTURES))}"
        ) from exc
    if seed is None:
        return factory(shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(shape)


def local_names(module: nn.Module, policy: str) -> set[str]:
    """Names in ``module.state_dict()`` that stay on the node under a local-parameter policy."""
    if policy not in LOCAL_POLICIES:
        raise ValueError(f"unknown local-parameter policy {policy!r}; expected one of {LOCAL_POLICIES}")
    names: set[str] = set()
    if policy == "none":
        return names
    for prefix, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            keep = ["running_mean", "running_var", "num_batches_tracked"]
            if policy == "bn":
                keep += ["weight", "bias"]
            names.update(f"{prefix}.{k}" if prefix else k for k in keep)
    return names


def manifests(architecture: str, shape: ModelShape, policy: str = "bn_stats") -> dict[str, Manifest]:
    """The manifest of each model (G, T, D) of an architecture under a local-parameter policy."""
    # Names, shapes and dtypes only: on the meta device nothing is allocated or initialised (a 100 MB
    # model took 3.4 s to build for its manifest).
    with torch.device("meta"):
        models = build(architecture, shape)
    return {
        name: Manifest.from_state_dict(name, module.state_dict(), local=local_names(module, policy))
        for name, module in models.items()
    }
