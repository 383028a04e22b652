"""A trained target model as a self-contained file for other runtimes: ONNX or TorchScript.

The exported model is `fedalign.trained_model.TargetModel`: the card's normalisation (mean, std) is part of
the graph, then G and T; it takes float32 inputs of the card's input shape with any batch size, images
scaled to [0, 1], and gives logits (N, num_classes) (softmax gives the probabilities). Resizing stays outside
the graph, so the model has one input size: an image of another size is resized to it first, bilinear and
antialiased when shrinking, as the training data were (`TargetModel.prepare`, or any image library's
bilinear resize). The card travels inside the file, as JSON under `CARD_KEY`:

- ONNX: in the model's ``metadata_props`` (onnxruntime: ``session.get_modelmeta().custom_metadata_map``);
  exported with torch's ``torch.export``-based exporter (needs onnx and onnxscript:
  ``pip install 'fedalign[export]'``, which brings onnxruntime too);
- TorchScript: as the extra file ``fedalign_model_card.json`` (``torch.jit.load(path, _extra_files=...)``).
  Traced with ``torch.jit.trace``, which torch 2.13 deprecates in favour of ``torch.export``: prefer ONNX for
  anything that must outlive that.

Beside the card, `INPUT_KEY` says in one sentence what the model takes. After exporting, `verify` runs the
exported file on a seeded batch beside the PyTorch model and reports the largest difference of the logits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fedalign.model_card import CARD_KEY
from fedalign.trained_model import TargetModel

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_KEY = "fedalign.input"
# The name of the card inside a TorchScript archive.
TORCHSCRIPT_CARD_FILE = "fedalign_model_card.json"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The probe batch of an export (two: BatchNorm needs no more in eval mode, but a batch dimension of one
# could be taken for a constant) and of the check after it.
EXAMPLE_BATCH = 2
VERIFY_BATCH = 8
VERIFY_SEED = 0
# What verify accepts, relative to the largest logit.
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export that cannot be made (a runtime not installed, a model the exporter cannot trace)."""


@dataclass(frozen=True)
class Verification:
    """The exported model beside the PyTorch model on a seeded batch: the largest absolute difference of
    their logits, the largest logit (the scale of that difference), and whether the classes agree."""

    max_difference: float
    scale: float
    same_classes: bool

    @property
    def ok(self) -> bool:
        """Within `TOLERANCE` of the logits' scale (float32 through two runtimes differs in its last bits)."""
        return self.max_difference <= TOLERANCE * max(1.0, self.scale)


def input_description(model: TargetModel) -> str:
    """What the exported model takes, in one sentence (also stored in the file as `INPUT_KEY`)."""
    card = model.card
    shape = ", ".join(str(d) for d in card.input_shape)
    outputs = f"outputs logits (N, {card.num_classes})"
    if not card.images:
        return f"float32 vectors (N, {shape}) as the data hold them; {outputs}"
    height, width = card.input_shape[1:]
    p = card.preprocessing
    normalisation = (
        f"the model normalises them itself (mean {list(p.mean)}, std {list(p.std)})"
        if p.mean is not None and p.std is not None
        else "no normalisation"
    )
    return (
        f"float32 images (N, {shape}) with values in [0, 1] at {height}x{width} (resize others first: "
        f"bilinear, antialiased when shrinking); {normalisation}; {outputs}"
    )


def example_input(model: TargetModel, batch: int, seed: int = VERIFY_SEED) -> torch.Tensor:
    """A seeded batch of inputs in [0, 1] of the model's input shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *model.card.input_shape), generator=generator)


@contextmanager
def _quiet_torch() -> Iterator[None]:
    # What torch says while exporting is about its own internals (a deprecated tree-spec check, the
    # deprecation of torch.jit that this format asks for); the user sees the result and its check instead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def export_onnx(model: TargetModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as one ONNX file (weights inside), its batch dimension dynamic, its card in the
    metadata."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's exporter needs it; a clear message if it is missing
    except ImportError as exc:
        raise ExportError(
            f"exporting to ONNX needs onnx and onnxscript ({exc.name} is missing): "
            "pip install 'fedalign[export]'"
        ) from exc
    path = Path(path)
    model = model.cpu().eval()
    example = example_input(model, EXAMPLE_BATCH)
    try:
        with _quiet_torch():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter's own errors: an operation it cannot translate, a trace failure
        raise ExportError(
            f"torch could not export {model.card.architecture} to ONNX: {type(exc).__name__}: {exc}"
        ) from exc
    assert program is not None  # with dynamo=True the exporter returns the program
    proto = program.model_proto
    proto.doc_string = input_description(model)
    for key, value in ((CARD_KEY, model.card.to_json_text()), (INPUT_KEY, input_description(model))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))
    return path


def export_torchscript(model: TargetModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a traced TorchScript archive, its card as an extra file."""
    path = Path(path)
    model = model.cpu().eval()
    try:
        with _quiet_torch(), torch.no_grad():
            traced = torch.jit.trace(model, (example_input(model, EXAMPLE_BATCH),))
            torch.jit.save(
                traced,
                str(path),
                _extra_files={
                    TORCHSCRIPT_CARD_FILE: model.card.to_json_text(),
                    INPUT_KEY: input_description(model),
                },
            )
    except Exception as exc:
        raise ExportError(
            f"torch could not trace {model.card.architecture} to TorchScript: {type(exc).__name__}: {exc}"
        ) from exc
    return path


def export(model: TargetModel, path: str | os.PathLike[str], format: str) -> Path:
    """Write ``model`` to ``path`` in ``format`` (onnx or torchscript)."""
    if format == "onnx":
        return export_onnx(model, path)
    if format == "torchscript":
        return export_torchscript(model, path)
    raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")


def run_exported(path: str | os.PathLike[str], format: str, x: torch.Tensor) -> torch.Tensor:
    """The logits an exported file computes for ``x``: onnxruntime for ONNX, torch.jit for TorchScript."""
    if format == "onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            raise ExportError(
                "running an ONNX model needs onnxruntime: pip install 'fedalign[export]'"
            ) from exc
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        return torch.from_numpy(logits)
    with _quiet_torch(), torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(x)


def verify(model: TargetModel, path: str | os.PathLike[str], format: str) -> Verification:
    """The exported file beside ``model`` on a seeded batch of `VERIFY_BATCH` inputs."""
    x = example_input(model, VERIFY_BATCH, seed=VERIFY_SEED + 1)
    with torch.no_grad():
        expected = model.cpu().eval()(x)
    got = run_exported(path, format, x)
    return Verification(
        max_difference=float((got - expected).abs().max()),
        scale=float(expected.abs().max()),
        same_classes=bool(torch.equal(got.argmax(dim=1), expected.argmax(dim=1))),
    )
