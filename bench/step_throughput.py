"""Training step throughput: FedAlign's local step against a bare PyTorch loop, same model and data.

Run with the project's interpreter::

    .venv/bin/python -m bench.step_throughput --json bench/results/step-throughput.json

The step measured is a source node's adaptation step (the bulk of a round's compute): ``digits_cnn``'s
extractor G and task model T trained on a labelled digits domain (``--domain``, default ``mnist``) with
the task loss plus the adversarial loss against a fixed discriminator D, batch 64, SGD with momentum 0.9
and weight decay 5e-4. Three ways, each on its own copy of the same initial models:

- ``fedalign.steps.adapt_source``: the step function, fed by ``fedalign.data.BatchStream``;
- ``fedalign.node.NodeRuntime.run``: a whole adapt step as every node runs it (the aggregates loaded into
  the models, the stream built and seeded, the step, the uploads taken out), ``--steps`` local steps;
- bare PyTorch: the same forward, losses, backward and optimiser step written as a plain loop over a
  random permutation of the same tensors, with no per-step metrics (FedAlign's step reads its losses back
  every step, which on a GPU is a synchronisation).

On CUDA (``--device auto`` picks it when present) every way runs under the same bf16 autocast that
`fedalign.device.Device` uses, the batches are copied from the same host tensors, and the clock waits
for the device (``torch.cuda.synchronize``) before it stops. On the CPU torch runs ``--threads`` threads
(1 by default, as ``fedalign worker --threads 1`` does). Warm-up runs are left out; then the ways run
interleaved, ``--repeats`` times, the order rotated each time, so that load from other processes falls
on each alike. Figures: images per second (median, min, max over repeats) and each way's ratio to the
bare loop, both of the medians and the median of the ratios within each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.harness import machine, stamped, write_json
from fedalign import data as datasets
from fedalign.config import FederationConfig
from fedalign.device import Device
from fedalign.models import ModelSet, ModelShape, build
from fedalign.node import NodeRuntime, initial_models
from fedalign.protocol import StepSpec
from fedalign.steps import SOURCE, adapt_source

BATCH = 64
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
ADV_WEIGHT = 1.0


def node_config(domain: str, steps: int) -> FederationConfig:
    return FederationConfig.model_validate(
        {
            "name": "step-throughput",
            "architecture": "digits_cnn",
            "rounds": 1,
            "hyperparameters": {
                "local_steps": steps,
                "batch_size": BATCH,
                "lr": LR,
                "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY,
                "adv_weight": ADV_WEIGHT,
            },
            "nodes": [
                {"name": "source", "role": "source", "dataset": f"digits:{domain}"},
                {"name": "target", "role": "target", "dataset": "digits:mnistm"},
            ],
        }
    )


def models(device: Device) -> ModelSet:
    return build("digits_cnn", ModelShape((3, 28, 28), 10), seed=0).to(device.torch_device)


def sgd(params: list[nn.Parameter]) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def step_function_way(data: datasets.NodeData, device: Device) -> Callable[[int], None]:
    m = models(device)
    optimizer = sgd([*m.G.parameters(), *m.T.parameters()])
    stream = datasets.BatchStream(data.train, BATCH, seed=0)

    def run(steps: int) -> None:
        adapt_source(m.G, m.T, m.D, stream, optimizer, steps, ADV_WEIGHT, "flip", device)

    return run


def runtime_way(data: datasets.NodeData, device: Device, steps: int) -> Callable[[int], None]:
    config = node_config(data.spec.removeprefix("digits:"), steps)
    runtime = NodeRuntime("source", config, data, device)
    downloads = initial_models(config)
    step = StepSpec(
        node="source",
        round=1,
        phase="adapt",
        kind="adapt",
        downloads={m: f"r0/init/{m}" for m in ("G", "T", "D")},
        uploads={"G": "r1/adapt/G/source", "T": "r1/adapt/T/source"},
        seed=0,
    )

    def run(n: int) -> None:
        if n != steps:
            raise ValueError(f"the runtime's step has {steps} local steps, not {n}")
        runtime.run(step, downloads)

    return run


def bare_way(data: datasets.NodeData, device: Device) -> Callable[[int], None]:
    """The same computation as a plain loop: what a PyTorch user writes by hand."""
    m = models(device)
    G, T, D = m.G, m.T, m.D
    for p in D.parameters():
        p.requires_grad_(False)
    G.train()
    T.train()
    D.eval()
    optimizer = sgd([*G.parameters(), *T.parameters()])
    x_all, y_all = data.train.x, data.train.y
    generator = torch.Generator().manual_seed(0)
    state = {"order": torch.randperm(len(y_all), generator=generator), "at": 0}
    flipped = 1.0 - SOURCE
    dev = device.torch_device

    def run(steps: int) -> None:
        for _ in range(steps):
            if state["at"] + BATCH > len(y_all):
                state["order"], state["at"] = torch.randperm(len(y_all), generator=generator), 0
            index = state["order"][state["at"] : state["at"] + BATCH]
            state["at"] += BATCH
            x = x_all[index].to(dev, non_blocking=True)
            y = y_all[index].to(dev, non_blocking=True)
            with device.autocast:
                features = G(x)
                task = F.cross_entropy(T(features).float(), y)
                logits = D(features.float()).float().squeeze(1)
                adv = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, flipped))
                loss = task + ADV_WEIGHT * adv
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def synchronize(device: Device) -> None:
    if device.torch_device.type == "cuda":
        torch.cuda.synchronize(device.torch_device)


def device_label(device: Device) -> str:
    if device.torch_device.type == "cuda":
        return f"{torch.cuda.get_device_name(device.torch_device)} (CUDA, bf16 autocast)"
    return (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), fp32)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--domain", default="mnist", help="the labelled digits domain the source trains on")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per timed run (default: 50 CPU, 300 GPU)"
    )
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each way first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = Device.pick(args.device)
    steps = args.steps or (300 if device.torch_device.type == "cuda" else 50)
    data = datasets.load(f"digits:{args.domain}")
    ways: dict[str, Callable[[int], None]] = {
        "bare PyTorch loop": bare_way(data, device),
        "fedalign.steps.adapt_source": step_function_way(data, device),
        "NodeRuntime.run (adapt step)": runtime_way(data, device, steps),
    }
    load_at_start = os.getloadavg()
    for run in ways.values():
        for _ in range(args.warmup):
            run(steps)
        synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for repeat in range(args.repeats):
        k = repeat % len(names)
        for name in names[k:] + names[:k]:
            synchronize(device)
            start = time.perf_counter()
            ways[name](steps)
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    rates = {name: [steps * BATCH / s for s in values] for name, values in seconds.items()}
    bare = rates["bare PyTorch loop"]
    figures = {
        name: {
            "images_per_s": statistics.median(r),
            "min": min(r),
            "max": max(r),
            "all": r,
            "ratio_of_medians": statistics.median(r) / statistics.median(bare),
            "median_paired_ratio": statistics.median(a / b for a, b in zip(r, bare, strict=True)),
        }
        for name, r in rates.items()
    }
    result = {
        "device": device_label(device),
        "device_type": device.torch_device.type,
        "config": {
            "domain": args.domain,
            "batch_size": BATCH,
            "steps_per_run": steps,
            "repeats": args.repeats,
            "warmup_runs": args.warmup,
            "threads": args.threads,
        },
        "machine": machine(load_at_start),
        "ways": figures,
    }
    print(f"\n## Step throughput on {result['device']}: digits_cnn, batch {BATCH}, {steps} steps per run\n")
    print("| way | images/s (median) | min–max | ratio to bare (medians) | median paired ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['images_per_s']:.0f} | {f['min']:.0f}–{f['max']:.0f} | "
            f"{f['ratio_of_medians']:.3f} | {f['median_paired_ratio']:.3f} |"
        )
    if args.json:
        path = Path(args.json)
        existing = json.loads(path.read_text()) if path.exists() else {}
        # One file, one entry per device type: a GPU run adds its figures beside the CPU's.
        existing[device.torch_device.type] = stamped(result)
        write_json(path, existing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
