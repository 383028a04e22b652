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
`NodeRuntime.state_tensors` saves and restores them unchanged). The accounting (Opacus's `RDPAccountant`
over the steps the round schedule gives each node) is `fedalign.privacy_accounting`; which layers Opacus
cannot make private, `fedalign.privacy_layers`.

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
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedalign.config import FederationConfig, Privacy
from fedalign.data import SplitDataset, TrainingBatches
from fedalign.data.stream import BatchAugment
from fedalign.privacy_accounting import epsilon, sample_rate

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

# Opacus is imported where it is used: it takes seconds to import, and a federation without privacy never
# needs it.

# The names of what a private step counts, for a node's saved state.
STEPS_KEY = "privacy.steps"


def generator(privacy: Privacy, seed: int, device: torch.device) -> torch.Generator:
    """A generator for one step's noise or Poisson samples: from `seed` ("seeded") or the OS ("secret")."""
    g = torch.Generator(device=device)
    return g.manual_seed(seed if privacy.randomness == "seeded" else secrets.randbits(63))


class PoissonSampler:
    """Endless Poisson samples of ``range(n)``: each index in each batch independently with probability q."""

    def __init__(self, n: int, q: float, generator: torch.Generator) -> None:
        if n == 0:
            raise ValueError("cannot draw batches from an empty split")
        self.n = n
        self.q = q
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            chosen = torch.rand(self.n, generator=self.generator) < self.q
            yield chosen.nonzero().squeeze(1).tolist()


class PoissonBatches(TrainingBatches):
    """A step's batches as DP-SGD's accounting assumes them: each example in each batch independently with
    probability q, so a batch's size varies around q * len(split) (and may be 0). Read through a DataLoader
    like every other stream of batches, so a split read from disk works the same."""

    def __init__(
        self,
        split: SplitDataset,
        q: float,
        generator: torch.Generator,
        augment: BatchAugment | None = None,
        workers: int = 0,
    ) -> None:
        super().__init__(split, PoissonSampler(len(split), q, generator), augment, workers)


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

    def batches(self, split: SplitDataset, seed: int, augment: BatchAugment | None = None) -> PoissonBatches:
        return PoissonBatches(split, self.q, generator(self.settings, seed, torch.device("cpu")), augment)

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
