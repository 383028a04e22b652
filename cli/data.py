"""``fedalign data``: the datasets of the built-in benchmark."""

from __future__ import annotations

import typer

from cli.console import console
from cli.extras import needs

app = typer.Typer(no_args_is_help=True, help="Datasets of the built-in benchmark.")


@app.command("build")
@needs("data build", "node")
def data_build() -> None:
    """Build (or verify the cache of) every domain of the built-in digits benchmark."""
    from fedalign import data as datasets  # the benchmark's builders load torch and its image libraries

    for domain in datasets.digits_domains():
        d = datasets.load(f"digits:{domain}")
        console.print(f"digits:{domain}: train {len(d.train)}, val {len(d.val)}, test {len(d.test)}")
