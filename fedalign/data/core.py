"""What a node's data is made of: splits as map-style datasets, labelled or not, and the node's three splits.

Every split, whatever its format, is a map-style dataset (``len(split)`` and ``split[i]``) whose item ``i`` is
``(x, y)``: ``x`` a float32 tensor of the sample's shape, ``y`` an int64 class index, or `UNLABELLED` when
the split carries no labels. Splits are read in batches through ``torch.utils.data.DataLoader``
(`fedalign.data.stream`), so a split that reads its samples from disk never holds them all in memory.
`Split` is the one held in memory (the built-in benchmarks, small arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


class DatasetError(ValueError):
    """A data set spec or file that cannot be loaded; the message says what was wrong and what is expected."""


# The label of an item that has none. Cross-entropy refuses it (an index out of range), so code that reads
# labels where there are none fails loudly instead of training on a made-up class.
UNLABELLED = -1


@runtime_checkable
class SplitDataset(Protocol):
    """One split of a node's data, as every step reads it.

    ``split[i]`` is ``(x, y)``: ``x`` float32 of shape ``sample_shape``, ``y`` an int64 class index or
    `UNLABELLED`. ``labelled`` says which, for the whole split.
    """

    labelled: bool
    sample_shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Batch:
    """Samples already stacked by the dataset itself (`Split.__getitems__`): the DataLoader's collate step
    passes them through instead of stacking items one by one."""

    x: torch.Tensor
    y: torch.Tensor


_UNLABELLED = torch.tensor(UNLABELLED, dtype=torch.int64)


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value to compare by
class Split:
    """A split held in memory: ``x`` float32, (N, C, H, W) in [0, 1] for images or (N, D) for vectors;
    ``y`` int64 class indices, (N,), or None for an unlabelled split."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.y is not None and self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(
                f"a split needs one label per sample, got {self.x.shape[0]} samples "
                f"and {self.y.shape[0]} labels"
            )

    @classmethod
    def empty(cls, sample_shape: Sequence[int]) -> Split:
        """A split with no samples (a target without a labelled evaluation split has an empty test split)."""
        return cls(torch.zeros((0, *sample_shape)), torch.zeros(0, dtype=torch.int64))

    @property
    def labelled(self) -> bool:
        return self.y is not None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], (self.y[index] if self.y is not None else _UNLABELLED)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        # One fancy-indexing copy per batch, as the stream before the DataLoader drew them: the same tensors.
        index = torch.as_tensor(indices, dtype=torch.int64)
        y = self.y[index] if self.y is not None else torch.full((len(index),), UNLABELLED, dtype=torch.int64)
        return Batch(self.x[index], y)


@dataclass(frozen=True, eq=False)
class NodeData:
    """Everything a node trains and evaluates on, resolved from its spec on its own machine.

    ``train`` and ``val`` may be unlabelled (a target's data); ``test``, when it has samples, is labelled:
    it is the labelled evaluation split, read for ``target_acc`` alone. ``num_classes`` is None when no
    split says how many classes there are (unlabelled data without an evaluation split).
    """

    spec: str
    train: SplitDataset
    val: SplitDataset
    test: SplitDataset
    num_classes: int | None
    input_shape: tuple[int, ...]  # one sample's shape: (C, H, W) or (D,)

    @property
    def labelled(self) -> bool:
        """Whether the training split carries labels (a source's must)."""
        return self.train.labelled


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], the layout torch's conv layers expect."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


def node_data(
    spec: str,
    train: SplitDataset,
    val: SplitDataset,
    test: SplitDataset,
    num_classes: int | None = None,
) -> NodeData:
    """Assemble a NodeData from in-memory splits; by default the classes are 0..max label of any split."""
    if num_classes is None:
        maxima = [
            int(s.y.max()) for s in (train, val, test) if isinstance(s, Split) and s.y is not None and len(s)
        ]
        num_classes = 1 + max(maxima) if maxima else None
    return NodeData(
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=tuple(train.sample_shape),
    )
