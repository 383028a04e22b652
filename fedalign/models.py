"""The models of a federation: G, T and D built from an architecture, and which of their tensors travel.

`build` resolves the federation's ``architecture`` (a built-in, an import path or a registered name:
`fedalign.architectures`) and returns the three models as a `ModelSet`. The two classic architectures are
defined here: ``digits_cnn`` and ``mlp``; the torchvision backbones are in `fedalign.backbones`.

The discriminator holds no normalisation layer on purpose: every node trains its copy of D on batches of
one domain only, and batch normalisation inside D would normalise away exactly the shift D must see.

G's normalisation layers are BatchNorm by default (the architectures of the literature) or GroupNorm
(``ArchitectureContext.normalization = "group"``), which normalises each example on its own: differential
privacy needs it, since BatchNorm makes one example's gradient depend on the rest of its batch, and its
running statistics are a record of the node's data that no noise protects. GroupNorm keeps no running
statistics, so under every local-parameter policy nothing of it stays on the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedalign.architectures import (
    Architecture,
    ArchitectureContext,
    ArchitectureError,
    build_architecture,
)
from fedalign.manifest import Manifest
from fedalign.model_names import MODELS

# The name of the context before architectures became plug-ins (`build(name, ModelShape(...))`).
ModelShape = ArchitectureContext


@dataclass
class ModelSet:
    G: nn.Module
    T: nn.Module
    D: nn.Module
    # The architecture's declared version (`fedalign.architectures.Architecture.version`).
    version: str = "1"

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


def _no_options(name: str, context: ArchitectureContext) -> None:
    if context.options:
        raise ArchitectureError(f"{name} takes no model.options; got {sorted(context.options)}")


def digits_cnn(context: ArchitectureContext) -> Architecture:
    """The LeNet-style network of the digit-adaptation literature (Ganin et al., DANN, JMLR 2016)."""
    _no_options("digits_cnn", context)
    if len(context.input_shape) != 3:
        raise ArchitectureError(f"digits_cnn takes 28x28 images, got inputs of shape {context.input_shape}")
    channels, height, width = context.input_shape
    if (height, width) != (28, 28):
        raise ArchitectureError(f"digits_cnn takes 28x28 images, got {height}x{width}")
    G = nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=5),
        context.norm(32, spatial=True),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 48, kernel_size=5),
        context.norm(48, spatial=True),
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
        nn.Linear(100, context.num_classes),
    )
    D = nn.Sequential(nn.Linear(context.disc_inputs(features), 100), nn.ReLU(), nn.Linear(100, 1))
    return Architecture(G, T, D)


def mlp(context: ArchitectureContext) -> Architecture:
    """Two hidden layers of width ``hidden`` for G, two for T and two for D: the vector tasks' network."""
    _no_options("mlp", context)
    if len(context.input_shape) != 1:
        raise ArchitectureError(f"mlp takes vectors, got inputs of shape {context.input_shape}")
    (dim,) = context.input_shape
    h = context.hidden
    G = nn.Sequential(
        nn.Linear(dim, h),
        context.norm(h, spatial=False),
        nn.ReLU(),
        nn.Linear(h, h),
        context.norm(h, spatial=False),
        nn.ReLU(),
    )
    T = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, context.num_classes))
    D = nn.Sequential(nn.Linear(context.disc_inputs(h), h), nn.ReLU(), nn.Linear(h, 1))
    return Architecture(G, T, D)


# Which tensors stay on the node. BatchNorm running statistics describe one node's data, so by default
# they never travel; "bn" keeps BatchNorm's affine parameters local too (FedBN); "none" shares everything.
LOCAL_POLICIES = ("bn_stats", "bn", "none")


def build(architecture: str, context: ArchitectureContext, seed: int | None = None) -> ModelSet:
    """Build G, T and D; with a seed the initialisation is reproducible and independent of global RNG use.

    Raises `ArchitectureError` (a ValueError) when the architecture cannot be found or breaks the contract.
    """
    if seed is None:
        built = build_architecture(architecture, context)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = build_architecture(architecture, context)
    assert built.D is not None  # build_architecture supplies the default D
    return ModelSet(built.G, built.T, built.D, version=built.version)


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


def manifests(
    architecture: str, context: ArchitectureContext, policy: str = "bn_stats"
) -> dict[str, Manifest]:
    """The manifest of each model (G, T, D) of an architecture under a local-parameter policy."""
    return model_manifests(meta_models(architecture, context), policy)


def meta_models(architecture: str, context: ArchitectureContext, *, real_fallback: bool = True) -> ModelSet:
    """The models with names, shapes and dtypes but no values: on the meta device nothing is allocated or
    initialised (a 100 MB model took 3.4 s to build for its manifest).

    Without ``real_fallback`` a model the meta device cannot build raises `ArchitectureError` instead of
    being built for real: what checks untrusted settings (the server, for a built-in architecture) must
    never allocate what they ask for.
    """
    try:
        with torch.device("meta"):
            return build(architecture, context)
    except ArchitectureError:
        if not real_fallback:
            raise
        # A layer the meta device cannot run (its probe failed there): build it for real. A model that
        # breaks the contract fails here again, with the same message.
        return build(architecture, context, seed=0)


def model_manifests(models: ModelSet, policy: str) -> dict[str, Manifest]:
    """The manifest of each of `models` under a local-parameter policy."""
    return {
        name: Manifest.from_state_dict(name, module.state_dict(), local=local_names(module, policy))
        for name, module in models.items()
    }
