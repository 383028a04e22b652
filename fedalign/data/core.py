"""The in-memory form of a node's data set: three splits of float tensors and their labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class DatasetError(ValueError):
    """A data set spec or file that cannot be loaded; the message says what was wrong and what is expected."""


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value to compare by
class Split:
    """One split held in memory: ``x`` float32, (N, C, H, W) in [0, 1] for images or (N, D) for vectors;
    ``y`` int64 class indices, (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(
                f"a split needs one label per sample, got {self.x.shape[0]} samples "
                f"and {self.y.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class NodeData:
    """Everything a node trains and evaluates on, resolved from its spec on its own machine."""

    spec: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]  # one sample's shape: (C, H, W) or (D,)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], the layout torch's conv layers expect."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


def node_data(spec: str, train: Split, val: Split, test: Split, num_classes: int | None = None) -> NodeData:
    """Assemble a NodeData; by default the classes are 0..max label seen in any split."""
    if num_classes is None:
        num_classes = 1 + max(int(s.y.max()) for s in (train, val, test) if len(s) > 0)
    return NodeData(
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=tuple(train.x.shape[1:]),
    )
