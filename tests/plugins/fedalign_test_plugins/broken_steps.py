"""Node steps that each get one thing of the protocol wrong, for the conformance check to catch.

Each is docs' worked example (`custom_steps.plain_torch_steps.PlainTorchSteps`, which matches FedAlign's
steps bit for bit) with one mistake, the kind an engineer writing a node from the protocol page makes. The
example lives in examples/, so ``examples`` is on ``sys.path`` beside ``tests/plugins``.
"""

from __future__ import annotations

import torch
from custom_steps.plain_torch_steps import PlainTorchSteps

from workers.steps import Downloads, NodeContext, StepResult, Steps, StepSpec


class ReversedDiscriminatorLabel(PlainTorchSteps):
    """Source = 0, target = 1: D's logit read as the log-odds of *target* (the convention an outside
    engineer guessed, issue 16)."""

    def __init__(self, node: NodeContext) -> None:
        super().__init__(node)
        self.label = 1.0 - self.label


class WrongAdversarialLoss(PlainTorchSteps):
    """The extractor trained towards its own domain label: helping D instead of fooling it."""

    def adversarial_loss(self, logits: torch.Tensor) -> torch.Tensor:
        return self.domain_loss(logits, self.label)


class WrongUploads(PlainTorchSteps):
    """Every tensor of the adapted models uploaded, the BatchNorm statistics that stay local included."""

    def adapt(self, step: StepSpec, downloads: Downloads) -> StepResult:
        result = super().adapt(step, downloads)
        result.uploads = {
            model: {k: v.detach().cpu().clone() for k, v in self.models[model].state_dict().items()}
            for model in result.uploads
        }
        return result


class MissingMetric(PlainTorchSteps):
    """An evaluation that leaves out D's loss on the held-out split."""

    def evaluate(self, step: StepSpec, downloads: Downloads) -> StepResult:
        result = super().evaluate(step, downloads)
        del result.metrics["disc_eval_loss"]
        return result


class LeaksAMetric(PlainTorchSteps):
    """An evaluation that also reports a statistic of the node's data, which no protocol metric is."""

    def evaluate(self, step: StepSpec, downloads: Downloads) -> StepResult:
        result = super().evaluate(step, downloads)
        result.metrics["val_feature_mean"] = float(self.node.data.val.x.mean())  # type: ignore[attr-defined]
        return result


class NotSteps:
    """Has the methods' names but is no `workers.steps.Steps`."""

    def setup(self) -> None: ...


class Unfinished(Steps):
    """A `Steps` with its setup alone."""

    def setup(self, step: StepSpec, downloads: Downloads) -> StepResult:
        return StepResult()
