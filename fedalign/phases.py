"""The round schedule as values: each phase of a round, who takes part, and what each role moves and trains.

A run is round 0 with one ``setup`` phase (every node starts from the initial models and reports its sample
counts), then rounds 1..R, each a fixed list of phases (`Schedule.round`):

* ``fedalign``: ``disc1`` .. ``discE`` (every node trains D on its own domain from the last D_all, D_all is
  the average of the uploads), ``adapt`` (every node trains against the fixed D_all; G and T are
  averaged), ``eval`` (every node reports scalar metrics of its model on its own held-out data).
* ``fedavg``: ``train`` (sources train G and T on labels; the target only refreshes its local
  normalisation statistics, or, with target terms on (entropy, diversity, pseudo-labels), trains its G
  on them as in ``fedalign`` without the discriminator), ``eval``.
* ``source_only``: ``train`` over the sources alone, ``eval``; the target applies the sources' model.

``eval`` runs every ``eval_every`` rounds, in each checkpoint round and in the last round; with
``publish_model`` the last round ends with ``publish``, in which the target uploads its final model, and so
does every ``checkpoint_every``-th round (a checkpoint).

A `Phase` says everything the schedule decides about one phase, per role: the newest aggregates its step
starts from, the models it uploads, and the optimiser steps it takes on its training data. The protocol
machine (`fedalign.protocol`) reads who takes part and what moves from these values, and differential
privacy's accounting (`fedalign.privacy_accounting`) sums their optimiser steps, so the epsilon a budget
check projects is the one the nodes spend. Nothing here imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from fedalign.config import Algorithm, FederationConfig, Hyperparameters, Role
from fedalign.model_names import MODELS
from fedalign.schedules import scheduled_adv_weight

# The upload slot of the target's final model (shared and local tensors) in the ``publish`` phase.
PUBLISHED_MODEL = "model"
ROLES: tuple[Role, ...] = ("source", "target")

# The step a node runs in a phase.
PhaseKind = Literal["setup", "discriminator", "adapt", "evaluate", "publish"]


@dataclass(frozen=True)
class RolePart:
    """What the nodes of one role do in a phase."""

    # The models whose newest aggregates the step starts from.
    downloads: tuple[str, ...]
    # The models the step submits (averaged per model, except the published model).
    uploads: tuple[str, ...] = ()
    # Optimiser steps on the node's training data: DP-SGD steps when differential privacy is on.
    optimizer_steps: int = 0


@dataclass(frozen=True)
class Phase:
    """One phase of a round. `parts` holds the roles that take part; a role not in it runs no step."""

    name: str
    kind: PhaseKind
    parts: Mapping[Role, RolePart]
    # Which discriminator exchange of the round (1..E) a ``discriminator`` phase is; 0 for other kinds.
    exchange: int = 0

    def part(self, role: Role) -> RolePart | None:
        return self.parts.get(role)


@dataclass(frozen=True)
class Schedule:
    """The part of a federation's config the round schedule depends on (hashable, so rounds are cached)."""

    algorithm: Algorithm
    rounds: int
    publish_model: bool
    hp: Hyperparameters
    checkpoint_every: int | None = None

    @classmethod
    def of(cls, config: FederationConfig) -> Schedule:
        return cls(
            config.algorithm,
            config.rounds,
            config.publish_model,
            config.hyperparameters,
            config.checkpoint_every,
        )

    def round(self, round_: int) -> tuple[Phase, ...]:
        """The phases of round `round_`, in order (0 is setup)."""
        return _round(self, round_)

    @property
    def target_trains(self) -> bool:
        """Whether the target trains its G in the adaptation phase: always under ``fedalign`` (unless its
        extractor is ``none``), under ``fedavg`` when it has terms on its own predictions (FedAvg plus the
        same unlabelled target terms: the baseline that isolates what the discriminator adds)."""
        if self.hp.target_extractor == "none" or self.algorithm == "source_only":
            return False
        return self.algorithm == "fedalign" or self.hp.target_terms

    def evaluates(self, round_: int) -> bool:
        # A checkpoint's round is evaluated: its source validation accuracy is what selects one.
        return round_ == self.rounds or round_ % self.hp.eval_every == 0 or self.publishes(round_)

    def publishes(self, round_: int) -> bool:
        """Whether round `round_` ends with the target uploading its model: the last, and each checkpoint."""
        if not self.publish_model or round_ < 1:
            return False
        every = self.checkpoint_every
        return round_ == self.rounds or (every is not None and round_ % every == 0)

    def downloads(self, role: Role) -> tuple[str, ...]:
        """The newest aggregates a step of `role` starts from, in every phase after setup.

        Sources that keep their own G and T between rounds download only D; everyone else also takes the
        newest G_agg and T_agg (loading the same aggregate twice is a no-op, so the rule needs no
        per-phase exceptions). A target that keeps its own extractor never takes G_agg.
        """
        fedalign = self.algorithm == "fedalign"
        wanted = ["D"] if fedalign else []
        if role == "source":
            if not (fedalign and self.hp.source_extractor == "keep"):
                wanted += ["G", "T"]
        else:
            if not (self.target_trains and self.hp.target_extractor == "local"):
                wanted.append("G")
            wanted.append("T")
        return tuple(wanted)

    def target_optimizer_steps(self, round_: int) -> int:
        """The target's optimiser steps in a round's adaptation: none when its loss has no gradient
        (`steps.adapt_target` skips the step; under ``fedalign`` that is while lambda is still 0 and no
        term on its own predictions is on)."""
        if not self.target_trains:
            return 0
        adversarial = (
            self.algorithm == "fedalign"
            and self.hp.adv_sides == "both"
            and scheduled_adv_weight(self.hp, round_, self.rounds) > 0
        )
        return self.hp.local_steps if adversarial or self.hp.target_terms else 0


def _parts(**parts: RolePart) -> Mapping[Role, RolePart]:
    # Read-only: rounds are cached and shared by every caller.
    return MappingProxyType({role: parts[role] for role in ROLES if role in parts})


def _setup() -> Phase:
    everything = RolePart(downloads=MODELS)
    return Phase("setup", "setup", _parts(source=everything, target=everything))


def _discriminator(s: Schedule, exchange: int) -> Phase:
    """Every node trains D on its own features for k_D steps; D_all is the average."""
    parts = {
        role: RolePart(s.downloads(role), uploads=("D",), optimizer_steps=s.hp.disc_steps) for role in ROLES
    }
    return Phase(f"disc{exchange}", "discriminator", _parts(**parts), exchange=exchange)


def _training(s: Schedule, name: str, round_: int) -> Phase:
    """Sources train G and T on their labels; the target trains its G, or refreshes its statistics."""
    source = RolePart(s.downloads("source"), uploads=("G", "T"), optimizer_steps=s.hp.local_steps)
    target_out = (name == "adapt" and s.hp.target_extractor == "none") or s.algorithm == "source_only"
    if target_out:
        return Phase(name, "adapt", _parts(source=source))
    # During the target's warm-up it still trains from G_agg, but its G stays out of the average.
    warming_up = round_ <= s.hp.target_warmup_rounds
    enters_g_agg = s.target_trains and s.hp.target_extractor == "average" and not warming_up
    target = RolePart(
        s.downloads("target"),
        uploads=("G",) if enters_g_agg else (),
        optimizer_steps=s.target_optimizer_steps(round_),
    )
    return Phase(name, "adapt", _parts(source=source, target=target))


def _evaluation(s: Schedule) -> Phase:
    return Phase(
        "eval",
        "evaluate",
        _parts(source=RolePart(s.downloads("source")), target=RolePart(s.downloads("target"))),
    )


def _publish(s: Schedule) -> Phase:
    return Phase(
        "publish", "publish", _parts(target=RolePart(s.downloads("target"), uploads=(PUBLISHED_MODEL,)))
    )


@functools.lru_cache(maxsize=4096)
def _round(s: Schedule, round_: int) -> tuple[Phase, ...]:
    if round_ == 0:
        return (_setup(),)
    if s.algorithm == "fedalign":
        phases = [_discriminator(s, e) for e in range(1, s.hp.disc_exchanges + 1)]
        phases.append(_training(s, "adapt", round_))
    else:
        phases = [_training(s, "train", round_)]
    if s.evaluates(round_):
        phases.append(_evaluation(s))
    if s.publishes(round_):
        phases.append(_publish(s))
    return tuple(phases)


def round_phases(config: FederationConfig, round_: int) -> list[str]:
    """The names of round `round_`'s phases, in order."""
    return [phase.name for phase in Schedule.of(config).round(round_)]
