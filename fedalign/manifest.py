"""The parameter manifest: which tensors a model has, their shapes and dtypes, and which of them travel.

A federation fixes one manifest per model (G, T, D). Every upload is checked against the *shared* part of
its manifest; the *local* part (by default BatchNorm running statistics, which are statistics of a node's
own data) never leaves the node.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedalign.dtype_names import DTYPE_BYTES

if TYPE_CHECKING:
    import torch


def is_floating(dtype: str) -> bool:
    return dtype in ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    shared: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "shared": self.shared}


@dataclass(frozen=True)
class Manifest:
    """An ordered list of tensor specs for one model."""

    model: str
    tensors: tuple[TensorSpec, ...]
    _by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {t.name: t for t in self.tensors}
        if len(by_name) != len(self.tensors):
            raise ValueError(f"manifest {self.model!r} names a tensor twice")
        object.__setattr__(self, "_by_name", by_name)

    def __iter__(self) -> Iterator[TensorSpec]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> TensorSpec:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def shared(self) -> Manifest:
        """The part of the manifest that travels between nodes."""
        return Manifest(self.model, tuple(t for t in self.tensors if t.shared))

    def local_names(self) -> set[str]:
        return {t.name for t in self.tensors if not t.shared}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @classmethod
    def from_state_dict(
        cls, model: str, state: Mapping[str, torch.Tensor], local: Iterable[str] = ()
    ) -> Manifest:
        from fedalign.torch_dtypes import dtype_name

        local_set = set(local)
        return cls(
            model,
            tuple(
                TensorSpec(name, tuple(t.shape), dtype_name(t.dtype), shared=name not in local_set)
                for name, t in state.items()
            ),
        )

    def to_json(self) -> dict[str, object]:
        return {"model": self.model, "tensors": [t.to_json() for t in self.tensors]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Manifest:
        tensors = data["tensors"]
        assert isinstance(tensors, list)
        return cls(
            str(data["model"]),
            tuple(
                TensorSpec(
                    str(t["name"]), tuple(int(d) for d in t["shape"]), str(t["dtype"]), bool(t["shared"])
                )
                for t in tensors
            ),
        )
