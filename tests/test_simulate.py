"""The in-process simulator: determinism, topologies, and the metrics it reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig
from fedalign.data import NodeData, Split
from fedalign.data import load as load_data
from fedalign.models import build
from fedalign.node import NodeRuntime
from fedalign.protocol import Protocol, RunStep
from fedalign.simulate import simulate

Factory = Callable[..., tuple[dict, dict[str, NodeData]]]


def run(make: Factory, **overrides: object) -> dict:
    raw, data = make(**overrides)
    return simulate(FederationConfig.model_validate(raw), node_data=data).to_json()


def test_simulation_is_deterministic_under_a_seed(vector_federation: Factory) -> None:
    first = run(vector_federation)
    assert first == run(vector_federation)
    assert first != run(vector_federation, seed=4)


@pytest.mark.parametrize("algorithm", ["fedalign", "fedavg", "source_only"])
def test_server_and_target_aggregation_give_the_same_numbers(
    vector_federation: Factory, algorithm: str
) -> None:
    server = run(vector_federation, algorithm=algorithm, aggregator="server")
    target = run(vector_federation, algorithm=algorithm, aggregator="target")
    assert server == target
    raw, data = vector_federation(algorithm=algorithm)
    assert server["rounds"][-1]["metrics"]["target_acc"] == published_models_accuracy(raw, data)


def published_models_accuracy(raw: dict, data: dict[str, NodeData]) -> float:
    """The accuracy on the target's labelled test split of the model the run publishes, computed here from
    its tensors: what the last round's ``target_acc`` must report."""
    config = FederationConfig.model_validate(raw)
    state = simulate(config, node_data=data).models["target_model"]
    models = build(config.architecture, ArchitectureContext.of(config))
    for part in ("G", "T"):
        prefix = f"{part}."
        models[part].load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        models[part].eval()
    test = data["omega"].test
    assert test.y is not None and len(test.y) > 0
    with torch.no_grad():
        predicted = models.T(models.G(test.x)).argmax(dim=1)
    return int((predicted == test.y).sum()) / len(test.y)


def test_fedavg_with_target_terms_trains_the_targets_extractor(vector_federation: Factory) -> None:
    plain = run(vector_federation, algorithm="fedavg")
    im = {"entropy_weight": 1.0, "diversity_weight": 1.0}
    terms = run(vector_federation, algorithm="fedavg", hyperparameters=im)
    target = terms["rounds"][-1]["nodes"]["omega"]
    assert target["entropy"] > 0 and target["diversity"] > 0
    assert "entropy" not in plain["rounds"][-1]["nodes"]["omega"]
    assert terms["rounds"][-1]["metrics"]["target_acc"] != plain["rounds"][-1]["metrics"]["target_acc"]


def test_with_source_side_alignment_the_target_has_no_adversarial_term(vector_federation: Factory) -> None:
    im = {"entropy_weight": 1.0, "diversity_weight": 1.0}
    both = run(vector_federation, hyperparameters=im)
    sources = run(vector_federation, hyperparameters={**im, "adv_sides": "sources"})
    assert "adv_loss" in both["rounds"][-1]["nodes"]["omega"]
    assert "adv_loss" not in sources["rounds"][-1]["nodes"]["omega"]
    assert "adv_loss" in sources["rounds"][-1]["nodes"]["alpha"], "the sources still align"
    assert sources["rounds"][-1]["nodes"]["omega"]["entropy"] > 0


def test_entropy_conditioning_and_the_targets_warm_up_change_the_run_and_repeat(
    vector_federation: Factory,
) -> None:
    base = run(vector_federation, hyperparameters={"conditional": True})
    for change in ({"entropy_conditioning": True}, {"target_warmup_rounds": 2}):
        changed = run(vector_federation, hyperparameters={"conditional": True, **change})
        assert changed != base, change
        assert changed == run(vector_federation, hyperparameters={"conditional": True, **change})


def test_rounds_report_discriminator_accuracy_per_domain_and_target_accuracy(
    vector_federation: Factory,
) -> None:
    result = run(vector_federation)
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    for record in result["rounds"]:
        metrics = record["metrics"]
        assert 0 <= metrics["disc_acc_source"] <= 1 and 0 <= metrics["disc_acc_target"] <= 1
        assert metrics["disc_acc"] == pytest.approx(
            0.5 * (metrics["disc_acc_source"] + metrics["disc_acc_target"])
        )
        assert "target_acc" in metrics and "source_val_acc" in metrics
        assert set(record["nodes"]) == {"alpha", "beta", "omega"}
    assert "disc_acc_fresh" in result["rounds"][0]["metrics"], "round 1 is measured again by round 2's D"


def test_training_learns_the_sources_task(vector_federation: Factory) -> None:
    result = run(vector_federation, rounds=8, hyperparameters={"lr": 0.05})
    assert result["rounds"][-1]["metrics"]["source_val_acc"] > 0.8


def _tiny_digits(domain: str, cache: Path, n: int = 48) -> NodeData:
    full = load_data(f"digits:{domain}", cache_dir=cache)

    def head(split: Split, k: int) -> Split:
        return Split(split.x[:k], split.y[:k])

    return NodeData(
        full.spec, head(full.train, n), head(full.val, 16), head(full.test, 16), 10, full.input_shape
    )


def test_digits_cnn_federation_runs_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("digits-cache")
    domains = {"mnist": "source", "syn": "source", "mnistm": "target"}
    config = FederationConfig.model_validate(
        {
            "rounds": 2,
            "hyperparameters": {
                "local_steps": 2,
                "disc_steps": 2,
                "batch_size": 16,
                "pseudo_label_threshold": 0.5,
            },
            "nodes": [{"name": d, "role": r, "dataset": f"digits:{d}"} for d, r in domains.items()],
        }
    )
    result = simulate(config, node_data={d: _tiny_digits(d, cache) for d in domains}).to_json()
    last = result["rounds"][-1]
    assert {"disc_acc", "disc_acc_source", "disc_acc_target", "target_acc"} <= set(last["metrics"])
    assert "pseudo_label_rate" in last["nodes"]["mnistm"]


def test_a_node_restored_from_its_saved_state_continues_identically(vector_federation: Factory) -> None:
    """What a worker keeps between steps (models, local statistics, momentum) is enough to resume."""
    raw, data = vector_federation(hyperparameters={"source_extractor": "keep"})
    config = FederationConfig.model_validate(raw)
    proto = Protocol(config)
    setup = next(a.step for a in proto.start() if isinstance(a, RunStep) and a.step.node == "alpha")
    from fedalign.node import initial_models

    init = initial_models(config)
    node = NodeRuntime("alpha", config, data["alpha"])
    node.run(setup, {m: init[m] for m in setup.downloads})
    from fedalign.protocol import StepSpec

    step = StepSpec("alpha", 1, "adapt", "adapt", {"D": "d"}, {"G": "g", "T": "t"}, seed=5)
    node.run(step, {"D": init["D"]})  # builds momentum
    saved = node.state_tensors()
    restored = NodeRuntime("alpha", config, data["alpha"])
    restored.load_state_tensors(saved)
    nxt = StepSpec("alpha", 2, "adapt", "adapt", {"D": "d"}, {"G": "g", "T": "t"}, seed=6)
    a = node.run(nxt, {"D": init["D"]})
    b = restored.run(nxt, {"D": init["D"]})
    assert a.metrics == b.metrics
    for slot in ("G", "T"):
        for k in a.uploads[slot]:
            assert torch.equal(a.uploads[slot][k], b.uploads[slot][k]), k


def test_uploads_hold_only_shared_tensors(vector_federation: Factory) -> None:
    raw, data = vector_federation()
    config = FederationConfig.model_validate(raw)
    from fedalign.node import initial_models

    init = initial_models(config)
    local = {k for k in init["G"] if "running_" in k or "num_batches" in k}
    assert local, "round 0 holds every tensor, the local BatchNorm statistics too"
    node = NodeRuntime("omega", config, data["omega"])
    from fedalign.protocol import StepSpec

    # A step that still starts from round 0's aggregates takes their shared tensors only.
    result = node.run(
        StepSpec("omega", 1, "adapt", "adapt", {"D": "d", "G": "g", "T": "t"}, {"G": "u"}, 1), init
    )
    assert set(result.uploads) == {"G"}
    assert set(result.uploads["G"]) == set(init["G"]) - local


def test_json_output_is_serialisable(vector_federation: Factory, tmp_path: Path) -> None:
    raw, data = vector_federation(rounds=1)
    result = simulate(FederationConfig.model_validate(raw), node_data=data)
    path = tmp_path / "out.json"
    result.write_json(path)
    assert json.loads(path.read_text())["rounds"][0]["round"] == 1


def test_the_published_target_model_holds_shared_and_local_tensors(vector_federation: Factory) -> None:
    raw, data = vector_federation()
    result = simulate(FederationConfig.model_validate(raw), node_data=data)
    model = result.models["target_model"]
    assert "G.1.running_mean" in model, "the target's own normalisation statistics come with its model"
    assert torch.equal(model["T.0.weight"], result.models["T"]["0.weight"])


def test_class_conditional_federation_runs_in_both_topologies(vector_federation: Factory) -> None:
    server = run(vector_federation, hyperparameters={"conditional": True})
    assert server == run(vector_federation, aggregator="target", hyperparameters={"conditional": True})
    assert "disc_acc" in server["rounds"][-1]["metrics"]


def without_labels(data: NodeData) -> NodeData:
    """The same samples with no labels at all: no training or validation labels, no evaluation split."""
    assert isinstance(data.train, Split) and isinstance(data.val, Split)
    return NodeData(
        data.spec,
        Split(data.train.x),
        Split(data.val.x),
        Split.empty(data.input_shape),
        None,
        data.input_shape,
    )


@pytest.mark.parametrize(
    ("algorithm", "aggregator"), [("fedalign", "server"), ("fedalign", "target"), ("fedavg", "server")]
)
def test_a_target_without_labels_finishes_with_every_metric_but_target_acc(
    vector_federation: Factory, algorithm: str, aggregator: str
) -> None:
    im = {"entropy_weight": 0.5, "diversity_weight": 0.5, "pseudo_label_threshold": 0.6}
    raw, data = vector_federation(algorithm=algorithm, aggregator=aggregator, hyperparameters=im)
    config = FederationConfig.model_validate(raw)
    labelled = simulate(config, node_data=data).to_json()
    unlabelled = simulate(config, node_data={**data, "omega": without_labels(data["omega"])}).to_json()
    assert all(
        "target_acc" not in r["metrics"] and "target_acc" not in r["nodes"].get("omega", {})
        for r in unlabelled["rounds"]
    )
    wanted = {"source_val_acc", "task_loss"} | (
        {"disc_acc", "disc_acc_source", "disc_acc_target", "adv_loss"} if algorithm == "fedalign" else set()
    )
    assert wanted <= set(unlabelled["rounds"][-1]["metrics"])
    if algorithm == "fedalign":
        assert {"disc_acc_fresh", "pad"} <= set(unlabelled["rounds"][0]["metrics"])
    # The target's labels were never read: without them every other number is the same.
    for with_labels, without in zip(labelled["rounds"], unlabelled["rounds"], strict=True):
        assert with_labels["metrics"].pop("target_acc") is not None
        with_labels["nodes"]["omega"].pop("target_acc")
        assert with_labels == without


def test_preprocessing_applies_on_every_node_and_a_run_repeats_under_its_seed(tmp_path: Path) -> None:
    """Images of 16x16 on disk, resized to the model's 28x28, normalised and augmented on every node."""
    rng = np.random.default_rng(0)
    nodes = []
    for name, role, shift in (("a", "source", 0), ("b", "source", 40), ("t", "target", 90)):
        x = np.clip(rng.integers(0, 160, size=(60, 16, 16, 3)) + shift, 0, 255).astype(np.uint8)
        arrays = {"x": x, "y": np.arange(60) % 4} if role == "source" else {"x": x}
        np.savez(tmp_path / f"{name}.npz", **arrays)
        nodes.append({"name": name, "role": role, "dataset": f"npz:{tmp_path / name}.npz"})

    def run(augment: str) -> dict:
        config = {
            "rounds": 2,
            "model": {"num_classes": 4, "input_shape": [3, 28, 28]},
            "preprocessing": {"resize": [28, 28], "mean": [0.5], "std": [0.25], "augment": augment},
            "hyperparameters": {"local_steps": 2, "disc_steps": 2, "batch_size": 16},
            "nodes": nodes,
        }
        return simulate(FederationConfig.model_validate(config)).to_json()

    augmented = run("crop_flip")
    assert augmented == run("crop_flip")
    assert augmented != run("none")
    assert "target_acc" not in augmented["rounds"][-1]["metrics"]


# ------------------------------------------------------------------ plug-ins, round 0, optimisers

PLUGIN = "fedalign_test_plugins.architectures:vector_net"


def test_a_plugin_architecture_federation_runs_and_repeats(
    vector_federation: Factory, test_plugins: Path
) -> None:
    first = run(vector_federation, architecture=PLUGIN)
    assert first == run(vector_federation, architecture=PLUGIN)
    raw, data = vector_federation(architecture=PLUGIN)
    assert first["rounds"][-1]["metrics"]["target_acc"] == published_models_accuracy(raw, data)
    assert first != run(vector_federation), "not the built-in mlp's numbers"


def test_the_simulator_starts_from_an_init_model_file_bit_for_bit(
    vector_federation: Factory, test_plugins: Path, tmp_path: Path
) -> None:
    from fedalign.initial_parameters import InitialParameters, build_initial

    raw, data = vector_federation(architecture=PLUGIN)
    config = FederationConfig.model_validate(raw)
    build_initial(config).save(tmp_path / "init.safetensors", tmp_path / "init.manifest.json")
    from fedalign.model_manifest import ModelManifest

    document = ModelManifest.loads((tmp_path / "init.manifest.json").read_text())
    initial = InitialParameters.read(tmp_path / "init.safetensors", document)
    assert (
        simulate(config, node_data=data, initial=initial).to_json()
        == simulate(config, node_data=data).to_json()
    )


def test_a_node_whose_plugin_has_a_different_layer_stops_at_setup_naming_it(
    vector_federation: Factory, test_plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedalign.initial_parameters import build_initial
    from fedalign.model_manifest import ManifestMismatch

    raw, data = vector_federation(architecture=PLUGIN)
    config = FederationConfig.model_validate(raw)
    initial = build_initial(config)  # the creator's copy of the plug-in
    monkeypatch.setenv("FEDALIGN_TEST_PLUGIN_VARIANT", "wider")  # the nodes' copy has a wider layer
    with pytest.raises(
        ManifestMismatch, match=r"tensor G.0.weight has shape \[12, 8\] in the federation, \[24, 8\]"
    ):
        simulate(config, node_data=data, initial=initial)


def test_setup_loads_every_tensor_of_round_0_and_later_steps_only_the_shared_ones(
    vector_federation: Factory,
) -> None:
    from fedalign.node import StepError, initial_models
    from fedalign.protocol import StepSpec

    raw, data = vector_federation()
    config = FederationConfig.model_validate(raw)
    init = initial_models(config)
    init["G"]["1.running_mean"] = torch.full((16,), 5.0)  # a pretrained statistic
    node = NodeRuntime("omega", config, data["omega"])
    setup = StepSpec("omega", 0, "setup", "setup", {m: m for m in "GTD"}, {}, 1)
    shared_only = {
        m: {k: v for k, v in s.items() if "running" not in k and "num_batches" not in k}
        for m, s in init.items()
    }
    with pytest.raises(StepError, match="missing"):
        node.run(setup, shared_only)
    node.run(setup, init)
    assert torch.equal(node.models.G.state_dict()["1.running_mean"], torch.full((16,), 5.0))
    node.models.G.state_dict()["1.running_mean"].fill_(7.0)  # the node's own statistics by now
    node.run(StepSpec("omega", 1, "eval", "evaluate", {"G": "g"}, {}, 2), {"G": init["G"]})
    assert torch.equal(node.models.G.state_dict()["1.running_mean"], torch.full((16,), 7.0)), "local: kept"


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_state_stays_on_the_node_and_a_restored_node_continues_identically(
    vector_federation: Factory, optimizer: str
) -> None:
    from fedalign.node import initial_models
    from fedalign.protocol import StepSpec

    raw, data = vector_federation(
        hyperparameters={"optimizer": optimizer, "lr": 0.003, "lr_schedule": "dann"}
    )
    config = FederationConfig.model_validate(raw)
    init = initial_models(config)
    node = NodeRuntime("alpha", config, data["alpha"])
    assert type(node.optimizers["GT"]).__name__ == {"adam": "Adam", "adamw": "AdamW"}[optimizer]
    node.run(StepSpec("alpha", 0, "setup", "setup", {m: m for m in "GTD"}, {}, 1), init)
    step = StepSpec("alpha", 2, "adapt", "adapt", {"D": "d"}, {"G": "g", "T": "t"}, seed=5)
    node.run(step, {"D": init["D"]})
    assert node.optimizers["GT"].param_groups[0]["lr"] < 0.003, "the lr schedule applies to Adam too"
    saved = node.state_tensors()
    assert {"opt.GT.0.exp_avg", "opt.GT.0.exp_avg_sq", "opt.GT.0.step"} <= set(saved)
    assert float(saved["opt.GT.0.step"]) == config.hyperparameters.local_steps
    restored = NodeRuntime("alpha", config, data["alpha"])
    restored.load_state_tensors(saved)
    nxt = StepSpec("alpha", 3, "adapt", "adapt", {"D": "d"}, {"G": "g", "T": "t"}, seed=6)
    a, b = node.run(nxt, {"D": init["D"]}), restored.run(nxt, {"D": init["D"]})
    assert a.metrics == b.metrics
    assert all(torch.equal(a.uploads["G"][k], b.uploads["G"][k]) for k in a.uploads["G"])


def test_each_optimizer_trains_and_gives_its_own_numbers(vector_federation: Factory) -> None:
    results = {
        name: run(vector_federation, hyperparameters={"optimizer": name, "lr": 0.01})
        for name in ("sgd", "adam", "adamw")
    }
    assert results["sgd"] == run(vector_federation, hyperparameters={"lr": 0.01}), "sgd is the default"
    finals = {name: r["rounds"][-1]["metrics"]["target_acc"] for name, r in results.items()}
    assert len({json.dumps(r) for r in results.values()}) == 3, finals


def test_a_node_takes_its_federations_precision(vector_federation: Factory) -> None:
    from fedalign.device import CPU

    raw, data = vector_federation(
        model={"num_classes": 3, "input_shape": [8], "hidden": 16, "precision": "fp32"}
    )
    node = NodeRuntime("alpha", FederationConfig.model_validate(raw), data["alpha"], CPU)
    assert node.device.precision == "fp32" and node.device.autocast_dtype is None


# ------------------------------------------------------------------------------------------- failed steps


def failing(sim: object, node: str, when: Callable[..., bool], error: Exception) -> list[int]:
    """Make ``node``'s steps for which ``when(step)`` holds raise ``error`` before they touch anything (as
    a node that runs out of memory at once would); returns a list that counts the failures."""
    from fedalign.simulate import Simulator

    assert isinstance(sim, Simulator)
    runtime = sim.nodes[node]
    real, raised = runtime.run, []

    def run(step: object, downloads: object) -> object:
        if when(step):
            raised.append(1)
            raise error
        return real(step, downloads)  # type: ignore[arg-type]

    runtime.run = run  # type: ignore[method-assign]
    return raised


def test_a_simulated_step_that_fails_once_and_is_retried_gives_the_same_numbers(
    vector_federation: Factory,
) -> None:
    from fedalign.simulate import Simulator

    raw, data = vector_federation()
    config = FederationConfig.model_validate(raw)
    sim = Simulator(config, node_data=data)
    raised = failing(
        sim, "beta", lambda s: s.kind == "adapt" and s.round == 2 and not raised, OSError("disk busy")
    )
    result = sim.run()
    assert len(raised) == 1
    assert any("node beta failed (1x, offered again): OSError: disk busy" in e for e in result.events)
    unfailed = simulate(config, node_data=vector_federation()[1])
    assert result.to_json()["rounds"] == unfailed.to_json()["rounds"]


def test_a_simulated_source_whose_step_fails_is_left_out_of_that_phase_by_the_quorum_rule(
    vector_federation: Factory,
) -> None:
    from fedalign.simulate import Simulator

    raw, data = vector_federation(min_sources=1)
    sim = Simulator(FederationConfig.model_validate(raw), node_data=data)
    failing(sim, "beta", lambda s: s.kind == "adapt" and s.round == 1, ValueError("column 'y' is missing"))
    result = sim.run()
    assert any(
        "beta failed (1x, out of the phase): ValueError: column 'y' is missing" in e for e in result.events
    )
    assert any("round 1 adapt: beta failed" in e and "renormalised" in e for e in result.events)
    assert "source_val_acc" in result.rounds[-1].nodes["beta"], "back in the later phases"


def test_a_simulation_whose_target_fails_stops_with_the_targets_error(vector_federation: Factory) -> None:
    from fedalign.simulate import Simulator

    raw, data = vector_federation()
    sim = Simulator(FederationConfig.model_validate(raw), node_data=data)
    failing(sim, "omega", lambda s: s.kind == "evaluate", KeyError("row 17"))
    with pytest.raises(KeyError, match="row 17"):
        sim.run()
