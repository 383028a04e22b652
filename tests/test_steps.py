"""The node-local steps: what each one trains, what it reads, and what its metrics tell apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedalign.aggregate import average_states
from fedalign.architectures import ArchitectureContext
from fedalign.data import BatchStream, Split, load, stack
from fedalign.label_free import LIVE_EXAMPLES, label_free_scores, live_indices
from fedalign.models import build
from fedalign.steps import (
    SOURCE,
    TARGET,
    adapt_source,
    adapt_target,
    discriminator_accuracy,
    domain_input,
    domain_loss,
    entropy_weights,
    marginal_entropy,
    predicted_probabilities,
    target_label_free,
    task_accuracy,
    train_discriminator,
)
from fedalign.weighting import Contribution, weights

SHAPE = ArchitectureContext(input_shape=(6,), num_classes=3, hidden=12)


def domain(seed: int, shift: float, n: int = 64) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 6, generator=g) + shift, torch.randint(0, 3, (n,), generator=g))


def sgd(module: nn.Module, lr: float = 0.1, momentum: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)


def test_a_discriminator_copy_trained_on_one_domain_learns_that_everything_is_its_label() -> None:
    models = build("mlp", SHAPE, seed=0)
    source = domain(0, 0.0)
    train_discriminator(models.G, models.D, BatchStream(source, 16, 0), sgd(models.D, 0.5), 40, SOURCE)
    far_away_target = domain(1, 5.0)
    assert discriminator_accuracy(models.G, models.D, far_away_target, TARGET)["disc_acc_own"] < 0.1


def test_balanced_average_of_one_step_copies_is_one_step_on_the_balanced_union() -> None:
    """DESIGN.md: one local step from a common start, averaged with balanced weights, equals one
    centralised step on the balanced union of both domains."""
    base = build("mlp", SHAPE, seed=1)
    base.G.eval()  # fixed features: BatchNorm on running statistics in both computations
    src, tgt = domain(2, 0.0, n=16), domain(3, 1.0, n=16)
    copies = {}
    for name, split, label in (("s", src, SOURCE), ("t", tgt, TARGET)):
        d = build("mlp", SHAPE, seed=1).D
        opt = sgd(d)
        loss = domain_loss(d(base.G(split.x).detach()), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        copies[name] = {k: v.detach() for k, v in d.state_dict().items()}
    w = weights("balanced", [Contribution("s", "source", 16), Contribution("t", "target", 16)])
    averaged = average_states(copies, w)

    central = build("mlp", SHAPE, seed=1).D
    opt = sgd(central)
    loss = 0.5 * domain_loss(central(base.G(src.x).detach()), SOURCE) + 0.5 * domain_loss(
        central(base.G(tgt.x).detach()), TARGET
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, v in central.state_dict().items():
        torch.testing.assert_close(averaged[k], v, rtol=1e-5, atol=1e-6)


def test_source_adaptation_trains_g_and_t_and_leaves_d_alone() -> None:
    models = build("mlp", SHAPE, seed=0)
    d_before = {k: v.clone() for k, v in models.D.state_dict().items()}
    stream = BatchStream(domain(0, 0.0), 16, 0)
    params = [*models.G.parameters(), *models.T.parameters()]
    first = adapt_source(
        models.G, models.T, models.D, stream, torch.optim.SGD(params, lr=0.1), 1, 1.0, "flip"
    )
    later = adapt_source(
        models.G, models.T, models.D, stream, torch.optim.SGD(params, lr=0.1), 30, 1.0, "flip"
    )
    assert later["task_loss"] < first["task_loss"]
    assert "adv_loss" in later
    for k, v in models.D.state_dict().items():
        assert torch.equal(v, d_before[k]), f"D changed during adaptation: {k}"


def test_target_adaptation_never_reads_the_targets_labels() -> None:
    models = build("mlp", SHAPE, seed=0)
    split = domain(4, 1.0)
    unlabelled = Split(split.x, torch.full_like(split.y, -1))  # cross-entropy on these would raise
    t_before = {k: v.clone() for k, v in models.T.state_dict().items()}
    metrics = adapt_target(
        models.G,
        models.T,
        models.D,
        BatchStream(unlabelled, 16, 0),
        sgd(models.G),
        5,
        1.0,
        "confusion",
        entropy_weight=0.1,
        pseudo_label_threshold=0.2,
        diversity_weight=0.1,
    )
    assert {"adv_loss", "entropy", "diversity", "pseudo_label_loss", "pseudo_label_rate"} <= set(metrics)
    assert all(torch.equal(v, t_before[k]) for k, v in models.T.state_dict().items()), (
        "T is fixed on the target"
    )


def test_diversity_term_spreads_the_targets_predictions_over_the_classes() -> None:
    split = domain(4, 1.0)

    def spread_after(diversity_weight: float) -> tuple[float, float, dict[str, float]]:
        models = build("mlp", SHAPE, seed=0)
        with torch.no_grad():  # start from a task model that calls most inputs class 0
            models.T[-1].bias.zero_()
            models.T[-1].bias[0] = 2.0

        def spread() -> float:
            with torch.no_grad():
                return float(marginal_entropy(models.T(models.G(split.x))))

        before = spread()
        metrics = adapt_target(
            models.G,
            models.T,
            None,
            BatchStream(split, 32, 0),
            sgd(models.G, lr=1.0),
            60,
            0.0,
            "flip",
            entropy_weight=0.1,
            diversity_weight=diversity_weight,
        )
        return before, spread(), metrics

    before, with_diversity, metrics = spread_after(1.0)
    _, entropy_only, _ = spread_after(0.0)
    assert with_diversity > before + 0.05, (before, with_diversity)
    assert with_diversity > entropy_only + 0.1, (entropy_only, with_diversity)
    assert metrics["diversity"] > 0


@pytest.mark.parametrize("kind", ["flip", "confusion"])
def test_adversarial_step_moves_target_features_towards_the_source_side(kind: str) -> None:
    torch.manual_seed(0)
    # No BatchNorm in this G: per-batch normalisation would hide the plain shift between these domains.
    G = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
    T, D = nn.Linear(12, 3), nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 1))
    src, tgt = domain(5, 0.0), domain(6, 2.0)
    opt = sgd(D, 0.2)
    for _ in range(100):  # a discriminator trained centrally, so that it separates the two domains
        loss = domain_loss(D(G(src.x).detach()), SOURCE) + domain_loss(D(G(tgt.x).detach()), TARGET)
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = discriminator_accuracy(G, D, tgt, TARGET)
    assert before["disc_acc_own"] > 0.9
    adapt_target(G, T, D, BatchStream(tgt, 32, 0), sgd(G, 0.05), 20, 1.0, kind)
    after = discriminator_accuracy(G, D, tgt, TARGET)
    assert after["disc_eval_loss"] > before["disc_eval_loss"] + 0.1, (
        "D finds the adapted features less target-like"
    )


def test_a_collapsed_discriminator_is_told_apart_from_alignment() -> None:
    """A D that calls everything "source" reads 0.5 balanced; the per-domain parts show the collapse."""
    models = build("mlp", SHAPE, seed=0)
    with torch.no_grad():
        for p in models.D.parameters():
            p.zero_()
        models.D[-1].bias.fill_(10.0)
    on_source = discriminator_accuracy(models.G, models.D, domain(7, 0.0), SOURCE)["disc_acc_own"]
    on_target = discriminator_accuracy(models.G, models.D, domain(8, 1.0), TARGET)["disc_acc_own"]
    assert (on_source, on_target) == (1.0, 0.0)


def test_conditional_discriminator_reads_features_times_class_probabilities() -> None:
    shape = ArchitectureContext(input_shape=(6,), num_classes=3, hidden=12, conditional=True)
    models = build("mlp", shape, seed=0)
    assert models.D[0].in_features == 12 * 3
    split = domain(9, 0.0)
    features = models.G(split.x[:4])
    joint = domain_input(features, models.T)
    probs = models.T(features).softmax(dim=1)
    torch.testing.assert_close(joint.view(4, 3, 12), probs[:, :, None] * features[:, None, :])
    metrics = train_discriminator(
        models.G, models.D, BatchStream(split, 16, 0), sgd(models.D), 3, SOURCE, condition_on=models.T
    )
    assert metrics["disc_train_acc"] >= 0


def test_entropy_conditioning_weighs_confident_examples_more_with_mean_one() -> None:
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 1.0, 0.0]], requires_grad=True)
    w = entropy_weights(logits)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0] > w[2] > w[1], "the confident example first, the uniform one last"
    assert not w.requires_grad, "the weights carry no gradient"
    d = torch.tensor([[0.3], [-1.0], [2.0]])
    per_example = nn.functional.binary_cross_entropy_with_logits(
        d.squeeze(1), torch.ones(3), reduction="none"
    )
    assert domain_loss(d, SOURCE, w).item() == pytest.approx(float((w * per_example).mean()))
    assert domain_loss(d, SOURCE).item() == pytest.approx(float(per_example.mean()))


def test_entropy_conditioned_steps_train_with_the_weights_and_differ_from_unweighted_ones() -> None:
    shape = ArchitectureContext(input_shape=(6,), num_classes=3, hidden=12, conditional=True)
    results = {}
    for conditioned in (False, True):
        models = build("mlp", shape, seed=0)
        split = domain(9, 0.0)
        train_discriminator(
            models.G,
            models.D,
            BatchStream(split, 16, 0),
            sgd(models.D),
            3,
            SOURCE,
            condition_on=models.T,
            weight_by=models.T if conditioned else None,
        )
        opt = sgd(nn.ModuleList([models.G, models.T]))
        adapt_source(
            models.G,
            models.T,
            models.D,
            BatchStream(split, 16, 1),
            opt,
            3,
            1.0,
            "flip",
            conditional=True,
            entropy_conditioning=conditioned,
        )
        results[conditioned] = [p.detach().clone() for p in models.G.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(results[False], results[True], strict=True))


def test_evaluation_of_the_discriminator_reads_no_labels_and_task_accuracy_needs_them() -> None:
    models = build("mlp", SHAPE, seed=0)
    split = domain(10, 0.5, n=600)  # more than one evaluation batch
    unlabelled = Split(split.x)
    assert discriminator_accuracy(models.G, models.D, unlabelled, TARGET) == discriminator_accuracy(
        models.G, models.D, split, TARGET
    )
    assert 0 <= task_accuracy(models.G, models.T, split)[0] <= 1
    with pytest.raises(ValueError, match="needs a labelled split"):
        task_accuracy(models.G, models.T, unlabelled)


def test_the_live_label_free_scores_read_a_fixed_bounded_sample_and_no_label() -> None:
    models = build("mlp", SHAPE, seed=0)
    small, large = domain(11, 0.0, n=200), domain(12, 0.0, n=5000)

    def scores(split: Split, indices: list[int] | None = None) -> dict[str, float]:
        s = label_free_scores(predicted_probabilities(models.G, models.T, split, indices=indices))
        return {"target_information": s.information, "target_class_balance": s.class_balance}

    # A split within the bound is read whole; a larger one on its evenly spaced sample, the same every time.
    assert target_label_free(models.G, models.T, small) == scores(small)
    sample = live_indices(len(large))
    assert len(sample) == LIVE_EXAMPLES and sample == sorted(set(sample)) and sample[-1] < len(large)
    assert target_label_free(models.G, models.T, large) == scores(large, sample)
    assert target_label_free(models.G, models.T, Split(large.x)) == scores(large, sample)  # labels unread
    assert target_label_free(models.G, models.T, large) != scores(large)  # the whole split differs
    assert target_label_free(models.G, models.T, Split.empty((6,))) == {}


def test_a_split_read_from_disk_trains_exactly_as_the_same_samples_in_memory(tmp_path: Path) -> None:
    split = domain(11, 0.0, n=80)
    np.savez(
        tmp_path / "d.npz",
        x=split.x.numpy(),
        y=split.y.numpy(),
        x_val=split.x[:4].numpy(),
        y_val=split.y[:4].numpy(),
    )
    lazy = load(f"npz:{tmp_path / 'd.npz'}")
    eager = Split(*stack(lazy.train))
    results = []
    for train in (lazy.train, eager):
        models = build("mlp", SHAPE, seed=0)
        opt = sgd(torch.nn.ModuleList([models.G, models.T]), 0.1, momentum=0.9)
        metrics = adapt_source(models.G, models.T, models.D, BatchStream(train, 16, 5), opt, 6, 0.5, "flip")
        results.append((metrics, [p.detach().clone() for p in models.G.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_bf16_autocasts_on_cuda_only_and_fp32_never() -> None:
    """The choice behind every step's ``with device.autocast`` (no GPU here: the choice, not the kernels)."""
    import contextlib

    from fedalign.device import Device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert Device(cuda, "bf16").autocast_dtype == torch.bfloat16
    assert Device(cuda, "fp32").autocast_dtype is None
    assert Device(cpu, "bf16").autocast_dtype is None
    assert isinstance(Device(cpu, "bf16").autocast, contextlib.nullcontext)
    assert Device.pick("cpu", "fp32") == Device(cpu, "fp32")
    assert Device(cuda).with_precision("fp32").autocast_dtype is None
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        Device(cpu, "fp16")  # type: ignore[arg-type]
