"""Differential privacy's accounting: how much epsilon a node spends, and the checks before a round opens.

A node's DP-SGD steps in a round are the optimiser steps the round schedule gives its role
(`fedalign.phases`: the same phase values the protocol runs), each of sample rate q = batch_size / n_train
and noise multiplier sigma; Opacus's RDP accountant composes them into epsilon at the federation's delta.
The schedule fixes every step before it is taken, so the protocol can project a node's epsilon after a
round before that round opens, and stop (or warn) before the budget is exceeded.

No torch at import: Opacus (which imports it) loads only when an epsilon is computed. The DP-SGD steps
themselves are `fedalign.privacy`.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

from fedalign.config import FederationConfig, Role
from fedalign.phases import Schedule


def sample_rate(batch_size: int, n_train: int) -> float:
    """q: the probability that one example is in a step's Poisson sample (1 when a batch holds them all)."""
    if n_train < 1:
        raise ValueError(f"a node needs training examples to sample from, got {n_train}")
    return min(1.0, batch_size / n_train)


@functools.lru_cache(maxsize=4096)
def epsilon(noise_multiplier: float, q: float, steps: int, delta: float) -> float:
    """Epsilon at `delta` after `steps` DP-SGD steps of sample rate q and noise multiplier sigma.

    Opacus's RDP accountant (Mironov, CSF 2017; Mironov, Talwar and Zhang 2019 for the subsampled
    Gaussian), fed the steps as one history entry; 0 before any step.
    """
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if steps == 0:
        return 0.0
    from opacus.accountants import RDPAccountant  # Opacus imports torch: only when an epsilon is asked for

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, q, steps)]
    return float(accountant.get_epsilon(delta=delta))


def _round_steps(schedule: Schedule, role: Role, round_: int) -> int:
    return sum(part.optimizer_steps for phase in schedule.round(round_) if (part := phase.part(role)))


@functools.lru_cache(maxsize=64)
def _cumulative_steps(schedule: Schedule, role: Role) -> tuple[int, ...]:
    totals = [0]
    for r in range(1, schedule.rounds + 1):
        totals.append(totals[-1] + _round_steps(schedule, role, r))
    return tuple(totals)


def dp_steps(config: FederationConfig, role: Role, round_: int) -> int:
    """DP-SGD steps a node of `role` takes in round `round_` (>= 1): the optimiser steps the round's phases
    give its role, each reading its data and changing a model."""
    if not config.privacy.enabled or round_ < 1:
        return 0
    return _round_steps(Schedule.of(config), role, round_)


def cumulative_dp_steps(config: FederationConfig, role: Role, round_: int) -> int:
    """DP-SGD steps of a node of `role` in rounds 1..`round_`."""
    if not config.privacy.enabled or round_ < 1:
        return 0
    totals = _cumulative_steps(Schedule.of(config), role)
    return totals[min(round_, config.rounds)]


def projected_epsilon(config: FederationConfig, role: Role, n_train: int, round_: int) -> float:
    """A node's epsilon at the federation's delta once rounds 1..`round_` have run (every step the
    schedule gives it: a node left out of a phase has spent less)."""
    p = config.privacy
    q = sample_rate(config.hyperparameters.batch_size, n_train)
    return epsilon(p.noise_multiplier, q, cumulative_dp_steps(config, role, round_), p.delta)


# ---------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class PrivacyNotice:
    """Something about a node's privacy the federation should know of; the run goes on.

    `kind` is "delta" (delta is not below 1 / n_train of a node; `values`: its training examples) or
    "budget" (the next round takes a node past the budget, with `budget_action` "warn"; `values`: its
    projected epsilon). Each kind is given once per run.
    """

    kind: Literal["delta", "budget"]
    message: str
    values: dict[str, float]


@dataclass(frozen=True)
class RoundCheck:
    """What differential privacy says before a round opens: notices to give, and whether to stop."""

    notices: list[PrivacyNotice] = field(default_factory=list)
    # Why the run ends before the round (it would take a node past the budget, with budget_action "stop").
    stop: str | None = None


def check_before_round(
    config: FederationConfig,
    round_: int,
    nodes: Mapping[str, tuple[Role, int]],
    given: Collection[str] = (),
) -> RoundCheck:
    """The checks before round `round_` opens, for `nodes` (name -> role and training examples, known since
    setup); `given` holds the kinds of notice already given, which are not given again."""
    p = config.privacy
    if not p.enabled:
        return RoundCheck()
    notices: list[PrivacyNotice] = []
    if round_ == 1 and "delta" not in given:
        large = {n: float(k) for n, (_, k) in nodes.items() if p.delta * k >= 1}
        if large:
            listed = ", ".join(f"{n} ({int(k)})" for n, k in large.items())
            message = (
                f"privacy.delta {p.delta:g} is not below 1 / n_train of {listed}: at that delta the "
                "guarantee allows leaking one whole example outright; choose delta well below 1 / n_train"
            )
            notices.append(PrivacyNotice("delta", message, large))
    if p.epsilon_budget is None:
        return RoundCheck(notices)
    projected = {n: projected_epsilon(config, role, k, round_) for n, (role, k) in nodes.items()}
    over = {n: e for n, e in projected.items() if e > p.epsilon_budget}
    if not over:
        return RoundCheck(notices)
    spent = ", ".join(f"{n} to {e:.3g}" for n, e in over.items())
    what = f"round {round_} would take {spent}, above the budget of {p.epsilon_budget:g}"
    what += f" (epsilon at delta {p.delta:g})"
    if p.budget_action == "stop":
        stop = f"privacy budget: {what}; the run stopped after round {round_ - 1} of {config.rounds}"
        return RoundCheck(notices, stop=stop)
    if "budget" not in given:
        notices.append(PrivacyNotice("budget", f"privacy budget: {what}; going on", over))
    return RoundCheck(notices)
