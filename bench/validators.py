"""Label-free validators: scores of a trained target model read from its own predictions on the target's
unlabelled training split, for choosing between pipelines without target labels.

A target node can compute every one of them on its own data; none reads a label. Each is higher-is-better
(entropy enters negated), so that a choice is the pipeline with the higher score:

* ``im``: information maximisation (Shi & Sha, 2012; SHOT, Liang et al., 2020), the entropy of the mean
  prediction minus the mean entropy of a prediction: confident predictions that do not all fall into one
  class. Declared as the rule before its runs were read (bench.chosen picks by it); the others are
  reported beside it.
* ``neg_entropy``: minus the mean entropy of a prediction (confidence alone).
* ``diversity``: the entropy of the mean prediction (class balance alone).
* ``bnm``: the nuclear norm of the prediction matrix over the number of predictions (Cui et al., 2020).
* ``snd``: soft neighbourhood density (Saito et al., 2021): the mean entropy of each prediction's softmax
  similarity to the others (temperature 0.05), high where predictions form dense clusters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from bench.validator_names import VALIDATORS
from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig
from fedalign.data import NodeData
from fedalign.label_free import entropy, label_free_scores
from fedalign.models import build
from fedalign.steps import predicted_probabilities

SND_TEMPERATURE = 0.05
SND_MAX = 2000  # predictions SND compares pairwise (its matrix is square in this number)


def scores(probabilities: torch.Tensor) -> dict[str, float]:
    """Every validator of an (N, classes) matrix of predicted class probabilities."""
    p = probabilities.double()
    information = label_free_scores(p)  # the scores `fedalign predict` prints
    mean_entropy, diversity = information.mean_entropy, information.class_balance
    bnm = float(torch.linalg.svdvals(p).sum()) / len(p)
    q = F.normalize(p[:SND_MAX], dim=1)
    similarity = q @ q.T
    similarity.fill_diagonal_(-math.inf)  # each prediction against the others only
    snd = float(entropy(F.softmax(similarity / SND_TEMPERATURE, dim=1)).mean())
    # In VALIDATORS' order: the names are written there once, for readers without torch.
    return dict(zip(VALIDATORS, (information.information, -mean_entropy, diversity, bnm, snd), strict=True))


def predictions(config: FederationConfig, model: Mapping[str, torch.Tensor], data: NodeData) -> torch.Tensor:
    """The published target model's (``G.<name>``, ``T.<name>``) class probabilities on the target's
    training split, as it is deployed (evaluation mode); its labels are never read."""
    models = build(config.architecture, ArchitectureContext.of(config))
    for part in ("G", "T"):
        prefix = f"{part}."
        models[part].load_state_dict(
            {k.removeprefix(prefix): v for k, v in model.items() if k.startswith(prefix)}
        )
        models[part].eval()
    return predicted_probabilities(models.G, models.T, data.train)


def target_scores(
    config: FederationConfig, model: Mapping[str, torch.Tensor], data: NodeData
) -> dict[str, float]:
    """Every validator of the published target model, named ``validator_<name>`` for a run's log."""
    return {f"validator_{k}": v for k, v in scores(predictions(config, model, data)).items()}
