"""``fedalign export``: a trained target model as ONNX or TorchScript, with its card inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import console, err_console
from cli.extras import needs


@needs("export", "node")
def export(
    model_path: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="The target model with its card (as for `fedalign predict`)."),
    ],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The file to write (default: MODEL's name, .onnx or .pt)."),
    ] = None,
) -> None:
    """Export MODEL to ONNX or TorchScript: normalisation, G and T in one graph, any batch size, the card
    inside the file. The export is run beside the PyTorch model on a seeded batch and the largest difference
    of their logits printed."""
    from fedalign import export as exports  # torch (and the exporter) load only for this command
    from fedalign.model_card import ModelCardError
    from fedalign.trained_model import load_model

    if format not in exports.FORMATS:
        err_console.print(f"[red]error:[/] --format {format!r}: expected one of {', '.join(exports.FORMATS)}")
        raise typer.Exit(2)
    output = output or model_path.with_suffix(exports.SUFFIXES[format])
    if output.resolve() == model_path.resolve():
        err_console.print(f"[red]error:[/] --output {output} is the model file itself; name another file")
        raise typer.Exit(2)
    try:
        model = load_model(model_path)
        exports.export(model, output, format)
        check = exports.verify(model, output, format)
    except (ModelCardError, exports.ExportError, ValueError, OSError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"{format} model written to {output}")
    console.print(f"input: {exports.input_description(model)}")
    verdict = "agrees with" if check.ok else "DIFFERS from"
    classes = "the same" if check.same_classes else "differ"
    console.print(
        f"checked on {exports.VERIFY_BATCH} inputs: {verdict} the PyTorch model (largest difference of the "
        f"logits {check.max_difference:.2e}; predicted classes {classes})"
    )
    if not check.ok:
        raise typer.Exit(1)
