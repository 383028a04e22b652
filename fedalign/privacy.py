"""Differential privacy of one training example of a node: DP-SGD in the local steps, with Opacus.

What is protected: one example of one node's training set. Every local optimiser step that reads a node's
data (training D on its features, the sources' adaptation of G and T, the target's adaptation of G) is a
DP-SGD step (Abadi et al., CCS 2016): a Poisson sample of the node's training set (each example in with
probability q = batch_size / n_train), each example's gradient clipped to norm C (``max_grad_norm``),
Gaussian noise of standard deviation sigma * C added to the sum, divided by the expected batch size. The
parameters a node uploads are then a post-processing of those steps, and so is everything built from them
(the aggregates, the published model). Opacus's RDP accountant composes the node's steps over every round
into epsilon at the federation's delta. What is not protected: the scalar metrics a node reports
(losses, accuracies), its sample counts, and a node's whole data set (that would be user-level DP).

Opacus does the per-example gradients (`GradSampleHooks`, attached to the trained modules only for the
step, so the models stay plain modules with plain state dicts) and the clipping and noise (`DPOptimizer`,
wrapping the node's own SGD optimiser: the momentum buffers are the wrapped optimiser's, so
`NodeRuntime.state_tensors` saves and restores them unchanged). The accountant is Opacus's
`RDPAccountant`.

Randomness (`Privacy.randomness`): with "secret" a node draws its noise and its Poisson samples from
generators seeded by the operating system (`secrets`), and the noise is drawn with Opacus's
``secure_mode`` (a sum of Gaussians that resists floating-point attacks on the noise; torch's generator is
Mersenne Twister, not a cryptographic one, so the 63-bit secret seed is what an attacker must not learn).
With "seeded" both come from the step's seed, so a run repeats exactly; the seed is derived from the
federation's, which the server and every node know: they could recompute the noise and the samples, so the
guarantee then holds only against whoever does not know it (a user of the published model, say). That is
for experiments, never for data that needs the guarantee.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedalign.config import FederationConfig, Hyperparameters, Privacy, Role
from fedalign.data import Split
from fedalign.models import ModelShape, build
from fedalign.steps import scheduled_adv_weight

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

# Opacus is imported where it is used: it takes seconds to import, and a federation without privacy (and
# the protocol, the backend, the CLI) never needs it.

# The names of what a private step counts, for a node's saved state.
STEPS_KEY = "privacy.steps"


# ---------------------------------------------------------------------------------------------- accounting


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
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, q, steps)]
    return float(accountant.get_epsilon(delta=delta))


def _target_trains_g(hp: Hyperparameters, round_: int, rounds: int) -> bool:
    """Whether the target's adaptation loss has a gradient in `round_` (`steps.adapt_target` skips the
    optimiser step when it has none)."""
    return (
        scheduled_adv_weight(hp, round_, rounds) > 0
        or hp.entropy_weight > 0
        or hp.diversity_weight > 0
        or hp.pseudo_label_threshold > 0
    )


def _round_steps(hp: Hyperparameters, algorithm: str, rounds: int, role: Role, round_: int) -> int:
    if algorithm != "fedalign":
        # fedavg's target only refreshes normalisation statistics (GroupNorm has none: no step) unless it
        # trains on its own predictions; the source_only target takes no part in training.
        target_adapts = algorithm == "fedavg" and hp.target_extractor != "none" and hp.target_terms
        return hp.local_steps if role == "source" or target_adapts else 0
    steps = hp.disc_exchanges * hp.disc_steps  # every node trains D on its own features
    target_adapts = hp.target_extractor != "none" and _target_trains_g(hp, round_, rounds)
    if role == "source" or target_adapts:
        steps += hp.local_steps
    return steps


@functools.lru_cache(maxsize=64)
def _cumulative_steps(hp: Hyperparameters, algorithm: str, rounds: int, role: Role) -> tuple[int, ...]:
    totals = [0]
    for r in range(1, rounds + 1):
        totals.append(totals[-1] + _round_steps(hp, algorithm, rounds, role, r))
    return tuple(totals)


def dp_steps(config: FederationConfig, role: Role, round_: int) -> int:
    """DP-SGD steps a node of `role` takes in round `round_` (>= 1): the steps that read its data and
    change a model. The schedule fixes them all, so the protocol can project epsilon before a round."""
    if not config.privacy.enabled or round_ < 1:
        return 0
    return _round_steps(config.hyperparameters, config.algorithm, config.rounds, role, round_)


def cumulative_dp_steps(config: FederationConfig, role: Role, round_: int) -> int:
    """DP-SGD steps of a node of `role` in rounds 1..`round_`."""
    if not config.privacy.enabled or round_ < 1:
        return 0
    totals = _cumulative_steps(config.hyperparameters, config.algorithm, config.rounds, role)
    return totals[min(round_, config.rounds)]


def projected_epsilon(config: FederationConfig, role: Role, n_train: int, round_: int) -> float:
    """A node's epsilon at the federation's delta once rounds 1..`round_` have run (every step the
    schedule gives it: a node left out of a phase has spent less)."""
    p = config.privacy
    q = sample_rate(config.hyperparameters.batch_size, n_train)
    return epsilon(p.noise_multiplier, q, cumulative_dp_steps(config, role, round_), p.delta)


# ---------------------------------------------------------------------------------------------- validation


# Which layers Opacus supports does not depend on their sizes: the check builds each architecture small, so
# that a config with absurd sizes (the API validates what anyone sends) costs nothing here.
_PROBE_INPUTS: dict[str, tuple[int, ...]] = {"digits_cnn": (1, 28, 28), "mlp": (4,)}


@functools.lru_cache(maxsize=64)
def _unsupported(architecture: str, shape: ModelShape) -> tuple[str, ...]:
    from opacus.validators import ModuleValidator

    try:
        models = build(architecture, shape, seed=0)
    except ValueError:
        return ()  # a shape that does not fit the architecture fails with its own message where it is built
    return tuple(
        f"{name}: {error}"
        for name, module in models.items()
        for error in ModuleValidator.validate(module, strict=False)
    )


def unsupported_layers(config: FederationConfig) -> list[str]:
    """What Opacus cannot make private in the federation's models (empty when it can)."""
    m = config.model
    shape = ModelShape(
        _PROBE_INPUTS.get(config.architecture, tuple(m.input_shape)),
        num_classes=2,
        hidden=4,
        conditional=config.hyperparameters.conditional,
        normalization=m.normalization,
    )
    return list(_unsupported(config.architecture, shape))


# ---------------------------------------------------------------------------------------------- steps


def generator(privacy: Privacy, seed: int, device: torch.device) -> torch.Generator:
    """A generator for one step's noise or Poisson samples: from `seed` ("seeded") or the OS ("secret")."""
    g = torch.Generator(device=device)
    return g.manual_seed(seed if privacy.randomness == "seeded" else secrets.randbits(63))


class PoissonBatches:
    """A step's batches as DP-SGD's accounting assumes them: each example in each batch independently with
    probability q, so a batch's size varies around q * len(split) (and may be 0)."""

    def __init__(self, split: Split, q: float, generator: torch.Generator) -> None:
        if len(split) == 0:
            raise ValueError("cannot draw batches from an empty split")
        self._split = split
        self._q = q
        self._generator = generator

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = torch.rand(len(self._split), generator=self._generator) < self._q
        index = chosen.nonzero().squeeze(1)
        return self._split.x[index], self._split.y[index]


@dataclass
class StepCounter:
    """DP-SGD steps taken: the node's accountant history is (sigma, q, steps), sigma and q fixed."""

    steps: int = 0


@contextlib.contextmanager
def private(
    modules: Sequence[nn.Module],
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    noise: torch.Generator,
    secure_mode: bool,
    counter: StepCounter,
) -> Iterator[DPOptimizer]:
    """`optimizer` made DP-SGD for the block: per-example gradients of `modules` (the ones it trains),
    clipped jointly to `max_grad_norm`, noised, averaged over `expected_batch_size`.

    The losses of `fedalign.steps` are means over the batch; Opacus's "mean" reduction undoes the mean of
    the actual batch per example and divides the noisy sum by the expected size (DP-SGD's unbiased
    estimate under Poisson sampling). Every optimiser step counts once in `counter`.
    """
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

    hooks = [GradSampleHooks(m, loss_reduction="mean", strict=True) for m in modules]
    dp = DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=noise,
        secure_mode=secure_mode,
    )

    def count(_optimizer: DPOptimizer) -> None:
        counter.steps += 1

    dp.attach_step_hook(count)
    try:
        with warnings.catch_warnings():
            # The first hooked layer reads the batch, which needs no gradient: torch says so at every
            # backward pass, and it is expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")
            yield dp
    finally:
        for h in hooks:
            h.cleanup()  # the hooks and every per-example attribute leave the parameters
        for p in dp.params:
            if hasattr(p, "summed_grad"):
                del p.summed_grad


@dataclass(frozen=True)
class NodePrivacy:
    """One node's DP settings as its steps use them."""

    settings: Privacy
    q: float
    expected_batch_size: float

    @classmethod
    def of(cls, config: FederationConfig, n_train: int) -> NodePrivacy:
        q = sample_rate(config.hyperparameters.batch_size, n_train)
        return cls(config.privacy, q, q * n_train)

    def epsilon(self, steps: int) -> float:
        p = self.settings
        return epsilon(p.noise_multiplier, self.q, steps, p.delta)

    def batches(self, split: Split, seed: int) -> PoissonBatches:
        return PoissonBatches(split, self.q, generator(self.settings, seed, torch.device("cpu")))

    def step(
        self,
        modules: Sequence[nn.Module],
        optimizer: torch.optim.Optimizer,
        seed: int,
        device: torch.device,
        counter: StepCounter,
    ) -> contextlib.AbstractContextManager[DPOptimizer]:
        p = self.settings
        return private(
            modules,
            optimizer,
            noise_multiplier=p.noise_multiplier,
            max_grad_norm=p.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            noise=generator(p, seed, device),
            secure_mode=p.randomness == "secret",
            counter=counter,
        )
