"""The federation's model manifest document: which architecture, which version, and every tensor of G, T, D.

The document is JSON::

    {"architecture": "resnet18", "version": "1",
     "models": {"G": {"model": "G", "tensors": [{"name": ..., "shape": [...], "dtype": "F32",
                                                   "shared": true}, ...]},
                "T": {...}, "D": {...}}}

Each model's entry is `fedalign.manifest.Manifest.to_json()`, listing every tensor, shared (travels after
round 0) and local (stays on the node; by default BatchNorm statistics). It travels beside the initial
parameters (`fedalign.initial_parameters`): the federation's creator builds both (``fedalign init-model``),
the server validates uploads against it without importing the architecture's code, and every node compares
it at setup with the models it builds from its own installed copy (`check`): a node with a different layer
or version stops with a message that names the first difference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedalign.architecture_names import ARCHITECTURE_PATTERN
from fedalign.dtype_names import DTYPE_NAMES
from fedalign.manifest import Manifest, TensorSpec
from fedalign.model_names import MODELS

if TYPE_CHECKING:
    from fedalign.config import FederationConfig
    from fedalign.models import ModelSet

# Bounds of a document anyone may send: far above any real model (ResNet-50 has 320 tensors).
MAX_TENSORS_PER_MODEL = 100_000
MAX_NAME_LENGTH = 1000
MAX_DIMENSIONS = 32


class ManifestError(ValueError):
    """A manifest document that cannot be read."""


class ManifestMismatch(ValueError):
    """Two manifests that differ; the message names the first difference."""


# ------------------------------------------------------------------------------------- the JSON schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorDocument(_Strict):
    """One tensor: its name in the model's state dict, shape, safetensors dtype, and whether it travels."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_DIMENSIONS)]
    dtype: Literal[DTYPE_NAMES]  # type: ignore[valid-type]
    shared: bool


class ModelDocument(_Strict):
    """Every tensor of one model, in its state dict's order."""

    model: Literal[MODELS]  # type: ignore[valid-type]
    tensors: Annotated[list[TensorDocument], Field(max_length=MAX_TENSORS_PER_MODEL)]

    @model_validator(mode="after")
    def _unique_names(self) -> ModelDocument:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"model {self.model} names tensor(s) {repeated[:5]} more than once")
        return self


class ModelManifestDocument(_Strict):
    """The federation's model manifest document (module docstring)."""

    architecture: Annotated[str, Field(max_length=300, pattern=ARCHITECTURE_PATTERN)]
    version: Annotated[str, Field(min_length=1, max_length=100)]
    models: dict[Literal[MODELS], ModelDocument]  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _every_model(self) -> ModelManifestDocument:
        missing = [m for m in MODELS if m not in self.models]
        if missing:
            raise ValueError(f"models {missing} are missing; a manifest lists {', '.join(MODELS)}")
        for key, entry in self.models.items():
            if entry.model != key:
                raise ValueError(f"models.{key} describes model {entry.model!r}")
        return self


# ------------------------------------------------------------------------------------------ the value


@dataclass(frozen=True)
class ModelManifest:
    """The document as values: the architecture's name and version, and each model's `Manifest`."""

    architecture: str
    version: str
    models: Mapping[str, Manifest]

    @classmethod
    def of(cls, architecture: str, models: ModelSet, policy: str) -> ModelManifest:
        """The manifest of built models under a local-parameter policy."""
        from fedalign.models import model_manifests  # torch loads only when models exist anyway

        return cls(architecture, models.version, model_manifests(models, policy))

    @classmethod
    def for_config(cls, config: FederationConfig, *, real_fallback: bool = True) -> ModelManifest:
        """The manifest of the federation's models, built on the meta device (no values, no allocation;
        see `fedalign.models.meta_models` for ``real_fallback``).

        Imports the architecture's factory: never call it on the server for a plug-in architecture.
        """
        from fedalign.architectures import ArchitectureContext
        from fedalign.models import meta_models
        from fedalign.protocol import effective_local_policy

        context = ArchitectureContext.of(config)
        models = meta_models(config.architecture, context, real_fallback=real_fallback)
        return cls.of(config.architecture, models, effective_local_policy(config))

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "version": self.version,
            "models": {m: self.models[m].to_json() for m in MODELS},
        }

    def dumps(self) -> str:
        """The document as JSON, one tensor a line (readable, and a diff of two shows the tensor)."""
        head = {"architecture": self.architecture, "version": self.version}
        lines = ["{" + json.dumps(head)[1:-1] + ', "models": {']
        for i, model in enumerate(MODELS):
            tensors = [json.dumps(t.to_json()) for t in self.models[model]]
            lines.append(f'  "{model}": {{"model": "{model}", "tensors": [')
            lines.extend(f"    {t}," for t in tensors[:-1])
            lines.extend(f"    {t}" for t in tensors[-1:])
            lines.append("  ]}" + ("," if i < len(MODELS) - 1 else ""))
        lines.append("}}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> ModelManifest:
        """Parse a document (a JSON value); `ManifestError` says what is wrong with it."""
        try:
            document = ModelManifestDocument.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            raise ManifestError(f"not a model manifest document: {problems}") from exc
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: ModelManifestDocument) -> ModelManifest:
        return cls(
            document.architecture,
            document.version,
            {
                m: Manifest(
                    m,
                    tuple(
                        TensorSpec(t.name, tuple(t.shape), t.dtype, shared=t.shared)
                        for t in document.models[m].tensors
                    ),
                )
                for m in MODELS
            },
        )

    @classmethod
    def loads(cls, text: str | bytes) -> ModelManifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"a model manifest document must be JSON: {exc}") from exc
        return cls.from_json(data)

    def every_tensor(self) -> Manifest:
        """Every tensor of G, T and D as one manifest, named ``G.<name>``, ``T.<name>``, ``D.<name>``
        (the initial parameters' file), each marked shared: round 0 carries all of them."""
        return Manifest(
            "initial",
            tuple(
                TensorSpec(f"{m}.{t.name}", t.shape, t.dtype, shared=True)
                for m in MODELS
                for t in self.models[m]
            ),
        )


# ------------------------------------------------------------------------------------------ comparing


def first_difference(expected: ModelManifest, actual: ModelManifest) -> str | None:
    """The first way `actual` (a node's models) differs from `expected` (the federation's), or None.

    In order: the architecture, its version, then each model (G, T, D) tensor by tensor in the federation's
    order (missing, shape, dtype, shared or local), then a tensor the node has that the federation has not.
    """
    if expected.architecture != actual.architecture:
        theirs = actual.architecture
        return f"the federation's architecture is {expected.architecture!r}, this node's is {theirs!r}"
    if expected.version != actual.version:
        return (
            f"architecture {expected.architecture!r} is version {expected.version!r} in the federation and "
            f"version {actual.version!r} on this node; install the version the federation was created with"
        )
    for model in MODELS:
        ours, node = expected.models[model], actual.models[model]
        for spec in ours:
            where = f"tensor {model}.{spec.name}"
            if spec.name not in node:
                return f"{where} of the federation's manifest is missing on this node"
            other = node[spec.name]
            if other.shape != spec.shape:
                shapes = f"{list(spec.shape)} in the federation, {list(other.shape)} on this node"
                return f"{where} has shape {shapes}"
            if other.dtype != spec.dtype:
                return f"{where} has dtype {spec.dtype} in the federation, {other.dtype} on this node"
            if other.shared != spec.shared:
                how = {True: "shared", False: "local"}
                return f"{where} is {how[spec.shared]} in the federation, {how[other.shared]} on this node"
        extra = [name for name in node.names if name not in ours]
        if extra:
            return f"tensor {model}.{extra[0]} of this node is not in the federation's manifest"
    return None


def check(expected: ModelManifest, actual: ModelManifest) -> None:
    """Raise `ManifestMismatch` naming the first difference when `actual` is not `expected`."""
    difference = first_difference(expected, actual)
    if difference is not None:
        raise ManifestMismatch(f"this node's models do not match the federation's: {difference}")
