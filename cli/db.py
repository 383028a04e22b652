"""``fedalign db``: the API service's database schema."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.console import console
from cli.extras import needs

app = typer.Typer(no_args_is_help=True, help="The API service's database schema (FEDALIGN_DATABASE_URL).")


def safe_url(url: str) -> str:
    """A database URL to print: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command("upgrade")
@needs("db upgrade", "server")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    from backend import migrate
    from backend.settings import Settings

    settings = Settings()
    migrate.upgrade(settings.sqlalchemy_url, revision)
    console.print(f"database {safe_url(settings.sqlalchemy_url)} upgraded to {revision}")


@app.command("downgrade")
@needs("db downgrade", "server")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes every table.")] = "-1",
) -> None:
    """Migrate the database down to REVISION (default: one step back)."""
    from backend import migrate
    from backend.settings import Settings

    settings = Settings()
    migrate.downgrade(settings.sqlalchemy_url, revision)
    console.print(f"database {safe_url(settings.sqlalchemy_url)} downgraded to {revision}")
