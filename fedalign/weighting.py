"""How much each node's submission counts in an average: the weighting schemes, free of torch.

The protocol fixes every average's weights when a phase closes (and secure aggregation needs them when it
opens), so they are computed here from roles and sample counts alone; `fedalign.aggregate` folds the
tensors with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from fedalign.config import Role, Weighting

SCHEMES: tuple[str, ...] = get_args(Weighting)
# Balanced weighting: the share of the whole weight the target's copy carries (DESIGN.md 1, step 2).
BALANCED_TARGET_SHARE = 0.5
# How far from 1 a caller's weights may sum before they are taken for a mistake rather than rounding.
WEIGHT_SUM_TOLERANCE = 1e-6


class AggregationError(ValueError):
    """A misuse of an aggregation: unknown node, a node offered twice, bad weights, result too early."""


@dataclass(frozen=True)
class Contribution:
    """What one node brings to an average: its role and how many samples its update saw."""

    node: str
    role: Role
    samples: int


def weights(scheme: str, contributions: Sequence[Contribution]) -> dict[str, float]:
    """Normalised weights (summing to 1) per node under a weighting scheme.

    ``samples``: by sample count. ``uniform``: equal. ``balanced`` (the discriminator's default): the
    target's copy carries half of the weight and the sources share the other half by sample count,
    because each copy of D saw one label only and by sample count alone the average calls everything
    "source". With no target present, or no source, ``balanced`` falls back to by-sample-count.
    """
    _check_contributions(contributions)
    if scheme == "uniform":
        raw = {c.node: 1.0 for c in contributions}
    elif scheme == "samples":
        raw = {c.node: float(c.samples) for c in contributions}
    elif scheme == "balanced":
        raw = _balanced(contributions)
    else:
        raise AggregationError(f"unknown weighting scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    total = math.fsum(raw.values())
    return {node: w / total for node, w in raw.items()}


def _balanced(contributions: Sequence[Contribution]) -> dict[str, float]:
    sources = [c for c in contributions if c.role == "source"]
    targets = [c for c in contributions if c.role == "target"]
    if not sources or not targets:
        return {c.node: float(c.samples) for c in contributions}
    source_samples = math.fsum(c.samples for c in sources)
    out = {c.node: (1.0 - BALANCED_TARGET_SHARE) * c.samples / source_samples for c in sources}
    out[targets[0].node] = BALANCED_TARGET_SHARE
    return out


def _check_contributions(contributions: Sequence[Contribution]) -> None:
    if not contributions:
        raise AggregationError("nothing to average: no contributions")
    seen: set[str] = set()
    for c in contributions:
        if c.node in seen:
            raise AggregationError(f"node {c.node!r} contributes twice")
        seen.add(c.node)
        if c.role not in ("source", "target"):
            raise AggregationError(f"node {c.node!r} has role {c.role!r}; expected 'source' or 'target'")
        if isinstance(c.samples, bool) or not isinstance(c.samples, int) or c.samples <= 0:
            raise AggregationError(
                f"node {c.node!r} reports {c.samples!r} samples; expected a positive count"
            )
    if sum(c.role == "target" for c in contributions) > 1:
        raise AggregationError("more than one target contributes; a federation has exactly one")


def target_share_step(share: float) -> float:
    """The server step that undoes the damping of an average in which the target holds ``share``.

    Every copy starts from G_prev; the target's takes no labelled step, so the sources' step reaches the
    average at (1 - share) of its size. Stepping 1 / (1 - share) past G_prev gives it back its full size.
    """
    if not 0.0 <= share < 1.0:
        raise AggregationError(f"the target's share of the average must be in [0, 1); got {share!r}")
    return 1.0 / (1.0 - share)
