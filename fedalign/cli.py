"""The `fedalign` command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedalign.config import ConfigError, load_config

if TYPE_CHECKING:
    from fedalign.simulate import RoundRecord

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Federated transfer learning with adversarial domain alignment: only parameters travel.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets of the built-in benchmark.")
app.add_typer(data_app, name="data")
db_app = typer.Typer(no_args_is_help=True, help="The API service's database schema (FEDALIGN_DATABASE_URL).")
app.add_typer(db_app, name="db")
console = Console()

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


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


@app.command()
def simulate(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Federation config (TOML).")],
    rounds: Annotated[int | None, typer.Option(help="Override the config's number of rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write per-round metrics as JSON.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Run a whole federation in this process and print its metrics round by round."""
    from fedalign.simulate import simulate as run_simulation
    from fedalign.steps import Device

    try:
        config = load_config(config_path)
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
    _set_threads(threads)
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

        try:
            result = run_simulation(config, device=Device.pick(device), on_round=on_round)
        except (ValueError, RuntimeError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    console.print(metrics_table(result.rounds))
    for event in result.events:
        console.print(f"[yellow]{event}[/]")
    if json_path:
        result.write_json(json_path)
        console.print(f"metrics written to {json_path}")


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


@data_app.command("build")
def data_build() -> None:
    """Build (or verify the cache of) every domain of the built-in digits benchmark."""
    from fedalign import data as datasets

    for domain in datasets.digits_domains():
        d = datasets.load(f"digits:{domain}")
        console.print(f"digits:{domain}: train {len(d.train)}, val {len(d.val)}, test {len(d.test)}")


# The service's commands import `backend` only when they run: `fedalign` itself never depends on it.


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the API service (migrating its database first). Settings come from FEDALIGN_* variables."""
    import uvicorn

    from backend import migrate
    from backend.app import create_app
    from backend.settings import ADMIN_TOKEN_FILE, Settings

    settings = Settings()
    migrate.upgrade(settings.sqlalchemy_url)
    if settings.admin_token is None:
        settings.admin_secret  # noqa: B018 - created now, so its location is printed before serving
        console.print(f"admin token: in {(settings.data_dir / ADMIN_TOKEN_FILE).resolve()}")
    console.print(
        f"FedAlign API on http://{host}:{port} (docs at /docs); database {_safe_url(settings.sqlalchemy_url)}"
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    from backend import migrate
    from backend.settings import Settings

    settings = Settings()
    migrate.upgrade(settings.sqlalchemy_url, revision)
    console.print(f"database {_safe_url(settings.sqlalchemy_url)} upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes every table.")] = "-1",
) -> None:
    """Migrate the database down to REVISION (default: one step back)."""
    from backend import migrate
    from backend.settings import Settings

    settings = Settings()
    migrate.downgrade(settings.sqlalchemy_url, revision)
    console.print(f"database {_safe_url(settings.sqlalchemy_url)} downgraded to {revision}")


if __name__ == "__main__":
    app()
