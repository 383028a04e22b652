"""Which tensors an upload must hold: the federation's model manifest document, stored with it.

The document (`fedalign.model_manifest.ModelManifest`) is the one of the federation's initial parameters:
built by the server for a built-in architecture, uploaded by the creator for a plug-in
(`backend.services.initial_models`). The server reads uploads against it and never builds a plug-in's
models: it never imports a user's code.

A submission of G, T or D is checked against the shared part of that model's manifest; the published
target model (slot ``model`` of the publish step) holds G's and T's shared *and* local tensors, named
``G.<name>`` and ``T.<name>`` (as `fedalign.node.NodeRuntime.full_model` writes them).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict

from backend.errors import conflict
from backend.models import Federation
from fedalign.architecture_names import BUILTINS
from fedalign.config import FederationConfig
from fedalign.manifest import Manifest, TensorSpec
from fedalign.model_manifest import ModelManifest, ModelManifestDocument
from fedalign.phases import PUBLISHED_MODEL
from messaging.node_api import FederationManifest, PublishedLayout

PUBLISHED_SLOT = PUBLISHED_MODEL
PUBLISHED_PARTS = ("G", "T")

# A started federation's document never changes: parsed once per process (uploads read it on the hot path).
_CACHE_SIZE = 256
_frozen: OrderedDict[tuple[str, dt.datetime], ModelManifest] = OrderedDict()
_lock = threading.Lock()


def federation_manifest(federation: Federation) -> ModelManifest:
    """The federation's model manifest document; 409 ``no_model_manifest`` when it has none yet."""
    key = (federation.id, federation.started_at) if federation.started_at is not None else None
    if key is not None:
        with _lock:
            cached = _frozen.get(key)
        if cached is not None:
            return cached
    manifest = _read(federation)
    if key is not None:
        with _lock:
            _frozen[key] = manifest
            while len(_frozen) > _CACHE_SIZE:
                _frozen.popitem(last=False)
    return manifest


def _read(federation: Federation) -> ModelManifest:
    if federation.model_manifest is not None:
        return ModelManifest.from_json(federation.model_manifest)
    config = FederationConfig.model_validate(federation.config)
    if config.architecture in BUILTINS:
        # A federation created before manifests were stored: a built-in's is the server's own to build.
        return ModelManifest.for_config(config)
    raise conflict(
        "no_model_manifest",
        f"federation {federation.name!r} has no model manifest document yet; its creator uploads it with "
        f"PUT /api/v1/federations/{federation.id}/initial-model/manifest (the file `fedalign init-model` "
        "writes beside the initial parameters)",
    )


def published_manifest(document: ModelManifest) -> Manifest:
    """The published target model's tensors: every tensor of G and T, named ``G.<name>`` and ``T.<name>``."""
    return Manifest(
        PUBLISHED_SLOT,
        tuple(
            TensorSpec(f"{part}.{t.name}", t.shape, t.dtype, shared=True)
            for part in PUBLISHED_PARTS
            for t in document.models[part]
        ),
    )


def slot_manifest(document: ModelManifest, slot: str) -> Manifest:
    """The manifest an upload to ``slot`` is validated against (`fedalign.params.validate` takes its shared
    part)."""
    if slot == PUBLISHED_SLOT:
        return published_manifest(document)
    return document.models[slot]


def manifest_out(document: ModelManifest, config: FederationConfig) -> FederationManifest:
    """What a node (or the admin) reads before a run: every model's tensors and the published layout."""
    parsed = ModelManifestDocument.model_validate(document.to_json())
    published = published_manifest(document)
    return FederationManifest(
        architecture=parsed.architecture,
        version=parsed.version,
        builtin=config.architecture in BUILTINS,
        models=parsed.models,
        published=(
            PublishedLayout(slot=PUBLISHED_SLOT, tensors=[t.to_json() for t in published])
            if config.publish_model
            else None
        ),
    )
