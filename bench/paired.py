"""Paired comparisons of benchmark arms: per target, the difference on the same seeds, with its 95% interval.

A seed fixes a run's initialisation and every batch order, the same in every arm, so two arms run on the same
seeds differ only by what the arms change. This script reads the JSON-lines logs `bench.accuracy` writes and
prints, per target and for the average over targets, each arm's mean ± standard deviation over seeds and,
for each pair of arms, the mean paired difference (in accuracy points) with its 95% confidence interval from
Student's t over the seeds both arms ran. A difference whose interval excludes 0 is marked.

    python -m bench.paired --log bench/results/ablation.jsonl \\
        --arms fedalign_im_selected fedalign_im_lambda0 fedavg_im fedavg source_only \\
        --pairs fedalign_im_selected:fedalign_im_lambda0 fedalign_im_selected:fedavg

Only runs of one budget are compared (``--steps``, default 1500). No target label is read here beyond the
reported test accuracy the logs hold.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from bench.chosen import ChosenArm, TwinArm, picks
from bench.logs import read_runs

AVERAGE = "average"


@dataclass(frozen=True)
class Paired:
    """The paired difference a - b over the seeds both arms ran (accuracy points)."""

    n: int
    mean: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return bool(self.n > 1 and (self.low > 0 or self.high < 0))

    def cell(self) -> str:
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:+.1f} (1 seed)"
        mark = " *" if self.significant else ""
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]{mark}"


def paired(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> Paired:
    """Mean of a[s] - b[s] over common seeds, in points, with a Student's t interval."""
    seeds = sorted(set(a) & set(b))
    diffs = [100 * (a[s] - b[s]) for s in seeds]
    if not diffs:
        return Paired(0, math.nan, math.nan, math.nan)
    mean = statistics.fmean(diffs)
    if len(diffs) == 1:
        return Paired(1, mean, math.nan, math.nan)
    t = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1))
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Paired(len(diffs), mean, mean - half, mean + half)


def load(paths: Iterable[Path], steps: int) -> list[dict[str, Any]]:
    return [run for run in read_runs(paths).values() if run["steps"] == steps]


def by_seed(runs: list[dict[str, Any]], arm: str, targets: list[str]) -> dict[str, dict[int, float]]:
    """target -> seed -> accuracy for one arm, and the average over targets for seeds that ran them all."""
    table: dict[str, dict[int, float]] = {t: {} for t in targets}
    for r in runs:
        if r["method"] == arm and r["target"] in table:
            table[r["target"]][r["seed"]] = r["target_acc"]
    complete = set.intersection(*(set(table[t]) for t in targets)) if targets else set()
    table[AVERAGE] = {s: statistics.fmean(table[t][s] for t in targets) for s in sorted(complete)}
    return table


def _spread(values: dict[int, float]) -> str:
    if not values:
        return "—"
    xs = [100 * v for v in values.values()]
    if len(xs) == 1:
        return f"{xs[0]:.1f} (1 seed)"
    return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def tables(
    runs: list[dict[str, Any]], arms: list[str], pairs: list[tuple[str, str]], targets: list[str]
) -> str:
    columns = [*targets, AVERAGE]
    data = {arm: by_seed(runs, arm, targets) for arm in arms}
    header = "| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns)
    out = [
        "Target accuracy (%), mean ± sd over seeds (seeds per cell: " + _seed_counts(data, columns) + ")\n"
    ]
    out.append(header)
    for arm in arms:
        out.append(f"| {arm} | " + " | ".join(_spread(data[arm][c]) for c in columns) + " |")
    if pairs:
        out.append("\nPaired difference (points), mean [95% interval]; * where the interval excludes 0\n")
        out.append(header)
        for a, b in pairs:
            for arm in (a, b):
                if arm not in data:
                    data[arm] = by_seed(runs, arm, targets)
            cells = [paired(data[a][c], data[b][c]).cell() for c in columns]
            out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    note = platform_note(runs, set(data), targets)
    if note:
        out.append(f"\n{note}")
    return "\n".join(out)


def platform_note(runs: list[dict[str, Any]], arms: set[str], targets: list[str]) -> str | None:
    """A warning unless every compared run records one platform (bench.accuracy's `run_platform`): a seed
    fixes the initialisation and every batch order on any machine, but other CPU kernels round differently,
    so two runs of one seed on two platforms are not the same run: a pair differs by more than its arms."""
    used = [r for r in runs if r["method"] in arms and r["target"] in targets]
    known = sorted({json.dumps(r["platform"], sort_keys=True) for r in used if r.get("platform")})
    unknown = sum(1 for r in used if not r.get("platform"))
    if len(known) <= 1 and not unknown:
        return None
    where = "; ".join(f"{p['cpu_capability']} kernels, torch {p['torch']}" for p in map(json.loads, known))
    parts = [f"the runs come from {len(known)} platforms ({where})"] if len(known) > 1 else []
    if known and len(known) == 1:
        parts.append(f"the recorded runs ran on {where}")
    if unknown:
        parts.append(f"{unknown} of {len(used)} runs record no platform")
    return (
        "Note: " + "; ".join(parts) + ". A seed fixes the initialisation and batch order everywhere, but "
        "other CPU kernels round differently, so runs of one seed on two platforms are not the same run."
    )


def _seed_counts(data: dict[str, dict[str, dict[int, float]]], columns: list[str]) -> str:
    counts = sorted({len(v[c]) for v in data.values() for c in columns})
    return ", ".join(str(c) for c in counts) or "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, nargs="+", required=True)
    parser.add_argument("--arms", nargs="+", required=True)
    parser.add_argument(
        "--pairs", nargs="*", default=[], help="a:b, the paired difference a − b per target and on average"
    )
    parser.add_argument("--targets", nargs="+", default=None, help="Default: every target the logs hold.")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--chosen",
        nargs="*",
        default=[],
        type=_chosen_arm,
        help="name=a,b@validator: per target and seed, the run of a or b with the higher label-free "
        "validator score (bench.chosen); name is then an arm like any other",
    )
    parser.add_argument(
        "--twin",
        nargs="*",
        default=[],
        help="name=chosen:a0,b0: per target and seed, the run of the twin of whichever candidate the chosen "
        "arm picked (a0 where it picked a); the choice held fixed",
    )
    args = parser.parse_args(argv)
    by_name = {arm.name: arm for arm in args.chosen}
    try:
        twins = [TwinArm.parse(text, by_name) for text in args.twin]
    except ValueError as exc:
        parser.error(str(exc))
    runs = load(args.log, args.steps)
    chosen = {arm.name: arm.runs(runs) for arm in args.chosen}
    made = [twin.runs(runs, by_name[twin.of], chosen[twin.of]) for twin in twins]
    runs += [run for picked in (*chosen.values(), *made) for run in picked]
    targets = args.targets or sorted({r["target"] for r in runs if r["method"] in args.arms})
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        parser.error("each pair is written a:b")
    print(tables(runs, args.arms, pairs, targets))  # type: ignore[arg-type]
    for arm in args.chosen:
        print("\n" + picks(chosen[arm.name], arm, targets))


def _chosen_arm(text: str) -> ChosenArm:
    try:
        return ChosenArm.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


if __name__ == "__main__":
    main()
