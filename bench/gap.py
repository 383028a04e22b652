"""The domain gap at the start of training, measured without any label, and the adversarial weight a rule
sets from it. Not a test.

For a real target and a seed, the recipe's pipeline with lambda = 0 (`fedalign_recipe_lambda0`: the
discriminator trains, nothing reads it) runs its first tenth of the rounds; the fresh discriminator's
balanced accuracy on that round's features (`disc_acc_fresh`, domain labels only) gives the proxy
A-distance PAD = 2 (1 - 2 err). The rule, fixed before any measurement: lambda = PAD / 2, clipped to [0, 1]:
no alignment where the domains cannot be told apart, the method's default weight (1, as in DANN) where a
discriminator separates them perfectly, in proportion between (the divergence term of Ben-David et al.'s
bound is what alignment can reduce). `fedalign_recipe_gap` runs the recipe with this lambda in place of the
one chosen on validation tasks.

    python -m bench.gap --family signals --seeds 0 1 2 3 4
    python -m bench.gap --family signals --log bench/results/signals.jsonl   # the gaps its runs measured
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import accuracy

SHARE = 10  # the gap is read after the first 1/SHARE of the rounds


class _Measured(Exception):
    """Raised from the round callback once the measured round's fresh accuracy is recorded."""


def measure(job: accuracy.Job) -> dict[str, float]:
    """The fresh discriminator's accuracy and PAD after the first tenth of ``job``'s rounds, lambda 0."""
    import torch

    from fedalign.simulate import CPU, Simulator

    torch.set_num_threads(1)
    config = accuracy.federated_config(replace(job, method="fedalign_recipe_lambda0"))
    measured = max(1, config.rounds // SHARE)
    hp = config.hyperparameters.model_copy(update={"eval_every": measured})
    simulator = Simulator(config.model_copy(update={"hyperparameters": hp}), CPU, None, None)

    def stop_once_recorded(record: Any) -> None:
        # A round's fresh accuracy is measured by the next round's discriminator, recorded during it.
        if record.round >= measured + 1 and "pad" in simulator.records[measured].metrics:
            raise _Measured

    with contextlib.suppress(_Measured):
        simulator.run(stop_once_recorded)
    metrics = simulator.records[measured].metrics
    return {"gap_disc_acc_fresh": metrics["disc_acc_fresh"], "gap_pad": metrics["pad"]}


def weight(pad: float) -> float:
    """The rule: lambda = PAD / 2, clipped to [0, 1]."""
    return min(1.0, max(0.0, pad / 2.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=list(accuracy.FAMILIES), default="digits")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        help=f"Read the gaps {accuracy.GAP_ARM}'s runs measured (bench.accuracy's log) instead of measuring.",
    )
    args = parser.parse_args(argv)
    family = accuracy.FAMILIES[args.family]
    measured: dict[str, list[dict[str, float]]] = {t: [] for t in family.domains}
    if args.log:
        for line in args.log.read_text().splitlines():
            run = json.loads(line) if line.strip() else {}
            if run.get("method") != accuracy.GAP_ARM or run["seed"] not in args.seeds:
                continue
            if run["target"] in measured:
                measured[run["target"]].append(run["final_metrics"])
    else:
        jobs = [
            accuracy.Job(accuracy.GAP_ARM, t, s, args.steps, 64, 0.01, "dann", family.domains, family.name)
            for t in family.domains
            for s in args.seeds
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            for job, result in zip(jobs, pool.map(measure, jobs), strict=True):
                measured[job.target].append(result)
    print("| real target | fresh discriminator accuracy | PAD | λ = PAD / 2 |")
    print("|---|---|---|---|")
    for target, rows in measured.items():
        if not rows:
            print(f"| {target} | — | — | — |")
            continue
        cells = [_spread([r[key] for r in rows]) for key in ("gap_disc_acc_fresh", "gap_pad")]
        weights = [weight(r["gap_pad"]) for r in rows]
        cells.append(f"{statistics.fmean(weights):.2f} ({min(weights):.2f} to {max(weights):.2f})")
        print(f"| {target} | " + " | ".join(cells) + " |")


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main()
