"""Where every command writes what it has to say."""

from __future__ import annotations

from rich.console import Console

# soft_wrap: a long line (a path, a URL) stays one line, however narrow the terminal or a log file's reader.
console = Console(soft_wrap=True)
