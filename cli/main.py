"""The `fedalign` command (console script ``fedalign``, or ``python -m cli``): every command and group,
in the order ``--help`` lists them."""

from __future__ import annotations

import importlib.metadata
from typing import Annotated

import typer

from cli import (
    choose,
    data,
    db,
    export,
    federations,
    health,
    models,
    node,
    predict,
    serve,
    simulate,
    tokens,
    up,
    worker,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Federated transfer learning with adversarial domain alignment: only parameters travel.",
)


def installed_version() -> str:
    """This installation's version (its distribution's metadata; the package's own when run from source)."""
    try:
        return importlib.metadata.version("fedalign")
    except importlib.metadata.PackageNotFoundError:
        from fedalign import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fedalign {installed_version()}")
        raise typer.Exit()


@app.callback()
def main(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
        ),
    ] = False,
) -> None:
    """Federated transfer learning with adversarial domain alignment: only parameters travel."""


app.command()(simulate.simulate)
app.command("init-model")(models.init_model)
app.command("convert-checkpoint")(models.convert_checkpoint)
app.command()(predict.predict)
app.command()(choose.choose)
app.command()(export.export)
app.command()(serve.serve)
app.command()(serve.openapi)
app.command()(worker.worker)
app.command()(health.health)
app.command()(up.up)
app.add_typer(federations.app, name="federations")
app.add_typer(tokens.app, name="tokens")
app.add_typer(data.app, name="data")
app.add_typer(db.app, name="db")
app.add_typer(node.app, name="node")

if __name__ == "__main__":
    app()
