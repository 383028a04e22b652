"""`fedalign node check` runs a node's own steps beside FedAlign's reference steps and names what disagrees:
docs' worked example (plain torch) agrees exactly; each of four broken variants (tests/plugins) is caught
at the step kind it breaks, with the tensor or metric named. `--steps` paths that cannot be used get a
usage error that says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from workers.step_runtime import StepsError, load_steps

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "custom_steps.plain_torch_steps:PlainTorchSteps"
BROKEN = "fedalign_test_plugins.broken_steps"


@pytest.fixture(autouse=True)
def steps_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``PYTHONPATH=examples:tests/plugins`` does for the commands."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "plugins"))


def check(*args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["node", "check", *args])
    return result.exit_code, result.output


def check_json(steps: str) -> tuple[int, dict[str, Any]]:
    code, output = check("--steps", steps, "--json")
    return code, json.loads(output)


def kinds(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k["kind"]: k for k in report["kinds"]}


def test_the_page_shows_the_example_file_itself_and_the_commands_tested_here() -> None:
    page = (ROOT / "docs" / "node-steps.md").read_text(encoding="utf-8")
    assert '--8<-- "examples/custom_steps/plain_torch_steps.py"' in page
    assert f"PYTHONPATH=examples fedalign node check --steps {EXAMPLE}" in page
    assert f"PYTHONPATH=examples fedalign node run --steps {EXAMPLE}" in page


def test_the_plain_torch_example_agrees_with_the_reference_steps_exactly() -> None:
    code, output = check("--steps", EXAMPLE, "--tolerance", "0", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["ok"] and report["first_disagreement"] is None
    for kind in kinds(report).values():
        assert kind["steps"] > 0 and kind["ok"], kind


def test_a_reversed_discriminator_label_is_caught_in_the_discriminator_step() -> None:
    code, report = check_json(f"{BROKEN}:ReversedDiscriminatorLabel")
    assert code == 1 and not report["ok"]
    assert report["first_disagreement"]["kind"] == "discriminator"
    assert "round 1 disc1: upload D: tensor" in report["first_disagreement"]["disagreement"]
    assert not kinds(report)["discriminator"]["uploads_agree"]
    assert kinds(report)["setup"]["ok"]


def test_a_wrong_adversarial_loss_is_caught_in_the_adapt_step_with_its_metric() -> None:
    code, report = check_json(f"{BROKEN}:WrongAdversarialLoss")
    assert code == 1
    assert report["first_disagreement"]["kind"] == "adapt"
    adapt = kinds(report)["adapt"]
    assert not adapt["uploads_agree"] and any("upload G: tensor" in d for d in adapt["uploads"])
    assert any("metric adv_loss is" in d for d in adapt["metrics"])
    assert kinds(report)["setup"]["ok"]


def test_an_upload_of_the_wrong_tensors_is_caught_naming_them() -> None:
    code, report = check_json(f"{BROKEN}:WrongUploads")
    assert code == 1
    first = report["first_disagreement"]
    assert first["kind"] == "adapt"
    assert "upload G has tensors the reference does not upload" in first["disagreement"]
    assert "running_mean" in first["disagreement"]


def test_a_missing_metric_is_caught_in_the_evaluate_step_naming_it() -> None:
    code, report = check_json(f"{BROKEN}:MissingMetric")
    assert code == 1
    assert report["first_disagreement"]["kind"] == "evaluate"
    evaluate = kinds(report)["evaluate"]
    assert evaluate["uploads_agree"] and not evaluate["metrics_agree"]
    assert "missing metrics ['disc_eval_loss']" in evaluate["metrics"][0]
    assert all(kinds(report)[k]["ok"] for k in ("setup", "discriminator", "adapt", "publish"))


def test_a_metric_outside_the_protocols_list_never_leaves_the_steps() -> None:
    code, report = check_json(f"{BROKEN}:LeaksAMetric")
    assert code == 1
    evaluate = kinds(report)["evaluate"]
    assert not evaluate["metrics_agree"]
    assert "metrics ['val_feature_mean'] that are not in REPORTED_METRICS" in evaluate["errors"][0]


def test_the_scratch_federation_takes_a_configs_settings(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(
        'name = "mine"\narchitecture = "mlp"\nrounds = 2\nseed = 3\n'
        "[model]\nnum_classes = 4\ninput_shape = [6]\nhidden = 8\n"
        '[hyperparameters]\nadv_loss = "confusion"\nbatch_size = 4\nlocal_steps = 3\n'
        '[[nodes]]\nname = "a"\nrole = "target"\ndataset = "npz:/elsewhere.npz"\n',
        encoding="utf-8",
    )
    code, output = check("--steps", EXAMPLE, "--config", str(config), "--tolerance", "0", "--json")
    assert code == 0, output
    assert all(kind["ok"] for kind in kinds(json.loads(output)).values() if kind["steps"])
    # Settings the example refuses: it says so, and the check fails.
    config.write_text(config.read_text().replace("local_steps = 3", "pseudo_label_threshold = 0.9"))
    code, output = check("--steps", EXAMPLE, "--config", str(config))
    assert code == 1 and "implement the method's defaults only, not pseudo_label_threshold" in output
    config.write_text("rounds = 0\n")
    code, output = check("--steps", EXAMPLE, "--config", str(config))
    assert code == 2 and "rounds" in output


def test_the_table_names_the_first_disagreement() -> None:
    code, output = check("--steps", f"{BROKEN}:MissingMetric")
    assert code == 1
    assert "disagrees with FedAlign's reference steps" in output
    assert "first disagreement (evaluate step)" in output and "disc_eval_loss" in output


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("custom_steps.plain_torch_steps", "expected package.module:ClassName"),
        ("no_such_package.steps:MySteps", "cannot import module 'no_such_package.steps'"),
        (f"{BROKEN}:NoSuchClass", f"module '{BROKEN}' has no 'NoSuchClass'"),
        (f"{BROKEN}:NotSteps", "not a subclass of workers.steps.Steps"),
        (f"{BROKEN}:Unfinished", "Unfinished does not implement adapt, discriminator, evaluate"),
    ],
)
def test_a_steps_path_that_cannot_be_used_says_why(path: str, says: str) -> None:
    with pytest.raises(StepsError) as caught:
        load_steps(path)
    assert says in str(caught.value)


def test_the_commands_answer_a_bad_steps_path_with_a_usage_error() -> None:
    code, output = check("--steps", f"{BROKEN}:NotSteps")
    assert code == 2 and "not a subclass of workers.steps.Steps" in output
    for command in (["node", "run"], ["worker"]):
        result = CliRunner().invoke(app, [*command, "--token", "t", "--steps", "nowhere:Steps"])
        assert result.exit_code == 2 and "cannot import module 'nowhere'" in result.output, command
