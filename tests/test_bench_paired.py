"""The paired comparison of benchmark arms (bench.paired): the difference over shared seeds, its interval."""

from __future__ import annotations

import math

import pytest

from bench.paired import AVERAGE, by_seed, paired


def test_paired_difference_uses_shared_seeds_and_students_t() -> None:
    a = {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.90}
    b = {0: 0.75, 1: 0.79, 2: 0.74}  # seed 3 ran in one arm only: not compared
    result = paired(a, b)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) x sd 1 / sqrt(3)
    assert result.n == 3
    assert result.mean == pytest.approx(4.0)  # differences 5, 3 and 4 points
    assert (result.low, result.high) == pytest.approx((4.0 - half, 4.0 + half))
    assert result.significant  # the interval (about 1.5 to 6.5) excludes 0


def test_a_difference_whose_interval_holds_zero_is_not_significant() -> None:
    result = paired({0: 0.8, 1: 0.7, 2: 0.9}, {0: 0.7, 1: 0.8, 2: 0.9})
    assert result.mean == pytest.approx(0.0, abs=1e-9) and not result.significant
    assert "*" not in result.cell()
    assert paired({0: 0.8}, {0: 0.7}).cell() == "+10.0 (1 seed)"


def test_the_average_over_targets_counts_only_seeds_that_ran_every_target() -> None:
    runs = [
        {"method": "m", "target": "x", "seed": 0, "target_acc": 0.5},
        {"method": "m", "target": "y", "seed": 0, "target_acc": 0.7},
        {"method": "m", "target": "x", "seed": 1, "target_acc": 0.6},
    ]
    table = by_seed(runs, "m", ["x", "y"])
    assert table[AVERAGE] == {0: pytest.approx(0.6)}
