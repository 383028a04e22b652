"""A label-free guard against negative transfer: per real target, the recipe or FedAvg, chosen on source-only
validation tasks. Not a test.

The recipe's settings (lambda, then information maximisation or not) were chosen per real target T on
validation tasks built from the other domains only (T left out of the pool; each other domain in turn a
labelled pseudo-target, seed 0, 750 steps). `bench/guard_study.sh` runs FedAvg and FedAvg with the same
target terms on the same tasks; here, per T, whichever of the recipe, `fedavg_im` and `fedavg` has the best
mean pseudo-target accuracy is the guarded pipeline's choice (ties to the recipe, then `fedavg_im`). T's own
labels are never read for the choice. The paired table then reads each choice's runs on the real target from
the paired benchmark's log (the same seeds in every arm).

    python -m bench.guard --family signals --validation bench/results/signals-validation.jsonl \\
        --final bench/results/signals.jsonl
    python -m bench.guard --family digits --validation bench/results/lambda-validation.jsonl \\
        --final bench/results/ablation.jsonl --recipe-arm fedalign_im_selected
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench import paired
from bench.accuracy import FAMILIES, SELECTED_RECIPE
from bench.select import choose, load

# The arms of the paired benchmark that each validation candidate stands for.
RECIPE_ARM = "fedalign_recipe"
FALLBACKS = ("fedavg_im", "fedavg")
GUARDED = "guarded"


def choices(
    validation: Path, domains: tuple[str, ...], steps: int, recipe_arm: str = RECIPE_ARM
) -> dict[str, tuple[str | None, dict[str, float]]]:
    """Per real target: the arm chosen (None while validation runs are missing) and every candidate's mean.
    The recipe is what its procedure chose for the target (`bench.select --im`), as the validation tasks
    ran it."""
    records = load(validation)
    out: dict[str, tuple[str | None, dict[str, float]]] = {}
    for target in domains:
        recipe = SELECTED_RECIPE[target]
        chosen, means = choose(records, domains, target, [recipe, *FALLBACKS], steps)
        arm = None if chosen is None else (recipe_arm if chosen == recipe else chosen)
        out[target] = (arm, {(recipe_arm if m == recipe else m): v for m, v in means.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=list(FAMILIES), default="digits")
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--final", type=Path, required=True, help="the paired benchmark's log")
    parser.add_argument("--validation-steps", type=int, default=750)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--recipe-arm",
        default=RECIPE_ARM,
        help="The paired log's arm that ran the recipe's choice per target (digits: fedalign_im_selected, "
        "the same configurations, run before the procedure had its own arm).",
    )
    args = parser.parse_args(argv)
    domains = FAMILIES[args.family].domains
    chosen = choices(args.validation, domains, args.validation_steps, args.recipe_arm)

    arms = [args.recipe_arm, *FALLBACKS]
    print("| real target | validation pool | " + " | ".join(arms) + " | chosen |")
    print("|---|---|" + "---|" * len(arms) + "---|")
    for target in domains:
        arm, means = chosen[target]
        pool = ", ".join(d for d in domains if d != target)
        cells = [f"{100 * means[a]:.1f}" if a in means else "—" for a in arms]
        print(f"| {target} | {pool} | " + " | ".join(cells) + f" | {arm or '—'} |")
    if any(arm is None for arm, _ in chosen.values()):
        print("\nnot every target has its validation runs yet: run bench/guard_study.sh")
        return

    runs = paired.load([args.final], args.steps)
    targets = list(domains)
    data = {arm: paired.by_seed(runs, arm, targets) for arm in arms}
    guarded: dict[str, dict[int, float]] = {t: dict(data[chosen[t][0]][t]) for t in targets}  # type: ignore[index]
    complete = set.intersection(*(set(guarded[t]) for t in targets))
    guarded[paired.AVERAGE] = {s: statistics.fmean(guarded[t][s] for t in targets) for s in sorted(complete)}
    data[GUARDED] = guarded
    columns = [*targets, paired.AVERAGE]
    header = "| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns)
    print("\nPaired difference on the real targets (points), mean [95% interval]; * where it excludes 0\n")
    print(header)
    for other in arms:
        cells = [paired.paired(data[GUARDED][c], data[other][c]).cell() for c in columns]
        print(f"| {GUARDED} − {other} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
