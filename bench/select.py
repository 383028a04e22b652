"""Choose a setting per target without its labels, on source-only validation tasks. Not a test.

For a real target T of a family, the validation tasks use the family's other domains only: each in turn is
a labelled pseudo-target and the remaining ones are the sources (`python -m bench.accuracy --domains`, T left
out of the pool). The candidate with the best mean pseudo-target accuracy is chosen for T; T's own labels are
never read. Ties go to the candidate listed first (list the most conservative first).

    python -m bench.select --family signals --log bench/results/signals-validation.jsonl \\
        --candidates fedalign_im_lambda0.1 fedalign_im_lambda0.3 fedalign_im_lambda1

The recipe's procedure (`--im`): the adversarial weight is chosen among plain candidates first (no target
terms), then the same tasks decide whether information maximisation on the target joins it (the candidate's
`fedalign_im_lambda<λ>` form, adopted when its mean is higher: ties keep the simpler pipeline).

    python -m bench.select --family digits --log bench/results/lambda-validation.jsonl \\
        --candidates fedalign_lambda0.1 fedalign_lambda0.3 fedalign --im --write-recipe
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.accuracy import (
    CHOICE_FILES,
    FAMILIES,
    SELECTIONS,
    SERVER_STEP_FORM,
    TARGET_OUT,
    VARIANT_SELECTIONS,
    adv_weight,
)
from bench.logs import read_runs


def load(*logs: Path) -> list[dict[str, Any]]:
    return list(read_runs(logs).values())


def pool_of(record: dict[str, Any], family_domains: tuple[str, ...]) -> tuple[str, ...]:
    parts = record["key"].split("|")
    return tuple(parts[7].split(",")) if len(parts) > 7 else family_domains


def choose(
    records: list[dict[str, Any]], domains: tuple[str, ...], target: str, candidates: list[str], steps: int
) -> tuple[str | None, dict[str, float]]:
    """The candidate with the best mean accuracy over `target`'s validation tasks, and every mean."""
    pool = tuple(d for d in domains if d != target)
    means: dict[str, float] = {}
    for method in candidates:
        accs = [
            r["target_acc"]
            for r in records
            if r["method"] == method and r["steps"] == steps and pool_of(r, domains) == pool
        ]
        if len(accs) >= len(pool):  # every pseudo-target has run at least once
            means[method] = statistics.fmean(accs)
    if len(means) < len(candidates):
        return None, means
    best = max(means.values())
    return next(m for m in candidates if means[m] == best), means


def with_im(method: str) -> str:
    """A plain candidate's form with information maximisation on the target: the recipe at its lambda."""
    return f"fedalign_im_lambda{adv_weight(method):g}"


@dataclass(frozen=True)
class RecipeSteps:
    """What each step of the recipe's procedure chose for one target; None where its runs are missing. A
    step not asked for keeps the step before's choice."""

    plain: str | None  # the plain candidate (lambda)
    im: str | None  # after the information maximisation step
    copy: str | None  # after the target's-copy-out step (--target-out)
    stepped: str | None  # after the server step (--server-step)
    final: str | None  # after the steps of further candidates (--then)
    means: dict[str, float]


def choose_recipe(
    records: list[dict[str, Any]],
    domains: tuple[str, ...],
    target: str,
    candidates: list[str],
    steps: int,
    target_out: bool = False,
    server_step: bool = False,
    then: tuple[str, ...] = (),
) -> RecipeSteps:
    """The procedure's choices for `target`, step by step, with every mean it read.

    With `target_out`, a further step: the choice's form with the target's copy kept out of G_agg
    (`<choice>_target_none`) is adopted when it validates better. With `server_step`, then, where the copy
    stays averaged in: its form with the server step on G's average (`<choice>_server_step`), adopted when
    it validates better. With `then`, last: each of those methods, in order, adopted when it validates
    better than the choice so far. A tie keeps the choice so far."""
    plain, means = choose(records, domains, target, candidates, steps)
    if plain is None:
        return RecipeSteps(None, None, None, None, None, means)
    im, im_means = choose(records, domains, target, [plain, with_im(plain)], steps)
    means |= im_means
    copy = im
    if copy is not None and target_out:
        copy, out_means = choose(records, domains, target, [copy, f"{copy}{TARGET_OUT}"], steps)
        means |= out_means
    stepped = copy
    if stepped is not None and server_step and not stepped.endswith(TARGET_OUT):
        stepped, step_means = choose(
            records, domains, target, [stepped, f"{stepped}{SERVER_STEP_FORM}"], steps
        )
        means |= step_means
    final = stepped
    for method in then:
        if final is None:
            break
        final, then_means = choose(records, domains, target, [final, method], steps)
        means |= then_means
    return RecipeSteps(plain, im, copy, stepped, final, means)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=list(FAMILIES), default="digits")
    parser.add_argument(
        "--log", type=Path, nargs="+", required=True, help="Validation runs: one log, or several read as one."
    )
    parser.add_argument("--candidates", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--target", default=None, help="Print only this target's choice.")
    parser.add_argument(
        "--im",
        action="store_true",
        help="The recipe's procedure: the candidates are plain (no target terms); per target the chosen "
        "one's form with information maximisation is adopted when it validates better.",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"Record each target's chosen adversarial weight in {SELECTIONS.name}, which "
        "fedalign_im_selected reads.",
    )
    parser.add_argument(
        "--write-variant",
        action="store_true",
        help=f"Record each target's chosen candidate in {VARIANT_SELECTIONS.name}, which fedalign_im_variant "
        "(and fedalign_im_variant_lambda0, the same pipeline with lambda 0) reads.",
    )
    parser.add_argument(
        "--im-form",
        action="store_true",
        help="With --im and --target: print the chosen plain candidate's form with information "
        "maximisation, the runs the choice then needs.",
    )
    parser.add_argument(
        "--target-out",
        action="store_true",
        help="With --im, the procedure's last step: per target, the choice's form with the target's copy "
        f"kept out of G_agg (<choice>{TARGET_OUT}) is adopted when it validates better.",
    )
    parser.add_argument(
        "--server-step",
        action="store_true",
        help="With --im, a step after the others: per target whose choice keeps the target's copy in G_agg, "
        f"its form with the server step on G's average (<choice>{SERVER_STEP_FORM}) is adopted when it "
        "validates better.",
    )
    parser.add_argument(
        "--then",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="With --im, the last steps: each of these methods, in order, is adopted per target when it "
        "validates better than the choice so far.",
    )
    parser.add_argument(
        "--write-recipe",
        nargs="?",
        const="fedalign_recipe",
        choices=[arm for arm in CHOICE_FILES if arm.startswith("fedalign_recipe")],
        help="With --im: record each target's final choice for this arm (default fedalign_recipe; its "
        "`_lambda0` twin runs the same pipeline with lambda 0) in its file, "
        + ", ".join(f"{arm}: {path.name}" for arm, path in CHOICE_FILES.items())
        + ".",
    )
    args = parser.parse_args(argv)
    if (args.write_recipe or args.target_out or args.server_step or args.then) and not args.im:
        parser.error(
            "--write-recipe, --target-out, --server-step and --then are the recipe's procedure: add --im"
        )
    if args.im_form and not (args.im and args.target):
        parser.error("--im-form prints one target's next runs: add --im and --target")
    domains = FAMILIES[args.family].domains
    records = load(*args.log)
    if args.im:
        recipe(args, domains, records)
        return
    if args.target:
        chosen, _ = choose(records, domains, args.target, args.candidates, args.steps)
        print(chosen or "")
        return
    print("| real target | validation pool | " + " | ".join(args.candidates) + " | chosen |")
    print("|---|---|" + "---|" * len(args.candidates) + "---|")
    chosen_methods: dict[str, str] = {}
    for target in domains:
        chosen, means = choose(records, domains, target, args.candidates, args.steps)
        pool = ", ".join(d for d in domains if d != target)
        cells = [f"{100 * means[m]:.1f}" if m in means else "—" for m in args.candidates]
        print(f"| {target} | {pool} | " + " | ".join(cells) + f" | {chosen or '—'} |")
        if chosen:
            chosen_methods[target] = chosen
    if (args.write or args.write_variant) and len(chosen_methods) < len(domains):
        raise SystemExit("not every target has a choice yet: run the validation tasks first")
    if args.write:
        _record(SELECTIONS, {t: adv_weight(m) for t, m in chosen_methods.items()})
    if args.write_variant:
        _record(VARIANT_SELECTIONS, chosen_methods)


def _recipe_steps(
    args: argparse.Namespace, domains: tuple[str, ...], records: list[dict[str, Any]], target: str
) -> RecipeSteps:
    """`choose_recipe` for one target with the command line's candidates and steps."""
    return choose_recipe(
        records,
        domains,
        target,
        args.candidates,
        args.steps,
        args.target_out,
        args.server_step,
        tuple(args.then),
    )


def recipe(args: argparse.Namespace, domains: tuple[str, ...], records: list[dict[str, Any]]) -> None:
    """The recipe's procedure: lambda on the plain candidates, then information maximisation or not, then
    (with --target-out, --server-step) the further steps."""
    if args.target:
        steps = _recipe_steps(args, domains, records, args.target)
        print((with_im(steps.plain) if args.im_form and steps.plain else steps.final) or "")
        return
    print(
        "| real target | validation pool | "
        + " | ".join(f"λ={adv_weight(m):g}" for m in args.candidates)
        + " | chosen λ | with IM |"
        + (" IM step | target's copy out |" if args.target_out else "")
        + (f" {'copy' if args.target_out else 'IM'} step | server step |" if args.server_step else "")
        + (" choice so far | its mean |" if args.then else "")
        + "".join(f" {method} |" for method in args.then)
        + " chosen |"
    )
    columns = len(args.candidates) + 3 + 2 * args.target_out + 2 * args.server_step
    print("|---|---|" + "---|" * (columns + 2 * bool(args.then) + len(args.then)))
    final: dict[str, str] = {}
    for target in domains:
        steps = _recipe_steps(args, domains, records, target)
        means = steps.means
        pool = ", ".join(d for d in domains if d != target)
        cells = [f"{100 * means[m]:.1f}" if m in means else "—" for m in args.candidates]
        im = with_im(steps.plain) if steps.plain else None
        cells.append(f"λ={adv_weight(steps.plain):g}" if steps.plain else "—")
        cells.append(f"{100 * means[im]:.1f}" if im in means else "—")
        pick = "—" if steps.im is None else ("with IM" if steps.im == im else "without IM")
        if args.target_out:
            out = f"{steps.im}{TARGET_OUT}" if steps.im else None
            cells += [pick, f"{100 * means[out]:.1f}" if out in means else "—"]
            pick = "—" if steps.copy is None else ("copy out" if steps.copy == out else "copy averaged")
        if args.server_step:
            stepped = f"{steps.copy}{SERVER_STEP_FORM}" if steps.copy else None
            cells += [pick, f"{100 * means[stepped]:.1f}" if stepped in means else "—"]
            if steps.stepped is None:
                pick = "—"
            elif steps.copy is not None and steps.copy.endswith(TARGET_OUT):
                pick = "copy out (no step)"
            else:
                pick = "server step" if steps.stepped == stepped else "plain average"
        if args.then:
            so_far = f"{100 * means[steps.stepped]:.1f}" if steps.stepped in means else "—"
            cells += [pick, so_far] + [f"{100 * means[m]:.1f}" if m in means else "—" for m in args.then]
            pick = (
                "—" if steps.final is None else (steps.final if steps.final in args.then else "choice so far")
            )
        print(f"| {target} | {pool} | " + " | ".join(cells) + f" | {pick} |")
        if steps.final:
            final[target] = steps.final
    if args.write_recipe:
        if len(final) < len(domains):
            raise SystemExit("not every target has a choice yet: run the validation tasks first")
        _record(CHOICE_FILES[args.write_recipe], final)


def _record(path: Path, choices: dict[str, Any]) -> None:
    """Merge ``choices`` (target -> choice) into ``path``: targets are unique across the families."""
    recorded = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(recorded | choices, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
