"""The published target model's card."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TensorOut(BaseModel):
    name: str
    shape: list[int]
    dtype: str


class ModelCard(BaseModel):
    federation_id: str
    federation: str
    algorithm: str
    architecture: str
    model: dict[str, Any] = Field(description="Model options: num_classes, input_shape, hidden.")
    round: int = Field(description="The round the model comes from (the last).")
    target: str = Field(description="The target node that assembled and published it.")
    sha256: str
    size: int
    format: str = "safetensors"
    metrics: dict[str, float] = Field(description="The federation's metrics of that round.")
    manifest: list[TensorOut] = Field(description="Every tensor in the file: G.* then T.*.")
