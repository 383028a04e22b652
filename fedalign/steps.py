"""The node-local steps of the method, each one screen of torch.

The discriminator D outputs one logit: the log-odds that a feature comes from a *source* domain. With
domain label d (1 source, 0 target) its loss is the binary cross-entropy BCE(D(G(x)), d). A node trains
D on its own domain only (its copy learns "everything is my label"; the average over nodes carries the
boundary), and trains its extractor against a fixed D with the adversarial loss

    flip:       BCE(D(G(x)), 1 - d)    make D take this node's features for the other domain (the method)
    confusion:  BCE(D(G(x)), 1/2)      push D's output to the boundary (Tzeng et al., ICCV 2015)

Sources add it to the task loss: L = CE(T(G(x)), y) + lambda * L_adv (Ganin et al., JMLR 2016, with the
gradient reversal written as an explicit two-player step). The target has no labels: its loss is
lambda * L_adv, plus, when enabled, the entropy of its predictions and the cross-entropy with its own
confident predictions (pseudo-labels, as in FixMatch's thresholding, Sohn et al., NeurIPS 2020).

With class-conditional discrimination (CDAN, Long et al., NeurIPS 2018) D reads f ⊗ softmax(T(f)), the
outer product of the features and the task model's class probabilities, instead of f: aligning the joint
distribution keeps the classes apart where aligning the marginals alone can fold them onto each other.

Every step is deterministic under the seed it is given: batch order comes from a seeded generator and
the global RNG is seeded for anything else (dropout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedalign.data import SplitDataset, evaluation_batches
from fedalign.device import CPU, Device
from fedalign.label_free import label_free_scores, live_indices
from fedalign.metrics import TARGET_LABEL_FREE

SOURCE, TARGET = 1.0, 0.0


class Batches(Protocol):
    """Where a step's minibatches come from: `fedalign.data.BatchStream` (fixed-size shuffled batches) or,
    under differential privacy, `fedalign.privacy.PoissonBatches` (each example in with probability q).
    Both read the node's split lazily through a DataLoader; an unlabelled split's ``y`` is
    `fedalign.data.UNLABELLED`, which only the sources' task loss would read (and sources need labels)."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of `modules` get no gradient inside the block; BatchNorm statistics may still move."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def domain_loss(logits: torch.Tensor, label: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE(D(.), label) over the batch; with `weights` (mean 1), each example's term weighted."""
    if weights is None:
        return F.binary_cross_entropy_with_logits(
            logits.float().squeeze(1), torch.full_like(logits.float().squeeze(1), label)
        )
    return F.binary_cross_entropy_with_logits(
        logits.float().squeeze(1), torch.full_like(logits.float().squeeze(1), label), weight=weights
    )


def entropy_weights(task_logits: torch.Tensor) -> torch.Tensor:
    """Entropy conditioning (CDAN+E, Long et al., NeurIPS 2018): w = 1 + exp(-H(p)) per example, scaled to
    mean 1 over the batch and carrying no gradient, so that confidently classified examples weigh more in
    the domain losses and the uncertain ones, whose class-conditional features are least reliable, less."""
    p = task_logits.detach().float().softmax(dim=1)
    h = -(p * p.clamp_min(1e-12).log()).sum(dim=1)
    w = 1.0 + torch.exp(-h)
    return w / w.mean()


def adversarial_loss(
    logits: torch.Tensor, own_label: float, kind: str, weights: torch.Tensor | None = None
) -> torch.Tensor:
    if kind == "flip":
        return domain_loss(logits, 1.0 - own_label, weights)
    if kind == "confusion":
        return domain_loss(logits, 0.5, weights)
    raise ValueError(f"unknown adversarial loss {kind!r}; expected 'flip' or 'confusion'")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.float().softmax(dim=1)
    return -(p * p.clamp_min(1e-12).log()).sum(dim=1).mean()


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch's mean prediction: high when the batch spreads over the classes.

    Maximising it beside minimising each prediction's entropy is information maximisation (Liang et al.,
    SHOT, ICML 2020): confident predictions that do not all fall into one class, the collapse that entropy
    minimisation alone runs into on a large shift.
    """
    p = logits.float().softmax(dim=1).mean(dim=0)
    return -(p * p.clamp_min(1e-12).log()).sum()


def domain_input(features: torch.Tensor, condition_on: nn.Module | None) -> torch.Tensor:
    """What D reads: the features, or with a task model to condition on, f ⊗ softmax(T(f)) flattened."""
    features = features.float()
    if condition_on is None:
        return features
    probs = condition_on(features).float().softmax(dim=1)
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)


def _total(value: torch.Tensor, n: int) -> float:
    """A batch's mean times its size. A Poisson batch can be empty (its mean is NaN): it adds nothing."""
    return float(value.detach()) * n if n else 0.0


def _to(device: Device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device.torch_device, non_blocking=True) for t in tensors]


def train_discriminator(
    G: nn.Module,
    D: nn.Module,
    stream: Batches,
    optimizer: torch.optim.Optimizer,
    steps: int,
    own_label: float,
    device: Device = CPU,
    condition_on: nn.Module | None = None,
    weight_by: nn.Module | None = None,
) -> dict[str, float]:
    """Train D for `steps` steps on this node's features, all labelled with this node's domain.

    G is frozen but stays in training mode, so its BatchNorm layers normalise with this node's batch
    statistics and keep the node's local running statistics current. With `weight_by` (the task model T,
    for entropy conditioning) each example's loss is weighted by `entropy_weights` of T's prediction.
    """
    G.train()
    D.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(steps):
        (x, _y) = _to(device, *stream.next())
        with device.autocast:
            with torch.no_grad():
                features = G(x)
                inputs = domain_input(features, condition_on)
                weights = entropy_weights(weight_by(features.float())) if weight_by is not None else None
            logits = D(inputs)
            loss = domain_loss(logits, own_label, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += _total(loss, len(x))
        correct += int(((logits.detach().squeeze(1) > 0).float() == own_label).sum())
        seen += len(x)
    seen = max(seen, 1)
    return {"disc_loss": total_loss / seen, "disc_train_acc": correct / seen}


def adapt_source(
    G: nn.Module,
    T: nn.Module,
    D: nn.Module,
    stream: Batches,
    optimizer: torch.optim.Optimizer,
    steps: int,
    adv_weight: float,
    adv_kind: str,
    device: Device = CPU,
    conditional: bool = False,
    entropy_conditioning: bool = False,
) -> dict[str, float]:
    """Task loss plus lambda times the adversarial loss against the fixed D; trains G and T. With
    `entropy_conditioning` each example's adversarial term is weighted by `entropy_weights`."""
    G.train()
    T.train()
    D.eval()
    task_sum, adv_sum, seen = 0.0, 0.0, 0
    with frozen(D):
        for _ in range(steps):
            x, y = _to(device, *stream.next())
            with device.autocast:
                features = G(x)
                task_logits = T(features).float()
                task = F.cross_entropy(task_logits, y)
                weights = entropy_weights(task_logits) if entropy_conditioning else None
                adv = (
                    adversarial_loss(
                        D(domain_input(features, T if conditional else None)), SOURCE, adv_kind, weights
                    )
                    if adv_weight > 0
                    else torch.zeros(())
                )
                loss = task + adv_weight * adv
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            task_sum += _total(task, len(x))
            adv_sum += _total(adv, len(x))
            seen += len(x)
    seen = max(seen, 1)
    metrics = {"task_loss": task_sum / seen}
    if adv_weight > 0:
        metrics["adv_loss"] = adv_sum / seen
    return metrics


def adapt_target(
    G: nn.Module,
    T: nn.Module,
    D: nn.Module | None,
    stream: Batches,
    optimizer: torch.optim.Optimizer,
    steps: int,
    adv_weight: float,
    adv_kind: str,
    entropy_weight: float = 0.0,
    pseudo_label_threshold: float = 0.0,
    pseudo_label_weight: float = 1.0,
    device: Device = CPU,
    conditional: bool = False,
    diversity_weight: float = 0.0,
    entropy_conditioning: bool = False,
) -> dict[str, float]:
    """Train the target's G (T and D fixed) with lambda * L_adv and the optional unlabelled terms. With
    `entropy_conditioning` each example's adversarial term is weighted by `entropy_weights`."""
    G.train()
    T.eval()
    if D is not None:
        D.eval()
    sums = {
        "adv_loss": 0.0,
        "entropy": 0.0,
        "diversity": 0.0,
        "pseudo_label_loss": 0.0,
        "pseudo_label_rate": 0.0,
    }
    seen = 0
    wants_logits = entropy_weight > 0 or diversity_weight > 0 or pseudo_label_threshold > 0
    fixed = [m for m in (T, D) if m is not None]
    with frozen(*fixed):
        for _ in range(steps):
            (x, _y) = _to(device, *stream.next())  # the target's labels are never read here
            with device.autocast:
                features = G(x)
                loss = torch.zeros((), device=device.torch_device)
                if D is not None and adv_weight > 0:
                    weights = entropy_weights(T(features)) if entropy_conditioning else None
                    adv = adversarial_loss(
                        D(domain_input(features, T if conditional else None)), TARGET, adv_kind, weights
                    )
                    loss = loss + adv_weight * adv
                    sums["adv_loss"] += _total(adv, len(x))
                logits = T(features).float() if wants_logits else None
                if logits is not None and entropy_weight > 0:
                    ent = entropy(logits)
                    loss = loss + entropy_weight * ent
                    sums["entropy"] += _total(ent, len(x))
                if logits is not None and diversity_weight > 0:
                    div = marginal_entropy(logits)
                    loss = loss - diversity_weight * div
                    sums["diversity"] += _total(div, len(x))
                if logits is not None and pseudo_label_threshold > 0:
                    confidence, labels = logits.detach().softmax(dim=1).max(dim=1)
                    mask = (confidence >= pseudo_label_threshold).float()
                    pl = (F.cross_entropy(logits, labels, reduction="none") * mask).mean()
                    loss = loss + pseudo_label_weight * pl
                    sums["pseudo_label_loss"] += _total(pl, len(x))
                    sums["pseudo_label_rate"] += float(mask.sum())
            if loss.requires_grad:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            seen += len(x)
    seen = max(seen, 1)
    metrics: dict[str, float] = {}
    if D is not None and adv_weight > 0:
        metrics["adv_loss"] = sums["adv_loss"] / seen
    if entropy_weight > 0:
        metrics["entropy"] = sums["entropy"] / seen
    if diversity_weight > 0:
        metrics["diversity"] = sums["diversity"] / seen
    if pseudo_label_threshold > 0:
        metrics["pseudo_label_loss"] = sums["pseudo_label_loss"] / seen
        metrics["pseudo_label_rate"] = sums["pseudo_label_rate"] / seen
    return metrics


@torch.no_grad()
def refresh_statistics(G: nn.Module, stream: Batches, steps: int, device: Device = CPU) -> None:
    """Move G's BatchNorm running statistics towards this node's data; no parameter changes."""
    G.train()
    for _ in range(steps):
        (x, _y) = _to(device, *stream.next())
        with device.autocast:
            G(x)


@torch.no_grad()
def discriminator_accuracy(
    G: nn.Module,
    D: nn.Module,
    split: SplitDataset,
    own_label: float,
    device: Device = CPU,
    condition_on: nn.Module | None = None,
) -> dict[str, float]:
    """How often D tells this node's held-out features for what they are, and D's loss on them. Reads no
    label: the split may be unlabelled (a target's validation split)."""
    G.eval()
    D.eval()
    correct, loss_sum = 0, 0.0
    for x, _y in evaluation_batches(split):
        (x,) = _to(device, x)
        with device.autocast:
            logits = D(domain_input(G(x), condition_on))
        correct += int(((logits.squeeze(1) > 0).float() == own_label).sum())
        loss_sum += float(domain_loss(logits, own_label)) * len(x)
    n = max(len(split), 1)
    return {"disc_acc_own": correct / n, "disc_n": float(len(split)), "disc_eval_loss": loss_sum / n}


@torch.no_grad()
def predicted_probabilities(
    G: nn.Module,
    T: nn.Module,
    split: SplitDataset,
    device: Device = CPU,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """softmax(T(G(x))) in float32 for every example of a non-empty split (or those at ``indices``), in order,
    on the CPU (evaluation mode; no label is read)."""
    G.eval()
    T.eval()
    probabilities = []
    for x, _y in evaluation_batches(split, indices=indices):
        (x,) = _to(device, x)
        with device.autocast:
            probabilities.append(F.softmax(T(G(x)).float(), dim=1).cpu())
    return torch.cat(probabilities)


@torch.no_grad()
def target_label_free(
    G: nn.Module, T: nn.Module, split: SplitDataset, device: Device = CPU
) -> dict[str, float]:
    """The live label-free scores (`fedalign.label_free`) of T(G(x)) on a split, labelled or not (none is
    read): on its `live_indices`, at most `LIVE_EXAMPLES` of it. Empty for an empty split."""
    if len(split) == 0:
        return {}
    scores = label_free_scores(predicted_probabilities(G, T, split, device, live_indices(len(split))))
    return dict(zip(TARGET_LABEL_FREE, (scores.information, scores.class_balance), strict=True))


@torch.no_grad()
def task_accuracy(
    G: nn.Module, T: nn.Module, split: SplitDataset, device: Device = CPU
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of T(G(x)) on a labelled split."""
    if not split.labelled:
        raise ValueError("task accuracy needs a labelled split; this one has no labels")
    G.eval()
    T.eval()
    correct, loss_sum = 0, 0.0
    for x, y in evaluation_batches(split):
        x, y = _to(device, x, y)
        with device.autocast:
            logits = T(G(x)).float()
        correct += int((logits.argmax(dim=1) == y).sum())
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
    n = max(len(split), 1)
    return correct / n, loss_sum / n
