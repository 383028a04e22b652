"""A node's local state on its own machine, kept between steps in one safetensors file.

Everything `fedalign.node.NodeRuntime` keeps between steps (its models with the local BatchNorm
statistics, its optimisers' momentum) is saved after each step, so a step that lands in a new process
(a restarted worker, another process of the same node) continues exactly where the last one left off.

The file also holds the outputs of the step that produced it (its uploads, metrics and sample counts):
a step delivered again after it ran here (the worker died before completing it, a message sent twice)
is answered with the same outputs instead of training a second time, which would move the node's state
twice and upload different bytes. The server sees identical uploads (``stored: false``) and an identical
completion, so the second run changes nothing.

Written atomically (`fedalign.params.save_file`: temp file, rename), read through safetensors: never
pickle. The rename is what an exact restart after a killed process needs: a SIGKILLed worker loses no page
cache, so the next process reads the old file or the whole new one. The bytes are also fsynced when
``durable`` (``FEDALIGN_NODE_STATE_FSYNC``, on by default), so that a machine crash loses nothing either:
measured, the fsync costs about a millisecond of a short step's 2-3 ms save (docs/benchmarks/system.md).
What a machine crash (power loss, kernel panic) costs without it: the
file may hold an older step's state, or be empty or damaged. A damaged file is refused at the next step
with a message that says to move it away; an older one is taken as the node's state, so the node's
following steps start from it and that run no longer equals an undisturbed one bitwise (it completes,
with the node's progress since the saved step lost).

With secure aggregation the node also keeps, beside that file and readable by its owner only (mode 0600),
its X25519 private key (`<node>.x25519`, 32 raw bytes; it never leaves the machine, only its public key is
sent) and a ledger (`<node>.secagg.json`) of what it masked and revealed per mask context: a restarted
worker reuses the key, masks a re-run step's upload identically, and never answers two different dropout
lists for one context (`SecAggLedger`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from fedalign import params, secagg
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

    def __init__(self, root: Path, federation_id: str, node: str, *, durable: bool = True) -> None:
        self.path = Path(root) / federation_id / f"{node}.safetensors"
        self.federation_id = federation_id
        self.node = node
        self.durable = durable

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
        params.save_file(tensors, self.path, metadata, durable=self.durable)


# ------------------------------------------------------------------------------------ secure aggregation

SECRET_MODE = 0o600


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path``, readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600 already; said again so that no umask or platform can widen it.
        os.fchmod(fd, SECRET_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _context_key(context: secagg.MaskContext) -> str:
    return json.dumps(list(context.fields()))


class SecAggLedger:
    """One node's secure-aggregation secrets: its X25519 key pair, and what it masked and revealed.

    ``root`` None keeps everything in memory (a node whose state lives only in its process); otherwise the
    files sit beside the node's state file, mode 0600. The ledger enforces the two rules that a
    deterministic self seed (`fedalign.secagg.KeyPair.self_seed`) and a restartable node need: one context
    masks one value (a re-run step must upload the same bytes), and one context answers one dropout list.
    """

    def __init__(self, root: Path | None, federation_id: str, node: str) -> None:
        base = Path(root) / federation_id if root is not None else None
        self.key_path = base / f"{node}.x25519" if base is not None else None
        self.ledger_path = base / f"{node}.secagg.json" if base is not None else None
        self.node = node
        self._keys: secagg.KeyPair | None = None
        self._ledger: dict[str, dict[str, object]] | None = None

    def key_pair(self) -> secagg.KeyPair:
        """The node's key pair for this federation: read from its file, or made (and saved) the first time."""
        if self._keys is None:
            if self.key_path is not None and self.key_path.exists():
                raw = self.key_path.read_bytes()
                if len(raw) != secagg.SEED_BYTES:
                    raise ValueError(f"{self.key_path} is not a 32-byte X25519 private key")
                self._keys = secagg.KeyPair.from_private_bytes(raw)
            else:
                self._keys = secagg.KeyPair.generate()
                if self.key_path is not None:
                    _write_private(self.key_path, self._keys.private_bytes())
        return self._keys

    def _entries(self) -> dict[str, dict[str, object]]:
        if self._ledger is None:
            if self.ledger_path is not None and self.ledger_path.exists():
                self._ledger = json.loads(self.ledger_path.read_text(encoding="utf-8"))
            else:
                self._ledger = {"masked": {}, "revealed": {}}
        return self._ledger

    def _save(self) -> None:
        if self.ledger_path is not None:
            _write_private(self.ledger_path, json.dumps(self._entries(), sort_keys=True).encode("utf-8"))

    def record_mask(self, context: secagg.MaskContext, digest: str) -> None:
        """Note that ``context`` masked the upload with sha256 ``digest``; refuse a different one."""
        masked = self._entries()["masked"]
        assert isinstance(masked, dict)
        key = _context_key(context)
        if masked.get(key, digest) != digest:
            raise secagg.SecAggError(
                f"context {context} already masked another upload; masking a second value under the same "
                "masks would reveal the difference of the two, so it is not sent"
            )
        if key not in masked:
            masked[key] = digest
            self._save()

    def record_reveal(self, context: secagg.MaskContext, dropped: Collection[str]) -> None:
        """Note that ``context`` answered dropout list ``dropped``; refuse a different list."""
        revealed = self._entries()["revealed"]
        assert isinstance(revealed, dict)
        key, listed = _context_key(context), sorted(dropped)
        if revealed.get(key, listed) != listed:
            raise secagg.SecAggError(
                f"context {context} already answered dropout list {revealed[key]}; it will not answer a "
                f"different one ({listed}): two answers could together unmask an upload"
            )
        if key not in revealed:
            revealed[key] = listed
            self._save()
