"""Architecture factories for the tests: one that keeps the contract, and one for each way to break it.

`tiny_cnn` is a small image network with BatchNorm (so round 0's local statistics matter), `vector_net` its
counterpart for vectors. Each has a wider layer when the environment variable
``FEDALIGN_TEST_PLUGIN_VARIANT`` is ``wider``: a node process started with it has "a different layer" than
the federation's, which its setup check must catch.
"""

from __future__ import annotations

import os

from torch import nn

from fedalign.architectures import Architecture, ArchitectureContext

VARIANT_ENV = "FEDALIGN_TEST_PLUGIN_VARIANT"
NOT_CALLABLE = 3


def _image_g(context: ArchitectureContext, width: int) -> nn.Module:
    channels = context.input_shape[0]
    last = width * 2 if os.environ.get(VARIANT_ENV) == "wider" else width
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        context.norm(width, spatial=True),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, last, 3, padding=1),
        context.norm(last, spatial=True),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def tiny_cnn(context: ArchitectureContext) -> Architecture:
    """G: two convolutions and global pooling (``options.width`` channels, 8 by default); T: linear."""
    width = int(context.options.get("width", 8))
    G = _image_g(context, width)
    features = width * 2 if os.environ.get(VARIANT_ENV) == "wider" else width
    return Architecture(
        G=G, T=nn.Linear(features, context.num_classes), version=str(context.options.get("version", "1"))
    )


def tiny_cnn_with_d(context: ArchitectureContext) -> Architecture:
    """`tiny_cnn` with its own discriminator (a single linear layer)."""
    built = tiny_cnn(context)
    D = nn.Linear(context.disc_inputs(built.T.in_features), 1)
    return Architecture(G=built.G, T=built.T, D=D, version="1")


def raises(context: ArchitectureContext) -> Architecture:
    raise RuntimeError("the factory needs a GPU it cannot find")


def returns_a_tuple(context: ArchitectureContext) -> tuple[nn.Module, nn.Module]:
    return nn.Flatten(), nn.Linear(4, context.num_classes)


def g_is_not_a_module(context: ArchitectureContext) -> Architecture:
    return Architecture(G="conv", T=nn.Linear(4, context.num_classes))  # type: ignore[arg-type]


def g_keeps_spatial_dimensions(context: ArchitectureContext) -> Architecture:
    G = nn.Conv2d(context.input_shape[0], 4, 3, padding=1)  # (N, 4, H, W): no pooling, no flatten
    return Architecture(G=G, T=nn.Linear(4, context.num_classes))


def t_has_the_wrong_classes(context: ArchitectureContext) -> Architecture:
    G = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Architecture(G=G, T=nn.Linear(context.input_shape[0], context.num_classes + 1))


def d_has_two_outputs(context: ArchitectureContext) -> Architecture:
    G = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    features = context.input_shape[0]
    return Architecture(G=G, T=nn.Linear(features, context.num_classes), D=nn.Linear(features, 2))


def empty_version(context: ArchitectureContext) -> Architecture:
    built = tiny_cnn(context)
    return Architecture(G=built.G, T=built.T, version="")


def vector_net(context: ArchitectureContext) -> Architecture:
    """For vectors: a linear layer and the federation's normalisation (GroupNorm under privacy); 24 wide
    instead of 12 in a process where ``FEDALIGN_TEST_PLUGIN_VARIANT=wider``."""
    (dim,) = context.input_shape
    width = 24 if os.environ.get(VARIANT_ENV) == "wider" else 12
    G = nn.Sequential(nn.Linear(dim, width), context.norm(width, spatial=False), nn.ReLU())
    return Architecture(G=G, T=nn.Linear(width, context.num_classes))


def vector_net_always_batchnorm(context: ArchitectureContext) -> Architecture:
    """For vectors, with BatchNorm whatever the federation's normalisation: Opacus cannot make it private."""
    (dim,) = context.input_shape
    G = nn.Sequential(nn.Linear(dim, 12), nn.BatchNorm1d(12), nn.ReLU())
    return Architecture(G=G, T=nn.Linear(12, context.num_classes))
