"""What changes over training: progress through the rounds, and the ramps of lambda and the learning rate.

Pure arithmetic (no torch): the round schedule (`fedalign.phases`) reads lambda to know whether the target's
adaptation takes an optimiser step, and the node's steps (`fedalign.node`) read both ramps.
"""

from __future__ import annotations

import math

from fedalign.config import Hyperparameters


def progress(round_: int, rounds: int) -> float:
    """Training progress p of a round: 0 in the first, (R - 1) / R in the last."""
    return (round_ - 1) / rounds


def dann_lambda(progress: float) -> float:
    """Ganin et al.'s ramp 2 / (1 + exp(-10 p)) - 1, from 0 at the start to nearly 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def dann_lr_factor(progress: float) -> float:
    """Ganin et al.'s annealing 1 / (1 + 10 p)^0.75."""
    return 1.0 / (1.0 + 10.0 * progress) ** 0.75


def scheduled_adv_weight(hp: Hyperparameters, round_: int, rounds: int) -> float:
    """lambda in round `round_` under the adversarial weight's schedule."""
    ramp = dann_lambda(progress(round_, rounds)) if hp.adv_schedule == "dann" else 1.0
    return hp.adv_weight * ramp


def scheduled_lr(hp: Hyperparameters, base: float, round_: int, rounds: int) -> float:
    """A learning rate `base` in round `round_` under the learning rate's schedule."""
    return base * (dann_lr_factor(progress(round_, rounds)) if hp.lr_schedule == "dann" else 1.0)
