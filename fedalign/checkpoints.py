"""Pretrained weights: reading a checkpoint into the models (``model.init_checkpoint``), and converting a
torchvision or timm state dict into such a checkpoint (``fedalign convert-checkpoint``).

A checkpoint is a safetensors file whose tensors are named ``G.<name>``, ``T.<name>`` or ``D.<name>`` after
the models' state dicts. Each model it names must be complete (every tensor, with its shape and dtype);
a model it does not name keeps its seeded initialisation: a pretrained backbone is a checkpoint of G alone,
and T (whose classes are the federation's, not ImageNet's) and D start fresh. Nothing is changed unless the
whole checkpoint fits.

A state dict from torchvision or timm is a pickle (``torch.save``); it is read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers, and only ever
from a file the user names on their own machine: nothing that travels between parties is a pickle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedalign import params
from fedalign.manifest import Manifest
from fedalign.model_names import MODELS
from fedalign.models import ModelSet
from fedalign.torch_dtypes import SAFETENSORS_DTYPES, dtype_name

State = dict[str, torch.Tensor]

# Keys under which training scripts nest a model's state dict (timm, Lightning, torchvision's references).
_NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module")
# Names of BatchNorm's batch counter: torchvision's ImageNet state dicts predate it and lack it.
_BATCH_COUNTER = "num_batches_tracked"
_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint or state dict that cannot be used, with what was wrong and what to do."""


def _listed(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


# ---------------------------------------------------------------------------------- init_checkpoint


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, State]:
    """A checkpoint's tensors by model: ``{"G": {...}, ...}`` for the models it names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (model.init_checkpoint)")
    try:
        flat = params.load_file(path)
    except params.ParameterError as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a safetensors file ({exc}); convert a torchvision or timm state dict "
            "with `fedalign convert-checkpoint`"
        ) from exc
    by_model: dict[str, State] = {}
    stray = []
    for name, tensor in flat.items():
        model, dot, rest = name.partition(".")
        if model not in MODELS or not dot or not rest:
            stray.append(name)
            continue
        by_model.setdefault(model, {})[rest] = tensor
    if stray:
        raise CheckpointError(
            f"checkpoint {path} holds tensors {_listed(stray)} that name no model; every name must start "
            f"with {', '.join(m + '.' for m in MODELS)} (`fedalign convert-checkpoint` writes G's that way)"
        )
    if not by_model:
        raise CheckpointError(f"checkpoint {path} holds no tensor")
    return by_model


def check_model_state(source: str, model: str, state: Mapping[str, torch.Tensor], manifest: Manifest) -> None:
    """Every tensor of `manifest`, no other, each with its shape and dtype; else a `CheckpointError`."""
    missing = [n for n in manifest.names if n not in state]
    extra = [n for n in state if n not in manifest]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) of {model}: {_listed(missing)}")
        if extra:
            parts.append(f"{len(extra)} tensor(s) that {model} does not have: {_listed(extra)}")
        raise CheckpointError(f"{source} does not fit the federation's {model}: {'; '.join(parts)}")
    for spec in manifest:
        tensor = state[spec.name]
        if tuple(tensor.shape) != spec.shape:
            raise CheckpointError(
                f"{source}: tensor {model}.{spec.name} has shape {list(tensor.shape)}; the federation's "
                f"{model} has {list(spec.shape)}"
            )
        if dtype_name(tensor.dtype) != spec.dtype:
            raise CheckpointError(
                f"{source}: tensor {model}.{spec.name} is {dtype_name(tensor.dtype)}; the federation's "
                f"{model} holds {spec.dtype}"
            )


def load_checkpoint(models: ModelSet, path: str | os.PathLike[str]) -> list[str]:
    """Copy a checkpoint into `models` (all of it or nothing); returns the models it named."""
    by_model = read_checkpoint(path)
    source = f"checkpoint {path}"
    for model, state in by_model.items():
        own = models[model].state_dict()
        check_model_state(source, model, state, Manifest.from_state_dict(model, own))
    with torch.no_grad():
        for model, state in by_model.items():
            own = models[model].state_dict()
            for name, tensor in state.items():
                own[name].copy_(tensor)
    return [m for m in MODELS if m in by_model]


# ------------------------------------------------------------------------------------- conversion


def read_state_dict(path: str | os.PathLike[str]) -> State:
    """A state dict from a ``torch.save`` file (read with weights_only=True) or a safetensors file.

    A dict nested under "state_dict", "model", ... (training checkpoints) is taken out, and a "module."
    prefix on every name (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state dict {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            loaded: object = params.load_file(path)
        except params.ParameterError as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unsafe pickle, a corrupt archive, not a torch file at all
            raise CheckpointError(
                f"cannot read {path} as a state dict with torch.load(weights_only=True): {exc}"
            ) from exc
    for _ in range(3):  # a few levels of nesting at most
        if isinstance(loaded, Mapping) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
            nested = next((loaded[k] for k in _NESTED_KEYS if isinstance(loaded.get(k), Mapping)), None)
            if nested is None:
                break
            loaded = nested
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict (names to tensors)")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if not tensors:
        raise CheckpointError(f"{path} holds no tensor (its keys: {_listed(others)})")
    if others:
        raise CheckpointError(f"{path} holds entries that are not tensors: {_listed(others)}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


@dataclass
class Conversion:
    """A converted checkpoint of G and what the conversion did."""

    tensors: State  # named "G.<name>"
    dropped: list[str] = field(default_factory=list)
    cast: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)


def convert_state_dict(
    state: Mapping[str, torch.Tensor], target: Manifest, drop: Iterable[str] = (), strip: str = ""
) -> Conversion:
    """A backbone's state dict as a checkpoint of G (every tensor of `target`, G's manifest).

    Names under a `drop` prefix (the classifier head) are left out; `strip` is removed from the front of
    every name. A floating tensor in another float dtype (a half-precision checkpoint) is cast to G's; a
    BatchNorm batch counter the state dict lacks (torchvision's ImageNet weights predate it) is 0.
    """
    prefixes = tuple(drop)
    renamed: State = {}
    dropped = []
    for name, tensor in state.items():
        if strip and name.startswith(strip):
            name = name[len(strip) :]
        if prefixes and name.startswith(prefixes):
            dropped.append(name)
            continue
        renamed[name] = tensor
    filled = []
    for spec in target:
        if spec.name not in renamed and spec.name.rsplit(".", 1)[-1] == _BATCH_COUNTER:
            renamed[spec.name] = torch.zeros(spec.shape, dtype=torch.int64)
            filled.append(spec.name)
    cast = []
    for spec in target:
        tensor = renamed.get(spec.name)
        if tensor is None:
            continue
        wanted = SAFETENSORS_DTYPES[spec.dtype]
        if tensor.dtype != wanted and tensor.is_floating_point() == wanted.is_floating_point:
            renamed[spec.name] = tensor.to(wanted)
            cast.append(spec.name)
    extra = [n for n in renamed if n not in target]
    hint = (
        f"; leave them out with --drop (e.g. --drop {extra[0].split('.')[0]}.) if they are not part of G"
        if extra
        else ""
    )
    try:
        check_model_state("the state dict", "G", renamed, target)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{hint}") from exc
    return Conversion({f"G.{k}": v.contiguous() for k, v in renamed.items()}, dropped, cast, filled)
