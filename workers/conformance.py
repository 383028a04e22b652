"""The conformance check: a user's steps beside FedAlign's reference steps, step for step
(``fedalign node check``).

A scratch federation runs in this process on synthetic data (two sources and a target, FedAlign's
simulator driving `fedalign.protocol`). Every node runs each step twice from the same step spec and the
same downloads: once with the reference steps (`workers.reference_steps.ReferenceSteps`), whose result
the federation goes on with, and once with the user's steps, whose result is compared with it: the
uploads (slots, tensor names, shapes, dtypes, values within a tolerance), the metrics (names, values
within the tolerance) and the sample counts. The report says, per step kind, whether they agreed, and
names the first disagreements (node, round, phase, tensor or metric, and by how much).

Each side keeps its own state between steps, as a node does: a convention got wrong in one step (a
reversed label) shows in that step's uploads, and its consequences in later ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedalign.config import FederationConfig
from fedalign.data import NodeData, Split
from fedalign.data.core import node_data
from fedalign.device import CPU, Device
from fedalign.failures import failure_reason
from fedalign.label_free import LIVE_EXAMPLES
from fedalign.model_manifest import ModelManifest
from fedalign.node import StepResult
from fedalign.protocol import StepSpec
from fedalign.simulate import Simulator
from workers.reference_steps import ReferenceSteps
from workers.step_runtime import StepsRuntime
from workers.steps import NODE_STEP_KINDS, StepsFactory

# The scratch federation's settings: the method's defaults on a small network that trains in
# milliseconds; two rounds, so that the second round's adaptation reports disc_acc_fresh, and the target
# publishes its model.
SCRATCH_SETTINGS: dict[str, Any] = {
    "name": "conformance",
    "algorithm": "fedalign",
    "architecture": "mlp",
    "model": {"num_classes": 3, "input_shape": [8], "hidden": 8},
    "rounds": 2,
    "seed": 11,
    "publish_model": True,
    "hyperparameters": {"local_steps": 2, "disc_steps": 2, "batch_size": 8},
}
# name, role, how far its inputs are moved (the domain shift)
SCRATCH_NODES = (("source-a", "source", 0.0), ("source-b", "source", 0.4), ("target", "target", 1.5))
# The train split is larger than the target's live label-free sample, so that the check holds an evaluate step
# to that sample (fedalign.label_free.live_indices) and not to a pass over the whole split.
SAMPLES = {"train": LIVE_EXAMPLES + 44, "val": 16, "test": 16}
DEFAULT_TOLERANCE = 1e-5
# Disagreements named per step kind; the rest are counted.
SHOWN = 5


@dataclass
class KindReport:
    """One step kind: how many steps were compared, and what disagreed."""

    kind: str
    steps: int = 0
    uploads: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.steps > 0 and not (self.uploads or self.metrics or self.errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "steps": self.steps,
            "ok": self.ok,
            "uploads_agree": not self.uploads and not self.errors,
            "metrics_agree": not self.metrics and not self.errors,
            "uploads": self.uploads[:SHOWN],
            "metrics": self.metrics[:SHOWN],
            "errors": self.errors[:SHOWN],
            "more": max(0, len(self.uploads) - SHOWN)
            + max(0, len(self.metrics) - SHOWN)
            + max(0, len(self.errors) - SHOWN),
        }


@dataclass
class ConformanceReport:
    steps: str
    tolerance: float
    kinds: dict[str, KindReport] = field(
        default_factory=lambda: {kind: KindReport(kind) for kind in NODE_STEP_KINDS}
    )
    # The first step that disagreed, in the order the federation ran them: later disagreements may only be
    # its consequences (the node's own state differs from then on).
    first: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        """Every step kind the scratch federation ran agreed (a kind it never ran is not held against it)."""
        return all(k.ok for k in self.kinds.values() if k.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "first_disagreement": self.first,
            "kinds": [k.to_json() for k in self.kinds.values()],
        }


def close(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


def upload_differences(reference: StepResult, candidate: StepResult, tolerance: float) -> list[str]:
    """What differs between two results' uploads: a slot, a tensor name, a shape, a dtype, or values."""
    found: list[str] = []
    for slot in sorted(set(reference.uploads) | set(candidate.uploads)):
        if slot not in candidate.uploads:
            found.append(f"no upload for slot {slot}")
            continue
        if slot not in reference.uploads:
            found.append(f"an upload for slot {slot}, which the step did not ask for")
            continue
        expected, got = reference.uploads[slot], candidate.uploads[slot]
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        if missing:
            found.append(f"upload {slot} lacks tensors {missing}")
        if extra:
            found.append(f"upload {slot} has tensors the reference does not upload: {extra}")
        for name in sorted(set(expected) & set(got)):
            e, g = expected[name], got[name]
            where = f"upload {slot}: tensor {name}"
            if tuple(e.shape) != tuple(g.shape):
                found.append(f"{where} has shape {list(g.shape)}, the reference's {list(e.shape)}")
            elif e.dtype != g.dtype:
                found.append(f"{where} has dtype {g.dtype}, the reference's {e.dtype}")
            elif not torch.allclose(g.double(), e.double(), rtol=tolerance, atol=tolerance, equal_nan=True):
                difference = float((g.double() - e.double()).abs().max())
                found.append(f"{where} differs by up to {difference:.3g}")
    return found


def metric_differences(reference: StepResult, candidate: StepResult, tolerance: float) -> list[str]:
    """What differs between two results' metrics and sample counts: a name missing or extra, or a value."""
    found: list[str] = []
    missing = sorted(set(reference.metrics) - set(candidate.metrics))
    extra = sorted(set(candidate.metrics) - set(reference.metrics))
    if missing:
        found.append(f"missing metrics {missing}")
    if extra:
        found.append(f"metrics the reference does not report: {extra}")
    for name in sorted(set(reference.metrics) & set(candidate.metrics)):
        e, g = float(reference.metrics[name]), float(candidate.metrics[name])
        if not close(g, e, tolerance):
            found.append(f"metric {name} is {g:.6g}, the reference's {e:.6g}")
    if (reference.samples or {}) != (candidate.samples or {}):
        found.append(f"samples {candidate.samples}, the reference's {reference.samples}")
    return found


class _SideBySide:
    """A node of the scratch federation: the reference steps, which the federation goes on with, and the
    user's, run on the same step and downloads and compared."""

    def __init__(self, reference: StepsRuntime, candidate: StepsRuntime, report: ConformanceReport) -> None:
        self.reference = reference
        self.candidate = candidate
        self.report = report

    def check_manifest(self, expected: ModelManifest) -> None:
        self.reference.check_manifest(expected)

    def extend_to(self, rounds: int) -> None:
        self.reference.extend_to(rounds)
        self.candidate.extend_to(rounds)

    def run(self, step: StepSpec, downloads: Mapping[str, Mapping[str, torch.Tensor]]) -> StepResult:
        expected = self.reference.run(step, downloads)
        kind = self.report.kinds[step.kind]
        kind.steps += 1
        where = f"{step.node}, round {step.round} {step.phase}"
        # Copies: steps that change what they were given must not change the reference's inputs.
        copies = {slot: {k: v.clone() for k, v in state.items()} for slot, state in downloads.items()}
        try:
            got = self.candidate.run(step, copies)
        except Exception as exc:
            self.record(kind, kind.errors, [f"{where}: raised {failure_reason(exc)}"])
            return expected
        tol = self.report.tolerance
        self.record(kind, kind.uploads, [f"{where}: {d}" for d in upload_differences(expected, got, tol)])
        self.record(kind, kind.metrics, [f"{where}: {d}" for d in metric_differences(expected, got, tol)])
        return expected

    def record(self, kind: KindReport, into: list[str], found: list[str]) -> None:
        into += found
        if found and self.report.first is None:
            self.report.first = {"kind": kind.kind, "disagreement": found[0]}


def synthetic_data(config: FederationConfig, shift: float, seed: int) -> NodeData:
    """Labelled samples of the federation's input shape: one random direction per class, plus ``shift``."""
    shape = tuple(config.model.input_shape)
    classes = config.model.num_classes
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(classes, *shape, generator=g)

    def split(n: int) -> Split:
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(n, *shape, generator=g) * 0.5 + directions[y] + shift
        return Split(x.float(), y)

    return node_data(f"synthetic:{seed}", *(split(SAMPLES[s]) for s in ("train", "val", "test")), classes)


def scratch_config(settings: Mapping[str, Any] | None = None) -> FederationConfig:
    """The scratch federation: ``settings`` (a config's, default `SCRATCH_SETTINGS`) with synthetic nodes.
    Raises pydantic's ValidationError (a ValueError) for settings that are not a federation's."""
    nodes = [{"name": n, "role": r, "dataset": f"synthetic:{n}"} for n, r, _ in SCRATCH_NODES]
    return FederationConfig.model_validate({**(settings or SCRATCH_SETTINGS), "nodes": nodes})


def check_steps(
    steps: StepsFactory,
    config: FederationConfig | None = None,
    *,
    name: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    device: Device = CPU,
) -> ConformanceReport:
    """Run ``steps`` beside the reference steps in a scratch federation (`scratch_config`); the report
    per step kind."""
    config = config or scratch_config()
    data = {n: synthetic_data(config, shift, i) for i, (n, _, shift) in enumerate(SCRATCH_NODES)}
    report = ConformanceReport(name or getattr(steps, "__qualname__", repr(steps)), tolerance)
    with torch.random.fork_rng(devices=[]):
        simulator = Simulator(config, device, node_data=data)
        simulator.nodes = {  # type: ignore[assignment]  # the simulator reads only run/check/extend
            n: _SideBySide(
                StepsRuntime(n, config, data[n], device, ReferenceSteps),
                StepsRuntime(n, config, data[n], device, steps),
                report,
            )
            for n in data
        }
        simulator.run()
    return report
