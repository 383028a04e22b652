"""The trained target model as a ready `torch.nn.Module`: `load_model` and `save_model`.

`TargetModel` is the card's input normalisation, then G, then T: it maps inputs in the form the data are
read in (images scaled to [0, 1] at the card's input size, or vectors) to class logits. It is in eval mode:
BatchNorm uses the statistics the target kept (the published model holds its local tensors too), dropout is
off. Resizing is the one step of the input pipeline outside the module (a model with a fixed input size is
what the exports need); `TargetModel.prepare` resizes images of another size as training read them.

Building G and T runs the architecture's factory on this machine: a plug-in architecture must be installed
here (as on the nodes), in the version the card names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fedalign import params
from fedalign.architectures import ArchitectureContext
from fedalign.checkpoints import CheckpointError, check_model_state
from fedalign.config import FederationConfig, Preprocessing
from fedalign.data.preprocessing import ImageTransform
from fedalign.manifest import Manifest, TensorSpec
from fedalign.model_card import TARGET_PARTS, ModelCard, ModelCardError, read_card
from fedalign.model_manifest import ModelManifest
from fedalign.models import build

State = dict[str, torch.Tensor]


class Normalization(nn.Module):
    """(x - mean) / std per channel of images (N, C, H, W), as `fedalign.data.preprocessing.ImageTransform`
    computes it (the same float32 operations, so the same bits)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TargetModel(nn.Module):
    """Normalisation, G, T: a batch of inputs (N, *card.input_shape) to logits (N, card.num_classes)."""

    def __init__(self, G: nn.Module, T: nn.Module, card: ModelCard) -> None:
        super().__init__()
        p = card.preprocessing
        self.normalize: nn.Module = (
            Normalization(p.mean, p.std) if p.mean is not None and p.std is not None else nn.Identity()
        )
        self.G = G
        self.T = T
        self.card = card

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of inputs in [0, 1] (images) or raw vectors, at the card's input shape."""
        return self.classify(self.normalize(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of inputs already normalised, as `fedalign.data` reads a dataset for this model."""
        return self.T(self.G(x))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) or (C, H, W) in [0, 1] of any size, resized to the card's input size as
        ``npz:`` and ``digits:`` data are (torch's bilinear, antialiased when shrinking); what `forward`
        takes. (``imagefolder:`` reads each file at the size with Pillow's bilinear resize instead.)"""
        if not self.card.images:
            raise ValueError("this model takes vectors; prepare() resizes images")
        return ImageTransform(resize=self.card.input_shape[1:])(images)  # type: ignore[arg-type]


def input_preprocessing(card: ModelCard) -> Preprocessing:
    """The preprocessing that reads data for this model through `fedalign.data`: the card's, with images
    read at its input size (what ``resize``, or the target's ``imagefolder:...?size=``, did in training)."""
    if not card.images:
        return Preprocessing()
    return card.preprocessing.model_copy(update={"resize": card.input_shape[1:], "augment": "none"})


def context_of(card: ModelCard) -> ArchitectureContext:
    """The `ArchitectureContext` the federation built its models with."""
    return ArchitectureContext(
        input_shape=card.input_shape,
        num_classes=card.num_classes,
        options=dict(card.model.options),
        hidden=card.model.hidden,
        normalization=card.model.normalization,
        conditional=card.conditional,
    )


def _split(flat: Mapping[str, torch.Tensor], source: str) -> dict[str, State]:
    parts: dict[str, State] = {part: {} for part in TARGET_PARTS}
    stray = []
    for name, tensor in flat.items():
        part, dot, rest = name.partition(".")
        if part not in parts or not dot:
            stray.append(name)
            continue
        parts[part][rest] = tensor
    if stray:
        raise ModelCardError(
            f"{source} holds tensors {stray[:5]} that belong to neither G nor T; a target model holds "
            "G.<name> and T.<name> only"
        )
    return parts


def from_state(flat: Mapping[str, torch.Tensor], card: ModelCard, source: str = "the model") -> TargetModel:
    """The model of a card and its tensors (``G.<name>``, ``T.<name>``), checked against the card's manifest
    and against the architecture installed here."""
    parts = _split(flat, source)
    expected = card.target_manifest()
    for part in TARGET_PARTS:
        try:
            check_model_state(source, part, parts[part], _every_tensor(expected, part))
        except CheckpointError as exc:
            raise ModelCardError(f"{exc}; the file and its card do not belong together") from exc
    models = build(card.architecture, context_of(card), seed=0)
    if models.version != card.architecture_version:
        raise ModelCardError(
            f"{source} was trained with version {card.architecture_version!r} of architecture "
            f"{card.architecture!r}; this machine's is version {models.version!r}: install the version the "
            "federation used"
        )
    for part in TARGET_PARTS:
        module = models[part]
        try:
            check_model_state(
                f"this machine's {card.architecture}",
                part,
                module.state_dict(),
                _every_tensor(expected, part),
            )
        except CheckpointError as exc:
            raise ModelCardError(f"{exc}; install the architecture the federation used") from exc
        module.load_state_dict(parts[part])
    return TargetModel(models.G, models.T, card).eval()


def _every_tensor(manifest: ModelManifest, part: str) -> Manifest:
    """The manifest of one model with every tensor (shared and local): the target model holds them all."""
    return Manifest(
        part, tuple(TensorSpec(t.name, t.shape, t.dtype, shared=True) for t in manifest.models[part])
    )


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TargetModel:
    """A trained target model, ready to predict: ``model(images)`` gives logits, ``model.card`` its card.

    ``path``: a model file with its card (downloaded with it, or written by ``fedalign simulate
    --save-model``), or a model file with ``<name>.card.json`` beside it. Raises `ModelCardError` (a
    ValueError) that says what is wrong: no card, tensors that do not fit it, an architecture that is not
    installed here or in another version.
    """
    path = Path(path)
    card = read_card(path)
    try:
        flat = params.load_file(path)
    except params.ParameterError as exc:
        raise ModelCardError(f"cannot read {path}: {exc}") from exc
    return from_state(flat, card, str(path)).to(device)


def save_model(
    path: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor],
    config: FederationConfig,
    manifest: ModelManifest | None = None,
    *,
    federation_id: str | None = None,
    round_: int | None = None,
) -> ModelCard:
    """Write a target model (``G.<name>``, ``T.<name>``) with its card in the file's metadata; returns the
    card. ``manifest``: the federation's model manifest document (default: built from the config, which
    imports the architecture); ``round_``: a checkpoint's round (default: the last)."""
    card = ModelCard.of(
        config, manifest or ModelManifest.for_config(config), federation_id=federation_id, round_=round_
    )
    names = card.tensor_names()
    missing = [n for n in names if n not in state]
    if missing or len(state) != len(names):
        raise ModelCardError(
            f"the target model does not hold every tensor of G and T its card lists (missing {missing[:5]})"
        )
    params.save_file({n: state[n] for n in names}, path, metadata=card.metadata())
    return card
