"""Differential privacy: the noise and clipping of a DP-SGD step, the accountant, the config's refusals, and
a simulated federation whose nodes report the epsilon the protocol projects and that stops at its budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from pydantic import ValidationError
from scipy.stats import chi2
from torch import nn

from fedalign import privacy, privacy_accounting, privacy_layers
from fedalign.config import FederationConfig
from fedalign.data import NodeData, Split, load, stack
from fedalign.node import NodeRuntime, StepError
from fedalign.simulate import simulate
from fedalign.steps import adapt_source

Factory = Callable[..., tuple[dict[str, Any], dict[str, NodeData]]]

GROUP = {"num_classes": 3, "input_shape": [8], "hidden": 16, "normalization": "group"}


def one_step(
    model: nn.Module, x: torch.Tensor, sigma: float, clip: float, batch: float, secure: bool = False
) -> torch.Tensor:
    """The averaged gradient one DP-SGD step of `model` applies, for the loss mean(model(x))."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    counter = privacy.StepCounter()
    with privacy.private(
        [model],
        optimizer,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        noise=torch.Generator().manual_seed(7),
        secure_mode=secure,
        counter=counter,
    ) as dp:
        dp.zero_grad(set_to_none=True)
        model(x).mean().backward()
        dp.step()
    assert counter.steps == 1
    (weight,) = model.parameters()
    assert not hasattr(weight, "grad_sample")  # Opacus's per-example state leaves with the block
    return weight.grad.detach().flatten()


@pytest.mark.parametrize("secure", [False, True])
def test_the_noise_on_the_averaged_gradient_has_std_sigma_c_over_b(secure: bool) -> None:
    """Zero inputs make every per-example gradient zero, so the step's gradient is the noise alone.

    Its n coordinates are i.i.d. N(0, s^2) with s = sigma * C / B when the scale is right, so
    sum(g^2) / s^2 follows chi^2(n). With n = 200000 its 0.05%..99.95% band is n(1 +- 1.04%): a right
    scale falls outside it once in a thousand seeds (this one is fixed), and a scale off by more than
    about 1% (2% in variance, more than the band is wide) fails whatever the sample.
    """
    sigma, clip, batch, n = 1.3, 0.5, 8, 200_000
    grad = one_step(nn.Linear(n, 1, bias=False), torch.zeros(batch, n), sigma, clip, batch, secure)
    s = sigma * clip / batch
    statistic = float((grad.double() ** 2).sum()) / s**2
    assert chi2.ppf(0.0005, n) < statistic < chi2.ppf(0.9995, n)
    assert abs(float(grad.double().mean())) < 4 * s / n**0.5


def test_each_examples_gradient_is_clipped_to_the_norm() -> None:
    """Example i's gradient of mean(w . x) is x_i: along its own axis with norm r_i, so the averaged step
    shows every clipped norm, min(r_i, C) / B, and no noise (sigma 0)."""
    clip, norms = 1.0, torch.tensor([0.1, 0.5, 2.0, 10.0])
    x = torch.diag(norms)
    grad = one_step(nn.Linear(4, 1, bias=False), x, sigma=0.0, clip=clip, batch=len(norms))
    expected = torch.clamp(norms, max=clip) / len(norms)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_an_empty_poisson_batch_is_a_step_of_noise_alone() -> None:
    """Poisson batches of 4 examples at q = 0.25 are often empty: each is still a counted, noised step, and
    neither the model nor the metrics turn NaN."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g))
    G, T, D = nn.Sequential(nn.Linear(8, 8), nn.GroupNorm(1, 8), nn.ReLU()), nn.Linear(8, 3), nn.Linear(8, 1)
    before = [p.detach().clone() for p in G.parameters()]
    optimizer = torch.optim.SGD([*G.parameters(), *T.parameters()], lr=0.1, momentum=0.9)
    batches = privacy.PoissonBatches(split, 0.25, torch.Generator().manual_seed(1))
    counter = privacy.StepCounter()
    with privacy.private(
        [G, T],
        optimizer,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=1.0,
        noise=torch.Generator().manual_seed(2),
        secure_mode=False,
        counter=counter,
    ) as dp:
        metrics = adapt_source(G, T, D, batches, dp, steps=12, adv_weight=1.0, adv_kind="flip")
    probe = privacy.PoissonBatches(split, 0.25, torch.Generator().manual_seed(1))
    sizes = [len(probe.next()[0]) for _ in range(12)]
    assert 0 in sizes and counter.steps == 12
    assert all(torch.isfinite(p).all() for p in [*G.parameters(), *T.parameters()])
    assert all(not torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))
    assert all(v == v for v in metrics.values())  # no NaN


def test_epsilon_is_opacus_rdp_accountant_and_behaves() -> None:
    sigma, q, steps, delta = 1.1, 0.02, 300, 1e-5
    stepped = RDPAccountant()
    for _ in range(steps):
        stepped.step(noise_multiplier=sigma, sample_rate=q)
    assert privacy_accounting.epsilon(sigma, q, steps, delta) == pytest.approx(
        stepped.get_epsilon(delta), rel=1e-12
    )
    assert privacy_accounting.epsilon(sigma, q, 0, delta) == 0.0
    by_steps = [privacy_accounting.epsilon(sigma, q, n, delta) for n in (1, 10, 100, 1000)]
    assert by_steps == sorted(by_steps) and len(set(by_steps)) == 4
    by_sigma = [privacy_accounting.epsilon(s, q, steps, delta) for s in (0.7, 1.0, 2.0, 4.0)]
    assert by_sigma == sorted(by_sigma, reverse=True) and len(set(by_sigma)) == 4


def _dp(**privacy_settings: Any) -> dict[str, Any]:
    return {"noise_multiplier": 1.0, "randomness": "seeded", **privacy_settings}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"privacy": _dp()}, "needs model.normalization 'group': BatchNorm"),
        (
            {"privacy": _dp(), "model": GROUP, "hyperparameters": {"diversity_weight": 1.0}},
            "cannot be used with diversity_weight > 0",
        ),
        (
            {"privacy": _dp(), "model": GROUP, "hyperparameters": {"entropy_conditioning": True}},
            "cannot be used with entropy_conditioning",
        ),
        ({"privacy": {"epsilon_budget": 5.0}}, "noise_multiplier is 0"),
    ],
)
def test_the_config_refuses_what_dp_cannot_protect(
    vector_federation: Factory, overrides: dict[str, Any], message: str
) -> None:
    raw, _ = vector_federation(**overrides)
    with pytest.raises(ValidationError, match=message):
        FederationConfig.model_validate(raw)


def test_opacus_finds_nothing_unsupported_in_the_group_normalised_architectures() -> None:
    for architecture, shape in (("mlp", [8]), ("digits_cnn", [3, 28, 28])):
        for conditional in (False, True):
            config = FederationConfig.model_validate(
                {
                    "architecture": architecture,
                    "model": {**GROUP, "input_shape": shape},
                    "privacy": _dp(),
                    "hyperparameters": {"conditional": conditional},
                }
            )
            assert privacy_layers.unsupported_layers(config) == []
    batch_norm = FederationConfig.model_validate({"architecture": "mlp", "model": {"input_shape": [8]}})
    assert any("BatchNorm" in p for p in privacy_layers.unsupported_layers(batch_norm))


def _federation(factory: Factory, rounds: int = 2, **privacy_settings: Any) -> tuple[FederationConfig, dict]:
    raw, data = factory(model=GROUP, rounds=rounds, privacy=_dp(**privacy_settings))
    return FederationConfig.model_validate(raw), data


def test_every_node_reports_the_epsilon_the_protocol_projects(vector_federation: Factory) -> None:
    # The DANN ramp makes the target's round 1 adversarial weight 0: without other terms it takes no step
    # of G then, which the projection must know too.
    raw, data = vector_federation(
        model=GROUP, rounds=2, privacy=_dp(), hyperparameters={"adv_schedule": "dann"}
    )
    config = FederationConfig.model_validate(raw)
    result = simulate(config, node_data=data)
    assert [r.round for r in result.rounds] == [1, 2]
    for record in result.rounds:
        for node in config.nodes:
            reported = record.nodes[node.name]["dp_epsilon"]
            projected = privacy_accounting.projected_epsilon(
                config, node.role, len(data[node.name].train), record.round
            )
            assert reported == pytest.approx(projected, rel=1e-12), (record.round, node.name)
    target = result.rounds[0].nodes["omega"]["dp_epsilon"]
    assert 0 < target < result.rounds[0].nodes["alpha"]["dp_epsilon"]  # D's steps only, in round 1
    assert result.events == []  # delta 1e-5 is below 1 / 96

    # The count survives a node's saved state (workers/state.py), so a restarted worker reports on.
    runtime = NodeRuntime("alpha", config, data["alpha"])
    runtime.dp_steps.steps = 9
    again = NodeRuntime("alpha", config, data["alpha"])
    again.load_state_tensors(runtime.state_tensors())
    assert again.dp_steps.steps == 9


def test_the_budget_stops_the_run_before_the_round_that_would_exceed_it(vector_federation: Factory) -> None:
    config, data = _federation(vector_federation, rounds=3)
    n = len(data["alpha"].train)
    after = [privacy_accounting.projected_epsilon(config, "source", n, r) for r in (1, 2)]
    budget = (after[0] + after[1]) / 2  # the sources pass it in round 2
    config, data = _federation(vector_federation, rounds=3, epsilon_budget=budget)

    result = simulate(config, node_data=data)

    assert [r.round for r in result.rounds] == [1]
    assert max(m["dp_epsilon"] for m in result.rounds[0].nodes.values()) <= budget
    assert "target_model" not in result.models and set(result.models) == {"G", "T", "D"}
    (reason,) = result.events
    assert reason.startswith("privacy budget: round 2 would take alpha to")
    assert "the run stopped after round 1 of 3" in reason


def test_warn_warns_once_and_goes_on(vector_federation: Factory) -> None:
    # Any step spends more than a budget this small; delta 0.05 is not below 1 / 96 either.
    config, data = _federation(
        vector_federation, rounds=2, epsilon_budget=1e-3, budget_action="warn", delta=0.05
    )
    result = simulate(config, node_data=data)
    assert [r.round for r in result.rounds] == [1, 2]
    delta, budget = result.events
    assert delta.startswith("round 1: privacy.delta 0.05 is not below 1 / n_train of alpha (96)")
    assert budget.startswith("round 1: privacy budget: round 1 would take alpha to")


def test_seeded_dp_with_secure_aggregation_matches_dp_without(vector_federation: Factory) -> None:
    """The two settings combine: masking changes what the aggregator sees, not what the nodes compute
    (seeded noise: the same noise both times), up to secure aggregation's fixed-point rounding."""
    config, data = _federation(vector_federation, rounds=2)
    masked = FederationConfig.model_validate(
        {**config.model_dump(), "secure_aggregation": True, "min_sources": 2}
    )
    plain, secure = simulate(config, node_data=data), simulate(masked, node_data=data)
    for a, b in zip(plain.rounds, secure.rounds, strict=True):
        assert {n: m["dp_epsilon"] for n, m in a.nodes.items()} == {
            n: m["dp_epsilon"] for n, m in b.nodes.items()
        }
    for name in ("G", "T", "D"):
        for key, tensor in plain.models[name].items():
            torch.testing.assert_close(secure.models[name][key], tensor, atol=1e-4, rtol=0)


def test_poisson_batches_of_a_split_read_from_disk_are_the_samples_the_in_memory_sampler_drew(
    tmp_path: Path,
) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy(), x_val=x[:2].numpy(), y_val=y[:2].numpy())
    lazy = load(f"npz:{tmp_path / 'd.npz'}").train  # read through the DataLoader, a batch at a time
    x, y = stack(lazy)  # the same split, in memory
    reference = torch.Generator().manual_seed(9)  # the sampler as it drew from in-memory tensors
    batches = privacy.PoissonBatches(lazy, 0.1, torch.Generator().manual_seed(9))
    for _ in range(30):
        index = (torch.rand(len(x), generator=reference) < 0.1).nonzero().squeeze(1)
        bx, by = batches.next()
        assert torch.equal(bx, x[index]) and torch.equal(by, y[index])


def test_opacus_finds_nothing_unsupported_in_the_group_normalised_backbones() -> None:
    for architecture in ("resnet18", "resnet50", "mobilenet_v3_small"):
        config = FederationConfig.model_validate(
            {"architecture": architecture, "model": {**GROUP, "input_shape": [3, 32, 32]}, "privacy": _dp()}
        )
        assert privacy_layers.unsupported_layers(config) == [], architecture


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_dp_sgd_works_with_every_optimizer(vector_federation: Factory, optimizer: str) -> None:
    raw, data = vector_federation(
        model=GROUP, rounds=1, privacy=_dp(randomness="seeded"), hyperparameters={"optimizer": optimizer}
    )
    config = FederationConfig.model_validate(raw)
    result = simulate(config, node_data=data)
    assert result.rounds[-1].nodes["alpha"]["dp_epsilon"] > 0
    assert result.to_json() == simulate(config, node_data=data).to_json(), "seeded: repeats exactly"


def test_a_node_refuses_privacy_on_a_plugin_opacus_cannot_make_private(
    vector_federation: Factory, test_plugins: object
) -> None:
    plugin = "fedalign_test_plugins.architectures:vector_net"
    raw, data = vector_federation(model=GROUP, privacy=_dp(), architecture=plugin)
    NodeRuntime("alpha", FederationConfig.model_validate(raw), data["alpha"])  # GroupNorm: accepted
    raw, data = vector_federation(model=GROUP, privacy=_dp(), architecture=f"{plugin}_always_batchnorm")
    config = FederationConfig.model_validate(raw)  # the config cannot import a plug-in: the node checks
    with pytest.raises(StepError, match=r"Opacus cannot compute per-example gradients of it .*BatchNorm"):
        NodeRuntime("alpha", config, data["alpha"])
