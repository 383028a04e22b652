"""Where every command writes what it has to say: results to standard output, errors to standard error
(so that ``--json`` output stays one parsable document)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
