"""Deterministic, class-stratified train/validation/test splits."""

from __future__ import annotations

import numpy as np
import torch

from fedalign.data.core import NodeData, Split, labels_to_tensor, node_data

# Fractions of each class that go to (train, val, test).
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
# A data set's split is a property of the data, not of a run: it must not move with the federation's seed,
# or a node's test samples would leak into its training set from one federation to the next.
SPLIT_SEED = 1_729


def _round_half_up(value: float) -> int:
    # Python's round() goes to even, which would make 2.5 and 3.5 round in opposite directions.
    return int(np.floor(value + 0.5))


def stratified_split(
    labels: np.ndarray,
    fractions: tuple[float, ...] = SPLIT_FRACTIONS,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, ...]:
    """Index arrays, one per fraction, that partition ``range(len(labels))`` class by class.

    Within each class the first part takes whatever the later parts leave, so a class too small to share
    (one sample) stays whole in the first part. Each part comes back in a seeded shuffled order so its
    classes are interleaved.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        later = [_round_half_up(f * len(members)) for f in fractions[1:]]
        bounds = np.cumsum([len(members) - sum(later), *later])[:-1]
        for part, chunk in zip(parts, np.split(members, bounds), strict=True):
            part.append(chunk)
    return tuple(rng.permutation(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)


def stratified_node_data(spec: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> NodeData:
    """Labelled arrays (a generated benchmark domain) as a node's data: class-stratified 70/15/15 splits,
    as every built-in data set."""
    parts = [
        Split(torch.from_numpy(np.ascontiguousarray(x[i])), labels_to_tensor(y[i]))
        for i in stratified_split(y)
    ]
    return node_data(spec, *parts, num_classes=num_classes)
