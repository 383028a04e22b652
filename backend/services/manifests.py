"""Which tensors an upload must hold: the federation's manifests, built from its config.

A submission of G, T or D is checked against the shared part of that model's manifest; the published
target model (slot ``model`` of the publish step) holds G's and T's shared *and* local tensors, named
``G.<name>`` and ``T.<name>`` (as `fedalign.node.NodeRuntime.full_model` writes them).
"""

from __future__ import annotations

from functools import lru_cache

from fedalign.config import FederationConfig
from fedalign.manifest import Manifest, TensorSpec
from fedalign.models import ModelShape, manifests
from fedalign.node import model_shape
from fedalign.protocol import effective_local_policy

PUBLISHED_SLOT = "model"
PUBLISHED_PARTS = ("G", "T")


@lru_cache(maxsize=64)
def _cached(architecture: str, shape: ModelShape, policy: str) -> dict[str, Manifest]:
    return manifests(architecture, shape, policy)


def model_manifests(config: FederationConfig) -> dict[str, Manifest]:
    """G, T and D of this federation, each with its shared and local tensors marked."""
    return _cached(config.architecture, model_shape(config), effective_local_policy(config))


def published_manifest(config: FederationConfig) -> Manifest:
    models = model_manifests(config)
    return Manifest(
        PUBLISHED_SLOT,
        tuple(
            TensorSpec(f"{part}.{t.name}", t.shape, t.dtype, shared=True)
            for part in PUBLISHED_PARTS
            for t in models[part]
        ),
    )


def slot_manifest(config: FederationConfig, slot: str) -> Manifest:
    """The manifest an upload to ``slot`` is validated against (`fedalign.params.validate` takes its shared
    part)."""
    if slot == PUBLISHED_SLOT:
        return published_manifest(config)
    return model_manifests(config)[slot]
