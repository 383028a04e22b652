"""``python -m cli``: the `fedalign` command."""

from cli.main import app

app()
