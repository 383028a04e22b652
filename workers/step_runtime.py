"""How a node runner runs a `workers.steps.Steps` implementation: `StepsRuntime`, and `load_steps`, which
finds a user's class by its import path (``package.module:MySteps``).

`StepsRuntime` is what `workers.client.NodeRunner` holds as its runtime: the same surface as
`fedalign.node.NodeRuntime` (run a step, compare the federation's manifest, save and restore the node's
state, follow a continued federation), with the steps themselves delegated to the node's `Steps`. The
checks that keep a node to the protocol stay here, whoever wrote the steps.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping

import torch

from fedalign.config import FederationConfig
from fedalign.data import NodeData
from fedalign.device import CPU, Device
from fedalign.model_manifest import ModelManifest, check
from fedalign.node import State, StepError, StepResult, check_step_result
from fedalign.protocol import StepSpec
from workers.reference_steps import ReferenceSteps
from workers.step_context import NodeContext
from workers.steps import NODE_STEP_KINDS, Steps, StepsFactory


class StepsError(ValueError):
    """A ``--steps`` path that names nothing importable, or something that is not a `Steps` class."""


class StepsRuntime:
    """One node's runtime with its steps from ``steps`` (default: FedAlign's own, `ReferenceSteps`)."""

    def __init__(
        self,
        name: str,
        config: FederationConfig,
        data: NodeData,
        device: Device = CPU,
        steps: StepsFactory = ReferenceSteps,
    ) -> None:
        self.context = NodeContext(name, config, data, device)
        self.steps = steps(self.context)
        # The installed architecture as it is now, when the steps built their models: setup compares this
        # with the federation's, and it must describe the models the steps hold, not a later import.
        self._manifest = self.context.manifest
        if not isinstance(self.steps, Steps):
            made = type(self.steps).__name__
            raise StepsError(f"{_describe(steps)} made a {made}, not a workers.steps.Steps")

    @property
    def name(self) -> str:
        return self.context.name

    @property
    def manifest(self) -> ModelManifest:
        return self._manifest

    def check_manifest(self, expected: ModelManifest) -> None:
        """Compare the federation's manifest with the node's installed architecture; `ManifestMismatch`
        names the first difference."""
        check(expected, self.manifest)

    def run(self, step: StepSpec, downloads: Mapping[str, Mapping[str, torch.Tensor]]) -> StepResult:
        if step.node != self.name:
            raise StepError(f"step for node {step.node!r} sent to node {self.name!r}")
        if step.kind not in NODE_STEP_KINDS:
            raise StepError(f"a node's steps cannot run a step of kind {step.kind!r}")
        missing = set(step.downloads) - set(downloads)
        if missing:
            raise StepError(f"step {step.round}/{step.phase} needs downloads {sorted(missing)}")
        # Seeded here, as the reference seeds it: anything a model draws on its own (dropout) is the same.
        torch.manual_seed(step.seed)
        result = getattr(self.steps, step.kind)(step, downloads)
        if not isinstance(result, StepResult):
            raise StepError(
                f"{type(self.steps).__name__}.{step.kind} returned a {type(result).__name__}, "
                f"not a fedalign.node.StepResult"
            )
        check_step_result(step, result)
        return result

    def state_tensors(self) -> State:
        return self.steps.state_tensors()

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        self.steps.load_state_tensors(state)

    def extend_to(self, rounds: int) -> None:
        self.context.extend_to(rounds)


def load_steps(path: str) -> type[Steps]:
    """The `Steps` subclass at ``package.module:ClassName``; `StepsError` says what is wrong with the path
    (no colon, a module that does not import, no such name, not a `Steps` class, methods left out)."""
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise StepsError(f"--steps {path!r}: expected package.module:ClassName, e.g. my_node.steps:MySteps")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StepsError(
            f"--steps {path!r}: cannot import module {module_name!r} ({exc}); is its package installed, or "
            f"its folder on PYTHONPATH?"
        ) from exc
    found = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise StepsError(f"--steps {path!r}: module {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    if not (inspect.isclass(found) and issubclass(found, Steps)):
        raise StepsError(
            f"--steps {path!r} is {_describe(found)}, not a subclass of workers.steps.Steps: write "
            f"`class {attribute.split('.')[-1]}(Steps)` with one method per step kind"
        )
    abstract = sorted(getattr(found, "__abstractmethods__", ()))
    if abstract:
        raise StepsError(
            f"--steps {path!r}: {found.__name__} does not implement {', '.join(abstract)} of "
            f"workers.steps.Steps"
        )
    return found


def _describe(value: object) -> str:
    if inspect.isclass(value):
        return f"the class {value.__module__}.{value.__qualname__}"
    return f"a {type(value).__name__}"
