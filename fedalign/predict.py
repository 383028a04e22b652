"""A trained target model's predictions on a data set: every sample of any dataset spec, labelled or not.

The data are read as a node reads them (`fedalign.data`), with the input pipeline of the model's card:
images at its input size, scaled to [0, 1] and normalised by its mean and std. Every split the spec yields
(train, val and the labelled evaluation split test) is predicted, and the rows come back in the data's own
order (`fedalign.data.origins`): a folder's files sorted, an array's rows in order. Each row names its sample,
its split, its label when it has one, the predicted class and every class's probability; accuracy counts the
labelled rows, and the label-free scores (`fedalign.label_free`) read every row's probabilities alone.

Written as CSV, or as Parquet when pyarrow is installed (``pip install fedalign[parquet]``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedalign import data as datasets
from fedalign.data import UNLABELLED, DatasetError, LoaderContext, evaluation_batches
from fedalign.data.origins import Origin, origins
from fedalign.device import CPU, Device
from fedalign.label_free import LabelFreeScores, label_free_scores
from fedalign.trained_model import TargetModel, input_preprocessing

SPLITS = ("train", "val", "test")
FORMATS = ("csv", "parquet")
# Probabilities as written to CSV: float32 holds about 7 significant digits.
PROBABILITY_FORMAT = "{:.7g}"


@dataclass
class Predictions:
    """One row per sample: where it comes from, its split, its label (`UNLABELLED` when none), the
    predicted class and the probability of each class (N, num_classes)."""

    origins: list[Origin]
    splits: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    spec: str = ""
    split_sizes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.origins)

    @property
    def labelled(self) -> int:
        """How many rows carry a label."""
        return int((self.labels != UNLABELLED).sum())

    @property
    def accuracy(self) -> float | None:
        """The share of labelled rows predicted right; None without labels."""
        known = self.labels != UNLABELLED
        if not known.any():
            return None
        return float((self.predicted[known] == self.labels[known]).mean())

    @property
    def label_free(self) -> LabelFreeScores:
        """Information maximisation's scores of every row's prediction, labels or not (`fedalign.label_free`):
        two models of the same data compared without a label."""
        return label_free_scores(self.probabilities)

    def columns(self) -> dict[str, list[object]]:
        """The table: sample, split, label (empty when none), predicted, then prob_0 .. prob_{K-1}."""
        table: dict[str, list[object]] = {
            "sample": [str(o) for o in self.origins],
            "split": list(self.splits),
            "label": [None if y == UNLABELLED else int(y) for y in self.labels],
            "predicted": [int(p) for p in self.predicted],
        }
        for k in range(self.probabilities.shape[1]):
            table[f"prob_{k}"] = [float(p) for p in self.probabilities[:, k]]
        return table

    def write(self, path: str | os.PathLike[str], format: str | None = None) -> str:
        """Write the table to ``path`` as CSV or Parquet (default: by its suffix, else CSV); returns the
        format written."""
        path = Path(path)
        format = format or ("parquet" if path.suffix == ".parquet" else "csv")
        if format not in FORMATS:
            raise ValueError(f"unknown predictions format {format!r}; expected one of {', '.join(FORMATS)}")
        if format == "parquet":
            _write_parquet(self.columns(), path)
        else:
            _write_csv(self.columns(), path)
        return format


def _write_csv(table: dict[str, list[object]], path: Path) -> None:
    names = list(table)
    probability = [name.startswith("prob_") for name in names]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in zip(*table.values(), strict=True):
            writer.writerow(
                "" if value is None else PROBABILITY_FORMAT.format(value) if is_p else value
                for value, is_p in zip(row, probability, strict=True)
            )


def _write_parquet(table: dict[str, list[object]], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ValueError(
            "writing Parquet needs pyarrow: pip install 'fedalign[parquet]' (or write CSV)"
        ) from exc
    types = {"sample": pa.string(), "split": pa.string(), "label": pa.int64(), "predicted": pa.int64()}
    arrays = {name: pa.array(values, type=types.get(name, pa.float32())) for name, values in table.items()}
    pq.write_table(pa.table(arrays), path)


def load_for(model: TargetModel, spec: str, cache_dir: Path | None = None) -> datasets.NodeData:
    """The data of ``spec``, read with the model's input pipeline; refuses samples the model does not take."""
    card = model.card
    context = LoaderContext(
        input_shape=card.input_shape,
        num_classes=card.num_classes,
        preprocessing=input_preprocessing(card),
    )
    try:
        data = datasets.load(spec, cache_dir, context)
    except DatasetError as exc:
        raise DatasetError(
            f"dataset {spec!r} cannot be read for this model ({card.architecture}, which takes inputs of "
            f"shape {card.input_shape}): {exc}"
        ) from exc
    if tuple(data.input_shape) != card.input_shape:
        raise DatasetError(
            f"dataset {spec!r} has inputs of shape {tuple(data.input_shape)}; the model takes "
            f"{card.input_shape} ({card.architecture}, model.input_shape)"
        )
    if data.num_classes is not None and data.num_classes > card.num_classes:
        raise DatasetError(
            f"dataset {spec!r} has {data.num_classes} classes; the model predicts {card.num_classes}"
        )
    return data


@torch.no_grad()
def predict(
    model: TargetModel,
    spec: str,
    *,
    splits: tuple[str, ...] = SPLITS,
    cache_dir: Path | None = None,
    device: Device = CPU,
    batch_size: int = 512,
) -> Predictions:
    """The model's predictions on every sample of ``spec`` in ``splits``, in the data's own order."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {', '.join(SPLITS)}")
    data = load_for(model, spec, cache_dir)
    run_on = device.with_precision(model.card.model.precision)
    model = model.to(run_on.torch_device).eval()
    found: list[Origin] = []
    names: list[str] = []
    labels: list[torch.Tensor] = []
    probabilities: list[torch.Tensor] = []
    sizes: dict[str, int] = {}
    for name in splits:
        split = getattr(data, name)
        sizes[name] = len(split)
        if not len(split):
            continue
        found += origins(split, name)
        names += [name] * len(split)
        for x, y in evaluation_batches(split, batch_size):
            with run_on.autocast:
                logits = model.classify(x.to(run_on.torch_device))
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
            labels.append(y)
    if not found:
        raise DatasetError(f"dataset {spec!r} has no samples in its {' and '.join(splits)} split(s)")
    p = torch.cat(probabilities).numpy()
    order = sorted(range(len(found)), key=found.__getitem__)
    return Predictions(
        origins=[found[i] for i in order],
        splits=[names[i] for i in order],
        labels=torch.cat(labels).numpy()[order],
        predicted=p.argmax(axis=1)[order],
        probabilities=p[order],
        spec=spec,
        split_sizes=sizes,
    )
