"""Round 0: the federation's initial parameters, every tensor of G, T and D, and their manifest document.

Built from the federation's seed (and, with ``model.init_checkpoint``, a pretrained checkpoint) by one
function, `build_initial`, that ``fedalign init-model`` and the simulator both call, so a served federation
created from an ``init-model`` file and a simulation of the same config start from the same bits.

On disk: one safetensors file with tensors ``G.<name>``, ``T.<name>``, ``D.<name>`` (every tensor of each
model, shared and local; no metadata), and the manifest document (`fedalign.model_manifest`) beside it as
JSON. Round 0's aggregates (``r0/init/<model>``) are these tensors: at setup a node loads all of them, so
pretrained BatchNorm statistics reach every node; afterwards only shared tensors travel.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedalign import params
from fedalign.architectures import ArchitectureContext
from fedalign.checkpoints import load_checkpoint
from fedalign.model_manifest import ModelManifest
from fedalign.model_names import MODELS
from fedalign.models import build
from fedalign.protocol import derive_seed, effective_local_policy

if TYPE_CHECKING:
    from fedalign.config import FederationConfig

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InitialParameters:
    """Every tensor of G, T and D at round 0, and the manifest document that describes them."""

    models: Mapping[str, State]
    manifest: ModelManifest
    # The models a checkpoint set (empty without ``init_checkpoint``).
    from_checkpoint: tuple[str, ...] = ()

    def flat(self) -> State:
        """One state dict, names prefixed by their model (``G.conv1.weight``): the file's tensors."""
        return {f"{m}.{k}": v for m in MODELS for k, v in self.models[m].items()}

    def to_bytes(self) -> bytes:
        return params.to_bytes(self.flat())

    def save(self, path: str | os.PathLike[str], manifest_path: str | os.PathLike[str]) -> None:
        """Write the parameters and the manifest document; each file whole or not at all."""
        params.save_file(self.flat(), path)
        _write_text(Path(manifest_path), self.manifest.dumps())
        for written in (path, manifest_path):  # files for the user to share: the umask's mode, not 0600
            os.chmod(written, 0o666 & ~_umask())

    @classmethod
    def read(
        cls, source: bytes | str | os.PathLike[str], manifest: ModelManifest, max_bytes: int = 1 << 40
    ) -> InitialParameters:
        """Initial parameters from a file or bytes, checked against their manifest document: every tensor
        of every model, no other, each with its shape and dtype, every value finite
        (`fedalign.params.ParameterError` says what is wrong)."""
        params.validate(source, manifest.every_tensor(), max_bytes)
        flat = params.from_bytes(source) if isinstance(source, bytes) else params.load_file(source)
        models: dict[str, State] = {m: {} for m in MODELS}
        for name, tensor in flat.items():
            model, _, rest = name.partition(".")
            models[model][rest] = tensor
        ordered = {m: {t.name: models[m][t.name] for t in manifest.models[m]} for m in MODELS}
        return cls(ordered, manifest)


def manifest_path_for(path: str | os.PathLike[str]) -> Path:
    """Where the manifest document goes beside a parameters file: ``init.safetensors`` ->
    ``init.manifest.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.manifest.json")


def build_initial(config: FederationConfig) -> InitialParameters:
    """The federation's round 0: G, T and D built from its seed, then its ``init_checkpoint`` loaded."""
    models = build(config.architecture, ArchitectureContext.of(config), seed=derive_seed(config.seed, "init"))
    loaded: list[str] = []
    if config.model.init_checkpoint is not None:
        loaded = load_checkpoint(models, config.model.init_checkpoint)
    manifest = ModelManifest.of(config.architecture, models, effective_local_policy(config))
    states = {
        name: {k: v.detach().clone() for k, v in module.state_dict().items()}
        for name, module in models.items()
    }
    return InitialParameters(states, manifest, tuple(loaded))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
