"""Secure aggregation's unmasking stage, served: what happens between a masked phase's close and its averages.

With ``Protocol(..., reveal_steps=True)`` (`fedalign.secagg` for the method), a phase whose uploads are
masked closes into this stage instead of straight into its aggregates. Every survivor (a node that finished
the phase with a masked upload) gets a ``reveal`` step carrying the one dropout list of the phase (per
model: the roster's nodes whose uploads are not in the sum); when every survivor has revealed its seeds,
the aggregates follow as usual. A reveal is a holder's answer of threshold shares (`fedalign.secagg_shares`):
when the deadline passes with survivors still silent, the phase goes on if, for every masked model, at least
t of its survivors have answered (their shares rebuild the silent ones' seeds), and stalls otherwise. The
simulator collects the answers in-process (`fedalign.simulate.SecureAggregation`) and runs without this
stage.

The stage lives in the protocol's JSON state as ``{"survivors": [...], "revealed": [...]}``; the protocol
checks each event against it and turns it into actions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# model -> {node: weight} over every node a phase expects a submission of the model from
Rosters = Mapping[str, Mapping[str, float]]


def survivors(rosters: Rosters, done: Mapping[str, list[str]]) -> list[str]:
    """Nodes that finished the phase with an upload that is averaged (so masked), sorted."""
    masked = set(rosters)
    return sorted(n for n, slots in done.items() if masked & set(slots))


def dropped(rosters: Rosters, done: Mapping[str, list[str]], node: str) -> dict[str, list[str]]:
    """Per model `node` uploaded: the roster's nodes whose uploads are not in the sum.

    Derived from what is saved of the phase alone, so that every survivor is told the same list.
    """
    return {
        model: [n for n in sorted(roster) if n not in done]
        for model, roster in rosters.items()
        if model in done[node]
    }


def short_of_threshold(
    rosters: Rosters,
    done: Mapping[str, list[str]],
    revealed: list[str],
    threshold: Callable[[int], int],
) -> dict[str, tuple[int, int]]:
    """Masked models whose answers are still too few to unmask: model -> (answers, t).

    Only survivors of a model answer for it (the target holds no shares of the sources' T); t is of the
    model's whole roster, as the shares were split.
    """
    short: dict[str, tuple[int, int]] = {}
    for model, roster in rosters.items():
        answers = sum(1 for n in revealed if n in roster and model in done.get(n, []))
        needed = threshold(len(roster))
        if answers < needed:
            short[model] = (answers, needed)
    return short


@dataclass
class Unmasking:
    """A closed masked phase waiting for its survivors' seeds."""

    survivors: list[str]
    revealed: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Unmasking:
        return cls(list(data["survivors"]), list(data["revealed"]))

    def to_json(self) -> dict[str, list[str]]:
        return {"survivors": list(self.survivors), "revealed": list(self.revealed)}

    @property
    def waiting(self) -> list[str]:
        """Survivors that have not revealed their seeds yet."""
        return [n for n in self.survivors if n not in self.revealed]

    @property
    def complete(self) -> bool:
        return self.revealed == self.survivors

    def reveal(self, node: str) -> None:
        self.revealed = sorted([*self.revealed, node])

    def stall_reason(self, phase: str, short: Mapping[str, tuple[int, int]]) -> str:
        counts = "; ".join(f"{model}: {got} of the {t} needed" for model, (got, t) in sorted(short.items()))
        return (
            f"{', '.join(self.waiting)} uploaded masked parameters in phase {phase!r} but did not reveal "
            f"their shares, and too few survivors answered to unmask the sum without them ({counts}); the "
            "run waits for them; cancel it to give up"
        )

    def recovered_reason(self) -> str:
        return (
            f"deadline passed without {', '.join(self.waiting)}'s reveal; the sum is unmasked from the other "
            "survivors' shares"
        )
