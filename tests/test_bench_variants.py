"""Choosing a candidate recipe per target without its labels (bench.select --write-variant), and the paired
arms that run the choice: the chosen candidate and the same pipeline with lambda = 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import accuracy, gap, select

POOL = {"lab": ("field", "fast", "smooth")}


def validation_log(path: Path, means: dict[str, dict[str, float]], seeds: tuple[int, ...] = (0,)) -> Path:
    """A log of validation runs: per real target, per candidate, one run per seed on each pseudo-target of its
    pool."""
    domains = accuracy.FAMILIES["signals"].domains
    lines = []
    for target, by_method in means.items():
        pool = tuple(d for d in domains if d != target)
        for method, acc in by_method.items():
            for pseudo in pool:
                for seed in seeds:
                    parts = (method, pseudo, seed, 750, 64, 0.01, "dann", ",".join(pool))
                    key = "|".join(str(v) for v in parts)
                    lines.append(
                        {"key": key, "method": method, "target": pseudo, "steps": 750, "target_acc": acc}
                    )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# The recipe's plain candidates, and validation means under which lambda 0.3 is the plain choice.
PLAIN = ["fedalign_lambda0.1", "fedalign_lambda0.3", "fedalign"]
LAMBDAS = {"fedalign_lambda0.1": 0.40, "fedalign_lambda0.3": 0.45, "fedalign": 0.30}


def record_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arm: str) -> Path:
    """A per-target arm's record, moved to a temporary file for the test."""
    path = tmp_path / f"{arm}.json"
    monkeypatch.setitem(accuracy.CHOICE_FILES, arm, path)
    return path


def config_of(
    method: str, target: str = "lab", family: str = "signals", adv_weight: float | None = None
) -> dict:
    """The federation an arm runs for one job (seed 3, the benchmark's budget), its name left out."""
    job = accuracy.Job(method, target, 3, 1500, 64, 0.01, "dann", family=family)
    return {**accuracy.federated_config(job, adv_weight).model_dump(mode="json"), "name": None}


def test_the_best_validated_candidate_is_recorded_per_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    selections = tmp_path / "selected-variant.json"
    selections.write_text(json.dumps({"syn": "fedalign_im_x3"}))  # another family's choice stays
    monkeypatch.setattr(select, "VARIANT_SELECTIONS", selections)
    candidates = ["fedalign_im_lambda0.1", "fedalign_im_cdane", "fedalign_im_x3"]
    means = {
        "lab": {"fedalign_im_lambda0.1": 0.40, "fedalign_im_cdane": 0.45, "fedalign_im_x3": 0.41},
        "field": {"fedalign_im_lambda0.1": 0.56, "fedalign_im_cdane": 0.56, "fedalign_im_x3": 0.50},
        "fast": {"fedalign_im_lambda0.1": 0.60, "fedalign_im_cdane": 0.61, "fedalign_im_x3": 0.66},
        "smooth": {"fedalign_im_lambda0.1": 0.44, "fedalign_im_cdane": 0.43, "fedalign_im_x3": 0.42},
    }
    log = validation_log(tmp_path / "v.jsonl", means)
    select.main(["--family", "signals", "--log", str(log), "--candidates", *candidates, "--write-variant"])
    assert json.loads(selections.read_text()) == {
        "syn": "fedalign_im_x3",
        "lab": "fedalign_im_cdane",
        "field": "fedalign_im_lambda0.1",  # a tie goes to the candidate listed first
        "fast": "fedalign_im_x3",
        "smooth": "fedalign_im_lambda0.1",
    }


def test_nothing_is_recorded_before_every_target_has_its_validation_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    selections = tmp_path / "selected-variant.json"
    monkeypatch.setattr(select, "VARIANT_SELECTIONS", selections)
    log = validation_log(tmp_path / "v.jsonl", {"lab": {"fedalign_im_lambda0.1": 0.4, "fedalign_im_x3": 0.5}})
    candidates = ["fedalign_im_lambda0.1", "fedalign_im_x3"]
    with pytest.raises(SystemExit, match="not every target"):
        select.main(
            ["--family", "signals", "--log", str(log), "--candidates", *candidates, "--write-variant"]
        )
    assert not selections.exists()


@pytest.mark.parametrize("arm", sorted(accuracy.CHOSEN))
@pytest.mark.parametrize("candidate", [*accuracy.VARIANTS, "fedalign_lambda0.3", "fedalign"])
def test_the_chosen_candidate_and_its_lambda0_arm_differ_in_the_adversarial_weight_only(
    arm: str, candidate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(accuracy.CHOSEN[arm], "lab", candidate)
    chosen, without = config_of(arm), config_of(f"{arm}_lambda0")
    weight = select.adv_weight(candidate)
    assert weight > 0 and chosen["hyperparameters"]["adv_weight"] == weight
    assert without["hyperparameters"]["adv_weight"] == 0.0
    assert chosen["hyperparameters"] == {**without["hyperparameters"], "adv_weight": weight}
    assert {**chosen, "hyperparameters": None} == {**without, "hyperparameters": None}
    # The chosen arm is the candidate as the validation tasks ran it, changed only where the arm says so.
    validated = config_of(candidate)
    changed = {
        k
        for k in chosen["hyperparameters"]
        if chosen["hyperparameters"][k] != validated["hyperparameters"][k]
    }
    assert changed == set(accuracy.ARM_OVERRIDES.get(arm, {}))
    assert chosen["model"] == {**validated["model"], **accuracy.MODEL_OVERRIDES.get(arm, {})}
    rest = {"hyperparameters": None, "model": None}
    assert {**chosen, **rest} == {**validated, **rest}


def test_the_recipe_procedure_chooses_lambda_without_target_terms_then_adopts_them_only_when_better(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    selections = tmp_path / "selected-recipe.json"
    monkeypatch.setitem(accuracy.CHOICE_FILES, "fedalign_recipe", selections)
    plain = ["fedalign_lambda0.1", "fedalign_lambda0.3", "fedalign"]
    means = {
        # lambda 0.3 validates best without IM; its IM form (not lambda 0.1's) is what is compared.
        "lab": {
            "fedalign_lambda0.1": 0.40,
            "fedalign_lambda0.3": 0.45,
            "fedalign": 0.30,
            "fedalign_im_lambda0.3": 0.50,
            "fedalign_im_lambda0.1": 0.90,
        },
        # IM validates worse: the plain pipeline stays.
        "field": {
            "fedalign_lambda0.1": 0.56,
            "fedalign_lambda0.3": 0.50,
            "fedalign": 0.50,
            "fedalign_im_lambda0.1": 0.55,
        },
        # A tie keeps the simpler pipeline; lambda 1 is the schema's `fedalign`.
        "fast": {
            "fedalign_lambda0.1": 0.60,
            "fedalign_lambda0.3": 0.60,
            "fedalign": 0.66,
            "fedalign_im_lambda1": 0.66,
        },
        "smooth": {
            "fedalign_lambda0.1": 0.44,
            "fedalign_lambda0.3": 0.44,
            "fedalign": 0.40,
            "fedalign_im_lambda0.1": 0.47,
        },
    }
    log = validation_log(tmp_path / "v.jsonl", means)
    argv = ["--family", "signals", "--log", str(log), "--candidates", *plain, "--im"]
    select.main([*argv, "--write-recipe"])
    capsys.readouterr()
    assert json.loads(selections.read_text()) == {
        "lab": "fedalign_im_lambda0.3",
        "field": "fedalign_lambda0.1",
        "fast": "fedalign",
        "smooth": "fedalign_im_lambda0.1",  # a tie among lambdas goes to the first listed
    }
    # What the procedure runs next for a target: its chosen lambda's form with the target terms.
    for target, form in {"lab": "fedalign_im_lambda0.3", "fast": "fedalign_im_lambda1"}.items():
        select.main([*argv, "--target", target, "--im-form"])
        assert capsys.readouterr().out == f"{form}\n"


@pytest.mark.parametrize("plain", ["fedalign_lambda0.1", "fedalign_lambda0.3", "fedalign"])
def test_the_im_form_of_a_plain_candidate_adds_the_target_terms_and_nothing_else(plain: str) -> None:
    with_im = config_of(select.with_im(plain))["hyperparameters"]
    without = config_of(plain)["hyperparameters"]
    added = {k: v for k, v in with_im.items() if with_im[k] != without[k] and k != "preset"}
    assert added == accuracy.IM


def test_the_recipe_is_not_recorded_while_an_im_form_has_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    selections = tmp_path / "selected-recipe.json"
    monkeypatch.setitem(accuracy.CHOICE_FILES, "fedalign_recipe", selections)
    plain = ["fedalign_lambda0.1", "fedalign"]
    means = {t: {"fedalign_lambda0.1": 0.5, "fedalign": 0.4} for t in ("lab", "field", "fast", "smooth")}
    means["lab"]["fedalign_im_lambda0.1"] = 0.6
    log = validation_log(tmp_path / "v.jsonl", means)
    argv = ["--family", "signals", "--log", str(log), "--candidates", *plain, "--im"]
    with pytest.raises(SystemExit, match="not every target"):
        select.main([*argv, "--write-recipe"])
    assert not selections.exists()
    with pytest.raises(SystemExit):  # the recipe's record needs the recipe's procedure
        select.main(["--family", "signals", "--log", str(log), "--candidates", *plain, "--write-recipe"])
    assert not selections.exists()


@pytest.mark.parametrize(("pad", "weight"), [(-0.3, 0.0), (0.0, 0.0), (0.5, 0.25), (2.0, 1.0)])
def test_the_gap_rule_weighs_alignment_by_the_measured_divergence(pad: float, weight: float) -> None:
    # A PAD below 0 (a discriminator worse than chance on held-out features) is no gap, not a negative weight.
    assert gap.weight(pad) == weight


def test_the_gap_arm_is_the_recipe_with_the_measured_lambda_and_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(accuracy.SELECTED_RECIPE, "lab", "fedalign_im_lambda0.1")
    with pytest.raises(ValueError, match="measured"):
        config_of(accuracy.GAP_ARM)
    measured, recipe = config_of(accuracy.GAP_ARM, adv_weight=0.37), config_of("fedalign_recipe")
    assert measured["hyperparameters"] == {**recipe["hyperparameters"], "adv_weight": 0.37}
    assert {**measured, "hyperparameters": None} == {**recipe, "hyperparameters": None}


def test_the_gap_is_measured_on_the_recipe_pipeline_without_alignment() -> None:
    """A real measurement (signals, the first tenth of a 100-step run): the fresh discriminator's accuracy of
    the lambda-0 pipeline, and its proxy A-distance as the metrics define it."""
    signals = accuracy.FAMILIES["signals"]
    job = accuracy.Job(accuracy.GAP_ARM, "fast", 0, 100, 64, 0.01, "dann", signals.domains, signals.name)
    measured = gap.measure(job)
    assert 0.0 <= measured["gap_disc_acc_fresh"] <= 1.0
    assert measured["gap_pad"] == pytest.approx(2 * (1 - 2 * (1 - measured["gap_disc_acc_fresh"])))
    assert measured == gap.measure(job), "the same seed measures the same gap"


def test_the_gap_table_reads_what_the_gap_arm_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(method: str, target: str, seed: int, acc: float) -> str:
        metrics = {"gap_disc_acc_fresh": acc, "gap_pad": 2 * (1 - 2 * (1 - acc))}
        return json.dumps({"method": method, "target": target, "seed": seed, "final_metrics": metrics}) + "\n"

    log = tmp_path / "runs.jsonl"
    log.write_text(
        run(accuracy.GAP_ARM, "lab", 0, 0.55)
        + run(accuracy.GAP_ARM, "lab", 1, 0.65)
        + run(accuracy.GAP_ARM, "lab", 9, 1.0)  # a seed not asked for
        + run("fedalign_recipe", "lab", 2, 1.0)  # another arm
    )
    gap.main(["--family", "signals", "--seeds", "0", "1", "--log", str(log)])
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    assert rows["lab"] == "| lab | 0.60 ± 0.07 | 0.40 ± 0.28 | 0.20 (0.10 to 0.30) |"
    assert rows["fast"] == "| fast | — | — | — |"


def test_validation_runs_on_more_seeds_are_read_from_several_logs_and_recorded_for_their_own_arm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    one_seed, three_seeds = tmp_path / "recipe.json", tmp_path / "recipe-3seeds.json"
    monkeypatch.setitem(accuracy.CHOICE_FILES, "fedalign_recipe", one_seed)
    monkeypatch.setitem(accuracy.CHOICE_FILES, "fedalign_recipe_3seeds", three_seeds)
    plain = ["fedalign_lambda0.1", "fedalign"]
    targets = ("lab", "field", "fast", "smooth")
    # Seed 0 puts IM ahead by a hair; two more seeds put it clearly behind.
    seed0 = validation_log(
        tmp_path / "seed0.jsonl",
        {t: {"fedalign_lambda0.1": 0.50, "fedalign": 0.40, "fedalign_im_lambda0.1": 0.51} for t in targets},
    )
    more = validation_log(
        tmp_path / "seeds12.jsonl",
        {t: {"fedalign_lambda0.1": 0.50, "fedalign": 0.40, "fedalign_im_lambda0.1": 0.40} for t in targets},
        seeds=(1, 2),
    )
    argv = ["--family", "signals", "--candidates", *plain, "--im"]
    select.main(["--log", str(seed0), *argv, "--write-recipe"])
    select.main(["--log", str(seed0), str(more), *argv, "--write-recipe", "fedalign_recipe_3seeds"])
    capsys.readouterr()
    assert json.loads(one_seed.read_text()) == dict.fromkeys(targets, "fedalign_im_lambda0.1")
    assert json.loads(three_seeds.read_text()) == dict.fromkeys(targets, "fedalign_lambda0.1")


@pytest.mark.parametrize(
    "method", ["fedalign_recipe_3seeds", "fedalign_recipe_3seeds_lambda0", accuracy.GAP_ARM]
)
def test_an_arm_whose_choice_is_not_recorded_is_refused_before_anything_runs(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for arm in accuracy.CHOSEN:
        monkeypatch.setitem(accuracy.CHOSEN, arm, {})
    monkeypatch.setattr(accuracy, "SELECTED_RECIPE", accuracy.CHOSEN["fedalign_recipe"])
    log = tmp_path / "runs.jsonl"
    argv = ["--family", "signals", "--methods", method, "--targets", "lab", "--log", str(log)]
    with pytest.raises(SystemExit):
        accuracy.main([*argv, "--json", str(tmp_path / "runs.json")])
    assert "nothing has been chosen for lab" in capsys.readouterr().err
    assert not log.exists()


@pytest.mark.parametrize("target", accuracy.DOMAINS)
def test_on_digits_the_older_recipe_arm_runs_the_recorded_procedure_choice_exactly(target: str) -> None:
    # The digits paired runs carry the name fedalign_im_selected; its lambda is read from the procedure's
    # record (selected-recipe.json), so the two names must be one configuration, or the docs' tables differ.
    assert config_of("fedalign_im_selected", target, "digits") == config_of(
        "fedalign_recipe", target, "digits"
    )


def test_the_scaled_step_diagnostic_is_fedavg_with_only_its_learning_rate_scaled() -> None:
    scaled, fedavg = config_of("fedavg_lr_x0.75"), config_of("fedavg")
    lr = 0.01 * 0.75
    assert scaled["hyperparameters"] == {**fedavg["hyperparameters"], "lr": lr, "disc_lr": lr}
    assert {**scaled, "hyperparameters": None} == {**fedavg, "hyperparameters": None}


def test_the_procedure_keeps_the_target_copy_out_only_where_that_validates_better(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    selections = record_file(tmp_path, monkeypatch, "fedalign_recipe_target")
    plain, lambdas = PLAIN, LAMBDAS
    means = {
        # The IM step keeps lambda 0.3's plain pipeline; its form with the copy out validates better.
        "lab": {**lambdas, "fedalign_im_lambda0.3": 0.44, "fedalign_lambda0.3_target_none": 0.46},
        # The IM step adopts IM; the copy-out form of that choice (not of the plain one) is compared.
        "field": {
            **lambdas,
            "fedalign_im_lambda0.3": 0.50,
            "fedalign_im_lambda0.3_target_none": 0.49,
            "fedalign_lambda0.3_target_none": 0.90,
        },
        # A tie keeps the method's pipeline.
        "fast": {**lambdas, "fedalign_im_lambda0.3": 0.40, "fedalign_lambda0.3_target_none": 0.45},
        "smooth": {**lambdas, "fedalign_im_lambda0.3": 0.40, "fedalign_lambda0.3_target_none": 0.47},
    }
    log = validation_log(tmp_path / "v.jsonl", means)
    argv = ["--family", "signals", "--log", str(log), "--candidates", *plain, "--im", "--target-out"]
    select.main([*argv, "--write-recipe", "fedalign_recipe_target"])
    capsys.readouterr()
    assert json.loads(selections.read_text()) == {
        "lab": "fedalign_lambda0.3_target_none",
        "field": "fedalign_im_lambda0.3",
        "fast": "fedalign_lambda0.3",
        "smooth": "fedalign_lambda0.3_target_none",
    }
    # Until a choice's copy-out form has run on every validation task, nothing is recorded.
    del means["smooth"]["fedalign_lambda0.3_target_none"]
    validation_log(log, means)
    selections.unlink()
    with pytest.raises(SystemExit, match="not every target"):
        select.main([*argv, "--write-recipe", "fedalign_recipe_target"])
    assert not selections.exists()
    with pytest.raises(SystemExit):
        select.main(["--family", "signals", "--log", str(log), "--candidates", *plain, "--target-out"])


def test_the_procedure_takes_the_server_step_only_where_the_copy_is_averaged_and_it_validates_better(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    selections = record_file(tmp_path, monkeypatch, "fedalign_recipe_stepped")
    plain, lambdas = PLAIN, LAMBDAS
    means = {
        # The copy stays averaged in; the stepped form of the choice so far validates better.
        "lab": {
            **lambdas,
            "fedalign_im_lambda0.3": 0.44,
            "fedalign_lambda0.3_target_none": 0.40,
            "fedalign_lambda0.3_server_step": 0.46,
        },
        # IM is adopted: the stepped form of the IM choice (not of the plain one) is compared, and is worse.
        "field": {
            **lambdas,
            "fedalign_im_lambda0.3": 0.50,
            "fedalign_im_lambda0.3_target_none": 0.49,
            "fedalign_im_lambda0.3_server_step": 0.49,
            "fedalign_lambda0.3_server_step": 0.90,
        },
        # The copy is kept out: there is no server step to take (and none needs to have run).
        "fast": {**lambdas, "fedalign_im_lambda0.3": 0.40, "fedalign_lambda0.3_target_none": 0.47},
        # A tie keeps the plain average.
        "smooth": {
            **lambdas,
            "fedalign_im_lambda0.3": 0.40,
            "fedalign_lambda0.3_target_none": 0.44,
            "fedalign_lambda0.3_server_step": 0.45,
        },
    }
    log = validation_log(tmp_path / "v.jsonl", means)
    argv = ["--family", "signals", "--log", str(log), "--candidates", *plain, "--im", "--target-out"]
    select.main([*argv, "--server-step", "--write-recipe", "fedalign_recipe_stepped"])
    assert json.loads(selections.read_text()) == {
        "lab": "fedalign_lambda0.3_server_step",
        "field": "fedalign_im_lambda0.3",
        "fast": "fedalign_lambda0.3_target_none",
        "smooth": "fedalign_lambda0.3",
    }
    # Each stepped form is its choice with the server step and nothing else.
    stepped, choice = config_of("fedalign_lambda0.3_server_step"), config_of("fedalign_lambda0.3")
    assert stepped["hyperparameters"] == {**choice["hyperparameters"], "server_step": "target_share"}
    # Until the stepped form of a choice has run on every validation task, nothing is recorded.
    del means["lab"]["fedalign_lambda0.3_server_step"]
    validation_log(log, means)
    selections.unlink()
    with pytest.raises(SystemExit, match="not every target"):
        select.main([*argv, "--server-step", "--write-recipe", "fedalign_recipe_stepped"])
    assert not selections.exists()
    with pytest.raises(SystemExit):
        select.main(["--family", "signals", "--log", str(log), "--candidates", *plain, "--server-step"])
    capsys.readouterr()


def test_a_run_logged_again_in_a_later_log_replaces_the_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same validation runs rerun on other CPU kernels: the rerun counts, not both.
    chosen = record_file(tmp_path, monkeypatch, "fedalign_recipe")
    targets = ("lab", "field", "fast", "smooth")
    earlier = validation_log(
        tmp_path / "earlier.jsonl",
        {t: {"fedalign_lambda0.1": 0.50, "fedalign": 0.40, "fedalign_im_lambda0.1": 0.60} for t in targets},
    )
    rerun = validation_log(tmp_path / "rerun.jsonl", {t: {"fedalign_im_lambda0.1": 0.45} for t in targets})
    argv = ["--family", "signals", "--candidates", "fedalign_lambda0.1", "fedalign", "--im", "--write-recipe"]
    select.main(["--log", str(earlier), str(rerun), *argv])
    capsys.readouterr()
    # Averaged with the earlier runs IM would be 52.5 and adopted; the rerun alone (45.0) is not.
    assert json.loads(chosen.read_text()) == dict.fromkeys(targets, "fedalign_lambda0.1")


def test_a_further_method_is_adopted_only_where_it_validates_better_than_the_choice_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    selections = record_file(tmp_path, monkeypatch, "fedalign_recipe_stepped_gn")
    further = "fedalign_group_norm_balanced"
    choice_so_far = {**LAMBDAS, "fedalign_im_lambda0.3": 0.40, "fedalign_lambda0.3_server_step": 0.47}
    means = {
        "lab": {**choice_so_far, further: 0.50},  # better than the stepped choice: adopted
        "field": {**choice_so_far, further: 0.47},  # a tie keeps the choice so far
        "fast": {**choice_so_far, further: 0.30},  # worse
        # The server step is not adopted here; the further method beats the plain choice.
        "smooth": {**choice_so_far, "fedalign_lambda0.3_server_step": 0.40, further: 0.46},
    }
    log = validation_log(tmp_path / "v.jsonl", means)
    argv = ["--family", "signals", "--log", str(log), "--candidates", *PLAIN, "--im", "--server-step"]
    select.main([*argv, "--then", further, "--write-recipe", "fedalign_recipe_stepped_gn"])
    assert json.loads(selections.read_text()) == {
        "lab": further,
        "field": "fedalign_lambda0.3_server_step",
        "fast": "fedalign_lambda0.3_server_step",
        "smooth": further,
    }
    # Each row shows the choice so far with its mean beside the further method's.
    assert "| plain average | 45.0 | 46.0 | fedalign_group_norm_balanced |" in capsys.readouterr().out
    # The arm runs the chosen method with its own model (GroupNorm), and its twin the same at lambda 0.
    monkeypatch.setitem(accuracy.CHOSEN["fedalign_recipe_stepped_gn"], "lab", further)
    chosen, twin = config_of("fedalign_recipe_stepped_gn"), config_of("fedalign_recipe_stepped_gn_lambda0")
    assert chosen == config_of(further)
    assert chosen["model"]["normalization"] == "group"
    assert twin == config_of("fedalign_group_norm_balanced_no_adversarial")
    # Until the further method has run on every validation task, nothing is recorded.
    del means["fast"][further]
    validation_log(log, means)
    selections.unlink()
    with pytest.raises(SystemExit, match="not every target"):
        select.main([*argv, "--then", further, "--write-recipe", "fedalign_recipe_stepped_gn"])
    assert not selections.exists()
    with pytest.raises(SystemExit):  # --then belongs to the recipe's procedure
        select.main(["--family", "signals", "--log", str(log), "--candidates", *PLAIN, "--then", further])
    capsys.readouterr()
