"""``fedalign simulate``: a whole federation in this process, its metrics round by round."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.console import console
from cli.exit_codes import NOT_INSTALLED
from cli.extras import needs
from cli.options import SetOption, set_threads
from fedalign.checkpoint_files import checkpoint_filename
from fedalign.config import ConfigError, FederationConfig, load_config
from fedalign.trackers import Destinations, TrackerError, TrackerNotInstalled, TrackerRun, open_run, selected

if TYPE_CHECKING:
    from fedalign.simulate import RoundRecord, SimulationResult

# Columns of the per-round table, in order; a column shows only when some round has it.
TABLE_METRICS = (
    ("disc_acc", "D acc"),
    ("disc_acc_source", "D acc src"),
    ("disc_acc_target", "D acc tgt"),
    ("disc_acc_fresh", "D fresh"),
    ("pad", "PAD"),
    ("task_loss", "task loss"),
    ("adv_loss", "adv loss"),
    ("source_val_acc", "src val acc"),
    ("target_acc", "target acc"),
)


@needs("simulate", "node")
def simulate(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Federation config (TOML).")],
    rounds: Annotated[int | None, typer.Option(help="Override the config's number of rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    overrides: SetOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write per-round metrics as JSON.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's choice).")] = None,
    save_model: Annotated[
        Path | None,
        typer.Option(
            help="Write the target's final model here, with its card (for `fedalign predict` and "
            "`fedalign export`; needs publish_model, the default)."
        ),
    ] = None,
    save_checkpoints: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Write each checkpoint (checkpoint_every) as DIR/round-NNNN.safetensors, with its card, and "
            "say which one the label-free rule selects.",
        ),
    ] = None,
    mlflow: Annotated[
        str | None,
        typer.Option(
            metavar="URI",
            help="Stream each round's metrics and the config to this MLflow tracking URI (a server, or "
            "sqlite:///mlflow.db); needs the mlflow extra.",
        ),
    ] = None,
    mlflow_experiment: Annotated[str, typer.Option(help="The MLflow experiment of the run.")] = "fedalign",
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Write each round's metrics and the config as TensorBoard event files under DIR; needs the "
            "tensorboard extra.",
        ),
    ] = None,
) -> None:
    """Run a whole federation in this process and print its metrics round by round."""
    # torch and the models load only when a simulation runs.
    from fedalign.device import Device
    from fedalign.simulate import simulate as run_simulation

    try:
        config = load_config(config_path, overrides or ())
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    updates: dict[str, int] = {}
    if rounds is not None:
        updates["rounds"] = rounds
    if seed is not None:
        updates["seed"] = seed
    if updates:
        config = config.model_validate({**config.model_dump(), **updates})
    set_threads(threads)
    runs = _open_tracker_runs(config, Destinations(mlflow, mlflow_experiment, tensorboard))
    console.print(
        f"[bold]{config.name}[/]: {config.algorithm} on {config.architecture}, {config.rounds} rounds, "
        f"seed {config.seed}, aggregator {config.aggregator}, nodes: "
        + ", ".join(f"{n.name} ({n.role}, {n.dataset})" for n in config.nodes)
    )
    records: list[RoundRecord] = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("rounds", total=config.rounds, last="")

        def on_round(record: RoundRecord) -> None:
            records.append(record)
            last = "  ".join(
                f"{label} {record.metrics[k]:.3f}"
                for k, label in TABLE_METRICS[:1] + TABLE_METRICS[-1:]
                if k in record.metrics
            )
            progress.update(task, advance=1, last=last)
            # Round r - 1 is settled once round r is done (`settled_round`); the rest at the end.
            if record.round > 1:
                log_rounds(runs, records[-2:-1])

        try:
            result = run_simulation(config, device=Device.pick(device), on_round=on_round)
        except (ValueError, RuntimeError) as exc:
            for run in runs:
                run.finish("FAILED")
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    log_rounds(runs, records[-1:])
    for run in runs:
        run.finish("FINISHED")
    console.print(metrics_table(result.rounds))
    for event in result.events:
        console.print(f"[yellow]{event}[/]")
    if json_path:
        result.write_json(json_path)
        console.print(f"metrics written to {json_path}")
    if save_model:
        _save_target_model(result, save_model)
    if result.checkpoints:
        _report_checkpoints(result, save_checkpoints)


def log_rounds(runs: list[TrackerRun], records: list[RoundRecord]) -> None:
    for record in records:
        for run in runs:
            run.log_round(record.round, record.metrics, record.nodes)


def _open_tracker_runs(config: FederationConfig, destinations: Destinations) -> list[TrackerRun]:
    runs = []
    for tracker in config.trackers or ():
        if tracker not in destinations.configured():
            console.print(
                f"[yellow]the config streams to {tracker}, but no --{tracker} destination is given[/]"
            )
    for tracker in selected(config.trackers, destinations):
        try:
            runs.append(open_run(tracker, destinations, config.name, config.model_dump(mode="json")))
        except TrackerError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(NOT_INSTALLED if isinstance(exc, TrackerNotInstalled) else 1) from exc
    return runs


def _report_checkpoints(result: SimulationResult, directory: Path | None) -> None:
    from fedalign.trained_model import save_model

    selected = result.selected_checkpoint
    console.print(
        f"checkpoints after rounds {', '.join(map(str, sorted(result.checkpoints)))}; selected: round "
        f"{selected} (the best source validation accuracy: no target label is used)"
    )
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for round_, model in sorted(result.checkpoints.items()):
        save_model(directory / checkpoint_filename(round_), model, result.config, round_=round_)
    console.print(f"checkpoints written to {directory}, with their cards")


def _save_target_model(result: SimulationResult, path: Path) -> None:
    from fedalign.trained_model import save_model

    model = result.models.get("target_model")
    if model is None:
        console.print(
            "[red]error:[/] the config sets publish_model = false, so the target keeps its model; set it to "
            "true to save the model"
        )
        raise typer.Exit(1)
    save_model(path, model, result.config)
    console.print(f"target model written to {path}, with its card")


def metrics_table(rounds: list[RoundRecord]) -> Table:
    shown = [(k, label) for k, label in TABLE_METRICS if any(k in r.metrics for r in rounds)]
    table = Table(title="per-round metrics")
    table.add_column("round", justify="right")
    for _, label in shown:
        table.add_column(label, justify="right")
    for record in rounds:
        if record.round == 0 or not record.metrics:
            continue
        table.add_row(
            str(record.round),
            *(f"{record.metrics[k]:.3f}" if k in record.metrics else "" for k, _ in shown),
        )
    return table
