"""Privacy benchmark: what differential privacy and secure aggregation cost on digits. Not a test.

One target (default `mnistm`), the other three domains as labelled sources, `bench.accuracy`'s `fedalign`
recipe (its `FEDALIGN` hyperparameters, one extractor and one discriminator step per round) for `--steps`
rounds, in these arms:

* ``plain_batchnorm``: the recipe as the accuracy benchmark runs it (`digits_cnn` with BatchNorm), for
  reference;
* ``plain``: the same with GroupNorm (``model.normalization = "group"``), the network every other arm uses,
  since differential privacy cannot train BatchNorm;
* ``dp_sigma<s>``: DP-SGD in every local step (`fedalign.privacy`), clip norm 1, noise multipliers
  `--sigmas`; epsilon at delta 1e-5 per node;
* ``secure_aggregation``: masked uploads (`fedalign.secagg`);
* ``dp_sigma<s>_secure_aggregation``: both, at the first of `--sigmas`.

The learning rate is the recipe's (`--lr`, 0.01) for the BatchNorm reference and `--group-lr` (0.1) for the
GroupNorm arms: GroupNorm trains far slower at 0.01 (the sources' own validation accuracy was 0.37 after 300
steps), and in a pilot of the plain GroupNorm arm (150 steps, seed 0) 0.1 had the best source validation
accuracy (0.51, against 0.26 at 0.03 and 0.28 at 0.3), a choice that reads no target label.

Target test accuracy at the end (the target's labels are read only for it) and wall-clock seconds per round
of the simulation (data loading excluded), one torch thread, runs one after another in seed-major order so
that load from other processes falls on every arm alike. DP arms draw their noise from the step's seed
(``privacy.randomness = "seeded"``), so a rerun repeats them exactly.

    python -m bench.privacy_bench --seeds 0 1 --json bench/results/privacy.json

Two diagnostics change only how the plain average is rounded: `--scale-bits N` (secure aggregation's
fixed point at 2^-N instead of `fedalign.secagg`'s 2^-24) and `--threads N` (torch threads, so float sums run
in another order); the Privacy benchmark page of the docs reads them beside the table.

Results go to a JSON-lines log as each run finishes (`--log`, default beside `--json`); a rerun skips the
runs already logged with the same settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.accuracy import DOMAINS, FEDALIGN
from bench.harness import stamped, write_json

DELTA = 1e-5
CLIP = 1.0


@dataclass(frozen=True)
class Arm:
    name: str
    normalization: str = "group"
    sigma: float = 0.0
    secure_aggregation: bool = False


def arms(sigmas: list[float]) -> list[Arm]:
    return [
        Arm("plain_batchnorm", normalization="batch"),
        Arm("plain"),
        *(Arm(f"dp_sigma{s:g}", sigma=s) for s in sigmas),
        Arm("secure_aggregation", secure_aggregation=True),
        Arm(f"dp_sigma{sigmas[0]:g}_secure_aggregation", sigma=sigmas[0], secure_aggregation=True),
    ]


@dataclass(frozen=True)
class Job:
    arm: Arm
    target: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    # Secure aggregation's fixed-point resolution, 2^-scale_bits; None: fedalign.secagg's default.
    scale_bits: int | None = None
    threads: int = 1

    @property
    def key(self) -> str:
        a = self.arm
        parts = [a.name, a.normalization, a.sigma, CLIP, DELTA, a.secure_aggregation, self.target]
        parts += [self.seed, self.steps, self.batch_size, self.lr]
        if self.scale_bits is not None:
            parts.append(f"scale_bits={self.scale_bits}")
        if self.threads != 1:
            parts.append(f"threads={self.threads}")
        return "|".join(str(v) for v in parts)


def use_scale_bits(bits: int) -> None:
    """Make secure aggregation encode with 2^-bits resolution in this process (a diagnostic: the simulator
    masks and sums with `fedalign.secagg`'s default fixed point). The range shrinks to keep 2^18 summands
    inside the ring: max_abs = 2^(62 - 18 - bits)."""
    from fedalign import secagg

    fixed_point = secagg.FixedPoint(scale_bits=bits, max_abs=float(2 ** (62 - 18 - bits)))
    for cls in (secagg.Masker, secagg.MaskedSum):
        cls.__init__.__kwdefaults__["fixed_point"] = fixed_point


def config(job: Job) -> Any:
    from fedalign.config import FederationConfig

    a = job.arm
    hp = {
        **FEDALIGN,
        "batch_size": job.batch_size,
        "lr": job.lr,
        "disc_lr": job.lr,
        "lr_schedule": "dann",
        "eval_every": job.steps,  # one local step per round: evaluate once, at the end
    }
    private = {"noise_multiplier": a.sigma, "max_grad_norm": CLIP, "delta": DELTA, "randomness": "seeded"}
    nodes = [{"name": d, "role": "source", "dataset": f"digits:{d}"} for d in DOMAINS if d != job.target]
    nodes.append({"name": job.target, "role": "target", "dataset": f"digits:{job.target}"})
    return FederationConfig.model_validate(
        {
            "name": f"privacy-{a.name}-{job.target}",
            "algorithm": "fedalign",
            "architecture": "digits_cnn",
            "model": {"normalization": a.normalization},
            "rounds": job.steps,
            "seed": job.seed,
            "secure_aggregation": a.secure_aggregation,
            "privacy": private if a.sigma > 0 else {},
            "hyperparameters": hp,
            "nodes": nodes,
        }
    )


def run(job: Job) -> dict[str, Any]:
    import torch

    from fedalign import data as datasets
    from fedalign.simulate import simulate

    torch.set_num_threads(job.threads)
    cfg = config(job)
    node_data = {n.name: datasets.load(n.dataset) for n in cfg.nodes}
    start = time.perf_counter()
    result = simulate(cfg, node_data=node_data)
    seconds = time.perf_counter() - start
    last = result.rounds[-1]
    epsilon = {n: m["dp_epsilon"] for n, m in last.nodes.items() if "dp_epsilon" in m}
    final = result.final_metrics
    return {
        "key": job.key,
        "arm": job.arm.name,
        "normalization": job.arm.normalization,
        "sigma": job.arm.sigma,
        "clip": CLIP,
        "delta": DELTA,
        "secure_aggregation": job.arm.secure_aggregation,
        "target": job.target,
        "seed": job.seed,
        "steps": job.steps,
        "batch_size": job.batch_size,
        "lr": job.lr,
        "scale_bits": job.scale_bits,
        "threads": job.threads,
        "target_acc": final["target_acc"],
        "seconds": seconds,
        "seconds_per_round": seconds / cfg.rounds,
        "dp_epsilon": epsilon,
        "n_train": {n.name: len(node_data[n.name].train) for n in cfg.nodes},
        "final_metrics": {k: v for k, v in final.items() if k != "target_acc"},
    }


def _spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "—"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def _median(values: list[float]) -> str:
    """Seconds: the median and the range, since load from other processes only ever adds time."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(results: list[dict[str, Any]], arm_list: list[Arm]) -> str:
    lines = [
        "| arm | normalisation | noise σ | ε at δ = 1e-5 (worst node) | secure aggregation | target acc. (%) "
        "| lr | s / round, median (range) |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for arm in arm_list:
        rows = [r for r in results if r["arm"] == arm.name]
        if not rows:
            continue
        eps = max(rows[0]["dp_epsilon"].values()) if rows[0]["dp_epsilon"] else None
        lines.append(
            f"| {arm.name} | {'BatchNorm' if arm.normalization == 'batch' else 'GroupNorm'} "
            f"| {arm.sigma:g} | {'—' if eps is None else f'{eps:.2f}'} "
            f"| {'yes' if arm.secure_aggregation else 'no'} "
            f"| {_spread([r['target_acc'] for r in rows], 100)} | {rows[0]['lr']:g} "
            f"| {_median([r['seconds_per_round'] for r in rows])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="mnistm", choices=DOMAINS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=300, help="Rounds of one local step each.")
    parser.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 2.0], help="DP noise multipliers.")
    parser.add_argument("--arms", nargs="+", default=None, help="Run only these arms (default: all).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01, help="The BatchNorm reference's learning rate.")
    parser.add_argument("--group-lr", type=float, default=0.1, help="The GroupNorm arms' learning rate.")
    parser.add_argument(
        "--scale-bits",
        type=int,
        default=None,
        help="Diagnostic: secure aggregation's fixed-point resolution 2^-N instead of fedalign.secagg's.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Diagnostic: torch threads per run; float sums then run in another order (default 1).",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/privacy.json"))
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)

    arm_list = [a for a in arms(args.sigmas) if args.arms is None or a.name in args.arms]
    log: Path = args.log or args.json.with_suffix(".jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["key"]] = record
    jobs = [
        Job(
            a,
            args.target,
            s,
            args.steps,
            args.batch_size,
            args.lr if a.normalization == "batch" else args.group_lr,
            args.scale_bits if a.secure_aggregation else None,
            args.threads,
        )
        for s in args.seeds
        for a in arm_list
    ]
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already logged in {log}", flush=True)
    if args.scale_bits is not None:
        use_scale_bits(args.scale_bits)
    with log.open("a") as out:
        for job in todo:
            record = run(job)
            done[record["key"]] = record
            out.write(json.dumps(record) + "\n")
            out.flush()
            eps = ", ".join(f"{n} {e:.2f}" for n, e in record["dp_epsilon"].items()) or "no DP"
            print(
                f"{record['arm']:>32} seed {record['seed']}: {100 * record['target_acc']:.1f}%  "
                f"{record['seconds_per_round']:.2f} s/round  (epsilon: {eps})",
                flush=True,
            )

    results = [done[j.key] for j in jobs]
    text = table(results, arm_list)
    print(
        f"\nTarget {args.target}, {args.steps} rounds of one step, batch {args.batch_size}; mean ± sd over "
        f"seeds {args.seeds}:\n"
    )
    print(text)
    write_json(
        args.json,
        stamped({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results, "table": text}),
        allow_nan=True,
    )


if __name__ == "__main__":
    main()
