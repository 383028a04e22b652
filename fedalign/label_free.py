"""Label-free scores of a model's predictions on data without labels: the two terms of information
maximisation (Shi & Sha, ICML 2012; SHOT, Liang et al., ICML 2020), read from the predicted class
probabilities alone.

* ``mean_entropy``: the mean entropy of one prediction, low where the model is confident;
* ``class_balance``: the entropy of the mean prediction, high where the predictions spread over the classes
  (0 when every sample falls into one class: a collapse);
* ``information``: class balance minus mean entropy, at most log K for K classes.

Two models of the same data can be compared by them without a label. They are a heuristic, not an
accuracy: a model can be confidently wrong (the accuracy benchmark measures how often they choose well).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# The target's live scores (at each evaluation) read at most this many examples of its training split, the
# same ones in every round and run, so that they compare across runs at a bounded cost: a pass over a whole
# split at every evaluation costs more than the training between evaluations (bench.label_free_cost).
LIVE_EXAMPLES = 256


def live_indices(n: int, most: int = LIVE_EXAMPLES) -> list[int]:
    """The examples of an n-example split that the live scores read: every one when n <= most, otherwise
    `most` evenly spaced ones, i * n // most for i < most."""
    k = min(n, most)
    return [i * n // k for i in range(k)]


@dataclass(frozen=True)
class LabelFreeScores:
    mean_entropy: float
    class_balance: float
    classes: int

    @property
    def information(self) -> float:
        return self.class_balance - self.mean_entropy

    @property
    def most(self) -> float:
        """The largest value each score can take: log K."""
        return math.log(self.classes)


def choose(scores: Sequence[float]) -> int:
    """Which of several candidates to deploy by their scores: the highest, the first listed on a tie."""
    if not scores:
        raise ValueError("there is nothing to choose from: no scores")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each distribution along the last dimension."""
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)


def label_free_scores(probabilities: torch.Tensor | np.ndarray) -> LabelFreeScores:
    """The scores of an (N, K) matrix of predicted class probabilities (each row sums to 1)."""
    p = torch.as_tensor(probabilities).double()
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(
            f"label-free scores need an (N, K) matrix of probabilities, got shape {tuple(p.shape)}"
        )
    return LabelFreeScores(
        mean_entropy=float(entropy(p).mean()),
        class_balance=float(entropy(p.mean(dim=0))),
        classes=p.shape[1],
    )
