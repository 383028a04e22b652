"""Secure aggregation's unmasking stage, served: what happens between a masked phase's close and its averages.

With ``Protocol(..., reveal_steps=True)`` (`fedalign.secagg` for the method), a phase whose uploads are
masked closes into this stage instead of straight into its aggregates. Every survivor (a node that finished
the phase with a masked upload) gets a ``reveal`` step carrying the one dropout list of the phase (per
model: the roster's nodes whose uploads are not in the sum); when every survivor has revealed its seeds,
the aggregates follow as usual. A survivor that never reveals stalls the run at the deadline: without
secret sharing its masks cannot be removed. The simulator collects the reveals in-process
(`fedalign.simulate.SecureAggregation`) and runs without this stage.

The stage lives in the protocol's JSON state as ``{"survivors": [...], "revealed": [...]}``; the protocol
checks each event against it and turns it into actions.
"""

from __future__ import annotations

from collections.abc import Mapping
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

    def stall_reason(self, phase: str) -> str:
        return (
            f"{', '.join(self.waiting)} uploaded masked parameters in phase {phase!r} but did not reveal "
            "their seeds: without them the phase's sum cannot be unmasked (this secure aggregation has no "
            "secret sharing to recover them), so the run waits for them; cancel it to give up"
        )
