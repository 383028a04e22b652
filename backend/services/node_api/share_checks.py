"""What a node sends for secure aggregation's threshold recovery, checked before anything is stored.

A training step of a masked phase completes with its sealed seed shares (`check_sealed_shares`); a reveal
step is answered with the holder's shares (`check_answer`). Both are refused with a 422 that says what was
wrong, and nothing changes.
"""

from __future__ import annotations

import base64

from backend.errors import ApiError
from backend.models import Step
from fedalign import secagg_limits
from fedalign.secagg_shares import share_index
from messaging.node_api import SecureSlot, ShareAnswer


def check_answer(model: str, slot: SecureSlot, holder: str, entry: ShareAnswer) -> None:
    """A holder's answer holds exactly what the dropout list asks (the module invariant of
    `fedalign.secagg_shares`): shares of the survivors' self seeds, and of their pairwise seeds with the
    dropped nodes; its index is the holder's. Anything else is a 422 and nothing is stored."""
    dropped = sorted(slot.dropped)
    survivors = sorted(set(slot.weights) - set(dropped))
    problems = []
    if entry.x != share_index(slot.weights, holder):
        problems.append(f"its index is {entry.x}, not {holder!r}'s place in the roster")
    if sorted(entry.self_shares) != survivors or sorted(entry.pair_shares) != survivors:
        problems.append(f"it must hold shares for exactly the survivors {survivors}")
    elif any(sorted(pairs) != dropped for pairs in entry.pair_shares.values()):
        problems.append(f"its pair shares must be with exactly the dropped nodes {dropped}, never a survivor")
    if problems:
        raise ApiError(422, "invalid_reveal", f"the answer for {model!r}: {'; '.join(problems)}")


def check_sealed_shares(step: Step, shares: dict[str, dict[str, str]]) -> None:
    """A training step of a masked phase completes with its seed shares: for each masked upload, one sealed
    share set per roster node, each of the exact size (`fedalign.secagg_limits.ciphertext_bytes`)."""
    masked = {} if step.kind in ("reveal", "aggregate") else step.spec.secure
    if set(shares) != set(masked):
        raise ApiError(
            422,
            "invalid_shares",
            f"this step completes with sealed seed shares for exactly its masked uploads {sorted(masked)}; "
            f"it sent them for {sorted(shares)}",
        )
    for slot, sealed in shares.items():
        roster = sorted(masked[slot].public_keys)
        if sorted(sealed) != roster:
            raise ApiError(
                422, "invalid_shares", f"the shares of {slot!r} must be for exactly the roster nodes {roster}"
            )
        size = secagg_limits.ciphertext_bytes(len(roster))
        wrong = sorted(h for h, text in sealed.items() if len(base64.b64decode(text)) != size)
        if wrong:
            raise ApiError(
                422,
                "invalid_shares",
                f"the shares of {slot!r} for {wrong} are not {size} bytes, the size for a roster of "
                f"{len(roster)}",
            )
