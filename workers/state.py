"""A node's local state on its own machine, kept between steps in one safetensors file.

Everything `fedalign.node.NodeRuntime` keeps between steps (its models with the local BatchNorm
statistics, its optimisers' momentum) is saved after each step, so a step that lands in a new process
(a restarted worker, another process of the same node) continues exactly where the last one left off.

The file also holds the outputs of the step that produced it (its uploads, metrics and sample counts):
a step delivered again after it ran here (the worker died before completing it, a message sent twice)
is answered with the same outputs instead of training a second time, which would move the node's state
twice and upload different bytes. The server sees identical uploads (``stored: false``) and an identical
completion, so the second run changes nothing.

Written atomically (`fedalign.params.save_file`: temp file, fsync, rename), read through safetensors:
never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from fedalign import params
from fedalign.node import StepResult

State = dict[str, torch.Tensor]
FORMAT = "fedalign-node-state/1"
STATE_PREFIX = "state/"
UPLOAD_PREFIX = "upload/"


@dataclass
class SavedState:
    step_id: int
    tensors: State
    result: StepResult


class NodeStateFile:
    """``<root>/<federation id>/<node name>.safetensors``: one node's state after its last step."""

    def __init__(self, root: Path, federation_id: str, node: str) -> None:
        self.path = Path(root) / federation_id / f"{node}.safetensors"
        self.federation_id = federation_id
        self.node = node

    def step_id(self) -> int | None:
        """The step whose state the file holds (read from the header only), or None without a file."""
        metadata = self._metadata()
        return int(metadata["step_id"]) if metadata else None

    def _metadata(self) -> dict[str, str] | None:
        if not self.path.exists():
            return None
        params.read_header(self.path)  # a damaged file fails here with a ParameterError that says so
        with safe_open(str(self.path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a node state file ({FORMAT}); move it away to start over")
        if metadata.get("federation_id") != self.federation_id or metadata.get("node") != self.node:
            raise ValueError(
                f"{self.path} holds node {metadata.get('node')!r} of federation "
                f"{metadata.get('federation_id')!r}, not {self.node!r} of {self.federation_id!r}"
            )
        return metadata

    def load(self) -> SavedState | None:
        metadata = self._metadata()
        if metadata is None:
            return None
        tensors = params.load_file(self.path)
        uploads: dict[str, State] = {}
        state: State = {}
        for name, tensor in tensors.items():
            if name.startswith(STATE_PREFIX):
                state[name[len(STATE_PREFIX) :]] = tensor
            elif name.startswith(UPLOAD_PREFIX):
                slot, _, key = name[len(UPLOAD_PREFIX) :].partition("/")
                uploads.setdefault(slot, {})[key] = tensor
        # Slots with no tensors at all cannot occur: every upload holds at least one tensor.
        samples = json.loads(metadata["samples"])
        result = StepResult(
            uploads={slot: uploads.get(slot, {}) for slot in json.loads(metadata["upload_slots"])},
            metrics={k: float(v) for k, v in json.loads(metadata["metrics"]).items()},
            samples=None if samples is None else {k: int(v) for k, v in samples.items()},
        )
        return SavedState(int(metadata["step_id"]), state, result)

    def save(self, step_id: int, state: State, result: StepResult) -> None:
        tensors: State = {STATE_PREFIX + k: v for k, v in state.items()}
        for slot, upload in result.uploads.items():
            if "/" in slot:
                raise ValueError(f"upload slot {slot!r} cannot hold '/'")
            tensors.update({f"{UPLOAD_PREFIX}{slot}/{k}": v for k, v in upload.items()})
        metadata = {
            "format": FORMAT,
            "federation_id": self.federation_id,
            "node": self.node,
            "step_id": str(step_id),
            "upload_slots": json.dumps(sorted(result.uploads)),
            "metrics": json.dumps({k: float(v) for k, v in result.metrics.items()}),
            "samples": json.dumps(result.samples),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        params.save_file(tensors, self.path, metadata)
