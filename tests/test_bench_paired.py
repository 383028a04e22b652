"""The paired comparison of benchmark arms (bench.paired): the difference over shared seeds, its interval."""

from __future__ import annotations

import math

import pytest

from bench.paired import AVERAGE, by_seed, paired, platform_note, tables


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


def _run(method: str, seed: int, cpu: str | None) -> dict[str, object]:
    platform = {"torch": "2.13.0+cpu", "cpu_capability": cpu, "machine": "x86_64"} if cpu else None
    return {"method": method, "target": "x", "seed": seed, "target_acc": 0.5, "platform": platform}


def test_pairs_from_one_recorded_platform_carry_no_note() -> None:
    runs = [_run("a", 0, "AVX512"), _run("b", 0, "AVX512")]
    assert platform_note(runs, {"a", "b"}, ["x"]) is None
    assert "Note" not in tables(runs, ["a", "b"], [("a", "b")], ["x"])


def test_pairs_across_platforms_or_of_unrecorded_platform_are_flagged() -> None:
    mixed = [_run("a", 0, "AVX512"), _run("b", 0, "AVX2"), _run("c", 0, "AVX2")]
    note = platform_note(mixed, {"a", "b"}, ["x"])
    assert note is not None and "2 platforms (AVX2 kernels" in note and "AVX512 kernels" in note
    assert platform_note(mixed, {"b", "c"}, ["x"]) is None  # only the compared arms count
    old = [_run("a", 0, "AVX512"), _run("b", 0, None)]
    note = platform_note(old, {"a", "b"}, ["x"])
    assert note is not None and "1 of 2 runs record no platform" in note and "ran on AVX512" in note
    assert note in tables(old, ["a", "b"], [("a", "b")], ["x"])
