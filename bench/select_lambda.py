"""Choose the adversarial weight for each target without its labels. Not a test.

For a real target T, the validation tasks use the other three domains only: each in turn is a labelled
pseudo-target and the remaining two are the sources (`python -m bench.accuracy --domains`, T left out of the
pool). The candidate with the best mean pseudo-target accuracy is chosen for T; T's own labels are never
read. Ties go to the smaller weight.

    python -m bench.select_lambda --log bench/results/lambda-validation.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench.accuracy import DOMAINS

CANDIDATES = {"fedalign_lambda0.1": 0.1, "fedalign_lambda0.3": 0.3, "fedalign": 1.0}


def load(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def pool_of(record: dict[str, Any]) -> tuple[str, ...]:
    parts = record["key"].split("|")
    return tuple(parts[7].split(",")) if len(parts) > 7 else DOMAINS


def choose(records: list[dict[str, Any]], target: str) -> tuple[str | None, dict[str, float]]:
    """The candidate with the best mean accuracy over `target`'s validation tasks, and every mean."""
    pool = tuple(d for d in DOMAINS if d != target)
    means: dict[str, float] = {}
    for method in CANDIDATES:
        accs = [r["target_acc"] for r in records if r["method"] == method and pool_of(r) == pool]
        if len(accs) >= len(pool):  # every pseudo-target has run at least once
            means[method] = statistics.fmean(accs)
    if len(means) < len(CANDIDATES):
        return None, means
    best = max(means.values())
    chosen = min((m for m, v in means.items() if v == best), key=lambda m: CANDIDATES[m])
    return chosen, means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, default=Path("bench/results/lambda-validation.jsonl"))
    parser.add_argument("--target", choices=DOMAINS, default=None, help="Print only this target's choice.")
    args = parser.parse_args(argv)
    records = load(args.log)
    if args.target:
        chosen, _ = choose(records, args.target)
        print(chosen or "")
        return
    weights = " | ".join(f"λ={w}" for w in CANDIDATES.values())
    print(f"| real target | validation pool | {weights} | chosen |")
    print("|---|---|" + "---|" * len(CANDIDATES) + "---|")
    for target in DOMAINS:
        chosen, means = choose(records, target)
        pool = ", ".join(d for d in DOMAINS if d != target)
        cells = [f"{100 * means[m]:.1f}" if m in means else "—" for m in CANDIDATES]
        pick = f"λ={CANDIDATES[chosen]}" if chosen else "—"
        print(f"| {target} | {pool} | " + " | ".join(cells) + f" | {pick} |")


if __name__ == "__main__":
    main()
