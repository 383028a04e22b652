"""What a node's steps may read and the helpers that make their numbers exact: `NodeContext`.

A user's steps (`workers.steps.Steps`) get one `NodeContext` when their node starts. It holds the node's
name, role, data and the federation's config, and it names, as public functions, everything the reference
steps (`fedalign.node.NodeRuntime`) draw on to be reproducible: the models built from the node's installed
architecture, which tensors stay local under the federation's policy, the step's seeded batch stream, the
optimiser, the learning-rate and adversarial-weight schedules, the domain label convention. Steps that
use these helpers and the same arithmetic as the reference compute the same numbers bit for bit; the
conformance check (``fedalign node check``) says where they do not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property

import torch
from torch import nn

from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig, Hyperparameters, Role
from fedalign.data import NodeData, SplitDataset, evaluation_batches
from fedalign.device import CPU, Device
from fedalign.model_manifest import ModelManifest
from fedalign.models import ModelSet, build, local_names
from fedalign.node import (
    State,
    StepError,
    check_node_data,
    full_model,
    load_aggregate,
    shared_state,
    training_batches,
)
from fedalign.optimizers import build_optimizer
from fedalign.phases import Schedule
from fedalign.protocol import StepSpec, derive_seed, effective_local_policy
from fedalign.schedules import scheduled_adv_weight, scheduled_lr
from fedalign.steps import SOURCE, TARGET, Batches


class NodeContext:
    """One node of one federation, as its steps see it.

    ``config`` is the federation's config; read it at each step (a federation continued for more rounds
    gets a longer one between steps). ``device`` carries the federation's precision: put models and
    batches on ``device.torch_device`` and compute under ``device.autocast``, as the reference does.
    """

    def __init__(self, name: str, config: FederationConfig, data: NodeData, device: Device = CPU) -> None:
        node = next((n for n in config.nodes if n.name == name), None)
        if node is None:
            raise StepError(f"node {name!r} is not part of federation {config.name!r}")
        check_node_data(name, node.role, config, data)
        self.name = name
        self.role: Role = node.role
        self.config = config
        self.data = data
        self.device = device.with_precision(config.model.precision)

    # ----------------------------------------------------------------------------- the federation

    @property
    def hp(self) -> Hyperparameters:
        """The federation's hyperparameters (steps, batch size, learning rates, loss weights)."""
        return self.config.hyperparameters

    @property
    def schedule(self) -> Schedule:
        """The round schedule: ``schedule.evaluates(r)`` (whether round r has an evaluation phase),
        ``schedule.target_trains`` (whether the target trains its G in the adaptation phase)."""
        return Schedule.of(self.config)

    @property
    def own_label(self) -> float:
        """This node's domain label for D: 1.0 on a source, 0.0 on the target (D's logit is the log-odds
        of *source*)."""
        return SOURCE if self.role == "source" else TARGET

    # ------------------------------------------------------------------------------------- models

    @cached_property
    def manifest(self) -> ModelManifest:
        """The manifest of the node's installed architecture (names, shapes, dtypes, shared or local), as
        setup compares it with the federation's."""
        return ModelManifest.for_config(self.config)

    def build_models(self) -> ModelSet:
        """G, T and D from the node's installed architecture, on the node's device. Their initial values do
        not matter: setup loads every tensor of round 0 into them."""
        models = build(self.config.architecture, ArchitectureContext.of(self.config))
        return models.to(self.device.torch_device)

    def local_names(self, module: nn.Module) -> set[str]:
        """The names in ``module.state_dict()`` that stay on this node under the federation's
        ``local_params`` policy (BatchNorm statistics by default): never uploaded, never overwritten by an
        aggregate after setup."""
        return local_names(module, effective_local_policy(self.config))

    def load(
        self, module: nn.Module, model: str, state: Mapping[str, torch.Tensor], *, every_tensor: bool = False
    ) -> None:
        """Load a downloaded aggregate of ``model`` ("G", "T" or "D") into ``module``: at setup
        (``every_tensor=True``) every tensor, later the shared ones only, local tensors untouched."""
        load_aggregate(module, model, state, self.local_names(module), every_tensor=every_tensor)

    def shared(self, module: nn.Module) -> State:
        """What an upload of ``module`` holds: its shared tensors, on the CPU."""
        return {k: v.cpu() for k, v in shared_state(module, self.local_names(module)).items()}

    def full_model(self, G: nn.Module, T: nn.Module) -> State:
        """The publish step's upload: every tensor of G and T (local ones too), as ``G.<name>`` and
        ``T.<name>``."""
        return full_model(G, T)

    # -------------------------------------------------------------------------------------- steps

    def seed(self, step: StepSpec, *parts: object) -> int:
        """A seed for one random choice of a step (`fedalign.protocol.derive_seed` of the step's seed).
        The runner seeds torch's global generator with ``step.seed`` before every step."""
        return derive_seed(step.seed, *parts)

    def batches(self, step: StepSpec) -> Batches:
        """The step's training batches of the node's train split: ``.next()`` gives ``(x, y)``, shuffled by
        the step's seed, augmented when the federation's preprocessing says so. A target's ``y`` is a
        placeholder: never read it."""
        if self.config.privacy.enabled:
            raise StepError(
                "this federation uses differential privacy: its steps are DP-SGD with Poisson-sampled "
                "batches and an accountant, which only FedAlign's own steps implement; run the node "
                "without --steps"
            )
        return training_batches(self.config, self.data, step)

    def evaluation_batches(
        self, split: SplitDataset, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A held-out split once, in order, in the reference's evaluation batches (sums of per-batch
        values then match the reference's exactly); with ``indices``, only those samples (the target's live
        label-free scores read `fedalign.label_free.live_indices`)."""
        return evaluation_batches(split, indices=indices)

    def optimizer(self, parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """The federation's optimiser (``hyperparameters.optimizer``: SGD with momentum, Adam or AdamW) over
        ``parameters``. Keep one per set of parameters between steps: its state (momentum) is local."""
        return build_optimizer(self.hp, parameters, lr)

    def lr(self, base: float, step: StepSpec) -> float:
        """The learning rate of this step under the federation's schedule (``hp.lr`` or ``hp.disc_lr``)."""
        return scheduled_lr(self.hp, base, step.round, self.config.rounds)

    def adv_weight(self, step: StepSpec) -> float:
        """lambda, the adversarial term's weight in this step's round under its schedule."""
        return scheduled_adv_weight(self.hp, step.round, self.config.rounds)

    def extend_to(self, rounds: int) -> None:
        """The federation was continued to ``rounds`` rounds (schedules over the run's length follow)."""
        self.config = self.config.model_copy(update={"rounds": rounds})
