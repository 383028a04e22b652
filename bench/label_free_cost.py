"""The cost of the target's live label-free scores at each evaluation, against the rest of its work.

Run with the project's interpreter::

    .venv/bin/python -m bench.label_free_cost --json bench/results/label-free-cost.json

At every evaluated round the target scores its own unlabelled training split (`steps.target_label_free`: a
forward pass of G and T over `fedalign.label_free.LIVE_EXAMPLES` of its examples at most). This measures that
pass, and the pass over the whole split that the scores would cost without the bound, beside what the target
does anyway, on the same models (``digits_cnn``, the digits recipe's target step with information
maximisation), one torch thread, interleaved ways with the order rotated each repeat so that load from other
processes falls on each alike:

- one training step of the target (`steps.adapt_target`, batch 64, against a fixed discriminator);
- the rest of its evaluation: the discriminator's accuracy on its validation split and ``target_acc`` on its
  test split;
- the live scores (`steps.target_label_free`, at most LIVE_EXAMPLES examples);
- the same scores over the whole training split (`bench.validators` and ``fedalign predict --split train``
  read it whole, once per model).

Targets: the digits benchmark's ``mnistm`` (1750 training images), and generated images standing in for a
larger unlabelled target (``--large``, default 20000; what a forward pass costs does not depend on what the
images show). Figures: seconds per way (median over repeats), each pass's ratio to one training step, and the
share of the target's compute it takes per evaluated round for a few (eval_every, local_steps) settings:
pass / (eval_every x local_steps x step + rest of evaluation + pass).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import machine, stamped, write_json
from fedalign import data as datasets
from fedalign.data.core import Split
from fedalign.label_free import LIVE_EXAMPLES, label_free_scores
from fedalign.models import ModelShape, build
from fedalign.presets import PRESETS
from fedalign.steps import (
    TARGET,
    adapt_target,
    discriminator_accuracy,
    predicted_probabilities,
    target_label_free,
    task_accuracy,
)

BATCH = 64
RECIPE = PRESETS["digits_recipe"]
# (eval_every, local_steps): the schema's defaults, the digits example's, and a sparser evaluation.
SETTINGS = ((1, 1), (25, 1), (100, 1))


def ways(data: datasets.NodeData) -> dict[str, Callable[[], None]]:
    m = build("digits_cnn", ModelShape((3, 28, 28), 10), seed=0)
    optimizer = torch.optim.SGD([*m.G.parameters()], lr=0.01, momentum=0.9, weight_decay=5e-4)
    stream = datasets.BatchStream(data.train, BATCH, seed=0)

    def step() -> None:
        adapt_target(
            m.G,
            m.T,
            m.D,
            stream,
            optimizer,
            1,
            0.1,
            "flip",
            entropy_weight=RECIPE["entropy_weight"],
            diversity_weight=RECIPE["diversity_weight"],
            pseudo_label_threshold=RECIPE["pseudo_label_threshold"],
        )

    def rest_of_evaluation() -> None:
        discriminator_accuracy(m.G, m.D, data.val, TARGET)
        task_accuracy(m.G, m.T, data.test)

    def live_scores() -> None:
        target_label_free(m.G, m.T, data.train)

    def whole_split() -> None:
        label_free_scores(predicted_probabilities(m.G, m.T, data.train))

    return {
        "training step": step,
        "rest of evaluation": rest_of_evaluation,
        "live scores": live_scores,
        "whole split": whole_split,
    }


def large_target(n: int, like: datasets.NodeData) -> datasets.NodeData:
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.rand((n, 3, 28, 28), generator=generator))
    return datasets.NodeData(**{**vars(like), "train": train})


def measure(run: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for fn in run.values():  # warm-up, untimed
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in run}
    names = list(run)
    for repeat in range(repeats):
        k = repeat % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            run[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=20000, help="training examples of the larger target")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mnistm = datasets.load("digits:mnistm")
    targets = {"digits:mnistm": mnistm, f"{args.large} generated images": large_target(args.large, mnistm)}
    load_at_start = os.getloadavg()
    results = {}
    for name, data in targets.items():
        s = measure(ways(data), args.repeats)
        step, rest = s["training step"], s["rest of evaluation"]
        results[name] = {
            "training_examples": len(data.train),
            "seconds": s,
            **{
                way: {
                    "over_step": s[way] / step,
                    "share_per_evaluated_round": {
                        f"eval_every={e}, local_steps={k}": s[way] / (e * k * step + rest + s[way])
                        for e, k in SETTINGS
                    },
                }
                for way in ("live scores", "whole split")
            },
        }
    print(f"\n## The target's label-free scores, digits_cnn, batch {BATCH}, 1 torch thread, CPU\n")
    print(
        "| target | training examples | pass | seconds | / training step | "
        + " | ".join(f"share at eval_every {e}" for e, _ in SETTINGS)
        + " |"
    )
    print("|---|---:|---|---:|---:|" + "---:|" * len(SETTINGS))
    for name, r in results.items():
        s = r["seconds"]
        blank = " |" * len(SETTINGS)
        step = s["training step"]
        print(f"| {name} | {r['training_examples']} | training step | {step:.4f} | 1.0 |{blank}")
        print(f"| | | rest of evaluation | {s['rest of evaluation']:.3f} | |{blank}")
        for way in ("live scores", "whole split"):
            shares = " | ".join(f"{100 * v:.0f}%" for v in r[way]["share_per_evaluated_round"].values())
            print(f"| | | {way} | {s[way]:.3f} | {r[way]['over_step']:.1f} | {shares} |")
    if args.json:
        write_json(
            Path(args.json),
            stamped(
                {
                    "config": {
                        "batch_size": BATCH,
                        "repeats": args.repeats,
                        "large": args.large,
                        "live_examples": LIVE_EXAMPLES,
                    },
                    "machine": machine(load_at_start),
                    "targets": results,
                }
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
