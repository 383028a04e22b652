"""A node's peak memory on a large ``imagefolder:``, read lazily against stacked whole into memory.

Run with the project's interpreter::

    .venv/bin/python -m bench.lazy_data --json bench/results/lazy-data.json

Generates ``--images`` PNG images of ``--size`` x ``--size`` pixels (smooth random colour fields, ten
class folders) in a temporary folder, then, each in a fresh child process of its own, builds a source
node's data from ``imagefolder:<folder>`` with ``[preprocessing] resize = [size, size]`` and runs
``--batches`` training batches of 64 (a small conv net, SGD) two ways:

- **eager**: what the loader did before splits were read lazily (`eager_node_data`, kept here for this
  comparison): every image decoded and stacked into one uint8 array, each split converted whole to
  float32, batches drawn from the tensors in memory;
- **lazy**: ``fedalign.node.load_node_data`` as every node runs it now: the file names are listed, the
  images of a batch are read when the batch asks for them (``torch.utils.data.DataLoader``, no workers).

Each child reports its peak resident set size (``ru_maxrss``), the same after importing torch and the
model (the interpreter's share, which both pay), the seconds to build the data and to run the batches.
The figure is the ratio of the eager peak to the lazy one, in all and above the interpreter's share.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import REPO, stamped, write_json

CLASSES = 10
BATCH = 64


# ------------------------------------------------------------------------------------------- the images


def write_images(root: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` PNG images of ``size``x``size``: a smooth colour field per image (a bilinear blend of four
    random corner colours) and a random bright rectangle, in ``CLASSES`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    u, v = ramp[None, :, None], ramp[:, None, None]
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        corners = rng.uniform(0, 255, size=(4, 3)).astype(np.float32)
        field = (
            corners[0] * (1 - u) * (1 - v)
            + corners[1] * u * (1 - v)
            + corners[2] * (1 - u) * v
            + corners[3] * u * v
        )
        top, left = rng.integers(0, size // 2, size=2)
        field[top : top + size // 4, left : left + size // 4] = 255.0
        Image.fromarray(field.astype(np.uint8)).save(
            root / f"class{i % CLASSES}" / f"{i:06}.png", compress_level=1
        )


# ------------------------------------------------------------------------------------------- one child


def eager_node_data(spec: str, size: tuple[int, int]) -> Any:
    """The node's data as the loader built it before lazy reading: every image read and stacked, each split
    converted whole to float32 tensors (kept here for the comparison only)."""
    from fedalign.data import NodeData, Split
    from fedalign.data.core import images_to_tensor, labels_to_tensor
    from fedalign.data.imagefolder import folder_layout, parse_imagefolder_argument, read_image
    from fedalign.data.splits import stratified_split

    root, _ = parse_imagefolder_argument(spec.partition(":")[2])
    layout = folder_layout(root)
    assert layout.labels is not None and layout.classes is not None
    images = np.stack([read_image(path, size) for path in layout.files])
    parts = [
        Split(images_to_tensor(images[i]), labels_to_tensor(layout.labels[i]))
        for i in stratified_split(layout.labels)
    ]
    return NodeData(spec, *parts, num_classes=len(layout.classes), input_shape=(3, *size))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(way: str, root: Path, size: int, batches: int) -> dict[str, Any]:
    import torch
    from torch import nn

    from fedalign.config import FederationConfig
    from fedalign.data import BatchStream
    from fedalign.node import load_node_data

    torch.set_num_threads(1)
    spec = f"imagefolder:{root}"
    config = FederationConfig.model_validate(
        {
            "model": {"input_shape": [3, size, size], "num_classes": CLASSES},
            "preprocessing": {"resize": [size, size]},
            "nodes": [
                {"name": "site", "role": "source", "dataset": spec},
                {"name": "t", "role": "target", "dataset": spec},
            ],
        }
    )
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(256, CLASSES),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    data = eager_node_data(spec, (size, size)) if way == "eager" else load_node_data(config, "site")
    built = time.perf_counter()
    stream = BatchStream(data.train, BATCH, seed=0)
    for _ in range(batches):
        x, y = stream.next()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    done = time.perf_counter()
    return {
        "way": way,
        "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "input_shape": list(data.input_shape),
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_imports_bytes": baseline,
        "build_s": built - start,
        "batches_s": done - built,
    }


def run_child(way: str, root: Path, size: int, batches: int) -> dict[str, Any]:
    """One way in a fresh interpreter, so that its peak is its own."""
    command = [sys.executable, "-m", "bench.lazy_data", "--child", way, "--root", str(root)]
    command += ["--size", str(size), "--batches", str(batches)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {way} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- main


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=128, help="images are size x size pixels")
    parser.add_argument("--batches", type=int, default=5, help="training batches of 64 after building")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    parser.add_argument("--child", choices=("eager", "lazy"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root, args.size, args.batches)))
        return 0
    with tempfile.TemporaryDirectory(prefix="fedalign-lazy-data-") as tmp:
        root = Path(tmp) / "images"
        start = time.perf_counter()
        write_images(root, args.images, args.size)
        generated = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in root.rglob("*.png"))
        print(
            f"{args.images} images of {args.size}x{args.size} written in {generated:.0f} s "
            f"({on_disk / 2**20:.0f} MiB)"
        )
        ways = {way: run_child(way, root, args.size, args.batches) for way in ("lazy", "eager")}
    for way, r in ways.items():
        above = r["peak_rss_bytes"] - r["rss_after_imports_bytes"]
        print(
            f"{way:>5}: peak RSS {gib(r['peak_rss_bytes'])} ({gib(above)} above the interpreter's "
            f"{gib(r['rss_after_imports_bytes'])}), data built in {r['build_s']:.1f} s, "
            f"{args.batches} batches in {r['batches_s']:.2f} s"
        )
    eager, lazy = ways["eager"], ways["lazy"]
    ratio = eager["peak_rss_bytes"] / lazy["peak_rss_bytes"]
    ratio_above = (eager["peak_rss_bytes"] - eager["rss_after_imports_bytes"]) / max(
        lazy["peak_rss_bytes"] - lazy["rss_after_imports_bytes"], 1
    )
    print(f"peak RSS, eager / lazy: {ratio:.1f}x in all, {ratio_above:.1f}x above the interpreter")
    if args.json:
        result = {
            "config": {
                "images": args.images,
                "size": args.size,
                "batches": args.batches,
                "batch_size": BATCH,
            },
            "images_on_disk_bytes": on_disk,
            "generate_s": generated,
            "ways": ways,
            "peak_rss_ratio": ratio,
            "peak_rss_ratio_above_interpreter": ratio_above,
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        }
        print(f"written to {write_json(args.json, stamped(result))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
