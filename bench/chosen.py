"""Arms chosen per run by a label-free validator (bench.validators): for each target and seed, the run of
whichever candidate arm scores higher on the target's unlabelled data, as a user who ran each candidate once
would deploy it. The chosen arm is then compared like any arm (bench.paired --chosen).

    --chosen picked=fedalign_balanced,fedalign_group_norm_balanced@im

A twin of a chosen arm (``--twin``) runs, per target and seed, the counterpart of whichever candidate was
picked (its lambda-0 twin, say): what the picked pipeline gains over itself without one change, with the
choice held fixed.

    --twin picked_lambda0=picked:fedalign_balanced_no_adversarial,fedalign_group_norm_balanced_no_adversarial
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.validator_names import VALIDATORS
from fedalign.label_free import choose

_FORM = re.compile(r"^(?P<name>[\w.]+)=(?P<arms>[\w.]+(?:,[\w.]+)+)@(?P<validator>\w+)$")
_TWIN = re.compile(r"^(?P<name>[\w.]+)=(?P<of>[\w.]+):(?P<arms>[\w.]+(?:,[\w.]+)+)$")


@dataclass(frozen=True)
class ChosenArm:
    """``name``: per target and seed, the run of the candidate in ``arms`` with the higher ``validator``
    score."""

    name: str
    arms: tuple[str, ...]
    validator: str

    @classmethod
    def parse(cls, text: str) -> ChosenArm:
        match = _FORM.match(text)
        if match is None:
            raise ValueError(f"{text!r}: write a chosen arm as name=arm,arm[,...]@validator")
        validator = match["validator"]
        if validator not in VALIDATORS:
            raise ValueError(f"{text!r}: unknown validator {validator!r}; expected one of {VALIDATORS}")
        return cls(match["name"], tuple(match["arms"].split(",")), validator)

    def runs(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One run per target and seed where every candidate ran and was scored: the higher-scoring one's
        (the first candidate on a tie), renamed, with ``chosen_from`` naming it."""
        score = f"validator_{self.validator}"
        cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        for run in runs:
            if run["method"] in self.arms and score in run.get("final_metrics", {}):
                cells.setdefault((run["target"], run["seed"]), {})[run["method"]] = run
        out = []
        for _, by_arm in sorted(cells.items()):
            if len(by_arm) < len(self.arms):
                continue
            best = self.arms[choose([by_arm[arm]["final_metrics"][score] for arm in self.arms])]
            out.append({**by_arm[best], "method": self.name, "chosen_from": best})
        return out


@dataclass(frozen=True)
class TwinArm:
    """``name``: per target and seed, the run of ``twins[i]`` where chosen arm ``of`` picked its candidate
    ``i``."""

    name: str
    of: str
    twins: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, chosen: dict[str, ChosenArm]) -> TwinArm:
        match = _TWIN.match(text)
        if match is None:
            raise ValueError(f"{text!r}: write a twin as name=chosen_arm:twin,twin[,...]")
        of, twins = match["of"], tuple(match["arms"].split(","))
        if of not in chosen:
            raise ValueError(f"{text!r}: {of!r} is not a chosen arm (--chosen)")
        if len(twins) != len(chosen[of].arms):
            raise ValueError(f"{text!r}: one twin per candidate of {of!r} ({len(chosen[of].arms)})")
        return cls(match["name"], of, twins)

    def runs(
        self, runs: list[dict[str, Any]], chosen: ChosenArm, picked: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One run per picked run whose candidate's twin ran on the same target and seed."""
        twin_of = dict(zip(chosen.arms, self.twins, strict=True))
        index = {(r["method"], r["target"], r["seed"]): r for r in runs}
        out = []
        for pick in picked:
            twin = index.get((twin_of[pick["chosen_from"]], pick["target"], pick["seed"]))
            if twin is not None:
                out.append({**twin, "method": self.name, "chosen_from": twin["method"]})
        return out


def picks(chosen: list[dict[str, Any]], arm: ChosenArm, targets: list[str]) -> str:
    """A table: per target, how many seeds picked each candidate."""
    header = (
        f"Picks of {arm.name} by {arm.validator} (seeds per candidate)\n\n| | " + " | ".join(targets) + " |"
    )
    lines = [header, "|---|" + "---|" * len(targets)]
    for candidate in arm.arms:
        counts = [
            sum(1 for r in chosen if r["target"] == t and r["chosen_from"] == candidate) for t in targets
        ]
        lines.append(f"| {candidate} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines)
