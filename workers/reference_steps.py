"""FedAlign's own steps as one implementation of `workers.steps.Steps`: the reference a user's steps are
checked against, and what a node runs without ``--steps``.

They are `fedalign.node.NodeRuntime`'s, the simulator's steps, so a node running them computes what the
simulator computes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedalign.node import NodeRuntime, State, StepResult
from fedalign.protocol import StepSpec
from workers.step_context import NodeContext
from workers.steps import Downloads, Steps


class ReferenceSteps(Steps):
    def __init__(self, node: NodeContext) -> None:
        super().__init__(node)
        self.runtime = NodeRuntime(node.name, node.config, node.data, node.device)

    def _run(self, step: StepSpec, downloads: Downloads) -> StepResult:
        if self.runtime.config.rounds != self.node.config.rounds:  # the federation was continued
            self.runtime.extend_to(self.node.config.rounds)
        return self.runtime.run(step, downloads)

    def setup(self, step: StepSpec, downloads: Downloads) -> StepResult:
        return self._run(step, downloads)

    def discriminator(self, step: StepSpec, downloads: Downloads) -> StepResult:
        return self._run(step, downloads)

    def adapt(self, step: StepSpec, downloads: Downloads) -> StepResult:
        return self._run(step, downloads)

    def evaluate(self, step: StepSpec, downloads: Downloads) -> StepResult:
        return self._run(step, downloads)

    def publish(self, step: StepSpec, downloads: Downloads) -> StepResult:
        return self._run(step, downloads)

    def state_tensors(self) -> State:
        return self.runtime.state_tensors()

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        self.runtime.load_state_tensors(state)
