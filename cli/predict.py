"""``fedalign predict``: a trained target model's predictions on any data set, labelled or not."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import console, err_console
from cli.extras import needs
from cli.options import DataDirOption, DeviceOption, ThreadsOption, set_threads, use_data_dir

SplitOption = Annotated[
    list[str] | None,
    typer.Option(
        "--split",
        help="Predict this split only (train, val or test; repeatable). Default: every split, i.e. every "
        "sample of the data set.",
    ),
]


@needs("predict", "node")
def predict(
    model_path: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="The target model with its card (the dashboard's Download model, GET .../model?card=true, "
            "or `fedalign simulate --save-model`).",
        ),
    ],
    spec: Annotated[
        str,
        typer.Argument(
            metavar="DATA",
            help="A dataset spec: digits:<domain>, imagefolder:<dir> (class folders, or images directly in "
            "it), npz:<file> (x, with or without y), python:<module>:<loader>, ...",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the predictions (default: predictions.csv; .parquet: Parquet).",
        ),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(help="csv or parquet (needs pyarrow); default: by --output's suffix, else csv."),
    ] = None,
    split: SplitOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 1,
) -> None:
    """Predict every sample of DATA with MODEL: one row per sample (where it comes from, its split, its label
    when it has one, the predicted class, each class's probability), in the data's own order. Prints the
    accuracy when the data carry labels, and label-free scores of the predictions (information: class
    balance minus mean entropy) that compare two models of the same data without labels."""
    # torch and the models load only when a command uses them.
    from fedalign.data import DatasetError
    from fedalign.device import Device
    from fedalign.model_card import ModelCardError
    from fedalign.predict import FORMATS, SPLITS
    from fedalign.predict import predict as run_predictions
    from fedalign.trained_model import load_model

    if format is not None and format not in FORMATS:
        err_console.print(f"[red]error:[/] --format {format!r}: expected one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    splits = tuple(split) if split else SPLITS
    output = output or Path("predictions.csv")
    use_data_dir(data_dir)
    set_threads(threads)
    try:
        model = load_model(model_path)
        predictions = run_predictions(model, spec, splits=splits, device=Device.pick(device))
        written = predictions.write(output, format)
    except (ModelCardError, DatasetError, ValueError, OSError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    card, origin = model.card, model.card.provenance
    sizes = ", ".join(f"{name} {n}" for name, n in predictions.split_sizes.items() if n)
    console.print(
        f"{card.architecture} from federation {origin.federation!r} "
        f"({origin.rounds} round{'s' if origin.rounds != 1 else ''}), "
        f"{card.num_classes} classes"
    )
    console.print(
        f"{len(predictions)} samples of {spec} ({sizes}) predicted; written to {output} ({written})"
    )
    accuracy = predictions.accuracy
    if accuracy is None:
        console.print("no labels in these data: no accuracy")
    else:
        console.print(f"accuracy {accuracy:.4f} on {predictions.labelled} labelled samples")
    scores = predictions.label_free
    console.print(
        f"without labels: information {scores.information:.4f} = class balance {scores.class_balance:.4f} "
        f"- mean entropy {scores.mean_entropy:.4f} (each at most log {scores.classes} = {scores.most:.4f}; "
        "compare two models on the same data, higher first)"
    )
