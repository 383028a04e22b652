"""``fedalign choose``: which of several target models to deploy, judged on the target's own data without a
label."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli import exit_codes
from cli.console import console
from cli.extras import needs
from cli.options import DataDirOption, DeviceOption, ThreadsOption, set_threads, use_data_dir
from cli.output import error, print_json

if TYPE_CHECKING:
    from fedalign.model_card import ModelCard


def _settings(card: ModelCard) -> dict[str, Any]:
    """What a card says of how its model was made, flat: ``model.normalization``, ``provenance.seed``, ..."""
    parts = {
        "model": card.model.model_dump(mode="json"),
        "provenance": card.provenance.model_dump(mode="json"),
    }
    flat = {f"{part}.{key}": value for part, values in parts.items() for key, value in values.items()}
    return {"architecture": card.architecture, **flat}


def _differences(settings: list[dict[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every model's settings."""
    return [key for key in settings[0] if any(s.get(key) != settings[0][key] for s in settings[1:])]


@needs("predict", "node")
def choose(
    model_paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL",
            help="Two or more target models with their cards (the dashboard's Download model, or `fedalign "
            "simulate --save-model`), trained for the same target.",
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="The target's own data set spec, e.g. npz:target.npz or imagefolder:photos/ (labels, if it "
            "has any, are not read).",
        ),
    ],
    split: Annotated[
        str,
        typer.Option(
            help="The split scored: train (the target's training data, as the benchmark did), val or test."
        ),
    ] = "train",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document: the choice and each model.s scores.")
    ] = False,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 1,
) -> None:
    """Score each MODEL's predictions on the target's own data without a label, and name the one to deploy:
    the highest information (the class balance of its predictions minus their mean entropy; the first listed
    on a tie). Compare runs that differ in one setting, such as the normalisation: between models trained
    differently in many ways, the more confident one wins whether or not it is right (the accuracy benchmark
    measures how often the rule chose well)."""
    from fedalign.data import DatasetError
    from fedalign.device import Device
    from fedalign.label_free import choose as pick
    from fedalign.model_card import ModelCardError
    from fedalign.predict import SPLITS
    from fedalign.predict import predict as run_predictions
    from fedalign.trained_model import load_model

    if len(model_paths) < 2:
        raise error("give two or more models to choose between", exit_codes.USAGE)
    if split not in SPLITS:
        raise error(f"--split {split!r}: expected one of {', '.join(SPLITS)}", exit_codes.USAGE)
    use_data_dir(data_dir)
    set_threads(threads)
    try:
        models = [load_model(path) for path in model_paths]
        tasks = {(m.card.num_classes, tuple(m.card.model.input_shape)) for m in models}
        if len(tasks) > 1:
            raise ValueError(
                "these models do not predict the same task (classes, input shape): "
                + "; ".join(
                    f"{p}: {m.card.num_classes}, {list(m.card.model.input_shape)}"
                    for p, m in zip(model_paths, models, strict=True)
                )
            )
        run_on = Device.pick(device)
        predictions = [run_predictions(m, data, splits=(split,), device=run_on) for m in models]
    except (ModelCardError, DatasetError, ValueError, OSError) as exc:
        raise error(str(exc)) from exc
    scores = [p.label_free for p in predictions]
    chosen = pick([s.information for s in scores])
    settings = [_settings(m.card) for m in models]
    differing = _differences(settings)
    rows = [
        {
            "model": str(path),
            "information": s.information,
            "class_balance": s.class_balance,
            "mean_entropy": s.mean_entropy,
            "samples": len(p),
            "settings": {key: made[key] for key in differing},
        }
        for path, made, p, s in zip(model_paths, settings, predictions, scores, strict=True)
    ]
    if json_out:
        print_json({"data": data, "split": split, "chosen": str(model_paths[chosen]), "models": rows})
        return
    table = Table(title=f"{data}, {split} split ({len(predictions[0])} samples), no label read")
    for column in ("model", "information", "class balance", "mean entropy", *differing):
        table.add_column(
            column, justify="right" if column in ("information", "class balance", "mean entropy") else "left"
        )
    for i, row in enumerate(rows):
        table.add_row(
            f"{'* ' if i == chosen else ''}{row['model']}",
            f"{row['information']:.4f}",
            f"{row['class_balance']:.4f}",
            f"{row['mean_entropy']:.4f}",
            *(str(row["settings"][key]) for key in differing),
        )
    console.print(table)
    console.print(
        f"deploy {model_paths[chosen]}: the highest information, {scores[chosen].information:.4f} "
        f"(at most log {scores[chosen].classes} = {scores[chosen].most:.4f})"
    )
