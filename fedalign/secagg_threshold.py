"""The threshold t of secure aggregation's secret sharing: how many survivors must answer to unmask.

Kept apart from `fedalign.secagg_shares` (which needs torch and cryptography) so that the federation's
config can bound its setting with these same numbers.
"""

from __future__ import annotations

import math

# The smallest threshold: with t = 1 every holder could reconstruct every seed alone.
MIN_THRESHOLD = 2
# A threshold's fraction of the roster: at least a majority, so that two disjoint groups of holders, each
# told a different dropout list by a lying aggregator, cannot both reach t; below all of it, since a
# threshold of the whole roster recovers from no loss at all.
MIN_THRESHOLD_FRACTION = 0.5
MAX_THRESHOLD_FRACTION = 1.0  # exclusive
DEFAULT_THRESHOLD_FRACTION = 0.5


def threshold(roster_size: int, fraction: float = DEFAULT_THRESHOLD_FRACTION) -> int:
    """t for a roster of ``roster_size`` nodes: the fewest holders that are more than ``fraction`` of it.

    At least :data:`MIN_THRESHOLD` and at most the roster. The default, a strict majority, gives 2 of 2,
    2 of 3, 3 of 4, 3 of 5: a phase survives the loss of up to n - t of its nodes after they masked.
    """
    if not MIN_THRESHOLD_FRACTION <= fraction < MAX_THRESHOLD_FRACTION:
        raise ValueError(
            f"the threshold fraction must lie in [{MIN_THRESHOLD_FRACTION}, {MAX_THRESHOLD_FRACTION}); "
            f"got {fraction!r}"
        )
    if roster_size < MIN_THRESHOLD:
        raise ValueError(f"secret sharing needs at least {MIN_THRESHOLD} nodes; got {roster_size}")
    return min(roster_size, max(MIN_THRESHOLD, math.floor(fraction * roster_size) + 1))
