"""Writes the worked example's CSV files: three domains of FedAlign's signals benchmark as tables.

    python make_csv.py [OUT_DIR]      (default: data/ beside this file)

- ``lab.csv`` and ``field.csv``: two labelled sources (64 feature columns ``t0``..``t63`` and ``label``);
- ``smooth.csv``: the target's training rows, *without* the label column (unlabelled);
- ``smooth-test.csv``: the target's labelled evaluation split.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from fedalign.data.signals import generate

EVALUATION_FRACTION = 0.2  # of the target's rows, kept apart with their labels


def write(path: Path, x: np.ndarray, y: np.ndarray | None) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow([f"t{i}" for i in range(x.shape[1])] + (["label"] if y is not None else []))
        for i, row in enumerate(x):
            out.writerow([f"{v:.5g}" for v in row] + ([int(y[i])] if y is not None else []))


def main(argv: list[str]) -> Path:
    out = Path(argv[0]) if argv else Path(__file__).parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    for domain in ("lab", "field"):
        write(out / f"{domain}.csv", *generate(domain))
    x, y = generate("smooth")
    order = np.random.default_rng(0).permutation(len(x))
    held = order[: int(EVALUATION_FRACTION * len(x))]
    rest = order[len(held) :]
    write(out / "smooth.csv", x[rest], None)
    write(out / "smooth-test.csv", x[held], y[held])
    return out


if __name__ == "__main__":
    print(f"wrote the example's CSV files to {main(sys.argv[1:])}")
