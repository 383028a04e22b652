"""The published target model: the file's facts, its metrics, and its card."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from fedalign.model_card import ModelCard


class TensorOut(BaseModel):
    name: str
    shape: list[int]
    dtype: str


class PublishedModel(BaseModel):
    federation_id: str
    federation: str
    algorithm: str
    architecture: str
    model: dict[str, Any] = Field(description="Model options: num_classes, input_shape, hidden.")
    round: int = Field(description="The round the model comes from (the last).")
    target: str = Field(description="The target node that assembled and published it.")
    sha256: str = Field(description="Of the file as the target uploaded it (GET .../model).")
    size: int
    format: str = "safetensors"
    metrics: dict[str, float] = Field(description="The federation's metrics of that round.")
    manifest: list[TensorOut] = Field(description="Every tensor in the file: G.* then T.*.")
    card: ModelCard = Field(
        description="The model card: architecture, input pipeline, classes, manifest, provenance. GET "
        ".../model?card=true puts it in the file's safetensors metadata (key 'fedalign.model_card'), "
        "where `fedalign predict`, `fedalign export` and `fedalign.trained_model.load_model` read it."
    )


class CheckpointOut(BaseModel):
    """One checkpoint of the target's model (checkpoint_every, and the final model)."""

    round: int
    source_val_acc: float | None = Field(description="The sources' validation accuracy that round.")
    selected: bool = Field(
        description="The one the label-free rule picks: the best source validation accuracy (the later "
        "round on a tie). No target label takes part."
    )
    sha256: str
    size: int


class CheckpointList(BaseModel):
    items: list[CheckpointOut]
