"""Where every command writes what it has to say."""

from __future__ import annotations

from rich.console import Console

console = Console()
