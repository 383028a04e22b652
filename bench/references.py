"""Centralised references of the accuracy benchmark: they pool data, so they exist only here.

* `target_oracle`: G and T trained on the *labelled* target training split: an upper bound.
* `dann_central`: DANN (Ganin et al., JMLR 2016) on the pooled sources and the target, with a gradient
  reversal layer, in its usual form: one network, source and target batches concatenated (shared
  BatchNorm statistics), lambda ramped with 2 / (1 + exp(-10 p)) - 1; the learning rate follows the
  same schedule as every other method's. Diagnostics of its normalisation (``normalisation``): "mixed" is
  the above; "per_domain": the source batch and the target batch go through G apart, each normalised by its
  own batch statistics and each domain keeping its own running statistics (the target's evaluates it), as
  BatchNorm normalises at a node that holds one domain; "shared_running": each domain's batch moves one
  set of running statistics, and both are normalised by those rather than by a batch's own, as nodes could
  normalise with statistics averaged over the federation.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from fedalign.data import BatchStream, NodeData, Split
from fedalign.models import ModelShape, build
from fedalign.protocol import derive_seed
from fedalign.schedules import dann_lambda, dann_lr_factor
from fedalign.steps import set_lr, task_accuracy


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.weight * grad, None


def pooled(splits: list[Split]) -> Split:
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))


def _optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


def _anneal(opt: torch.optim.Optimizer, lr: float, schedule: str, progress: float) -> None:
    set_lr(opt, lr * (dann_lr_factor(progress) if schedule == "dann" else 1.0))


DIGITS_MODEL = ("digits_cnn", ModelShape((3, 28, 28), 10))


def target_oracle(
    target: NodeData,
    steps: int,
    batch_size: int,
    lr: float,
    schedule: str,
    seed: int,
    model: tuple[str, ModelShape] = DIGITS_MODEL,
) -> float:
    models = build(model[0], model[1], seed=derive_seed(seed, "init"))
    opt = _optimizer([*models.G.parameters(), *models.T.parameters()], lr)
    stream = BatchStream(target.train, batch_size, seed=derive_seed(seed, "oracle"))
    models.G.train()
    models.T.train()
    for step in range(steps):
        _anneal(opt, lr, schedule, step / steps)
        x, y = stream.next()
        loss = F.cross_entropy(models.T(models.G(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return task_accuracy(models.G, models.T, target.test)[0]


Normalisation = Literal["mixed", "per_domain", "shared_running"]
NORMALISATIONS: tuple[Normalisation, ...] = get_args(Normalisation)


def _batch_norms_train(G: torch.nn.Module, mode: bool) -> None:
    """BatchNorm layers alone to training mode (normalise by the batch) or not (by running statistics)."""
    for m in G.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train(mode)


class _DomainStatistics:
    """The running statistics of G's normalisation layers kept per domain, swapped in around a forward."""

    def __init__(self, G: torch.nn.Module) -> None:
        # Rebound, never copied into: the forward that used a buffer may still need it for its backward.
        self.holders = [m._buffers for m in G.modules() if m._buffers]
        self.saved = [{k: buf.clone() for k, buf in held.items() if buf is not None} for held in self.holders]

    def swap(self) -> None:
        for held, saved in zip(self.holders, self.saved, strict=True):
            for name, other in list(saved.items()):
                saved[name] = held[name]
                held[name] = other


def dann_central(
    sources: list[NodeData],
    target: NodeData,
    steps: int,
    batch_size: int,
    lr: float,
    schedule: str,
    adv_weight: float,
    seed: int,
    model: tuple[str, ModelShape] = DIGITS_MODEL,
    normalisation: Normalisation = "mixed",
) -> float:
    models = build(model[0], model[1], seed=derive_seed(seed, "init"))
    G, T, D = models.G, models.T, models.D
    opt = _optimizer([*G.parameters(), *T.parameters(), *D.parameters()], lr)
    src = BatchStream(
        pooled([s.train for s in sources]), batch_size, seed=derive_seed(seed, "dann", "source")
    )
    tgt = BatchStream(target.train, batch_size, seed=derive_seed(seed, "dann", "target"))
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; expected one of {NORMALISATIONS}")
    target_statistics = _DomainStatistics(G) if normalisation == "per_domain" else None
    for m in (G, T, D):
        m.train()
    for step in range(steps):
        _anneal(opt, lr, schedule, step / steps)
        (xs, ys), (xt, _) = src.next(), tgt.next()  # the target's labels are never read
        if target_statistics is not None:
            source_features = G(xs)
            target_statistics.swap()
            features = torch.cat([source_features, G(xt)])
            target_statistics.swap()
        elif normalisation == "shared_running":
            with torch.no_grad():  # each domain's batch moves the one set of running statistics
                G(xs)
                G(xt)
            _batch_norms_train(G, False)
            features = G(torch.cat([xs, xt]))
            _batch_norms_train(G, True)
        else:
            features = G(torch.cat([xs, xt]))
        task = F.cross_entropy(T(features[: len(xs)]), ys)
        domain = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))])
        logits = D(_GradReverse.apply(features, adv_weight * dann_lambda(step / steps))).squeeze(1)
        loss = task + F.binary_cross_entropy_with_logits(logits, domain)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if target_statistics is not None:
        target_statistics.swap()
    return task_accuracy(G, T, target.test)[0]
