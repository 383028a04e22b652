"""The numbers of secure aggregation's secret sharing: the threshold t, and the size of sealed shares.

Kept apart from `fedalign.secagg_shares` (which needs torch and cryptography) so that the federation's
config and the node API's wire models bound their fields with these same numbers.
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
# The layout of one sender's sealed shares for one holder: a ChaCha20-Poly1305 nonce, then the sealed
# holder index and one Shamir share per roster node (`fedalign.shamir.SHARE_BYTES` each), then the tag.
NONCE_BYTES = 12
TAG_BYTES = 16
INDEX_BYTES = 2
SHARE_BYTES = 66  # a value of GF(2^521 - 1); `fedalign.shamir` checks that it agrees


def ciphertext_bytes(roster_size: int) -> int:
    """The exact size of one holder's sealed shares from one sender (what the API bounds)."""
    return NONCE_BYTES + INDEX_BYTES + SHARE_BYTES * roster_size + TAG_BYTES


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
