"""Options that several commands share, and what applying them does to this process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

ApiOption = Annotated[
    str | None,
    typer.Option("--api", help="The API's base URL (default: FEDALIGN_API_URL, else http://127.0.0.1:8000)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDALIGN_NODE_TOKEN",
        help="The node's own token, returned when it registered (or FEDALIGN_NODE_TOKEN, which `ps` does not "
        "show).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="This machine's data directory: datasets, node state (default FEDALIGN_DATA_DIR)."
    ),
]
DatasetOption = Annotated[
    str | None,
    typer.Option(
        "--dataset", "--data", help="The node's dataset spec on this machine; default: the one it registered."
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override one of the config's settings, its key dotted (repeatable): --set "
        "model.normalization=group --set hyperparameters.lr=0.03. The value is read as TOML, else as text.",
    ),
]
ThreadsOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Torch CPU threads. Set explicitly: on a shared CPU, two-thread training was measured 20-40x "
        "slower when another process competed for the cores.",
    ),
]


def set_threads(threads: int | None) -> None:
    """Torch's CPU threads for this process (None: torch's own choice)."""
    import torch  # loaded only by the commands that train

    if threads:
        torch.set_num_threads(threads)


def use_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        # Read by the dataset cache and by every settings class of this process.
        os.environ["FEDALIGN_DATA_DIR"] = str(data_dir.expanduser().resolve())


StepsOption = Annotated[
    str | None,
    typer.Option(
        "--steps",
        help="The node's own steps: package.module:ClassName, a subclass of workers.steps.Steps (importable "
        "from PYTHONPATH or the current directory); default: FedAlign's own.",
    ),
]
