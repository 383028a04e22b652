"""Arms chosen per run by a label-free validator (bench.chosen, bench.paired --chosen)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import paired
from bench.chosen import ChosenArm, TwinArm


def _run(method: str, target: str, seed: int, acc: float, im: float | None) -> dict[str, object]:
    metrics = {} if im is None else {"validator_im": im}
    return {
        "key": f"{method}|{target}|{seed}|1500|64|0.01|dann",
        "method": method,
        "target": target,
        "seed": seed,
        "steps": 1500,
        "target_acc": acc,
        "final_metrics": metrics,
    }


RUNS = [
    _run("bn", "x", 0, 0.80, im=0.9),  # bn scores higher: its run is deployed
    _run("gn", "x", 0, 0.60, im=0.5),
    _run("bn", "x", 1, 0.70, im=0.4),  # gn scores higher, though bn is more accurate
    _run("gn", "x", 1, 0.65, im=0.6),
    _run("bn", "y", 0, 0.50, im=0.3),  # a tie: the first candidate
    _run("gn", "y", 0, 0.90, im=0.3),
    _run("bn", "y", 1, 0.50, im=0.3),  # gn never ran this seed: no choice
    _run("bn", "z", 0, 0.50, im=None),  # unscored runs: no choice
    _run("gn", "z", 0, 0.40, im=None),
]


def test_each_target_and_seed_deploys_the_higher_scoring_candidate() -> None:
    arm = ChosenArm.parse("picked=bn,gn@im")
    chosen = {(r["target"], r["seed"]): r for r in arm.runs(RUNS)}
    assert set(chosen) == {("x", 0), ("x", 1), ("y", 0)}
    assert (chosen["x", 0]["chosen_from"], chosen["x", 0]["target_acc"]) == ("bn", 0.80)
    assert (chosen["x", 1]["chosen_from"], chosen["x", 1]["target_acc"]) == ("gn", 0.65)
    assert chosen["y", 0]["chosen_from"] == "bn"
    assert all(r["method"] == "picked" for r in chosen.values())


@pytest.mark.parametrize(
    "text", ["picked=bn@im", "picked=bn,gn", "picked=bn,gn@accuracy", "bn,gn@im", "pi cked=bn,gn@im"]
)
def test_a_malformed_chosen_arm_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ChosenArm.parse(text)


def test_the_paired_table_compares_a_chosen_arm_like_any_arm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "runs.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RUNS))
    argv = ["--log", str(log), "--arms", "picked", "bn", "--pairs", "picked:bn", "--targets", "x"]
    paired.main([*argv, "--chosen", "picked=bn,gn@im"])
    out = capsys.readouterr().out
    assert "| picked | 72.5 ± 10.6 |" in out  # seeds 0 and 1 deploy 80 (bn) and 65 (gn)
    assert "| picked − bn | -2.5 [" in out
    assert "| bn | 1 |" in out and "| gn | 1 |" in out  # the picks

    with pytest.raises(SystemExit):
        paired.main(["--log", str(log), "--arms", "picked", "--chosen", "picked=bn,gn@accuracy"])


def test_a_twin_runs_the_counterpart_of_whichever_candidate_was_picked() -> None:
    runs = [
        *RUNS,
        _run("bn0", "x", 0, 0.75, im=None),
        _run("gn0", "x", 0, 0.55, im=None),
        _run("bn0", "x", 1, 0.72, im=None),  # x seed 1 picked gn, whose twin did not run: no twin run
        _run("gn0", "y", 0, 0.30, im=None),
    ]
    arm = ChosenArm.parse("picked=bn,gn@im")
    twin = TwinArm.parse("picked0=picked:bn0,gn0", {"picked": arm})
    made = {(r["target"], r["seed"]): r for r in twin.runs(runs, arm, arm.runs(runs))}
    assert set(made) == {("x", 0)}  # y seed 0 picked bn (a tie), whose twin bn0 did not run there
    assert (made["x", 0]["method"], made["x", 0]["chosen_from"], made["x", 0]["target_acc"]) == (
        "picked0",
        "bn0",
        0.75,
    )
    for text in ("picked0=other:bn0,gn0", "picked0=picked:bn0", "picked0:bn0,gn0"):
        with pytest.raises(ValueError):
            TwinArm.parse(text, {"picked": arm})
