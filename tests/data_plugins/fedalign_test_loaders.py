"""Dataset loader plug-ins for the tests, outside the fedalign package as a user's would be: one that keeps
the contract (labelled or not, as its options say) and one for each way a loader can break it.

Imported as ``python:fedalign_test_loaders:<loader>`` with this folder on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from fedalign.data import LoaderContext

CONTEXTS: list[LoaderContext] = []  # what each call was told, for the tests to read


class Gaussians(Dataset):
    """``n`` vectors of ``dim`` values around class means; items (x, y), or x alone when unlabelled."""

    def __init__(self, n: int, dim: int, seed: int, shift: float, labelled: bool, classes: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.x = (
            torch.randn(n, dim, generator=g) * 0.5 + shift + 2.0 * torch.nn.functional.one_hot(self.y, dim)
        )
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        return (self.x[i], int(self.y[i])) if self.labelled else self.x[i]


def gaussians(context: LoaderContext) -> dict[str, Dataset | None]:
    """Options: seed, shift, n, labelled (yes/no), test (yes/no: a labelled evaluation split)."""
    CONTEXTS.append(context)
    o = context.options
    seed, shift, n = int(o.get("seed", "0")), float(o.get("shift", "0")), int(o.get("n", "96"))
    dim = context.input_shape[0] if context.input_shape else 8
    labelled = o.get("labelled", "yes") == "yes"
    test = Gaussians(24, dim, seed + 1000, shift, labelled=True) if o.get("test", "no") == "yes" else None
    return {"train": Gaussians(n, dim, seed, shift, labelled), "val": None, "test": test}


def raises(context: LoaderContext) -> dict[str, Any]:
    raise FileNotFoundError("no such file: /data/site-a.csv")


def returns_a_list(context: LoaderContext) -> list[Any]:
    return [Gaussians(10, 8, 0, 0.0, True)]


def returns_an_iterable(context: LoaderContext) -> dict[str, Any]:
    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[torch.Tensor]:
            yield torch.zeros(8)

    return {"train": Stream()}


def misses_train(context: LoaderContext) -> dict[str, Any]:
    return {"training": Gaussians(10, 8, 0, 0.0, True)}


class Broken(Gaussians):
    """Item ``at`` (and only it) is broken in the way ``how`` says."""

    def __init__(self, how: str, at: int) -> None:
        super().__init__(20, 8, 0, 0.0, labelled=True)
        self.how, self.at = how, at

    def __getitem__(self, i: int) -> Any:
        x, y = super().__getitem__(i)
        if i != self.at:
            return x, y
        if self.how == "raises":
            raise KeyError(f"row {i}")
        return {
            "shape": (x[:5], y),
            "dtype": (x.to(torch.int64), y),
            "label_range": (x, 7),
            "label_type": (x, 1.5),
            "arity": (x, y, y),
            "unlabelled": x,
        }[self.how]


def broken(context: LoaderContext) -> dict[str, Any]:
    return {"train": Broken(context.options["how"], int(context.options["at"])), "val": None, "test": None}


not_a_function = 42
