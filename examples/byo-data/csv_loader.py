"""A FedAlign dataset loader plug-in: the rows of CSV files as a node's samples.

Name it in a node's dataset spec (this folder on the node's PYTHONPATH, or the module in a package the
node has installed):

    python:csv_loader:load?path=data/lab.csv
    python:csv_loader:load?path=data/smooth.csv&test=data/smooth-test.csv

Options (the spec's ``?key=value`` pairs, in ``context.options``):

- ``path`` (required): the training rows. A header names the columns; the column ``label`` (or the one
  the ``label`` option names) holds integer class indices, every other column is a feature. A file
  without that column is unlabelled: a target's data.
- ``val`` (optional): validation rows, same columns. Without it FedAlign draws 15% of ``path``'s rows.
- ``test`` (optional): labelled rows, the evaluation split (a target's ``target_acc``).
- ``label`` (optional): the label column's name, default ``label``.

The rows are parsed once into one float32 tensor (a CSV has no random access; a large table would be
better converted to Parquet or ``.npz`` and memory-mapped), and items are read from it as batches ask.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import Dataset

from fedalign.data import LoaderContext


class CsvRows(Dataset):
    """One CSV file's rows: items ``(x, y)`` when it has the label column, ``x`` alone when it has not."""

    def __init__(self, path: Path, label: str, features: int | None) -> None:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty; expected a header row naming the columns")
            rows = [row for row in reader if row]
        label_at = header.index(label) if label in header else None
        feature_at = [i for i in range(len(header)) if i != label_at]
        if features is not None and len(feature_at) != features:
            raise ValueError(
                f"{path} has {len(feature_at)} feature columns, but the federation's model takes {features} "
                f"(model.input_shape); the columns are {header}"
            )
        self.x = torch.tensor([[float(row[i]) for i in feature_at] for row in rows], dtype=torch.float32)
        self.y = torch.tensor([int(row[label_at]) for row in rows]) if label_at is not None else None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        if self.y is None:
            return self.x[index]
        return self.x[index], int(self.y[index])


def load(context: LoaderContext) -> dict[str, Dataset | None]:
    """The loader FedAlign calls on the node: {"train", "val", "test"} datasets from the spec's options."""
    options = context.options
    if "path" not in options:
        raise ValueError("the csv loader needs ?path=<file.csv> in the dataset spec")
    label = options.get("label", "label")
    # A vector model's input is (D,): the number of feature columns every file must have.
    features = context.input_shape[0] if context.input_shape and len(context.input_shape) == 1 else None

    def rows(key: str) -> CsvRows | None:
        return CsvRows(Path(options[key]), label, features) if key in options else None

    return {"train": rows("path"), "val": rows("val"), "test": rows("test")}
