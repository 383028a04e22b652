"""Where each sample of a split comes from, in words a person can find it by: the file of an image, the row
of an array, the index in a loader's dataset. Predictions are written against these (`fedalign.predict`).

The splits of a data set are drawn from it (`fedalign.data.splits`), so a split's position ``i`` says little
on its own; an `Origin` names the sample in the data's own terms, and sorting by it restores the data's own
order: a folder's files in sorted order, an array's rows in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedalign.data.core import SplitDataset
from fedalign.data.imagefolder import ImageFiles
from fedalign.data.npz import ArraySamples
from fedalign.data.plugins import PluginSamples
from fedalign.data.preprocessing import Transformed

# An origin that is a file, not a row of something.
WHOLE = -1
# Sources in the order a data set lists them: its splits, an npz file's arrays; any other (a file) first.
_SOURCE_ORDER = {"train": 0, "val": 1, "test": 2, "x": 0, "x_val": 1, "x_test": 2}


@dataclass(frozen=True, order=True)
class Origin:
    """A sample's place in its source: ``source`` (a file path, an array's name, a split's name) and, for a
    row of it, ``index`` (`WHOLE` for a file). Origins sort in the data's own order."""

    rank: int
    source: str
    index: int = WHOLE

    @classmethod
    def of(cls, source: str, index: int = WHOLE) -> Origin:
        return cls(_SOURCE_ORDER.get(source, 0), source, index)

    def __str__(self) -> str:
        return self.source if self.index == WHOLE else f"{self.source}[{self.index}]"


def origins(split: SplitDataset, name: str) -> list[Origin]:
    """The origin of every sample of ``split`` (called ``name``: train, val or test), in the split's order.

    Image files are named by their path, npz samples by their array and row (``x[12]``, ``x_test[3]``), a
    loader's items by the dataset it returned and the item's index there (``train[5]``); samples held in
    memory (the built-in benchmarks) by the split and their position in it.
    """
    if isinstance(split, Transformed):
        return origins(split.split, name)
    if isinstance(split, ImageFiles):
        return [Origin.of(str(path)) for path in split.files]
    if isinstance(split, ArraySamples):
        array = split.layout.where.rsplit(":", 1)[-1]
        return [Origin.of(array, int(row)) for row in split.index]
    if isinstance(split, PluginSamples):
        if split.positions is None:
            return [Origin.of(split.split, i) for i in range(len(split))]
        # Positions are drawn only from the loader's "train" dataset (its validation split, when it returned
        # none, is taken from it): they index that dataset.
        return [Origin.of("train", int(i)) for i in split.positions]
    return [Origin.of(name, i) for i in range(len(split))]
