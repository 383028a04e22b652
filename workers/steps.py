"""The interface a node's steps implement: `Steps`, the public contract for a partner's own training code.

A node runs five kinds of step (`fedalign.phases.PhaseKind`): ``setup``, ``discriminator``, ``adapt``,
``evaluate`` and ``publish``; docs/protocol.md says what each computes. A `Steps` class has one method per
kind. Each takes the step (`fedalign.protocol.StepSpec`: its node, round, phase, seed, and the model slots
it downloads and uploads) and the downloaded aggregates (slot -> state dict), and returns a
`fedalign.node.StepResult`: one state dict per upload slot the step names, and the step's scalar metrics
(names from `fedalign.metrics.REPORTED_METRICS`). The class is built once per node with its
`workers.step_context.NodeContext` (data, config, helpers) and keeps the node's own state (its models,
local statistics, optimiser momentum) between steps; `state_tensors` and `load_state_tensors` let the
runner save that state so a restarted node goes on where it stopped.

FedAlign's own steps are one implementation (`workers.reference_steps.ReferenceSteps`); ``fedalign node
run --steps package.module:MySteps`` runs a node with another, and ``fedalign node check --steps ...``
compares one with the reference.

The runner (`workers.step_runtime.StepsRuntime`) does the rest of the protocol: it seeds torch's global
generator with ``step.seed`` before each step, refuses a result with an upload the step did not ask for
(or without one it did) or an undeclared metric, masks uploads under secure aggregation, and runs the
target's aggregations itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import get_args

import torch

from fedalign.node import State, StepError, StepResult
from fedalign.phases import PhaseKind
from fedalign.protocol import StepSpec
from fedalign.steps import Batches
from workers.step_context import NodeContext

# Everything a `Steps` implementation needs from FedAlign, importable from here.
__all__ = [
    "NODE_STEP_KINDS",
    "Batches",
    "Downloads",
    "NodeContext",
    "State",
    "StepError",
    "StepResult",
    "StepSpec",
    "Steps",
    "StepsFactory",
]

# The kinds of step a node's `Steps` computes, each a method of that name (aggregate and reveal steps are
# the runner's own).
NODE_STEP_KINDS: tuple[str, ...] = get_args(PhaseKind)

Downloads = Mapping[str, Mapping[str, torch.Tensor]]


class Steps(ABC):
    """One node's steps. Subclass it, implement every method, and name the class to ``--steps``.

    ``node`` is the node's `NodeContext`. Every step method gets the step and its downloads (slot ->
    state dict; setup's hold every tensor of round 0, later ones the shared tensors of the newest
    aggregates) and returns a `StepResult` with an upload for each slot of ``step.uploads``.
    """

    def __init__(self, node: NodeContext) -> None:
        self.node = node

    @abstractmethod
    def setup(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """Round 0: load every tensor of G, T and D (local ones too); return the sample counts of the
        node's splits as ``samples`` ({"train": n, "val": n, "test": n}), no upload, no metric."""

    @abstractmethod
    def discriminator(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """Train D on this node's own features, all labelled with its own domain, G frozen; upload D."""

    @abstractmethod
    def adapt(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """Train G (and T on a source) against the fixed D_all with the adversarial loss; upload them."""

    @abstractmethod
    def evaluate(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """Report metrics on the node's held-out splits; no upload."""

    @abstractmethod
    def publish(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """The target's final model: every tensor of G and T in the ``model`` slot."""

    @abstractmethod
    def state_tensors(self) -> State:
        """Everything the node keeps between steps (models, local statistics, optimiser state) as named
        tensors, for the runner's state file."""

    @abstractmethod
    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take back what `state_tensors` returned (a node restarted between two steps)."""


# What a runner takes to make a node's steps: a `Steps` subclass, or any callable of that shape.
StepsFactory = Callable[[NodeContext], Steps]
