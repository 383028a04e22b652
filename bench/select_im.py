"""Decide per target, without its labels, whether information maximisation joins the chosen lambda.

For a real target T with its lambda already chosen on the source-only validation tasks
(`bench.select_lambda`), the same tasks run `fedalign_im_lambda<λ>`; it is adopted for T when its mean
pseudo-target accuracy is higher than `fedalign_lambda<λ>`'s (ties keep the simpler recipe). T's own labels
are never read. Not a test.

    python -m bench.select_im --log bench/results/lambda-validation.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.select_lambda import CANDIDATES, DOMAINS, choose, load, pool_of


def im_choice(records: list[dict[str, Any]], target: str) -> tuple[str | None, str | None, dict[str, float]]:
    """(the lambda's method, the final choice, both means) for `target`; None while runs are missing."""
    plain, _ = choose(records, target)
    if plain is None:
        return None, None, {}
    im = f"fedalign_im_lambda{CANDIDATES[plain]}"
    pool = tuple(d for d in DOMAINS if d != target)
    means: dict[str, float] = {}
    for method in (plain, im):
        accs = [r["target_acc"] for r in records if r["method"] == method and pool_of(r) == pool]
        if len(accs) >= len(pool):
            means[method] = statistics.fmean(accs)
    if len(means) < 2:
        return plain, None, means
    return plain, (im if means[im] > means[plain] else plain), means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, default=Path("bench/results/lambda-validation.jsonl"))
    parser.add_argument("--target", choices=DOMAINS, default=None, help="Print only this target's choice.")
    parser.add_argument("--lambda-only", action="store_true", help="With --target: the lambda alone.")
    args = parser.parse_args(argv)
    records = load(args.log)
    if args.target:
        plain, chosen, _ = im_choice(records, args.target)
        print((plain if args.lambda_only else chosen) or "")
        return
    print("| real target | validation pool | chosen λ | without IM | with IM | chosen |")
    print("|---|---|---|---|---|---|")
    for target in DOMAINS:
        plain, chosen, means = im_choice(records, target)
        pool = ", ".join(d for d in DOMAINS if d != target)
        lam = f"λ={CANDIDATES[plain]}" if plain else "—"
        im = f"fedalign_im_lambda{CANDIDATES[plain]}" if plain else ""
        cells = [f"{100 * means[m]:.1f}" if m in means else "—" for m in (plain, im)]
        pick = "—" if chosen is None else ("with IM" if chosen == im else "without IM")
        print(f"| {target} | {pool} | {lam} | " + " | ".join(cells) + f" | {pick} |")


if __name__ == "__main__":
    main()
