"""The `fedalign` command (console script ``fedalign``, or ``python -m cli``): every command and group,
in the order ``--help`` lists them."""

from __future__ import annotations

import typer

from cli import data, db, export, health, models, node, predict, serve, simulate, up, worker

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Federated transfer learning with adversarial domain alignment: only parameters travel.",
)
app.command()(simulate.simulate)
app.command("init-model")(models.init_model)
app.command("convert-checkpoint")(models.convert_checkpoint)
app.command()(predict.predict)
app.command()(export.export)
app.command()(serve.serve)
app.command()(serve.openapi)
app.command()(worker.worker)
app.command()(health.health)
app.command()(up.up)
app.add_typer(data.app, name="data")
app.add_typer(db.app, name="db")
app.add_typer(node.app, name="node")

if __name__ == "__main__":
    app()
