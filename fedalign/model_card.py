"""The model card: what a trained target model is, so that it can be used outside its federation.

A federation's result is the target's model: G and T with every tensor (shared and the target's local ones,
such as its BatchNorm statistics), in a safetensors file named ``G.<name>`` and ``T.<name>``. Its card
records what is needed to use it anywhere:

- the architecture: its name, its version and the config's ``[model]`` table (input shape, classes, hidden
  width, normalisation layers, the factory's ``options``), so that the same G and T can be built again;
- the input pipeline: the config's ``[preprocessing]`` (``resize``, ``mean``, ``std``). Images are read at
  ``model.input_shape``'s height and width (which is what ``resize`` or the target's ``imagefolder:...?size=``
  set during training), scaled to [0, 1], then normalised per channel;
- the class count and the manifest of the federation's models (every tensor's name, shape and dtype);
- where it comes from: the federation, its algorithm, rounds and seed, and the target node.

How the card travels: nodes never send it (a node's uploads are tensors only, their safetensors metadata is
refused). The server derives it from the federation's config and model manifest, serves it beside the model
(``GET .../model/card``) and, asked to (``GET .../model?card=true``), inside the file: as JSON under the key
`CARD_KEY` of the safetensors header's ``__metadata__``. ``fedalign simulate --save-model`` writes the same.
The file stays a plain safetensors file any reader opens; `fedalign.trained_model.load_model` reads both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedalign.architecture_names import ARCHITECTURE_PATTERN
from fedalign.config import Algorithm, ModelOptions, Preprocessing
from fedalign.model_manifest import ModelManifest, ModelManifestDocument

if TYPE_CHECKING:
    from fedalign.config import FederationConfig

# The key of the card in a safetensors file's __metadata__ (its value: the card as JSON).
CARD_KEY = "fedalign.model_card"
# The card's own format; a reader refuses a card of another format rather than misread it.
CARD_FORMAT = 1
# A card beside a model file that holds none: ``model.safetensors`` -> ``model.card.json``.
CARD_SUFFIX = ".card.json"
# The parts of the federation's models that make the target's model (D stays behind: it served training).
TARGET_PARTS = ("G", "T")


class ModelCardError(ValueError):
    """A model file whose card is missing or cannot be read, with what to do about it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provenance(_Strict):
    """Where the model comes from."""

    federation: Annotated[str, Field(max_length=200, description="The federation's name.")]
    federation_id: Annotated[
        str | None,
        Field(max_length=64, description="The server's id of the federation (none in a simulation)."),
    ] = None
    algorithm: Algorithm
    rounds: Annotated[
        int, Field(ge=1, description="The rounds it trained for (the model is the last one's).")
    ]
    seed: Annotated[int, Field(ge=0)]
    target: Annotated[str | None, Field(max_length=64, description="The target node that assembled it.")] = (
        None
    )


class ModelCard(_Strict):
    """A trained target model's card (the module's docstring)."""

    format: Literal[1] = CARD_FORMAT
    architecture: Annotated[str, Field(max_length=300, pattern=ARCHITECTURE_PATTERN)]
    architecture_version: Annotated[str, Field(min_length=1, max_length=100)]
    model: Annotated[
        ModelOptions,
        Field(
            description="The config's [model] table (its init_checkpoint, a path on one machine, left out)."
        ),
    ]
    conditional: Annotated[
        bool, Field(description="D read G's features times T's class probabilities (CDAN) in training.")
    ] = False
    preprocessing: Annotated[
        Preprocessing,
        Field(description="The config's [preprocessing]: resize, mean and std apply to every input."),
    ]
    manifest: Annotated[
        ModelManifestDocument, Field(description="Every tensor of the federation's G, T and D.")
    ]
    provenance: Provenance

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.manifest.architecture != self.architecture:
            raise ValueError(
                f"the card names architecture {self.architecture!r} but its manifest describes "
                f"{self.manifest.architecture!r}"
            )
        if self.manifest.version != self.architecture_version:
            raise ValueError(
                f"the card names architecture version {self.architecture_version!r} but its manifest "
                f"describes version {self.manifest.version!r}"
            )
        return self

    # ------------------------------------------------------------------------------------------- making

    @classmethod
    def of(
        cls,
        config: FederationConfig,
        manifest: ModelManifest,
        *,
        federation_id: str | None = None,
        target: str | None = None,
        round_: int | None = None,
    ) -> ModelCard:
        """The card of a federation's target model, from its config and model manifest document; `round_`:
        a checkpoint's round (default: the last)."""
        if target is None and config.nodes:
            target = config.target.name
        return cls(
            architecture=config.architecture,
            architecture_version=manifest.version,
            model=config.model.model_copy(update={"init_checkpoint": None}),
            conditional=config.hyperparameters.conditional,
            preprocessing=config.preprocessing.model_copy(update={"augment": "none"}),
            manifest=ModelManifestDocument.model_validate(manifest.to_json()),
            provenance=Provenance(
                federation=config.name,
                federation_id=federation_id,
                algorithm=config.algorithm,
                rounds=config.rounds if round_ is None else round_,
                seed=config.seed,
                target=target,
            ),
        )

    # ------------------------------------------------------------------------------------------ reading

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input, without the batch dimension: (channels, height, width) or (length,)."""
        return tuple(self.model.input_shape)

    @property
    def images(self) -> bool:
        return len(self.input_shape) == 3

    def target_manifest(self) -> ModelManifest:
        return ModelManifest.from_document(self.manifest)

    def tensor_names(self) -> list[str]:
        """The model file's tensors, in order: ``G.<name>`` then ``T.<name>``."""
        return [f"{part}.{t.name}" for part in TARGET_PARTS for t in self.manifest.models[part].tensors]

    # ------------------------------------------------------------------------------------- serialising

    def to_json_text(self) -> str:
        return self.model_dump_json()

    def metadata(self) -> dict[str, str]:
        """The safetensors ``__metadata__`` that carries this card."""
        return {"format": "pt", CARD_KEY: self.to_json_text()}

    @classmethod
    def from_json_value(cls, value: Any, source: str) -> ModelCard:
        if isinstance(value, dict) and value.get("format") != CARD_FORMAT:
            raise ModelCardError(
                f"{source} holds a model card of format {value.get('format')!r}; this FedAlign reads format "
                f"{CARD_FORMAT}: install the FedAlign release that wrote it"
            )
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            raise ModelCardError(f"{source} holds a model card that cannot be read: {problems}") from exc

    @classmethod
    def from_json_text(cls, text: str | bytes, source: str) -> ModelCard:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ModelCardError(f"{source}: the model card is not JSON ({exc})") from exc
        return cls.from_json_value(value, source)


def card_path_for(model_path: str | os.PathLike[str]) -> Path:
    """Where a card goes beside a model file: ``model.safetensors`` -> ``model.card.json``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}{CARD_SUFFIX}")


def read_card(model_path: str | os.PathLike[str]) -> ModelCard:
    """The card of a model file: in its safetensors metadata, else in ``<name>.card.json`` beside it."""
    from fedalign import params  # torch and safetensors load only for a model file

    path = Path(model_path)
    if not path.is_file():
        raise ModelCardError(f"model file {path} does not exist")
    try:
        metadata = params.read_metadata(path)
    except params.ParameterError as exc:
        raise ModelCardError(f"{path} is not a model file: {exc}") from exc
    if CARD_KEY in metadata:
        return ModelCard.from_json_text(metadata[CARD_KEY], str(path))
    beside = card_path_for(path)
    if beside.is_file():
        return ModelCard.from_json_text(beside.read_bytes(), str(beside))
    raise ModelCardError(
        f"{path} carries no model card (no {CARD_KEY!r} in its metadata, no {beside.name} beside it); "
        "download the model with its card (the dashboard's Download model, or GET "
        "/api/v1/federations/<id>/model?card=true), or save the card of GET .../model/card's 'card' field "
        f"as {beside}"
    )
